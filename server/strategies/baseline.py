"""The AP half shared by the First-K and Top-K baselines (section IV).

The AP sends K N_T of its whitened complex symbols per data point (which ones: the subclass's
:meth:`BaselineStrategy.select`), precoded with the power-constrained F of eq. (19) computed
over all active users' SVD-MMSE equalized channels (identity scaled to P_T without CSI). Users
fit their alignment Q_l (eq. 20) on the precoded pilots and acknowledge.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
from semalign.common import admm, baselines
from semalign.common.channel import block_channel
from semalign.common.config import AlignmentConfig
from semalign.common.wire import to_matrix
from semalign.proto import semalign_pb2 as pb
from semalign.server.strategies.base import WIRE_DTYPE, ApContext, ApStrategy, UserState


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

    @abstractmethod
    def select(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The K N_T symbols sent of whitened latents x (c, n): (values, indices), both
        (K N_T, n)."""

    def start(self, ap: ApContext) -> None:
        super().start(ap)
        self.precoder = None

    def _precoder(self, selected: np.ndarray) -> np.ndarray:
        """Power-constrained precoder (K N_T, K N_T) of eq. (19) for the ``selected`` pilots
        (K N_T, n) over all active users (sqrt(P_T / K N_T) I without CSI)."""
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
        """PilotTransmission bytes (precoded pilots, their indices, and the AP's full
        reference pilots X for ``baseline_fit="full"``), the same for every active user."""
        ap = self.ap
        selected, indices = self.select(ap.x)
        self.precoder = self._precoder(selected)
        msg = pb.PilotTransmission(
            session_id=ap.session_id,
            symbols=to_matrix(self.precoder @ selected, WIRE_DTYPE),
            indices=to_matrix(indices, "uint16"),
        )
        if self.config.baseline_fit == "full":
            msg.reference.CopyFrom(to_matrix(ap.x, WIRE_DTYPE))
        data = pb.ApMessage(pilots=msg).SerializeToString()
        for state in ap.active_users:
            state.terms = None
        return {u.user_id: data for u in ap.active_users}

    def encode(
        self, x: np.ndarray, state: UserState | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Precoded selected symbols (K N_T, n) of whitened latents x (c, n), and indices."""
        selected, indices = self.select(x)
        return self.precoder @ selected, indices

    def result_info(self) -> dict[str, Any]:
        """How the result was produced (honest accounting of the baselines)."""
        cfg = self.config
        return {
            "baseline": {
                "fit": cfg.baseline_fit,
                "data_channel_uses": self.data_channel_uses,
                "index_bits_per_sample": self.index_cost.bits_per_sample,
                "index_channel_uses": self.index_cost.channel_uses,
                "index_cost_charged": cfg.topk_index_cost == "channel-uses",
            }
        }
