"""A user's link model: fading law + CSI error + SNR, drawn into a :class:`ChannelRealization`.

This is the one object the AP/user code needs: ``ChannelModel.draw(N_R, N_T, rng)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import SNR_DB_MAX, SNR_DB_MIN, ChannelRealization, Fading, check_range
from .csi import PERFECT_CSI, CsiError
from .rayleigh import Rayleigh


@dataclass(frozen=True)
class ChannelModel:
    """Statistics of one user's link.

    Attributes:
        fading: the law of the true Hbar (:class:`.Rayleigh`, :class:`.Kronecker`,
            :class:`.Rician`).
        csi: the estimation error model (:data:`.PERFECT_CSI` by default).
        snr_db: this user's SNR per receive antenna, dB, [-50, 100].

    The default ``ChannelModel(snr_db=s)`` is today's channel: i.i.d. Rayleigh, perfect CSI.
    """

    fading: Fading = Rayleigh()
    csi: CsiError = PERFECT_CSI
    snr_db: float = 20.0

    def __post_init__(self) -> None:
        if not isinstance(self.fading, Fading):
            raise TypeError(f"fading must be a Fading model, got {type(self.fading).__name__}")
        if not isinstance(self.csi, CsiError):
            raise TypeError(f"csi must be a CsiError, got {type(self.csi).__name__}")
        check_range("snr_db", self.snr_db, SNR_DB_MIN, SNR_DB_MAX, high_open=False)

    def draw(
        self, antennas_rx: int, antennas_tx: int, rng: np.random.Generator
    ) -> ChannelRealization:
        """Draw this user's link.

        Order of use of ``rng``: Hbar (by the fading law), then the CSI error E (if any). For the
        default model the only draw is ``(rng.standard_normal((N_R, N_T)) + 1j *
        rng.standard_normal((N_R, N_T))) / sqrt(2)``, so the realization is identical to the
        pre-interface ``rayleigh_matrix(N_R, N_T, rng)``.

        Args:
            antennas_rx: N_R, the user's antennas.
            antennas_tx: N_T, the AP's antennas.
            rng: the user's channel generator (e.g. ``np.random.default_rng((seed, ordinal))``).

        Returns:
            :class:`ChannelRealization` with ``hbar`` and ``estimate`` (N_R, N_T) complex128 and
            ``snr_db``.
        """
        hbar = self.fading.sample(antennas_rx, antennas_tx, rng)
        return ChannelRealization(hbar, self.csi.estimate(hbar, rng), self.snr_db)
