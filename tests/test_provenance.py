"""Issue 23 (5): every results file says where and with what it was made.

``semalign simulate`` (and ``run``, ``ap``: tests/test_network_e2e.py) write the one provenance
block of :func:`semalign.experiments.provenance.provenance_block` as ``provenance``; a sweep's
rows carry it; run.json's figure sources moved from ``provenance`` to ``measured_by``; each
user's resolved SNR is recorded and printed.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from semalign.common.channels import path_loss_snr_db
from semalign.common.records import Provenance, RunResult, measured_by_of, provenance_of
from synthetic import make_latents

import semalign
from semalign.cli import main
from semalign.experiments import provenance
from semalign.experiments.grid import grid_from_options
from semalign.experiments.plan import latents_fingerprint, make_plan, resolve_groups
from semalign.experiments.runner import run_sweep

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--antennas-tx", "2", "--antennas-rx", "2", "--channel-uses", "2", "--iterations", "2"]
BLOCK_KEYS = [
    "semalign_version",
    "git_commit",
    "git_dirty",
    "started_at",
    "host",
    "command_line",
    "latents_id",
    "python",
    "libraries",
]


@pytest.fixture(scope="module")
def latents(tmp_path_factory) -> tuple[Path, str, list[str]]:
    return make_latents(tmp_path_factory.mktemp("lat"), n_train=160, n_test=60)


def simulate(latents, out: Path, monkeypatch, *extra: str) -> tuple[int, dict]:
    """``semalign simulate`` in this process, with ``sys.argv`` as the console script sets it."""
    root, ap, users = latents
    argv = [
        "simulate",
        "--latents",
        str(root),
        "--ap-encoder",
        ap,
        "--user-encoders",
        ",".join(users),
        *SMALL,
    ]
    argv += ["--seeds", "3", "--out", str(out), *extra]
    monkeypatch.setattr(sys, "argv", ["semalign", *argv])
    rc = main(argv)
    return rc, json.loads(out.read_text()) if out.exists() else {}


def _git_head() -> str | None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return None
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True)
    return done.stdout.decode().strip() if done.returncode == 0 else None


def test_simulate_results_carry_the_provenance_block(latents, tmp_path, monkeypatch):
    before = datetime.now(timezone.utc).replace(microsecond=0)
    rc, results = simulate(latents, tmp_path / "r.json", monkeypatch, "-q")
    after = datetime.now(timezone.utc)
    assert rc == 0
    block = results["provenance"]
    assert list(block) == BLOCK_KEYS
    assert block["semalign_version"] == semalign.__version__
    assert block["host"] == socket.gethostname()
    started = datetime.fromisoformat(block["started_at"])
    assert started.utcoffset() == timedelta(0) and before <= started <= after
    assert block["command_line"] == sys.argv  # (set by simulate() above)
    assert block["command_line"][:2] == ["semalign", "simulate"]
    head = _git_head()
    assert block["git_commit"] == head
    assert block["git_dirty"] in ((True, False) if head else (None,))
    root, ap, users = latents
    assert block["latents_id"] == latents_fingerprint(root, [ap, *users])  # the sweep's id
    assert list(block["libraries"]) == ["numpy", "scipy", "torch", "timm", "flwr", "grpcio"]
    assert block["libraries"]["numpy"] == np.__version__
    # read back: a typed result keeps it
    assert RunResult.from_dict(results).provenance.to_dict() == block


def test_latents_id_follows_the_cache_entries_used(latents, tmp_path, monkeypatch):
    root, ap, users = latents
    copy = tmp_path / "lat"
    shutil.copytree(root, copy)
    first = provenance.latents_id(copy, [ap, *users])
    assert first == provenance.latents_id(root, [ap, *users])  # content, not the folder
    assert provenance.latents_id(copy, [ap, users[0]]) != first  # other entries used
    with np.load(copy / users[1] / "test.npz") as data:
        lat, labels = data["latents"].copy(), data["labels"]
    lat[0, 0] += 1.0
    np.savez(copy / users[1] / "test.npz", latents=lat, labels=labels)
    assert provenance.latents_id(copy, [ap, *users]) != first


def test_provenance_never_fails_outside_git_or_without_a_library(tmp_path, monkeypatch):
    assert provenance.git_dirty.__wrapped__(tmp_path) is None  # not a checkout
    (tmp_path / ".git").write_text("gitdir: /nonexistent\n")
    assert provenance.git_dirty.__wrapped__(tmp_path) is None  # a broken checkout
    monkeypatch.setattr(provenance, "LIBRARIES", ("numpy", "surely-not-installed-dist"))
    versions = provenance.library_versions.__wrapped__()
    assert versions == {"numpy": np.__version__, "surely-not-installed-dist": None}


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_dirty_means_tracked_changes(tmp_path):
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "a")
    dirty = provenance.git_dirty.__wrapped__
    assert len(provenance.git_commit.__wrapped__(tmp_path)) == 40
    assert dirty(tmp_path) is False
    (tmp_path / "new.py").write_text("")  # untracked: not dirty
    assert dirty(tmp_path) is False
    (tmp_path / "a.py").write_text("x = 2\n")
    assert dirty(tmp_path) is True


def test_each_users_resolved_snr_is_recorded_and_printed(latents, tmp_path, monkeypatch, capsys):
    rc, results = simulate(latents, tmp_path / "r.json", monkeypatch, "--snr-db", "12")
    assert rc == 0
    assert [u["snr_db"] for u in results["users"]] == [12.0, 12.0]
    extra = ["--distances", "2,8", "--snr-ref-db", "30", "--path-loss-exponent", "2"]
    capsys.readouterr()
    rc, results = simulate(latents, tmp_path / "d.json", monkeypatch, *extra)
    assert rc == 0
    want = path_loss_snr_db([2.0, 8.0], 30.0, exponent=2.0)
    assert [u["snr_db"] for u in results["users"]] == list(want)
    assert [u.snr_db for u in RunResult.from_dict(results).users] == list(want)
    err = capsys.readouterr().err
    assert "SNR dB" in err and f"{want[1]:.1f}" in err  # the summary table's column
    assert f"semalign {semalign.__version__}" in err  # and the provenance line


def test_every_user_below_0_db_is_a_warning(latents, tmp_path, monkeypatch, caplog):
    extra = ["--distances", "20,30", "--snr-ref-db", "20", "-q"]
    with caplog.at_level(logging.WARNING):
        rc, results = simulate(latents, tmp_path / "r.json", monkeypatch, *extra)
    assert rc == 0 and all(u["snr_db"] < 0 for u in results["users"])
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "every user's SNR is below 0 dB" in warned[0].getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # one user above 0 dB: no warning
        rc, _ = simulate(latents, tmp_path / "s.json", monkeypatch, "--user-snr-db=-5,1", "-q")
    assert rc == 0 and not [r for r in caplog.records if "below 0 dB" in r.getMessage()]


def test_networked_results_get_measured_by_and_old_files_still_read(latents, tmp_path):
    """What ``semalign run``/``ap`` do to the server's results (tests/test_network_e2e.py runs
    them), and an old run.json (figure sources under ``provenance``) read back."""
    root, ap, users = latents
    out = tmp_path / "r.json"
    argv = ["simulate", "--latents", str(root), "--ap-encoder", ap]
    argv += ["--user-encoders", ",".join(users), *SMALL, "--seeds", "3", "-q", "--out", str(out)]
    assert main(argv) == 0
    old = json.loads(out.read_text())
    del old["provenance"]
    for user in old["users"]:
        del user["snr_db"]
    labels = {"self_reported": ["users[].accuracy"], "ap_measured": ["rounds[].seconds"]}
    old["provenance"] = labels  # a networked file of before the rename
    assert measured_by_of(old) == labels and provenance_of(old) is None
    run = RunResult.from_dict(old)
    assert run.provenance is None and all(u.snr_db is None for u in run.users)
    assert "provenance" not in run.to_dict() and "snr_db" not in run.to_dict()["users"][0]
    assert run.measured_by.to_dict() == labels  # read under its new name
    block = provenance.provenance_block(latents_id="abc")
    stamped = run.with_provenance(Provenance.from_dict(block)).to_dict()
    assert stamped["measured_by"] == labels and stamped["provenance"] == block
    assert measured_by_of(stamped) == labels and provenance_of(stamped) == block
    again = RunResult.from_dict(stamped).with_provenance(Provenance.from_dict(block))
    assert again.to_dict() == stamped  # idempotent


def test_sweep_rows_carry_the_block(latents, tmp_path):
    root, _, _ = latents
    fields = {"strategies": ("first-k",), "channel_uses": (1,), "antennas": ("2x2",)}
    fields.update(seeds=(5,), groups=("user_enc0+user_enc1",), iterations=2, ap="ap_enc")
    grid = grid_from_options(None, fields)
    plan = make_plan(grid, root, resolve_groups(grid.groups, latents_given=True)[0])
    got = []
    run_sweep(plan, tmp_path / "t.csv", on_run=lambda run, rows, error: got.append((run, rows)))
    ((run, rows),) = got
    assert len(rows) == 2
    for row in rows:
        block = row["provenance"]
        assert list(block) == BLOCK_KEYS
        assert block["latents_id"] == run.spec.fingerprint  # computed once, by the plan
        assert all(row[key] == block[key] for key in provenance.PROVENANCE_KEYS)
    assert not math.isnan(rows[0]["accuracy"])
