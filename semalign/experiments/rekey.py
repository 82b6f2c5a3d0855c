"""An older table's runs found under the keys they were written with, so a sweep re-keys them
instead of running them again.

A run's key hashes its cell (:mod:`semalign.experiments.plan`), and the way a key is made has
changed three times. Each older form is looked up for a plan's run the table does not hold:

* schema 1 hashed the latents' folder (:func:`~semalign.experiments.plan.legacy_run_key`, for
  every folder the table names);
* keys hashed the fields a strategy does not read
  (:func:`~semalign.experiments.plan.previous_run_key`);
* every key hashed the latents fingerprint of version 1
  (:func:`~semalign.common.latents.latents_fingerprint_v1`), before version 2 hashed each file
  once.

All three forms come from tables written before version 2, so all are made with the version-1
fingerprint. That fingerprint reads every listed user's files (what version 2 avoids), so it
is computed only for a group whose rows in the table carry a fingerprint other than the plan's.
Once a group's version-1 fingerprint is found, every row of the table carrying it is re-keyed,
not only the plan's runs: a row's run is rebuilt from its own columns
(:func:`run_of_row`) and kept only when its old key is one that run had. Runs found are
re-keyed and their ``latents_id`` set to the version-2 value: the same latents then have one
fingerprint in the table, and version 1 is computed once per table (a row whose run its
columns do not say in full, a channel other than the default say, keeps its key and id). Rows
of a plan's group made from other latents (neither fingerprint: the cache was re-encoded) are
not reused, and one warning per fingerprint says so.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from semalign.common.config import AlignmentConfig
from semalign.common.latents import latents_fingerprint_v1
from semalign.experiments.plan import (
    KEY_FIELDS_V1,
    Plan,
    Run,
    ScenarioSpec,
    cell_key,
    legacy_run_key,
    previous_run_key,
    run_key,
    unused_fields,
)
from semalign.experiments.table import RESEARCH_COLUMNS, ResultsTable, read_table

log = logging.getLogger(__name__)


@dataclass
class Renames:
    """What a plan finds of itself in an older table.

    Attributes:
        runs: old run key -> (run key, cell key) of the plan.
        latents_ids: version-1 fingerprint -> the plan's version-2 fingerprint of the same
            latents (for the re-keyed rows' ``latents_id``).
    """

    runs: dict[str, tuple[str, str]] = field(default_factory=dict)
    latents_ids: dict[str, str] = field(default_factory=dict)


def as_v1(run: Run, fingerprint_v1: str) -> Run:
    """``run`` as a version before fingerprint 2 keyed it: its latents under ``fingerprint_v1``."""
    spec = dataclasses.replace(run.spec, fingerprint=fingerprint_v1)
    return dataclasses.replace(run, spec=spec, cell_key=cell_key(spec, run.group, run.config))


def older_run_keys(run: Run, latents_dirs: set[str]) -> list[str]:
    """Every key ``run`` (made with the version-1 fingerprint: :func:`as_v1`) may have in an
    older table: this schema's, the previous one's, schema 1's for each of ``latents_dirs``."""
    keys = [run_key(run.cell_key, run.config.seed)]
    previous = previous_run_key(run)
    if previous is not None:
        keys.append(previous)
    for folder in sorted(latents_dirs):
        legacy = legacy_run_key(run, folder)
        if legacy is not None:
            keys.append(legacy)
    return keys


def older_runs(plan: Plan, table: ResultsTable) -> Renames:
    """The plan's runs that ``table`` holds under an older key (:func:`older_run_keys`), for
    :meth:`ResultsTable.rekey`; warns about the rows of a plan's group made from other latents."""
    renames = Renames()
    missing = [run for run in plan.runs if run.key not in table.complete]
    if not missing:
        return renames
    v1 = {}  # group -> its version-1 fingerprint, where the table holds rows keyed with it
    for group, spec in plan.specs.items():
        old = _version1_of(table, group, spec)
        if old is not None:
            v1[group] = old
            renames.latents_ids[old] = spec.fingerprint
    for run in missing:
        if run.group not in v1:
            continue
        for old in older_run_keys(as_v1(run, v1[run.group]), table.latents_dirs):
            if old in table.complete:
                renames.runs[old] = (run.key, run.cell_key)
                break
    if v1:
        _rows_carrying(table, plan, v1, renames)
    return renames


#: The table columns a row's :class:`AlignmentConfig` is rebuilt from: schema 1's fields, the
#: research options and the seed (the rest of its fields have no column: a sweep leaves them at
#: their defaults).
_CONFIG_COLUMNS = (*KEY_FIELDS_V1, *RESEARCH_COLUMNS, "seed")


def run_of_row(row: dict[str, Any], spec: ScenarioSpec) -> Run | None:
    """The run a table row (read by :func:`read_table`) of ``spec``'s latents was made by,
    rebuilt from its columns (those its strategy does not read, or empty, at their defaults);
    None when the columns cannot say it (a channel other than the default, an invalid value)."""
    if row.get("channel") not in (None, "", "rayleigh"):
        return None
    unused = set(unused_fields(str(row["strategy"])))
    fields = {
        name: row[name]
        for name in _CONFIG_COLUMNS
        if name not in unused and row.get(name) not in (None, "")
    }
    try:
        config = AlignmentConfig(**fields)
    except (ValidationError, TypeError):
        return None
    group = str(row["group"])
    return Run(cell_key(spec, group, config), group, spec, config, int(row["d_ap"]))


def _rows_carrying(table: ResultsTable, plan: Plan, v1: dict[str, str], renames: Renames) -> None:
    """Add to ``renames`` every complete run of ``table`` whose rows carry a group's version-1
    fingerprint (``v1``: group -> fingerprint), its run rebuilt from its columns and kept where
    its key is one that run had (:func:`older_run_keys`)."""
    seen = set(renames.runs)
    for row in read_table(table.path).rows:
        old, group = row["run_key"], row["group"]
        if old in seen or group not in v1 or row["latents_id"] != v1[group]:
            continue
        seen.add(old)
        spec = plan.specs[group]
        if row["ap_encoder"] != spec.ap:
            continue
        run = run_of_row(row, spec)
        if run is not None and old in older_run_keys(as_v1(run, v1[group]), table.latents_dirs):
            renames.runs[old] = (run.key, run.cell_key)


def _version1_of(table: ResultsTable, group: str, spec: ScenarioSpec) -> str | None:
    """The version-1 fingerprint of ``spec``'s latents when ``group``'s rows in ``table`` carry
    it, else None; one warning for each other fingerprint those rows carry (other latents)."""
    foreign = _foreign(table, group, spec)
    if not foreign:
        return None
    log.info("%s: rows of group %s with another latents fingerprint", table.path, group)
    old = latents_fingerprint_v1(spec.latents_dir, [spec.ap, *spec.users])
    for other, count in sorted(foreign.items()):
        if other != old:
            log.warning(
                "%s: %d finished run(s) of group %s were made from other latents (latents_id "
                "%s; these are %s, %s before fingerprint version 2): not reused",
                table.path,
                count,
                group,
                other,
                spec.fingerprint,
                old,
            )
    return old if old in foreign else None


def _foreign(table: ResultsTable, group: str, spec: ScenarioSpec) -> dict[str, int]:
    """The other fingerprints of ``group``'s rows (same AP encoder) -> their runs."""
    return {
        latents_id: count
        for (ap, label, latents_id), count in table.fingerprints.items()
        if ap == spec.ap and label == group and latents_id != spec.fingerprint
    }
