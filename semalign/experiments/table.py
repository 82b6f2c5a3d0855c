"""The results table: one CSV row per (cell, seed, user), appended run by run, resumable.

The unit of work and of writing is a *run* (one cell, one seed): its rows are appended in a
single ``write`` followed by ``fsync``, and each row carries the run's key and its row count
(``run_rows``). On reading, a run is trusted only when all its rows are there and parse; a torn
tail left by a crash is dropped (the table is rewritten atomically without it) and that run is
simply done again. Re-running the same sweep therefore skips every finished run.

Schemas (the header tells them apart): 1 had no provenance; 2 adds the channel model and each
run's :func:`~semalign.experiments.provenance.run_provenance` (``semalign_version``,
``git_commit``, ``started_at``, ``host``) as the last columns; 3 adds the research options
(``task_model``, ``target``, ``pilot_selection``, ``user_groups``) after ``channel``; 4 adds
``equalizer`` after them. An older table reads as it is (empty provenance, the research options
of then: a logistic task model, latents, first pilots, one group, linear equalizers); a
sweep that writes to one first rewrites it in this schema (atomically, its rows kept) and
re-keys the runs it finds under their schema-1 keys (:meth:`ResultsTable.rekey`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semalign.common.baselines import LEGACY_SELECTION
from semalign.common.errors import SweepError
from semalign.common.io import atomic_write_text, file_lock
from semalign.common.records import SeedResult
from semalign.common.strategies import get_strategy, strategy_family
from semalign.experiments.grid import LEGACY_RESEARCH_VALUES, antennas_label
from semalign.experiments.plan import Run, zeta
from semalign.experiments.provenance import PROVENANCE_KEYS

log = logging.getLogger(__name__)

#: Columns of a schema-1 table, with their types (for reading back).
#: Columns of schema 1 (tables written before the channel and provenance columns).
V1_COLUMNS: dict[str, type] = {
    "run_key": str,
    "cell_key": str,
    "run_rows": int,
    "strategy": str,
    "antennas": str,
    "antennas_tx": int,
    "antennas_rx": int,
    "channel_uses": int,
    "snr_db": float,
    "group": str,
    "pilot_fraction": float,
    "csi": bool,
    "iterations": int,
    "rho": float,
    "power": float,
    "baseline_fit": str,
    "topk_index_cost": str,
    "ap_encoder": str,
    "latents": str,
    "latents_id": str,
    "d_ap": int,
    "zeta": float,
    "seed": int,
    "user": str,
    "encoder": str,
    "accuracy": float,
    "native_accuracy": float,
    "mse": float,
    "mse_whitened": float,
    "network_mse": float,
    "last_round_mse": float,
    "dropped": str,
    "data_channel_uses": int,
    "index_bits_per_sample": int,
    "index_channel_uses": int,
    "seconds": float,
}

_AFTER_CSI = tuple(list(V1_COLUMNS)[list(V1_COLUMNS).index("iterations") :])

#: Columns of the results table (schema 2): schema 1's with the channel model after ``csi``,
#: then the run's provenance. Schema-1 rows are read with channel ``rayleigh`` (the only
#: channel then) and empty provenance.
COLUMNS: dict[str, type] = {
    **{k: v for k, v in V1_COLUMNS.items() if k not in _AFTER_CSI},
    "channel": str,
    **{k: v for k, v in V1_COLUMNS.items() if k in _AFTER_CSI},
    **{key: str for key in PROVENANCE_KEYS},
}

#: Columns of schema 3: the research options, after ``channel``. Older rows read with the
#: values they ran (:data:`~semalign.experiments.grid.LEGACY_RESEARCH_VALUES`).
RESEARCH_COLUMNS_V3: dict[str, type] = {
    "task_model": str,
    "target": str,
    "pilot_selection": str,
    "user_groups": int,
}
#: Schema 4 adds the equalizer (linear or widely-linear) after them.
RESEARCH_COLUMNS: dict[str, type] = {**RESEARCH_COLUMNS_V3, "equalizer": str}


def _with_research(columns: dict[str, type], research: dict[str, type]) -> dict[str, type]:
    """Schema 2's ``columns`` with the ``research`` columns after ``channel``."""
    return {
        **{k: v for k, v in columns.items() if k not in _AFTER_CSI and k not in PROVENANCE_KEYS},
        **research,
        **{k: v for k, v in columns.items() if k in _AFTER_CSI or k in PROVENANCE_KEYS},
    }


V2_COLUMNS = COLUMNS
V3_COLUMNS = _with_research(V2_COLUMNS, RESEARCH_COLUMNS_V3)
V4_COLUMNS = _with_research(V2_COLUMNS, RESEARCH_COLUMNS)


def _with_selection(columns: dict[str, type]) -> dict[str, type]:
    """Schema 4's ``columns`` with ``baseline_selection`` after ``topk_index_cost``."""
    out: dict[str, type] = {}
    for name, kind in columns.items():
        out[name] = kind
        if name == "topk_index_cost":
            out["baseline_selection"] = str
    return out


#: Schema 5 adds the baselines' selection order (``native``; empty for ADMM strategies) after
#: ``topk_index_cost``. Baseline rows of older tables read as ``whitened-symbols``, the order
#: they ran (:data:`semalign.common.baselines.LEGACY_SELECTION`).
COLUMNS = _with_selection(V4_COLUMNS)

#: The table schema written now, and each schema's header.
TABLE_SCHEMA = 5
SCHEMAS: dict[int, list[str]] = {
    1: list(V1_COLUMNS),
    2: list(V2_COLUMNS),
    3: list(V3_COLUMNS),
    4: list(V4_COLUMNS),
    5: list(COLUMNS),
}


def read_seed(block: SeedResult) -> dict[str, Any]:
    """What the table keeps of one seed's results (:func:`simulate_seed`'s record).

    The one place that reads it: run-level values, the baselines' accounting (``baseline``,
    empty for ADMM strategies) and one dict of table columns per user.
    """
    final = block.phases.get("final")
    last_round = block.rounds[-1].mse if block.rounds else None
    users = [
        {
            "user": user.name,
            "encoder": user.encoder,
            "accuracy": user.accuracy,
            "native_accuracy": user.native_accuracy,
            "mse": user.mse,
            "mse_whitened": user.mse_whitened,
            "dropped": user.dropped or "",
        }
        for user in block.users
    ]
    network_mse = final.final.mse if final is not None and final.final is not None else last_round
    return {
        "network_mse": network_mse,
        "last_round_mse": last_round,
        "baseline": block.strategy_info.get("baseline", {}),
        "seconds": block.seconds,
        "users": users,
    }


def rows_from_seed(
    run: Run, block: SeedResult, provenance: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The table rows of one run's results block (one per user), with the run's provenance
    (:func:`~semalign.experiments.provenance.run_provenance`; empty columns without it)."""
    cfg = run.config
    spec = get_strategy(cfg.strategy)
    seed = read_seed(block)
    base = seed["baseline"]
    common = {
        "run_key": run.key,
        "cell_key": run.cell_key,
        "run_rows": len(seed["users"]),
        "strategy": cfg.strategy,
        "antennas": antennas_label(cfg.antennas_tx, cfg.antennas_rx),
        "antennas_tx": cfg.antennas_tx,
        "antennas_rx": cfg.antennas_rx,
        "channel_uses": cfg.channel_uses,
        "snr_db": cfg.snr_db,
        "group": run.group,
        "pilot_fraction": cfg.pilot_fraction,
        "csi": cfg.csi,
        "channel": cfg.channel.describe(),
        **{name: getattr(cfg, name) for name in RESEARCH_COLUMNS},
        "iterations": cfg.iterations if spec.has_rounds else 0,
        "rho": cfg.rho,
        "power": cfg.power,
        "baseline_fit": cfg.baseline_fit if base else "",
        "topk_index_cost": cfg.topk_index_cost if spec.index_bits else "",
        "baseline_selection": base.get("selection", "") if base else "",
        "ap_encoder": run.spec.ap,
        "latents": run.spec.latents_dir,
        "latents_id": run.spec.fingerprint,
        "d_ap": run.d_ap,
        "zeta": zeta(cfg.channel_uses, run.d_ap),
        "seed": cfg.seed,
        "network_mse": seed["network_mse"],
        "last_round_mse": seed["last_round_mse"],
        "data_channel_uses": base.get("data_channel_uses", cfg.channel_uses),
        "index_bits_per_sample": base.get("index_bits_per_sample", 0),
        "index_channel_uses": base.get("index_channel_uses", 0),
        "seconds": seed["seconds"],
        **{key: (provenance or {}).get(key) for key in PROVENANCE_KEYS},
    }
    return [{**common, **user} for user in seed["users"]]


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return str(value)


def _parse(column: str, text: str) -> Any:
    kind = COLUMNS[column]
    if kind is str:
        return text
    if text == "":
        if kind is float:
            return float("nan")
        raise ValueError(f"empty {column}")
    if kind is bool:
        if text not in ("True", "False"):
            raise ValueError(f"bad bool {text!r}")
        return text == "True"
    return kind(text)


#: What a column an older schema lacks held then: schema 1 knew Rayleigh channels only, and
#: schemas 1 and 2 the paper's research options only.
_OLDER_DEFAULTS: dict[str, Any] = {"channel": "rayleigh", **LEGACY_RESEARCH_VALUES}


def _parse_row(raw: dict[str, str | None]) -> dict[str, Any]:
    """A row of any schema as a row of this one (columns it lacks are empty)."""
    if None in raw or any(v is None for v in raw.values()):
        raise ValueError("wrong number of fields")
    older = {c: v for c, v in _OLDER_DEFAULTS.items() if c not in raw}
    if "baseline_selection" not in raw:
        older["baseline_selection"] = (
            LEGACY_SELECTION if strategy_family(raw.get("strategy") or "") == "baseline" else ""
        )
    row = {c: _parse(c, raw.get(c, "")) for c in COLUMNS if c not in older}
    return {**row, **older}


@dataclass
class TableContents:
    """What a table holds: complete runs' rows, and what had to be dropped."""

    rows: list[dict[str, Any]]
    complete: set[str]
    dropped_lines: int
    torn_tail: bool
    schema: int = TABLE_SCHEMA

    @property
    def legacy(self) -> bool:
        """Written by an older schema (rewritten in this one before a sweep appends)."""
        return self.schema != TABLE_SCHEMA


def read_table(path: str | Path) -> TableContents:
    """Rows of the complete runs in ``path`` (partial runs and a torn last line are left out),
    in this schema's columns whichever schema the file has.

    Raises:
        SweepError: the file is not a results table of a schema this version reads.
    """
    path = Path(path)
    if not path.exists():
        raise SweepError(f"results table {path} does not exist")
    text = path.read_text(encoding="utf-8", errors="replace")
    torn = bool(text) and not text.endswith("\n")
    if torn:
        text = text[: text.rfind("\n") + 1]
    if not text.strip():
        return TableContents([], set(), 0, torn)
    reader = csv.DictReader(io.StringIO(text))
    schema = _schema_of(path, reader.fieldnames or [])
    by_run: dict[str, list[dict[str, Any]]] = {}
    bad_runs: set[str] = set()
    bad_lines = 0
    for raw in reader:
        key = raw.get("run_key") or ""
        try:
            row = _parse_row(raw)
        except (ValueError, TypeError):
            bad_lines += 1
            bad_runs.add(key)
            continue
        by_run.setdefault(key, []).append(row)
    rows: list[dict[str, Any]] = []
    complete: set[str] = set()
    dropped = bad_lines
    for key, run_rows in by_run.items():
        expected = run_rows[0]["run_rows"]
        if key in bad_runs or len(run_rows) != expected:
            # Partial (crash mid-write) or duplicated: not trusted.
            if len(run_rows) == 2 * expected and key not in bad_runs:
                rows.extend(run_rows[:expected])  # the same run written twice: keep one
                complete.add(key)
                dropped += expected
                continue
            dropped += len(run_rows)
            continue
        rows.extend(run_rows)
        complete.add(key)
    return TableContents(rows, complete, dropped, torn, schema)


def _schema_of(path: Path, header: list[str]) -> int:
    """The schema whose columns ``header`` are; SweepError for any other header."""
    for schema, columns in SCHEMAS.items():
        if header == columns:
            return schema
    if header[: len(COLUMNS)] == list(COLUMNS):
        raise SweepError(
            f"{path} was written by a newer semalign (its table has more columns than schema "
            f"{TABLE_SCHEMA}); upgrade semalign to read it"
        )
    raise SweepError(
        f"{path} is not a semalign sweep table (its columns differ from schemas "
        f"{', '.join(map(str, SCHEMAS))}); use another --table"
    )


class ResultsTable:
    """The CSV results table, opened for appending whole runs (one writer at a time).

    Use as a context manager: takes an exclusive lock (``<table>.lock``, not waiting: a table
    another sweep is writing is an error), repairs a table left by a crash (rewritten atomically
    with only complete runs) and exposes :attr:`complete`, the run keys already done.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.complete: set[str] = set()
        #: The latent folders the complete runs read (the ``latents`` column), for re-keying.
        self.latents_dirs: set[str] = set()
        #: (AP encoder, group, latents_id) of the complete runs -> how many, for re-keying.
        self.fingerprints: dict[tuple[str, str, str], int] = {}
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> ResultsTable:
        stack = contextlib.ExitStack()
        lock = self.path.with_name(self.path.name + ".lock")
        if not stack.enter_context(file_lock(lock, blocking=False)):
            stack.close()
            raise SweepError(f"{self.path} is being written by another sweep")
        self._stack = stack
        try:
            self._open()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _open(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            self._rewrite([])
            return
        contents = read_table(self.path)
        self.complete = contents.complete
        self.latents_dirs = {row["latents"] for row in contents.rows}
        self.fingerprints = _fingerprints(contents.rows)
        if contents.torn_tail or contents.dropped_lines:
            log.warning(
                "%s: dropped %d row(s) of unfinished runs%s; they will run again",
                self.path,
                contents.dropped_lines,
                " and a torn last line" if contents.torn_tail else "",
            )
            self._rewrite(contents.rows)
        elif contents.schema != TABLE_SCHEMA:
            log.info(
                "%s: table of schema %d rewritten in schema %d (%d row(s) kept)",
                self.path,
                contents.schema,
                TABLE_SCHEMA,
                len(contents.rows),
            )
            self._rewrite(contents.rows)

    def rekey(
        self, renames: dict[str, tuple[str, str]], latents_ids: dict[str, str] | None = None
    ) -> int:
        """Give complete runs new keys: ``{old run_key: (run_key, cell_key)}``; rewrites the
        table atomically when any of them is there. Returns the number of runs re-keyed.
        ``latents_ids`` (old -> new) renames the fingerprint of the re-keyed rows (the same
        latents under a newer fingerprint version).

        A new key already complete in the table is left alone (its old-key rows stay), so no
        run is ever there twice.
        """
        renames = {
            old: new
            for old, new in renames.items()
            if old in self.complete and new[0] not in self.complete and old != new[0]
        }
        if not renames:
            return 0
        targets: dict[str, str] = {}
        for old, (new_run, _) in sorted(renames.items()):
            targets.setdefault(new_run, old)  # two old runs onto one new key: the first only
        renames = {old: renames[old] for old in targets.values()}
        rows = read_table(self.path).rows
        for row in rows:
            new = renames.get(row["run_key"])
            if new is not None:
                row["run_key"], row["cell_key"] = new
                row["latents_id"] = (latents_ids or {}).get(row["latents_id"], row["latents_id"])
        self._rewrite(rows)
        self.fingerprints = _fingerprints(rows)
        self.complete = (self.complete - set(renames)) | {new for new, _ in renames.values()}
        return len(renames)

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        """Replace the table with ``rows`` atomically (fsync of the file and its folder)."""
        atomic_write_text(self.path, _csv_text(rows, header=True))

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Append one run's rows in a single write, then fsync."""
        if not rows:
            return
        data = _csv_text(rows, header=False).encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        self.complete.add(rows[0]["run_key"])

    def __exit__(self, *exc: object) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None


def _fingerprints(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, str, str], int]:
    """(AP encoder, group, latents_id) -> the number of runs with rows of it."""
    runs: dict[tuple[str, str, str], set[str]] = {}
    for row in rows:
        key = (row["ap_encoder"], row["group"], row["latents_id"])
        runs.setdefault(key, set()).add(row["run_key"])
    return {key: len(keys) for key, keys in runs.items()}


def _csv_text(rows: Iterable[dict[str, Any]], *, header: bool) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_format(row.get(c)) for c in COLUMNS])
    return out.getvalue()
