"""Federated ADMM steps for semantic alignment as pure functions (paper section III-A).

Shapes (columns are samples, n pilots):
* X (c_AP, n): whitened complex AP pilots, c_AP = d/2.
* Y_l (m_l, n): whitened complex pilots of user l, m_l = (user dim)/2.
* H_l (K N_R, K N_T): block channel; F (K N_T, c_AP): pre-equalizer; G_l (m_l, K N_R).
* Z, U (K N_T, c_AP): ADMM auxiliary and scaled dual variables.

The F-step solves the Sylvester equation (14) A_l F B + n rho F = C_l through the
eigendecompositions A_l = V_A diag(a) V_A^H and B = V_B diag(b) V_B^H:
F = V_A [(V_A^H C_l V_B) / (a b^T + n rho)] V_B^H. B = X X^H does not change during a run, so it
is factored once (:func:`factor_gram`) and only the small (K N_T)^2 matrix A_l per round.

Note on eq. (15): with column-major vec, vec(A F B) = (B^T (x) A) vec(F). The paper writes B^H,
which equals B here (Hermitian), not B^T = conj(B); the two differ for complex pilots. The
eigen-solution below solves eq. (14) itself and is tested against the B^T Kronecker form.

Cost. A round's arithmetic is dominated by products against the n pilots: the user's Y S^H,
S S^H and P = (G H)^H Y, and the AP's F X and P_l X^H. :func:`pilot_products` and
:func:`cross_terms` run them as single BLAS calls (S S^H as a Hermitian rank-k update, all
users' P_l X^H as one stacked product); :func:`apply_block_channel` applies H = I_K (x) Hbar per
channel use, never the Kronecker product. ``precision="single"`` (:data:`COMPLEX`) runs those
products in complex64 except S S^H; everything O(d^2) or smaller (the G-step solve, the F-step
eigendecompositions, the projection) stays complex128.

The compact round protocol needs none of the O(n) products per round: with R = Y X^H
(m, c) precomputed once and B = X X^H, the user's G-step takes Y S^H = R F^H H^H and
S S^H = H F B F^H H^H (:func:`compact_products`), and the AP's F-step takes
P_l X^H = (G_l H_l)^H R directly (:func:`f_step_from_cross`). With W = R^H R also formed once,
:func:`compact_step` gives the user's whole round from (K N_R, c) and (c, c) matrices, never
forming G_l: O(K N_R c^2) per round instead of O(m c K N_R).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
import scipy.linalg
import scipy.linalg.blas
from semalign.common.packing import ShapeError
from semalign.common.threads import single_thread

Precision = Literal["double", "single"]
#: complex dtype of the O(n) products for each precision
COMPLEX: dict[str, type] = {"double": np.complex128, "single": np.complex64}
#: largest stacked operand of :func:`cross_terms`, bytes (bounds the AP's extra memory)
STACK_BYTES = 256 * 2**20


@dataclass(frozen=True)
class GramFactor:
    """Eigendecomposition of the pilot Gram matrix B = X X^H (eq. 12), computed once per run.

    Attributes:
        eigvals: (c,) real eigenvalues of B.
        eigvecs: (c, c) unitary V_B with B = V_B diag(eigvals) V_B^H.
        n: number of pilots (columns of X).
    """

    eigvals: np.ndarray
    eigvecs: np.ndarray
    n: int

    @property
    def matrix(self) -> np.ndarray:
        """B reassembled (c, c), for checks."""
        return (self.eigvecs * self.eigvals) @ self.eigvecs.conj().T

    @cached_property
    def eigvecs_h(self) -> np.ndarray:
        """V_B^H (c, c), formed once."""
        return np.ascontiguousarray(self.eigvecs.conj().T)


def factor_gram(x: np.ndarray) -> GramFactor:
    """Factor B = X X^H (eq. 12) for pilots X (c, n)."""
    b = x @ x.conj().T
    eigvals, eigvecs = np.linalg.eigh((b + b.conj().T) / 2)
    return GramFactor(eigvals=np.clip(eigvals, 0.0, None), eigvecs=eigvecs, n=x.shape[1])


@dataclass(frozen=True)
class PilotProducts:
    """Products of a user's pilots with its received pilots, shared by the G-step and the loss.

    Attributes:
        ys: (m, K N_R) Y S^H.  ss: (K N_R, K N_R) S S^H.  y_norm2: ||Y||_F^2.  n: pilots.
    """

    ys: np.ndarray
    ss: np.ndarray
    y_norm2: float
    n: int


def hermitian_gram(s: np.ndarray) -> np.ndarray:
    """S S^H (r, r) for S (r, n) as one BLAS herk (half the work of a general product).

    Computed as conj((S^T)^H S^T): S^T of a row-major S is column-major, so BLAS reads S in
    place. The result is exactly Hermitian (complex128 for complex128 input).
    """
    if not (s.flags.c_contiguous and np.iscomplexobj(s)) or s.dtype not in (
        np.complex64,
        np.complex128,
    ):
        return s @ s.conj().T
    herk = scipy.linalg.blas.get_blas_funcs("herk", (s,))
    with single_thread():  # r^2 n / 2 work: threads cost more than they give (common.threads)
        upper = herk(1.0, s.T, trans=2)  # (S^T)^H S^T = conj(S S^H), upper triangle set
    full = np.triu(upper, 1)
    full += full.conj().T
    full[np.diag_indices_from(full)] = upper.diagonal().real
    return full.conj()


def pilot_products(y: np.ndarray, s: np.ndarray, y_norm2: float | None = None) -> PilotProducts:
    """Y S^H, S S^H and ||Y||^2 for Y (m, n), S (K N_R, n): the only O(n) work of a G-step.

    Y S^H runs in the precision of the inputs (complex64 Y and S: single precision), S S^H
    always in double: it costs K N_R / m of Y S^H, and the G-step's conditioning amplifies its
    float32 rounding (sums of n positive terms) about tenfold. Both are returned as complex128.
    """
    s_h = s.conj().T
    norm2 = float(np.real(np.vdot(y, y))) if y_norm2 is None else y_norm2
    ys = (y @ s_h).astype(np.complex128, copy=False)
    ss = hermitian_gram(s.astype(np.complex128, copy=False))
    return PilotProducts(ys=ys, ss=ss, y_norm2=norm2, n=s.shape[1])


def compact_products(
    r: np.ndarray, hf: np.ndarray, gram: np.ndarray, y_norm2: float, n: int
) -> PilotProducts:
    """:class:`PilotProducts` of the compact protocol, without the pilots.

    Args:
        r: (m, c) R = Y X^H, computed once per session.
        hf: (K N_R, c) H F (channel-aware and not: the user applies its own H).
        gram: (c, c) B = X X^H.
        y_norm2: ||Y||_F^2.  n: pilots.

    Returns:
        Y S^H = R (H F)^H and S S^H = (H F) B (H F)^H for S = H F X: what :func:`pilot_products`
        gives on S itself, at O(m c K N_R + c^2 K N_R) cost.
    """
    hf_h = hf.conj().T
    ss = hf @ gram @ hf_h
    return PilotProducts(ys=r @ hf_h, ss=(ss + ss.conj().T) / 2, y_norm2=y_norm2, n=n)


@dataclass(frozen=True)
class CompactStep:
    """One compact-protocol user round (eqs. 4, 7, 11) computed without forming G_l.

    With R = Y X^H (m, c), W = R^H R (c, c), S = H F X and M = S S^H + n sigma^2 I (K N_R,
    K N_R), the G-step gives G = R (H F)^H M^-1 (eq. 7), so with U = M^-1 H F (K N_R, c):
    G^H R = U W and G^H G = U W U^H. Every per-round output then costs O(K N_R c^2), whatever m.

    Attributes:
        a: (K N_T, K N_T) A_l = H^H G^H G H (eq. 11), Hermitian.
        cross: (K N_T, c) P_l X^H = H^H G^H R (eq. 13's pilot term).
        squared_error: ||Y - G S||_F^2.  noise_term: n sigma^2 ||G||_F^2 (eq. 4).
        solved: (K N_R, c) U = M^-1 H F, from which :meth:`equalizer` forms G on demand.
    """

    a: np.ndarray
    cross: np.ndarray
    squared_error: float
    noise_term: float
    solved: np.ndarray

    def equalizer(self, r: np.ndarray) -> np.ndarray:
        """G (m, K N_R) = R U^H for R = Y X^H (m, c): the G-step's equalizer (M is Hermitian)."""
        return r @ self.solved.conj().T


def compact_step(
    hf: np.ndarray,
    h: np.ndarray,
    gram: np.ndarray,
    cross_gram: np.ndarray,
    y_norm2: float,
    n: int,
    noise_var: float,
) -> CompactStep | None:
    """The user's compact round from small matrices only (see :class:`CompactStep`).

    Args:
        hf: (K N_R, c) H F on the user's channel estimate.  h: (K N_R, K N_T) block channel.
        gram: (c, c) B = X X^H.  cross_gram: (c, c) W = R^H R with R = Y X^H, once per session.
        y_norm2: ||Y||_F^2.  n: pilots.  noise_var: sigma^2 per row of the received block.

    Returns:
        The round's outputs, equal to :func:`compact_products` + :func:`g_step` +
        :func:`local_objective_terms` + :func:`uplink_statistics` up to rounding; ``None`` when
        M is not positive definite (noiseless and rank deficient): the caller then takes that
        explicit path, whose least-squares fallback handles it.
    """
    ss = hf @ gram @ hf.conj().T
    ss = (ss + ss.conj().T) / 2
    m = ss + n * noise_var * np.eye(ss.shape[0])
    try:
        factor = scipy.linalg.cho_factor(m, check_finite=False)
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
        return None
    solved = scipy.linalg.cho_solve(factor, hf, check_finite=False)  # U = M^-1 H F
    v = solved @ cross_gram  # G^H R = U W (K N_R, c)
    gg = v @ solved.conj().T  # G^H G = U W U^H (K N_R, K N_R)
    gg = (gg + gg.conj().T) / 2
    h_h = h.conj().T
    a = h_h @ gg @ h
    fit_cross = float(np.real(np.vdot(hf, v)))  # tr(G^H Y S^H) = tr(U W (H F)^H)
    fit = float(np.real(np.vdot(gg, ss)))  # tr(G^H G S S^H), both Hermitian
    return CompactStep(
        a=(a + a.conj().T) / 2,
        cross=h_h @ v,
        squared_error=max(y_norm2 - 2 * fit_cross + fit, 0.0),
        noise_term=float(n * noise_var * np.real(np.trace(gg))),
        solved=solved,
    )


def apply_block_channel(hbar: np.ndarray, symbols: np.ndarray) -> np.ndarray:
    """H symbols for H = I_K (x) Hbar (N_R, N_T) and symbols (K N_T, cols): (K N_R, cols).

    One small product per channel use; the Kronecker product is never formed.
    """
    n_rx, n_tx = hbar.shape
    rows, cols = symbols.shape
    if rows % n_tx:
        raise ShapeError(f"{rows} symbol rows are not a multiple of N_T = {n_tx}")
    k = rows // n_tx
    out = np.matmul(hbar.astype(symbols.dtype, copy=False), symbols.reshape(k, n_tx, cols))
    return out.reshape(k * n_rx, cols)


def g_step(
    y: np.ndarray, s: np.ndarray, noise_var: float, products: PilotProducts | None = None
) -> np.ndarray:
    """Equalizer update (eq. 7): G = Y S^H (S S^H + n sigma^2 I)^-1.

    Args:
        y: (m, n) whitened user pilots Y_l.
        s: (K N_R, n) received noiseless pilots S_l = H_l F X.
        noise_var: sigma^2, the per-antenna noise variance (Sigma_n = sigma^2 I).
        products: precomputed :func:`pilot_products` (optional).

    Returns:
        G (m, K N_R). The regularizer is n sigma^2 times the identity (not added to every entry).
    """
    pp = products or pilot_products(y, s)
    gram = pp.ss + pp.n * noise_var * np.eye(pp.ss.shape[0])
    rhs = pp.ys.conj().T  # (K N_R, m) = (Y S^H)^H
    try:
        g_h = scipy.linalg.solve(gram, rhs, assume_a="her")
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError):
        g_h = np.linalg.lstsq(gram, rhs, rcond=None)[0]
    return g_h.conj().T


def uplink_statistics(g: np.ndarray, h: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """User uplink of section III-B iii): A_l = (G H)^H (G H) (eq. 11) and P_l = (G H)^H Y.

    Args:
        g: (m, K N_R) equalizer; h: (K N_R, K N_T) block channel; y: (m, n) whitened pilots
            (or, in the compact protocol, R = Y X^H (m, c): then P_l X^H (K N_T, c)).

    Returns:
        A_l (K N_T, K N_T) Hermitian PSD, P_l (K N_T, n) in the precision of ``y``.
    """
    gh = g @ h
    a = gh.conj().T @ gh
    gh_h = gh.conj().T.astype(y.dtype, copy=False)
    return (a + a.conj().T) / 2, gh_h @ y


def solve_sylvester(a: np.ndarray, gram: GramFactor, c: np.ndarray, shift: float) -> np.ndarray:
    """Solve A F B + shift F = C for F with A Hermitian PSD and B given by ``gram``.

    Uses A = V_A diag(a) V_A^H: F = V_A [(V_A^H C V_B) / (a b^T + shift)] V_B^H.
    Requires a b^T + shift > 0 elementwise (shift > 0, or A and B positive definite).
    """
    eig_a, vec_a = np.linalg.eigh((a + a.conj().T) / 2)
    eig_a = np.clip(eig_a, 0.0, None)
    rotated = vec_a.conj().T @ c @ gram.eigvecs
    denom = np.outer(eig_a, gram.eigvals) + shift
    return vec_a @ (rotated / denom) @ gram.eigvecs_h


def f_steps(
    uploads: Sequence[tuple[np.ndarray, np.ndarray]],
    duals: Sequence[tuple[np.ndarray, np.ndarray]],
    gram: GramFactor,
    rho: float,
) -> list[np.ndarray]:
    """Every user's F_l (eqs. 13-14) at once: :func:`f_step_from_cross` for each
    (A_l, P_l X^H) in ``uploads`` with its (Z, U) in ``duals``.

    The same arithmetic as one :func:`solve_sylvester` per user, with the two products by the
    (c, c) V_B and V_B^H stacked over users: two BLAS calls instead of 2 L.
    """
    scaled = _rotated_f_steps(uploads, duals, gram, rho)
    if not scaled:
        return []
    out = np.concatenate(scaled) @ gram.eigvecs_h
    return list(np.split(out, np.cumsum([len(s) for s in scaled])[:-1]))


def f_mean(
    uploads: Sequence[tuple[np.ndarray, np.ndarray]],
    duals: Sequence[tuple[np.ndarray, np.ndarray]],
    gram: GramFactor,
    rho: float,
) -> np.ndarray:
    """F = (1/L) sum_l F_l (eqs. 8, 13-14) without the F_l: :func:`f_steps` then
    :func:`average`, with V_B^H applied once to the mean instead of to each F_l (L times fewer
    (K N_T, c) x (c, c) products). Returns F (K N_T, c)."""
    scaled = _rotated_f_steps(uploads, duals, gram, rho)
    if not scaled:
        raise ShapeError("cannot average zero local pre-equalizers")
    return (sum(scaled) / len(scaled)) @ gram.eigvecs_h


def _rotated_f_steps(
    uploads: Sequence[tuple[np.ndarray, np.ndarray]],
    duals: Sequence[tuple[np.ndarray, np.ndarray]],
    gram: GramFactor,
    rho: float,
) -> list[np.ndarray]:
    """F_l V_B (K N_T, c) for every user: eq. (14)'s solution before the final V_B^H."""
    n = gram.n
    shift = n * rho
    bases, eigs, lefts = [], [], []
    for (a, cross), (z, u) in zip(uploads, duals, strict=True):
        c = n * rho * (z - u) + cross
        eig_a, vec_a = np.linalg.eigh((a + a.conj().T) / 2)
        bases.append(vec_a)
        eigs.append(np.clip(eig_a, 0.0, None))
        lefts.append(vec_a.conj().T @ c)
    if not lefts:
        return []
    rotated = np.concatenate(lefts) @ gram.eigvecs
    scaled, row = [], 0
    for vec_a, eig_a in zip(bases, eigs, strict=True):
        block = rotated[row : row + len(eig_a)]
        scaled.append(vec_a @ (block / (np.outer(eig_a, gram.eigvals) + shift)))
        row += len(eig_a)
    return scaled


def f_step(
    a: np.ndarray,
    p: np.ndarray,
    x: np.ndarray,
    gram: GramFactor,
    z: np.ndarray,
    u: np.ndarray,
    rho: float,
) -> np.ndarray:
    """Local pre-equalizer F_l (eqs. 9-14): solve A_l F B + n rho F = C_l.

    C_l = n rho (Z - U) + P_l X^H (eq. 13) with P_l (K N_T, n) and X (c, n).
    Returns F_l (K N_T, c).
    """
    return f_step_from_cross(a, cross_terms(x, [p])[0], gram, z, u, rho)


def cross_terms(x: np.ndarray, uploads: Sequence[np.ndarray]) -> list[np.ndarray]:
    """P_l X^H (K N_T, c) for every P_l (K N_T, n) in ``uploads``: eq. (13)'s pilot term.

    The P_l are stacked (up to :data:`STACK_BYTES` at a time) so that one BLAS product serves
    many users; computed as (X P^H)^H, the same product about 4x faster in BLAS than P X^H for
    small K N_T. Runs in the precision of ``x`` (each P_l is converted once, while stacking);
    returns complex128.
    """
    out: list[np.ndarray] = []
    start = 0
    while start < len(uploads):
        stop, size = start, 0
        while stop < len(uploads) and (stop == start or size < STACK_BYTES):
            size += uploads[stop].shape[0] * x.shape[1] * x.itemsize
            stop += 1
        chunk = uploads[start:stop]
        stacked = np.empty((sum(p.shape[0] for p in chunk), x.shape[1]), dtype=x.dtype)
        row = 0
        for p in chunk:
            np.conjugate(p, out=stacked[row : row + p.shape[0]])  # the one conversion of P_l
            row += p.shape[0]
        products = (x @ stacked.T).conj().T.astype(np.complex128, copy=False)
        row = 0
        for p in chunk:
            out.append(products[row : row + p.shape[0]])
            row += p.shape[0]
        start = stop
    return out


def f_step_from_cross(
    a: np.ndarray,
    cross: np.ndarray,
    gram: GramFactor,
    z: np.ndarray,
    u: np.ndarray,
    rho: float,
) -> np.ndarray:
    """F_l (K N_T, c) from A_l and the pilot term P_l X^H (K N_T, c) (eqs. 13-14)."""
    n = gram.n
    c = n * rho * (z - u) + cross
    return solve_sylvester(a, gram, c, n * rho)


def average(matrices: list[np.ndarray]) -> np.ndarray:
    """F^(t+1) = (1/L) sum_l F_l (eq. 8)."""
    if not matrices:
        raise ShapeError("cannot average zero local pre-equalizers")
    return np.mean(np.stack(matrices), axis=0)


def project_power(m: np.ndarray, power: float) -> np.ndarray:
    """Projection onto {Z : tr(Z Z^H) <= P_T} (eqs. 16-17): Z = M / (1 + lambda).

    lambda = max(0, sqrt(tr(M M^H) / P_T) - 1).
    """
    norm = np.sqrt(np.real(np.vdot(m, m)))
    lam = max(0.0, norm / np.sqrt(power) - 1.0)
    return m / (1.0 + lam)


def dual_update(u: np.ndarray, f: np.ndarray, z: np.ndarray) -> np.ndarray:
    """U^(t+1) = U^(t) + F^(t+1) - Z^(t+1) (eq. 18)."""
    return u + f - z


def residuals(f: np.ndarray, z: np.ndarray, z_prev: np.ndarray, rho: float) -> tuple[float, float]:
    """ADMM primal and dual residual norms (Boyd et al. 2011, section 3.3).

    primal = ||F^(t+1) - Z^(t+1)||_F, dual = rho ||Z^(t+1) - Z^(t)||_F.
    """
    return float(np.linalg.norm(f - z)), float(rho * np.linalg.norm(z - z_prev))


def init_pre_equalizer(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """F^(0) with i.i.d. CN(0, 1) entries (Algorithm 1, line 1), shape (K N_T, c)."""
    shape = (rows, cols)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / np.sqrt(2)


def local_objective_terms(
    y: np.ndarray,
    g: np.ndarray,
    s: np.ndarray,
    noise_var: float,
    products: PilotProducts | None = None,
) -> tuple[float, float]:
    """User l's terms of eq. (4): (||Y - G S||_F^2, n sigma^2 ||G||_F^2).

    Uses ||Y - G S||^2 = ||Y||^2 - 2 Re<G, Y S^H> + Re tr(G S S^H G^H), so with precomputed
    :func:`pilot_products` no (m, n) residual is formed. The objective of eq. (3) is
    (1/(L n)) sum_l of both terms (expected squared error per pilot, averaged over users).
    """
    pp = products or pilot_products(y, s)
    cross = float(np.real(np.vdot(g, pp.ys)))
    fit = float(np.real(np.vdot(g, g @ pp.ss)))
    squared_error = max(pp.y_norm2 - 2 * cross + fit, 0.0)
    return squared_error, float(pp.n * noise_var * np.real(np.vdot(g, g)))
