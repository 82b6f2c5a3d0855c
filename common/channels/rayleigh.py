"""i.i.d. Rayleigh fading, the default (and today's) channel.

Model: [Hbar]_{ij} ~ CN(0, 1) i.i.d., i.e. real and imaginary parts N(0, 1/2), drawn as
``(rng.standard_normal((N_R, N_T)) + 1j * rng.standard_normal((N_R, N_T))) / sqrt(2)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Fading, check_antennas, complex_normal


@dataclass(frozen=True)
class Rayleigh(Fading):
    """i.i.d. CN(0, 1) entries: rich scattering, no correlation, no line of sight."""

    name = "rayleigh"

    def sample(
        self,
        antennas_rx: int,
        antennas_tx: int,
        rng: np.random.Generator,
        size: tuple[int, ...] = (),
    ) -> np.ndarray:
        """(*size, N_R, N_T) complex128 with i.i.d. CN(0, 1) entries (bit-identical to the
        pre-interface ``rayleigh_matrix`` for ``size=()`` and the same generator state)."""
        check_antennas(antennas_rx, antennas_tx)
        return complex_normal((*size, antennas_rx, antennas_tx), rng)


def rayleigh_matrix(antennas_rx: int, antennas_tx: int, rng: np.random.Generator) -> np.ndarray:
    """One Hbar (N_R, N_T) with i.i.d. CN(0, 1) entries: :class:`Rayleigh` drawn once."""
    return complex_normal((antennas_rx, antennas_tx), rng)
