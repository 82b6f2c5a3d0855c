"""``semalign sweep``: the experiment grid of the paper's section IV, resumable, in parallel.

A :class:`SweepGrid` is the cartesian product of strategies, channel uses K, antenna
configurations N_T x N_R, SNRs, user groups, pilot fractions and CSI modes, run for every seed on
the in-process engine (:func:`semalign.engine.simulate.simulate_seed`). Presets reproduce the
paper's
figures (:data:`PRESETS`: ``fig2``, ``fig3``, ``snr``).

Results go to one CSV table with a row per (cell, seed, user). The unit of work and of writing is
a *run* (one cell, one seed): its rows are appended in a single ``write`` followed by ``fsync``,
and each row carries the run's key and its row count (``run_rows``). On reading, a run is trusted
only when all its rows are there and parse; a torn tail left by a crash is dropped (the table is
rewritten atomically without it) and that run is simply done again. Re-running the same command
therefore skips every finished run: a sweep is resumable after a crash or Ctrl-C.

Keys: ``cell_key`` hashes every parameter of a cell (the full :class:`AlignmentConfig` except the
seed, the group label, its user encoders, the AP encoder and the latent directory, plus
:data:`SCHEMA`); ``run_key`` is ``<cell_key>-<seed>``. Changing any of them is a new cell.

Cells whose geometry the AP rejects (K N_T complex symbols more than the AP latent's d/2 complex
features, or Top-K index side information that leaves no data channel use) are skipped up front
with their reason, never run. The compression factor is zeta = K / (d_AP / 2), with d_AP / 2 the
AP latent's complex dimension ceil(d_AP / 2).

Parallelism: ``workers`` processes (``spawn``), each loading every scenario it needs once and
limiting BLAS to one thread (on a loaded 2-core machine a 2-thread OpenBLAS eigendecomposition
measured 8x slower than a 1-thread one). Runs are scheduled longest first.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import itertools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from semalign.commands.options import HelpFormatter
from semalign.common.config import ADMM_STRATEGIES, STRATEGIES, AlignmentConfig
from semalign.common.errors import SweepError

log = logging.getLogger(__name__)

#: Bumped when the meaning of a row changes; part of every cell key.
SCHEMA = 1

#: The paper's seeds (section IV).
PAPER_SEEDS: tuple[int, ...] = (27, 42, 100, 123, 144, 200)

#: The compression-factor grid of the reference experiments (communication.channel_usage).
PAPER_CHANNEL_USES: tuple[int, ...] = (1, 2, 4, 6, 8, 10, 20)

#: Grid presets named after the paper's figures; command-line options override their fields.
PRESETS: dict[str, dict[str, Any]] = {
    # Fig. 2: accuracy vs compression factor, 10 users, SNR 20 dB, square MIMO, all strategies.
    "fig2": {
        "strategies": STRATEGIES,
        "channel_uses": PAPER_CHANNEL_USES,
        "antennas": ("1x1", "2x2", "4x4"),
        "snr_db": (20.0,),
        "seeds": PAPER_SEEDS,
        "groups": ("paper-users",),
        "pilot_fractions": (1.0,),
        "csi": (True,),
    },
    # Fig. 3: network MSE and accuracy vs zeta, homogeneous vs heterogeneous, pilot fractions.
    "fig3": {
        "strategies": ("fed",),
        "channel_uses": PAPER_CHANNEL_USES,
        "antennas": ("4x4",),
        "snr_db": (20.0,),
        "seeds": PAPER_SEEDS,
        "groups": ("homogeneous", "heterogeneous"),
        "pilot_fractions": (0.1, 0.5, 1.0),
        "csi": (True,),
    },
    # Accuracy vs SNR (reference README, simulation=snr): 4x4, K in {1, 4, 8}.
    "snr": {
        "strategies": STRATEGIES,
        "channel_uses": (1, 4, 8),
        "antennas": ("4x4",),
        "snr_db": (-20.0, -10.0, 0.0, 10.0, 20.0, 30.0),
        "seeds": PAPER_SEEDS,
        "groups": ("paper-users",),
        "pilot_fractions": (1.0,),
        "csi": (True,),
    },
}

#: Grid fields that are lists, with the AlignmentConfig field each value must be valid for.
_LIST_FIELDS: dict[str, str] = {
    "strategies": "strategy",
    "channel_uses": "channel_uses",
    "snr_db": "snr_db",
    "seeds": "seed",
    "pilot_fractions": "pilot_fraction",
    "csi": "csi",
}

#: The command-line option that sets each grid field (for error messages).
OPTION_NAMES: dict[str, str] = {
    "strategies": "--strategies",
    "channel_uses": "--channel-uses",
    "antennas": "--antennas",
    "snr_db": "--snr-db",
    "seeds": "--seeds",
    "groups": "--groups",
    "pilot_fractions": "--pilot-fractions",
    "csi": "--csi-modes",
    "iterations": "--iterations",
    "rho": "--rho",
    "power": "--power",
    "baseline_fit": "--baseline-fit",
    "topk_index_cost": "--topk-index-cost",
    "ap": "--ap",
}


def parse_antennas(value: Any) -> tuple[int, int]:
    """``"4x4"`` / ``"2x4"`` (N_T x N_R) / ``"4"`` (square) / ``(4, 4)`` -> (N_T, N_R)."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        nt, nr = value
    elif isinstance(value, int):
        nt = nr = value
    elif isinstance(value, str):
        parts = value.strip().lower().split("x")
        if len(parts) == 1:
            parts = parts * 2
        if len(parts) != 2:
            raise ValueError(f"antenna configuration {value!r} is not N_TxN_R (e.g. 4x4, 2x4)")
        try:
            nt, nr = (int(p) for p in parts)
        except ValueError:
            raise ValueError(
                f"antenna configuration {value!r} is not N_TxN_R (e.g. 4x4, 2x4)"
            ) from None
    else:
        raise ValueError(f"antenna configuration {value!r} is not N_TxN_R (e.g. 4x4, 2x4)")
    for n in (nt, nr):
        if not isinstance(n, int) or not 1 <= n <= 256:
            raise ValueError(f"antenna configuration {value!r}: counts must be 1..256")
    return int(nt), int(nr)


def antennas_label(nt: int, nr: int) -> str:
    return f"{nt}x{nr}"


class SweepGrid(BaseModel):
    """The experiment grid: every list field is one axis of the cartesian product.

    Every value is checked against :class:`AlignmentConfig`'s own bounds, so a bad value fails
    here, before any work, with the option's name. Duplicates are dropped, order is kept.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategies: tuple[str, ...] = Field(STRATEGIES, description="fed, multi-link, first-k, top-k")
    channel_uses: tuple[int, ...] = Field(PAPER_CHANNEL_USES, description="K values")
    antennas: tuple[tuple[int, int], ...] = Field(((4, 4),), description="(N_T, N_R) pairs")
    snr_db: tuple[float, ...] = Field((20.0,), description="SNR per receive antenna, dB")
    seeds: tuple[int, ...] = Field((27, 42), description="seeds (runs per cell)")
    groups: tuple[str, ...] = Field(
        ("paper-users",), description="user groups: registry group names or enc1+enc2+..."
    )
    pilot_fractions: tuple[float, ...] = Field((1.0,), description="fractions of train as pilots")
    csi: tuple[bool, ...] = Field((True,), description="channel-aware AP or not")
    iterations: int = 30
    rho: float = 1.0
    power: float = 1.0
    baseline_fit: str = "received"
    topk_index_cost: str = "none"
    ap: str | None = Field(None, description="AP encoder (None: the registry's default AP)")

    @field_validator("antennas", mode="before")
    @classmethod
    def _parse_antennas(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        return tuple(parse_antennas(v) for v in value)

    @field_validator(*_LIST_FIELDS, "antennas", "groups", mode="after")
    @classmethod
    def _dedupe(cls, value: tuple) -> tuple:
        return tuple(dict.fromkeys(value))

    @field_validator("groups")
    @classmethod
    def _check_groups(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for group in value:
            if not group.strip() or "," in group or any(not p.strip() for p in group.split("+")):
                raise ValueError(
                    f"group {group!r} must be a group name (paper-users, homogeneous, "
                    "heterogeneous) or encoder names joined by '+'"
                )
        return tuple(g.strip() for g in value)

    @model_validator(mode="after")
    def _check_values(self) -> SweepGrid:
        for name in (*_LIST_FIELDS, "antennas", "groups"):
            values = getattr(self, name)
            if not values:
                raise ValueError(f"{OPTION_NAMES[name]} is empty")
        for name, cfg_field in _LIST_FIELDS.items():
            for value in getattr(self, name):
                _probe(name, {cfg_field: value})
        for nt, nr in self.antennas:
            _probe("antennas", {"antennas_tx": nt, "antennas_rx": nr})
        for name in ("iterations", "rho", "power", "baseline_fit", "topk_index_cost"):
            _probe(name, {name: getattr(self, name)})
        return self

    @property
    def cells_per_seed(self) -> int:
        return (
            math.prod(
                len(getattr(self, n))
                for n in ("strategies", "channel_uses", "antennas", "snr_db", "groups")
            )
            * len(self.pilot_fractions)
            * len(self.csi)
        )

    def configs(self) -> Iterator[tuple[str, AlignmentConfig]]:
        """Every (group, config) of the grid, seed 0 (seeds are added per run)."""
        for group, strategy, (nt, nr), k, snr, frac, csi in itertools.product(
            self.groups,
            self.strategies,
            self.antennas,
            self.channel_uses,
            self.snr_db,
            self.pilot_fractions,
            self.csi,
        ):
            yield (
                group,
                AlignmentConfig(
                    strategy=strategy,
                    antennas_tx=nt,
                    antennas_rx=nr,
                    channel_uses=k,
                    snr_db=snr,
                    rho=self.rho,
                    power=self.power,
                    iterations=self.iterations,
                    csi=csi,
                    pilot_fraction=frac,
                    baseline_fit=self.baseline_fit,
                    topk_index_cost=self.topk_index_cost,
                    seed=0,
                ),
            )


def _probe(grid_field: str, values: dict[str, Any]) -> None:
    """Raise ValueError naming the option when ``values`` are not a valid AlignmentConfig."""
    try:
        AlignmentConfig(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        got = values[err["loc"][0]] if err["loc"] and err["loc"][0] in values else values
        raise ValueError(f"{OPTION_NAMES[grid_field]}: {err['msg']} (got {got!r})") from None


def grid_from_options(preset: str | None, overrides: dict[str, Any]) -> SweepGrid:
    """A validated grid: the preset's fields (if any) updated by the non-None ``overrides``.

    Raises:
        SweepError: unknown preset or invalid value (one line naming the option).
    """
    fields: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise SweepError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
        fields.update(PRESETS[preset])
    fields.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return SweepGrid(**fields)
    except ValidationError as exc:
        raise SweepError(_validation_message(exc)) from None


def _validation_message(exc: ValidationError) -> str:
    err = exc.errors()[0]
    msg = str(err["msg"]).removeprefix("Value error, ")
    loc = err["loc"]
    if msg.startswith("--"):
        return msg
    option = OPTION_NAMES.get(str(loc[0]), str(loc[0])) if loc else "grid"
    return f"{option}: {msg} (got {err.get('input')!r})"


# ---------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class ScenarioSpec:
    """Which latents a group's runs load: directory, AP encoder, user encoders (in order)."""

    latents_dir: str
    ap: str
    users: tuple[str, ...]
    fingerprint: str = ""  # content hash of those encoders' latents (see latents_fingerprint)


@dataclass(frozen=True)
class Run:
    """One unit of work and of writing: one cell, one seed."""

    cell_key: str
    group: str
    spec: ScenarioSpec
    config: AlignmentConfig
    d_ap: int

    @property
    def key(self) -> str:
        return run_key(self.cell_key, self.config.seed)

    @property
    def cost(self) -> float:
        """Rough relative cost, for longest-first scheduling."""
        cfg = self.config
        per = cfg.channel_uses * max(cfg.antennas_rx, cfg.antennas_tx) + 8
        rounds = cfg.iterations if cfg.strategy in ADMM_STRATEGIES else 2
        return rounds * per * len(self.spec.users) * cfg.pilot_fraction


@dataclass
class Plan:
    """A grid resolved against its latents: runs to do and cells skipped with their reason."""

    grid: SweepGrid
    specs: dict[str, ScenarioSpec]
    d_ap: int
    runs: list[Run]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def cells(self) -> int:
        return len({r.cell_key for r in self.runs})


def cell_key(spec: ScenarioSpec, group: str, config: AlignmentConfig) -> str:
    """Hash of every parameter of a cell (everything but the seed)."""
    params = config.model_dump()
    params.pop("seed")
    payload = {
        "schema": SCHEMA,
        "latents": spec.latents_dir,
        "latents_id": spec.fingerprint,
        "ap": spec.ap,
        "users": list(spec.users),
        "group": group,
        **params,
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def run_key(cell: str, seed: int) -> str:
    return f"{cell}-{seed}"


def describe(group: str, config: AlignmentConfig) -> str:
    """Short human description of a cell."""
    cfg = config
    text = (
        f"{cfg.strategy} {antennas_label(cfg.antennas_tx, cfg.antennas_rx)} "
        f"K={cfg.channel_uses} SNR={cfg.snr_db:g}dB {group}"
    )
    if cfg.pilot_fraction != 1.0:
        text += f" pilots={cfg.pilot_fraction:g}"
    if not cfg.csi:
        text += " no-CSI"
    return text


def latents_fingerprint(latents_dir: str | Path, encoders: Iterable[str]) -> str:
    """Content hash of the encoders' train/test latents and classifiers (16 hex digits).

    Part of every cell key: re-encoding the cache (a new recipe, a new seed) makes new cells
    instead of silently mixing old and new latents in one table.
    """
    digest = hashlib.blake2b(digest_size=8)
    for encoder in encoders:
        folder = Path(latents_dir) / encoder
        digest.update(encoder.encode())
        for name in ("train.npz", "test.npz", "classifier.npz"):
            path = folder / name
            if not path.exists():
                digest.update(b"-")
                continue
            with open(path, "rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def make_plan(grid: SweepGrid, latents_dir: str | Path, groups: dict[str, list[str]]) -> Plan:
    """Load every group's scenario once (validates the latents), check each cell's geometry.

    Args:
        grid: the grid.
        latents_dir: latent cache directory.
        groups: group label -> user encoder names (every label of ``grid.groups``).

    Raises:
        SweepError: latents missing or inconsistent, or no valid cell at all.
    """
    import numpy as np

    from semalign.common.latents import LatentsError
    from semalign.common.packing import complex_dim
    from semalign.encoders import registry
    from semalign.engine.scenario import load_scenario
    from semalign.server.access_point import AccessPoint

    latents_dir = str(Path(latents_dir).resolve())
    ap = grid.ap or registry.DEFAULT_AP
    specs: dict[str, ScenarioSpec] = {}
    ap_train = None
    for label in grid.groups:
        users = tuple(groups[label])
        spec = ScenarioSpec(latents_dir, ap, users, latents_fingerprint(latents_dir, [ap, *users]))
        try:
            scenario = load_scenario(spec.latents_dir, spec.ap, list(spec.users))
        except LatentsError as exc:
            raise SweepError(f"group {label}: {exc}") from None
        specs[label] = spec
        ap_train = scenario.ap_train
    d_ap = int(ap_train.shape[1])
    probe_n = min(len(ap_train), 4 * complex_dim(d_ap) + 8)
    probe_pilots = np.asarray(ap_train[:probe_n])
    runs: list[Run] = []
    skipped: list[tuple[str, str]] = []
    geometry: dict[tuple, str | None] = {}
    for group, config in grid.configs():
        shape = (config.strategy, config.channel_uses, config.antennas_tx, config.snr_db)
        if shape not in geometry:
            try:
                AccessPoint(
                    config=config,
                    pilot_latents=probe_pilots,
                    pilot_ids=np.arange(probe_n, dtype=np.int64),
                )
                geometry[shape] = None
            except ValueError as exc:
                geometry[shape] = str(exc)
        if geometry[shape] is not None:
            skipped.append((describe(group, config), geometry[shape]))
            continue
        key = cell_key(specs[group], group, config)
        for seed in grid.seeds:
            runs.append(
                Run(key, group, specs[group], config.model_copy(update={"seed": seed}), d_ap)
            )
    if not runs:
        reasons = "; ".join(sorted({r for _, r in skipped}))
        raise SweepError(f"no valid cell in the grid ({len(skipped)} skipped: {reasons})")
    return Plan(grid=grid, specs=specs, d_ap=d_ap, runs=runs, skipped=skipped)


# ---------------------------------------------------------------------------- table
#: Columns of the results table, with their types (for reading back).
COLUMNS: dict[str, type] = {
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


def zeta(channel_uses: int, d_ap: int) -> float:
    """Compression factor zeta = K / (d_AP / 2), with d_AP / 2 = ceil(d_AP / 2) complex features."""
    from semalign.common.packing import complex_dim

    return channel_uses / complex_dim(d_ap)


def rows_for_run(run: Run, block: dict[str, Any]) -> list[dict[str, Any]]:
    """The table rows of one run's results block (one per user)."""
    cfg = run.config
    final = block.get("phases", {}).get("final", {})
    rounds = block.get("rounds") or []
    last_round = rounds[-1]["mse"] if rounds else None
    network_mse = final.get("mse", last_round)
    base = block.get("baseline", {})
    common = {
        "run_key": run.key,
        "cell_key": run.cell_key,
        "run_rows": len(block["users"]),
        "strategy": cfg.strategy,
        "antennas": antennas_label(cfg.antennas_tx, cfg.antennas_rx),
        "antennas_tx": cfg.antennas_tx,
        "antennas_rx": cfg.antennas_rx,
        "channel_uses": cfg.channel_uses,
        "snr_db": cfg.snr_db,
        "group": run.group,
        "pilot_fraction": cfg.pilot_fraction,
        "csi": cfg.csi,
        "iterations": cfg.iterations if cfg.strategy in ADMM_STRATEGIES else 0,
        "rho": cfg.rho,
        "power": cfg.power,
        "baseline_fit": cfg.baseline_fit if base else "",
        "topk_index_cost": cfg.topk_index_cost if cfg.strategy == "top-k" else "",
        "ap_encoder": run.spec.ap,
        "latents": run.spec.latents_dir,
        "latents_id": run.spec.fingerprint,
        "d_ap": run.d_ap,
        "zeta": zeta(cfg.channel_uses, run.d_ap),
        "seed": cfg.seed,
        "network_mse": network_mse,
        "last_round_mse": last_round,
        "data_channel_uses": base.get("data_channel_uses", cfg.channel_uses),
        "index_bits_per_sample": base.get("index_bits_per_sample", 0),
        "index_channel_uses": base.get("index_channel_uses", 0),
        "seconds": block.get("seconds"),
    }
    rows = []
    for user in block["users"]:
        row = dict(common)
        row.update(
            user=user["name"],
            encoder=user["encoder"],
            accuracy=user["accuracy"],
            native_accuracy=user["native_accuracy"],
            mse=user["mse"],
            mse_whitened=user["mse_whitened"],
            dropped=user["dropped"] or "",
        )
        rows.append(row)
    return rows


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


def _parse_row(raw: dict[str, str | None]) -> dict[str, Any]:
    if None in raw or any(v is None for v in raw.values()):
        raise ValueError("wrong number of fields")
    return {c: _parse(c, raw[c]) for c in COLUMNS}


@dataclass
class TableContents:
    """What a table holds: complete runs' rows, and what had to be dropped."""

    rows: list[dict[str, Any]]
    complete: set[str]
    dropped_lines: int
    torn_tail: bool


def read_table(path: str | Path) -> TableContents:
    """Rows of the complete runs in ``path`` (partial runs and a torn last line are left out).

    Raises:
        SweepError: the file is not a results table of this schema.
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
    if reader.fieldnames != list(COLUMNS):
        raise SweepError(
            f"{path} is not a semalign sweep table of schema {SCHEMA} (its columns differ); "
            "use another --table"
        )
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
    return TableContents(rows, complete, dropped, torn)


class ResultsTable:
    """The CSV results table, opened for appending whole runs (one writer at a time).

    Use as a context manager: takes an exclusive lock (``<table>.lock``), repairs a table left
    by a crash (rewritten atomically with only complete runs) and exposes :attr:`complete`, the
    run keys already done.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.complete: set[str] = set()
        self._lock = None

    def __enter__(self) -> ResultsTable:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path.with_name(self.path.name + ".lock"), "w")  # noqa: SIM115
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            self._lock = None
            raise SweepError(f"{self.path} is being written by another sweep") from None
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
        if contents.torn_tail or contents.dropped_lines:
            log.warning(
                "%s: dropped %d row(s) of unfinished runs%s; they will run again",
                self.path,
                contents.dropped_lines,
                " and a torn last line" if contents.torn_tail else "",
            )
            self._rewrite(contents.rows)

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(_csv_text(rows, header=True))
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self.path)
        with contextlib.suppress(OSError):
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

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
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _csv_text(rows: Iterable[dict[str, Any]], *, header: bool) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_format(row.get(c)) for c in COLUMNS])
    return out.getvalue()


# ---------------------------------------------------------------------------- running
_SCENARIOS: dict[ScenarioSpec, Any] = {}


def _scenario(spec: ScenarioSpec):
    """This process's Scenario for ``spec`` (loaded once, user data cached inside)."""
    from semalign.engine.scenario import load_scenario

    if spec not in _SCENARIOS:
        _SCENARIOS[spec] = load_scenario(spec.latents_dir, spec.ap, list(spec.users))
    return _SCENARIOS[spec]


def execute(run: Run) -> list[dict[str, Any]]:
    """Run one (cell, seed) in this process; returns its table rows."""
    from semalign.engine.simulate import simulate_seed

    scenario = _scenario(run.spec)
    for encoder in run.spec.users:  # load, train classifiers, whiten: outside the timing
        data = scenario.data_for(encoder, run.config.pilot_fraction)
        if hasattr(data, "whitened_pilots"):
            data.whitened_pilots(list(range(len(data.pilot_ids))))
    block = simulate_seed(scenario, run.config)
    return rows_for_run(run, block)


def _worker_init(blas_threads: int, log_level: int) -> None:
    import signal

    # The parent handles Ctrl-C (it stops the pool); workers must not die mid-write noisily.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(blas_threads)  # read when the BLAS library loads
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    _limit_blas(blas_threads)


def _limit_blas(threads: int):
    """Limit BLAS threads now (returns the limiter; use as a context manager to restore).

    numpy and scipy are imported first: threadpoolctl only sees libraries already loaded.
    """
    import numpy  # noqa: F401
    import scipy.linalg  # noqa: F401

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads)


def blas_threads() -> list[int]:
    """Thread counts of the BLAS libraries loaded in this process (diagnostics, tests)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover
        return []
    return [int(i["num_threads"]) for i in threadpool_info() if i.get("user_api") == "blas"]


def _worker_execute(run: Run) -> tuple[str, list[dict[str, Any]] | None, str | None]:
    try:
        return run.key, execute(run), None
    except Exception as exc:  # reported by the parent; the run stays undone
        log.debug("run %s failed", run.key, exc_info=True)
        return run.key, None, f"{type(exc).__name__}: {exc}"


@dataclass
class SweepSummary:
    """What a sweep call did."""

    total: int
    already_done: int
    done: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


#: Called after each run with (run, rows or None, error or None).
RunCallback = Callable[[Run, list[dict[str, Any]] | None, str | None], None]


def run_sweep(
    plan: Plan,
    table_path: str | Path,
    *,
    workers: int = 1,
    on_run: RunCallback | None = None,
    on_start: Callable[[SweepSummary], None] | None = None,
    blas_threads: int = 1,
) -> SweepSummary:
    """Run every run of ``plan`` not already complete in the table, appending as each ends.

    ``workers == 1`` runs in this process; more use a process pool (``spawn``). A failing run is
    reported (``on_run`` and the summary) and left undone; the rest go on. KeyboardInterrupt
    stops the pool at once; finished runs are already in the table.
    """
    start = time.perf_counter()
    with ResultsTable(table_path) as table:
        todo = [r for r in plan.runs if r.key not in table.complete]
        todo.sort(key=lambda r: r.cost, reverse=True)
        summary = SweepSummary(total=len(plan.runs), already_done=len(plan.runs) - len(todo))
        if on_start:
            on_start(summary)

        def finish(run: Run, rows: list[dict[str, Any]] | None, error: str | None) -> None:
            if rows is not None:
                table.append(rows)
                summary.done += 1
            else:
                summary.failed.append((run.key, error or "unknown error"))
                log.warning(
                    "run %s (%s) failed: %s", run.key, describe(run.group, run.config), error
                )
            if on_run:
                on_run(run, rows, error)

        if workers <= 1 or len(todo) <= 1:
            with _limit_blas(blas_threads):
                for run in todo:
                    key, rows, error = _worker_execute(run)
                    finish(run, rows, error)
        else:
            _run_pool(todo, workers, blas_threads, finish)
    summary.seconds = time.perf_counter() - start
    return summary


def _run_pool(todo: list[Run], workers: int, blas_threads: int, finish) -> None:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    executor = ProcessPoolExecutor(
        max_workers=min(workers, len(todo)),
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init,
        initargs=(blas_threads, logging.getLogger().level),
    )
    # Keep a bounded queue so Ctrl-C has little to cancel and longest-first order holds.
    pending_runs = iter(todo)
    inflight: dict[Any, Run] = {}
    try:
        for run in itertools.islice(pending_runs, 2 * workers):
            inflight[executor.submit(_worker_execute, run)] = run
        while inflight:
            done, _ = wait(inflight, return_when=FIRST_COMPLETED)
            for future in done:
                run = inflight.pop(future)
                try:
                    _, rows, error = future.result()
                except Exception as exc:  # the worker process died (e.g. out of memory)
                    rows, error = None, f"worker failed: {type(exc).__name__}: {exc}"
                finish(run, rows, error)
                nxt = next(pending_runs, None)
                if nxt is not None:
                    inflight[executor.submit(_worker_execute, nxt)] = nxt
    except BaseException:
        for process in list(getattr(executor, "_processes", {}).values()):
            with contextlib.suppress(Exception):
                process.terminate()
        executor.shutdown(wait=False, cancel_futures=True)
        raise
    executor.shutdown(wait=True)


# ---------------------------------------------------------------------------- CLI
def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _list_of(kind: type, option: str) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        from semalign.common.errors import UsageError

        values = []
        for part in _split(text):
            try:
                values.append(kind(part))
            except ValueError:
                raise UsageError(
                    f"{option}: {part!r} is not a valid {kind.__name__} (got {text!r})"
                ) from None
        return tuple(values)

    return parse


def _opt(text: str | None, kind: type, option: str) -> tuple | None:
    return None if text is None else _list_of(kind, option)(text)


def _csi_modes(text: str) -> tuple[bool, ...]:
    from semalign.common.errors import UsageError

    modes = {"on": True, "off": False, "true": True, "false": False}
    try:
        return tuple(modes[p.lower()] for p in _split(text))
    except KeyError as exc:
        raise UsageError(f"--csi-modes: {exc.args[0]!r} is not on or off (got {text!r})") from None


def resolve_groups(
    labels: Iterable[str], latents_given: bool
) -> tuple[dict[str, list[str]], list[str]]:
    """Group label -> user encoders, and every encoder needed; ValueError for unknown names.

    A label is a registry group (``paper-users``, ``homogeneous``, ``heterogeneous``) or encoder
    names joined by ``+``. With an explicit latent directory names outside the registry are
    allowed (checked against the directory when the scenario loads).
    """
    from semalign.encoders import registry

    groups: dict[str, list[str]] = {}
    for label in labels:
        if label in registry.GROUPS:
            groups[label] = list(registry.GROUPS[label])
            continue
        names = [p.strip() for p in label.split("+")]
        if not latents_given:
            names = [registry.get_spec(n).name for n in names]
        groups[label] = list(dict.fromkeys(names))
    needed = list(dict.fromkeys(n for users in groups.values() for n in users))
    return groups, needed


def _default_table(preset: str | None) -> Path:
    return Path("results") / f"sweep-{preset or 'custom'}.csv"


def run_sweep_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    from semalign.common.errors import UsageError

    console = Console(stderr=True)
    overrides = {
        "strategies": _list_of(str, "--strategies")(args.strategies) if args.strategies else None,
        "channel_uses": _opt(args.channel_uses, int, "--channel-uses"),
        "antennas": _split(args.antennas) if args.antennas else None,
        "snr_db": _opt(args.snr_db, float, "--snr-db"),
        "seeds": _opt(args.seeds, int, "--seeds"),
        "groups": _split(args.groups) if args.groups else None,
        "pilot_fractions": _opt(args.pilot_fractions, float, "--pilot-fractions"),
        "csi": _csi_modes(args.csi_modes) if isinstance(args.csi_modes, str) else args.csi_modes,
        "iterations": args.iterations,
        "rho": args.rho,
        "power": args.power,
        "baseline_fit": args.baseline_fit,
        "topk_index_cost": args.topk_index_cost,
        "ap": args.ap,
    }
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    try:
        grid = grid_from_options(args.preset, overrides)
        groups, needed = resolve_groups(grid.groups, bool(args.latents))
    except (SweepError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    table_path = Path(args.table) if args.table else _default_table(args.preset)
    if table_path.exists():
        try:
            read_table(table_path)  # foreign table: fail before any work
        except SweepError as exc:
            raise UsageError(str(exc)) from None
    from semalign.encoders import registry

    ap = grid.ap or registry.DEFAULT_AP
    if args.latents:
        latents_dir = Path(args.latents)
    else:
        latents_dir = _default_latents([ap, *needed])
    try:
        plan = make_plan(grid, latents_dir, groups)
    except SweepError as exc:
        raise UsageError(str(exc)) from None
    _print_plan(console, plan, table_path, args)
    if args.dry_run:
        return 0
    summary = _run_with_progress(console, plan, table_path, args)
    status = (
        f"{summary.done} run(s) done, {summary.already_done} already in the table, "
        f"{len(summary.failed)} failed, {len(plan.skipped)} cell(s) skipped; "
        f"{_duration(summary.seconds)} wall"
    )
    console.print(status)
    console.print(f"table: {table_path}")
    if summary.failed:
        for key, error in summary.failed[:10]:
            console.print(f"[red]failed {key}: {error}[/red]")
        console.print("[yellow]re-run the same command to retry the failed runs[/yellow]")
        return 1
    return 0


def _default_latents(encoders: list[str]) -> Path:
    from semalign.common.errors import UsageError

    try:
        from semalign.encoders import default_cache_dir, ensure_latents
    except ImportError:
        raise UsageError(
            "the default digits latents are not available in this version; pass --latents DIR"
        ) from None
    try:
        return Path(ensure_latents("digits", encoders, default_cache_dir(), progress=True))
    except (ValueError, RuntimeError, OSError) as exc:
        raise UsageError(f"cannot prepare the digits latents: {exc}") from None


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def _print_plan(console, plan: Plan, table_path: Path, args: argparse.Namespace) -> None:
    grid = plan.grid
    if args.quiet and not args.dry_run:
        return
    ap = next(iter(plan.specs.values())).ap
    half = round(1 / zeta(1, plan.d_ap))
    console.print(
        f"sweep{f' {args.preset}' if args.preset else ''}: {plan.cells} cell(s) x "
        f"{len(grid.seeds)} seed(s) = {len(plan.runs)} run(s); AP {ap} d={plan.d_ap} "
        f"(d/2 = {half} complex features); table {table_path}"
    )
    if plan.skipped:
        by_reason: dict[str, list[str]] = {}
        for cell, reason in plan.skipped:
            by_reason.setdefault(reason, []).append(cell)
        console.print(
            f"[yellow]note: {len(plan.skipped)} cell(s) skipped, their geometry does not fit:"
            "[/yellow]"
        )
        for reason, cells in by_reason.items():
            shown = ", ".join(cells[:4]) + (
                f", ... ({len(cells)} in all)" if len(cells) > 4 else ""
            )
            console.print(f"  [yellow]{shown}: {reason}[/yellow]")


def _run_with_progress(console, plan: Plan, table_path: Path, args) -> SweepSummary:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=args.quiet,
    ) as progress:
        task = progress.add_task("sweep", total=len(plan.runs), info="")

        def on_start(summary: SweepSummary) -> None:
            progress.update(task, completed=summary.already_done)
            if summary.already_done:
                progress.console.print(
                    f"resuming: {summary.already_done} run(s) already in {table_path}"
                )

        def on_run(run: Run, rows, error) -> None:
            if rows is not None:
                accs = [r["accuracy"] for r in rows if not math.isnan(r["accuracy"] or math.nan)]
                mean = sum(accs) / len(accs) if accs else float("nan")
                info = f"{describe(run.group, run.config)} seed {run.config.seed}: acc {mean:.3f}"
            else:
                info = f"[red]{describe(run.group, run.config)} failed[/red]"
            progress.update(task, advance=1, info=info)

        return run_sweep(plan, table_path, workers=args.workers, on_run=on_run, on_start=on_start)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="run an experiment grid (paper section IV), resumable, into one CSV table",
        description="Run the cartesian grid of strategies x channel uses x antennas x SNR x "
        "groups x pilot fractions x CSI modes, for every seed, on the in-process simulator. "
        "Rows (one per cell, seed and user) are appended to --table as each run finishes; "
        "re-running the same command skips finished runs. Options override the --preset's "
        "fields. Negative SNRs need '=': --snr-db=-20,-10,0.",
        formatter_class=HelpFormatter,
    )
    add = parser.add_argument
    add("--preset", choices=tuple(PRESETS), help="the paper's grids: " + ", ".join(PRESETS))
    add("--strategies", help="comma-separated: " + ",".join(STRATEGIES) + " (default: all)")
    add(
        "--channel-uses",
        help="K values, e.g. 1,2,4,6,8,10,20 (default: those)",
    )
    add("--antennas", help="N_TxN_R configurations, e.g. 1x1,2x2,4x4 or 2x4 (default: 4x4)")
    add("--snr-db", help="SNRs in dB (default: 20)")
    add("--seeds", help="seeds (default: 27,42)")
    add(
        "--groups",
        help="user groups: paper-users, homogeneous, heterogeneous, or enc1+enc2 "
        "(default: paper-users)",
    )
    add(
        "--pilot-fractions",
        help="fractions of the train split used as pilots (default: 1)",
    )
    csi = parser.add_mutually_exclusive_group()
    csi.add_argument(
        "--csi",
        dest="csi_modes",
        action="store_const",
        const=(True,),
        help="channel-aware AP only (default)",
    )
    csi.add_argument(
        "--no-csi", dest="csi_modes", action="store_const", const=(False,), help="no CSI only"
    )
    csi.add_argument("--csi-modes", dest="csi_modes", help="e.g. on,off")
    add("--iterations", type=int, help="ADMM rounds T (default: 30)")
    add("--rho", type=float, help="ADMM penalty (default: 1)")
    add("--power", type=float, help="transmit power budget P_T (default: 1)")
    add("--baseline-fit", choices=("received", "full"), help="see `simulate --help`")
    add("--topk-index-cost", choices=("none", "channel-uses"), help="see `simulate --help`")
    add("--ap", help="AP encoder (default: the registry's default AP)")
    add(
        "--latents",
        help="latent cache <dir>/<encoder>/{train,val,test}.npz (default: the digits cache, "
        "encoded on first use)",
    )
    add("--table", help="results CSV (default: results/sweep-<preset>.csv)")
    add(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes (one BLAS thread each)",
    )
    add("--dry-run", action="store_true", help="validate and print the plan, run nothing")
    add("-q", "--quiet", action="store_true", help="no progress display")
    parser.set_defaults(func=run_sweep_command)

    from semalign.experiments.figures import register as register_plot

    register_plot(subparsers)
