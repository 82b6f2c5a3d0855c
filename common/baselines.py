"""First-K and Top-K baselines of section IV: disjoint channel equalization and alignment.

The order is the paper's and the authors' code's (their ``__compression`` runs before
``prewhiten``):

1. the AP *selects* 2 K N_T real features of each data point in its NATIVE real latent
   (d, n): First-K the first 2 K N_T, Top-K the 2 K N_T largest-|.| of each sample plus their
   indices (side information, see :func:`top_k_index_bits`, bits on the native dimension d);
2. it packs them into K N_T complex symbols (:mod:`semalign.common.packing`) and whitens
   them with a mean and Cholesky factor fitted on the pilots' selected symbols;
3. it precodes with the power-constrained F of eq. (19);
4. each user equalizes with the SVD-MMSE equalizer, *undoes the whitening* (the AP sends the
   factor and the mean once with the pilots: K N_T (K N_T + 1) complex numbers), unpacks,
   zero-fills the values into their native positions, and maps the (d, n) result into its own
   latent space with a least-squares alignment Q_l (eq. 20), fitted on its received pilots
   (``received``) or on the AP's full native pilots (``full``, the paper's reading).

Selecting among *whitened* symbols instead (an earlier version of semalign did) is a different,
much weaker baseline: whitening spreads the energy evenly over the symbols, so "the largest
whitened symbol" carries little meaning.

Deviation from the paper's text: the paper writes the equalizer as 1_K^T (x) M, which would sum
the K channel uses; K N_T distinct symbols cannot be recovered that way, so the equalizer here is
I_K (x) M, applied per channel use, with M = (Sigma^H Sigma + I / SNR)^-1 (U Sigma)^H.
"""

from __future__ import annotations

import math

import numpy as np
from semalign.common.admm import GramFactor, solve_sylvester
from semalign.common.packing import ShapeError

#: The baselines' selection order, recorded in every results row: the native latent (the paper's
#: and the authors' code's order). Results of semalign versions that selected among whitened
#: symbols read as :data:`LEGACY_SELECTION`.
SELECTION = "native"
LEGACY_SELECTION = "whitened-symbols"


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


def unmixing(end_to_end: np.ndarray, equalizer: np.ndarray, noise_var: float) -> np.ndarray:
    """Linear MMSE estimate of the whitened symbols z from the equalized r = M (H F z + n).

    With E[z z^H] = I (whitened) and n ~ CN(0, sigma^2 I):
    W = E^H (E E^H + sigma^2 M M^H)^-1, E = M H F. It undoes the shrink of a binding power
    budget and the mixing a shared precoder leaves between symbols (several users, or a
    channel-unaware AP whose symbols arrive rotated by V^H), and tends to E^-1 at high SNR, yet
    stays bounded where E is ill-conditioned (a plain inverse amplifies the noise there).

    Args:
        end_to_end: E = M H F (K N_T, K N_T), on the user's CSI estimate.
        equalizer: M (K N_T, K N_R).
        noise_var: sigma^2 per receive antenna per channel use.

    Returns:
        W (K N_T, K N_T).
    """
    e, m = end_to_end, equalizer
    cov = e @ e.conj().T + noise_var * (m @ m.conj().T)
    return np.linalg.solve(cov, e).conj().T


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


def _check_count(latents: np.ndarray, count: int) -> None:
    if count > latents.shape[0]:
        raise ShapeError(
            f"cannot send {count} real features of a {latents.shape[0]}-feature latent"
        )


def first_k_select(latents: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """First-K: the first ``count`` = 2 K N_T real features of native latents (d, n).

    Returns (values (count, n), indices (count, n) int64), the indices the same in every column.
    """
    _check_count(latents, count)
    indices = np.repeat(np.arange(count, dtype=np.int64)[:, None], latents.shape[1], axis=1)
    return latents[:count], indices


def top_k_select(latents: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-K: per column of native latents (d, n), the ``count`` = 2 K N_T largest-|.| real
    features and their indices.

    The values are ordered by decreasing magnitude in each column (ties: the lower index first),
    as ``torch.topk`` orders them in the authors' code, so that after complex packing the real
    parts carry the K N_T largest and the imaginary parts the next K N_T.

    Returns (values (count, n), indices (count, n) int64).
    """
    _check_count(latents, count)
    order = np.argsort(-np.abs(latents), axis=0, kind="stable")[:count].astype(np.int64)
    return np.take_along_axis(latents, order, axis=0), order


def scatter(values: np.ndarray, indices: np.ndarray, dim: int) -> np.ndarray:
    """Zero-filled real (dim, n) vectors with ``values`` (count, n) placed at ``indices``."""
    out = np.zeros((dim, values.shape[1]), dtype=np.float64)
    np.put_along_axis(out, indices, np.real(values), axis=0)
    return out


def top_k_index_bits(dim: int, count: int) -> int:
    """Bits per sample to tell which ``count`` of ``dim`` positions Top-K sent: ceil(log2 C)."""
    return math.ceil(math.log2(math.comb(dim, count))) if 0 < count < dim else 0


def index_channel_uses(bits: int, antennas_tx: int, snr_db: float) -> int:
    """Channel uses needed to carry ``bits`` at Shannon capacity N_T log2(1 + SNR) per use."""
    per_use = antennas_tx * math.log2(1 + 10 ** (snr_db / 10))
    return math.ceil(bits / per_use) if bits else 0


def fit_alignment(source: np.ndarray, target: np.ndarray, ridge: float = 1e-6) -> np.ndarray:
    """Least-squares alignment with intercept (eq. 20): Q = argmin ||Q [S; 1] - T||_F^2.

    The alignment is real-linear, as in the authors' code (a real least-squares map from the
    AP's real features to the user's): an affine map of the user's target is fitted exactly as
    its image, so fitting the user's whitened latents gives the same estimate as fitting its
    native ones. The intercept matters because the source is de-whitened (its mean is back).

    Args:
        source: (p, n) real, what the user has: the received, de-whitened, zero-filled estimate
            of the AP's native features, or the AP's full native pilots (``full`` fit).
        target: (q, n) real, the user's latents (the real view of its whitened pilots).
        ridge: Tikhonov weight relative to tr(S_c S_c^T)/p (S_c centered); keeps Q defined for
            rank-deficient S (First-K's zero rows).

    Returns:
        Q (q, p + 1): the last column is the intercept (:func:`apply_alignment`).
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    s_mean = source.mean(axis=1, keepdims=True)
    t_mean = target.mean(axis=1, keepdims=True)
    centered = source - s_mean
    gram = centered @ centered.T
    p = gram.shape[0]
    reg = ridge * max(float(np.trace(gram)) / p, 1e-12)
    linear = np.linalg.solve(gram + reg * np.eye(p), centered @ (target - t_mean).T).T
    return np.hstack([linear, t_mean - linear @ s_mean])


def apply_alignment(q: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Q [S; 1]: the aligned estimate (q, n) of source (p, n) for Q (q, p + 1)."""
    return q[:, :-1] @ source + q[:, -1:]
