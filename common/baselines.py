"""First-K and Top-K baselines of section IV: disjoint channel equalization and alignment.

The AP transmits a subset of its whitened complex latent x (c,): First-K sends the first
K N_T symbols, Top-K the K N_T largest-magnitude symbols plus their indices (side information,
see :func:`top_k_index_bits`). The AP precodes with the power-constrained F of eq. (19); each
user equalizes with the SVD-MMSE equalizer and maps the estimate into its own latent space with a
least-squares alignment Q_l (eq. 20).

Deviation from the paper's text: the paper writes the equalizer as 1_K^T (x) M, which would sum
the K channel uses; K N_T distinct symbols cannot be recovered that way, so the equalizer here is
I_K (x) M, applied per channel use, with M = (Sigma^H Sigma + I / SNR)^-1 (U Sigma)^H.
"""

from __future__ import annotations

import math

import numpy as np
from semalign.common.admm import GramFactor, solve_sylvester
from semalign.common.packing import ShapeError


def svd_mmse_equalizer(hbar: np.ndarray, snr_db: float, channel_uses: int) -> np.ndarray:
    """Per-use SVD-MMSE equalizer I_K (x) (Sigma^H Sigma + I/SNR)^-1 (U Sigma)^H.

    Args:
        hbar: (N_R, N_T) channel with SVD Hbar = U Sigma V^H.
        snr_db: the user's SNR in dB.
        channel_uses: K.

    Returns:
        (K N_T, K N_R) equalizer.
    """
    n_rx, n_tx = hbar.shape
    u, sv, _ = np.linalg.svd(hbar)
    sigma = np.zeros((n_rx, n_tx))
    sigma[: len(sv), : len(sv)] = np.diag(sv)
    snr = 10 ** (snr_db / 10)
    m = np.linalg.solve(sigma.T @ sigma + np.eye(n_tx) / snr, (u @ sigma).conj().T)
    return np.kron(np.eye(channel_uses), m)


def power_constrained_precoder(
    a: np.ndarray, gram: GramFactor, c: np.ndarray, power: float, *, tol: float = 1e-10
) -> np.ndarray:
    """Minimize sum ||T - M F X||^2 subject to tr(F F^H) <= P_T (eq. 19).

    The KKT conditions give A F B + mu F = C with A = sum_l M_l^H M_l, B = X X^H,
    C = sum_l M_l^H T X^H and mu >= 0 complementary to the power constraint. mu = 0 is used when
    it gives a feasible F; otherwise mu is found by bisection so that tr(F F^H) = P_T.
    """

    def solve(mu: float) -> np.ndarray:
        return solve_sylvester(a, gram, c, mu)

    def excess(f: np.ndarray) -> float:
        return float(np.real(np.vdot(f, f))) - power

    eig_a = np.linalg.eigvalsh(a)
    if eig_a[0] > tol * max(eig_a[-1], 1.0) and gram.eigvals[0] > tol * max(gram.eigvals[-1], 1.0):
        f = solve(0.0)
        if excess(f) <= 0:
            return f
    lo, hi = 0.0, max(float(eig_a[-1] * gram.eigvals[-1]), 1e-12)
    while excess(solve(hi)) > 0:
        lo, hi = hi, hi * 10
    for _ in range(200):
        mid = (lo + hi) / 2
        if excess(solve(mid)) > 0:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return solve(hi)


def first_k_select(x: np.ndarray, count: int) -> np.ndarray:
    """First-K: the first ``count`` = K N_T complex symbols of x (c, n) -> (count, n)."""
    if count > x.shape[0]:
        raise ShapeError(f"cannot send {count} symbols of a {x.shape[0]}-symbol latent")
    return x[:count]


def first_k_indices(count: int, n: int) -> np.ndarray:
    """Indices (count, n) of the First-K symbols, for :func:`scatter`."""
    return np.repeat(np.arange(count)[:, None], n, axis=1)


def top_k_select(x: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-K: per column of x (c, n), the ``count`` largest-|.| symbols and their indices.

    Returns (values (count, n), indices (count, n) int64), indices ascending in each column.
    """
    if count > x.shape[0]:
        raise ShapeError(f"cannot send {count} symbols of a {x.shape[0]}-symbol latent")
    idx = (
        np.argpartition(-np.abs(x), count - 1, axis=0)[:count]
        if count < x.shape[0]
        else (np.repeat(np.arange(x.shape[0])[:, None], x.shape[1], axis=1))
    )
    idx = np.sort(idx, axis=0).astype(np.int64)
    return np.take_along_axis(x, idx, axis=0), idx


def scatter(values: np.ndarray, indices: np.ndarray, dim: int) -> np.ndarray:
    """Zero-filled (dim, n) vectors with ``values`` (k, n) placed at ``indices`` (k, n)."""
    out = np.zeros((dim, values.shape[1]), dtype=np.result_type(values, np.complex64))
    np.put_along_axis(out, indices, values, axis=0)
    return out


def top_k_index_bits(dim: int, count: int) -> int:
    """Bits per sample to tell which ``count`` of ``dim`` positions Top-K sent: ceil(log2 C)."""
    return math.ceil(math.log2(math.comb(dim, count))) if 0 < count < dim else 0


def index_channel_uses(bits: int, antennas_tx: int, snr_db: float) -> int:
    """Channel uses needed to carry ``bits`` at Shannon capacity N_T log2(1 + SNR) per use."""
    per_use = antennas_tx * math.log2(1 + 10 ** (snr_db / 10))
    return math.ceil(bits / per_use) if bits else 0


def fit_alignment(source: np.ndarray, target: np.ndarray, ridge: float = 1e-6) -> np.ndarray:
    """Least-squares alignment (eq. 20): Q = argmin ||Q S - T||_F^2 (+ small ridge).

    Args:
        source: (p, n) what the user has (received estimate, or the AP's full features).
        target: (m, n) the user's whitened latents.
        ridge: Tikhonov weight relative to tr(S S^H)/p, keeps Q defined for rank-deficient S.

    Returns:
        Q (m, p).
    """
    gram = source @ source.conj().T
    p = gram.shape[0]
    reg = ridge * max(float(np.real(np.trace(gram))) / p, 1e-12)
    rhs = source @ target.conj().T
    return np.linalg.solve(gram + reg * np.eye(p), rhs).conj().T
