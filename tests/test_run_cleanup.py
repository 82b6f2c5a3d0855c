"""`semalign run` leaves no secrets behind: after a run that wrote its results, its temporary
workdir (CA key, certificates, AP secret) is gone and so is the checkpoint beside the results;
``--keep-workdir`` keeps the workdir and says where. Real processes on 127.0.0.1, synthetic
latents, 1 user, 2 rounds."""

from __future__ import annotations

import json
import subprocess

import pytest
from semalign.deploy.serving.launcher import child_env, semalign_command
from synthetic import make_latents

ALIGN = ["--antennas-tx", "2", "--antennas-rx", "2", "--channel-uses", "2", "--iterations", "2"]


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    return make_latents(tmp_path_factory.mktemp("lat"), user_dims=(12,), n_train=200)


def _run(latents, tmp_path, *extra):
    """`semalign run --no-flower` (TLS on: a CA made for the run) with its own temp folder."""
    root, ap, users = latents
    temp = tmp_path / "temp"
    temp.mkdir()
    out = tmp_path / "run.json"
    argv = [*semalign_command(), "run", "--latents", str(root), "--ap", ap, "--no-flower"]
    argv += ["--users", users[0], *ALIGN, "--seeds", "7", "-q", "--out", str(out), *extra]
    env = child_env(single_thread=True, TMPDIR=str(temp))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(out.read_text())["lost"] == []
    return temp, out, done


def test_a_finished_run_leaves_no_workdir_and_no_checkpoint(latents, tmp_path):
    temp, out, _ = _run(latents, tmp_path)
    assert [p.name for p in temp.iterdir() if p.name.startswith("semalign-run-")] == []
    assert not (tmp_path / "run.json.checkpoint").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json", "temp"]


def test_keep_workdir_keeps_it_and_says_where(latents, tmp_path):
    temp, out, done = _run(latents, tmp_path, "--keep-workdir")
    (workdir,) = [p for p in temp.iterdir() if p.name.startswith("semalign-run-")]
    assert f"workdir kept at {workdir}" in done.stderr
    assert (workdir / "secrets" / "ap").is_dir() and (workdir / "logs").is_dir()
    assert not (tmp_path / "run.json.checkpoint").exists()


def test_a_given_workdir_keeps_its_logs_but_loses_its_secrets(latents, tmp_path):
    work = tmp_path / "work"
    _run(latents, tmp_path, "--workdir", str(work))
    assert (work / "logs").is_dir()
    assert not (work / "secrets").exists() and not (work / "ap-secret").exists()
