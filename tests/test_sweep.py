"""``semalign sweep``: grid validation, resumable table, end to end on synthetic latents."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
from semalign.common.errors import SweepError
from semalign.common.latents import latents_fingerprint_v1
from synthetic import make_latents

from semalign.cli import main
from semalign.experiments import plan as sweep_plan
from semalign.experiments import runner
from semalign.experiments.grid import PRESETS, grid_from_options
from semalign.experiments.plan import make_plan
from semalign.experiments.provenance import PROVENANCE_KEYS
from semalign.experiments.rekey import as_v1
from semalign.experiments.runner import run_sweep
from semalign.experiments.table import (
    COLUMNS,
    RESEARCH_COLUMNS,
    TABLE_SCHEMA,
    V1_COLUMNS,
    ResultsTable,
    read_table,
)

GROUP = "user_enc0+user_enc1"


@pytest.fixture(scope="module")
def latents(tmp_path_factory) -> Path:
    root, _, _ = make_latents(tmp_path_factory.mktemp("latents"), n_train=200, n_test=60)
    return root


#: The grid axis of double precision, pinned whatever the default: what the reference table and
#: every table of an older version ran (a sweep never reuses their rows for single-precision
#: cells).
DOUBLE = (("precision", ("double",)),)


def tiny_grid(**overrides):
    fields = {
        "strategies": ("fed", "first-k"),
        "channel_uses": (1,),
        "antennas": ("2x2",),
        "seeds": (27, 42),
        "groups": (GROUP,),
        "iterations": 3,
        "ap": "ap_enc",
    }
    fields.update(overrides)
    return grid_from_options(None, fields)


def tiny_plan(latents: Path, **overrides):
    grid = tiny_grid(**overrides)
    groups, _ = sweep_plan.resolve_groups(grid.groups, latents_given=True)
    return make_plan(grid, latents, groups)


def csv_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_tiny_sweep_end_to_end(latents, tmp_path):
    plan = tiny_plan(latents)
    assert plan.cells == 2 and len(plan.runs) == 4 and not plan.skipped
    table = tmp_path / "t.csv"
    summary = run_sweep(plan, table)
    assert (summary.done, summary.already_done, summary.failed) == (4, 0, [])
    with open(table, newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == list(COLUMNS)
        raw = list(reader)
    assert len(raw) == 2 * 2 * 2  # cells x seeds x users
    rows = read_table(table).rows
    assert {r["strategy"] for r in rows} == {"fed", "first-k"}
    assert {r["seed"] for r in rows} == {27, 42}
    assert {r["user"] for r in rows} == {"user1", "user2"}
    for r in rows:
        assert r["d_ap"] == 16 and r["zeta"] == pytest.approx(1 / 8)
        assert 0.0 <= r["accuracy"] <= 1.0 and r["native_accuracy"] > 0.5
        assert math.isfinite(r["network_mse"]) and r["seconds"] > 0
        assert r["run_key"] == f"{r['cell_key']}-{r['seed']}"
    fed = [r for r in rows if r["strategy"] == "fed"]
    assert all(math.isfinite(r["last_round_mse"]) and r["iterations"] == 3 for r in fed)
    base = [r for r in rows if r["strategy"] == "first-k"]
    assert all(r["baseline_fit"] == "received" and r["iterations"] == 0 for r in base)
    # Same command again: nothing to do.
    again = run_sweep(plan, table)
    assert (again.done, again.already_done) == (0, 4)
    assert len(csv_lines(table)) == 1 + 8


def test_resume_after_interruption(latents, tmp_path):
    plan = tiny_plan(latents)
    table = tmp_path / "t.csv"
    calls = []

    def interrupt(run, rows, error):
        calls.append(run.key)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(plan, table, on_run=interrupt)
    assert len(calls) == 1
    assert read_table(table).complete == {calls[0]}
    summary = run_sweep(plan, table)
    assert (summary.done, summary.already_done) == (3, 1)
    assert read_table(table).complete == {r.key for r in plan.runs}


def test_torn_and_partial_runs_are_redone(latents, tmp_path):
    plan = tiny_plan(latents)
    table = tmp_path / "t.csv"
    run_sweep(plan, table)
    lines = csv_lines(table)
    # A crash mid-write: the last run lost one row and the last line is cut in the middle.
    last_key = lines[-1].split(",")[0]
    kept = lines[:-1]
    (table).write_text("\n".join(kept) + "\n" + lines[-1][:20])
    contents = read_table(table)
    assert contents.torn_tail and last_key not in contents.complete
    assert len(contents.complete) == 3
    summary = run_sweep(plan, table)
    assert (summary.done, summary.already_done) == (1, 3)
    contents = read_table(table)
    assert not contents.torn_tail and contents.dropped_lines == 0
    assert len(contents.rows) == 8 and len(csv_lines(table)) == 9


def test_parallel_workers(latents, tmp_path):
    plan = tiny_plan(latents, strategies=("first-k", "top-k"))
    table = tmp_path / "t.csv"
    summary = run_sweep(plan, table, workers=2)
    assert (summary.done, summary.failed) == (4, [])
    assert len(read_table(table).rows) == 8


def test_workers_use_one_blas_thread():
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        1, mp_context=ctx, initializer=runner._worker_init, initargs=(1, 30)
    ) as pool:
        threads = pool.submit(runner.blas_threads).result()
    assert threads and set(threads) == {1}


def test_cell_key_covers_every_parameter(latents):
    grid = tiny_grid(strategies=("fed",))
    groups, _ = sweep_plan.resolve_groups(grid.groups, latents_given=True)
    spec = sweep_plan.ScenarioSpec(str(latents), "ap_enc", tuple(groups[GROUP]))
    _, cfg = next(grid.configs())
    key = sweep_plan.cell_key(spec, GROUP, cfg)
    assert key == sweep_plan.cell_key(spec, GROUP, cfg.model_copy(update={"seed": 99}))
    for change in ({"rho": 2.0}, {"snr_db": 10.0}, {"csi": False}, {"pilot_fraction": 0.5}):
        assert sweep_plan.cell_key(spec, GROUP, cfg.model_copy(update=change)) != key
    other = sweep_plan.ScenarioSpec(str(latents), "ap_enc", ("user_enc1", "user_enc0"))
    assert sweep_plan.cell_key(other, GROUP, cfg) != key
    reencoded = sweep_plan.ScenarioSpec(str(latents), "ap_enc", spec.users, "other-latents")
    assert sweep_plan.cell_key(reencoded, GROUP, cfg) != key


def test_fingerprint_follows_latent_content(tmp_path):
    root, ap, users = make_latents(tmp_path / "a", seed=1)
    first = sweep_plan.latents_fingerprint(root, [ap, *users])
    assert first == sweep_plan.latents_fingerprint(root, [ap, *users])
    make_latents(tmp_path / "a", seed=2)  # re-encoded in place
    assert sweep_plan.latents_fingerprint(root, [ap, *users]) != first


@pytest.mark.parametrize(
    "override, message",
    [
        ({"channel_uses": (1, 0)}, "--channel-uses"),
        ({"antennas": ("4y4",)}, "--antennas"),
        ({"antennas": ("0x2",)}, "--antennas"),
        ({"strategies": ("fed", "feed")}, "--strategies"),
        ({"pilot_fractions": (1.5,)}, "--pilot-fractions"),
        ({"snr_db": (float("nan"),)}, "--snr-db"),
        ({"seeds": ()}, "--seeds"),
        ({"iterations": 0}, "--iterations"),
        ({"groups": ("a+",)}, "--groups"),
    ],
)
def test_bad_grid_values_fail_clearly(override, message):
    with pytest.raises(SweepError, match=message):
        tiny_grid(**override)


def test_presets_are_valid_grids():
    assert set(PRESETS) == {"fig2", "fig3", "snr"}
    fig2 = grid_from_options("fig2", {})
    assert fig2.cells_per_seed == 3 * 7 * 4 and len(fig2.seeds) == 6
    assert fig2.antennas == ((1, 1), (2, 2), (4, 4))
    fig3 = grid_from_options("fig3", {"seeds": (1,)})
    assert fig3.groups == ("homogeneous", "heterogeneous") and fig3.seeds == (1,)
    assert min(grid_from_options("snr", {}).snr_db) == -20.0
    with pytest.raises(SweepError, match="unknown preset"):
        grid_from_options("fig9", {})


def test_oversized_cells_are_skipped_with_reason(latents):
    # d_AP = 16 -> 8 complex features: K=4 with N_T=4 needs 16 symbols.
    plan = tiny_plan(latents, channel_uses=(1, 4), antennas=("1x1", "4x4"))
    assert len(plan.skipped) == 2  # fed and first-k at 4x4, K=4
    assert all("exceed" in reason for _, reason in plan.skipped)
    assert plan.cells == 6
    with pytest.raises(SweepError, match="no valid cell"):
        tiny_plan(latents, channel_uses=(4,), antennas=("4x4",))


def test_foreign_table_is_refused(latents, tmp_path):
    table = tmp_path / "other.csv"
    table.write_text("a,b\n1,2\n")
    with pytest.raises(SweepError, match="not a semalign sweep table"):
        read_table(table)
    with pytest.raises(SweepError):
        with ResultsTable(table):
            pass
    assert table.read_text() == "a,b\n1,2\n"


def test_cli_sweep_and_errors(latents, tmp_path, capsys):
    table = tmp_path / "cli.csv"
    base = [
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
        "1,2",
        "--antennas",
        "1x1",
        "--seeds",
        "1,2",
        "--workers",
        "1",
        "--table",
        str(table),
        "-q",
    ]
    assert main([*base, "--dry-run"]) == 0
    assert not table.exists()
    assert main(base) == 0
    assert len(read_table(table).complete) == 4
    # Bad values: one line, exit 2, before any work (the table is left as it was).
    before = table.read_text()
    for bad in (
        ["--channel-uses", "1,x"],
        ["--antennas", "4by4"],
        ["--snr-db=-300"],
        ["--strategies", "fedx"],
        ["--groups", "nosuchencoder"],
        ["--workers", "0"],
    ):
        capsys.readouterr()
        assert main([*base, *bad]) == 2, bad
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("semalign sweep: error:"), err
    assert table.read_text() == before


# ---------------------------------------------------------------------------- regression
#: Made by the sweep of commit 3848999 (before the experiments split) on this grid and latents;
#: the latents column is replaced by "<latents>". It is a schema-1 table: its keys hashed the
#: latent folder's path and it has no provenance columns; keys are compared through
#: test_cell_keys_are_pinned instead.
REFERENCE = Path(__file__).parent / "data" / "sweep_reference.csv"
#: The reference's 64 First-K/Top-K rows as the native-latent selection computes them (made
#: from the same grid and latents, schema-1 columns; the reference itself keeps the rows of the
#: whitened-symbol selection it was made with, which tests/test_plot.py reads as such).
BASELINES_REFERENCE = Path(__file__).parent / "data" / "sweep_reference_baselines.csv"
NOT_COMPARED = {"seconds", "latents", "cell_key", "run_key"}


def reference_grid(users: list[str], ap: str):
    return grid_from_options(
        None,
        {
            "strategies": ("fed", "multi-link", "first-k", "top-k"),
            "channel_uses": (1, 2),
            "antennas": ("2x2",),
            "seeds": (27, 42),
            "groups": ("+".join(users),),
            "pilot_fractions": (0.5, 1.0),
            "csi": (True, False),
            "iterations": 3,
            "ap": ap,
            "task_models": ("logistic",),  # the reference's (the default when it was made)
            "axes": DOUBLE,  # likewise
        },
    )


def _same(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    except ValueError:
        return False


def test_table_matches_the_reference(tmp_path):
    root, ap, users = make_latents(tmp_path / "latents", n_train=200, n_test=60)
    grid = reference_grid(users, ap)
    groups, _ = sweep_plan.resolve_groups(grid.groups, latents_given=True)
    table = tmp_path / "t.csv"
    run_sweep(make_plan(grid, root, groups), table, workers=1)
    with open(table, newline="") as fh:
        got = list(csv.DictReader(fh))
    with open(REFERENCE, newline="") as fh:
        want = list(csv.DictReader(fh))
    assert len(got) == len(want) == 128
    # the baselines' rows: since they select in the native latent their values are
    # those of BASELINES_REFERENCE (same columns, the same sweep); the ADMM rows are unchanged
    with open(BASELINES_REFERENCE, newline="") as fh:
        baselines = iter(list(csv.DictReader(fh)))
    want = [next(baselines) if w["strategy"] in ("first-k", "top-k") else w for w in want]
    assert next(baselines, None) is None
    # the reference's latents_id is these latents' fingerprint of version 1 (each user's files
    # hashed in one stream); the table's is version 2
    fingerprints = (
        sweep_plan.latents_fingerprint(root, [ap, *users]),
        latents_fingerprint_v1(root, [ap, *users]),
    )
    assert {(g["latents_id"], w["latents_id"]) for g, w in zip(got, want, strict=True)} == {
        fingerprints
    }
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        # schema 5: schema 1 with the channel model after csi and the research options after
        # it, the baselines' selection order after topk_index_cost, then provenance
        added = ("channel", *RESEARCH_COLUMNS)
        order = [c for c in g if c not in (*added, "baseline_selection")]
        assert order == list(w) + list(PROVENANCE_KEYS)
        assert list(g)[list(g).index("topk_index_cost") + 1] == "baseline_selection"
        base = g["strategy"] in ("first-k", "top-k")
        assert g["baseline_selection"] == ("native" if base else "")
        at = list(g).index("csi") + 1
        assert list(g)[at : at + len(added)] == list(added) and g["channel"] == "rayleigh"
        assert [g[c] for c in RESEARCH_COLUMNS] == ["logistic", "latents", "first", "1", "linear"]
        diff = {
            k: (g[k], w[k])
            for k in w
            if k not in NOT_COMPARED and k != "latents_id" and not _same(g[k], w[k])
        }
        assert not diff, f"row {i + 2}: {diff}"
        assert g["run_key"] == f"{g['cell_key']}-{g['seed']}"
    # the same grouping of rows into runs and cells (the keys themselves differ: the reference
    # has schema-1 keys, and since keys leave out the fields a strategy does not read, its
    # baselines' keys no longer hash iterations=3; neither changes a row's values)
    for column in ("run_key", "cell_key"):
        pairs = {(g[column], w[column]) for g, w in zip(got, want, strict=True)}
        assert len(pairs) == len({w[column] for w in want}) == len({g[column] for g in got})


def test_cell_keys_are_pinned():
    """Schema-2 keys (no folder) and the schema-1 keys of commit 3848999 (which hashed it)."""
    from semalign.common.config import AlignmentConfig

    spec = sweep_plan.ScenarioSpec(
        "/fixed/latents", "ap_enc", ("user_enc0", "user_enc1"), "0123456789abcdef"
    )
    other = AlignmentConfig(
        strategy="top-k",
        channel_uses=3,
        antennas_tx=2,
        antennas_rx=4,
        snr_db=-10.0,
        csi=False,
        pilot_fraction=0.5,
        task_model="logistic",
        precision="double",
    )
    # the logistic task model (the default until the MLP) keeps its key; the MLP has its own
    logistic = AlignmentConfig(task_model="logistic", precision="double")
    assert sweep_plan.cell_key(spec, "g", logistic) == "77b2ee8b1ee4a562"
    double = AlignmentConfig(precision="double")
    assert sweep_plan.cell_key(spec, "g", double) == "a9e907cecad0e01f"
    # a baseline's key hashes its selection order (native): the whitened-symbol cells of older
    # versions (key f07650c88f0607a3 for this one) are other cells, never reused
    assert sweep_plan.cell_key(spec, "g", other) == "05c575c75652affb"
    moved = sweep_plan.ScenarioSpec("/elsewhere", spec.ap, spec.users, spec.fingerprint)
    assert sweep_plan.cell_key(moved, "g", other) == "05c575c75652affb"
    # a baseline does not read the ADMM rounds' fields: the same cell whatever they are (an
    # ADMM strategy does not read the baselines' fit); the schema-1 key hashed them as given
    admm_only = {"iterations": 5, "rho": 2.0, "protocol": "compact", "precision": "single"}
    assert sweep_plan.cell_key(spec, "g", other.model_copy(update=admm_only)) == "05c575c75652affb"
    fit = AlignmentConfig(
        task_model="logistic",
        precision="double",
        baseline_fit="full",
        topk_index_cost="channel-uses",
    )
    assert sweep_plan.cell_key(spec, "g", fit) == "77b2ee8b1ee4a562"
    legacy = sweep_plan.legacy_cell_key
    assert legacy(spec, "g", logistic, "/fixed/latents") == "af3e688a4abc14fa"
    assert legacy(spec, "g", AlignmentConfig(), "/fixed/latents") is None  # not in schema 1
    # schema-1 baselines (whitened-symbol selection) are never re-keyed onto today's cells
    assert legacy(spec, "g", other, "/fixed/latents") is None
    fed = other.model_copy(update={"strategy": "fed"})
    assert legacy(spec, "g", fed, "/fixed/latents") not in (None, legacy(spec, "g", fed, "/x"))
    five = legacy(spec, "g", fed.model_copy(update={"iterations": 5}), "/fixed/latents")
    assert five not in (None, legacy(spec, "g", fed, "/fixed/latents"))


def test_a_config_field_added_later_keeps_the_keys():
    """A field added to AlignmentConfig enters a key only when it is not at its default."""
    from semalign.common.config import AlignmentConfig

    class Extended(AlignmentConfig):
        new_knob: int = 0

    spec = sweep_plan.ScenarioSpec("/x", "ap_enc", ("u",), "f")
    base = sweep_plan.cell_key(spec, "g", AlignmentConfig(rho=2.0))
    assert sweep_plan.cell_key(spec, "g", Extended(rho=2.0)) == base
    assert sweep_plan.cell_key(spec, "g", Extended(rho=2.0, new_knob=1)) != base
    assert sweep_plan.legacy_cell_key(spec, "g", Extended(new_knob=1), "/x") is None


def test_a_table_has_one_writer(tmp_path):
    table = tmp_path / "t.csv"
    with ResultsTable(table), pytest.raises(SweepError, match="being written by another sweep"):
        with ResultsTable(table):
            pass
    with ResultsTable(table):  # released
        pass


def test_outline_knows_the_geometry_from_the_ap_alone(latents):
    from semalign.common.latents import load_split

    grid = tiny_grid(channel_uses=(1, 4), antennas=("1x1", "4x4"))
    blind = sweep_plan.outline(grid, "ap_enc")
    assert (blind.d_ap, blind.cells, blind.runs, blind.skipped) == (None, 8, 16, [])
    known = sweep_plan.outline(grid, "ap_enc", load_split(latents, "ap_enc", "train").latents)
    assert (known.d_ap, known.cells, len(known.skipped)) == (16, 6, 2)


def test_dry_run_on_a_cold_cache_encodes_nothing(tmp_path, monkeypatch, capsys):
    import semalign.encoders.cache as cache

    def no_encoding(*args, **kwargs):
        raise AssertionError("a dry run must not encode")

    monkeypatch.setattr(cache, "encode", no_encoding)
    monkeypatch.setattr(cache, "ensure_latents", no_encoding)
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "cache"
    empty.mkdir()
    assert main(["sweep", "--preset", "fig2", "--cache-dir", str(empty), "--dry-run"]) == 0
    assert [p for p in tmp_path.rglob("*") if p != empty] == []
    err = capsys.readouterr().err
    assert "84 cell(s) x 6 seed(s) = 504 run(s)" in err and "not encoded yet" in err
    assert "would encode 11 encoder(s)" in err and "vit_tiny_patch16_224 (not cached)" in err
    # a bad value still fails before anything
    assert main(["sweep", "--cache-dir", str(empty), "--dry-run", "--ap", "nosuch"]) == 2


def test_interrupting_a_pool_ends_its_workers(latents, tmp_path):
    import psutil

    plan = tiny_plan(latents, strategies=("first-k", "top-k"))
    table = tmp_path / "t.csv"

    def interrupt(run, rows, error):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(plan, table, workers=2, on_run=interrupt)
    assert len(read_table(table).complete) == 1
    workers = [
        p
        for p in psutil.Process().children(recursive=True)
        if p.is_running()
        and p.status() != psutil.STATUS_ZOMBIE
        and "spawn_main" in " ".join(p.cmdline())
    ]
    assert not workers  # (multiprocessing's resource tracker may stay: it is not a worker)


# ---------------------------------------------------------------------------- tracked runs
def test_rows_carry_the_runs_provenance(latents, tmp_path):
    import socket
    from datetime import datetime, timedelta, timezone

    import semalign

    before = datetime.now(timezone.utc).replace(microsecond=0)
    table = tmp_path / "t.csv"
    run_sweep(tiny_plan(latents, strategies=("first-k",)), table)
    rows = read_table(table).rows
    assert len(rows) == 4
    for row in rows:
        assert row["semalign_version"] == semalign.__version__
        assert row["host"] == socket.gethostname()
        started = datetime.fromisoformat(row["started_at"])
        assert started.tzinfo is not None and started.utcoffset() == timedelta(0)
        assert before <= started <= datetime.now(timezone.utc)
        commit = row["git_commit"]
        assert commit == "" or (len(commit) == 40 and int(commit, 16) >= 0)


def test_provenance_never_fails_without_git(tmp_path, monkeypatch):
    from semalign.experiments import provenance

    block = provenance.run_provenance()
    assert list(block) == list(PROVENANCE_KEYS)
    uncached = provenance.git_commit.__wrapped__
    assert uncached(tmp_path) is None  # not a checkout
    (tmp_path / ".git").write_text("gitdir: /nonexistent\n")
    assert uncached(tmp_path) is None  # a broken checkout: git fails
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert uncached(provenance._SOURCE_ROOT) is None  # no git binary


def test_a_moved_cache_finds_its_cells_complete(latents, tmp_path):
    import shutil

    table = tmp_path / "t.csv"
    first = run_sweep(tiny_plan(latents), table)
    assert first.done == 4
    moved = tmp_path / "moved" / "latents"
    shutil.copytree(latents, moved)
    plan = tiny_plan(moved)
    assert {r.spec.latents_dir for r in plan.runs} == {str(moved.resolve())}
    again = run_sweep(plan, table)
    assert (again.done, again.already_done) == (0, 4)
    assert len(read_table(table).rows) == 8


def v1_run(run):
    """``run`` as a version before latents fingerprint 2 keyed it (older tables' keys all are)."""
    spec = run.spec
    return as_v1(run, latents_fingerprint_v1(spec.latents_dir, [spec.ap, *spec.users]))


def _as_schema1(table: Path, plan, keep: int) -> None:
    """Rewrite ``table`` as the previous version wrote it: schema-1 columns and keys, and only
    the first ``keep`` runs."""
    legacy = {r.key: sweep_plan.legacy_run_key(v1_run(r), r.spec.latents_dir) for r in plan.runs}
    rows = read_table(table).rows
    kept_runs = list(dict.fromkeys(r["run_key"] for r in rows))[:keep]
    with open(table, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(V1_COLUMNS)
        for row in rows:
            if row["run_key"] not in kept_runs:
                continue
            # a baseline has no schema-1 key today (it selected among whitened symbols then):
            # give its rows a key of their own, as that version would have
            old = legacy[row["run_key"]] or f"whitened{row['cell_key']}-{row['seed']}"
            row = {**row, "run_key": old, "cell_key": old.rpartition("-")[0]}
            row["latents_id"] = v1_run(plan.runs[0]).spec.fingerprint  # the id of then
            writer.writerow(["" if row[c] is None else str(row[c]) for c in V1_COLUMNS])


def test_a_schema1_table_loads_and_resumes(latents, tmp_path):
    import shutil

    # schema 1 knew one task model, the logistic one, and one precision, double: only their
    # cells can be in such a table
    old_cells = {"task_models": ("logistic",), "strategies": ("fed",), "axes": DOUBLE}
    plan = tiny_plan(latents, **old_cells, channel_uses=(1, 2))
    table = tmp_path / "t.csv"
    run_sweep(plan, table)
    _as_schema1(table, plan, keep=3)
    old = read_table(table)
    assert old.schema == 1 and len(old.complete) == 3 and len(old.rows) == 6
    assert all(r[k] == "" for r in old.rows for k in PROVENANCE_KEYS)
    # the sweep resumes it from a moved cache: three runs re-keyed, one run done
    moved = tmp_path / "moved"
    shutil.copytree(latents, moved)
    summary = run_sweep(tiny_plan(moved, **old_cells, channel_uses=(1, 2)), table)
    assert (summary.rekeyed, summary.done, summary.already_done) == (3, 1, 3)
    new = read_table(table)
    assert new.schema == TABLE_SCHEMA and new.complete == {r.key for r in plan.runs}
    assert len(new.rows) == 8 and all(
        r["run_key"] == f"{r['cell_key']}-{r['seed']}" for r in new.rows
    )
    assert {r["latents_id"] for r in new.rows} == {plan.runs[0].spec.fingerprint}  # version 2
    assert sum(1 for r in new.rows if r["host"]) == 2  # the one new run's two users
    with open(table, newline="") as fh:
        assert next(csv.reader(fh)) == list(COLUMNS)
    again = run_sweep(plan, table)
    assert (again.done, again.already_done, again.rekeyed) == (0, 4, 0)


def test_old_baseline_rows_are_kept_labelled_and_never_reused(latents, tmp_path):
    """A schema-1 table's First-K rows selected among whitened symbols: they stay in the table,
    read as ``whitened-symbols``, and the sweep runs the native-selection cells anew."""
    plan = tiny_plan(latents, task_models=("logistic",), axes=DOUBLE)
    table = tmp_path / "t.csv"
    run_sweep(plan, table)
    _as_schema1(table, plan, keep=4)
    old = read_table(table)
    assert {r["baseline_selection"] for r in old.rows if r["strategy"] == "first-k"} == {
        "whitened-symbols"
    }
    assert {r["baseline_selection"] for r in old.rows if r["strategy"] == "fed"} == {""}
    summary = run_sweep(plan, table)
    assert (summary.rekeyed, summary.done, summary.already_done) == (2, 2, 2)
    rows = read_table(table).rows
    by = {(r["strategy"], r["baseline_selection"]) for r in rows}
    assert by == {("fed", ""), ("first-k", "whitened-symbols"), ("first-k", "native")}
    assert len(rows) == 12  # 4 runs of the old table + 2 new native First-K runs, 2 users each


def test_a_table_of_a_newer_schema_is_refused(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text(",".join([*COLUMNS, "future_column"]) + "\n")
    with pytest.raises(SweepError, match="newer semalign"):
        read_table(table)


# ---------------------------------------------------------------------------- scale-out
#: Columns that differ between two runs of the same work: timings and when it started.
TIMING = {"seconds", "started_at"}


def test_ray_table_equals_the_local_table(latents, tmp_path):
    """One local Ray instance (2 CPUs): the same rows as the local executor, written by the
    driver, and a second call finds everything done (Ray start-up is slow: one test only)."""
    pytest.importorskip("ray", reason="ray is not installed (pip install 'semalign[ray]')")
    plan = tiny_plan(latents, strategies=("fed", "first-k", "top-k"))
    local, ray_table = tmp_path / "local.csv", tmp_path / "ray.csv"
    run_sweep(plan, local, workers=1)
    summary = run_sweep(plan, ray_table, workers=2, executor="ray")
    assert (summary.done, summary.failed) == (6, [])

    def rows(path: Path) -> list[dict]:
        out = [{k: v for k, v in r.items() if k not in TIMING} for r in read_table(path).rows]
        return sorted(out, key=lambda r: (r["run_key"], r["user"]))

    got, want = rows(ray_table), rows(local)
    assert len(got) == len(want) == 12
    for g, w in zip(got, want, strict=True):
        diff = {k: (g[k], w[k]) for k in w if not _same(str(g[k]), str(w[k]))}
        assert not diff, diff
    # resumable as the local executor: nothing left to do, Ray not even started
    again = run_sweep(plan, ray_table, workers=2, executor="ray")
    assert (again.done, again.already_done) == (0, 6)


def test_runs_keyed_on_fields_their_strategy_ignores_are_rekeyed_not_rerun(latents, tmp_path):
    """A table written before cell keys left out the fields a strategy does not read (fed cells
    of a sweep with --baseline-fit full hashed it) resumes: its runs are re-keyed, none re-run."""
    plan = tiny_plan(latents, strategies=("fed",), baseline_fit="full")
    previous = {r.key: sweep_plan.previous_run_key(v1_run(r)) for r in plan.runs}
    assert all(previous.values()) and all(k != v for k, v in previous.items())
    table = tmp_path / "t.csv"
    run_sweep(plan, table)
    rows = read_table(table).rows
    with open(table, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in rows:
            old = previous[row["run_key"]]
            row = {**row, "run_key": old, "cell_key": old.rpartition("-")[0]}
            row["latents_id"] = v1_run(plan.runs[0]).spec.fingerprint  # the id of then
            writer.writerow(["" if row[c] is None else str(row[c]) for c in COLUMNS])
    summary = run_sweep(plan, table)
    assert (summary.rekeyed, summary.done, summary.already_done) == (2, 0, 2)
    assert read_table(table).complete == {r.key for r in plan.runs}
