"""A version-1 sweep table resumed with a plan that holds only some of its runs: every row
carrying the version-1 fingerprint is re-keyed (its run rebuilt from its columns), so the table
has one ``latents_id`` for one set of latents and version 1 is computed once."""

from __future__ import annotations

from semalign.common import latents
from synthetic import make_latents
from test_latents_fingerprint import _as_version1, _plan

from semalign.experiments import rekey
from semalign.experiments.rekey import run_of_row
from semalign.experiments.runner import run_sweep
from semalign.experiments.table import read_table


def test_a_subset_plan_rekeys_every_row_of_the_version1_table(tmp_path, monkeypatch):
    root, ap, users = make_latents(tmp_path / "lat", n_train=120, n_test=30)
    full = _plan(root, ap, users, strategies=("fed", "first-k"))
    table = tmp_path / "t.csv"
    assert run_sweep(full, table).done == 4
    old_id = _as_version1(table, full)
    calls: list[str] = []

    def counting_v1(*args, **kwargs):
        calls.append("v1")
        return latents.latents_fingerprint_v1(*args, **kwargs)

    monkeypatch.setattr(rekey, "latents_fingerprint_v1", counting_v1)
    fed_only = _plan(root, ap, users, strategies=("fed",))
    summary = run_sweep(fed_only, table)
    assert (summary.rekeyed, summary.done, summary.already_done) == (4, 0, 2)
    rows = read_table(table).rows
    assert {r["latents_id"] for r in rows} == {full.runs[0].spec.fingerprint} != {old_id}
    assert {r["run_key"] for r in rows} == {r.key for r in full.runs}
    assert {r["cell_key"] for r in rows} == {r.cell_key for r in full.runs}
    assert calls == ["v1"]
    again = run_sweep(full, table)
    assert (again.rekeyed, again.done, again.already_done) == (0, 0, 4)
    assert calls == ["v1"]  # nothing carries version 1 any more


def test_a_row_rebuilds_its_run(tmp_path):
    root, ap, users = make_latents(tmp_path / "lat", n_train=120, n_test=30)
    plan = _plan(root, ap, users, strategies=("fed", "first-k"))
    table = tmp_path / "t.csv"
    run_sweep(plan, table)
    runs = {r.key: r for r in plan.runs}
    for row in read_table(table).rows:
        rebuilt = run_of_row(row, plan.specs[row["group"]])
        assert rebuilt is not None and rebuilt.key == row["run_key"]
        assert rebuilt.cell_key == runs[row["run_key"]].cell_key
    row = {**read_table(table).rows[0], "channel": "kronecker(rho_tx=0.5,rho_rx=0)"}
    assert run_of_row(row, plan.specs[row["group"]]) is None  # not said in full
