"""``semalign sweep``'s grid options parsed into a
:class:`~semalign.experiments.grid.SweepGrid` (a preset's fields, then a ``--config`` file's,
overridden by the options); the arguments themselves are :mod:`semalign.commands.sweep_arguments`.

``--set KEY=V1,V2`` (repeatable) sweeps any config key that the results table has a column
for (:func:`settable_keys`): the cartesian product over every ``--set`` and the grid's axes.
The grid's own options are shorthands: ``--set strategy=fed,top-k`` is ``--strategies
fed,top-k`` (:data:`SHORTHANDS`); other keys become :attr:`SweepGrid.axes`. Values are parsed
by the field's type (``--set csi=on,off``, ``--set channel.rho_tx=0,0.5``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter, ValidationError

from semalign.commands.config_files import KEY_ALIASES, read_mapping
from semalign.commands.config_options import given
from semalign.common.channels import ChannelConfig
from semalign.common.config import AlignmentConfig
from semalign.common.errors import SweepError, UsageError
from semalign.experiments.grid import (
    SweepGrid,
    grid_from_options,
)
from semalign.experiments.plan import (
    default_ap,
    resolve_groups,
)


# ---------------------------------------------------------------------------- options
def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _list_of(kind: type, option: str) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
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
    modes = {"on": True, "off": False, "true": True, "false": False}
    try:
        return tuple(modes[p.lower()] for p in _split(text))
    except KeyError as exc:
        raise UsageError(f"--csi-modes: {exc.args[0]!r} is not on or off (got {text!r})") from None


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Grid fields given on the command line (None: not given, the preset's or the default)."""
    return {
        "strategies": _opt(args.strategies, str, "--strategies"),
        "channel_uses": _opt(args.channel_uses, int, "--channel-uses"),
        "antennas": None if args.antennas is None else _split(args.antennas),
        "snr_db": _opt(args.snr_db, float, "--snr-db"),
        "seeds": _opt(args.seeds, int, "--seeds"),
        "groups": None if args.groups is None else _split(args.groups),
        "pilot_fractions": _opt(args.pilot_fractions, float, "--pilot-fractions"),
        "csi": _csi_modes(args.csi_modes) if isinstance(args.csi_modes, str) else args.csi_modes,
        "iterations": args.iterations,
        "rho": args.rho,
        "power": args.power,
        "baseline_fit": args.baseline_fit,
        "topk_index_cost": args.topk_index_cost,
        "ap": args.ap,
        "channel_models": _opt(args.channel_models, str, "--channel-models"),
        "correlations": _opt(args.correlations, float, "--correlations"),
        "k_factors": _opt(args.k_factors, float, "--k-factors"),
        "csi_errors": _opt(args.csi_errors, float, "--csi-errors"),
        "task_models": _opt(args.task_models, str, "--task-models"),
        "targets": _opt(args.targets, str, "--targets"),
        "pilot_selections": _opt(args.pilot_selections, str, "--pilot-selections"),
        "user_groups": _opt(args.user_groups, int, "--user-groups"),
        "equalizers": _opt(args.equalizers, str, "--equalizers"),
    }


def grid_from_args(args: argparse.Namespace) -> tuple[SweepGrid, dict[str, list[str]], list[str]]:
    """The validated grid, its groups (label -> user encoders) and every encoder it needs, the
    AP first (a ``--config`` file read into ``args`` first)."""
    from semalign.encoders import registry

    apply_sweep_config(args)
    overrides = _overrides(args)
    overrides["axes"] = _set_axes(parse_set(args.set or []), overrides)
    latents_given = bool(args.latents)
    try:
        grid = grid_from_options(args.preset, overrides)
        groups, users = resolve_groups(grid.groups, latents_given)
        ap = default_ap(grid)
        if not latents_given:
            registry.get_spec(ap)
    except (SweepError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    return grid, groups, list(dict.fromkeys([ap, *users]))


# ---------------------------------------------------------------------------- --set
#: Config keys that a grid option sweeps: key -> (grid field, the option).
SHORTHANDS: dict[str, str] = {
    "strategy": "strategies",
    "channel_uses": "channel_uses",
    "snr_db": "snr_db",
    "seed": "seeds",
    "pilot_fraction": "pilot_fractions",
    "csi": "csi",
    "task_model": "task_models",
    "target": "targets",
    "pilot_selection": "pilot_selections",
    "user_groups": "user_groups",
    "equalizer": "equalizers",
    "channel.csi_error_variance": "csi_errors",
}


def settable_keys() -> list[str]:
    """The config keys ``--set`` sweeps: those the results table has a column for (every
    channel field goes to its ``channel`` column), bar the per-user lists."""
    from semalign.experiments.table import COLUMNS

    keys = [
        k for k in AlignmentConfig.model_fields if k in COLUMNS and k not in ("seed", "channel")
    ]
    keys += [f"channel.{k}" for k in ChannelConfig.model_fields]
    return [k for k in keys if k not in ("channel.user_snr_db", "channel.distances")]


def set_key(text: str) -> str:
    """A ``--set`` key as its config key: dashes as underscores, renamed options' names
    (``admm_penalty``, ``tx_correlation``) and bare channel fields (``rho_tx``) accepted."""
    key = text.strip().replace("-", "_")
    key = KEY_ALIASES.get(key, key)
    if key.startswith("channel.") and key[8:] in KEY_ALIASES:  # channel.csi_error
        key = KEY_ALIASES[key[8:]]
    if key == "seeds":
        key = "seed"
    if key in ChannelConfig.model_fields and key not in AlignmentConfig.model_fields:
        key = f"channel.{key}"
    if key != "seed" and key not in settable_keys():
        raise UsageError(
            f"--set {text}: not a config key with a column in the sweep table; keys: "
            + ", ".join(settable_keys())
        )
    return key


def _field_type(key: str) -> Any:
    if key == "seed":
        return int
    if key.startswith("channel."):
        return ChannelConfig.model_fields[key.removeprefix("channel.")].annotation
    return AlignmentConfig.model_fields[key].annotation


def parse_set(items: list[str]) -> dict[str, tuple[Any, ...]]:
    """``KEY=V1,V2`` items -> {config key: values}, each value parsed by the field's type."""
    axes: dict[str, tuple[Any, ...]] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip() or not text.strip():
            raise UsageError(f"--set expects KEY=V1,V2,..., got {item!r}")
        key = set_key(name)
        if key in axes:
            raise UsageError(f"--set {name.strip()} is given twice")
        adapter = TypeAdapter(_field_type(key))
        values = []
        for part in _split(text):
            try:
                values.append(adapter.validate_python(part))
            except ValidationError as exc:
                msg = exc.errors()[0]["msg"]
                raise UsageError(f"--set {name.strip()}: {part!r}: {msg}") from None
        axes[key] = tuple(dict.fromkeys(values))
    return axes


def _set_axes(axes: dict[str, tuple[Any, ...]], overrides: dict[str, Any]) -> tuple:
    """Put ``--set`` keys with a grid option into ``overrides`` (a conflict with the option
    itself is an error); the others are the grid's :attr:`~SweepGrid.axes`."""
    from semalign.experiments.grid import OPTION_NAMES

    rest = []
    for key, values in axes.items():
        field_ = SHORTHANDS.get(key)
        if field_ is None:
            scalar = key if key in ("iterations", "rho", "power") else None
            if scalar is not None and overrides.get(scalar) is not None:
                raise UsageError(f"--set {key} and {OPTION_NAMES[scalar]} both given")
            rest.append((key, values))
            continue
        if overrides.get(field_) is not None:
            raise UsageError(f"--set {key} and {OPTION_NAMES[field_]} both given")
        overrides[field_] = values
    return tuple(rest)


# ---------------------------------------------------------------------------- --config
#: The sweep's own options a config file may set (keys as their ``args`` attributes).
_SWEEP_KEYS = (
    "preset", "strategies", "channel_uses", "antennas", "snr_db", "seeds", "groups",
    "pilot_fractions", "csi_modes", "iterations", "power", "baseline_fit", "topk_index_cost",
    "channel_models", "correlations", "k_factors", "csi_errors", "task_models", "targets",
    "pilot_selections", "user_groups", "equalizers", "latents", "dataset", "table",
)  # fmt: skip


def apply_sweep_config(args: argparse.Namespace) -> None:
    """Fill ``args`` from ``--config`` where the command line did not: the sweep's options
    (lists or comma-separated text), ``ap_encoder``, a ``[set]`` table, and any other config
    key as a ``--set`` axis (one value or a list). A results JSON is one cell: its config."""
    path = getattr(args, "config", None)
    if not path:
        return
    data = read_mapping(path)
    data.pop("from_results", None)
    given_keys = {set_key(item.partition("=")[0]) for item in args.set or []}
    extra = dict(data.pop("set", None) or {})
    if "user_encoders" in data:  # a results JSON's users: one group
        data["groups"] = "+".join(_listed(data.pop("user_encoders")))
    for key, value in data.items():
        key = KEY_ALIASES.get(key.replace("-", "_"), key.replace("-", "_"))
        if key == "ap_encoder":
            if not given(args, "ap"):
                args.ap = value
        elif key in _SWEEP_KEYS and not _an_axis(key, value):
            if getattr(args, key, None) is None or key in ("dataset",) and not given(args, key):
                setattr(args, key, _text(value))
        else:
            extra[key] = value
    for key, value in extra.items():
        if key == "channel" and isinstance(value, dict):
            for sub, sub_value in value.items():
                _add_set(args, f"channel.{sub}", sub_value, given_keys)
        else:
            _add_set(args, key, value, given_keys)


def _an_axis(key: str, value: Any) -> bool:
    """A value a sweep option cannot take: a table, or several values of a one-value
    option (``iterations = [5, 10]``: a ``--set`` axis instead)."""
    several = isinstance(value, (list, tuple)) and key in ("iterations", "power")
    return isinstance(value, dict) or several


def _listed(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else _split(str(value))


def _text(value: Any) -> Any:
    """A file's value as the option's text (a list comma-separated)."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return value if value is None else str(value)


def _add_set(args: argparse.Namespace, key: str, value: Any, given_keys: set[str]) -> None:
    """A config file's key as a ``--set`` item, unless the command line sets it. Left out: an
    unset (None) channel field, and a field the table has no column for at its default (a
    results JSON names every field)."""
    if value is None or isinstance(value, dict):
        return  # an unset channel field (a results JSON's channel block)
    try:
        name = set_key(key)
    except UsageError:
        field_ = AlignmentConfig.model_fields.get(key.replace("-", "_"))
        if field_ is not None and field_.default == value:
            return  # no column, but the default value: what the sweep runs anyway
        raise
    option = {"csi": "csi_modes"}.get(SHORTHANDS.get(name, name), SHORTHANDS.get(name, name))
    if name in given_keys or getattr(args, option, None) is not None:
        return  # the command line sets it
    args.set = [*(args.set or []), f"{key}={_text(value)}"]
