"""``--config FILE``: a command's options from a TOML, YAML or results JSON file.

A file is a mapping whose keys are the config models' field names (``snr_db``, ``strategy``,
``channel_uses``...), a channel field as ``channel.rho_tx`` or inside a ``[channel]`` table, and
the run's scenario: ``seeds``, ``ap_encoder`` (or ``ap``), ``user_encoders`` (or ``users``),
``num_users``, ``user_ids``, ``latents``, ``dataset``. The renamed options' names are accepted
as keys too (``admm_penalty`` for ``rho``, ``tx_correlation`` for ``channel.rho_tx``). A results
JSON (``simulate``, ``run``, ``ap``) is read through its ``config`` block, which holds every
field of the run, its seeds, latents, AP and user encoders: the same command with
``--config results.json`` runs the same sessions again.

Precedence: defaults < the file < options given on the command line
(:func:`~semalign.commands.config_options.given`). A key the command has no option for is one
line and exit 2 (from a results JSON, the scenario keys the command does not take, e.g. the
user encoders on ``ap``, are skipped).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import tomllib

from semalign.commands.config_options import CHANNEL_OPTIONS, CLI_FIELDS, given
from semalign.common.config import LEGACY_PRECISION, LEGACY_TASK_MODEL
from semalign.common.errors import UsageError

#: Other spellings of keys -> the key (the options' names, the results JSON's names).
KEY_ALIASES: dict[str, str] = {
    "admm_penalty": "rho",
    "tx_correlation": "channel.rho_tx",
    "rx_correlation": "channel.rho_rx",
    "csi_error": "channel.csi_error_variance",
    "channel_model": "channel.model",
    "ap": "ap_encoder",
    "users": "user_encoders",
}

#: Scenario keys -> the namespace attribute they fill.
SCENARIO_KEYS: dict[str, str] = {
    "seeds": "seeds",
    "ap_encoder": "ap",
    "user_encoders": "users",
    "num_users": "users",
    "user_ids": "users",
    "latents": "latents",
    "dataset": "dataset",
}

#: What the results JSON's scenario keys are (``simulate``/``run`` write them).
_RESULTS_SCENARIO = ("seeds", "latents", "ap_encoder", "user_encoders")


def read_mapping(path: str | Path) -> dict[str, Any]:
    """The file's mapping (a results JSON: its ``config`` block). UsageError with one line
    when it cannot be read or parsed."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        if suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = _yaml(path, text)
        elif suffix == ".json":
            data = json.loads(text)
            if isinstance(data, dict) and isinstance(data.get("config"), dict):
                data = results_config(data["config"])
        else:
            raise UsageError(f"--config {path}: expected a .toml, .yaml, .yml or .json file")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"--config {path}: not valid {suffix[1:].upper()}: {first}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--config {path}: expected a mapping of options")
    return data


def _yaml(path: Path, text: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise UsageError(
            f"--config {path}: reading YAML needs PyYAML, which is not installed here "
            "(pip install pyyaml), or use TOML"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(str(exc).replace("\n", " ")) from None


def results_config(block: dict[str, Any]) -> dict[str, Any]:
    """A results JSON's ``config`` block as a config mapping: the scenario under its keys, a
    file older than the task model's or the precision's field with the value it ran."""
    data = {KEY_ALIASES.get(k, k): v for k, v in block.items()}
    data.setdefault("task_model", LEGACY_TASK_MODEL)
    data.setdefault("precision", LEGACY_PRECISION)
    data["from_results"] = True
    return data


def flatten(data: dict[str, Any]) -> dict[str, Any]:
    """Nested tables (``[channel]``) as dotted keys, aliases as their keys."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        key = str(key).replace("-", "_")
        if key == "channel" and isinstance(value, dict):
            for sub, sub_value in value.items():
                flat[f"channel.{str(sub).replace('-', '_')}"] = sub_value
        elif key in CHANNEL_OPTIONS:
            flat[f"channel.{key}"] = value  # a channel field named without its table
        else:
            flat[KEY_ALIASES.get(key, key)] = value
    return flat


def _as_text(value: Any) -> Any:
    """A list (seeds, encoders, ids) as the comma-separated text the options take."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return value if value is None or isinstance(value, str) else str(value)


def destinations(args: argparse.Namespace) -> dict[str, str]:
    """Config key -> namespace attribute, for the options ``args``' command has."""
    keys = {name: name for name in CLI_FIELDS if hasattr(args, name)}
    keys |= {
        f"channel.{n}": f"channel_{n}" for n in CHANNEL_OPTIONS if hasattr(args, f"channel_{n}")
    }
    keys |= {k: dest for k, dest in SCENARIO_KEYS.items() if hasattr(args, dest)}
    return keys


def apply_config_file(args: argparse.Namespace, scenario: tuple[str, ...] = ()) -> None:
    """Fill ``args`` from ``args.config`` where the option was not given on the command line.

    Args:
        args: the parsed options (with ``config``; a command without it is left alone).
        scenario: the scenario keys this command takes (``seeds``, ``ap_encoder``,
            ``user_encoders``, ``num_users``, ``user_ids``, ``latents``, ``dataset``).

    Raises:
        UsageError: the file cannot be read, or names a key the command has no option for.
    """
    path = getattr(args, "config", None)
    if not path:
        return
    data = flatten(read_mapping(path))
    from_results = bool(data.pop("from_results", False))
    keys = {k: d for k, d in destinations(args).items() if k not in SCENARIO_KEYS or k in scenario}
    for key, value in data.items():
        if key not in keys:
            if from_results and key in _RESULTS_SCENARIO:
                continue  # e.g. a run's user encoders, fed to ``ap``
            raise UsageError(
                f"--config {path}: unknown key {key!r} (keys: the config fields, channel.<field>, "
                f"{', '.join(k for k in SCENARIO_KEYS if k in scenario)})"
            )
        dest = keys[key]
        if not given(args, dest):
            setattr(args, dest, _value(key, value))


def _value(key: str, value: Any) -> Any:
    """A file's value as the option's parsed value would be."""
    if key in SCENARIO_KEYS:
        return _as_text(value)
    if key in ("channel.user_snr_db", "channel.distances") and isinstance(value, list):
        return tuple(value)
    return value
