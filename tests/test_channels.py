"""Channel models (semalign.common.channels): statistics that could fail, bit-exact defaults,
validation. Monte Carlo tests use 20,000 seeded draws; tolerances are >= 5 standard errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pydantic import BaseModel, ValidationError
from semalign.common.channels import (
    ChannelConfig,
    ChannelModel,
    ChannelRealization,
    CsiError,
    Kronecker,
    Rayleigh,
    Rician,
    channel_from_config,
    exponential_correlation,
    fading_from_config,
    k_factor_from_db,
    path_loss_snr_db,
    user_snrs_db,
)

DRAWS = 20_000


def todays_rayleigh(nr: int, nt: int, rng: np.random.Generator) -> np.ndarray:
    """The pre-interface draw (``rayleigh_matrix``), written out."""
    shape = (nr, nt)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / np.sqrt(2)


def vec(h: np.ndarray) -> np.ndarray:
    """Column-stacking vec of a batch (..., N_R, N_T) -> (..., N_R N_T)."""
    return np.swapaxes(h, -1, -2).reshape(*h.shape[:-2], -1)


def sample_cov(v: np.ndarray) -> np.ndarray:
    """E[v v^H] from rows of v (n, d), zero mean assumed."""
    return v.T @ v.conj() / len(v)


# ---------------------------------------------------------------------- (f) bit-exact default
@pytest.mark.parametrize("shape", [(4, 4), (2, 8), (1, 1), (3, 5)])
@pytest.mark.parametrize("seed", [0, 42, (42, 0), (27, 3)])
def test_default_draw_equals_todays_formula_bit_for_bit(shape, seed):
    nr, nt = shape
    expected = todays_rayleigh(nr, nt, np.random.default_rng(seed))
    draws = [
        ChannelModel().draw(nr, nt, np.random.default_rng(seed)),
        channel_from_config("rayleigh").draw(nr, nt, np.random.default_rng(seed)),
        ChannelConfig().user_model(0, 3, 20.0).draw(nr, nt, np.random.default_rng(seed)),
    ]
    for real in draws:
        assert real.hbar.dtype == np.complex128 and real.hbar.shape == (nr, nt)
        np.testing.assert_array_equal(real.hbar, expected)
        assert real.estimate is real.hbar and real.perfect_csi
        assert real.snr_db == 20.0
    # degenerate parameters of the other models draw the same numbers too
    for fading in (Kronecker(0.0, 0.0), Rician(k_factor=0.0)):
        np.testing.assert_array_equal(fading.sample(nr, nt, np.random.default_rng(seed)), expected)


def test_default_leaves_the_generator_where_today_does():
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    ChannelModel().draw(4, 4, a)
    todays_rayleigh(4, 4, b)
    assert a.standard_normal() == b.standard_normal()


def test_kronecker_keeps_the_same_g_for_the_same_seed():
    """Common random numbers: correlation is a fixed transform of today's draw."""
    g = todays_rayleigh(3, 4, np.random.default_rng(5))
    model = Kronecker(rho_tx=0.6, rho_rx=0.3)
    h = model.sample(3, 4, np.random.default_rng(5))
    r_rx, r_tx = exponential_correlation(3, 0.3), exponential_correlation(4, 0.6)
    w, v = np.linalg.eigh(r_rx)
    sqrt_rx = v @ np.diag(np.sqrt(w)) @ v.T
    w, v = np.linalg.eigh(r_tx)
    sqrt_tx = v @ np.diag(np.sqrt(w)) @ v.T
    np.testing.assert_allclose(h, sqrt_rx @ g @ sqrt_tx, atol=1e-12)
    np.testing.assert_allclose(sqrt_tx @ sqrt_tx, r_tx, atol=1e-12)


# ---------------------------------------------------------------------- (a) Rayleigh
def test_rayleigh_unit_power_uncorrelated_circular():
    h = Rayleigh().sample(4, 3, np.random.default_rng(1), size=(DRAWS,))
    assert h.shape == (DRAWS, 4, 3)
    power = np.mean(np.abs(h) ** 2, axis=0)  # per entry; std err 1/sqrt(DRAWS) = 0.007
    np.testing.assert_allclose(power, 1.0, atol=0.04)
    cov = sample_cov(vec(h))
    off = cov - np.diag(np.diag(cov))
    assert np.max(np.abs(off)) < 0.04
    pseudo = vec(h).T @ vec(h) / DRAWS  # E[h h^T] = 0 for circular CN
    assert np.max(np.abs(pseudo)) < 0.04
    np.testing.assert_allclose(np.mean(h.real**2), 0.5, atol=0.01)


# ---------------------------------------------------------------------- (b) Kronecker
def test_exponential_correlation_matrix():
    r = exponential_correlation(4, 0.5)
    np.testing.assert_allclose(r[0], [1, 0.5, 0.25, 0.125])
    np.testing.assert_array_equal(r, r.T)
    np.testing.assert_array_equal(exponential_correlation(3, 0.0), np.eye(3))


def test_kronecker_covariance_is_rtx_transpose_kron_rrx():
    nr, nt = 3, 4
    model = Kronecker(rho_tx=0.7, rho_rx=0.4)
    h = model.sample(nr, nt, np.random.default_rng(2), size=(DRAWS,))
    cov = sample_cov(vec(h))
    expected = np.kron(exponential_correlation(nt, 0.7).T, exponential_correlation(nr, 0.4))
    np.testing.assert_allclose(model.covariance(nr, nt), expected)
    assert np.max(np.abs(cov - expected)) < 0.05
    # the test discriminates: the swapped convention is far off
    swapped = np.kron(exponential_correlation(nr, 0.4), exponential_correlation(nt, 0.7))
    assert np.max(np.abs(cov - swapped)) > 0.3
    np.testing.assert_allclose(np.diag(cov).real, 1.0, atol=0.05)


# ---------------------------------------------------------------------- (c) Rician
@pytest.mark.parametrize("k_factor", [3.0, 0.5])
def test_rician_k_factor_and_power_from_samples(k_factor):
    nr, nt = 2, 4
    model = Rician(k_factor=k_factor, aod_deg=20.0, aoa_deg=-35.0)
    h = model.sample(nr, nt, np.random.default_rng(3), size=(DRAWS,))
    mean = h.mean(axis=0)  # the LOS part sqrt(K/(K+1)) H_LOS
    scattered = np.mean(np.abs(h - mean) ** 2, axis=0)  # 1/(K+1)
    pooled = np.mean(np.abs(mean) ** 2) / np.mean(scattered)  # std err about 0.5%
    assert pooled == pytest.approx(k_factor, rel=0.025)
    np.testing.assert_allclose(np.abs(mean) ** 2 / scattered, k_factor, rtol=0.1)  # per entry
    np.testing.assert_allclose(np.mean(np.abs(h) ** 2, axis=0), 1.0, atol=0.04)
    los = model.los(nr, nt, 20.0, -35.0)
    np.testing.assert_allclose(np.abs(los), 1.0)
    np.testing.assert_allclose(mean, math.sqrt(k_factor / (k_factor + 1)) * los, atol=0.03)


def test_rician_random_angles_keep_unit_power_and_differ_per_seed():
    model = Rician(k_factor=10.0)
    h = model.sample(4, 4, np.random.default_rng(4), size=(DRAWS,))
    np.testing.assert_allclose(np.mean(np.abs(h) ** 2, axis=0), 1.0, atol=0.04)
    a = model.sample(4, 4, np.random.default_rng((1, 0)))
    b = model.sample(4, 4, np.random.default_rng((1, 1)))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, model.sample(4, 4, np.random.default_rng((1, 0))))


def test_k_factor_from_db():
    assert k_factor_from_db(10.0) == pytest.approx(10.0)
    assert k_factor_from_db(0.0) == 1.0
    assert k_factor_from_db(10 * math.log10(3)) == pytest.approx(3.0)


# ---------------------------------------------------------------------- (d) CSI
def test_csi_error_variance_from_samples():
    sigma2 = 0.2
    rng = np.random.default_rng(5)
    truth = Rayleigh().sample(4, 4, rng, size=(DRAWS,))
    estimate = CsiError(sigma2).estimate(truth, rng)
    error = estimate - truth
    np.testing.assert_allclose(np.mean(np.abs(error) ** 2, axis=0), sigma2, rtol=0.05)
    assert np.max(np.abs(np.mean(error * truth.conj(), axis=0))) < 0.02  # independent of truth
    np.testing.assert_allclose(np.mean(np.abs(estimate) ** 2), 1 + sigma2, rtol=0.01)


def test_csi_in_a_drawn_realization():
    link = channel_from_config("kronecker", rho_tx=0.5, csi_error_variance=0.1, snr_db=5.0)
    errors = []
    rng = np.random.default_rng(6)
    for _ in range(2000):
        real = link.draw(2, 2, rng)
        assert not real.perfect_csi and real.snr_db == 5.0
        errors.append(real.csi_error)
    np.testing.assert_allclose(np.mean(np.abs(np.array(errors)) ** 2), 0.1, rtol=0.05)
    # truth first, from the same seed as without CSI error
    same_seed = channel_from_config("kronecker", rho_tx=0.5).draw(2, 2, np.random.default_rng(9))
    noisy = link.draw(2, 2, np.random.default_rng(9))
    np.testing.assert_array_equal(noisy.hbar, same_seed.hbar)


def test_perfect_csi_draws_nothing_and_arrays_are_read_only():
    rng = np.random.default_rng(0)
    hbar = Rayleigh().sample(2, 2, rng)
    state = rng.bit_generator.state
    assert CsiError(0.0).estimate(hbar, rng) is hbar
    assert rng.bit_generator.state == state
    real = ChannelModel().draw(2, 2, rng)
    with pytest.raises(ValueError):
        real.hbar[0, 0] = 0
    with pytest.raises(ValueError, match="shape"):
        ChannelRealization(np.zeros((2, 2), complex), np.zeros((2, 3), complex), 10.0)


# ---------------------------------------------------------------------- (e) SNR / path loss
def test_path_loss_costs_10n_db_per_decade():
    for n in (2.0, 3.5):
        snrs = path_loss_snr_db([1.0, 10.0, 100.0, 1000.0], snr_ref_db=30.0, exponent=n)
        assert snrs[0] == 30.0
        np.testing.assert_allclose(np.diff(snrs), -10 * n)
    # reference distance: SNR_ref holds at d_ref
    assert path_loss_snr_db([50.0], 12.0, reference_distance=50.0)[0] == 12.0
    assert path_loss_snr_db([100.0], 12.0, reference_distance=10.0, exponent=2.0)[0] == -8.0
    snrs = path_loss_snr_db(np.geomspace(1, 500, 9), 40.0)
    assert np.all(np.diff(snrs) < 0)


def test_user_snrs_sources_and_length_check():
    assert user_snrs_db(3, 20.0) == (20.0, 20.0, 20.0)
    assert user_snrs_db(2, 20.0, snr_db=[5, 15]) == (5.0, 15.0)
    assert user_snrs_db(2, 20.0, distances=[1, 10], exponent=2) == (20.0, 0.0)
    with pytest.raises(ValueError, match="user_snr_db has 2 entries for 3 users"):
        user_snrs_db(3, 20.0, snr_db=[5, 15])
    with pytest.raises(ValueError, match="distances has 1 entries for 2 users"):
        user_snrs_db(2, 20.0, distances=[3.0])
    with pytest.raises(ValueError, match="outside"):
        user_snrs_db(1, 20.0, distances=[1e6], exponent=4)  # -220 dB
    cfg = ChannelConfig(distances=(1, 10, 100), snr_ref_db=30, path_loss_exponent=2.5)
    assert cfg.user_snrs(3, 0.0) == (30.0, 5.0, -20.0)
    models = cfg.user_models(3, 0.0)
    assert [m.snr_db for m in models] == [30.0, 5.0, -20.0]
    assert cfg.user_model(1, 3, 0.0).draw(2, 2, np.random.default_rng(0)).snr_db == 5.0
    with pytest.raises(ValueError, match="3 entries for 4 users"):
        cfg.user_snrs(4, 0.0)
    # SNR_ref defaults to the session's SNR
    assert ChannelConfig(distances=(1, 10)).user_snrs(2, 25.0) == (25.0, -5.0)


# ---------------------------------------------------------------------- config & registry
def test_config_builds_the_right_models():
    assert ChannelConfig().fading() == Rayleigh()
    assert ChannelConfig(model="kronecker", rho_rx=0.3).fading() == Kronecker(0.0, 0.3)
    cfg = ChannelConfig(model="rician", k_factor=2.0, aod_deg=10.0)
    assert cfg.fading() == Rician(2.0, 10.0, None)
    assert ChannelConfig(csi_error_variance=0.3).csi() == CsiError(0.3)
    assert fading_from_config("kronecker", rho_tx=0.2) == Kronecker(rho_tx=0.2)


def test_config_is_hashable_json_and_nests_as_a_field():
    cfg = ChannelConfig(model="kronecker", rho_tx=0.5, rho_rx=0.2, user_snr_db=[10, 20])
    assert hash(cfg) == hash(ChannelConfig.model_validate_json(cfg.model_dump_json()))
    assert ChannelConfig.model_validate(json.loads(json.dumps(cfg.model_dump()))) == cfg
    assert cfg.user_snr_db == (10.0, 20.0)
    assert len({cfg, ChannelConfig(), ChannelConfig()}) == 2
    assert ChannelConfig().is_default and not cfg.is_default
    assert cfg.describe() == "kronecker(rho_tx=0.5,rho_rx=0.2) snr=[10,20]dB"
    with pytest.raises(ValidationError):
        cfg.rho_tx = 0.1  # frozen

    class Session(BaseModel):
        snr_db: float = 20.0
        channel: ChannelConfig = ChannelConfig()

    s = Session.model_validate_json('{"channel": {"model": "rician", "k_factor": 4}}')
    assert s.channel.fading() == Rician(k_factor=4.0)
    assert Session.model_validate_json(s.model_dump_json()) == s
    assert Session().channel.is_default


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"model": "kronecker", "rho_tx": 1.0}, "rho_tx"),
        ({"model": "kronecker", "rho_rx": -0.1}, "rho_rx"),
        ({"model": "kronecker"}, "needs rho_tx and/or rho_rx"),
        ({"model": "rician", "k_factor": -1.0}, "k_factor"),
        ({"model": "rician"}, "needs k_factor"),
        ({"model": "rician", "k_factor": 1, "aod_deg": 91}, "aod_deg"),
        ({"rho_tx": 0.5}, "rho_tx applies to model 'kronecker' only"),
        ({"model": "kronecker", "rho_tx": 0.5, "k_factor": 2}, "k_factor applies to model"),
        ({"csi_error_variance": -0.1}, "csi_error_variance"),
        ({"csi_error_variance": 10.5}, "csi_error_variance"),
        ({"csi_error_variance": float("nan")}, "csi_error_variance"),
        ({"distances": [10.0, 0.0]}, "distances"),
        ({"distances": []}, "distances"),
        ({"user_snr_db": [10.0, 200.0]}, "user_snr_db"),
        ({"user_snr_db": [10.0], "distances": [5.0]}, "not both"),
        ({"path_loss_exponent": 2.0}, "give distances"),
        ({"model": "nakagami"}, "model"),
        ({"rho": 0.5}, "rho"),
    ],
)
def test_config_rejects_bad_parameters(params, message):
    with pytest.raises(ValidationError, match=message):
        ChannelConfig(**params)


def test_direct_constructors_reject_bad_parameters():
    with pytest.raises(ValueError, match=r"rho_tx must be in \[0, 1\)"):
        Kronecker(rho_tx=1.0)
    with pytest.raises(ValueError, match="k_factor"):
        Rician(k_factor=-2.0)
    with pytest.raises(ValueError, match="csi_error_variance"):
        CsiError(11.0)
    with pytest.raises(ValueError, match="snr_db"):
        ChannelModel(snr_db=float("inf"))
    with pytest.raises(ValueError, match="unknown channel model 'foo'; choose one of rayleigh"):
        channel_from_config("foo")
    with pytest.raises(ValueError, match="'kronecker' takes rho_tx, rho_rx; got k_factor"):
        channel_from_config("kronecker", k_factor=1.0)
    with pytest.raises(ValueError, match="'rayleigh' takes no parameters"):
        channel_from_config("rayleigh", rho_tx=0.1)
    with pytest.raises(ValueError, match="antennas_rx must be a positive integer"):
        ChannelModel().draw(0, 4, np.random.default_rng(0))
    with pytest.raises(ValueError, match="reference_distance"):
        path_loss_snr_db([1.0], 10.0, reference_distance=0.0)
