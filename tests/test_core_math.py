"""Numerical identities of the math core (paper sections II-IV)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from semalign.common import admm, baselines
from semalign.common.channels import BlockFadingLink, block_channel, noise_variance, rayleigh_matrix
from semalign.common.packing import complex_dim, complex_to_real, real_to_complex
from semalign.common.whitening import WhiteningError, fit_whitener


def crandn(rng, *shape):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / np.sqrt(2)


@pytest.mark.parametrize("d", [1, 2, 7, 8, 193])
def test_packing_round_trip(d):
    x = np.random.default_rng(d).standard_normal((d, 5))
    z = real_to_complex(x)
    assert z.shape == (complex_dim(d), 5)
    half = complex_dim(d)
    np.testing.assert_array_equal(z[0].real, x[0])
    if d > 1:
        np.testing.assert_array_equal(z[0].imag, x[half])
    np.testing.assert_array_equal(complex_to_real(z, d), x)


def test_packing_rejects_wrong_shape():
    with pytest.raises(ValueError):
        complex_to_real(np.zeros((3, 2), complex), 8)


def test_whitening_gives_zero_mean_identity_covariance():
    rng = np.random.default_rng(0)
    mix = crandn(rng, 6, 6)
    x = mix @ crandn(rng, 6, 500) + 3.0
    w = fit_whitener(x)
    z = w.whiten(x)
    np.testing.assert_allclose(z.mean(axis=1), 0, atol=1e-10)
    np.testing.assert_allclose(z @ z.conj().T / z.shape[1], np.eye(6), atol=1e-8)
    np.testing.assert_allclose(w.dewhiten(z), x, atol=1e-10)
    assert w.shrinkage == 0.0


def test_whitening_singular_covariance_is_regularized_not_broken():
    rng = np.random.default_rng(1)
    base = crandn(rng, 3, 400)
    x = np.vstack([base, base[:2] * 2.0])  # rank 3 in 5 dims: plain Cholesky fails
    w = fit_whitener(x)
    assert w.shrinkage > 0 and np.isfinite(w.condition) and w.condition <= 1e10
    z = w.whiten(x)
    assert np.all(np.isfinite(z))
    np.testing.assert_allclose(w.dewhiten(z), x, atol=1e-6)


def test_whitening_rejects_constant_and_nonfinite():
    with pytest.raises(WhiteningError):
        fit_whitener(np.ones((3, 10), complex))
    bad = np.random.default_rng(2).standard_normal((3, 10)).astype(complex)
    bad[0, 0] = np.nan
    with pytest.raises(WhiteningError):
        fit_whitener(bad)


def test_channel_shapes_noise_and_snr_definition():
    rng = np.random.default_rng(3)
    hbar = rayleigh_matrix(3, 2, rng)
    k = 4
    h = block_channel(hbar, k)
    assert h.shape == (12, 8)
    np.testing.assert_array_equal(h[3:6, 2:4], hbar)
    assert np.all(h[0:3, 2:4] == 0)
    sigma2 = noise_variance(10.0, 2.0, k)
    assert sigma2 == pytest.approx((2.0 / k) / 10.0)
    ch = BlockFadingLink(hbar, k, sigma2, np.random.default_rng(4))
    x = crandn(rng, 8, 50_000)
    np.testing.assert_allclose(ch(x, noiseless=True), h @ x, atol=1e-12)
    noise = ch(x) - h @ x
    assert np.var(noise) == pytest.approx(sigma2, rel=0.03)
    # Entries of Hbar are CN(0, 1): mean power 1 (checked on many draws).
    many = rayleigh_matrix(200, 200, rng)
    assert np.mean(np.abs(many) ** 2) == pytest.approx(1.0, rel=0.02)


def test_received_power_per_antenna_matches_snr_definition():
    """Whitened x, tr(F F^H) = P_T: mean received power per antenna per use is P_T / K."""
    rng = np.random.default_rng(5)
    k, nt, nr, c, power = 2, 4, 4, 16, 1.0
    f = admm.project_power(crandn(rng, k * nt, c) * 10, power)
    assert np.real(np.vdot(f, f)) == pytest.approx(power)
    powers = []
    for _ in range(300):
        h = block_channel(rayleigh_matrix(nr, nt, rng), k)
        powers.append(np.real(np.trace(h @ f @ f.conj().T @ h.conj().T)) / (k * nr))
    assert np.mean(powers) == pytest.approx(power / k, rel=0.1)


def _problem(seed=0, m=5, k_nr=6, k_nt=4, c=7, n=60):
    rng = np.random.default_rng(seed)
    return rng, crandn(rng, m, n), crandn(rng, k_nr, k_nt), crandn(rng, c, n)


def test_g_step_zeroes_gradient_of_lagrangian():
    rng, y, h, x = _problem()
    f = crandn(rng, 4, 7)
    s = h @ f @ x
    sigma2 = 0.3
    g = admm.g_step(y, s, sigma2)
    n = x.shape[1]
    grad = -(y - g @ s) @ s.conj().T + n * sigma2 * g  # d/dG* of ||Y-GS||^2 + n s2 ||G||^2
    assert np.linalg.norm(grad) < 1e-9 * np.linalg.norm(y @ s.conj().T)
    # and it is a minimum: perturbing G increases the objective
    sq, noise = admm.local_objective_terms(y, g, s, sigma2)
    sq2, noise2 = admm.local_objective_terms(y, g + 1e-3 * crandn(rng, *g.shape), s, sigma2)
    assert sq2 + noise2 > sq + noise


def test_f_step_solves_sylvester_and_matches_kronecker_solution():
    rng, y, h, x = _problem(seed=1)
    g = crandn(rng, 5, 6)
    a, p = admm.uplink_statistics(g, h, y)
    gram = admm.factor_gram(x)
    z, u, rho = crandn(rng, 4, 7), crandn(rng, 4, 7) * 0.1, 0.7
    f = admm.f_step(a, p, x, gram, z, u, rho)
    n = x.shape[1]
    b = x @ x.conj().T
    c = n * rho * (z - u) + p @ x.conj().T
    residual = a @ f @ b + n * rho * f - c  # eq. (14)
    assert np.linalg.norm(residual) < 1e-10 * np.linalg.norm(c)
    # eq. (15) with column-major vec: vec(A F B) = (B^T kron A) vec(F)
    kron = np.kron(b.T, a) + n * rho * np.eye(a.shape[0] * b.shape[0])
    f_kron = np.linalg.solve(kron, c.flatten(order="F")).reshape(f.shape, order="F")
    np.testing.assert_allclose(f, f_kron, atol=1e-10)
    # F_l minimizes eq. (9): zero gradient
    gh = g @ h
    grad = gh.conj().T @ (gh @ f @ x - y) @ x.conj().T / n + rho * (f - z + u)
    assert np.linalg.norm(grad) < 1e-9 * np.linalg.norm(c)


def test_gram_factor_reassembles_b():
    rng = np.random.default_rng(2)
    x = crandn(rng, 6, 40)
    np.testing.assert_allclose(admm.factor_gram(x).matrix, x @ x.conj().T, atol=1e-10)


def test_average_is_eq8():
    ms = [np.full((2, 2), v, complex) for v in (1.0, 2.0, 6.0)]
    np.testing.assert_allclose(admm.average(ms), np.full((2, 2), 3.0))
    with pytest.raises(ValueError):
        admm.average([])


def test_z_step_is_the_projection_onto_the_power_ball():
    rng = np.random.default_rng(6)
    power = 2.0
    outside = crandn(rng, 4, 5) * 5
    inside = crandn(rng, 4, 5) * 0.1
    z = admm.project_power(outside, power)
    assert np.real(np.vdot(z, z)) == pytest.approx(power)  # feasible, on the boundary
    np.testing.assert_allclose(admm.project_power(z, power), z)  # idempotent
    np.testing.assert_array_equal(admm.project_power(inside, power), inside)
    dist = np.linalg.norm(outside - z)
    for _ in range(200):  # nearest point: no feasible point is closer
        cand = admm.project_power(crandn(rng, 4, 5) * rng.uniform(0.1, 3), power)
        assert np.linalg.norm(outside - cand) >= dist - 1e-12


def test_dual_update_and_residuals():
    u, f, z, z_prev = (np.full((2, 2), v, complex) for v in (1.0, 3.0, 2.0, 0.5))
    np.testing.assert_allclose(admm.dual_update(u, f, z), np.full((2, 2), 2.0))
    primal, dual = admm.residuals(f, z, z_prev, rho=2.0)
    assert primal == pytest.approx(2.0) and dual == pytest.approx(2.0 * 3.0)


def test_top_k_and_first_k_select_native_real_features():
    x = np.array([[1, 5], [-4, 0.1], [2, 3], [0.5, -6]], dtype=float)  # native (d=4, n=2)
    values, idx = baselines.top_k_select(x, 2)
    # per column, by decreasing magnitude (the authors' torch.topk order)
    np.testing.assert_array_equal(idx, [[1, 3], [2, 0]])
    np.testing.assert_array_equal(values, [[-4, -6], [2, 5]])
    np.testing.assert_array_equal(
        baselines.scatter(values, idx, 4), [[0, 5], [-4, 0], [2, 0], [0, -6]]
    )
    values, idx = baselines.first_k_select(x, 3)
    np.testing.assert_array_equal(values, x[:3])
    np.testing.assert_array_equal(idx, [[0, 0], [1, 1], [2, 2]])
    # ties: the lower index first
    _, idx = baselines.top_k_select(np.array([[1.0], [-1.0], [1.0]]), 2)
    np.testing.assert_array_equal(idx[:, 0], [0, 1])
    assert baselines.top_k_index_bits(8, 3) == math.ceil(math.log2(56)) == 6
    assert baselines.top_k_index_bits(8, 8) == 0
    # SNR 3 (linear): log2(1 + 3) = 2 bits per antenna, 4 bits per use with N_T = 2
    assert baselines.index_channel_uses(6, 2, 10 * math.log10(3)) == 2
    with pytest.raises(ValueError):
        baselines.first_k_select(x, 5)
    with pytest.raises(ValueError):
        baselines.top_k_select(x, 5)


def test_svd_mmse_equalizer_inverts_channel_up_to_v_at_high_snr():
    rng = np.random.default_rng(7)
    hbar = rayleigh_matrix(4, 4, rng)
    eq = baselines.svd_mmse_equalizer(hbar, 200.0, channel_uses=2)
    _, _, vh = np.linalg.svd(hbar)
    np.testing.assert_allclose(eq @ block_channel(hbar, 2), np.kron(np.eye(2), vh), atol=1e-8)
    # at finite SNR it is the MMSE shrinkage (Sigma^2 + 1/snr)^-1 Sigma^2 V^H
    eq_low = baselines.svd_mmse_equalizer(hbar, 0.0, channel_uses=1)
    _, s, vh = np.linalg.svd(hbar)
    np.testing.assert_allclose(eq_low @ hbar, np.diag(s**2 / (s**2 + 1)) @ vh, atol=1e-10)


@pytest.mark.parametrize("power", [0.05, 1e6])
def test_power_constrained_precoder_kkt(power):
    """min ||T - M F X||^2 s.t. tr(F F^H) <= P: stationarity, feasibility, slackness."""
    rng = np.random.default_rng(8)
    m, r = crandn(rng, 6, 4), crandn(rng, 6, 4)  # target T = R X
    x = crandn(rng, 4, 80)
    gram = admm.factor_gram(x)
    a, c = m.conj().T @ m, m.conj().T @ r @ gram.matrix
    f = baselines.power_constrained_precoder(a, gram, c, power)
    used = np.real(np.vdot(f, f))
    assert used <= power * (1 + 1e-9)
    lhs = a @ f @ gram.matrix - c  # stationarity: A F B - C = -mu F with mu >= 0
    mu = -np.real(np.vdot(f, lhs)) / used
    assert mu >= -1e-8 * np.linalg.norm(c)
    np.testing.assert_allclose(lhs, -mu * f, atol=1e-7 * np.linalg.norm(c))
    if power < 1:  # tight budget: constraint active
        assert mu > 0 and used == pytest.approx(power, rel=1e-6)
    else:  # loose budget: the unconstrained least-squares solution (M^H M)^-1 M^H R
        np.testing.assert_allclose(f, np.linalg.solve(a, m.conj().T @ r), atol=1e-8)


def test_fit_alignment_recovers_affine_map():
    rng = np.random.default_rng(9)
    q, b = rng.standard_normal((3, 5)), rng.standard_normal((3, 1))
    s = rng.standard_normal((5, 100)) + 2.0  # a source with a mean, as de-whitened features
    fitted = baselines.fit_alignment(s, q @ s + b, ridge=1e-12)
    np.testing.assert_allclose(fitted, np.hstack([q, b]), atol=1e-8)
    np.testing.assert_allclose(baselines.apply_alignment(fitted, s), q @ s + b, atol=1e-8)
    # zero rows (First-K's unsent features) get zero weight, not a singular solve
    s[2] = 0.0
    fitted = baselines.fit_alignment(s, q @ s + b)
    assert np.all(np.isfinite(fitted)) and np.allclose(fitted[:, 2], 0.0)


def test_objective_terms_from_products_equal_explicit_residual():
    rng, y, h, x = _problem(seed=4)
    s = h @ crandn(rng, 4, 7) @ x
    g = admm.g_step(y, s, 0.2)
    sq, noise = admm.local_objective_terms(y, g, s, 0.2)
    assert sq == pytest.approx(np.linalg.norm(y - g @ s) ** 2, rel=1e-10)
    assert noise == pytest.approx(x.shape[1] * 0.2 * np.linalg.norm(g) ** 2, rel=1e-12)


def test_unmixing_is_the_lmmse_of_the_whitened_symbols():
    """W = E^H (E E^H + sigma^2 M M^H)^-1: E^-1 without noise, the MMSE shrink with it, and
    bounded for a singular E (a plain inverse would not be)."""
    rng = np.random.default_rng(10)
    e, m = crandn(rng, 4, 4), crandn(rng, 4, 4)
    np.testing.assert_allclose(baselines.unmixing(e, m, 0.0) @ e, np.eye(4), atol=1e-9)
    # scalar case: w = e* / (|e|^2 + s^2 |m|^2)
    w = baselines.unmixing(np.array([[2.0 + 0j]]), np.array([[1.0 + 0j]]), 0.5)
    assert w[0, 0] == pytest.approx(2.0 / 4.5)
    singular = e.copy()
    singular[3] = singular[2]
    w = baselines.unmixing(singular, m, 0.01)
    assert np.all(np.isfinite(w)) and np.linalg.norm(w) < 1e3
    # the MSE of the estimate is below that of the plain inverse at finite SNR
    z = crandn(rng, 4, 2000)  # whitened: E[z z^H] = I
    noise = 0.3 * (m @ crandn(rng, 4, 2000))  # sigma^2 = 0.09
    r = e @ z + noise
    lmmse = np.mean(np.abs(baselines.unmixing(e, m, 0.09) @ r - z) ** 2)
    inverse = np.mean(np.abs(np.linalg.solve(e, r) - z) ** 2)
    assert lmmse < inverse


def test_compact_step_equals_the_explicit_g_step_and_uplink():
    """The m-free compact round (G never formed) gives the explicit path's A_l, P_l X^H, loss
    terms and G to rounding; a singular M (noiseless, K N_R > c) is handed back (None)."""
    rng = np.random.default_rng(7)
    m, c, n, k_nr, k_nt = 40, 10, 150, 8, 8
    y, x = crandn(rng, m, n), crandn(rng, c, n)
    hbar, f = crandn(rng, k_nr, k_nt), crandn(rng, k_nt, c)
    r, b, hf = y @ x.conj().T, x @ x.conj().T, hbar @ f
    y_norm2 = float(np.real(np.vdot(y, y)))
    for sigma2 in (0.3, 1e-4):
        pp = admm.compact_products(r, hf, b, y_norm2, n)
        g = admm.g_step(y, None, sigma2, pp)
        sq, noise = admm.local_objective_terms(y, g, None, sigma2, pp)
        a, cross = admm.uplink_statistics(g, hbar, r)
        step = admm.compact_step(hf, hbar, b, r.conj().T @ r, y_norm2, n, sigma2)
        assert step is not None
        np.testing.assert_allclose(step.a, a, rtol=1e-9, atol=1e-9 * np.abs(a).max())
        np.testing.assert_allclose(step.cross, cross, rtol=1e-9, atol=1e-9 * np.abs(cross).max())
        np.testing.assert_allclose(step.equalizer(r), g, rtol=1e-9, atol=1e-9 * np.abs(g).max())
        assert step.squared_error == pytest.approx(sq, rel=1e-9)
        assert step.noise_term == pytest.approx(noise, rel=1e-9)
    thin = crandn(rng, k_nr, 3) @ crandn(rng, 3, c)  # H F of rank 3 < K N_R, no noise
    assert admm.compact_step(thin, hbar, b, r.conj().T @ r, y_norm2, n, 0.0) is None


def test_f_mean_is_the_average_of_the_local_f_steps():
    """F = mean of f_steps' F_l (eq. 8), the final V_B^H applied once to the mean."""
    rng = np.random.default_rng(3)
    c, n, k_nt = 9, 60, 4
    gram = admm.factor_gram(crandn(rng, c, n))
    uploads, duals = [], []
    for _ in range(3):
        g_h = crandn(rng, 7, k_nt)
        uploads.append((g_h.conj().T @ g_h, crandn(rng, k_nt, c)))
        duals.append((crandn(rng, k_nt, c), crandn(rng, k_nt, c)))
    mean = admm.average(admm.f_steps(uploads, duals, gram, 0.7))
    np.testing.assert_allclose(admm.f_mean(uploads, duals, gram, 0.7), mean, rtol=1e-12)
    with pytest.raises(admm.ShapeError):
        admm.f_mean([], [], gram, 0.7)
