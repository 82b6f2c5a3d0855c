"""``top-k``: the 2 K N_T largest-magnitude real features of each native AP latent, and their
indices (side information: ceil(log2 C(d, 2 K N_T)) bits per sample on the native dimension d).

With ``topk_index_cost="channel-uses"`` the index side information is charged: it takes
channel uses at Shannon capacity, so fewer of the K uses carry data symbols. The indices go to
every user alike, so their rate is the worst user's: :func:`index_snr_db`.
"""

from __future__ import annotations

import numpy as np
from semalign.common import baselines
from semalign.common.config import AlignmentConfig, GeometryError
from semalign.server.strategies.baseline import BaselineStrategy, IndexCost
from semalign.server.strategies.registry import register_ap_strategy


def index_snr_db(config: AlignmentConfig) -> float:
    """SNR (dB) at which the index side information is charged: the lowest user SNR of a
    per-user SNR list or path loss (a broadcast every user must decode), else ``snr_db``."""
    channel = config.channel
    listed = channel.user_snr_db or channel.distances
    if not listed:
        return config.snr_db
    return min(channel.user_snrs(len(listed), config.snr_db))


@register_ap_strategy("top-k")
class TopK(BaselineStrategy):
    """Sends the largest |latent| per column; users scatter them back by index."""

    def __init__(self, config: AlignmentConfig, cdim: int) -> None:
        super().__init__(config, cdim)
        self.index_cost, self.data_channel_uses = self._split()
        if self.data_channel_uses < 1:
            raise GeometryError(
                f"Top-K index side information ({self.index_cost.bits_per_sample} bits per "
                f"sample) needs {self.index_cost.channel_uses} channel uses, not less than "
                f"K={config.channel_uses}: increase --channel-uses or use --topk-index-cost none"
            )

    def _cost(self, data_uses: int) -> tuple[int, int]:
        """(index bits per sample, channel uses they take) when ``data_uses`` uses carry data."""
        cfg = self.config
        dim = 2 * self.cdim  # the native real dimension d (d + 1 for odd d: one bit at most)
        bits = baselines.top_k_index_bits(dim, min(2 * data_uses * cfg.antennas_tx, dim))
        if cfg.topk_index_cost != "channel-uses":
            return bits, 0
        return bits, baselines.index_channel_uses(bits, cfg.antennas_tx, index_snr_db(cfg))

    def _split(self) -> tuple[IndexCost, int]:
        """How the K uses split: (the index cost, data uses). Charged, the most data uses whose
        own index bits fit in the uses left; the index then has the rest of the K uses (data +
        index = K; any slack stays with the index). Free: all K carry data."""
        k = self.config.channel_uses
        bits, uses = self._cost(k)
        if not uses:
            return IndexCost(bits, 0), k
        for data_uses in range(k - 1, 0, -1):
            bits, uses = self._cost(data_uses)
            if data_uses + uses <= k:
                return IndexCost(bits, k - data_uses), data_uses
        return IndexCost(bits, uses), 0

    def select(self, latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return baselines.top_k_select(latents, self.features_sent)
