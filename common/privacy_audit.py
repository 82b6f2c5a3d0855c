"""What an honest-but-curious AP can reconstruct of a user's whitened pilots from its uploads.

Shapes (columns are samples, n pilots; s = K N_T, the rows of one upload):

* Y (m, n): the user's whitened pilots, Y Y^H = n v I (v the whitened variance: 1 for the
  paper's complex features, 1/2 per real feature when widely linear).
* X (c, n): the AP's whitened pilots; B = X X^H (c, c). The AP knows both.
* M_t = G_t H (m, s): the user's equalizer times its channel in round t (unknown to the AP).
* A paper upload is P_t = M_t^H Y (s, n) (*pilot domain*: one column per pilot); a compact
  upload is P_t X^H = M_t^H Y X^H (s, c) (*feature domain*: one column per AP feature).

What leaks. Stacking T rounds gives Q = [P_1; ...; P_T] = M^H Y (T s, n) with
M = [M_1, ..., M_T] (m, T s): every row of Q is a combination of the rows of Y. The G-step
(G_t = Y S_t^H (S_t S_t^H + n sigma^2 I)^-1, S_t = H F_t X) puts M's columns in the column
space of R = Y X^H (m, c), so rank Q <= min(T s, c, m). A feature-domain upload maps to the
pilot domain with the AP's own pilots: P_t X^H B^-1 X = M_t^H Y Pi_X, Pi_X = X^H B^-1 X the
projection onto X's row space, so compact uploads can only ever show Y Pi_X, the part of Y that
is linear in the AP's own pilots.

What the audit reports (each figure after removing, on the truth, only the ambiguity that no
attacker can resolve):

* attacks, what an AP can compute itself; the best of them (``attack_r2``) is a *lower bound*
  on leakage (an attack not tried may do better):

  - :func:`whitened_estimate` + :func:`procrustes_align` (``procrustes_r2``). Since
    Y Y^H = n v I, Q Q^H = n v M^H M, so Q = W Lambda^(1/2) U^H Y with U (m, r) unknown and
    W, Lambda from Q's SVD: U^H Y = sqrt(n v) V for the top r <= m right singular vectors V
    (:func:`leaked_basis`). The AP knows Y up to the semi-unitary U, which nothing it receives
    fixes; the best U given the truth removes it. Exact for pilot-domain uploads; compact
    uploads are not whitened and the estimate is poorer.
  - :func:`equalizer_map`, :func:`cross_gram_estimate`, :func:`regression_estimate`
    (``known_map_r2``): a channel-aware AP that also uses X, the F_t it sent and the CSI
    solves compact uploads for R^H R and forms Y Pi_X up to a semi-unitary.

* an oracle, :func:`subspace_r2` (``subspace_r2``): the best *row combination* C Q of the
  uploads, C fitted on the truth (Y projected on Q's numerical row space). Neither bound nor
  attack: the AP cannot fit C without Y, and an AP that uses X, F_t and the CSI besides the
  uploads is not limited to row combinations of them (``known_map_r2`` can exceed it).
* a ceiling for feature-domain uploads, ``own_r2``: Y Pi_X, what X's row space explains with
  a map fitted on the truth; any (., c) upload maps into X's row space.

Controls: a random r-dimensional subspace of the n pilots explains r / n of Y on average
(:func:`chance_r2`); the AP's own pilots X already predict much of any user's task.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from semalign.common.packing import ShapeError

#: singular values below this fraction of the largest count as zero: uploads are float32 (unit
#: roundoff 6e-8), so weaker directions are rounding noise the AP cannot resolve
RANK_RTOL = 1e-6


def pilot_domain(term: np.ndarray, x: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """A feature-domain upload (r, c) in the pilot domain: term B^-1 X (r, n).

    Args:
        term: (r, c) e.g. P_t X^H of the compact protocol.
        x: (c, n) the AP's whitened pilots X.  gram: (c, c) B = X X^H.

    For term = Z X^H this is Z Pi_X: the part of Z in X's row space (least squares, so a
    singular B is handled by its pseudo-inverse).
    """
    if term.shape[1] != x.shape[0] or gram.shape != (x.shape[0], x.shape[0]):
        raise ShapeError(f"term {term.shape}, pilots {x.shape}, Gram {gram.shape} do not match")
    coefficients = np.linalg.lstsq(gram, term.conj().T, rcond=None)[0]  # B^-1 term^H (c, r)
    return coefficients.conj().T @ x


def leaked_basis(
    stack: np.ndarray, max_rank: int | None = None, rtol: float = RANK_RTOL
) -> np.ndarray:
    """Orthonormal rows V (r, n) of the numerical row space of ``stack`` (rows, n).

    The top right singular vectors whose singular values exceed ``rtol`` times the largest
    (below that: float32 rounding of the uploads), at most ``max_rank`` of them when given:
    the attacker's whitened-subspace estimate keeps m, the rows of Y (the AP knows the user's
    latent dimension from the handshake); the row-combination oracle keeps all (``None``).
    An empty or zero stack gives (0, n).
    """
    n = stack.shape[1]
    if stack.shape[0] == 0 or (max_rank is not None and max_rank <= 0):
        return np.zeros((0, n), dtype=np.complex128)
    _, sv, vh = np.linalg.svd(np.asarray(stack, dtype=np.complex128), full_matrices=False)
    if sv.size == 0 or sv[0] <= 0:
        return np.zeros((0, n), dtype=np.complex128)
    rank = int(np.sum(sv > rtol * sv[0]))
    rank = rank if max_rank is None else min(rank, max_rank)
    return vh[:rank]


def centered_energy(y: np.ndarray) -> float:
    """||Y - mean||_F^2 for Y (m, n), the mean over the n columns: R^2's denominator."""
    return float(np.sum(np.abs(y - y.mean(axis=1, keepdims=True)) ** 2))


def r2(truth: np.ndarray, estimate: np.ndarray) -> float:
    """R^2 = 1 - ||Y - Y_hat||_F^2 / ||Y - mean||_F^2 for Y, Y_hat (m, n) (1: exact; 0: no
    better than the mean; negative: worse)."""
    if truth.shape != estimate.shape:
        raise ShapeError(f"truth {truth.shape} and estimate {estimate.shape} differ")
    energy = centered_energy(truth)
    if energy <= 0:
        raise ShapeError("R^2 of a constant truth is undefined")
    return 1.0 - float(np.sum(np.abs(truth - estimate) ** 2)) / energy


def subspace_r2(y: np.ndarray, basis: np.ndarray) -> float:
    """R^2 of Y_hat = Y V^H V for Y (m, n) and orthonormal rows V (r, n): the best
    row combination C V of V, C fitted on the truth (an oracle, not an attack: it needs Y).
    With V the row space of the uploads, no C Q of the uploads Q does better; an AP that also
    uses what else it knows (X, F_t, CSI) is not limited to C Q."""
    return r2(y, (y @ basis.conj().T) @ basis)


def whitened_estimate(basis: np.ndarray, n: int, variance: float = 1.0) -> np.ndarray:
    """The AP's own estimate sqrt(n v) V (r, n) of U^H Y, from orthonormal rows V (r, n).

    Exact when the uploads are pilot-domain (Q = M^H Y) and Y Y^H = n v I: then the rows of
    sqrt(n v) V are the coordinates of Y in an orthonormal frame U (m, r) of M's column space.
    """
    return np.sqrt(n * variance) * basis


def whitened_attack_r2(
    y: np.ndarray, stack: np.ndarray, variance: float = 1.0, rtol: float = RANK_RTOL
) -> float:
    """R^2 of the AP's whitened-subspace estimate from the uploads ``stack`` (rows, n) of a
    user with Y (m, n): sqrt(n v) V for the top m directions V of the stack
    (:func:`leaked_basis`, :func:`whitened_estimate`), aligned to Y by
    :func:`procrustes_align`. 0 for an empty stack."""
    basis = leaked_basis(stack, y.shape[0], rtol)
    return r2(y, procrustes_align(whitened_estimate(basis, y.shape[1], variance), y))


def procrustes_align(estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """U E, with U (m, r) the semi-unitary (U^H U = I) that minimizes ||Y - U E||_F for an
    estimate E (r, n) and the truth Y (m, n) (orthogonal Procrustes: U = W Z^H for the SVD
    Y E^H = W S Z^H). Removes the ambiguity an attacker cannot resolve; (m, n) zeros for r = 0.
    """
    m, r = truth.shape[0], estimate.shape[0]
    if r == 0:
        return np.zeros_like(truth, dtype=np.complex128)
    if r > m:
        raise ShapeError(f"estimate has {r} rows, more than the truth's {m}")
    w, _, zh = np.linalg.svd(truth @ estimate.conj().T, full_matrices=False)  # (m, r), (r, r)
    return (w @ zh) @ estimate


def equalizer_map(
    hf: np.ndarray, h: np.ndarray, gram: np.ndarray, n: int, noise_var: float
) -> np.ndarray:
    """J_t (c, s) with M_t = G_t H = R J_t, from what a channel-aware AP knows.

    The G-step is G_t = R (H F_t)^H (H F_t B (H F_t)^H + n sigma^2 I)^-1 with R = Y X^H, so
    J_t = (H F_t)^H (H F_t B (H F_t)^H + n sigma^2 I)^-1 H.

    Args:
        hf: (K N_R, c) H F_t on the user's channel estimate (the handshake's CSI).
        h: (K N_R, s) the block channel H.  gram: (c, c) B = X X^H.  n: pilots.
        noise_var: sigma^2 per row of the received block.
    """
    ss = hf @ gram @ hf.conj().T
    system = (ss + ss.conj().T) / 2 + n * noise_var * np.eye(ss.shape[0])
    return np.linalg.solve(system, hf).conj().T @ h  # (M^-1 H F)^H H, M Hermitian


def cross_gram_estimate(maps: Sequence[np.ndarray], terms: Sequence[np.ndarray]) -> np.ndarray:
    """W = R^H R (c, c) by least squares from compact uploads T_t = P_t X^H = J_t^H W (s, c)
    and the maps J_t (c, s) of :func:`equalizer_map`: exact once the stacked J_t^H have rank c
    (T K N_T >= c rounds); the minimum-norm fit before. Returned Hermitian."""
    lhs = np.vstack([j.conj().T for j in maps])
    w = np.linalg.lstsq(lhs, np.vstack(terms), rcond=None)[0]
    return (w + w.conj().T) / 2


def regression_estimate(
    w: np.ndarray, x: np.ndarray, gram: np.ndarray, rows: int, rtol: float = RANK_RTOL
) -> np.ndarray:
    """The AP's estimate (r, n) of Y Pi_X = R B^-1 X up to a semi-unitary, from W = R^H R.

    With R = U S V^H, W = V S^2 V^H, so R B^-1 X = U (S V^H B^-1 X): the rows S V^H B^-1 X
    for the ``rows`` (m) largest eigenvalues of W above ``rtol`` of the largest; U stays unknown
    (:func:`procrustes_align` removes it). x (c, n), gram (c, c) B.
    """
    eigvals, eigvecs = np.linalg.eigh(w)
    order = np.argsort(eigvals)[::-1][:rows]
    keep = order[eigvals[order] > rtol * max(eigvals.max(initial=0.0), 0.0)]
    coordinates = np.sqrt(eigvals[keep])[:, None] * eigvecs[:, keep].conj().T  # S V^H (r, c)
    return np.linalg.lstsq(gram, coordinates.conj().T, rcond=None)[0].conj().T @ x


def chance_r2(rank: int, n: int) -> float:
    """Expected :func:`subspace_r2` of a uniformly random ``rank``-dimensional subspace of the
    n pilots for a centered Y: rank / n (what the oracle 'explains' with that many rows of
    noise)."""
    return min(rank, n) / n if n else 0.0


def _prefix_projections(
    y: np.ndarray, rounds: Sequence[np.ndarray], rtol: float, max_rank: int | None
) -> list[np.ndarray]:
    """Per prefix of ``rounds`` (rounds 0..t, k_t rows), Y V_t^H (m, r_t) for the orthonormal
    rows V_t (r_t, n) of :func:`leaked_basis` of that prefix (``max_rank``, ``rtol`` as
    there).

    From the Gram matrix G = Q Q^H (k x k) of the stack Q (k, n) and C = Y Q^H, once: a prefix
    has the singular values sqrt(eig(G_t)) and, for its top eigenpairs (U, L) (eigenvalues
    above rtol^2 of the largest), V_t = L^(-1/2) U^H Q_t, so Y V_t^H = C_t U L^(-1/2)."""
    stack = np.vstack(rounds).astype(np.complex128)
    gram, cross = stack @ stack.conj().T, y @ stack.conj().T
    out, rows = [], 0
    for block in rounds:
        rows += block.shape[0]
        eigvals, eigvecs = np.linalg.eigh(gram[:rows, :rows])
        order = np.argsort(eigvals)[::-1][:max_rank]
        top = eigvals.max(initial=0.0)
        keep = order[eigvals[order] > rtol**2 * top] if top > 0 else order[:0]
        out.append(cross[:, :rows] @ (eigvecs[:, keep] / np.sqrt(eigvals[keep])))
    return out


def r2_by_rounds(
    y: np.ndarray,
    rounds: Sequence[np.ndarray],
    rtol: float = RANK_RTOL,
    max_rank: int | None = None,
) -> list[tuple[int, float]]:
    """(rank, :func:`subspace_r2`) after each prefix of ``rounds`` (pilot-domain terms, each
    (s_t, n)): entry t uses rounds 0..t. Y (m, n). ``max_rank`` as in :func:`leaked_basis`.

    With P = Y V^H (:func:`_prefix_projections`) and V orthonormal,
    R^2 = 1 - (||Y||^2 - ||P||^2) / ||Y - mean||^2.
    """
    if not rounds:
        return []
    energy, total = centered_energy(y), float(np.sum(np.abs(y) ** 2))
    return [
        (p.shape[1], 1.0 - (total - float(np.sum(np.abs(p) ** 2))) / energy)
        for p in _prefix_projections(y, rounds, rtol, max_rank)
    ]


def whitened_attack_by_rounds(
    y: np.ndarray, rounds: Sequence[np.ndarray], variance: float = 1.0, rtol: float = RANK_RTOL
) -> list[float]:
    """:func:`whitened_attack_r2` after each prefix of ``rounds`` (each (s_t, n)), Y (m, n).

    The estimate E = sqrt(n v) V has orthonormal rows times sqrt(n v), and the Procrustes fit
    U E of Y leaves ||Y - U E||^2 = ||Y||^2 + n v r - 2 ||Y E^H||_* (the nuclear norm: the
    optimum of orthogonal Procrustes), with Y E^H = sqrt(n v) Y V^H
    (:func:`_prefix_projections`, at most m directions)."""
    if not rounds:
        return []
    n = y.shape[1]
    energy, total = centered_energy(y), float(np.sum(np.abs(y) ** 2))
    out = []
    for p in _prefix_projections(y, rounds, rtol, y.shape[0]):
        nuclear = float(np.sum(np.linalg.svd(p, compute_uv=False))) if p.size else 0.0
        scale = np.sqrt(n * variance)
        residual = total + n * variance * p.shape[1] - 2 * scale * nuclear
        out.append(1.0 - residual / energy)
    return out


def real_samples(features: np.ndarray) -> np.ndarray:
    """Features (r, n), columns are samples -> real rows (n, 2 r) [Re; Im] (a complex-linear
    map of the features is a real-linear map of these)."""
    z = np.asarray(features)
    return np.hstack([z.real.T, z.imag.T]).astype(np.float64)


def linear_cka(a: np.ndarray, b: np.ndarray) -> float:
    """Linear CKA between real representations a (n, p) and b (n, q) of the same n samples:
    ||b_c^T a_c||_F^2 / (||a_c^T a_c||_F ||b_c^T b_c||_F) on column-centered a_c, b_c
    (Kornblith et al. 2019). In [0, 1], invariant to rotations and isotropic scaling; NaN when
    either is constant."""
    if len(a) != len(b):
        raise ShapeError(f"CKA of {len(a)} and {len(b)} samples")
    a = np.asarray(a, dtype=np.float64) - np.mean(a, axis=0)
    b = np.asarray(b, dtype=np.float64) - np.mean(b, axis=0)
    norm = np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)
    if a.shape[1] == 0 or b.shape[1] == 0 or norm <= 0:
        return float("nan")
    return float(np.linalg.norm(b.T @ a) ** 2 / norm)


def split_rows(n: int, train_fraction: float = 0.7) -> tuple[slice, slice]:
    """Train and test rows of ``n`` samples: the first ``train_fraction`` and the rest."""
    if not 0 < train_fraction < 1:
        raise ShapeError(f"train fraction must be in (0, 1), got {train_fraction}")
    cut = int(round(n * train_fraction))
    if cut < 1 or cut >= n:
        raise ShapeError(f"{n} samples cannot be split at {train_fraction}")
    return slice(0, cut), slice(cut, n)


def majority_share(labels: np.ndarray) -> float:
    """Share of the most frequent label in ``labels`` (n,): a probe that always answers it."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    return float(counts.max() / counts.sum())


def probe_accuracy(
    features: np.ndarray, labels: np.ndarray, train_fraction: float = 0.7, seed: int = 0
) -> float:
    """Test accuracy of a logistic-regression probe trained on the first ``train_fraction``
    rows of ``features`` (n, p) to predict ``labels`` (n,); the rest are its test rows.

    With no features, or a single label in the training rows, the probe can only answer the
    majority label of its training rows.
    """
    from semalign.common.classifier import train_classifier

    labels = np.asarray(labels)
    train, test = split_rows(len(labels), train_fraction)
    if features.shape[1] == 0 or len(np.unique(labels[train])) < 2:
        values, counts = np.unique(labels[train], return_counts=True)
        return float(np.mean(labels[test] == values[np.argmax(counts)]))
    probe = train_classifier(features[train], labels[train], seed=seed)
    return probe.accuracy(features[test], labels[test])
