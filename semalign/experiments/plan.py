"""A grid resolved against its latents: the runs to do, their keys, the cells skipped.

Keys: :func:`cell_key` hashes every parameter of a cell (the :class:`AlignmentConfig` except the
seed, the group label, its user encoders, the AP encoder and the latents' content fingerprint,
plus :data:`SCHEMA`); :func:`run_key` is ``<cell_key>-<seed>``. The fingerprint is version 2
(:func:`latents_fingerprint`); every key changed with it, and a table keyed with version 1 is
re-keyed, not run again (:mod:`semalign.experiments.rekey`). Changing any of them is a new
cell. Where the latents lie is not part of a key: a moved or copied cache, or a table shared with
someone whose cache is elsewhere, finds its cells complete. (Schema 1 keys hashed the folder's
path too; :func:`legacy_run_key` recomputes them so that a sweep re-keys an older table's runs
instead of running them again.) A config field added after schema 1 enters a key only when it
differs from its default, so adding one keeps every existing key. A field the cell's strategy
does not read (:data:`FAMILY_FIELDS`: the ADMM rounds' ``iterations`` or ``rho`` for a baseline,
the baselines' fit for an ADMM strategy) is hashed at its default whatever the grid says
(:func:`key_config`), so a sweep that changes only such a field finds the other family's cells
complete; at the defaults those keys are the keys of before (:func:`previous_run_key` gives the
older key of a cell away from them).

Cells whose geometry the AP rejects (K N_T complex symbols more than the AP latent's d/2 complex
features, Top-K index side information that leaves no data channel use, or more user groups
than channel uses to share among them) are skipped up front
with their reason, never run. The compression factor is zeta = K / (d_AP / 2), with d_AP / 2 the
AP latent's complex dimension ceil(d_AP / 2). The geometry depends on the AP's latents only:
:func:`outline` says what a grid will run before the users' latents exist (a dry run).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from semalign.common.baselines import SELECTION
from semalign.common.config import LEGACY_PRECISION, AlignmentConfig
from semalign.common.errors import LatentsError, SweepError
from semalign.common.latents import latents_fingerprint
from semalign.common.packing import complex_dim
from semalign.common.strategies import get_strategy, strategy_family
from semalign.experiments.grid import (
    LEGACY_RESEARCH_VALUES,
    RESEARCH_DEFAULTS,
    SweepGrid,
    antennas_label,
)

#: Bumped when the meaning of a row or the making of a key changes; part of every cell key.
#: 1: keys hashed the latents' folder path; 2: they do not.
SCHEMA = 2

#: The config fields of schema 1: always part of a key. Any other field is hashed only when it
#: differs from its default (see :func:`_key_params`).
KEY_FIELDS_V1: tuple[str, ...] = (
    "strategy",
    "antennas_tx",
    "antennas_rx",
    "channel_uses",
    "snr_db",
    "rho",
    "power",
    "iterations",
    "csi",
    "pilot_fraction",
    "baseline_fit",
    "topk_index_cost",
)

#: The :class:`AlignmentConfig` fields that only one family of strategies reads (the family of
#: its :class:`~semalign.common.strategies.StrategySpec`): the ADMM rounds' penalty, count, round
#: protocol and arithmetic; the baselines' alignment fit and Top-K index accounting. A strategy
#: of another family does not read them. (``user_groups`` and ``equalizer`` are refused, not
#: ignored, outside fed / the ADMM family, so they are at their defaults there anyway.)
FAMILY_FIELDS: dict[str, tuple[str, ...]] = {
    "admm": ("rho", "iterations", "protocol", "precision"),
    "baseline": ("baseline_fit", "topk_index_cost"),
}


#: The value a field added after schema 1 is left out of a key at, where that is not its default
#: now: the default it had when older rows ran (the research options' legacy values, and
#: ``precision`` double, the default before single precision: double cells keep their keys, and
#: single-precision cells are never found among an older table's double-precision rows).
KEY_NEUTRAL: dict[str, Any] = {**LEGACY_RESEARCH_VALUES, "precision": LEGACY_PRECISION}


def _neutral(config: AlignmentConfig, name: str) -> Any:
    """The value of field ``name`` that a key leaves out (:data:`KEY_NEUTRAL`, else its
    default)."""
    default = type(config).model_fields[name].get_default(call_default_factory=True)
    return KEY_NEUTRAL.get(name, default)


def unused_fields(strategy: str) -> tuple[str, ...]:
    """The config fields ``strategy`` does not read (the other families' :data:`FAMILY_FIELDS`),
    asked of the strategy registry; none for a name it does not know."""
    family = strategy_family(strategy)
    if family is None:
        return ()
    return tuple(f for fam, names in FAMILY_FIELDS.items() if fam != family for f in names)


def key_config(config: AlignmentConfig) -> AlignmentConfig:
    """``config`` with the fields its strategy does not read at the values keys leave out
    (their defaults, :data:`KEY_NEUTRAL`): what a cell key hashes (a baseline cell is the same
    cell whatever the ADMM rounds' count, penalty or precision)."""
    fields = type(config).model_fields
    update = {
        name: _neutral(config, name) for name in unused_fields(config.strategy) if name in fields
    }
    update = {name: value for name, value in update.items() if getattr(config, name) != value}
    return config.model_copy(update=update) if update else config


@dataclass(frozen=True)
class ScenarioSpec:
    """Which latents a group's runs load: directory, AP encoder, user encoders (in order)."""

    latents_dir: str
    ap: str
    users: tuple[str, ...]
    #: content hash of those encoders' latents (:func:`latents_fingerprint`, version 2), part
    #: of every cell key: re-encoding the cache makes new cells instead of silently mixing old
    #: and new latents in one table (version-1 keys are found by :mod:`.rekey`)
    fingerprint: str = ""


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
        rounds = cfg.iterations if get_strategy(cfg.strategy).has_rounds else 2
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

    @property
    def ap(self) -> str:
        return next(iter(self.specs.values())).ap


@dataclass
class Outline:
    """What a grid will run, as far as it is known before the latents are encoded.

    ``d_ap`` is None when the AP's latents are not there yet: then no cell's geometry is known
    and ``cells`` counts every cell of the grid (some may be skipped once they are encoded).
    """

    grid: SweepGrid
    ap: str
    d_ap: int | None
    cells: int
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def runs(self) -> int:
        return self.cells * len(self.grid.seeds)


def _key_params(config: AlignmentConfig) -> dict[str, Any]:
    """The config fields a cell key hashes: every field of schema 1, and any later field whose
    value is not its default when it was added (:data:`KEY_NEUTRAL`; the seed is never part of
    a cell key)."""
    params = config.model_dump()
    params.pop("seed", None)
    for name, info in type(config).model_fields.items():
        if name in KEY_FIELDS_V1 or name not in params or info.is_required():
            continue
        default = _neutral(config, name)
        if isinstance(default, BaseModel):
            default = default.model_dump()
        if params[name] == default:
            del params[name]
    return params


def _hash(payload: dict[str, Any]) -> str:
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def cell_key(spec: ScenarioSpec, group: str, config: AlignmentConfig) -> str:
    """Hash of every parameter of a cell that its strategy reads (everything but the seed, the
    latents' folder and the fields of :func:`unused_fields`, hashed at their defaults)."""
    return _full_key(spec, group, key_config(config))


def _selection(config: AlignmentConfig) -> dict[str, str]:
    """A baseline's selection order (``baseline_selection``), hashed into its cell key: cells of
    the whitened-symbol selection of older versions are other cells, never reused."""
    baseline = strategy_family(config.strategy) == "baseline"
    return {"baseline_selection": SELECTION} if baseline else {}


def _full_key(spec: ScenarioSpec, group: str, config: AlignmentConfig) -> str:
    return _hash(
        {
            "schema": SCHEMA,
            "latents_id": spec.fingerprint,
            "ap": spec.ap,
            "users": list(spec.users),
            "group": group,
            **_key_params(config),
            **_selection(config),
        }
    )


def previous_run_key(run: Run) -> str | None:
    """The schema-2 key ``run`` had before keys left out the fields its strategy does not read
    (they hashed the grid's value), None where that is its key now (those fields at their
    defaults). A sweep may re-key a table's runs found under it, as for :func:`legacy_run_key`.
    Those keys hashed the grid's values, and a grid always had ``precision`` double then."""
    config = run.config
    if "precision" in unused_fields(config.strategy):
        config = config.model_copy(update={"precision": LEGACY_PRECISION})
    old = run_key(_full_key(run.spec, run.group, config), run.config.seed)
    return None if old == run.key else old


def legacy_cell_key(
    spec: ScenarioSpec, group: str, config: AlignmentConfig, latents_dir: str
) -> str | None:
    """The schema-1 key of a cell whose latents were read from ``latents_dir``, None when
    ``config`` sets a field schema 1 did not know (no such cell can be in an older table) or is
    a baseline's (schema-1 baselines selected among whitened symbols: another cell).
    Schema 1 hashed every field of ``config`` as it was, those its strategy does not read too."""
    params = _key_params(config)
    if set(params) - set(KEY_FIELDS_V1) or _selection(config):
        return None
    return _hash(
        {
            "schema": 1,
            "latents": latents_dir,
            "latents_id": spec.fingerprint,
            "ap": spec.ap,
            "users": list(spec.users),
            "group": group,
            **params,
        }
    )


def legacy_run_key(run: Run, latents_dir: str) -> str | None:
    """The schema-1 key of ``run`` had its latents been read from ``latents_dir``."""
    cell = legacy_cell_key(run.spec, run.group, run.config, latents_dir)
    return None if cell is None else run_key(cell, run.config.seed)


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
    if not cfg.channel.is_default:
        text += f" {cfg.channel.describe()}"
    for name, default in RESEARCH_DEFAULTS.items():
        value = getattr(cfg, name)
        if value != default:
            text += f" {name.replace('_', '-')}={value}"
    return text


def zeta(channel_uses: int, d_ap: int) -> float:
    """Compression factor zeta = K / (d_AP / 2), with d_AP / 2 = ceil(d_AP / 2) complex features."""
    return channel_uses / complex_dim(d_ap)


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
        if label in registry.ALL_GROUPS:
            groups[label] = list(registry.ALL_GROUPS[label])
            continue
        names = [p.strip() for p in label.split("+")]
        if not latents_given:
            names = [registry.get_spec(n).name for n in names]
        groups[label] = list(dict.fromkeys(names))
    needed = list(dict.fromkeys(n for users in groups.values() for n in users))
    return groups, needed


def default_ap(grid: SweepGrid) -> str:
    """The grid's AP encoder: ``grid.ap``, else the registry's default AP."""
    from semalign.encoders import registry

    return grid.ap or registry.DEFAULT_AP


def cell_geometry(
    grid: SweepGrid, ap_train: np.ndarray
) -> list[tuple[str, AlignmentConfig, str | None]]:
    """Every (group, config) of the grid (seed 0) with the reason the AP rejects its geometry,
    None when it fits. Only the AP's train latents are needed (a few rows serve as pilots)."""
    from semalign.server.access_point import AccessPoint

    probe_n = min(len(ap_train), 4 * complex_dim(int(ap_train.shape[1])) + 8)
    probe_pilots = np.asarray(ap_train[:probe_n])
    geometry: dict[tuple, str | None] = {}
    out = []
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
        reason = geometry[shape]
        if reason is None and config.user_groups > config.channel_uses:
            reason = f"{config.user_groups} user groups need at least as many channel uses"
        out.append((group, config, reason))
    return out


def _split_geometry(
    grid: SweepGrid, ap_train: np.ndarray
) -> tuple[list[tuple[str, AlignmentConfig]], list[tuple[str, str]]]:
    """(cells that fit, (description, reason) of those skipped); SweepError if none fits."""
    valid, skipped = [], []
    for group, config, reason in cell_geometry(grid, ap_train):
        if reason is None:
            valid.append((group, config))
        else:
            skipped.append((describe(group, config), reason))
    if not valid:
        reasons = "; ".join(sorted({r for _, r in skipped}))
        raise SweepError(f"no valid cell in the grid ({len(skipped)} skipped: {reasons})")
    return valid, skipped


def _load_specs(
    grid: SweepGrid, latents_dir: str, groups: dict[str, list[str]]
) -> tuple[dict[str, ScenarioSpec], np.ndarray]:
    """Every group's spec (its scenario loaded once: validates the latents) and the AP's train
    latents."""
    from semalign.engine.scenario import load_scenario

    ap = default_ap(grid)
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
    return specs, ap_train


def make_plan(grid: SweepGrid, latents_dir: str | Path, groups: dict[str, list[str]]) -> Plan:
    """Load every group's scenario once (validates the latents), check each cell's geometry.

    Args:
        grid: the grid.
        latents_dir: latent cache directory.
        groups: group label -> user encoder names (every label of ``grid.groups``).

    Raises:
        SweepError: latents missing or inconsistent, or no valid cell at all.
    """
    specs, ap_train = _load_specs(grid, str(Path(latents_dir).resolve()), groups)
    d_ap = int(ap_train.shape[1])
    valid, skipped = _split_geometry(grid, ap_train)
    runs: list[Run] = []
    planned: set[str] = set()
    for group, config in valid:
        key = cell_key(specs[group], group, config)
        if key in planned:  # the same cell for its strategy (only unread fields differ)
            continue
        planned.add(key)
        for seed in grid.seeds:
            runs.append(
                Run(key, group, specs[group], config.model_copy(update={"seed": seed}), d_ap)
            )
    return Plan(grid=grid, specs=specs, d_ap=d_ap, runs=runs, skipped=skipped)


def outline(grid: SweepGrid, ap: str, ap_train: np.ndarray | None = None) -> Outline:
    """What ``grid`` will run when only the AP's train latents (or nothing) can be read.

    Raises:
        SweepError: the AP's latents are known and no cell fits them.
    """
    if ap_train is None:
        return Outline(grid=grid, ap=ap, d_ap=None, cells=grid.cells_per_seed)
    valid, skipped = _split_geometry(grid, ap_train)
    return Outline(grid, ap, int(ap_train.shape[1]), len(valid), skipped)
