"""A user's side of the alignment protocol, as a transport-free state machine.

The user owns its encoder's latents (pilots and test data), its classifier and its channel.
Only whitened statistics leave it: A_l = (G_l H_l)^H (G_l H_l) and P_l = (G_l H_l)^H Y_l with
Y_l whitened (section III-B iii), scalar loss terms and evaluation metrics.

:meth:`User.handshake_request` opens the session; :meth:`User.handle` answers every AP message
(bytes in, bytes out, ``None`` when nothing is to be sent back). The alignment messages
(``broadcast``, ``pilots``) and the estimate at evaluation are the strategy's
(:mod:`semalign.client.strategies`), chosen by the strategy the AP announces in its
HandshakeAccept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from semalign.client.strategies import UserStrategy, make_user_strategy
from semalign.common.channel import RayleighChannel, rayleigh_matrix
from semalign.common.classifier import LinearClassifier
from semalign.common.config import AlignmentConfig
from semalign.common.errors import ProtocolError
from semalign.common.packing import complex_to_real, real_to_complex
from semalign.common.strategies import get_strategy, strategy_for_code
from semalign.common.whitening import Whitener, fit_whitener
from semalign.common.wire import PROTOCOL_VERSION, from_matrix, parse_ap_message, to_matrix
from semalign.proto import semalign_pb2 as pb

log = logging.getLogger(__name__)

_ROUND_PROTOCOLS = {"paper": pb.PAPER, "compact": pb.COMPACT}


@dataclass
class UserData:
    """A user's private latents.

    Attributes:
        pilot_ids: (n,) ids of the pilot data points (rows of the train split).
        pilot_latents: (n, m) real native latents of those pilots.
        test_latents: (n_test, m) real native latents of the test split.
        test_labels: (n_test,) labels of the test split.
        classifier: the user's own classifier, trained on its native train latents.
    """

    pilot_ids: np.ndarray
    pilot_latents: np.ndarray
    test_latents: np.ndarray
    test_labels: np.ndarray
    classifier: LinearClassifier
    _whitened: tuple[Whitener, np.ndarray, float] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    #: arrays derived from these latents alone (e.g. R = Y X^H of the compact protocol), kept
    #: so that users sharing this data in one process compute and hold them once
    memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def whitened_pilots(self, rows: list[int]) -> tuple[Whitener, np.ndarray, float]:
        """Whitener fitted on the pilots ``rows`` (in that order), Y (m/2, n) and ||Y||_F^2.

        The result for all pilots in their stored order is kept: it depends only on this
        user's data, so sessions that reuse the data (seeds, sweep cells) whiten once.
        """
        full = len(rows) == len(self.pilot_ids) and rows == list(range(len(rows)))
        if full and self._whitened is not None:
            return self._whitened
        pilots = real_to_complex(np.asarray(self.pilot_latents, dtype=np.float64)[rows].T)
        whitener = fit_whitener(pilots)
        y = whitener.whiten(pilots)
        result = (whitener, y, float(np.real(np.vdot(y, y))))
        if full:
            self._whitened = result
        return result


@dataclass
class User:
    """User state machine.

    Args:
        user_id: unique name in the session.
        encoder: the user's encoder name (informational for the AP).
        data: private latents and classifier.
        antennas_rx: N_R.
        antennas_tx: N_T of the AP (needed to draw the channel before the handshake).
        snr_db: this user's SNR.
        channel_seed: seeds the channel draw and the noise; the same seed gives the same
            channel in every transport.
        share_csi: send Hbar_l in the handshake (for a channel-aware AP).
        token: invitation token (networked sessions).
        strategy_name: the session's strategy as configured (``None``: the one the AP
            announces; needed for a strategy without a proto code).
        round_protocols: round protocols offered besides ``paper`` (``("compact",)``); the
            AP picks one in its HandshakeAccept.
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
    round_protocols: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.latent_dim = self.data.pilot_latents.shape[1]
        self.hbar = rayleigh_matrix(
            self.antennas_rx, self.antennas_tx, np.random.default_rng(self.channel_seed)
        )
        self.noise_rng = np.random.default_rng((*self.channel_seed, 1))
        self.accept: pb.HandshakeAccept | None = None
        self.whitener: Whitener | None = None
        self.y: np.ndarray | None = None
        self.channel: RayleighChannel | None = None
        self.strategy: UserStrategy | None = None  # the strategy's user half, after the accept

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
        if self.share_csi:
            req.csi.CopyFrom(to_matrix(self.hbar, "complex128"))
        for name in self.round_protocols:
            req.round_protocols.append(_ROUND_PROTOCOLS[name])
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
        if acc.protocol_version != PROTOCOL_VERSION:
            raise ProtocolError(f"AP speaks protocol {acc.protocol_version}")
        if acc.antennas_tx != self.antennas_tx:
            raise ProtocolError(
                f"AP has N_T={acc.antennas_tx}, channel drawn for {self.antennas_tx}"
            )
        strategy = self._strategy_of(acc)
        position = {int(i): k for k, i in enumerate(self.data.pilot_ids)}
        try:
            rows = [position[int(i)] for i in acc.pilot_ids]
        except KeyError as exc:
            raise ProtocolError(f"AP asked for pilot {exc} this user does not hold") from None
        # Y_l: whitened pilots, never leave the user
        self.whitener, self.y, self.y_norm2 = self.data.whitened_pilots(rows)
        self.channel = RayleighChannel(self.hbar, acc.channel_uses, acc.noise_var, self.noise_rng)
        self.strategy = make_user_strategy(strategy, self)
        self.accept = acc
        self.strategy.on_accept(acc)
        if self.whitener.shrinkage:
            log.info(
                "%s: pilot covariance regularized (condition %.3g)",
                self.user_id,
                self.whitener.condition,
            )

    # ------------------------------------------------------------------ messages
    def handle(self, data: bytes) -> bytes | None:
        """Answer one AP message (bytes); returns the reply bytes or ``None``."""
        msg = parse_ap_message(data)
        kind = msg.WhichOneof("body")
        try:
            if kind == "accept":
                self._on_accept(msg.accept)
                return None
            if self.accept is None:
                raise ProtocolError(f"got {kind} before the handshake was accepted")
            if kind == "broadcast":
                return self.strategy.on_broadcast(msg.broadcast)
            if kind == "compact_broadcast":
                return self.strategy.on_compact_broadcast(msg.compact_broadcast)
            if kind == "pilots":
                return self.strategy.on_pilots(msg.pilots)
            if kind == "evaluate":
                return self._on_evaluate(msg.evaluate)
            if kind in ("end", "error"):
                return None
            raise ProtocolError(f"unexpected message {kind}")
        except (ProtocolError, ValueError) as exc:
            log.error("%s: %s", self.user_id, exc)
            return pb.UserMessage(error=pb.ProtocolError(message=str(exc))).SerializeToString()

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
        return complex_to_real(self.whitener.dewhiten(y_hat), self.latent_dim).T, y_hat

    def _on_evaluate(self, msg: pb.EvaluationRequest) -> bytes:
        ids = np.asarray(msg.sample_ids, dtype=np.int64)
        native = np.asarray(self.data.test_latents, dtype=np.float64)
        if len(ids) == 0 or ids.min() < 0 or ids.max() >= len(native):
            raise ProtocolError(f"evaluation ids out of range for {len(native)} test rows")
        symbols = from_matrix(msg.symbols).astype(np.complex128)
        indices = from_matrix(msg.indices) if msg.HasField("indices") else None
        decoded, y_hat = self.decode(symbols, indices)
        native, labels = native[ids], np.asarray(self.data.test_labels)[ids]
        y_true = self.whitener.whiten(real_to_complex(native.T))
        report = pb.EvaluationReport(
            session_id=self.accept.session_id,
            accuracy=self.data.classifier.accuracy(decoded, labels),
            native_accuracy=self.data.classifier.accuracy(native, labels),
            mse=float(np.mean((decoded - native) ** 2)),
            mse_whitened=float(np.mean(np.abs(y_hat - y_true) ** 2)),
            samples=len(ids),
        )
        return pb.UserMessage(report=report).SerializeToString()


def user_data_from_cache(
    latents_dir, encoder: str, pilot_fraction: float, *, classifier_seed: int = 0
) -> UserData:
    """A user's private data from the latent cache: first ``pilot_fraction`` of train as pilots."""
    from semalign.common.latents import load_classifier, load_encoder_splits, pilot_count

    splits = load_encoder_splits(latents_dir, encoder)
    train, test = splits["train"], splits["test"]
    n = pilot_count(len(train.labels), pilot_fraction)
    return UserData(
        pilot_ids=np.arange(n, dtype=np.int64),
        pilot_latents=train.latents[:n],
        test_latents=test.latents,
        test_labels=test.labels,
        classifier=load_classifier(latents_dir, encoder, train, seed=classifier_seed),
    )


def build_user(
    name: str, encoder: str, data: UserData, config: AlignmentConfig, ordinal: int
) -> User:
    """One user's state machine; ``ordinal`` (0-based position) seeds its channel with the seed."""
    return User(
        user_id=name,
        encoder=encoder,
        data=data,
        antennas_rx=config.antennas_rx,
        antennas_tx=config.antennas_tx,
        snr_db=config.snr_db,
        channel_seed=(config.seed, ordinal),
        share_csi=config.csi,
        strategy_name=config.strategy,
        round_protocols=("compact",) if config.protocol == "compact" else (),
    )
