"""Imperfect channel state information: additive estimation error.

Model: Hhat = Hbar + E, E (N_R, N_T) i.i.d. CN(0, sigma_e^2), independent of Hbar.

* sigma_e^2 (``error_variance``) is linear, per entry, relative to the unit per-entry channel
  power E|[Hbar]_{ij}|^2 = 1 (so sigma_e^2 = 0.1 is an estimate 10 dB below the channel);
  0 is perfect CSI, the default.
* The truth Hbar acts on the transmitted symbols; the estimate Hhat is what the AP and the user
  design with (F, G_l, uplink statistics, SVD-MMSE equalizer) and what the user reports to a
  channel-aware AP.
* E is drawn from the same generator right after Hbar; with sigma_e^2 = 0 nothing is drawn and
  the estimate is the truth array itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import check_range, complex_normal

#: Largest accepted estimation error variance (linear): 10 dB above the channel power.
ERROR_VARIANCE_MAX = 10.0


@dataclass(frozen=True)
class CsiError:
    """Additive CSI error of variance ``error_variance`` (linear, per entry, in [0, 10])."""

    error_variance: float = 0.0

    def __post_init__(self) -> None:
        check_range(
            "csi_error_variance", self.error_variance, 0.0, ERROR_VARIANCE_MAX, high_open=False
        )

    @property
    def perfect(self) -> bool:
        return self.error_variance == 0.0

    def estimate(self, hbar: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Hhat = Hbar + E for a true channel ``hbar`` of any shape (..., N_R, N_T).

        Returns ``hbar`` itself under perfect CSI (no draw), else a new complex128 array.
        """
        if self.perfect:
            return hbar
        return hbar + complex_normal(np.shape(hbar), rng, float(self.error_variance))


#: The default: the estimate is the truth.
PERFECT_CSI = CsiError()
