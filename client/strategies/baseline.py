"""The user half of the First-K and Top-K baselines (section IV).

The user receives the precoded pilots, equalizes them with its SVD-MMSE equalizer, zero-fills
the symbols into the AP's d/2 complex features by their indices, and fits its least-squares
alignment Q_l (eq. 20) on them (``baseline_fit="received"``) or on the AP's noiseless reference
pilots (``"full"``). Both baselines look the same to a user, so both use this class.
"""

from __future__ import annotations

import numpy as np
from semalign.client.strategies.base import UserContext, UserStrategy
from semalign.common import baselines
from semalign.common.errors import ProtocolError
from semalign.common.packing import complex_dim
from semalign.common.validation import check_indices
from semalign.common.wire import check_matrix
from semalign.proto import semalign_pb2 as pb


class BaselineUser(UserStrategy):
    """Q_l (m/2, d/2), fitted once on the pilot transmission."""

    def __init__(self, user: UserContext, name: str) -> None:
        super().__init__(user, name)
        self.alignment: np.ndarray | None = None

    def _received(self, symbols: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """Receive, SVD-MMSE equalize and zero-fill: (K N_T, n) sent -> (d_AP/2, n) estimate."""
        user = self.user
        acc = user.accept
        # designed on the CSI estimate, applied to what the true channel delivers
        equalizer = baselines.svd_mmse_equalizer(user.hbar_estimate, user.snr_db, acc.channel_uses)
        estimate = equalizer @ user.channel(symbols)
        return baselines.scatter(estimate, indices.astype(np.int64), complex_dim(acc.ap_latent_dim))

    def on_pilots(self, msg: pb.PilotTransmission) -> bytes:
        """Checks: symbols (K N_T, n) complex and finite, indices (K N_T, n) in [0, d/2), the
        reference (d/2, n) for a full-feature fit; one pilot transmission only."""
        user = self.user
        acc = user.accept
        if self.alignment is not None:
            raise ProtocolError("a second pilot transmission")
        shape = (acc.channel_uses * acc.antennas_tx, len(acc.pilot_ids))
        symbols = check_matrix(msg.symbols, "pilot symbols", shape)
        indices = check_indices(msg.indices, shape, acc.ap_latent_dim)
        source = self._received(symbols, indices)
        if acc.baseline_fit == pb.FULL:
            if not msg.HasField("reference"):
                raise ProtocolError("full-feature fit needs the AP's reference pilots")
            reference = check_matrix(
                msg.reference, "reference pilots", (complex_dim(acc.ap_latent_dim), shape[1])
            )
            self.alignment = baselines.fit_alignment(reference, user.y)
        else:
            self.alignment = baselines.fit_alignment(source, user.y)
        residual = user.y - self.alignment @ source
        ack = pb.Ack(
            session_id=acc.session_id,
            squared_error=float(np.real(np.vdot(residual, residual))),
            noise_term=0.0,
        )
        return pb.UserMessage(ack=ack).SerializeToString()

    def estimate(self, symbols: np.ndarray, indices: np.ndarray | None) -> np.ndarray:
        """Q_l applied to the received, equalized, zero-filled symbols: (m/2, n)."""
        if self.alignment is None:
            raise ProtocolError("no equalizer yet: evaluation before alignment")
        if indices is None:
            raise ProtocolError("baseline evaluation needs symbol indices")
        return self.alignment @ self._received(symbols, indices)
