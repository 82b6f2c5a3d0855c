"""``--config FILE``: a results JSON runs the same sessions again (same numbers), TOML and YAML
configs, flags override the file, unknown keys are one line; ``sweep --set`` crosses any config
key; piped progress is one line per run; ``simulate --track`` logs every round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from synthetic import make_latents

from semalign.cli import main
from semalign.experiments.table import read_table

SMALL = ["--channel-uses", "1", "--antennas-tx", "2", "--antennas-rx", "2"]


@pytest.fixture(scope="module")
def latents(tmp_path_factory) -> tuple[Path, str, list[str]]:
    return make_latents(tmp_path_factory.mktemp("latents"), n_train=160, n_test=48)


def simulate_argv(latents, out: Path, *extra: str) -> list[str]:
    root, ap, users = latents
    argv = ["simulate", "--latents", str(root), "--ap-encoder", ap]
    return [*argv, "--user-encoders", ",".join(users), *SMALL, *extra, "--out", str(out), "-q"]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_results_json_as_config_reproduces_the_run(latents, tmp_path):
    first, again = tmp_path / "first.json", tmp_path / "again.json"
    extra = ["--iterations", "4", "--seeds", "3,8", "--admm-penalty", "0.7", "--snr-db", "12"]
    extra += ["--channel-model", "kronecker", "--tx-correlation", "0.4", "--strategy", "multi-link"]
    assert main(simulate_argv(latents, first, *extra)) == 0
    assert main(["simulate", "--config", str(first), "--out", str(again), "-q"]) == 0
    a, b = (json.loads(p.read_text()) for p in (first, again))
    assert b["config"] == a["config"]
    assert b["config"]["rho"] == 0.7 and b["config"]["channel"]["rho_tx"] == 0.4
    assert [s["seed"] for s in b["seeds"]] == [3, 8]
    for key in ("mean_mse", "mean_accuracy", "std_mse"):
        assert b[key] == a[key], key  # exactly: the same sessions
    assert [u["mse"] for u in b["users"]] == [u["mse"] for u in a["users"]]
    # and a flag overrides the file: another number
    changed = tmp_path / "changed.json"
    argv = ["simulate", "--config", str(first), "--iterations", "1", "--out", str(changed), "-q"]
    assert main(argv) == 0
    c = json.loads(changed.read_text())
    assert c["config"]["iterations"] == 1 and c["config"]["rho"] == 0.7
    assert c["mean_mse"] != a["mean_mse"]


def test_older_results_json_reads_with_the_task_model_it_ran(latents, tmp_path):
    first = tmp_path / "first.json"
    assert main(simulate_argv(latents, first, "--iterations", "2", "--seeds", "1")) == 0
    data = json.loads(first.read_text())
    del data["config"]["task_model"]  # a file older than the field
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    out = tmp_path / "out.json"
    assert main(["simulate", "--config", str(old), "--out", str(out), "-q"]) == 0
    assert json.loads(out.read_text())["config"]["task_model"] == "logistic"


CONFIG_TOML = """
iterations = 3
admm_penalty = 0.25
seeds = [5]
strategy = "fed"
[channel]
model = "kronecker"
rho_rx = 0.2
"""

CONFIG_YAML = """
iterations: 3
rho: 0.25
seeds: [5]
strategy: fed
channel.model: kronecker
channel.rho_rx: 0.2
"""


@pytest.mark.parametrize("name, text", [("c.toml", CONFIG_TOML), ("c.yaml", CONFIG_YAML)])
def test_toml_and_yaml_configs_and_flags_override(latents, tmp_path, name, text):
    if name.endswith(".yaml"):
        pytest.importorskip("yaml")
    path = tmp_path / name
    path.write_text(text)
    out = tmp_path / "r.json"
    assert main([*simulate_argv(latents, out, "--config", str(path), "--iterations", "2")]) == 0
    config = json.loads(out.read_text())["config"]
    assert config["iterations"] == 2  # the flag
    assert config["rho"] == 0.25 and config["seeds"] == [5]  # the file
    assert config["channel"]["model"] == "kronecker" and config["channel"]["rho_rx"] == 0.2
    assert config["snr_db"] == 20.0  # the default


@pytest.mark.parametrize(
    "text, needle",
    [
        ("bogus = 1\n", "unknown key 'bogus'"),
        ("[channel]\nwobble = 2\n", "unknown key 'channel.wobble'"),
        ("iterations = [\n", "not valid TOML"),
        ("strategy = 'nope'\n", "--strategy"),
    ],
)
def test_bad_config_file_is_one_line_exit_2(latents, tmp_path, capsys, text, needle):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert main(simulate_argv(latents, tmp_path / "r.json", "--config", str(path))) == 2
    line = one_error_line(capsys)
    assert line.startswith("semalign simulate: error:") and needle in line, line
    assert not (tmp_path / "r.json").exists()


def test_config_file_on_run_and_ap_is_read(tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text("bogus = 1\n")
    for argv in (["run", "--insecure"], ["ap", "--num-users", "2", "--insecure"]):
        assert main([*argv, "--config", str(path)]) == 2
        assert "unknown key 'bogus'" in one_error_line(capsys)
    path.write_text("iterations = 0\n")
    assert main(["ap", "--num-users", "2", "--insecure", "--config", str(path)]) == 2
    assert "--iterations" in one_error_line(capsys)


def sweep_argv(latents, table: Path, *extra: str) -> list[str]:
    root, ap, users = latents
    argv = ["sweep", "--latents", str(root), "--ap-encoder", ap, "--groups", "+".join(users)]
    argv += ["--strategies", "fed", "--channel-uses", "1", "--antennas", "2x2", "--seeds", "1"]
    return [*argv, "--workers", "1", "--table", str(table), *extra]


def test_sweep_set_crosses_two_keys_and_prints_a_line_per_run(latents, tmp_path, capsys):
    table = tmp_path / "t.csv"
    argv = sweep_argv(latents, table, "--set", "iterations=2,3", "--set", "rho=0.5,1")
    assert main(argv) == 0
    rows = read_table(table).rows
    cells = {(r["iterations"], r["rho"]) for r in rows}
    assert cells == {(2, 0.5), (2, 1.0), (3, 0.5), (3, 1.0)}
    assert len({r["cell_key"] for r in rows}) == 4
    err = capsys.readouterr().err  # not a terminal: one plain line per finished run
    lines = [line for line in err.splitlines() if line.startswith("run ")]
    assert [line.split()[1] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert all("iterations=" in line and "rho=" in line for line in lines)
    # the renamed spelling is the same key; the same cells are found done
    argv = sweep_argv(latents, table, "--set", "iterations=2,3", "--set", "admm-penalty=0.5,1")
    assert main(argv) == 0
    assert "0 run(s) done, 4 already in the table" in capsys.readouterr().err


def test_sweep_set_on_a_grid_axis_and_channel_key(latents, tmp_path, capsys):
    table = tmp_path / "t.csv"
    argv = sweep_argv(latents, table, "--set", "csi=on,off", "--set", "channel.csi_error=0,0.1")
    assert main([*argv, "--set", "power=0.5", "-q"]) == 0
    rows = read_table(table).rows
    channels = ("rayleigh", "rayleigh csi_err=0.1")
    assert {(r["csi"], r["channel"], r["power"]) for r in rows} == {
        (csi, channel, 0.5) for csi in (True, False) for channel in channels
    }


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--set", "nonsense=1,2"], "not a config key"),
        (["--set", "iterations"], "KEY=V1,V2"),
        (["--set", "iterations=a"], "--set iterations: 'a'"),
        (["--set", "iterations=0"], "--set iterations"),
        (["--set", "strategy=fed", "--strategies", "fed"], "both given"),
        (["--set", "protocol=paper,compact"], "not a config key with a column"),
    ],
)
def test_bad_set_is_one_line(latents, tmp_path, capsys, extra, needle):
    argv = sweep_argv(latents, tmp_path / "t.csv", *extra)
    if "--strategies" in extra:
        argv = argv[: argv.index("--strategies")] + argv[argv.index("--strategies") + 2 :]
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert line.startswith("semalign sweep: error:") and needle in line, line


def test_sweep_config_file_with_axes(latents, tmp_path):
    config = tmp_path / "grid.toml"
    config.write_text('strategies = ["fed"]\niterations = [2, 3]\n[set]\nsnr_db = [10, 20]\n')
    root, ap, users = latents
    table = tmp_path / "t.csv"
    argv = ["sweep", "--config", str(config), "--latents", str(root), "--ap-encoder", ap]
    argv += ["--groups", "+".join(users), "--channel-uses", "1", "--antennas", "2x2"]
    assert main([*argv, "--seeds", "1", "--table", str(table), "--workers", "1", "-q"]) == 0
    rows = read_table(table).rows
    assert {(r["iterations"], r["snr_db"]) for r in rows} == {
        (t, s) for t in (2, 3) for s in (10.0, 20.0)
    }


def test_simulate_track_logs_every_round(latents, tmp_path, capsys):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    out = tmp_path / "r.json"
    extra = ["--iterations", "3", "--seeds", "4,5", "--track", "mlflow", "--track-uri", uri]
    assert main(simulate_argv(latents, out, *extra)) == 0
    assert "tracked: 2 seed run(s) in mlflow" in capsys.readouterr().err
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("simulate").experiment_id])
    results = json.loads(out.read_text())
    assert sorted(r.data.params["seed"] for r in runs) == ["4", "5"]
    _, _, users = latents
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "pilot_mse_whitened")
        assert [m.step for m in history] == [0, 1, 2]
        seed = next(s for s in results["seeds"] if str(s["seed"]) == run.data.params["seed"])
        assert [m.value for m in history] == pytest.approx([r["mse"] for r in seed["rounds"]])
        assert run.data.params["user1/encoder"] == users[0]
        assert run.data.metrics["user2/accuracy"] == pytest.approx(seed["users"][1]["accuracy"])
        assert run.info.status == "FINISHED"


def test_simulate_piped_prints_seeds_and_tenths_of_rounds(latents, tmp_path, capsys):
    root, ap, users = latents
    argv = ["simulate", "--latents", str(root), "--ap-encoder", ap]
    argv += ["--user-encoders", ",".join(users), *SMALL, "--iterations", "20", "--seeds", "1,2"]
    assert main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    rounds = [line for line in err if line.startswith("seed 1 round")]
    assert [line.split()[3] for line in rounds] == [f"{r}/20" for r in range(2, 21, 2)]
    assert sum(line.startswith("seed ") and " done (" in line for line in err) == 2


def test_run_with_config_and_track_logs_every_round(latents, tmp_path, capsys):
    """``semalign run`` (the AP and two user processes): options from a config file, each
    round tracked as it ends, the same figures as the results file."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    root, ap, users = latents
    config = tmp_path / "run.toml"
    config.write_text(
        f'latents = "{root}"\nap_encoder = "{ap}"\nuser_encoders = {json.dumps(users)}\n'
        "iterations = 3\nchannel_uses = 1\nantennas_tx = 2\nantennas_rx = 2\nseeds = [6]\n"
    )
    uri, out = (tmp_path / "mlruns").as_uri(), tmp_path / "run.json"
    argv = ["run", "--config", str(config), "--no-flower", "--insecure", "--out", str(out)]
    argv += ["--workdir", str(tmp_path / "work"), "--track", "mlflow", "--track-uri", uri]
    assert main(argv) == 0
    assert "tracked: 1 seed run(s) in mlflow" in capsys.readouterr().err
    results = json.loads(out.read_text())
    assert results["config"]["iterations"] == 3 and results["config"]["users"] == users
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("run").experiment_id])
    history = client.get_metric_history(run.info.run_id, "pilot_mse_whitened")
    assert [m.value for m in history] == pytest.approx(
        [r["mse"] for r in results["seeds"][0]["rounds"]]
    )
    assert run.data.params["user2/encoder"] == users[1] and run.info.status == "FINISHED"


def test_results_json_as_sweep_config_is_that_one_cell(latents, tmp_path):
    first = tmp_path / "first.json"
    extra = ["--iterations", "2", "--seeds", "3", "--channel-model", "kronecker"]
    assert main(simulate_argv(latents, first, *extra, "--tx-correlation", "0.3")) == 0
    table = tmp_path / "t.csv"
    argv = ["sweep", "--config", str(first), "--table", str(table), "--workers", "1", "-q"]
    assert main(argv) == 0
    rows = read_table(table).rows
    results = json.loads(first.read_text())
    assert {r["cell_key"] for r in rows} == {rows[0]["cell_key"]} and len(rows) == 2
    assert rows[0]["channel"] == "kronecker(rho_tx=0.3)" and rows[0]["iterations"] == 2
    by_user = {r["user"]: r for r in rows}
    for user in results["seeds"][0]["users"]:  # the same session: the same numbers
        assert by_user[user["name"]]["mse"] == user["mse"]
        assert by_user[user["name"]]["accuracy"] == user["accuracy"]
