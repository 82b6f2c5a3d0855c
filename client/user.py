"""A user's side of the alignment protocol, as a transport-free state machine.

The user owns its encoder's latents (pilots and test data), its classifier and its channel.
Only whitened statistics leave it: A_l = (G_l H_l)^H (G_l H_l) and P_l = (G_l H_l)^H Y_l with
Y_l whitened (section III-B iii), scalar loss terms and evaluation metrics. With secure
aggregation (``secure``) the rounds upload instead the user's own F_l under pairwise masks
(:mod:`semalign.client.strategies.secure_admm`), plus its public keys and sealed key shares.

:meth:`User.handshake_request` opens the session; :meth:`User.handle` answers every AP message
(bytes in, bytes out, ``None`` when nothing is to be sent back). The alignment messages
(``broadcast``, ``pilots``) and the estimate at evaluation are the strategy's
(:mod:`semalign.client.strategies`), chosen by the strategy the AP announces in its
HandshakeAccept.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from semalign.client.evaluation import content_key, evaluation_reference
from semalign.client.strategies import UserStrategy, make_user_strategy
from semalign.common.channels import BlockFadingLink, ChannelModel
from semalign.common.classifier import ScoreClassifier
from semalign.common.config import PAPER_TASK_MODEL, AlignmentConfig
from semalign.common.errors import ProtocolError, SemalignError
from semalign.common.failpoints import failpoint
from semalign.common.packing import complex_dim
from semalign.common.representation import LINEAR, Representation
from semalign.common.secure_aggregation import UserKeys
from semalign.common.strategies import get_strategy, strategy_for_code
from semalign.common.validation import check_accept, check_ids, one_line
from semalign.common.whitening import Whitener
from semalign.common.wire import (
    PROTOCOL_VERSION,
    WireFormat,
    check_matrix,
    parse_ap_message,
    to_matrix,
    wire_precision_name,
)
from semalign.proto import semalign_pb2 as pb

log = logging.getLogger(__name__)

_ROUND_PROTOCOLS = {"paper": pb.PAPER, "compact": pb.COMPACT}
#: the AP's messages of the protocol's phases; any other goes to the strategy's ``on_extra``
#: (secure aggregation's key setup and unmasking)
_PHASE_MESSAGES = ("broadcast", "compact_broadcast", "pilots", "evaluate")


@dataclass
class UserData:
    """A user's private latents.

    Attributes:
        pilot_ids: (n,) ids of the pilot data points (rows of the train split).
        pilot_latents: (n, m) real native latents of those pilots.
        test_latents: (n_test, m) real native latents of the test split.
        test_labels: (n_test,) labels of the test split.
        classifier: the user's own task model, trained on its native train latents.
    """

    pilot_ids: np.ndarray
    pilot_latents: np.ndarray
    test_latents: np.ndarray
    test_labels: np.ndarray
    classifier: ScoreClassifier
    #: the whitened pilots of every representation used so far (all pilots, stored order)
    _whitened: dict[Representation, tuple[Whitener, np.ndarray, float]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    #: arrays derived from these latents alone (e.g. R = Y X^H of the compact protocol), kept
    #: so that users sharing this data in one process compute and hold them once
    memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def whitened_pilots(
        self, rows: list[int], representation: Representation = LINEAR
    ) -> tuple[Whitener, np.ndarray, float]:
        """Whitener fitted on the pilots ``rows`` (in that order), Y (m/2, n) (or (m, n) in the
        widely-linear ``representation``) and ||Y||_F^2.

        The result for all pilots in their stored order is kept: it depends only on this
        user's data, so sessions that reuse the data (seeds, sweep cells) whiten once.
        """
        full = len(rows) == len(self.pilot_ids) and rows == list(range(len(rows)))
        if full and representation in self._whitened:
            return self._whitened[representation]
        pilots = representation.features(np.asarray(self.pilot_latents)[rows])
        whitener = representation.fit_whitener(pilots)
        y = whitener.whiten(pilots)
        result = (whitener, y, float(np.real(np.vdot(y, y))))
        if full:
            self._whitened[representation] = result
        return result

    def evaluation_reference(
        self,
        ids: np.ndarray,
        whitener: Whitener,
        representation: Representation,
        pilot_ids: Sequence[int],
    ) -> tuple[np.ndarray, float]:
        """What a user's evaluation compares its estimate with, for the test rows ``ids``: their
        native latents whitened by ``whitener``, (m/2, len(ids)) complex (or (m, len(ids)) in the
        widely-linear ``representation``), read-only, and the task model's accuracy on them
        (the native accuracy).

        Both depend only on this data, the rows and the whitener, which the pilot ids and the
        ``representation`` fix; kept in :attr:`memo` under those (by content, as R = Y X^H is),
        so users sharing this data in one process whiten an encoder's test latents once.
        """
        key = ("evaluation", content_key(pilot_ids), representation, content_key(ids))
        if key not in self.memo:
            self.memo[key] = evaluation_reference(self, ids, whitener, representation)
        return self.memo[key]


@dataclass
class User:
    """User state machine.

    Args:
        user_id: unique name in the session.
        encoder: the user's encoder name (informational for the AP).
        data: private latents and classifier.
        antennas_rx: N_R.
        antennas_tx: N_T of the AP (needed to draw the channel before the handshake).
        snr_db: this user's SNR (reported in the handshake; the AP sets its noise from it).
        channel_seed: seeds the channel draw and the noise; the same seed gives the same
            channel in every transport.
        share_csi: send Hbar_l in the handshake (for a channel-aware AP).
        token: invitation token (networked sessions).
        strategy_name: the session's strategy as configured (``None``: the one the AP
            announces; needed for a strategy without a proto code).
        link: this user's channel model (fading, CSI error; ``None``: i.i.d. Rayleigh with
            perfect CSI at ``snr_db``). Its draw gives the true ``hbar``, which acts on the
            transmitted symbols (``channel``), and the estimate ``hbar_estimate``, which the
            user designs with and reports to the AP (``design_channel``, the handshake CSI).
        round_protocols: round protocols offered besides ``paper`` (``("compact",)``); the
            AP picks one in its HandshakeAccept.
        secure: take part only in secure aggregation (``--aggregation secure``): fresh key
            pairs go into the handshake, and an AP that runs plain aggregation is refused.
    """

    user_id: str
    encoder: str
    data: UserData
    antennas_rx: int
    antennas_tx: int
    snr_db: float
    channel_seed: tuple[int, ...]
    share_csi: bool = True
    token: str = ""
    received_rounds: list[int] = field(default_factory=list)
    strategy_name: str | None = None
    link: ChannelModel | None = None
    round_protocols: tuple[str, ...] = ()
    secure: bool = False

    def __post_init__(self) -> None:
        self.latent_dim = self.data.pilot_latents.shape[1]
        if self.link is None:
            self.link = ChannelModel(snr_db=self.snr_db)
        real = self.link.draw(
            self.antennas_rx, self.antennas_tx, np.random.default_rng(self.channel_seed)
        )
        self.hbar, self.hbar_estimate = real.hbar, real.estimate
        self.noise_rng = np.random.default_rng((*self.channel_seed, 1))
        self.accept: pb.HandshakeAccept | None = None
        self.representation: Representation = LINEAR  # the accept's (widely linear or not)
        self.wire: WireFormat = LINEAR.wire_format()  # the accept's wire precision
        self.whitener: Whitener | None = None
        self.y: np.ndarray | None = None
        self.channel: BlockFadingLink | None = None  # the truth: what symbols go through
        self.design_channel: BlockFadingLink | None = None  # the estimate: what G_l is built on
        self.strategy: UserStrategy | None = None  # the strategy's user half, after the accept
        self.final_seen = False
        self.ended = False
        #: secure aggregation's key pairs (fresh per state machine; private keys never leave)
        self.secure_keys: UserKeys | None = UserKeys.generate() if self.secure else None

    # ------------------------------------------------------------------ handshake
    def handshake_request(self) -> bytes:
        req = pb.HandshakeRequest(
            protocol_version=PROTOCOL_VERSION,
            user_id=self.user_id,
            encoder=self.encoder,
            latent_dim=self.latent_dim,
            antennas_rx=self.antennas_rx,
            snr_db=self.snr_db,
            pilot_ids=np.asarray(self.data.pilot_ids).tolist(),
            token=self.token,
        )
        if self.share_csi:  # what the user knows of its channel: the estimate
            req.csi.CopyFrom(to_matrix(self.hbar_estimate, "complex128"))
        for name in self.round_protocols:
            req.round_protocols.append(_ROUND_PROTOCOLS[name])
        if self.secure_keys is not None:
            req.encryption_key = self.secure_keys.public
        return pb.UserMessage(handshake=req).SerializeToString()

    def _strategy_of(self, acc: pb.HandshakeAccept) -> str:
        """The strategy the AP announces (its code), checked against the configured one."""
        if acc.strategy == pb.STRATEGY_UNSPECIFIED:
            if self.strategy_name is None:
                raise ProtocolError("the AP announced no strategy and none is configured")
            return get_strategy(self.strategy_name).name
        name = strategy_for_code(acc.strategy).name
        if self.strategy_name is not None and self.strategy_name != name:
            raise ProtocolError(f"AP runs {name}, this user was set up for {self.strategy_name}")
        return name

    def _on_accept(self, acc: pb.HandshakeAccept) -> None:
        if self.accept is not None:
            raise ProtocolError("a second HandshakeAccept")
        check_accept(acc, self.antennas_tx)
        strategy = self._strategy_of(acc)
        position = {int(i): k for k, i in enumerate(self.data.pilot_ids)}
        try:
            rows = [position[int(i)] for i in acc.pilot_ids]
        except KeyError as exc:
            raise ProtocolError(f"AP asked for pilot {exc} this user does not hold") from None
        self.representation = Representation(widely_linear=acc.widely_linear)
        self.wire = self.representation.wire_format(wire_precision_name(acc.wire_precision))
        if acc.widely_linear and not get_strategy(strategy).has_rounds:
            raise ProtocolError(f"widely-linear equalizers with strategy {strategy}")
        # Y_l: whitened pilots, never leave the user
        self.whitener, self.y, self.y_norm2 = self.data.whitened_pilots(rows, self.representation)
        self.channel = BlockFadingLink(self.hbar, acc.channel_uses, acc.noise_var, self.noise_rng)
        self.design_channel = (
            self.channel
            if self.hbar_estimate is self.hbar
            else BlockFadingLink(self.hbar_estimate, acc.channel_uses, acc.noise_var)
        )
        self.strategy = make_user_strategy(strategy, self, self._aggregation(acc, strategy))
        self.accept = acc
        self.strategy.on_accept(acc)
        if self.whitener.shrinkage:
            log.info(
                "%s: pilot covariance regularized (condition %.3g)",
                self.user_id,
                self.whitener.condition,
            )

    def _aggregation(self, acc: pb.HandshakeAccept, strategy: str) -> str:
        """The session's aggregation (``plain`` or ``secure``): the AP's, which must be this
        user's own (a secure user has keys and takes part in nothing else)."""
        if (acc.aggregation == pb.SECURE) != self.secure:
            raise ProtocolError(
                "the AP runs secure aggregation and this user has no keys"
                if self.secure_keys is None
                else "this user takes part only in secure aggregation; the AP runs plain"
            )
        if self.secure and not get_strategy(strategy).secure_aggregation:
            raise ProtocolError(f"secure aggregation with strategy {strategy}, which has none")
        return "secure" if self.secure else "plain"

    # ------------------------------------------------------------------ messages
    #: Errors that answer an AP message with a ProtocolError reply instead of escaping
    #: (every error semalign raises on purpose, and numpy's on a hostile input).
    recoverable: tuple[type[BaseException], ...] = (SemalignError, ValueError)

    def handle(self, data: bytes) -> bytes | None:
        """Answer one AP message (bytes); returns the reply bytes or ``None``.

        A message this user cannot accept (undecodable, out of order, another session, wrong
        shapes, dtypes or non-finite values) is answered with a ProtocolError message naming
        the problem; the AP then drops this user.
        """
        try:
            msg = parse_ap_message(data)
            kind = msg.WhichOneof("body")
            if kind is None:
                raise ProtocolError("a message without a body")
            if kind in ("end", "error"):
                self.ended = True
                return None
            if self.ended:
                raise ProtocolError(f"got {kind} after the session ended")
            if kind == "accept":
                failpoint("user.handshake")
                self._on_accept(msg.accept)
                return None
            if self.accept is None:
                raise ProtocolError(f"got {kind} before the handshake was accepted")
            self._check_session(msg, kind)
            if kind not in _PHASE_MESSAGES:
                return self.strategy.on_extra(kind, getattr(msg, kind))
            failpoint(*_phase(msg, kind))  # chaos tests only (common/failpoints.py)
            if kind == "broadcast":
                self._check_round(msg.broadcast)
                return self.strategy.on_broadcast(msg.broadcast)
            if kind == "compact_broadcast":
                self._check_round(msg.compact_broadcast)
                return self.strategy.on_compact_broadcast(msg.compact_broadcast)
            if kind == "pilots":
                return self.strategy.on_pilots(msg.pilots)
            if kind == "evaluate":
                return self._on_evaluate(msg.evaluate)
            raise ProtocolError(f"unexpected message {kind}")
        except self.recoverable as exc:
            text = one_line(exc)
            log.info("%s: refused an AP message: %s", self.user_id, text)
            return pb.UserMessage(error=pb.ProtocolError(message=text)).SerializeToString()

    def _check_session(self, msg: pb.ApMessage, kind: str) -> None:
        session_id = getattr(msg, kind).session_id
        if session_id != self.accept.session_id:
            raise ProtocolError(
                f"{kind} for session {one_line(session_id, 40)!r}, "
                f"this user is in {self.accept.session_id}"
            )

    def _check_round(self, msg: pb.RoundBroadcast | pb.CompactBroadcast) -> None:
        """Rounds increase; the final broadcast comes once, after at most T rounds."""
        last = self.received_rounds[-1] if self.received_rounds else -1
        limit = self.accept.iterations + (1 if msg.final else 0)
        if self.final_seen or msg.round <= last or msg.round >= limit:
            raise ProtocolError(
                f"broadcast of round {msg.round} after round {last}"
                + (" and the final broadcast" if self.final_seen else "")
                + f" (T={self.accept.iterations})"
            )
        self.final_seen = msg.final

    def decode(
        self, symbols: np.ndarray, indices: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Receive ``symbols`` (K N_T, n) through this user's channel and decode them.

        Returns the decoded latents (n, m) in the user's native real space and the estimate
        (m/2, n) in its whitened complex space.
        """
        if self.strategy is None:
            raise ProtocolError("no equalizer yet: evaluation before alignment")
        y_hat = self.strategy.estimate(symbols, indices)
        return self.representation.latents(self.whitener.dewhiten(y_hat), self.latent_dim), y_hat

    def _on_evaluate(self, msg: pb.EvaluationRequest) -> bytes:
        count = len(self.data.test_latents)
        if not 1 <= len(msg.sample_ids) <= count:
            raise ProtocolError(f"{len(msg.sample_ids)} evaluation ids for {count} test rows")
        ids = check_ids(msg.sample_ids, "evaluation ids", unique=False, limit=count)
        rep = self.representation
        rows = rep.symbol_rows(self.accept.channel_uses * self.accept.antennas_tx)
        symbols = check_matrix(msg.symbols, "evaluation symbols", (rows, len(ids)), self.wire.codes)
        indices = None
        if msg.HasField("indices"):
            if self.strategy is None:
                raise ProtocolError("no equalizer yet: evaluation before alignment")
            indices = self.strategy.read_indices(msg.indices, len(ids))
        decoded, y_hat = self.decode(symbols.astype(np.complex128), indices)
        native = np.asarray(np.asarray(self.data.test_latents)[ids], dtype=np.float64)
        labels = np.asarray(self.data.test_labels)[ids]
        y_true, native_accuracy = self.data.evaluation_reference(
            ids, self.whitener, rep, self.accept.pilot_ids
        )
        # per complex feature (two reals when widely linear), as the rounds' pilot MSE
        per_feature = len(ids) * complex_dim(self.latent_dim)
        report = pb.EvaluationReport(
            session_id=self.accept.session_id,
            accuracy=self.data.classifier.accuracy(decoded, labels),
            native_accuracy=native_accuracy,
            mse=float(np.mean((decoded - native) ** 2)),
            mse_whitened=float(np.sum(np.abs(y_hat - y_true) ** 2) / per_feature),
            samples=len(ids),
        )
        return pb.UserMessage(report=report).SerializeToString()


def _phase(msg: pb.ApMessage, kind: str) -> tuple[str, int | None]:
    """The failpoint (and its round) of an AP message after the handshake."""
    if kind in ("broadcast", "compact_broadcast"):
        body = getattr(msg, kind)
        return ("user.final" if body.final else "user.round"), body.round
    return ("user.evaluation" if kind == "evaluate" else "user.final"), None


def user_data_from_cache(
    latents_dir, encoder: str, pilot_fraction: float, *, classifier_seed: int = 0
) -> UserData:
    """A user's private data from the latent cache: first ``pilot_fraction`` of train as pilots,
    scored by the paper's task model (the MLP, ``classifier-mlp.npz``: trained on the native
    train latents when the cache has none)."""
    from semalign.common.latents import load_encoder_splits, load_task_model, pilot_count

    splits = load_encoder_splits(latents_dir, encoder)
    train, test = splits["train"], splits["test"]
    n = pilot_count(len(train.labels), pilot_fraction)
    return UserData(
        pilot_ids=np.arange(n, dtype=np.int64),
        pilot_latents=train.latents[:n],
        test_latents=test.latents,
        test_labels=test.labels,
        classifier=load_task_model(
            latents_dir,
            encoder,
            train,
            kind=PAPER_TASK_MODEL,
            seed=classifier_seed,
        ),
    )


def build_user(
    name: str,
    encoder: str,
    data: UserData,
    config: AlignmentConfig,
    ordinal: int,
    num_users: int | None = None,
) -> User:
    """One user's state machine; ``ordinal`` (0-based position) seeds its channel with the seed.

    Its link is ``config.channel.user_model(ordinal, num_users, config.snr_db)``: the session's
    fading law and CSI error, and this user's SNR (per-user list, path loss, or ``snr_db``).
    ``num_users`` (L) checks the length of a per-user SNR list; ``None``: the list's length
    (every user has the same SNR without one).
    """
    if num_users is None:
        channel = config.channel
        num_users = len(channel.user_snr_db or channel.distances or ()) or ordinal + 1
    link = config.channel.user_model(ordinal, num_users, config.snr_db)
    return User(
        user_id=name,
        encoder=encoder,
        data=data,
        antennas_rx=config.antennas_rx,
        antennas_tx=config.antennas_tx,
        snr_db=link.snr_db,
        channel_seed=(config.seed, ordinal),
        share_csi=config.csi,
        strategy_name=config.strategy,
        link=link,
        round_protocols=("compact",) if config.protocol == "compact" else (),
        secure=config.aggregation == "secure",
    )
