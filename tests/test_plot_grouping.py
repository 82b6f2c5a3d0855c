"""Plots that cannot lie: a figure splits its lines on every configuration column that differs
within the table and that it does not plot, names them, and says what it drew; cell keys leave
out the fields a strategy does not read, so baselines are not run again for ADMM-only changes."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from semalign.common.config import AlignmentConfig
from semalign.common.strategies import get_strategy
from synthetic import make_latents
from test_plot import fake_run

from semalign.cli import main
from semalign.experiments import figures as plot
from semalign.experiments import plan as sweep_plan
from semalign.experiments.grid import grid_from_options
from semalign.experiments.runner import run_sweep
from semalign.experiments.table import ResultsTable, read_table


def _table(path: Path, cells: list[dict], seeds=(1, 2)) -> Path:
    with ResultsTable(path) as table:
        for seed, cell, k in itertools.product(seeds, cells, (1, 2, 4)):
            fake_run(table, seed, channel_uses=k, **cell)
    return path


def _plot(capsys, table: Path, out: Path, *extra: str) -> tuple[int, list[str], str]:
    """Exit code, standard output lines and standard error of ``semalign plot``."""
    capsys.readouterr()
    code = main(["plot", "--table", str(table), "--out", str(out), "--formats", "png", *extra])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


def _lines_of(monkeypatch) -> list[dict[str, int]]:
    """Per figure saved: legend label -> number of points of its line (first panel)."""
    seen: list[dict[str, int]] = []
    original = plot._save

    def record(fig, *args, **kwargs):
        ax = fig.axes[0]
        seen.append({line.get_label(): len(line.get_xdata()) for line in ax.get_lines()})
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(plot, "_save", record)
    return seen


def test_two_iteration_counts_are_two_named_lines(tmp_path, capsys, monkeypatch):
    table = _table(
        tmp_path / "t.csv",
        [
            {"strategy": "fed", "iterations": 5},
            {"strategy": "fed", "iterations": 30},
            # a baseline does not read iterations: whatever its rows say, one line, unqualified
            {"strategy": "first-k", "iterations": 0, "baseline_fit": "received"},
        ],
    )
    seen = _lines_of(monkeypatch)
    code, out, _ = _plot(capsys, table, tmp_path / "fig", "--figures", "fig2")
    assert code == 0
    name = "fig2-accuracy-vs-zeta.png"
    assert out == [
        f'{name}  panel "4x4"  Federated (shared F), iterations=5',
        f'{name}  panel "4x4"  Federated (shared F), iterations=30',
        f'{name}  panel "4x4"  First-K',
        f'{name}  panel "4x4"  native (own encoder, no channel)',
    ]
    (lines,) = seen
    # each line has one point per zeta: no zig-zag through two configurations
    assert lines["Federated (shared F), iterations=5"] == 3
    assert lines["Federated (shared F), iterations=30"] == 3
    assert lines["First-K"] == 3


def test_one_value_per_field_adds_no_qualifier(tmp_path, capsys):
    table = _table(
        tmp_path / "t.csv",
        [
            {"strategy": "fed"},
            {"strategy": "multi-link"},
            {"strategy": "first-k", "iterations": 0, "baseline_fit": "received"},
            {"strategy": "top-k", "iterations": 0, "baseline_fit": "received"},
        ],
    )
    code, out, _ = _plot(capsys, table, tmp_path / "fig", "--figures", "fig2")
    assert code == 0
    labels = [line.split("  ")[-1] for line in out]
    assert labels == [
        "Federated (shared F)",
        "Multi-link (F per user)",
        "First-K",
        "Top-K",
        "native (own encoder, no channel)",
    ]
    assert not any("=" in label for label in labels)


@pytest.mark.parametrize(
    "field, values, labels",
    [
        ("rho", (1.0, 2.0), ("rho=1", "rho=2")),
        ("power", (1.0, 0.5), ("power=1", "power=0.5")),
        ("ap_encoder", ("ap", "vit"), ("ap_encoder=ap", "ap_encoder=vit")),
        (
            "latents_id",
            ("aaaaaaaa1111", "bbbbbbbb2222"),
            ("latents_id=aaaaaaaa", "latents_id=bbbbbbbb"),
        ),
    ],
)
def test_every_unplotted_field_splits_the_lines(tmp_path, capsys, field, values, labels):
    # the baseline ran the last value: a baseline does not read rho, it reads the others
    cells = [{"strategy": "fed", field: v} for v in values]
    cells.append({"strategy": "first-k", field: values[-1]})
    code, out, _ = _plot(capsys, _table(tmp_path / "t.csv", cells), tmp_path / "fig")
    assert code == 0
    drawn = sorted(line.split("  ")[-1] for line in out if "native" not in line)
    first_k = "First-K" if field == "rho" else f"First-K, {labels[-1]}"
    assert drawn == sorted([*(f"Federated (shared F), {q}" for q in labels), first_k])


def test_fig3_and_snr_lines_are_split_too(tmp_path, capsys):
    path = tmp_path / "t.csv"
    with ResultsTable(path) as table:
        for seed, it, group, k in itertools.product(
            (1, 2), (5, 30), ("homogeneous", "heterogeneous"), (1, 2)
        ):
            fake_run(table, seed, iterations=it, group=group, channel_uses=k)
        for seed, it, snr in itertools.product((1, 2), (5, 30), (0.0, 10.0)):
            fake_run(table, seed, iterations=it, snr_db=snr, group="snr-users")
            fake_run(table, seed, strategy="first-k", snr_db=snr, group="snr-users")
    code, out, _ = _plot(capsys, path, tmp_path / "fig", "--figures", "fig3,snr")
    assert code == 0
    fig3 = [line for line in out if line.startswith("fig3")]
    assert len(fig3) == 2 * 2 * 3  # (group, iterations) lines x three panels
    assert all("iterations=" in line for line in fig3)
    snr = [line for line in out if line.startswith("snr") and "native" not in line]
    assert sorted(line.split("  ")[-1] for line in snr) == [
        "Federated (shared F), iterations=30",
        "Federated (shared F), iterations=5",
        "First-K",
    ]


def test_cells_no_column_tells_apart_are_refused(tmp_path, capsys):
    path = _table(tmp_path / "t.csv", [{"strategy": "fed"}, {"strategy": "first-k"}])
    rows = read_table(path).rows
    with ResultsTable(path) as table:  # the fed cell again under another key
        twin = [{**r, "cell_key": "twin", "run_key": f"twin-{r['seed']}"} for r in rows]
        for seed in (1, 2):
            table.append([r for r in twin if r["seed"] == seed and r["strategy"] == "fed"][:3])
    code, out, err = _plot(capsys, path, tmp_path / "fig")
    assert code == 2 and out == []
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "cell_key" in lines[0] and "twin" in lines[0]


# ---------------------------------------------------------------------------- cell keys
def test_cell_keys_leave_out_what_a_strategy_does_not_read():
    spec = sweep_plan.ScenarioSpec("/x", "ap_enc", ("u1", "u2"), "f")
    for strategy in ("fed", "multi-link", "first-k", "top-k"):
        base = AlignmentConfig(strategy=strategy, channel_uses=1)
        key = sweep_plan.cell_key(spec, "g", base)
        admm = get_strategy(strategy).family == "admm"
        for change in ({"iterations": 5}, {"rho": 2.0}, {"protocol": "compact"}):
            other = sweep_plan.cell_key(spec, "g", base.model_copy(update=change))
            assert (other != key) is admm, (strategy, change)
        for change in ({"baseline_fit": "full"}, {"topk_index_cost": "channel-uses"}):
            other = sweep_plan.cell_key(spec, "g", base.model_copy(update=change))
            assert (other != key) is not admm, (strategy, change)
        # fields every strategy reads
        for change in ({"power": 2.0}, {"snr_db": 10.0}, {"csi": False}):
            assert sweep_plan.cell_key(spec, "g", base.model_copy(update=change)) != key


@pytest.fixture(scope="module")
def latents(tmp_path_factory) -> tuple[Path, str, list[str]]:
    return make_latents(tmp_path_factory.mktemp("latents"), n_train=200, n_test=60)


def _plan(latents, iterations: int):
    root, ap, users = latents
    group = "+".join(users)
    grid = grid_from_options(
        None,
        {
            "strategies": ("fed", "first-k"),
            "channel_uses": (1, 2),
            "antennas": ("1x1",),
            "seeds": (1,),
            "groups": (group,),
            "iterations": iterations,
            "ap": ap,
        },
    )
    return sweep_plan.make_plan(grid, root, {group: users})


def test_a_sweep_over_two_iteration_counts_runs_the_baselines_once(latents, tmp_path, capsys):
    short, long = _plan(latents, 2), _plan(latents, 4)
    cells: dict[str, set[str]] = {}
    for run in short.runs + long.runs:
        cells.setdefault(run.config.strategy, set()).add(run.cell_key)
    assert len(cells["first-k"]) == 2  # one per K
    assert len(cells["fed"]) == 4  # two iteration counts per K
    # the table of the first sweep: the second runs only its fed cells
    table = tmp_path / "t.csv"
    assert run_sweep(short, table).done == 4
    again = run_sweep(long, table)
    assert (again.done, again.already_done) == (2, 2)
    assert len(read_table(table).complete) == 6
    # and the plot names the iteration counts of the fed lines only
    code, out, _ = _plot(capsys, table, tmp_path / "fig", "--figures", "fig2")
    assert code == 0
    assert sorted(line.split("  ")[-1] for line in out if "native" not in line) == [
        "Federated (shared F), iterations=2",
        "Federated (shared F), iterations=4",
        "First-K",
    ]


def test_previous_keys_of_runs_whose_key_left_out_a_field(latents):
    for run in _plan(latents, 30).runs:  # the default: keys as before
        assert sweep_plan.previous_run_key(run) is None
    for run in _plan(latents, 2).runs:
        old = sweep_plan.previous_run_key(run)
        if run.config.strategy == "fed":
            assert old is None
        else:  # the key a baseline run had when keys hashed iterations=2
            assert old is not None and old != run.key and old.endswith(f"-{run.config.seed}")


def test_a_field_that_differs_only_between_figures_labels_no_line(tmp_path, capsys):
    """Two groups with their own latents (different latents_id) go to two fig2 files; within
    each file the latents are one, so no line says latents_id."""
    table = _table(
        tmp_path / "t.csv",
        [
            {"strategy": s, "group": g, "latents_id": lid, "baseline_fit": f}
            for g, lid in (("homogeneous", "aaaa"), ("heterogeneous", "bbbb"))
            for s, f in (("fed", ""), ("first-k", "received"))
        ],
    )
    code, lines, err = _plot(capsys, table, tmp_path / "out", "--figures", "fig2")
    assert code == 0, err
    assert any("homogeneous" in line for line in lines)
    assert any("heterogeneous" in line for line in lines)
    assert not any("latents_id" in line for line in lines), lines
