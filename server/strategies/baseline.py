"""The AP half shared by the First-K and Top-K baselines (section IV).

The AP selects 2 K N_T real features of each data point in its NATIVE latent (which ones: the
subclass's :meth:`BaselineStrategy.select`), packs them into K N_T complex symbols, whitens them
with a mean and factor fitted on the pilots' selected symbols, and precodes them with the
power-constrained F of eq. (19) computed over all active users' SVD-MMSE equalized channels
(identity scaled to P_T without CSI). The pilot transmission carries the whitening (so users
can undo it), the precoder (so users can undo the end-to-end map M_l H_l F, as the authors'
receiver undoes F's power normalization) and the indices; users fit their alignment Q_l
(eq. 20) and acknowledge.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
from semalign.common import admm, baselines
from semalign.common.channels import block_channel
from semalign.common.config import AlignmentConfig, GeometryError
from semalign.common.errors import ProtocolError
from semalign.common.whitening import Whitener
from semalign.common.wire import fill_matrix, to_matrix
from semalign.proto import semalign_pb2 as pb
from semalign.server.strategies.base import ApContext, ApStrategy, UserState


@dataclass
class IndexCost:
    """Side information of a baseline: index bits per sample and the channel uses they take."""

    bits_per_sample: int
    channel_uses: int


class BaselineStrategy(ApStrategy):
    """One pilot transmission (phase ``pilots``), then evaluation with the same precoder."""

    final_phase = "pilots"

    def __init__(self, config: AlignmentConfig, cdim: int) -> None:
        super().__init__(config, cdim)
        self.index_cost = IndexCost(0, 0)
        self.precoder: np.ndarray | None = None
        self.selection_whitener: Whitener | None = None
        #: the pilots' whitened selected symbols (K N_T, n) and indices (2 K N_T, n)
        self.pilots: tuple[np.ndarray, np.ndarray] | None = None

    @abstractmethod
    def select(self, latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The 2 K N_T real features sent of native latents (d, n): (values, indices), both
        (2 K N_T, n)."""

    @property
    def features_sent(self) -> int:
        """2 K N_T: real features sent per data point (K N_T complex symbols)."""
        return 2 * self.ap.symbols

    def start(self, ap: ApContext) -> None:
        """Select the pilots' features and fit the whitening of their symbols (K N_T, n)."""
        super().start(ap)
        self.precoder = None
        if self.features_sent > ap.latent_dim:
            raise GeometryError(
                f"{self.config.strategy} sends 2 K N_T = {self.features_sent} real features of "
                f"the AP's d={ap.latent_dim}: lower K or N_T"
            )
        values, indices = self.select(ap.pilot_latents.T)
        packed = ap.representation.features(values.T)
        self.selection_whitener = ap.representation.fit_whitener(packed)
        self.pilots = (self.selection_whitener.whiten(packed), indices)

    def symbols_of(self, latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Whitened packed symbols (K N_T, n) and indices (2 K N_T, n) of native latents
        (n, d)."""
        if self.selection_whitener is None:
            raise ProtocolError("baseline used before start()")
        values, indices = self.select(np.asarray(latents, dtype=np.float64).T)
        packed = self.ap.representation.features(values.T)
        return self.selection_whitener.whiten(packed), indices

    def _precoder(self, selected: np.ndarray) -> np.ndarray:
        """Power-constrained precoder (K N_T, K N_T) of eq. (19) for the whitened ``selected``
        pilots (K N_T, n) over all active users (sqrt(P_T / K N_T) I without CSI)."""
        ap, cfg = self.ap, self.config
        if not cfg.csi:
            return np.sqrt(cfg.power / ap.symbols) * np.eye(ap.symbols, dtype=np.complex128)
        gram = admm.factor_gram(selected)
        a = np.zeros((ap.symbols, ap.symbols), dtype=np.complex128)
        m_sum = np.zeros_like(a)
        for state in ap.active_users:
            eq = baselines.svd_mmse_equalizer(state.hbar, state.snr_db, ap.data_channel_uses)
            m = eq @ block_channel(state.hbar, ap.data_channel_uses)
            a += m.conj().T @ m
            m_sum += m.conj().T
        return baselines.power_constrained_precoder(a, gram, m_sum @ gram.matrix, cfg.power)

    def final_messages(self) -> dict[str, bytes]:
        """PilotTransmission bytes, the same for every active user: the precoded pilots, their
        indices, the whitening of the selected symbols (mean, factor), the precoder F, and the
        AP's full native pilots for ``baseline_fit="full"``. The symbols and the native pilots
        travel at the session's wire precision; the whitening and F in complex128 (users
        invert them)."""
        ap = self.ap
        if self.pilots is None:
            raise ProtocolError("baseline used before start()")
        selected, indices = self.pilots
        self.precoder = self._precoder(selected)
        whitener = self.selection_whitener
        msg = pb.PilotTransmission(
            session_id=ap.session_id,
            symbols=ap.wire.matrix(self.precoder @ selected),
            indices=to_matrix(indices, "uint16"),
            whitening_mean=to_matrix(whitener.mean[:, None], "complex128"),
            whitening_factor=to_matrix(whitener.factor, "complex128"),
            precoder=to_matrix(self.precoder, "complex128"),
        )
        if self.config.baseline_fit == "full":
            reference = np.asarray(ap.pilot_latents).T
            fill_matrix(msg.reference, reference, "float32", precision=ap.wire.precision)
        data = pb.ApMessage(pilots=msg).SerializeToString()
        for state in ap.active_users:
            state.terms = None
        return {u.user_id: data for u in ap.active_users}

    def transmit(
        self, latents: np.ndarray, state: UserState | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Precoded selected symbols (K N_T, n) of native latents (n, d), and the indices."""
        if self.precoder is None:
            raise ProtocolError("baseline evaluation before the pilot transmission")
        symbols, indices = self.symbols_of(latents)
        return self.precoder @ symbols, indices

    def encode(
        self, x: np.ndarray, state: UserState | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Not used: the baselines select in the native latent (:meth:`transmit`)."""
        raise ProtocolError("the baselines transmit native latents, not whitened features")

    def result_info(self) -> dict[str, Any]:
        """How the result was produced (honest accounting of the baselines)."""
        cfg = self.config
        whitener = self.selection_whitener
        return {
            "baseline": {
                "selection": "native",
                "fit": cfg.baseline_fit,
                "data_channel_uses": self.data_channel_uses,
                "features_sent": self.features_sent,
                "index_bits_per_sample": self.index_cost.bits_per_sample,
                "index_channel_uses": self.index_cost.channel_uses,
                "index_cost_charged": cfg.topk_index_cost == "channel-uses",
                "whitening_condition": whitener.condition if whitener else None,
                "whitening_shrinkage": whitener.shrinkage if whitener else None,
            }
        }
