"""The channel interface: what one user's link looks like once drawn, and what a fading law is.

Conventions (shared by every model in this package and by :mod:`.link`):

* ``hbar`` is the narrowband MIMO matrix Hbar_l of user l, shape (N_R, N_T), complex128,
  normalized so that E|[Hbar]_{ij}|^2 = 1 for every entry and every model here: the path loss is
  not in Hbar but in the user's SNR.
* The block channel over K channel uses is H_l = I_K (x) Hbar_l (paper eq. 1); it is built from
  Hbar by the transmission code, not here.
* ``snr_db`` is the SNR per receive antenna in dB for the AP at full power P_T:
  sigma_l^2 = (P_T / K) / 10^(SNR_l / 10), the CN(0, sigma_l^2) noise per antenna per use.
* vec(.) stacks columns (``h.reshape(-1, order="F")``), so a Kronecker-correlated channel has
  E[vec(Hbar) vec(Hbar)^H] = R_tx^T (x) R_rx.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

#: SNR bounds (dB) accepted for a user, the same as the session's ``snr_db``.
SNR_DB_MIN, SNR_DB_MAX = -50.0, 100.0


def complex_normal(
    shape: tuple[int, ...], rng: np.random.Generator, variance: float = 1.0
) -> np.ndarray:
    """i.i.d. CN(0, variance) samples: real and imaginary parts N(0, variance / 2) each.

    For ``variance == 1`` this is exactly ``(rng.standard_normal(shape) + 1j *
    rng.standard_normal(shape)) / sqrt(2)`` (real parts drawn first), the draw every existing
    seed was made with, so results are reproduced bit for bit.

    Args:
        shape: output shape.
        rng: the generator to draw from (2 * prod(shape) standard normals are consumed).
        variance: E|z|^2, linear (not dB).

    Returns:
        complex128 array of ``shape``.
    """
    z = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / np.sqrt(2)
    return z if variance == 1.0 else np.sqrt(variance) * z


def check_antennas(antennas_rx: int, antennas_tx: int) -> None:
    """Raise ValueError unless N_R and N_T are positive integers."""
    for name, value in (("antennas_rx", antennas_rx), ("antennas_tx", antennas_tx)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_range(name: str, value: float, low: float, high: float, *, high_open: bool) -> None:
    """Raise ValueError unless ``low <= value <= high`` (``< high`` when ``high_open``)."""
    ok = math.isfinite(value) and low <= value and (value < high if high_open else value <= high)
    if not ok:
        bracket = ")" if high_open else "]"
        raise ValueError(f"{name} must be in [{low:g}, {high:g}{bracket}, got {value!r}")


@dataclass(frozen=True, eq=False)
class ChannelRealization:
    """One user's drawn link: the truth, what the AP and the user believe, and the SNR.

    Attributes:
        hbar: (N_R, N_T) complex128, the true channel Hbar_l. This is what acts on the
            transmitted symbols: y = (I_K (x) hbar) F x + n.
        estimate: (N_R, N_T) complex128, the CSI Hhat_l the AP and the user design with (the
            pre-equalizer F, the equalizer G_l, the uplink statistics, SVD-MMSE). Under perfect
            CSI it *is* ``hbar`` (the same array).
        snr_db: SNR per receive antenna of this user, dB (see the module docstring).

    Both arrays are stored read-only so that a shared ``hbar``/``estimate`` cannot be modified
    through one name behind the other's back.
    """

    hbar: np.ndarray
    estimate: np.ndarray
    snr_db: float

    def __post_init__(self) -> None:
        hbar = _frozen_matrix("hbar", self.hbar)
        estimate = hbar if self.estimate is self.hbar else _frozen_matrix("estimate", self.estimate)
        if estimate.shape != hbar.shape:
            raise ValueError(f"estimate shape {estimate.shape} != hbar shape {hbar.shape}")
        snr = float(self.snr_db)
        check_range("snr_db", snr, SNR_DB_MIN, SNR_DB_MAX, high_open=False)
        object.__setattr__(self, "hbar", hbar)
        object.__setattr__(self, "estimate", estimate)
        object.__setattr__(self, "snr_db", snr)

    @property
    def antennas_rx(self) -> int:
        """N_R."""
        return self.hbar.shape[0]

    @property
    def antennas_tx(self) -> int:
        """N_T."""
        return self.hbar.shape[1]

    @property
    def perfect_csi(self) -> bool:
        """True when the estimate equals the truth exactly."""
        return self.estimate is self.hbar or bool(np.array_equal(self.estimate, self.hbar))

    @property
    def csi_error(self) -> np.ndarray:
        """(N_R, N_T) E = estimate - hbar (zeros under perfect CSI)."""
        return self.estimate - self.hbar


def _frozen_matrix(name: str, value: np.ndarray) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"{name} must be a non-empty (N_R, N_T) matrix, got shape {array.shape}")
    if array.dtype != np.complex128 or array.flags.writeable:
        array = np.array(array, dtype=np.complex128)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} has non-finite entries")
    array.setflags(write=False)
    return array


class Fading(ABC):
    """A fading law: the distribution of the true channel Hbar (small-scale, unit power).

    Subclasses are frozen dataclasses (hashable, comparable by value) with a class attribute
    ``name``, the registry key (see :mod:`.registry`).
    """

    name: str = ""

    @abstractmethod
    def sample(
        self,
        antennas_rx: int,
        antennas_tx: int,
        rng: np.random.Generator,
        size: tuple[int, ...] = (),
    ) -> np.ndarray:
        """Draw true channels.

        Args:
            antennas_rx: N_R.
            antennas_tx: N_T.
            rng: the generator; the draw is a deterministic function of its state.
            size: leading batch shape for Monte Carlo; ``()`` draws one matrix. A batched draw is
                distributed like repeated single draws, not equal to them draw for draw.

        Returns:
            complex128 array (*size, N_R, N_T), E|entry|^2 = 1.
        """
