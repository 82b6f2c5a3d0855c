"""Sweep cells: a sweep table's complete runs aggregated per cell over seeds, with bands.

A *cell* is one combination of a sweep's parameters; its runs differ only in the seed. A
:class:`Point` holds the cell's parameters, the mean over seeds of the network accuracy (mean
over users per run), the network and test MSEs, and the per-seed values, from which the band
around each mean is computed: the 95 % t confidence interval (ddof=1), one population standard
deviation, or none (:func:`band_halfwidth`). Drawing lives in :mod:`.figures`.

A point also keeps its cell's *configuration* (:data:`CONFIG_COLUMNS`: every column of the table
that says what ran, not what came out, which run or who ran it), each value ``None`` where it
does not apply (an empty or NaN column, or a field the cell's strategy does not read:
:func:`~semalign.experiments.plan.unused_fields`). :func:`varying_fields` names the columns that
differ within a table; a figure splits its lines on every one of them it does not already plot
(:func:`qualifiers`), and :func:`check_distinct` refuses cells no column tells apart.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semalign.common.errors import UsageError
from semalign.common.stats import finite, nan_mean, nan_std
from semalign.common.strategies import strategy_names
from semalign.experiments.grid import RESEARCH_DEFAULTS
from semalign.experiments.plan import unused_fields
from semalign.experiments.provenance import PROVENANCE_KEYS
from semalign.experiments.table import COLUMNS, RESEARCH_COLUMNS, read_table

#: Bands around the mean over seeds: t confidence interval, +/- one std, none.
BANDS: tuple[str, ...] = ("ci", "std", "none")

_STRATEGY_ORDER = strategy_names()


@dataclass
class Point:
    """One cell: its parameters and the mean/std over seeds."""

    params: dict[str, Any]
    seeds: int
    accuracy: float
    accuracy_std: float
    native: float
    network_mse: float
    network_mse_std: float
    test_mse: float = float("nan")
    test_mse_std: float = float("nan")
    #: Per-seed values (one per run) of ``accuracy``, ``network_mse`` and ``test_mse``.
    samples: dict[str, tuple[float, ...]] = field(default_factory=dict)
    #: The cell's :data:`CONFIG_COLUMNS` (None: does not apply), see :func:`config_of`.
    config: dict[str, Any] = field(default_factory=dict)

    def band(self, metric: str, style: Any) -> float:
        """Half-width of ``metric``'s band around its mean (NaN: no band); ``style`` has the
        ``band`` (one of :data:`BANDS`) and its confidence ``level`` (a ``FigureStyle``)."""
        return band_halfwidth(self.samples.get(metric, ()), style.band, style.level)


def t_interval(values: Iterable[float | None], level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) of the two-sided ``level`` t confidence interval of the mean of the
    finite ``values``: half-width = t_{(1+level)/2, n-1} * s / sqrt(n), s with ddof=1.
    The half-width is NaN for fewer than two values."""
    kept = finite(values)
    if not kept:
        return float("nan"), float("nan")
    mean = float(np.mean(kept))
    if len(kept) < 2:
        return mean, float("nan")
    from scipy import stats

    n = len(kept)
    sem = float(np.std(kept, ddof=1)) / math.sqrt(n)
    return mean, float(stats.t.ppf(0.5 + level / 2, n - 1)) * sem


def band_halfwidth(values: Iterable[float | None], band: str = "ci", level: float = 0.95) -> float:
    """Half-width of the band over ``values``: ``ci`` the t interval's, ``std`` one population
    standard deviation (ddof=0), ``none`` NaN (no band)."""
    if band == "ci":
        return t_interval(values, level)[1]
    if band == "std":
        return nan_std(values)
    if band == "none":
        return float("nan")
    raise ValueError(f"band {band!r}: choose from {', '.join(BANDS)}")


def load_rows(tables: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Complete runs' rows of every table, each run once (SweepError for a foreign table)."""
    rows, seen = [], set()
    for path in tables:
        for row in read_table(path).rows:
            key = (row["run_key"], row["user"])
            if key not in seen:
                seen.add(key)
                rows.append(row)
    return rows


_CELL_PARAMS = (
    "cell_key",
    "strategy",
    "antennas",
    "antennas_tx",
    "antennas_rx",
    "channel_uses",
    "snr_db",
    "group",
    "pilot_fraction",
    "csi",
    "zeta",
    "d_ap",
    "channel",
    "baseline_fit",
    "baseline_selection",
    *RESEARCH_COLUMNS,
)

#: What sets a figure apart besides its own context: the channel and the research options. A
#: value that is the paper's (:data:`_PAPER_VALUES`) stays out of titles and file names.
_VARIANT_KEYS = ("channel", *RESEARCH_COLUMNS)
_PAPER_VALUES: dict[str, Any] = {"channel": "rayleigh", **RESEARCH_DEFAULTS}


#: Columns that are not a cell's configuration: which run and row, derived values (the antenna
#: counts are in ``antennas``; zeta and d_ap follow from K and the AP's latents), results, the
#: latents' folder (a moved cache holds the same latents: ``latents_id`` says which) and
#: provenance. Every other column, a column added later included, is configuration.
_NOT_CONFIG = frozenset(
    {
        "run_key",
        "cell_key",
        "run_rows",
        "antennas_tx",
        "antennas_rx",
        "latents",
        "d_ap",
        "zeta",
        "seed",
        "user",
        "encoder",
        "accuracy",
        "native_accuracy",
        "mse",
        "mse_whitened",
        "network_mse",
        "last_round_mse",
        "dropped",
        "data_channel_uses",
        "index_bits_per_sample",
        "index_channel_uses",
        "seconds",
        *PROVENANCE_KEYS,
    }
)
#: The table's configuration columns, in table order: what a figure must not mix.
CONFIG_COLUMNS: tuple[str, ...] = tuple(c for c in COLUMNS if c not in _NOT_CONFIG)


def config_of(row: dict[str, Any]) -> dict[str, Any]:
    """A row's :data:`CONFIG_COLUMNS`, None where one does not apply: empty, NaN, or a field its
    strategy does not read (a baseline's ``iterations``, an ADMM strategy's ``baseline_fit``)."""
    unused = set(unused_fields(row["strategy"]))
    out = {}
    for column in CONFIG_COLUMNS:
        value = row.get(column)
        if column in unused or value == "" or (isinstance(value, float) and math.isnan(value)):
            value = None
        out[column] = value
    return out


def aggregate(rows: Iterable[dict[str, Any]]) -> list[Point]:
    """Mean over users per run, then mean and std over seeds per cell."""
    runs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        runs[row["run_key"]].append(row)
    cells: dict[str, list[dict[str, float]]] = defaultdict(list)
    params: dict[str, dict[str, Any]] = {}
    configs: dict[str, dict[str, Any]] = {}
    for run_rows in runs.values():
        first = run_rows[0]
        params.setdefault(first["cell_key"], {k: first[k] for k in _CELL_PARAMS})
        configs.setdefault(first["cell_key"], config_of(first))
        cells[first["cell_key"]].append(
            {
                "accuracy": nan_mean([r["accuracy"] for r in run_rows]),
                "native": nan_mean([r["native_accuracy"] for r in run_rows]),
                "network_mse": first["network_mse"],
                "test_mse": nan_mean([r["mse"] for r in run_rows]),
            }
        )
    points = []
    for key, per_seed in cells.items():
        points.append(
            Point(
                params=params[key],
                seeds=len(per_seed),
                accuracy=nan_mean([s["accuracy"] for s in per_seed]),
                accuracy_std=nan_std([s["accuracy"] for s in per_seed]),
                native=nan_mean([s["native"] for s in per_seed]),
                network_mse=nan_mean([s["network_mse"] for s in per_seed]),
                network_mse_std=nan_std([s["network_mse"] for s in per_seed]),
                test_mse=nan_mean([s["test_mse"] for s in per_seed]),
                test_mse_std=nan_std([s["test_mse"] for s in per_seed]),
                samples={
                    m: tuple(s[m] for s in per_seed)
                    for m in ("accuracy", "network_mse", "test_mse")
                },
                config=configs[key],
            )
        )
    return points


def varying_fields(points: Iterable[Point]) -> tuple[str, ...]:
    """The :data:`CONFIG_COLUMNS` with two or more values among ``points`` (where they apply),
    in table order."""
    values: dict[str, set] = defaultdict(set)
    for p in points:
        for column, value in p.config.items():
            if value is not None:
                values[column].add(value)
    return tuple(c for c in CONFIG_COLUMNS if len(values[c]) > 1)


def qualifiers(point: Point, fields: Sequence[str]) -> tuple[tuple[str, Any], ...]:
    """(field, value) of each of ``fields`` that applies to ``point``: what sets its line apart
    from the lines of cells that differ only there."""
    return tuple((f, point.config[f]) for f in fields if point.config.get(f) is not None)


def qualifier_text(pairs: Sequence[tuple[str, Any]]) -> str:
    """``iterations=5, rho=2`` (a content fingerprint shortened to 8 characters)."""
    parts = []
    for name, value in pairs:
        if isinstance(value, float):
            value = f"{value:g}"
        elif name == "latents_id":
            value = str(value)[:8]
        parts.append(f"{name}={value}")
    return ", ".join(parts)


def check_distinct(points: Iterable[Point]) -> None:
    """UsageError (one line) if two cells agree in every configuration column: no line can tell
    them apart (they differ only in what the table does not record, e.g. a table that holds the
    same cell under two keys)."""
    seen: dict[tuple, str] = {}
    for p in points:
        signature = (*sorted(p.config.items(), key=lambda kv: kv[0]), p.params["d_ap"])
        key = p.params["cell_key"]
        other = seen.setdefault(signature, key)
        if other != key:
            raise UsageError(
                f"cells {other} and {key} differ in no column of the table but cell_key "
                f"({p.params['strategy']} {p.params['antennas']} K={p.params['channel_uses']} "
                f"{p.params['group']}): a figure cannot tell them apart; plot them from "
                "separate tables"
            )


def group_by(points: Iterable[Point], keys: Sequence[str]) -> dict[tuple, list[Point]]:
    """Points by the values of ``keys``, in :func:`sort_key` order."""
    out: dict[tuple, list[Point]] = defaultdict(list)
    for p in points:
        out[tuple(p.params[k] for k in keys)].append(p)
    return dict(sorted(out.items(), key=lambda kv: tuple(map(sort_key, kv[0]))))


def sort_key(value: Any) -> Any:
    """Sort strategies in registry order, then numbers, then any other value as text."""
    if isinstance(value, str) and value in _STRATEGY_ORDER:
        return (0, _STRATEGY_ORDER.index(value), "")
    if isinstance(value, (int, float, bool)):
        return (1, float(value), "")
    return (2, 0, str(value))


def summary_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-cell means for a text summary (sorted), used by the CLI and docs."""
    out = []
    for p in aggregate(rows):
        out.append(
            {
                **p.params,
                "seeds": p.seeds,
                "accuracy": p.accuracy,
                "accuracy_std": p.accuracy_std,
                "network_mse": p.network_mse,
            }
        )
    out.sort(
        key=lambda r: tuple(
            sort_key(r[k])
            for k in ("group", "pilot_fraction", "snr_db", "antennas", "strategy", "channel_uses")
        )
    )
    return out
