"""The latents fingerprint (``latents_id``, version 2): each distinct file hashed once per
process, whatever the number of users listing its encoder; and a sweep table keyed with the
version-1 fingerprint re-keyed (its fingerprint rewritten), rows of other latents named once."""

from __future__ import annotations

import builtins
import csv
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from semalign.common import latents
from synthetic import make_latents

from semalign.experiments import plan as sweep_plan
from semalign.experiments.grid import grid_from_options
from semalign.experiments.plan import make_plan, resolve_groups
from semalign.experiments.rekey import as_v1
from semalign.experiments.runner import run_sweep
from semalign.experiments.table import COLUMNS, read_table


def _age(root: Path, seconds: float = 100.0) -> None:
    """Every file under ``root`` last modified ``seconds`` ago (its ctime is now)."""
    when = time.time() - seconds
    for path in root.rglob("*.npz"):
        os.utime(path, (when, when))


class _LaterClock:
    """``time`` as :mod:`semalign.common.latents` sees it: ``seconds`` on, so a file whose
    ctime is now counts as changed that long ago (settled)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def time(self) -> float:
        return time.time() + self.seconds


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A settled synthetic cache (an AP and two user encoders, no classifier files), an empty
    digest memo, and the list of files this module opens."""
    root, ap, users = make_latents(tmp_path / "lat", n_train=40, n_test=20)
    _age(root)
    monkeypatch.setattr(latents, "time", _LaterClock(100.0))  # the ctimes settled too
    monkeypatch.setattr(latents, "_FILE_DIGESTS", {})
    opened: list[str] = []

    def counting_open(path, *args, **kwargs):
        opened.append(Path(path).name if "rb" in args else str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(latents, "open", counting_open, raising=False)
    return root, ap, users, opened


def test_each_distinct_file_is_read_once(cache):
    root, ap, users, opened = cache
    listed = [ap, *(users * 5)]  # 11 users' entries, 3 encoders
    first = latents.latents_fingerprint(root, listed)
    assert len(opened) == 3 * 2  # train and test of each encoder (no classifier file here)
    assert latents.latents_fingerprint(root, listed) == first
    assert len(opened) == 6  # all memoized
    opened.clear()
    latents.latents_fingerprint_v1(root, listed)
    assert len(opened) == 11 * 2  # what version 1 read: every listed entry


def test_a_changed_file_is_read_again_and_changes_the_id(cache):
    root, ap, users, opened = cache
    listed = [ap, *users]
    first = latents.latents_fingerprint(root, listed)
    path = root / users[1] / "test.npz"
    with np.load(path) as data:
        lat, labels = data["latents"].copy(), data["labels"]
    lat[0, 0] += 1.0
    np.savez(path, latents=lat, labels=labels)  # same size, in place
    when = time.time() - 50
    os.utime(path, (when, when))
    opened.clear()
    assert latents.latents_fingerprint(root, listed) != first
    assert opened == ["test.npz"]


def test_a_file_changed_just_now_is_not_memoized(cache):
    root, ap, users, opened = cache
    now = latents.time.time()  # now on the module's clock
    os.utime(root / ap / "train.npz", (now, now))  # could be rewritten within its tick
    latents.latents_fingerprint(root, [ap])
    latents.latents_fingerprint(root, [ap])
    assert opened.count("train.npz") == 2 and opened.count("test.npz") == 1


def test_a_copy_keeping_its_mtime_is_not_memoized_at_once(cache, monkeypatch):
    root, ap, _, opened = cache
    monkeypatch.setattr(latents, "time", time)  # the real clock: the copy's ctime is now
    copy = root.parent / "copied"
    shutil.copytree(root / ap, copy / ap)  # cp -p: the old mtime kept, a fresh ctime
    assert (copy / ap / "train.npz").stat().st_mtime < time.time() - 50
    latents.latents_fingerprint(copy, [ap])
    latents.latents_fingerprint(copy, [ap])
    assert opened.count("train.npz") == 2 and opened.count("test.npz") == 2


def test_the_id_is_versioned_and_follows_the_list(cache, monkeypatch):
    root, ap, users, _ = cache
    listed = [ap, *users]
    first = latents.latents_fingerprint(root, listed)
    assert len(first) == 16 and int(first, 16) >= 0
    assert first != latents.latents_fingerprint_v1(root, listed)
    assert latents.latents_fingerprint(root, [ap, users[1], users[0]]) != first  # order
    assert latents.latents_fingerprint(root, [*listed, users[0]]) != first  # one more user
    assert sweep_plan.latents_fingerprint(root, listed) == first  # the cell keys' id
    copy = root.parent / "copy"
    shutil.copytree(root, copy)
    assert latents.latents_fingerprint(copy, listed) == first  # content, not the folder
    (copy / users[0] / "classifier.npz").write_bytes(b"x")  # a file that was missing
    assert latents.latents_fingerprint(copy, listed) != first
    monkeypatch.setattr(latents, "FINGERPRINT_VERSION", "v3")
    assert latents.latents_fingerprint(root, listed) != first  # the version is hashed in


# ----------------------------------------------------------------------------- sweep tables


def _plan(root: Path, ap: str, users: list[str], strategies: tuple[str, ...] = ("fed",)):
    fields = {"strategies": strategies, "channel_uses": (1, 2), "antennas": ("2x2",)}
    fields.update(seeds=(3,), groups=("+".join(users),), iterations=2, ap=ap)
    grid = grid_from_options(None, fields)
    return make_plan(grid, root, resolve_groups(grid.groups, latents_given=True)[0])


def _as_version1(table: Path, plan) -> str:
    """Rewrite ``table`` as the version before fingerprint 2 wrote it: its keys and its
    ``latents_id`` made with the version-1 fingerprint; returns that fingerprint."""
    spec = plan.runs[0].spec
    old_id = latents.latents_fingerprint_v1(spec.latents_dir, [spec.ap, *spec.users])
    keys = {r.key: as_v1(r, old_id) for r in plan.runs}
    rows = read_table(table).rows
    with open(table, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(COLUMNS)
        for row in rows:
            old = keys[row["run_key"]]
            row = {**row, "run_key": old.key, "cell_key": old.cell_key, "latents_id": old_id}
            writer.writerow(["" if row[c] is None else str(row[c]) for c in COLUMNS])
    return old_id


def test_a_version1_table_is_rekeyed_not_run_again(tmp_path, caplog):
    root, ap, users = make_latents(tmp_path / "lat", n_train=120, n_test=30)
    plan = _plan(root, ap, users)
    table = tmp_path / "t.csv"
    assert run_sweep(plan, table).done == 2
    old_id = _as_version1(table, plan)
    assert old_id != plan.runs[0].spec.fingerprint
    assert read_table(table).complete.isdisjoint(r.key for r in plan.runs)
    with caplog.at_level(logging.WARNING):
        summary = run_sweep(plan, table)
    assert (summary.rekeyed, summary.done, summary.already_done) == (2, 0, 2)
    assert not caplog.records  # the same latents: nothing to warn about
    rows = read_table(table).rows
    assert {r["latents_id"] for r in rows} == {plan.runs[0].spec.fingerprint}
    assert {r["run_key"] for r in rows} == {r.key for r in plan.runs}


def test_rows_of_other_latents_get_one_warning(tmp_path, caplog):
    root, ap, users = make_latents(tmp_path / "lat", n_train=120, n_test=30)
    table = tmp_path / "t.csv"
    first = _plan(root, ap, users)
    run_sweep(first, table)
    make_latents(tmp_path / "lat", n_train=120, n_test=30, seed=5)  # re-encoded in place
    again = _plan(root, ap, users)
    assert again.runs[0].spec.fingerprint != first.runs[0].spec.fingerprint
    with caplog.at_level(logging.WARNING):
        summary = run_sweep(again, table)
    assert (summary.rekeyed, summary.done) == (0, 2)
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    text = record.getMessage()
    assert "2 finished run(s)" in text and "other latents" in text
    assert first.runs[0].spec.fingerprint in text and again.runs[0].spec.fingerprint in text
