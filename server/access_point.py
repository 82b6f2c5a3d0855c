"""The access point's side of the alignment protocol, as a transport-free state machine.

The AP owns its encoder's pilot latents, whitens them once (X, section III), and drives the
session of section III-B through serialized proto messages:

* :meth:`AccessPoint.handshake` takes a ``UserMessage`` with a HandshakeRequest and returns the
  HandshakeAccept bytes;
* :attr:`rounds` rounds of :meth:`round_messages` (the RoundBroadcast S_l per user),
  :meth:`receive` (each user's RoundUpload A_l, P_l) and :meth:`step` (eqs. 7-18);
* :meth:`final_messages` (ADMM: the final broadcast; baselines: the precoded pilots), whose Acks
  give :meth:`final_stats`;
* :meth:`evaluation_requests` encodes test data into transmitted symbols;
* :meth:`extra_messages` and :meth:`receive_extra`: the strategy's exchanges besides these
  phases (secure aggregation: the key setup after the handshake and each round's unmasking,
  :mod:`.strategies.secure_admm`).

What differs between strategies is delegated to the strategy object
(:mod:`semalign.server.strategies`), found by the strategy's name and the aggregation (plain,
or the strategy's secure-aggregation variant); nothing here branches on either. Nothing here
knows how bytes travel: the in-process simulator, the gRPC service and the Flower deployment
all call these same methods.

(Over 450 lines: the AP's whole protocol, every phase's checks included, is one state machine.)
"""

from __future__ import annotations

import functools
import hashlib
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from semalign.common.channels import noise_variance
from semalign.common.config import AlignmentConfig, GeometryError
from semalign.common.errors import ProtocolError
from semalign.common.packing import ShapeError, complex_dim
from semalign.common.representation import Representation
from semalign.common.strategies import get_strategy
from semalign.common.validation import check_handshake, check_report, check_terms, one_line
from semalign.common.whitening import Whitener
from semalign.common.wire import (
    PROTOCOL_VERSION,
    parse_user_message,
    to_matrix,
    wire_precision_code,
)
from semalign.proto import semalign_pb2 as pb
from semalign.server.strategies import make_ap_strategy
from semalign.server.strategies.base import UserState

log = logging.getLogger(__name__)

_FIT_CODES = {"received": pb.RECEIVED, "full": pb.FULL}

__all__ = ["AccessPoint", "RoundStats", "UserState", "build_access_point"]


@dataclass
class RoundStats:
    """AP-side figures of one ADMM round (the driver adds bytes and time)."""

    round: int
    mse: float
    objective: float
    primal_residual: float
    dual_residual: float
    users: int


@dataclass
class AccessPoint:
    """AP state machine.

    Args:
        config: the session configuration.
        pilot_latents: (n, d) real AP latents of the pilots, row i = pilot ``pilot_ids[i]``.
        pilot_ids: (n,) ids of the pilot data points (public, known to users).
        expected_users: number of users to accept (``None``: any number).

    Raises:
        GeometryError: (a ValueError) the geometry does not fit (K N_T > d/2, or Top-K side
            information that leaves no channel use for data).
    """

    config: AlignmentConfig
    pilot_latents: np.ndarray
    pilot_ids: np.ndarray
    expected_users: int | None = None
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def __post_init__(self) -> None:
        latents = np.asarray(self.pilot_latents, dtype=np.float64)
        if latents.ndim != 2 or latents.shape[0] != len(self.pilot_ids):
            raise ShapeError(
                f"pilot latents {latents.shape} do not match {len(self.pilot_ids)} pilot ids"
            )
        self.latent_dim = latents.shape[1]
        cfg = self.config
        #: the paper's complex packing, or the real-composite view (widely-linear F and G)
        self.representation = Representation.of(cfg.equalizer)
        rep = self.representation
        #: how features, symbols, F and the uploads travel (``wire_precision``)
        self.wire = rep.wire_format(cfg.wire_precision)
        self.cdim = rep.feature_dim(self.latent_dim)
        self.strategy = make_ap_strategy(cfg, self.cdim)
        self.data_channel_uses = self.strategy.data_channel_uses
        complex_symbols = self.data_channel_uses * cfg.antennas_tx
        self.symbols = rep.symbol_rows(complex_symbols)
        if complex_symbols > complex_dim(self.latent_dim):
            raise GeometryError(
                f"K*N_T = {complex_symbols} symbols exceed the AP "
                f"latent's {complex_dim(self.latent_dim)} complex features "
                f"(d={self.latent_dim}): compression factor K/(d/2) must be <= 1"
            )
        self.pilot_latents = latents
        features = rep.features(latents)
        self.whitener: Whitener = rep.fit_whitener(features)
        self.x = self.whitener.whiten(features)  # (c, n)
        self.n = self.x.shape[1]
        self.users: dict[str, UserState] = {}
        #: claimed user id -> why its handshake was refused (the service tells the user)
        self.refused: dict[str, str] = {}
        #: what the AP waits for from each user now: "upload", "ack" or "report"
        self.expecting: str | None = None
        self._eval_samples = 0
        self.round = 0
        self.finished = False
        self.strategy.start(self)

    @functools.cached_property
    def pilots_digest(self) -> str:
        """Digest of the whitened pilots X (the AP's data and pilot choice), taken once: X does
        not change once the AP is built, a checkpoint follows every round, and X is 130 MB at
        the paper's n = 42,500."""
        x = np.ascontiguousarray(self.x).view(np.uint8)
        return hashlib.blake2b(x, digest_size=16).hexdigest()

    # ------------------------------------------------------------------ handshake
    def _check_request(self, req: pb.HandshakeRequest) -> np.ndarray | None:
        """Validate a HandshakeRequest; returns the user's Hbar (N_R, N_T) if the AP uses CSI.

        The bounds any session needs (:func:`~semalign.common.validation.check_handshake`:
        protocol version, id, N_R <= 256, latent dim <= 65,536, SNR, unique pilot ids, CSI
        shape and values), then those of this session.
        """
        hbar = check_handshake(req, self.config)
        self.strategy.check_request(req)
        if req.user_id in self.users:
            raise ProtocolError(f"user id {req.user_id!r} is already registered")
        if self.round > 0:
            raise ProtocolError("session already started: late joins are not supported")
        if self.expected_users is not None and len(self.users) >= self.expected_users:
            raise ProtocolError(f"session is full ({self.expected_users} users)")
        missing = np.setdiff1d(self.pilot_ids, np.asarray(req.pilot_ids, dtype=np.int64))
        if len(missing):
            raise ProtocolError(
                f"user {req.user_id!r} lacks {len(missing)} of the "
                f"{len(self.pilot_ids)} pilots (e.g. id {missing[0]})"
            )
        return hbar

    def handshake(self, data: bytes) -> tuple[str, bytes]:
        """Register a user from its HandshakeRequest bytes; returns (user_id, accept bytes)."""
        msg = parse_user_message(data)
        if msg.WhichOneof("body") != "handshake":
            raise ProtocolError(f"expected a handshake, got {msg.WhichOneof('body')}")
        req = msg.handshake
        try:
            hbar = self._check_request(req)
        except ProtocolError as exc:
            self.refused[one_line(req.user_id, 80)] = str(exc)
            raise
        state = UserState(
            user_id=req.user_id,
            index=len(self.users),
            encoder=req.encoder,
            latent_dim=req.latent_dim,
            antennas_rx=req.antennas_rx,
            snr_db=req.snr_db,
            hbar=hbar,
        )
        self.strategy.add_user(state)
        self.users[req.user_id] = state
        log.info(
            "handshake: %s (%s, d=%d, N_R=%d) as user %d",
            req.user_id,
            req.encoder,
            req.latent_dim,
            req.antennas_rx,
            state.index,
            extra=self._where(req.user_id),
        )
        return req.user_id, self._accept(state, req)

    def check_rejoin(self, data: bytes) -> tuple[UserState, pb.HandshakeRequest]:
        """Whether ``data`` is a rejoin the AP would take back, without taking it: (the user's
        state, the request), or ProtocolError naming the difference. Changes nothing, so the
        gRPC service may ask it (from its own thread) before it touches the user's live stream.

        The request must describe the user as registered (encoder, latent dim, N_R, SNR, CSI,
        the AP's pilots): a user process rebuilds its state machine from (seed, ordinal), so
        an honest rejoin is identical.
        """
        msg = parse_user_message(data)
        if msg.WhichOneof("body") != "handshake":
            raise ProtocolError(f"expected a handshake, got {msg.WhichOneof('body')}")
        req = msg.handshake
        state = self.users.get(req.user_id)
        if state is None:
            raise ProtocolError(f"rejoin of {one_line(req.user_id, 80)!r}, not a user here")
        if state.dropped:
            raise ProtocolError(f"rejoin of {req.user_id}, dropped at {state.dropped}")
        hbar = check_handshake(req, self.config)
        same = (req.encoder, req.latent_dim, req.antennas_rx, req.snr_db) == (
            state.encoder,
            state.latent_dim,
            state.antennas_rx,
            state.snr_db,
        ) and (
            (hbar is None and state.hbar is None)
            or (hbar is not None and state.hbar is not None and np.array_equal(hbar, state.hbar))
        )
        if not same:
            raise ProtocolError(
                f"rejoin of {req.user_id} with another encoder, dimensions, SNR or channel "
                "than its first handshake"
            )
        if len(np.setdiff1d(self.pilot_ids, np.asarray(req.pilot_ids, dtype=np.int64))):
            raise ProtocolError(f"rejoin of {req.user_id} without the session's pilots")
        self.strategy.check_rejoin(state, req)
        return state, req

    def rejoin(self, data: bytes) -> tuple[str, bytes]:
        """Take back a registered, not dropped user on a fresh handshake (its stream broke, or
        the AP restarted from a checkpoint); returns (user_id, its HandshakeAccept again).
        ProtocolError if :meth:`check_rejoin` refuses it."""
        state, req = self.check_rejoin(data)
        state.rejoins += 1
        log.info("rejoin: %s at round %d", req.user_id, self.round)
        return req.user_id, self._accept(state, req)

    def _accept(self, state: UserState, req: pb.HandshakeRequest) -> bytes:
        """The HandshakeAccept bytes for ``state`` (its first handshake or a rejoin)."""
        cfg = self.config
        accept = pb.HandshakeAccept(
            session_id=self.session_id,
            user_index=state.index,
            strategy=get_strategy(cfg.strategy).proto_code or pb.STRATEGY_UNSPECIFIED,
            channel_uses=self.data_channel_uses,
            antennas_tx=cfg.antennas_tx,
            rho=cfg.rho,
            iterations=cfg.iterations,
            power=cfg.power,
            pilot_ids=self.pilot_ids.tolist(),
            ap_latent_dim=self.latent_dim,
            channel_aware=cfg.csi,
            noise_var=noise_variance(req.snr_db, cfg.power, cfg.channel_uses),
            baseline_fit=_FIT_CODES[cfg.baseline_fit],
            protocol_version=PROTOCOL_VERSION,
            widely_linear=self.representation.widely_linear,
            wire_precision=wire_precision_code(cfg.wire_precision),
        )
        self.strategy.complete_accept(state, req, accept)
        return pb.ApMessage(accept=accept).SerializeToString()

    @property
    def active_users(self) -> list[UserState]:
        return [u for u in self.users.values() if u.dropped is None]

    def drop(self, user_id: str, reason: str) -> None:
        """Stop waiting for a user (it died, stalled or misbehaved); the session goes on."""
        state = self.users[user_id]
        if state.dropped is None:
            state.dropped = f"round {self.round}: {reason}"
            log.warning(
                "dropped user %s at round %d: %s",
                user_id,
                self.round,
                reason,
                extra=self._where(user_id),
            )

    def _where(self, user_id: str) -> dict:
        """A log event's structured fields (``--log-format json``): session, user, round."""
        return {"session_id": self.session_id, "user_id": user_id, "round": self.round}

    # ------------------------------------------------------------------ alignment
    @property
    def rounds(self) -> int:
        """Rounds before the final transmission (T for the ADMM family, 0 for baselines)."""
        return self.strategy.rounds

    @property
    def final_phase(self) -> str:
        """Traffic phase of :meth:`final_messages` (``final``, or ``pilots`` for baselines)."""
        return self.strategy.final_phase

    def round_messages(self) -> dict[str, bytes]:
        """RoundBroadcast bytes per active user for the current round (S_l = H_l F X or F X)."""
        self.expecting = "upload"
        return self.strategy.round_messages()

    def final_messages(self) -> dict[str, bytes]:
        """The last transmission before evaluation, per active user; users answer with Acks."""
        self.expecting = "ack"
        return self.strategy.final_messages()

    def receive(self, user_id: str, data: bytes) -> None:
        """Take a user's RoundUpload (in a round) or Ack (of the final/pilot transmission).

        ProtocolError for anything else: a reply of another kind than the phase expects (an
        Ack in place of an upload), another session or round, bad matrices or loss terms.
        """
        state = self.users.get(user_id)
        if state is None or state.dropped:
            raise ProtocolError(f"upload from unknown or dropped user {user_id!r}")
        msg, kind = _reply(user_id, data)
        if self.expecting not in ("upload", "ack"):
            raise ProtocolError(f"unexpected {kind} from {user_id}: nothing was sent to answer")
        expected = self.strategy.upload_kinds if self.expecting == "upload" else ("ack",)
        if kind not in expected:
            raise ProtocolError(f"expected an {self.expecting} from {user_id}, got {kind}")
        if kind == "ack":
            ack = msg.ack
            if ack.session_id != self.session_id or ack.round != self.round:
                raise ProtocolError(
                    f"ack from {user_id} for session {one_line(ack.session_id, 40)!r} round "
                    f"{ack.round}, expected {self.session_id} round {self.round}"
                )
            state.terms = check_terms(ack.squared_error, ack.noise_term, f"ack from {user_id}")
            return
        self.strategy.receive_upload(state, getattr(msg, kind))  # checks its loss terms too

    def extra_messages(self) -> dict[str, bytes]:
        """ApMessage bytes per user of the next exchange besides the protocol's phases (secure
        aggregation: key setup after the handshake, a round's unmasking), or none; the driver
        asks until there is none."""
        return self.strategy.extra_messages()

    def receive_extra(self, user_id: str, data: bytes) -> None:
        """A user's reply to an :meth:`extra_messages` message (ProtocolError if out of place)."""
        state = self.users.get(user_id)
        if state is None or state.dropped:
            raise ProtocolError(f"unexpected message from {one_line(user_id, 80)!r}")
        self.strategy.receive_extra(state, _reply(user_id, data)[0])

    def step(self) -> RoundStats:
        """The strategy's update from this round's uploads (ADMM: eqs. 8-18); next round."""
        users = [u for u in self.active_users if u.upload is not None]
        if not users:
            raise ProtocolError(f"round {self.round}: no uploads to step on")
        primal, dual = self.strategy.step(users)
        totals = self.strategy.loss_totals()  # masked uploads: the strategy decoded the means
        if totals is None:
            stats = self._round_stats(users, primal, dual)
        else:
            stats = RoundStats(self.round, *totals, primal, dual, len(users))
        self.round += 1
        return stats

    def _round_stats(self, users: list[UserState], primal: float, dual: float) -> RoundStats:
        """Pilot MSE per complex feature (mean over users) and the objective of eq. (3)."""
        sq = [u.terms[0] for u in users]
        noise = [u.terms[1] for u in users]
        mse = float(
            np.mean(
                [e / (self.n * complex_dim(u.latent_dim)) for e, u in zip(sq, users, strict=True)]
            )
        )
        objective = float((sum(sq) + sum(noise)) / (len(users) * self.n))
        return RoundStats(
            round=self.round,
            mse=mse,
            objective=objective,
            primal_residual=primal,
            dual_residual=dual,
            users=len(users),
        )

    def final_stats(self) -> RoundStats:
        """Pilot MSE/objective reported in the Acks of the final transmission."""
        users = [u for u in self.active_users if u.terms is not None]
        if not users:
            raise ProtocolError("no user acknowledged the final broadcast")
        return self._round_stats(users, float("nan"), float("nan"))

    def result_info(self) -> dict[str, Any]:
        """The strategy's extra entries of the results block (e.g. ``baseline``)."""
        return self.strategy.result_info()

    # ------------------------------------------------------------------ evaluation
    def whiten(self, latents: np.ndarray) -> np.ndarray:
        """Whitened features (c, n) of real AP latents (n, d) (the pilots' whitener)."""
        return self.whitener.whiten(self.representation.features(latents))

    def encode(
        self, latents: np.ndarray, state: UserState | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Transmitted symbols (K N_T, n) for real AP latents (n, d), plus baseline indices."""
        return self.strategy.transmit(np.asarray(latents, dtype=np.float64), state)

    def evaluation_requests(self, latents: np.ndarray, sample_ids: np.ndarray) -> dict[str, bytes]:
        """EvaluationRequest bytes per active user for test latents (n_test, d)."""
        if latents.shape[1] != self.latent_dim:
            raise ShapeError(f"test latents have d={latents.shape[1]}, AP has {self.latent_dim}")
        shared = None
        out = {}
        self.expecting, self._eval_samples = "report", len(sample_ids)
        for state in self.active_users:
            if shared is None or self.strategy.per_user_encoding:
                symbols, indices = self.encode(latents, state)
                msg = pb.EvaluationRequest(
                    session_id=self.session_id,
                    symbols=self.wire.matrix(symbols),
                    sample_ids=np.asarray(sample_ids).tolist(),
                )
                if indices is not None:
                    msg.indices.CopyFrom(to_matrix(indices, "uint16"))
                shared = pb.ApMessage(evaluate=msg).SerializeToString()
            out[state.user_id] = shared
        return out

    def receive_report(self, user_id: str, data: bytes) -> pb.EvaluationReport:
        """A user's EvaluationReport, checked: this session, the number of test points sent,
        accuracies in [0, 1], finite MSEs >= 0. The figures are the user's own (self-reported):
        the AP cannot check them against anything."""
        msg, kind = _reply(user_id, data)
        if self.expecting != "report" or kind != "report":
            raise ProtocolError(f"expected an evaluation report from {user_id}, got {kind}")
        return check_report(msg.report, self.session_id, self._eval_samples, user_id)

    def end_message(self, reason: str = "done") -> bytes:
        return pb.ApMessage(
            end=pb.SessionEnd(session_id=self.session_id, reason=reason)
        ).SerializeToString()


def _reply(user_id: str, data: bytes) -> tuple[pb.UserMessage, str | None]:
    """A user's reply parsed, and its kind; ProtocolError with the user's text if it is an
    error message."""
    msg = parse_user_message(data)
    kind = msg.WhichOneof("body")
    if kind == "error":
        raise ProtocolError(f"user {user_id} reported: {one_line(msg.error.message)}")
    return msg, kind


def build_access_point(
    ap_train: np.ndarray, config: AlignmentConfig, expected_users: int | None
) -> AccessPoint:
    """The AP state machine from its own train latents (pilots: the first pilot_fraction)."""
    from semalign.common.latents import pilot_count

    n = pilot_count(len(ap_train), config.pilot_fraction)
    if getattr(config, "pilot_selection", "first") != "first":
        from semalign.common.pilots import select_pilots

        ids = select_pilots(ap_train, n, config.pilot_selection, config.seed)
        return AccessPoint(
            config=config,
            pilot_latents=ap_train[ids],
            pilot_ids=ids,
            expected_users=expected_users,
        )
    return AccessPoint(
        config=config,
        pilot_latents=ap_train[:n],
        pilot_ids=np.arange(n, dtype=np.int64),
        expected_users=expected_users,
    )
