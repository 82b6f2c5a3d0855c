"""Tracked sweeps: MLflow (local file store), TensorBoard event files and W&B offline runs, read
back; a missing backend is one line and exit 2; a failing tracker never stops a sweep."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from semalign.common.records import SeedResult
from synthetic import make_latents

from semalign.cli import main
from semalign.experiments import plan as sweep_plan
from semalign.experiments.grid import grid_from_options
from semalign.experiments.plan import make_plan
from semalign.experiments.runner import run_sweep
from semalign.experiments.table import read_table
from semalign.tracking import (
    ROUND_METRICS,
    TrackedRun,
    TrackerUnavailable,
    from_seed_block,
    open_tracker,
)

GROUP = "user_enc0+user_enc1"
ITERATIONS = 3


@pytest.fixture(scope="module")
def latents(tmp_path_factory) -> Path:
    root, _, _ = make_latents(tmp_path_factory.mktemp("latents"), n_train=200, n_test=60)
    return root


def fed_plan(latents: Path, seeds=(27, 42)):
    grid = grid_from_options(
        None,
        {
            "strategies": ("fed",),
            "channel_uses": (1,),
            "antennas": ("2x2",),
            "seeds": seeds,
            "groups": (GROUP,),
            "iterations": ITERATIONS,
            "ap": "ap_enc",
        },
    )
    groups, _ = sweep_plan.resolve_groups(grid.groups, latents_given=True)
    return make_plan(grid, latents, groups)


def test_from_seed_block_reads_a_seed_record():
    user = {"encoder": "e", "mse_whitened": None, "dropped": None}
    traffic = {"bytes_down": 10, "bytes_up": 20, "users": 2}
    block = {
        "seed": 1,
        "users": [
            {**user, "name": "user1", "accuracy": 0.5, "native_accuracy": 0.9, "mse": 2.0},
            {**user, "name": "user2", "accuracy": None, "native_accuracy": 0.8, "mse": None},
        ],
        "mean_accuracy": 0.5, "mean_native_accuracy": 0.85, "mean_mse": 2.0,
        "rounds": [
            {"round": 0, "mse": 0.9, "objective": 3.0, "primal_residual": 1.0,
             "dual_residual": 0.5, **traffic, "seconds": 0.1},
            {"round": 1, "mse": 0.7, "objective": 2.0, "primal_residual": 0.5,
             "dual_residual": 0.2, **traffic, "seconds": 0.1},
        ],
        "phases": {"final": {"bytes_down": 1, "bytes_up": 1, "mse": 0.65, "objective": 1.0}},
        "dropped": {},
        "seconds": 1.5,
    }  # fmt: skip
    run = from_seed_block(
        "r", {"rho": 1.0}, SeedResult.from_dict(block), {"host": "h", "git_commit": None}
    )
    assert [r["pilot_mse_whitened"] for r in run.rounds] == [0.9, 0.7]
    assert set(run.rounds[0]) == set(ROUND_METRICS.values())
    assert run.final["user1/accuracy"] == 0.5 and "user2/accuracy" not in run.final
    assert run.final["accuracy"] == 0.5 and run.final["native_accuracy"] == pytest.approx(0.85)
    assert run.final["network_mse"] == 0.65 and run.final["seconds"] == 1.5
    assert run.tags == {"host": "h", "git_commit": ""}
    assert run.params["user1/encoder"] == "e"
    without_final = SeedResult.from_dict({**block, "phases": {}})  # the last round's MSE
    assert from_seed_block("r", {}, without_final).final["network_mse"] == 0.7


def test_mlflow_file_store_has_every_round(latents, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()  # file:///...
    plan = fed_plan(latents)
    with open_tracker("mlflow", uri, "tiny") as tracker:
        summary = run_sweep(plan, tmp_path / "t.csv", tracker=tracker)
    assert (summary.done, summary.tracked, summary.tracking_error) == (2, 2, None)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2
    table = read_table(tmp_path / "t.csv").rows
    for run in runs:
        params, tags = run.data.params, run.data.tags
        assert params["strategy"] == "fed" and params["iterations"] == str(ITERATIONS)
        assert params["seed"] in ("27", "42") and params["users"] == "user_enc0+user_enc1"
        assert tags["run_key"].endswith("-" + params["seed"])
        assert tags["host"] and tags["started_at"] and tags["semalign_version"]
        assert run.info.status == "FINISHED"
        for metric in ROUND_METRICS.values():
            history = client.get_metric_history(run.info.run_id, metric)
            assert [m.step for m in history] == list(range(ITERATIONS)), metric
        mse = [m.value for m in client.get_metric_history(run.info.run_id, "pilot_mse_whitened")]
        assert all(0.0 < v < 2.0 for v in mse)
        rows = [r for r in table if r["run_key"] == tags["run_key"]]
        assert run.data.metrics["user1/accuracy"] == pytest.approx(
            next(r["accuracy"] for r in rows if r["user"] == "user1")
        )
        assert run.data.metrics["network_mse"] == pytest.approx(rows[0]["network_mse"])


def test_tensorboard_event_files_read_back(latents, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing import event_accumulator

    logdir = tmp_path / "tb"
    with open_tracker("tensorboard", str(logdir), "tiny") as tracker:
        summary = run_sweep(fed_plan(latents), tmp_path / "t.csv", tracker=tracker)
    assert summary.tracked == 2
    runs = sorted(p for p in (logdir / "tiny").iterdir() if p.is_dir())
    assert len(runs) == 2 and all("seed" in p.name for p in runs)
    for folder in runs:
        acc = event_accumulator.EventAccumulator(str(folder))
        acc.Reload()
        scalars = acc.Tags()["scalars"]
        for metric in ROUND_METRICS.values():
            events = acc.Scalars(f"round/{metric}")
            assert [e.step for e in events] == list(range(ITERATIONS)), metric
        assert {"final/accuracy", "final/user1/accuracy", "final/network_mse"} <= set(scalars)
        assert 0.0 <= acc.Scalars("final/accuracy")[0].value <= 1.0


def test_wandb_offline_runs(latents, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with open_tracker("wandb", str(tmp_path / "wb"), "tiny") as tracker:
        summary = run_sweep(fed_plan(latents), tmp_path / "t.csv", tracker=tracker)
    assert (summary.tracked, summary.tracking_error) == (2, None)
    files = sorted((tmp_path / "wb" / "wandb").glob("offline-run-*/*.wandb"))
    assert len(files) == 2
    for path in files:
        data = path.read_bytes()  # protobuf records: metric names are stored as text
        assert data.count(b"round/pilot_mse_whitened") >= ITERATIONS
        assert b"final/user1/accuracy" in data and b"provenance.host" in data


def test_a_failing_tracker_never_stops_the_sweep(latents, tmp_path):
    class Broken:
        name = "broken"
        calls = 0

        def log(self, run: TrackedRun) -> None:
            Broken.calls += 1
            raise RuntimeError("disk full")

        def close(self) -> None:
            pass

    summary = run_sweep(fed_plan(latents), tmp_path / "t.csv", tracker=Broken())
    assert (summary.done, summary.tracked, Broken.calls) == (2, 0, 1)
    assert summary.tracking_error == "disk full"
    assert len(read_table(tmp_path / "t.csv").complete) == 2


def cli_base(latents: Path, table: Path) -> list[str]:
    return [
        "sweep",
        "--latents",
        str(latents),
        "--ap",
        "ap_enc",
        "--groups",
        GROUP,
        "--strategies",
        "first-k",
        "--channel-uses",
        "1",
        "--antennas",
        "1x1",
        "--seeds",
        "1,2",
        "--workers",
        "1",
        "--table",
        str(table),
    ]


@pytest.mark.parametrize(
    "hidden, option",
    [
        (("mlflow",), ["--track", "mlflow"]),
        (("torch.utils.tensorboard", "tensorboardX"), ["--track", "tensorboard"]),
        (("wandb",), ["--track", "wandb"]),
        (("ray",), ["--executor", "ray"]),
    ],
)
def test_a_missing_backend_is_one_line_and_exit_2(
    latents, tmp_path, monkeypatch, capsys, hidden, option
):
    for module in hidden:
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    table = tmp_path / "t.csv"
    assert main([*cli_base(latents, table), *option]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("semalign sweep: error:"), err
    extra = "ray" if option[0] == "--executor" else option[1]
    assert f"pip install 'semalign[{extra}]'" in err[0]
    assert not table.exists()


def test_tracker_unavailable_from_the_library(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(TrackerUnavailable, match=r"semalign\[mlflow\]"):
        open_tracker("mlflow")


def test_cli_tracks_to_tensorboard(latents, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    table = tmp_path / "t.csv"
    logdir = tmp_path / "tb"
    base = cli_base(latents, table)
    assert main([*base, "--track", "tensorboard", "--track-uri", str(logdir)]) == 0
    assert "tracked: 2 run(s) in tensorboard" in capsys.readouterr().err
    assert len(list((logdir / "t").iterdir())) == 2  # experiment: the table's name
    # options that need another one
    for bad in (["--track-uri", "x"], ["--ray-address", "auto"]):
        assert main([*base, *bad]) == 2, bad
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "needs" in err[0]
