"""A checkpoint already at ``--checkpoint`` is never overwritten silently: ``semalign ap`` and
``semalign run`` refuse (exit 2, one line naming the file) unless ``--resume`` (continue it) or
``--fresh`` (start over, replacing it)."""

from __future__ import annotations

import argparse

import pytest
from semalign.deploy.commands import ap as ap_module
from semalign.deploy.commands import run as run_module
from semalign.deploy.options.reliability import start_afresh
from semalign.deploy.serving.launcher import Processes
from synthetic import make_latents

from semalign.cli import main


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    return make_latents(tmp_path_factory.mktemp("lat"), user_dims=(12,), n_train=60, n_test=20)


@pytest.fixture
def saved(latents, tmp_path, monkeypatch):
    """argv of `ap` and `run` whose --out has a checkpoint beside it; nothing really starts."""
    root, ap, users = latents
    out = tmp_path / "r.json"
    checkpoint = tmp_path / "r.json.checkpoint"
    checkpoint.write_bytes(b"SEMALIGN-CHECKPOINT 1\nsaved run\n")
    started = []
    monkeypatch.setattr(ap_module, "command", lambda args: started.append("ap") or 0)
    monkeypatch.setattr(run_module, "command", lambda args: started.append("run") or 0)

    def no_process(self, name, *args, **kwargs):
        raise AssertionError(f"{name} was started")

    monkeypatch.setattr(Processes, "start", no_process)
    common = ["--latents", str(root), "--ap", ap, "--out", str(out), "-q"]
    argvs = {
        "ap": ["ap", "--users", "1", "--insecure", *common],
        "run": ["run", "--users", users[0], "--no-flower", *common],
    }
    return argvs, checkpoint, started


@pytest.mark.parametrize("command", ["ap", "run"])
def test_a_checkpoint_there_is_refused_without_resume_or_fresh(command, saved, capsys):
    argvs, checkpoint, started = saved
    assert main(argvs[command]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"checkpoint {checkpoint} holds a saved run" in err and "--fresh" in err, err
    assert started == [] and checkpoint.read_bytes().endswith(b"saved run\n")


@pytest.mark.parametrize("command", ["ap", "run"])
def test_resume_or_fresh_goes_on(command, saved, capsys):
    argvs, _, started = saved
    assert main([*argvs[command], "--resume"]) == 0
    assert main([*argvs[command], "--fresh"]) == 0
    assert started == [command, command]
    assert main([*argvs[command], "--resume", "--fresh"]) == 2
    assert "--resume and --fresh exclude each other" in capsys.readouterr().err


def test_no_checkpoint_needs_neither(saved):
    argvs, checkpoint, started = saved
    checkpoint.unlink()
    assert main(argvs["ap"]) == 0 and main(argvs["run"]) == 0
    assert started == ["ap", "run"]


def test_fresh_removes_the_old_checkpoint_when_the_run_starts(tmp_path):
    checkpoint = tmp_path / "r.json.checkpoint"
    checkpoint.write_bytes(b"old")
    start_afresh(argparse.Namespace(fresh=False, checkpoint=str(checkpoint)))
    assert checkpoint.exists()
    start_afresh(argparse.Namespace(fresh=True, checkpoint=str(checkpoint)))
    assert not checkpoint.exists()
