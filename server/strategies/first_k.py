"""``first-k``: the first K N_T whitened complex symbols of each latent (section IV)."""

from __future__ import annotations

import numpy as np
from semalign.common import baselines
from semalign.server.strategies.baseline import BaselineStrategy


class FirstK(BaselineStrategy):
    """Sends x[:K N_T]; the indices are implicit but sent along for a uniform user side."""

    name = "first-k"

    def select(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        count = self.ap.symbols
        return baselines.first_k_select(x, count), baselines.first_k_indices(count, x.shape[1])
