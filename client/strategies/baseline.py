"""The user half of the First-K and Top-K baselines (section IV).

The user receives the precoded pilots and, in order:

1. equalizes them with its SVD-MMSE equalizer M_l;
2. undoes the end-to-end map E_l = M_l H_l F with the linear MMSE estimate of the whitened
   symbols (:func:`~semalign.common.baselines.unmixing`; F comes with the pilots, E_l is built
   on the user's CSI estimate). Without it a binding power budget leaves the symbols shrunk,
   and several users or a channel-unaware AP leave them mixed, which Top-K's per-sample
   scatter cannot absorb; the authors' receiver likewise rescales by F's power normalizer;
3. undoes the AP's whitening of the selected symbols (factor and mean come with the pilots);
4. unpacks the K N_T complex symbols into 2 K N_T real features and zero-fills them into the
   AP's d native positions by their indices;
5. fits its least-squares alignment Q_l (eq. 20, with intercept) on them
   (``baseline_fit="received"``) or on the AP's full native pilots (``"full"``).

Both baselines look the same to a user, so both use this class.
"""

from __future__ import annotations

import numpy as np
from semalign.client.strategies.base import UserContext, UserStrategy
from semalign.client.strategies.registry import register_user_strategy
from semalign.common import baselines
from semalign.common.errors import ProtocolError
from semalign.common.validation import check_indices
from semalign.common.whitening import Whitener
from semalign.common.wire import WireFormat, check_matrix
from semalign.proto import semalign_pb2 as pb

#: Largest condition number accepted for the AP's whitening factor L L^H.
MAX_FACTOR_CONDITION = 1e12


def _real_view(y: np.ndarray) -> np.ndarray:
    """Complex (c, n) -> real (2 c, n): [Re y; Im y]."""
    return np.vstack([y.real, y.imag])


@register_user_strategy("first-k", "top-k")
class BaselineUser(UserStrategy):
    """Q_l (m, d + 1) real (the real view of the user's whitened m/2 complex features),
    fitted once on the pilot transmission."""

    def __init__(self, user: UserContext, name: str) -> None:
        super().__init__(user, name)
        self.alignment: np.ndarray | None = None
        self.whitening: Whitener | None = None
        #: W_l M_l (K N_T, K N_R): the SVD-MMSE equalizer, then the LMMSE of the whitened symbols
        self.receiver: np.ndarray | None = None

    @property
    def _sent(self) -> tuple[int, int]:
        """(K N_T symbols, 2 K N_T real features) per data point."""
        acc = self.user.accept
        symbols = acc.channel_uses * acc.antennas_tx
        return symbols, 2 * symbols

    def read_indices(self, message: pb.Matrix, n: int) -> np.ndarray:
        """Indices (2 K N_T, n), each in [0, d)."""
        return check_indices(message, (self._sent[1], n), self.user.accept.ap_latent_dim)

    def _whitening(self, msg: pb.PilotTransmission) -> Whitener:
        """The AP's whitening of the selected symbols: mean (K N_T,), lower-triangular factor
        (K N_T, K N_T) with a finite, positive, bounded-condition diagonal."""
        count = self._sent[0]
        if not (msg.HasField("whitening_mean") and msg.HasField("whitening_factor")):
            raise ProtocolError("pilot transmission without the AP's whitening (mean, factor)")
        mean = check_matrix(msg.whitening_mean, "whitening mean", (count, 1))[:, 0]
        factor = check_matrix(msg.whitening_factor, "whitening factor", (count, count))
        diag = np.abs(np.diag(factor))
        if np.any(np.triu(factor, 1)) or not diag.min() > 0:
            raise ProtocolError("whitening factor is not lower triangular with a positive diagonal")
        if (diag.max() / diag.min()) ** 2 > MAX_FACTOR_CONDITION:
            raise ProtocolError("whitening factor is too badly conditioned")
        return Whitener(mean=mean, factor=factor, condition=float("nan"), shrinkage=0.0)

    def _receiver(self, msg: pb.PilotTransmission) -> np.ndarray:
        """W_l M_l (K N_T, K N_R) for the precoder F the AP sent (finite, square): M_l the
        SVD-MMSE equalizer, W_l the LMMSE of the whitened symbols given E_l = M_l Hhat_l F, both
        designed on the CSI estimate."""
        user = self.user
        acc = user.accept
        count = self._sent[0]
        if not msg.HasField("precoder"):
            raise ProtocolError("pilot transmission without the AP's precoder")
        precoder = check_matrix(msg.precoder, "precoder", (count, count))
        equalizer = baselines.svd_mmse_equalizer(user.hbar_estimate, user.snr_db, acc.channel_uses)
        end_to_end = equalizer @ user.design_channel(precoder, noiseless=True)
        return baselines.unmixing(end_to_end, equalizer, user.channel.noise_var) @ equalizer

    def _received(self, symbols: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """Receive, SVD-MMSE equalize, de-whiten, unpack and zero-fill: (K N_T, n) sent ->
        (d, n) real estimate of the AP's native features."""
        user = self.user
        acc = user.accept
        if self.whitening is None or self.receiver is None:
            raise ProtocolError("no equalizer yet: evaluation before alignment")
        # designed on the CSI estimate, applied to what the true channel delivers
        packed = self.whitening.dewhiten(self.receiver @ user.channel(symbols))
        values = user.representation.latents(packed, self._sent[1]).T
        return baselines.scatter(values, indices, acc.ap_latent_dim)

    def on_pilots(self, msg: pb.PilotTransmission) -> bytes:
        """Checks: symbols (K N_T, n) complex and finite, indices (2 K N_T, n) in [0, d), the
        whitening, the reference (d, n) real for a full-feature fit; one pilot transmission."""
        user = self.user
        acc = user.accept
        if self.alignment is not None:
            raise ProtocolError("a second pilot transmission")
        n = len(acc.pilot_ids)
        symbols = check_matrix(msg.symbols, "pilot symbols", (self._sent[0], n), user.wire.codes)
        indices = self.read_indices(msg.indices, n)
        self.whitening = self._whitening(msg)
        self.receiver = self._receiver(msg)
        source = self._received(symbols, indices)
        target = _real_view(user.y)
        if acc.baseline_fit == pb.FULL:
            if not msg.HasField("reference"):
                raise ProtocolError("full-feature fit needs the AP's reference pilots")
            codes = WireFormat(real=True, precision=user.wire.precision).codes
            reference = check_matrix(
                msg.reference, "reference pilots", (acc.ap_latent_dim, n), codes
            )
            self.alignment = baselines.fit_alignment(reference, target)
        else:
            self.alignment = baselines.fit_alignment(source, target)
        residual = target - baselines.apply_alignment(self.alignment, source)
        ack = pb.Ack(
            session_id=acc.session_id,
            squared_error=float(np.sum(residual**2)),
            noise_term=0.0,
        )
        return pb.UserMessage(ack=ack).SerializeToString()

    def estimate(self, symbols: np.ndarray, indices: np.ndarray | None) -> np.ndarray:
        """Q_l applied to the received, de-whitened, zero-filled features: (m/2, n) complex."""
        if self.alignment is None:
            raise ProtocolError("no equalizer yet: evaluation before alignment")
        if indices is None:
            raise ProtocolError("baseline evaluation needs feature indices")
        real = baselines.apply_alignment(self.alignment, self._received(symbols, indices))
        half = real.shape[0] // 2
        return real[:half] + 1j * real[half:]
