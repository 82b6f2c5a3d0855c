"""The access point's side of the alignment protocol, as a transport-free state machine.

The AP owns its encoder's pilot latents, whitens them once (X, section III), and drives the
session of section III-B through serialized proto messages:

* :meth:`AccessPoint.handshake` takes a ``UserMessage`` with a HandshakeRequest and returns the
  HandshakeAccept bytes;
* :meth:`broadcast` returns the RoundBroadcast (S_l) bytes per user for the current round;
* :meth:`receive` takes each user's RoundUpload (A_l, P_l) bytes;
* :meth:`step` runs the local F-steps, averaging, Z projection and U update (eqs. 8-18);
* baselines use :meth:`pilot_transmission` instead of rounds;
* :meth:`evaluation_requests` encodes test data into transmitted symbols.

Nothing here knows how bytes travel: the in-process simulator, the gRPC service and the Flower
deployment all call these same methods.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

import numpy as np
from semalign.common import admm, baselines
from semalign.common.channel import block_channel, noise_variance
from semalign.common.config import ADMM_STRATEGIES, AlignmentConfig
from semalign.common.errors import ProtocolError
from semalign.common.packing import complex_dim, real_to_complex
from semalign.common.whitening import Whitener, fit_whitener
from semalign.common.wire import PROTOCOL_VERSION, from_matrix, parse_user_message, to_matrix
from semalign.proto import semalign_pb2 as pb

log = logging.getLogger(__name__)

_STRATEGY_CODES = {
    "fed": pb.FED,
    "multi-link": pb.MULTI_LINK,
    "first-k": pb.FIRST_K,
    "top-k": pb.TOP_K,
}
_FIT_CODES = {"received": pb.RECEIVED, "full": pb.FULL}
WIRE_DTYPE = "complex64"


@dataclass
class UserState:
    """What the AP knows about one registered user."""

    user_id: str
    index: int
    encoder: str
    latent_dim: int
    antennas_rx: int
    snr_db: float
    hbar: np.ndarray | None
    upload: tuple[np.ndarray, np.ndarray] | None = None
    terms: tuple[float, float] | None = None
    f: np.ndarray | None = None  # multi-link: this user's F_l, Z_l, U_l
    z: np.ndarray | None = None
    u: np.ndarray | None = None
    dropped: str | None = None


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
class TopKIndexCost:
    bits_per_sample: int
    channel_uses: int


@dataclass
class AccessPoint:
    """AP state machine.

    Args:
        config: the session configuration.
        pilot_latents: (n, d) real AP latents of the pilots, row i = pilot ``pilot_ids[i]``.
        pilot_ids: (n,) ids of the pilot data points (public, known to users).
        expected_users: number of users to accept (``None``: any number).
    """

    config: AlignmentConfig
    pilot_latents: np.ndarray
    pilot_ids: np.ndarray
    expected_users: int | None = None
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def __post_init__(self) -> None:
        latents = np.asarray(self.pilot_latents, dtype=np.float64)
        if latents.ndim != 2 or latents.shape[0] != len(self.pilot_ids):
            raise ValueError(
                f"pilot latents {latents.shape} do not match {len(self.pilot_ids)} pilot ids"
            )
        self.latent_dim = latents.shape[1]
        self.cdim = complex_dim(self.latent_dim)
        cfg = self.config
        self.index_cost = self._index_cost()
        self.data_channel_uses = cfg.channel_uses - self.index_cost.channel_uses
        if self.data_channel_uses < 1:
            raise ValueError(
                f"Top-K index side information ({self.index_cost.bits_per_sample} bits per "
                f"sample) needs {self.index_cost.channel_uses} channel uses, not less than "
                f"K={cfg.channel_uses}: increase --channel-uses or use --topk-index-cost none"
            )
        self.symbols = self.data_channel_uses * cfg.antennas_tx
        if self.symbols > self.cdim:
            raise ValueError(
                f"K*N_T = {self.symbols} symbols exceed the AP latent's {self.cdim} complex "
                f"features (d={self.latent_dim}): compression factor K/(d/2) must be <= 1"
            )
        self.whitener: Whitener = fit_whitener(real_to_complex(latents.T))
        self.x = self.whitener.whiten(real_to_complex(latents.T))  # (c, n)
        self.n = self.x.shape[1]
        self.users: dict[str, UserState] = {}
        self.round = 0
        self.finished = False
        rng = np.random.default_rng(cfg.seed)
        if cfg.strategy in ADMM_STRATEGIES:
            self.gram = admm.factor_gram(self.x)  # B = X X^H, once per run
            self.f = admm.init_pre_equalizer(self.symbols, self.cdim, rng)
            self.z = np.zeros_like(self.f)
            self.u = np.zeros_like(self.f)
        else:
            self.precoder: np.ndarray | None = None

    # ------------------------------------------------------------------ handshake
    def handshake(self, data: bytes) -> tuple[str, bytes]:
        """Register a user from its HandshakeRequest bytes; returns (user_id, accept bytes)."""
        msg = parse_user_message(data)
        if msg.WhichOneof("body") != "handshake":
            raise ProtocolError(f"expected a handshake, got {msg.WhichOneof('body')}")
        req = msg.handshake
        cfg = self.config
        if req.protocol_version != PROTOCOL_VERSION:
            raise ProtocolError(
                f"user {req.user_id!r} speaks protocol {req.protocol_version}, "
                f"AP speaks {PROTOCOL_VERSION}"
            )
        if not req.user_id or req.user_id in self.users:
            raise ProtocolError(f"user id {req.user_id!r} is empty or already registered")
        if self.round > 0:
            raise ProtocolError("session already started: late joins are not supported")
        if self.expected_users is not None and len(self.users) >= self.expected_users:
            raise ProtocolError(f"session is full ({self.expected_users} users)")
        if req.antennas_rx < 1 or req.latent_dim < 1:
            raise ProtocolError("antennas_rx and latent_dim must be >= 1")
        missing = np.setdiff1d(self.pilot_ids, np.asarray(req.pilot_ids, dtype=np.int64))
        if len(missing):
            raise ProtocolError(
                f"user {req.user_id!r} lacks {len(missing)} of the "
                f"{len(self.pilot_ids)} pilots (e.g. id {missing[0]})"
            )
        hbar = None
        if cfg.csi:
            if not req.HasField("csi"):
                raise ProtocolError(f"channel-aware AP needs CSI from user {req.user_id!r}")
            hbar = from_matrix(req.csi).astype(np.complex128)
            if hbar.shape != (req.antennas_rx, cfg.antennas_tx):
                raise ProtocolError(
                    f"CSI shape {hbar.shape} != (N_R={req.antennas_rx}, N_T={cfg.antennas_tx})"
                )
        state = UserState(
            user_id=req.user_id,
            index=len(self.users),
            encoder=req.encoder,
            latent_dim=req.latent_dim,
            antennas_rx=req.antennas_rx,
            snr_db=req.snr_db,
            hbar=hbar,
        )
        if cfg.strategy == "multi-link":
            state.f = self.f.copy()
            state.z = np.zeros_like(self.f)
            state.u = np.zeros_like(self.f)
        self.users[req.user_id] = state
        accept = pb.HandshakeAccept(
            session_id=self.session_id,
            user_index=state.index,
            strategy=_STRATEGY_CODES[cfg.strategy],
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
        )
        log.info(
            "handshake: %s (%s, d=%d, N_R=%d) as user %d",
            req.user_id,
            req.encoder,
            req.latent_dim,
            req.antennas_rx,
            state.index,
        )
        return req.user_id, pb.ApMessage(accept=accept).SerializeToString()

    @property
    def active_users(self) -> list[UserState]:
        return [u for u in self.users.values() if u.dropped is None]

    def drop(self, user_id: str, reason: str) -> None:
        """Stop waiting for a user (it died, stalled or misbehaved); the session goes on."""
        state = self.users[user_id]
        if state.dropped is None:
            state.dropped = f"round {self.round}: {reason}"
            log.warning("dropped user %s at round %d: %s", user_id, self.round, reason)

    # ------------------------------------------------------------------ ADMM rounds
    def _transmit_matrix(self, state: UserState | None) -> np.ndarray:
        """The feasible matrix used on air: Z (or Z_l for multi-link)."""
        if self.config.strategy == "multi-link":
            assert state is not None and state.z is not None
            return state.z
        return self.z

    def _current_f(self, state: UserState) -> np.ndarray:
        return state.f if self.config.strategy == "multi-link" else self.f

    def broadcast(self, *, final: bool = False) -> dict[str, bytes]:
        """RoundBroadcast bytes per active user: S_l = H_l F X (channel-aware) or F X.

        With ``final=True`` (after the last round) the transmit matrix Z is used so that each
        user's G_l matches what will be sent; users refresh G_l and reply with an Ack.
        """
        if self.config.strategy not in ADMM_STRATEGIES:
            raise ProtocolError(f"strategy {self.config.strategy} has no ADMM rounds")
        out = {}
        for state in self.active_users:
            f = self._transmit_matrix(state) if final else self._current_f(state)
            s = f @ self.x
            if self.config.csi:
                s = block_channel(state.hbar, self.data_channel_uses) @ s
            state.upload, state.terms = None, None
            msg = pb.RoundBroadcast(
                session_id=self.session_id,
                round=self.round,
                symbols=to_matrix(s, WIRE_DTYPE),
                final=final,
            )
            out[state.user_id] = pb.ApMessage(broadcast=msg).SerializeToString()
        return out

    def receive(self, user_id: str, data: bytes) -> None:
        """Take a user's RoundUpload (or the Ack of a final/pilot broadcast)."""
        state = self.users.get(user_id)
        if state is None or state.dropped:
            raise ProtocolError(f"upload from unknown or dropped user {user_id!r}")
        msg = parse_user_message(data)
        kind = msg.WhichOneof("body")
        if kind == "error":
            raise ProtocolError(f"user {user_id} reported: {msg.error.message}")
        if kind == "ack":
            state.terms = (msg.ack.squared_error, msg.ack.noise_term)
            return
        if kind != "upload":
            raise ProtocolError(f"expected an upload from {user_id}, got {kind}")
        up = msg.upload
        if up.session_id != self.session_id or up.round != self.round:
            raise ProtocolError(
                f"upload from {user_id} for session {up.session_id} round "
                f"{up.round}, expected {self.session_id} round {self.round}"
            )
        a, p = from_matrix(up.a).astype(np.complex128), from_matrix(up.p).astype(np.complex128)
        if a.shape != (self.symbols, self.symbols) or p.shape != (self.symbols, self.n):
            raise ProtocolError(
                f"upload from {user_id}: A {a.shape}, P {p.shape}; expected "
                f"({self.symbols}, {self.symbols}) and ({self.symbols}, {self.n})"
            )
        if not (np.all(np.isfinite(a)) and np.all(np.isfinite(p))):
            raise ProtocolError(f"upload from {user_id} contains non-finite values")
        state.upload = (a, p)
        state.terms = (up.squared_error, up.noise_term)

    def step(self) -> RoundStats:
        """F-steps, average (eq. 8), Z projection (eq. 17), U update (eq. 18) for this round."""
        users = [u for u in self.active_users if u.upload is not None]
        if not users:
            raise ProtocolError(f"round {self.round}: no uploads to step on")
        rho, power = self.config.rho, self.config.power
        if self.config.strategy == "fed":
            local = [admm.f_step(*u.upload, self.x, self.gram, self.z, self.u, rho) for u in users]
            self.f = admm.average(local)
            z_prev = self.z
            self.z = admm.project_power(self.f + self.u, power)
            self.u = admm.dual_update(self.u, self.f, self.z)
            primal, dual = admm.residuals(self.f, self.z, z_prev, rho)
        else:
            primal_sq = dual_sq = 0.0
            for u in users:
                u.f = admm.f_step(*u.upload, self.x, self.gram, u.z, u.u, rho)
                z_prev = u.z
                u.z = admm.project_power(u.f + u.u, power)
                u.u = admm.dual_update(u.u, u.f, u.z)
                p, d = admm.residuals(u.f, u.z, z_prev, rho)
                primal_sq, dual_sq = primal_sq + p**2, dual_sq + d**2
            primal, dual = float(np.sqrt(primal_sq)), float(np.sqrt(dual_sq))
        stats = self._round_stats(users, primal, dual)
        self.round += 1
        return stats

    def _round_stats(self, users: list[UserState], primal: float, dual: float) -> RoundStats:
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
        """Pilot MSE/objective reported in the Acks of the final broadcast."""
        users = [u for u in self.active_users if u.terms is not None]
        if not users:
            raise ProtocolError("no user acknowledged the final broadcast")
        return self._round_stats(users, float("nan"), float("nan"))

    # ------------------------------------------------------------------ baselines
    def _index_cost(self) -> TopKIndexCost:
        cfg = self.config
        if cfg.strategy != "top-k":
            return TopKIndexCost(0, 0)
        bits = baselines.top_k_index_bits(self.cdim, min(cfg.symbols, self.cdim))
        uses = (
            baselines.index_channel_uses(bits, cfg.antennas_tx, cfg.snr_db)
            if cfg.topk_index_cost == "channel-uses"
            else 0
        )
        if uses:
            # Fewer data symbols need fewer index bits: shrink until data + index fit in K.
            for data_uses in range(cfg.channel_uses - 1, 0, -1):
                bits = baselines.top_k_index_bits(self.cdim, data_uses * cfg.antennas_tx)
                uses = baselines.index_channel_uses(bits, cfg.antennas_tx, cfg.snr_db)
                if data_uses + uses <= cfg.channel_uses:
                    break
        return TopKIndexCost(bits, uses)

    def _select(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.config.strategy == "first-k":
            return baselines.first_k_select(x, self.symbols), baselines.first_k_indices(
                self.symbols, x.shape[1]
            )
        return baselines.top_k_select(x, self.symbols)

    def _baseline_precoder(self, selected: np.ndarray) -> np.ndarray:
        """Power-constrained precoder of eq. (19) over all active users (identity without CSI)."""
        cfg = self.config
        if not cfg.csi:
            return np.sqrt(cfg.power / self.symbols) * np.eye(self.symbols, dtype=np.complex128)
        gram = admm.factor_gram(selected)
        a = np.zeros((self.symbols, self.symbols), dtype=np.complex128)
        m_sum = np.zeros_like(a)
        for state in self.active_users:
            eq = baselines.svd_mmse_equalizer(state.hbar, state.snr_db, self.data_channel_uses)
            m = eq @ block_channel(state.hbar, self.data_channel_uses)
            a += m.conj().T @ m
            m_sum += m.conj().T
        return baselines.power_constrained_precoder(a, gram, m_sum @ gram.matrix, cfg.power)

    def pilot_transmission(self) -> dict[str, bytes]:
        """Baselines: precoded pilot symbols (and indices / full reference) per active user."""
        if self.config.strategy in ADMM_STRATEGIES:
            raise ProtocolError("pilot transmission is for the first-k/top-k baselines")
        selected, indices = self._select(self.x)
        self.precoder = self._baseline_precoder(selected)
        msg = pb.PilotTransmission(
            session_id=self.session_id,
            symbols=to_matrix(self.precoder @ selected, WIRE_DTYPE),
            indices=to_matrix(indices, "uint16"),
        )
        if self.config.baseline_fit == "full":
            msg.reference.CopyFrom(to_matrix(self.x, WIRE_DTYPE))
        data = pb.ApMessage(pilots=msg).SerializeToString()
        for state in self.active_users:
            state.terms = None
        return {u.user_id: data for u in self.active_users}

    # ------------------------------------------------------------------ evaluation
    def encode(
        self, latents: np.ndarray, state: UserState | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Transmitted symbols (K N_T, n) for real AP latents (n, d), plus baseline indices."""
        x = self.whitener.whiten(real_to_complex(np.asarray(latents, dtype=np.float64).T))
        if self.config.strategy in ADMM_STRATEGIES:
            return self._transmit_matrix(state) @ x, None
        selected, indices = self._select(x)
        return self.precoder @ selected, indices

    def evaluation_requests(self, latents: np.ndarray, sample_ids: np.ndarray) -> dict[str, bytes]:
        """EvaluationRequest bytes per active user for test latents (n_test, d)."""
        if latents.shape[1] != self.latent_dim:
            raise ValueError(f"test latents have d={latents.shape[1]}, AP has {self.latent_dim}")
        shared = None
        out = {}
        for state in self.active_users:
            if shared is None or self.config.strategy == "multi-link":
                symbols, indices = self.encode(latents, state)
                msg = pb.EvaluationRequest(
                    session_id=self.session_id,
                    symbols=to_matrix(symbols, WIRE_DTYPE),
                    sample_ids=np.asarray(sample_ids).tolist(),
                )
                if indices is not None:
                    msg.indices.CopyFrom(to_matrix(indices, "uint16"))
                shared = pb.ApMessage(evaluate=msg).SerializeToString()
            out[state.user_id] = shared
        return out

    def receive_report(self, user_id: str, data: bytes) -> pb.EvaluationReport:
        msg = parse_user_message(data)
        if msg.WhichOneof("body") == "error":
            raise ProtocolError(f"user {user_id} reported: {msg.error.message}")
        if msg.WhichOneof("body") != "report":
            raise ProtocolError(f"expected an evaluation report from {user_id}")
        return msg.report

    def end_message(self, reason: str = "done") -> bytes:
        return pb.ApMessage(
            end=pb.SessionEnd(session_id=self.session_id, reason=reason)
        ).SerializeToString()


def build_access_point(
    ap_train: np.ndarray, config: AlignmentConfig, expected_users: int | None
) -> AccessPoint:
    """The AP state machine from its own train latents (pilots: the first pilot_fraction)."""
    from semalign.common.latents import pilot_count

    n = pilot_count(len(ap_train), config.pilot_fraction)
    return AccessPoint(
        config=config,
        pilot_latents=ap_train[:n],
        pilot_ids=np.arange(n, dtype=np.int64),
        expected_users=expected_users,
    )
