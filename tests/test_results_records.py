"""The typed results tree and its JSON: every stored results file reads into records and
writes back equal (keys, order and values), and a fresh run's JSON has the stored schema.

tests/data/results_{simulate,networked,topk}.json were written by ``semalign simulate`` and
``semalign run --no-flower`` (synthetic latents, 2 users, 3 rounds) while the results were
still assembled as dicts: the JSON the typed records must keep."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from semalign.common.network_records import NetworkSummary, WireBlock
from semalign.common.records import PhaseTraffic, RunResult, SeedResult

DATA = Path(__file__).resolve().parent / "data"
ROOT = DATA.parent.parent


def _results_files() -> list[Path]:
    """Every results JSON under tests/data and docs/data (a dict with strategy and seeds)."""
    found = []
    for folder in (DATA, ROOT / "docs" / "data"):
        for path in sorted(folder.rglob("*.json")):
            data = json.loads(path.read_text())
            if isinstance(data, dict) and {"strategy", "seeds"} <= set(data):
                found.append(path)
    return found


def _ordered(value):
    """A JSON value with every object as its list of (key, value) pairs: order counts."""
    if isinstance(value, dict):
        return [(k, _ordered(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [_ordered(v) for v in value]
    return value


def test_there_are_simulate_and_networked_results_files():
    files = _results_files()
    kinds = {"network" in json.loads(p.read_text()) for p in files}
    assert kinds == {True, False}, files


@pytest.mark.parametrize("path", _results_files(), ids=lambda p: p.name)
def test_results_file_round_trips_through_the_records(path):
    data = json.loads(path.read_text())
    run = RunResult.from_dict(data)
    assert _ordered(run.to_dict()) == _ordered(data)
    assert json.dumps(run.to_dict()) == json.dumps(data)


def test_networked_blocks_are_records_not_dicts():
    data = json.loads((DATA / "results_networked.json").read_text())
    run = RunResult.from_dict(data)
    assert isinstance(run.network, NetworkSummary) and run.network.deployment["mode"]
    seed = run.seeds[0]
    assert isinstance(seed.wire, WireBlock)
    assert seed.wire.rounds[0].bytes_down == data["seeds"][0]["wire"]["rounds"][0]["bytes_down"]
    assert all(isinstance(p, PhaseTraffic) for p in seed.phases.values())
    assert seed.phases["final"].final.mse == data["seeds"][0]["phases"]["final"]["mse"]
    assert (
        seed.self_reported["user1"].samples
        == data["seeds"][0]["users"][0]["self_reported"]["samples"]
    )
    assert run.lost == [] and run.provenance.host == data["provenance"]["host"]


def test_records_are_frozen_and_later_steps_return_new_records():
    data = json.loads((DATA / "results_simulate.json").read_text())
    run = RunResult.from_dict(data)
    with pytest.raises(AttributeError):
        run.seeds = []  # type: ignore[misc]
    snrs = {run.users[0].name: 3.5}
    again = run.with_user_snrs(snrs)
    assert again.users[0].snr_db == 3.5 and again is not run
    assert run.users[0].snr_db == data["users"][0].get("snr_db")


def test_a_seed_without_labels_writes_no_self_reported():
    data = json.loads((DATA / "results_networked.json").read_text())
    block = dict(data["seeds"][0])
    block["users"] = [{k: v for k, v in u.items() if k != "self_reported"} for u in block["users"]]
    seed = SeedResult.from_dict(block)
    assert seed.self_reported is None
    assert all("self_reported" not in u for u in seed.to_dict()["users"])


def _schema(value):
    """A JSON value's shape: objects as (key, shape) pairs in order, a list as its first
    element's shape, scalars by kind (int and float alike: a number)."""
    if isinstance(value, dict):
        return [(k, _schema(v)) for k, v in value.items()]
    if isinstance(value, list):
        return ["list", _schema(value[0])] if value else ["list"]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return type(value).__name__
    return "number"


ALIGN = ["--antennas-tx", "2", "--antennas-rx", "2", "--channel-uses", "2", "--iterations", "3"]


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    from synthetic import make_latents

    return make_latents(tmp_path_factory.mktemp("lat"), user_dims=(12, 20), n_train=200)


def test_a_fresh_simulate_json_has_the_stored_schema(latents, tmp_path):
    from semalign.cli import main

    root, ap, users = latents
    out = tmp_path / "sim.json"
    argv = ["simulate", "--latents", str(root), "--ap-encoder", ap, "--user-encoders"]
    assert main([*argv, ",".join(users), *ALIGN, "--seeds", "7,8", "-q", "--out", str(out)]) == 0
    stored = json.loads((DATA / "results_simulate.json").read_text())
    fresh = json.loads(out.read_text())
    assert _schema(fresh) == _schema(stored)
    assert _ordered(RunResult.from_dict(fresh).to_dict()) == _ordered(fresh)


def test_a_fresh_networked_json_has_the_stored_schema(latents, tmp_path):
    from semalign.deploy.serving.launcher import semalign_command

    root, ap, _ = latents
    out = tmp_path / "run.json"
    argv = [*semalign_command(), "run", "--latents", str(root), "--ap-encoder", ap]
    argv += ["--num-users", "2", *ALIGN, "--seeds", "7,8", "--no-flower", "-q"]
    argv += ["--workdir", str(tmp_path / "work"), "--out", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    stored = json.loads((DATA / "results_networked.json").read_text())
    fresh = json.loads(out.read_text())
    assert _schema(fresh) == _schema(stored)
    assert _ordered(RunResult.from_dict(fresh).to_dict()) == _ordered(fresh)
