"""Whitening of complex latents by mean and Cholesky factor (paper section III, pre-whitening).

Given pilots X (c, n) (columns are samples) the whitener stores mu = mean over columns and a lower
triangular L with L L^H = Sigma + eps I, where Sigma = (X - mu)(X - mu)^H / n is the sample
covariance. ``whiten`` computes L^-1 (x - mu); ``dewhiten`` computes L z + mu.

Real encoder latents packed to complex are often numerically singular. The factor is therefore
computed in float64 and *checked*: when the plain Cholesky fails or the covariance is badly
conditioned, a shrinkage eps = shrinkage * tr(Sigma) / c is added and raised tenfold until the
factorization succeeds. The condition number and the shrinkage used are kept on the object so
callers can report them. A whitener is never built from a failed factor.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.linalg
from semalign.common.errors import WhiteningError

log = logging.getLogger(__name__)

#: Largest covariance condition number accepted without shrinkage.
MAX_CONDITION = 1e10


@dataclass(frozen=True)
class Whitener:
    """Affine whitening map fitted on pilots.

    Attributes:
        mean: (c,) complex mean of the pilots.
        factor: (c, c) lower-triangular complex128 L with L L^H = (Sigma + eps I) / v, v the
            whitened variance (1 unless asked).
        condition: condition number of the (regularized) covariance.
        shrinkage: eps actually added to the diagonal (0.0 when none was needed).
    """

    mean: np.ndarray
    factor: np.ndarray
    condition: float
    shrinkage: float

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    def whiten(self, x: np.ndarray) -> np.ndarray:
        """z = L^-1 (x - mu) for x (c, n); returns complex128 (c, n)."""
        centered = np.asarray(x, dtype=np.complex128) - self.mean[:, None]
        return scipy.linalg.solve_triangular(self.factor, centered, lower=True)

    def dewhiten(self, z: np.ndarray) -> np.ndarray:
        """x = L z + mu for z (c, n); returns complex128 (c, n)."""
        return self.factor @ np.asarray(z, dtype=np.complex128) + self.mean[:, None]


def fit_whitener(
    x: np.ndarray,
    *,
    shrinkage: float = 1e-9,
    max_shrinkage: float = 1e-1,
    variance: float = 1.0,
) -> Whitener:
    """Fit a :class:`Whitener` on pilots ``x`` (c, n), columns are samples.

    ``variance``: the covariance of the whitened pilots is ``variance`` I (1 for the paper's
    complex features; 1/2 for real features seen as the components of complex ones,
    :mod:`semalign.common.representation`): the factor is L / sqrt(variance).

    Tries the plain covariance first; on a failed or badly conditioned factor adds
    ``shrinkage * tr(Sigma)/c`` to the diagonal, growing tenfold up to ``max_shrinkage``.

    Raises:
        WhiteningError: the covariance is zero, non-finite, or cannot be factored.
    """
    x = np.asarray(x, dtype=np.complex128)
    if x.ndim != 2 or x.shape[1] < 2:
        raise WhiteningError(f"need a (c, n) matrix with n >= 2 pilots, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise WhiteningError("pilots contain non-finite values")
    c, n = x.shape
    mean = x.mean(axis=1)
    centered = x - mean[:, None]
    cov = centered @ centered.conj().T / n
    cov = (cov + cov.conj().T) / 2
    factor, condition, eps = _shrunk_cholesky(cov, shrinkage, max_shrinkage)
    if not 0 < variance < np.inf:
        raise WhiteningError(f"whitened variance must be positive and finite, got {variance}")
    if variance != 1.0:
        factor = factor / np.sqrt(variance)
    return Whitener(mean=mean, factor=factor, condition=condition, shrinkage=eps)


def _shrunk_cholesky(
    cov: np.ndarray, shrinkage: float, max_shrinkage: float
) -> tuple[np.ndarray, float, float]:
    """Cholesky factor L (c, c) of ``cov`` + eps I, with eps = 0 first, then ``shrinkage`` *
    tr(cov)/c growing tenfold up to ``max_shrinkage`` * tr(cov)/c, until the condition number is
    at most :data:`MAX_CONDITION` and the factor is finite. Returns (L, condition, eps).

    Raises:
        WhiteningError: cov is zero, or still cannot be factored at ``max_shrinkage``.
    """
    c = cov.shape[0]
    scale = float(np.real(np.trace(cov))) / c
    if not scale > 0:
        raise WhiteningError("pilot covariance is zero: all pilots are identical")
    eps, relative = 0.0, 0.0
    while True:
        regularized = cov + eps * np.eye(c)
        eigvals = np.linalg.eigvalsh(regularized)
        condition = float(eigvals[-1] / eigvals[0]) if eigvals[0] > 0 else np.inf
        if condition <= MAX_CONDITION:
            try:
                factor = np.linalg.cholesky(regularized)
            except np.linalg.LinAlgError:
                factor = None
            if factor is not None and np.all(np.isfinite(factor)):
                break
        relative = shrinkage if relative == 0.0 else relative * 10
        if relative > max_shrinkage:
            raise WhiteningError(
                f"pilot covariance ({c}x{c}) cannot be factored (condition {condition:.3g}) "
                f"even with shrinkage {max_shrinkage:g} * tr/c"
            )
        eps = relative * scale
    if eps > 0:
        log.info(
            "whitening: added shrinkage %.3g (relative %.1e), condition %.3g",
            eps,
            relative,
            condition,
        )
    return factor, condition, eps
