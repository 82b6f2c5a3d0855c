"""`semalign simulate` end to end on small synthetic latents, and its bad-input errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from synthetic import make_latents

from semalign.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def latents(tmp_path):
    return make_latents(tmp_path / "lat")


def _args(root, ap, users, *extra):
    return [
        "simulate",
        "--latents",
        str(root),
        "--ap-encoder",
        ap,
        "--user-encoders",
        ",".join(users),
        "--antennas-tx",
        "2",
        "--antennas-rx",
        "2",
        "--channel-uses",
        "2",
        "--iterations",
        "4",
        "-q",
        *extra,
    ]


def test_simulate_end_to_end_writes_results(latents, tmp_path):
    root, ap, users = latents
    out = tmp_path / "res.json"
    assert main(_args(root, ap, users, "--seeds", "27,42", "--out", str(out))) == 0
    res = json.loads(out.read_text())
    for key in (
        "strategy",
        "config",
        "users",
        "mean_accuracy",
        "mean_native_accuracy",
        "mean_mse",
        "rounds",
        "seeds",
        "std_accuracy",
    ):
        assert key in res
    assert res["config"]["seeds"] == [27, 42] and res["config"]["channel_uses"] == 2
    assert [u["encoder"] for u in res["users"]] == users
    assert len(res["seeds"]) == 2 and len(res["rounds"]) == 4
    for row in res["rounds"]:
        assert set(row) >= {
            "round",
            "mse",
            "objective",
            "primal_residual",
            "dual_residual",
            "bytes_down",
            "bytes_up",
            "seconds",
        }
    # 2 users: down K N_R n complex64 each; up P_l, K N_T n complex64, and A_l Hermitian-packed,
    # (K N_T)^2 float32 reals, each; plus framing
    n = 400
    assert res["rounds"][0]["bytes_down"] >= 2 * 8 * 4 * n
    assert res["rounds"][0]["bytes_up"] >= 2 * (8 * 4 * n + 4 * 4 * 4)
    assert res["rounds"][0]["bytes_down"] < 1.01 * 2 * 8 * 4 * n + 400
    assert 0.5 < res["mean_accuracy"] <= 1.0  # well above chance (0.25) on separable data
    seeds = [b["mean_accuracy"] for b in res["seeds"]]
    assert res["std_accuracy"] == pytest.approx(float(np.std(seeds)))


@pytest.mark.parametrize("strategy", ["multi-link", "first-k", "top-k"])
def test_simulate_other_strategies(latents, tmp_path, strategy):
    root, ap, users = latents
    out = tmp_path / "res.json"
    assert (
        main(_args(root, ap, users, "--strategy", strategy, "--seeds", "1", "--out", str(out))) == 0
    )
    res = json.loads(out.read_text())
    assert res["strategy"] == strategy and res["mean_accuracy"] > 0.3
    if strategy in ("first-k", "top-k"):
        assert res["seeds"][0]["baseline"]["fit"] == "received"


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_unknown_encoder_folder(latents, capsys):
    root, ap, users = latents
    assert main(_args(root, ap, ["user_enc9"])) == 2
    line = _error_line(capsys)
    assert "user_enc9" in line and "did you mean" in line


def test_mismatched_row_counts(latents, capsys):
    root, ap, users = latents
    path = root / users[0] / "train.npz"
    with np.load(path) as data:
        np.savez(path, latents=data["latents"][:-3], labels=data["labels"][:-3])
    assert main(_args(root, ap, users)) == 2
    assert "rows" in _error_line(capsys)


def test_non_finite_latents(latents, capsys):
    root, ap, users = latents
    path = root / users[1] / "test.npz"
    with np.load(path) as data:
        lat = data["latents"].copy()
        labels = data["labels"]
    lat[3, 2] = np.inf
    np.savez(path, latents=lat, labels=labels)
    assert main(_args(root, ap, users)) == 2
    assert "non-finite" in _error_line(capsys)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--channel-uses", "40"], "compression factor"),
        (["--snr-db", "500"], "--snr-db"),
        (["--channel-uses", "0"], "--channel-uses"),
        (["--pilot-fraction", "1.5"], "--pilot-fraction"),
        (["--seeds", "a,b"], "--seeds"),
    ],
)
def test_out_of_range_parameters(latents, capsys, extra, needle):
    root, ap, users = latents
    assert main(_args(root, ap, users, *extra)) == 2
    assert needle in _error_line(capsys)


def test_console_script_help_and_exit_code(latents):
    root, ap, users = latents
    exe = Path(sys.executable).parent / "semalign"
    help_out = subprocess.run([exe, "simulate", "--help"], capture_output=True, text=True)
    assert help_out.returncode == 0 and "--channel-uses" in help_out.stdout
    bad = subprocess.run([exe, *_args(root, ap, ["nope"])], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_generated_proto_code_is_up_to_date():
    res = subprocess.run(
        [sys.executable, str(ROOT / "proto" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
