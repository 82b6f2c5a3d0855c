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
Runs found are re-keyed and their ``latents_id`` set to the version-2 value: the same latents
then have one fingerprint in the table. Rows of a plan's group made from other latents (neither
fingerprint: the cache was re-encoded) are not reused, and one warning per fingerprint says so.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

from semalign.common.latents import latents_fingerprint_v1
from semalign.experiments.plan import (
    Plan,
    Run,
    ScenarioSpec,
    cell_key,
    legacy_run_key,
    previous_run_key,
    run_key,
)
from semalign.experiments.table import ResultsTable

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
    return renames


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
