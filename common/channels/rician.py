"""Rician fading: a deterministic line-of-sight path plus Rayleigh scattering.

Model: Hbar = sqrt(K / (K + 1)) H_LOS + sqrt(1 / (K + 1)) H_NLOS, with

* K the Rician K-factor, LINEAR (power of the LOS part over the scattered part; K = 0 is
  Rayleigh, K -> inf a pure LOS channel); :func:`k_factor_from_db` converts from dB;
* H_NLOS (N_R, N_T) i.i.d. CN(0, 1), drawn first and exactly as :class:`.Rayleigh` draws;
* H_LOS = a_R(theta_A) a_T(theta_D)^H, the outer product of uniform-linear-array steering vectors
  with half-wavelength spacing, [a_N(theta)]_n = exp(j pi n sin(theta)), n = 0..N-1, so every
  entry has modulus 1. theta_D is the angle of departure at the AP, theta_A the angle of arrival
  at the user, both in degrees from broadside, in [-90, 90].

Every entry has E|[Hbar]_{ij}|^2 = K/(K+1) + 1/(K+1) = 1. Angles left unset are drawn per
realization, uniform in [-90, 90) degrees, from the same generator after H_NLOS (AoD first, then
AoA), so each user (seed) gets its own geometry. With K = 0 no angle is drawn and the result
equals :class:`.Rayleigh`'s bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .base import Fading, check_antennas, check_range, complex_normal

#: Largest accepted K-factor (linear, 60 dB): beyond it the channel is LOS to double precision.
K_FACTOR_MAX = 1e6


def k_factor_from_db(k_factor_db: float) -> float:
    """Linear K-factor from dB: K = 10^(K_dB / 10)."""
    return float(10.0 ** (k_factor_db / 10.0))


def ula_steering(antennas: int, angle_deg: np.ndarray | float) -> np.ndarray:
    """Half-wavelength ULA steering vectors, unit-modulus entries (not normalized by sqrt(N)).

    Args:
        antennas: N, the number of array elements.
        angle_deg: angle(s) from broadside in degrees, any shape S.

    Returns:
        complex128 (*S, N) with [a(theta)]_n = exp(j pi n sin(theta)).
    """
    theta = np.deg2rad(np.asarray(angle_deg, dtype=np.float64))
    return np.exp(1j * np.pi * np.arange(antennas) * np.sin(theta)[..., None])


@dataclass(frozen=True)
class Rician(Fading):
    """LOS + scattering with K-factor ``k_factor`` (linear).

    Attributes:
        k_factor: K >= 0, linear (use :func:`k_factor_from_db` for dB).
        aod_deg: angle of departure at the AP in degrees, [-90, 90]; None: uniform per draw.
        aoa_deg: angle of arrival at the user in degrees, [-90, 90]; None: uniform per draw.
    """

    k_factor: float = 1.0
    aod_deg: float | None = None
    aoa_deg: float | None = None
    name = "rician"

    def __post_init__(self) -> None:
        check_range("k_factor", self.k_factor, 0.0, K_FACTOR_MAX, high_open=False)
        for label in ("aod_deg", "aoa_deg"):
            angle = getattr(self, label)
            if angle is not None:
                check_range(label, angle, -90.0, 90.0, high_open=False)

    def los(self, antennas_rx: int, antennas_tx: int, aod_deg, aoa_deg) -> np.ndarray:
        """H_LOS = a_R(aoa) a_T(aod)^H, (*S, N_R, N_T) for angle arrays of shape S."""
        a_rx = ula_steering(antennas_rx, aoa_deg)
        a_tx = ula_steering(antennas_tx, aod_deg)
        return a_rx[..., :, None] * np.conj(a_tx)[..., None, :]

    def sample(
        self,
        antennas_rx: int,
        antennas_tx: int,
        rng: np.random.Generator,
        size: tuple[int, ...] = (),
    ) -> np.ndarray:
        """(*size, N_R, N_T) complex128: H_NLOS, then the angles left unset, then the mix."""
        check_antennas(antennas_rx, antennas_tx)
        nlos = complex_normal((*size, antennas_rx, antennas_tx), rng)
        k = float(self.k_factor)
        if k == 0.0:
            return nlos
        aod = (
            rng.uniform(-90.0, 90.0, size) if self.aod_deg is None else np.full(size, self.aod_deg)
        )
        aoa = (
            rng.uniform(-90.0, 90.0, size) if self.aoa_deg is None else np.full(size, self.aoa_deg)
        )
        los = self.los(antennas_rx, antennas_tx, aod, aoa)
        return np.sqrt(k / (k + 1.0)) * los + np.sqrt(1.0 / (k + 1.0)) * nlos
