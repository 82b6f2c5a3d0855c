"""The channel models of ``common/channels`` wired into sessions, the CLI and the sweep.

Truth and estimate: the true Hbar acts on transmitted symbols, the CSI estimate is what the user
reports and designs with. Per-user SNR reaches each user and the AP. Default sessions are
unchanged (tests/test_core_regression.py, tests/test_sweep.py pin their numbers and keys).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from semalign.client.stream import user_factory
from semalign.client.user import user_data_from_cache
from semalign.common.channels import ChannelConfig, noise_variance, path_loss_snr_db
from semalign.common.config import AlignmentConfig
from semalign.common.contract import SessionOffer
from semalign.common.errors import SweepError
from semalign.common.wire import from_matrix, parse_user_message
from semalign.server.strategies.top_k import index_snr_db
from synthetic import make_latents

from semalign.cli import main
from semalign.engine.scenario import build_session, load_scenario
from semalign.engine.simulate import simulate
from semalign.experiments import plan as sweep_plan
from semalign.experiments.grid import grid_from_options
from semalign.experiments.plan import make_plan
from semalign.experiments.runner import run_sweep
from semalign.experiments.table import COLUMNS, V1_COLUMNS, read_table

SMALL = {"antennas_tx": 2, "antennas_rx": 2, "channel_uses": 2, "iterations": 3}


@pytest.fixture(scope="module")
def latents() -> tuple[Path, str, list[str]]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        yield make_latents(Path(tmp), n_train=200, n_test=120)


def _simulate_cli(latents, tmp_path: Path, *extra: str) -> tuple[int, dict]:
    root, ap, users = latents
    out = tmp_path / "r.json"
    argv = ["simulate", "--latents", str(root), "--ap", ap, "--users", ",".join(users)]
    argv += ["--antennas-tx", "2", "--antennas-rx", "2", "--channel-uses", "2"]
    argv += ["--iterations", "3", "--seeds", "1,2", "-q", "--out", str(out), *extra]
    rc = main(argv)
    return rc, json.loads(out.read_text()) if out.exists() else {}


# ---------------------------------------------------------------------------- end to end
@pytest.mark.parametrize(
    ("options", "channel"),
    [
        ([], None),
        (
            ["--channel-model", "kronecker", "--rho-tx", "0.5", "--rho-rx", "0.9"],
            {"model": "kronecker", "rho_tx": 0.5, "rho_rx": 0.9},
        ),
        (["--channel-model", "rician", "--k-factor", "4"], {"model": "rician", "k_factor": 4.0}),
        (
            ["--csi-error", "0.2", "--user-snr-db", "5,25"],
            {"csi_error_variance": 0.2, "user_snr_db": [5.0, 25.0]},
        ),
        (
            ["--distances", "10,50", "--snr-ref-db", "30", "--path-loss-exponent", "2.5"],
            {"distances": [10.0, 50.0], "snr_ref_db": 30.0, "path_loss_exponent": 2.5},
        ),
    ],
)
def test_simulate_runs_with_each_channel_model(latents, tmp_path, options, channel):
    rc, results = _simulate_cli(latents, tmp_path, *options)
    assert rc == 0
    if channel is None:  # the default channel: result files look as they always did
        assert "channel" not in results["config"]
    else:
        got = results["config"]["channel"]
        assert {k: got[k] for k in channel} == channel
    assert len(results["users"]) == 2
    assert all(0.0 <= u["accuracy"] <= 1.0 for u in results["users"])


def test_bad_channel_options_fail_with_one_line(latents, tmp_path, capsys):
    for bad, message in (
        (["--tx-correlation", "0.5"], "--tx-correlation applies to model 'kronecker' only"),
        (["--rho-tx", "0.5"], "--tx-correlation applies to model 'kronecker' only"),  # old name
        (["--channel-model", "kronecker"], "needs --tx-correlation and/or --rx-correlation"),
        (["--channel-model", "kronecker", "--tx-correlation", "1.5"], "--tx-correlation"),
        (["--user-snr-db", "10"], "--user-snr-db has 1 entries for 2 users"),
        (["--csi-error", "-1"], "--csi-error:"),
        (["--user-snr-db", "5,25", "--distances", "1,2"], "not both"),
    ):
        capsys.readouterr()
        rc, _ = _simulate_cli(latents, tmp_path, *bad)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and message in err[0], (bad, err)


def _mean_accuracy(latents, strategy: str, error: float, **extra) -> float:
    """Mean accuracy over users and six seeds, with CSI error variance ``error``."""
    root, ap, users = latents
    scenario = load_scenario(root, ap, users)
    channel = ChannelConfig(csi_error_variance=error)
    config = AlignmentConfig(strategy=strategy, **{**SMALL, "iterations": 5, **extra})
    run = simulate(scenario, config.model_copy(update={"channel": channel}), range(1, 7))
    return run.mean_accuracy


@pytest.mark.parametrize(
    ("strategy", "extra"), [("fed", {}), ("first-k", {"baseline_fit": "full"})]
)
def test_csi_error_lowers_accuracy_on_average(latents, strategy, extra):
    perfect = _mean_accuracy(latents, strategy, 0.0, **extra)
    noisy = _mean_accuracy(latents, strategy, 0.3, **extra)
    assert noisy < perfect - 0.02, (perfect, noisy)


# ---------------------------------------------------------------------------- truth, estimate
def _session(latents, channel: ChannelConfig, **extra):
    root, ap, users = latents
    scenario = load_scenario(root, ap, users)
    config = AlignmentConfig(**{**SMALL, **extra}, channel=channel, seed=3)
    return build_session(scenario, config)


def test_users_design_with_the_estimate_and_transmit_through_the_truth(latents):
    ap, users = _session(latents, ChannelConfig(csi_error_variance=0.3))
    for user in users:
        assert not np.allclose(user.hbar, user.hbar_estimate)
        request = parse_user_message(user.handshake_request()).handshake
        np.testing.assert_array_equal(from_matrix(request.csi), user.hbar_estimate)
        user.handle(ap.handshake(user.handshake_request())[1])
        np.testing.assert_array_equal(ap.users[user.user_id].hbar, user.hbar_estimate)
        assert user.channel.hbar is user.hbar  # the truth acts on the symbols
        assert user.design_channel.hbar is user.hbar_estimate
    # the same truth as with perfect CSI (the error is drawn after Hbar)
    _, perfect = _session(latents, ChannelConfig())
    for noisy, exact in zip(users, perfect, strict=True):
        np.testing.assert_array_equal(noisy.hbar, exact.hbar)
        assert exact.hbar_estimate is exact.hbar


def test_kronecker_and_rician_draw_other_channels_than_rayleigh(latents):
    _, rayleigh = _session(latents, ChannelConfig())
    _, kron = _session(latents, ChannelConfig(model="kronecker", rho_tx=0.9, rho_rx=0.9))
    _, rice = _session(latents, ChannelConfig(model="rician", k_factor=10.0))
    for a, b, c in zip(rayleigh, kron, rice, strict=True):
        assert not np.allclose(a.hbar, b.hbar) and not np.allclose(a.hbar, c.hbar)


# ---------------------------------------------------------------------------- per-user SNR
@pytest.mark.parametrize(
    ("channel", "expected"),
    [
        (ChannelConfig(user_snr_db=(5.0, 25.0)), (5.0, 25.0)),
        (ChannelConfig(distances=(10.0, 40.0)), tuple(path_loss_snr_db((10.0, 40.0), 20.0))),
        (ChannelConfig(), (20.0, 20.0)),
    ],
)
def test_per_user_snr_reaches_each_user_and_the_ap(latents, channel, expected):
    ap, users = _session(latents, channel, power=2.0)
    for user, snr in zip(users, expected, strict=True):
        assert user.snr_db == pytest.approx(snr)
        user.handle(ap.handshake(user.handshake_request())[1])
        state = ap.users[user.user_id]
        assert state.snr_db == pytest.approx(snr)
        sigma2 = noise_variance(snr, 2.0, SMALL["channel_uses"])
        assert user.accept.noise_var == pytest.approx(sigma2)
        assert user.channel.noise_var == pytest.approx(sigma2)


def test_top_k_charges_its_indices_at_the_worst_users_snr():
    config = AlignmentConfig(strategy="top-k", snr_db=20.0)
    assert index_snr_db(config) == 20.0
    listed = config.model_copy(update={"channel": ChannelConfig(user_snr_db=(15.0, 3.0))})
    assert index_snr_db(listed) == 3.0


# ---------------------------------------------------------------------------- networked users
def test_networked_user_gets_its_ordinal_and_the_user_count_from_the_offer(latents):
    root, _, users = latents
    channel = ChannelConfig(
        model="kronecker", rho_tx=0.5, csi_error_variance=0.1, user_snr_db=(7, 9)
    )
    config = AlignmentConfig(**SMALL, channel=channel)
    offer = SessionOffer.from_header(SessionOffer("s", 0, 1, config, users=2).to_header())
    assert offer.users == 2 and offer.config.channel == channel

    def make(ordinal: int, **overrides):
        enc = users[ordinal]
        load = lambda pf, enc=enc: user_data_from_cache(root, enc, pf)  # noqa: E731
        return user_factory(f"user{ordinal + 1}", enc, ordinal, load, **overrides)(offer)

    _, simulated = build_session(load_scenario(root, "ap_enc", users), config)
    for ordinal in (0, 1):
        user = make(ordinal)
        assert user.snr_db == (7.0, 9.0)[ordinal] == simulated[ordinal].snr_db
        np.testing.assert_array_equal(user.hbar, simulated[ordinal].hbar)
        np.testing.assert_array_equal(user.hbar_estimate, simulated[ordinal].hbar_estimate)
    # a deployment's own --snr-db replaces the offered per-user SNRs
    assert make(1, snr_db=12.0).snr_db == 12.0
    # without a user count (an older AP) the list's length is used
    old = SessionOffer("s", 0, 1, config)
    assert json.loads(old.to_header()).get("users") is None
    user = user_factory("user2", users[1], 1, lambda pf: user_data_from_cache(root, users[1], pf))
    assert user(old).snr_db == 9.0


# ---------------------------------------------------------------------------- sweep axes
def test_grid_channel_axes():
    grid = grid_from_options(
        None,
        {
            "channel_models": ("rayleigh", "kronecker"),
            "correlations": (0.0, 0.5),
            "csi_errors": (0.0, 0.1),
            "strategies": ("fed",),
            "channel_uses": (1,),
        },
    )
    channels = grid.channels()
    assert len(channels) == 6 and channels[0].is_default
    assert [c.describe() for c in channels[2:4]] == [
        "kronecker(rho_tx=0,rho_rx=0)",
        "kronecker(rho_tx=0,rho_rx=0) csi_err=0.1",
    ]
    assert grid.cells_per_seed == 6 and len(list(grid.configs())) == 6
    for fields, message in (
        ({"channel_models": ("kronecker",)}, "--channel-models kronecker needs --correlations"),
        ({"correlations": (0.5,)}, "--correlations applies to --channel-models kronecker"),
        ({"channel_models": ("rician",), "k_factors": (-1.0,)}, "--k-factors"),
        ({"channel_models": ("kronecker",), "correlations": (1.0,)}, "--correlations"),
        ({"csi_errors": (-0.1,)}, "--csi-errors"),
        ({"channel_models": ("nakagami",)}, "--channel-models"),
    ):
        with pytest.raises(SweepError, match=message):
            grid_from_options(None, fields)


def test_sweep_over_channels_writes_the_channel_column_and_old_tables_resume(latents, tmp_path):
    root, ap, users = latents
    fields = {
        "strategies": ("fed",),
        "channel_uses": (1,),
        "antennas": ("2x2",),
        "seeds": (1,),
        "groups": ("+".join(users),),
        "iterations": 2,
        "ap": ap,
    }
    grid = grid_from_options(None, {**fields, "csi_errors": (0.0, 0.3)})
    groups, _ = sweep_plan.resolve_groups(grid.groups, latents_given=True)
    plan = make_plan(grid, root, groups)
    assert plan.cells == 2
    default_key = make_plan(grid_from_options(None, fields), root, groups).runs[0].cell_key
    assert default_key in {r.cell_key for r in plan.runs}  # the default cell keeps its key
    table = tmp_path / "t.csv"
    assert run_sweep(plan, table, workers=1).done == 2
    rows = read_table(table).rows
    assert {r["channel"] for r in rows} == {"rayleigh", "rayleigh csi_err=0.3"}
    # A table written before the channel column: read as rayleigh, upgraded, resumed.
    with open(table, newline="") as fh:  # schema 1: no channel, no provenance, no CSI error
        kept = [r for r in csv.DictReader(fh) if "csi_err" not in r["channel"]]
    with open(table, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(V1_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(kept)
    contents = read_table(table)
    assert contents.legacy and {r["channel"] for r in contents.rows} == {"rayleigh"}
    summary = run_sweep(plan, table, workers=1)
    assert (summary.done, summary.already_done) == (1, 1)
    assert table.read_text().splitlines()[0].split(",") == list(COLUMNS)
    assert len(read_table(table).complete) == 2


def test_sweep_command_channel_options(latents, tmp_path, capsys):
    root, ap, users = latents
    base = ["sweep", "--latents", str(root), "--ap", ap, "--groups", "+".join(users)]
    base += ["--strategies", "fed", "--channel-uses", "1", "--antennas", "2x2", "--seeds", "1"]
    base += ["--iterations", "2", "--workers", "1", "--table", str(tmp_path / "t.csv"), "-q"]
    options = ["--channel-models", "kronecker", "--correlations", "0,0.9", "--csi-errors", "0,0.1"]
    assert main([*base, *options]) == 0
    channels = {r["channel"] for r in read_table(tmp_path / "t.csv").rows}
    assert len(channels) == 4 and "kronecker(rho_tx=0.9,rho_rx=0.9) csi_err=0.1" in channels
    capsys.readouterr()
    assert main([*base, "--channel-models", "kronecker"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs --correlations" in err[0], err
