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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
from semalign.common.packing import ShapeError


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


def pilot_products(y: np.ndarray, s: np.ndarray, y_norm2: float | None = None) -> PilotProducts:
    """Y S^H, S S^H and ||Y||^2 for Y (m, n), S (K N_R, n): the only O(n) work of a G-step."""
    s_h = s.conj().T
    norm2 = float(np.real(np.vdot(y, y))) if y_norm2 is None else y_norm2
    return PilotProducts(ys=y @ s_h, ss=s @ s_h, y_norm2=norm2, n=s.shape[1])


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
        g: (m, K N_R) equalizer; h: (K N_R, K N_T) block channel; y: (m, n) whitened pilots.

    Returns:
        A_l (K N_T, K N_T) Hermitian PSD, P_l (K N_T, n).
    """
    gh = g @ h
    a = gh.conj().T @ gh
    return (a + a.conj().T) / 2, gh.conj().T @ y


def solve_sylvester(a: np.ndarray, gram: GramFactor, c: np.ndarray, shift: float) -> np.ndarray:
    """Solve A F B + shift F = C for F with A Hermitian PSD and B given by ``gram``.

    Uses A = V_A diag(a) V_A^H: F = V_A [(V_A^H C V_B) / (a b^T + shift)] V_B^H.
    Requires a b^T + shift > 0 elementwise (shift > 0, or A and B positive definite).
    """
    eig_a, vec_a = np.linalg.eigh((a + a.conj().T) / 2)
    eig_a = np.clip(eig_a, 0.0, None)
    rotated = vec_a.conj().T @ c @ gram.eigvecs
    denom = np.outer(eig_a, gram.eigvals) + shift
    return vec_a @ (rotated / denom) @ gram.eigvecs.conj().T


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
    n = gram.n
    # P X^H computed as (X P^H)^H: the same product, about 4x faster in BLAS for small K N_T
    c = n * rho * (z - u) + (x @ p.conj().T).conj().T
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
