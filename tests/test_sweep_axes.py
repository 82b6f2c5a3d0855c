"""The sweep's research axes: task models, targets, pilot selections and user-group counts."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from semalign.common.errors import SweepError
from synthetic import make_latents

from semalign.cli import main
from semalign.experiments import plan as sweep_plan
from semalign.experiments.grid import (
    LEGACY_RESEARCH_VALUES,
    RESEARCH_AXES,
    RESEARCH_DEFAULTS,
    grid_from_options,
)
from semalign.experiments.plan import cell_key, make_plan
from semalign.experiments.runner import run_sweep
from semalign.experiments.table import (
    COLUMNS,
    RESEARCH_COLUMNS,
    TABLE_SCHEMA,
    V2_COLUMNS,
    read_table,
)

BASE = {
    "strategies": ("fed", "first-k"),
    "channel_uses": (1, 2),
    "antennas": ("2x2",),
    "seeds": (27,),
    "iterations": 3,
    "ap": "ap_enc",
}


@pytest.fixture(scope="module")
def latents(tmp_path_factory) -> tuple[Path, str]:
    root, ap, users = make_latents(
        tmp_path_factory.mktemp("latents"), n_train=200, n_test=60, user_dims=(12, 20, 10, 14)
    )
    return root, "+".join(users)


def _plan(latents: tuple[Path, str], **overrides):
    root, group = latents
    grid = grid_from_options(None, {**BASE, "groups": (group,), **overrides})
    groups, _ = sweep_plan.resolve_groups(grid.groups, latents_given=True)
    return make_plan(grid, root, groups)


def test_a_grid_over_the_research_axes_has_the_right_cells():
    grid = grid_from_options(
        None,
        {
            **BASE,
            "task_models": ("logistic", "mlp"),
            "targets": ("latents", "logits", "task-subspace"),
            "pilot_selections": ("first", "k-center"),
            "user_groups": (1, 2),
        },
    )
    cells = [cfg for _, cfg in grid.configs()]
    research = 2 * 3 * 2  # task models x targets x pilot selections
    # fed: every user-group count; first-k: one group only (it has no F to share)
    assert len(cells) == grid.cells_per_seed == 2 * research * (2 + 1)
    seen = {
        (c.strategy, c.channel_uses, c.task_model, c.target, c.pilot_selection, c.user_groups)
        for c in cells
    }
    assert len(seen) == len(cells)  # no cell twice
    assert {c.user_groups for c in cells if c.strategy == "first-k"} == {1}
    assert {c.user_groups for c in cells if c.strategy == "fed"} == {1, 2}
    for axis, field in RESEARCH_AXES.items():
        assert {getattr(c, field) for c in cells} == set(getattr(grid, axis))
    # the default grid is the paper's method, one value per research axis
    default = grid_from_options(None, BASE)
    assert all(
        getattr(c, f) == RESEARCH_DEFAULTS[f]
        for _, c in default.configs()
        for f in RESEARCH_DEFAULTS
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"targets": ("latents", "pixels")}, "--targets"),
        ({"task_models": ("svm",)}, "--task-models"),
        ({"pilot_selections": ("best",)}, "--pilot-selections"),
        ({"user_groups": (0,)}, "--user-groups"),
        ({"targets": ()}, "--targets is empty"),
        ({"strategies": ("first-k",), "user_groups": (2,)}, "--user-groups above 1 needs"),
    ],
)
def test_bad_research_values_fail_naming_the_option(override, message):
    with pytest.raises(SweepError, match=message):
        grid_from_options(None, {**BASE, **override})


def test_default_cells_keep_their_keys_and_new_values_are_new_cells(latents):
    plain = _plan(latents)
    crossed = _plan(latents, targets=("latents", "logits"), user_groups=(1, 2))
    plain_keys = {r.cell_key for r in plain.runs}
    defaults = {
        r.cell_key
        for r in crossed.runs
        if r.config.target == "latents" and r.config.user_groups == 1
    }
    assert defaults == plain_keys  # adding an axis at its default changes no key
    assert crossed.cells == len({r.cell_key for r in crossed.runs})
    # fed K=1 with 2 groups cannot give each group a channel use: skipped with its reason
    assert any("2 user groups need" in reason for _, reason in crossed.skipped)
    assert all(r.config.user_groups <= r.config.channel_uses for r in crossed.runs)
    run = crossed.runs[0]
    logits = run.config.model_copy(update={"target": "logits"})
    assert cell_key(run.spec, run.group, logits) != cell_key(run.spec, run.group, run.config)


def test_a_sweep_over_targets_and_user_groups_records_them(latents, tmp_path):
    plan = _plan(latents, channel_uses=(2,), targets=("latents", "logits"), user_groups=(1, 2))
    # fed x (latents, logits) x (1, 2 groups) + first-k x (latents, logits)
    assert plan.cells == 6 and not plan.skipped
    table = tmp_path / "t.csv"
    summary = run_sweep(plan, table)
    assert (summary.done, summary.failed) == (6, [])
    rows = read_table(table).rows
    cells = {(r["strategy"], r["target"], r["user_groups"]) for r in rows}
    assert cells == {
        ("fed", "latents", 1),
        ("fed", "latents", 2),
        ("fed", "logits", 1),
        ("fed", "logits", 2),
        ("first-k", "latents", 1),
        ("first-k", "logits", 1),
    }
    assert {r["task_model"] for r in rows} == {"mlp"}
    assert {r["pilot_selection"] for r in rows} == {"first"}
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    with open(table, newline="") as fh:
        assert next(csv.reader(fh)) == list(COLUMNS)


def test_a_schema2_table_reads_with_the_options_of_then(latents, tmp_path):
    """Schema 2 knew no research options: its runs had the logistic task model (the default
    then), and their cell keys stay what they were."""
    table = tmp_path / "t.csv"
    run_sweep(_plan(latents, task_models=("logistic",)), table)
    rows = read_table(table).rows
    with open(table, "w", newline="") as fh:  # as the previous version wrote it
        writer = csv.DictWriter(fh, fieldnames=list(V2_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else str(v) for k, v in row.items()})
    old = read_table(table)
    assert old.schema == 2 and old.complete == {r["run_key"] for r in rows}
    assert all(r[c] == LEGACY_RESEARCH_VALUES[c] for r in old.rows for c in RESEARCH_COLUMNS)
    assert {r["task_model"] for r in old.rows} == {"logistic"}
    # resumes: rewritten in this schema, nothing redone
    again = run_sweep(_plan(latents, task_models=("logistic",)), table)
    assert (again.done, again.already_done) == (0, len(old.complete))
    assert read_table(table).schema == TABLE_SCHEMA
    # the default (MLP) cells are other cells: a sweep of them redoes every run
    assert run_sweep(_plan(latents), table).done == len(old.complete)


def test_cell_keys_hash_the_mlp_and_leave_out_the_old_default():
    from semalign.common.config import AlignmentConfig

    mlp, logistic = AlignmentConfig(), AlignmentConfig(task_model="logistic")
    assert mlp.task_model == "mlp"
    assert sweep_plan._key_params(mlp)["task_model"] == "mlp"
    assert "task_model" not in sweep_plan._key_params(logistic)  # keys of older tables hold


def test_cli_research_axes(latents, tmp_path, capsys):
    root, group = latents
    argv = ["sweep", "--latents", str(root), "--ap", "ap_enc", "--groups", group]
    argv += ["--strategies", "fed,first-k", "--channel-uses", "1,2", "--antennas", "2x2"]
    argv += ["--seeds", "27", "--table", str(tmp_path / "t.csv"), "--dry-run"]
    assert main([*argv, "--targets", "latents,logits", "--user-groups", "1,2"]) == 0
    out = capsys.readouterr().err
    # fed: 2 K x 2 targets x 2 groups - 2 skipped (K=1, 2 groups); first-k: 2 K x 2 targets
    assert "10 cell(s) x 1 seed(s)" in out and "2 user groups need" in out
    assert main([*argv, "--target", "logits", "--task-model", "mlp"]) == 0  # singular aliases
    assert "4 cell(s)" in capsys.readouterr().err
    assert main([*argv, "--pilot-selections", "first,nearest"]) == 2
    assert "--pilot-selections" in capsys.readouterr().err
