"""``first-k``: the first 2 K N_T real features of each native AP latent (section IV)."""

from __future__ import annotations

import numpy as np
from semalign.common import baselines
from semalign.server.strategies.baseline import BaselineStrategy
from semalign.server.strategies.registry import register_ap_strategy


@register_ap_strategy("first-k")
class FirstK(BaselineStrategy):
    """Sends latents[:2 K N_T]; the indices are implicit but sent along for a uniform user
    side."""

    def select(self, latents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return baselines.first_k_select(latents, self.features_sent)
