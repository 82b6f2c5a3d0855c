"""Kronecker-correlated Rayleigh fading with exponential correlation at each end.

Model: Hbar = R_rx^{1/2} G R_tx^{1/2}, G (N_R, N_T) i.i.d. CN(0, 1) (drawn exactly as
:class:`.Rayleigh` draws, so the same seed gives the same G), R^{1/2} the symmetric positive
square root, and exponential correlation [R]_{ij} = rho^{|i-j|} between antennas i and j of a
uniform array, rho in [0, 1) (0: uncorrelated, towards 1: fully correlated).

Second-order statistics, with vec stacking columns (``h.reshape(-1, order="F")``):
E[vec(Hbar) vec(Hbar)^H] = R_tx^T (x) R_rx, (N_R N_T, N_R N_T); the diagonal is 1, so the
per-entry power stays E|[Hbar]_{ij}|^2 = 1 and the SNR keeps its meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .base import Fading, check_antennas, check_range, complex_normal


def exponential_correlation(antennas: int, rho: float) -> np.ndarray:
    """R (antennas, antennas) float64 with [R]_{ij} = rho^{|i-j|}, rho in [0, 1) (linear)."""
    check_range("rho", rho, 0.0, 1.0, high_open=True)
    index = np.arange(antennas)
    return float(rho) ** np.abs(index[:, None] - index[None, :]).astype(np.float64)


@lru_cache(maxsize=64)
def _sqrt_correlation(antennas: int, rho: float) -> np.ndarray:
    """R^{1/2}: symmetric PSD square root of :func:`exponential_correlation` (read-only)."""
    values, vectors = np.linalg.eigh(exponential_correlation(antennas, rho))
    root = (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T
    root.setflags(write=False)
    return root


@dataclass(frozen=True)
class Kronecker(Fading):
    """Hbar = R_rx^{1/2} G R_tx^{1/2} with exponential correlations.

    Attributes:
        rho_tx: correlation coefficient between adjacent AP (transmit) antennas, [0, 1).
        rho_rx: correlation coefficient between adjacent user (receive) antennas, [0, 1).

    With ``rho_tx = rho_rx = 0`` the draw equals :class:`.Rayleigh`'s bit for bit.
    """

    rho_tx: float = 0.0
    rho_rx: float = 0.0
    name = "kronecker"

    def __post_init__(self) -> None:
        check_range("rho_tx", self.rho_tx, 0.0, 1.0, high_open=True)
        check_range("rho_rx", self.rho_rx, 0.0, 1.0, high_open=True)

    def covariance(self, antennas_rx: int, antennas_tx: int) -> np.ndarray:
        """E[vec(Hbar) vec(Hbar)^H] = R_tx^T (x) R_rx, (N_R N_T, N_R N_T), column-stacking vec."""
        check_antennas(antennas_rx, antennas_tx)
        r_tx = exponential_correlation(antennas_tx, self.rho_tx)
        r_rx = exponential_correlation(antennas_rx, self.rho_rx)
        return np.kron(r_tx.T, r_rx)

    def sample(
        self,
        antennas_rx: int,
        antennas_tx: int,
        rng: np.random.Generator,
        size: tuple[int, ...] = (),
    ) -> np.ndarray:
        """(*size, N_R, N_T) complex128: G drawn like Rayleigh, then R_rx^{1/2} G R_tx^{1/2}."""
        check_antennas(antennas_rx, antennas_tx)
        h = complex_normal((*size, antennas_rx, antennas_tx), rng)
        if self.rho_rx:
            h = _sqrt_correlation(antennas_rx, float(self.rho_rx)) @ h
        if self.rho_tx:
            h = h @ _sqrt_correlation(antennas_tx, float(self.rho_tx))
        return h
