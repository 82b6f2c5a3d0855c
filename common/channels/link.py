"""One user's realized link: the block channel over K uses, the noise, and their application.

Units and conventions (the package's, :mod:`.base`):

* ``Hbar`` (N_R, N_T); the block channel over K uses is H = I_K (x) Hbar, shape (K N_R, K N_T);
  a transmitted vector (K N_T,) is K consecutive N_T-antenna symbols, channel use k occupying
  rows k N_T..(k+1) N_T-1 (paper eq. 1).
* SNR is per receive antenna for a transmitter at full power: with whitened inputs and
  tr(F F^H) = P_T the mean received power per antenna per channel use is P_T / K, so the noise
  variance is sigma^2 = (P_T / K) / 10^(SNR_dB / 10), complex noise CN(0, sigma^2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from semalign.common.packing import ShapeError


def block_channel(hbar: np.ndarray, channel_uses: int) -> np.ndarray:
    """H = I_K (x) Hbar, shape (K N_R, K N_T)."""
    return np.kron(np.eye(channel_uses), hbar)


def noise_variance(snr_db: float, power: float, channel_uses: int) -> float:
    """sigma^2 = (P_T / K) / 10^(SNR_dB/10): noise power per receive antenna per channel use."""
    return (power / channel_uses) / 10 ** (snr_db / 10)


def complex_noise(shape: tuple[int, ...], variance: float, rng: np.random.Generator) -> np.ndarray:
    """CN(0, variance) samples of the given shape (parts N(0, variance / 2), real drawn first)."""
    scale = np.sqrt(variance / 2)
    return scale * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape))


@dataclass
class BlockFadingLink:
    """A user's MIMO link, constant over K uses: ``link(symbols)`` returns H symbols + noise.

    Args:
        hbar: (N_R, N_T) channel matrix (any fading law of this package).
        channel_uses: K, the number of uses the channel stays constant over.
        noise_var: sigma^2 per receive antenna per channel use (see :func:`noise_variance`).
        rng: generator for the noise.
    """

    hbar: np.ndarray
    channel_uses: int
    noise_var: float
    rng: np.random.Generator = field(default_factory=np.random.default_rng)

    @property
    def matrix(self) -> np.ndarray:
        """H = I_K (x) Hbar, (K N_R, K N_T)."""
        return block_channel(self.hbar, self.channel_uses)

    def __call__(self, symbols: np.ndarray, *, noiseless: bool = False) -> np.ndarray:
        """Received (K N_R, n) for transmitted ``symbols`` (K N_T, n)."""
        n_rx, n_tx = self.hbar.shape
        k = self.channel_uses
        if symbols.ndim != 2 or symbols.shape[0] != k * n_tx:
            raise ShapeError(f"expected ({k * n_tx}, n) symbols, got {symbols.shape}")
        n = symbols.shape[1]
        # Apply Hbar per channel use without forming the Kronecker product.
        received = np.einsum("rt,ktn->krn", self.hbar, symbols.reshape(k, n_tx, n))
        received = received.reshape(k * n_rx, n)
        if noiseless or self.noise_var == 0:
            return received
        return received + complex_noise(received.shape, self.noise_var, self.rng)
