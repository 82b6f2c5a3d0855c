"""Widely-linear F and G (``equalizer="widely-linear"``): the real-composite system.

The conventions are checked where they could go wrong: a strictly linear pair embedded in the
real-composite form keeps power, error and noise term; the whitening to variance 1/2; the two
round protocols agree; the transmit power stays within P_T; every matrix of such a session is
real on the wire and a complex one is refused; baselines and sweeps keep widely linear to the
ADMM strategies.
"""

from __future__ import annotations

import numpy as np
import pytest
from semalign.common import admm
from semalign.common.channels import block_channel, rayleigh_matrix
from semalign.common.config import AlignmentConfig
from semalign.common.errors import ProtocolError
from semalign.common.representation import LINEAR, Representation
from semalign.common.whitening import fit_whitener
from semalign.common.wire import parse_ap_message, parse_user_message, to_matrix
from semalign.proto import semalign_pb2 as pb
from test_speed import BASE, _assert_close, _iterates, _session, crandn

from semalign.experiments.grid import SweepGrid

WL = Representation(widely_linear=True)


def test_representation_of_names():
    assert Representation.of("linear") == LINEAR
    assert Representation.of("widely-linear") == WL
    assert WL.feature_dim(7) == 7 and LINEAR.feature_dim(7) == 4
    assert WL.symbol_rows(6) == 12 and LINEAR.symbol_rows(6) == 6


def test_symbols_round_trip_and_the_composite_channel_acts_as_the_complex_one():
    rng = np.random.default_rng(0)
    hbar, k = rayleigh_matrix(3, 2, rng), 2
    s = crandn(rng, k * 2, 9)
    rows = WL.from_symbols(s)
    assert rows.shape == (8, 9) and np.max(np.abs(rows.imag)) == 0
    np.testing.assert_allclose(WL.to_symbols(rows), s)
    received = admm.apply_block_channel(hbar, s)
    composite = WL.channel_matrix(block_channel(hbar, k))
    assert composite.shape == (12, 8)
    np.testing.assert_allclose(composite @ rows, WL.from_symbols(received), atol=1e-12)
    np.testing.assert_allclose(WL.apply_block_channel(hbar, rows), WL.from_symbols(received))


def test_an_embedded_linear_pair_keeps_power_error_and_noise_term():
    """F, G strictly linear, written in real-composite form: same E||s||^2 (through the power
    budget), same ||Y - G S||^2 and same n sigma^2 ||G||^2 (through the noise per real)."""
    rng = np.random.default_rng(1)
    c, m, k, nt, nr, n, sigma2 = 5, 4, 2, 2, 2, 50, 0.3
    x, y = crandn(rng, c, n), crandn(rng, m, n)
    f, g = crandn(rng, k * nt, c), crandn(rng, m, k * nr)
    h = block_channel(rayleigh_matrix(nr, nt, rng), k)
    s = h @ f @ x
    terms = admm.local_objective_terms(y, g, s, sigma2)
    f_r, g_r, h_r = WL.channel_matrix(f), WL.channel_matrix(g), WL.channel_matrix(h)
    s_r = h_r @ f_r @ WL.from_symbols(x)
    np.testing.assert_allclose(s_r, WL.from_symbols(s), atol=1e-12)
    terms_r = admm.local_objective_terms(WL.from_symbols(y), g_r, s_r, WL.noise_var(sigma2))
    np.testing.assert_allclose(terms_r, terms, rtol=1e-10)
    power = float(np.real(np.vdot(f, f)))
    assert float(np.real(np.vdot(f_r, f_r))) == pytest.approx(WL.power_budget(power))


def test_widely_linear_g_step_is_never_worse_and_wins_on_improper_targets():
    """The G-step optimum over real-linear maps is at most the complex one's objective, and
    below it when the target is a real-linear (not complex-linear) function of the symbols."""
    rng = np.random.default_rng(2)
    s = crandn(rng, 4, 400)
    y = s[:3] + 0.7 * np.conj(s[1:4])  # needs conj(s): widely linear
    sigma2 = 0.05
    g = admm.g_step(y, s, sigma2)
    linear = sum(admm.local_objective_terms(y, g, s, sigma2))
    y_r, s_r = WL.from_symbols(y), WL.from_symbols(s)
    g_r = admm.g_step(y_r, s_r, WL.noise_var(sigma2))
    assert np.max(np.abs(g_r.imag)) < 1e-10
    widely = sum(admm.local_objective_terms(y_r, g_r, s_r, WL.noise_var(sigma2)))
    assert widely < 0.5 * linear


def test_whitening_to_variance_one_half():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((6, 6)) @ rng.standard_normal((6, 500))).astype(np.complex128)
    whitener = WL.fit_whitener(x)
    z = whitener.whiten(x)
    cov = (z - z.mean(axis=1, keepdims=True)) @ z.conj().T / z.shape[1]
    np.testing.assert_allclose(cov, 0.5 * np.eye(6), atol=1e-9)
    np.testing.assert_allclose(whitener.dewhiten(z), x, atol=1e-9)
    assert np.max(np.abs(z.imag)) == 0
    with pytest.raises(ValueError, match="variance"):
        fit_whitener(x, variance=0.0)


WIDE = {**BASE, "equalizer": "widely-linear"}


@pytest.mark.parametrize(
    "case",
    [{"strategy": "fed"}, {"strategy": "multi-link"}, {"strategy": "fed", "csi": False}],
)
def test_widely_linear_compact_iterates_equal_paper(case):
    paper = AlignmentConfig(**{**WIDE, **case})
    compact = paper.model_copy(update={"protocol": "compact"})
    _assert_close(_iterates(compact), _iterates(paper), 1e-6)


def test_widely_linear_fits_real_linear_users_better_and_within_the_power_budget():
    """Users whose latents are real-linear maps of the AP's: the strictly linear F, G cannot
    represent such a map on packed features, the widely-linear ones can."""
    # a budget small enough to bind: the transmit power is then P_T itself
    linear = AlignmentConfig(**{**BASE, "iterations": 20, "snr_db": 30.0, "power": 0.2})
    widely = linear.model_copy(update={"equalizer": "widely-linear"})
    _, lin_records, _ = _iterates(linear)
    _, wl_records, (ap, _, _, _) = _iterates(widely)
    assert wl_records[-1].mse < 0.8 * lin_records[-1].mse
    z = ap.strategy.shared.z
    assert z.shape == (2 * 2 * 2, 16) and np.max(np.abs(z.imag)) < 1e-9
    symbols, _ = ap.encode(ap.pilot_latents)  # pilots: whitened covariance exactly I/2
    power = float(np.mean(np.sum(np.abs(symbols) ** 2, axis=0)))
    assert power == pytest.approx(linear.power, rel=1e-6)  # tr(Z Z^T) / 2 = P_T


def test_widely_linear_session_is_real_on_the_wire_and_refuses_complex_matrices():
    config = AlignmentConfig(**WIDE)
    ap, users, _ = _session(config)
    accepts = {}
    for user in users:
        uid, reply = ap.handshake(user.handshake_request())
        accepts[uid] = reply
        user.handle(reply)
    assert parse_ap_message(accepts["user1"]).accept.widely_linear
    messages = ap.round_messages()
    broadcast = parse_ap_message(messages["user1"]).broadcast
    k, nr, n = config.channel_uses, config.antennas_rx, ap.n
    assert broadcast.symbols.dtype == pb.FLOAT32
    assert tuple(broadcast.symbols.shape) == (2 * k * nr, n)
    upload = parse_user_message(users[0].handle(messages["user1"])).upload
    rows = 2 * k * config.antennas_tx
    assert upload.a.dtype == upload.p.dtype == pb.FLOAT32
    assert tuple(upload.a.shape) == (rows, rows) and tuple(upload.p.shape) == (rows, n)
    # a complex broadcast in a widely-linear session is refused, naming the dtype
    broadcast.symbols.CopyFrom(to_matrix(np.zeros((2 * k * nr, n)), "complex64"))
    broadcast.round = 1
    reply = users[1].handle(pb.ApMessage(broadcast=broadcast).SerializeToString())
    assert "dtype COMPLEX64" in parse_user_message(reply).error.message
    # and so is a complex upload at the AP
    upload.a.CopyFrom(to_matrix(np.eye(rows), "complex64"))
    with pytest.raises(ProtocolError, match="dtype COMPLEX64"):
        ap.strategy.receive_upload(ap.users["user1"], upload)


def test_widely_linear_needs_an_admm_strategy():
    with pytest.raises(ValueError, match="needs an ADMM strategy"):
        AlignmentConfig(strategy="top-k", equalizer="widely-linear")
    # a user refuses an accept that pairs a baseline with widely-linear equalizers
    config = AlignmentConfig(**{**BASE, "strategy": "first-k"})
    ap, users, _ = _session(config)
    _, reply = ap.handshake(users[0].handshake_request())
    msg = parse_ap_message(reply)
    msg.accept.widely_linear = True
    answer = users[0].handle(msg.SerializeToString())
    assert "widely-linear" in parse_user_message(answer).error.message


def test_sweep_crosses_widely_linear_with_the_admm_strategies_only():
    grid = SweepGrid(
        strategies=("fed", "multi-link", "first-k", "top-k"),
        channel_uses=(1,),
        seeds=(1,),
        equalizers=("linear", "widely-linear"),
    )
    cells = [(c.strategy, c.equalizer) for _, c in grid.configs()]
    assert sorted(cells) == sorted(
        [("fed", "linear"), ("multi-link", "linear"), ("first-k", "linear")]
        + [("top-k", "linear"), ("fed", "widely-linear"), ("multi-link", "widely-linear")]
    )
    with pytest.raises(ValueError, match="--equalizers widely-linear needs an ADMM"):
        SweepGrid(strategies=("first-k",), equalizers=("widely-linear",))
