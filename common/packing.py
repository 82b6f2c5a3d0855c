"""Real <-> complex packing of latents (paper section II).

Convention (columns are samples): a real matrix (d, n) becomes a complex matrix (ceil(d/2), n)
whose real part is the first half of the features and whose imaginary part is the second half.
When d is odd one zero row is appended before pairing; :func:`complex_to_real` drops it again.
"""

from __future__ import annotations

import numpy as np
from semalign.common.errors import SemalignError


class ShapeError(SemalignError, ValueError):
    """An array whose shape or size does not fit the operation (latents, symbols, matrices)."""


def complex_dim(real_dim: int) -> int:
    """Number of complex symbols ceil(d/2) that carry ``real_dim`` real features."""
    if real_dim < 1:
        raise ShapeError(f"latent dimension must be >= 1, got {real_dim}")
    return (real_dim + 1) // 2


def real_to_complex(x: np.ndarray, dtype: type = np.complex128) -> np.ndarray:
    """Pack real features (d, n) into complex symbols (ceil(d/2), n).

    Row i of the result is ``x[i] + 1j * x[i + ceil(d/2)]`` (a zero row pads odd d).
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ShapeError(f"expected a (d, n) matrix, got shape {x.shape}")
    d, n = x.shape
    half = complex_dim(d)
    if d % 2:
        x = np.vstack([x, np.zeros((1, n), dtype=x.dtype)])
    return (x[:half] + 1j * x[half:]).astype(dtype, copy=False)


def complex_to_real(z: np.ndarray, real_dim: int) -> np.ndarray:
    """Inverse of :func:`real_to_complex`: complex (ceil(d/2), n) -> real (d, n), pad dropped."""
    z = np.asarray(z)
    if z.ndim != 2 or z.shape[0] != complex_dim(real_dim):
        raise ShapeError(
            f"expected ({complex_dim(real_dim)}, n) symbols for d={real_dim}, got shape {z.shape}"
        )
    return np.vstack([z.real, z.imag])[:real_dim]
