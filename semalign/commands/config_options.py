"""The session options of ``simulate``, ``run`` and ``ap``, generated from the config models.

One option per field of :class:`~semalign.common.config.AlignmentConfig` (its description as
help, its default, its Literal values as choices) and per field of
:class:`~semalign.common.channels.ChannelConfig` (:data:`CHANNEL_OPTIONS`), named
``--<field-with-dashes>`` except where a clearer name is given (:data:`RENAMED`: the ADMM
penalty ``rho`` is ``--admm-penalty``, the antenna correlations are ``--tx-correlation`` and
``--rx-correlation``). An older spelling stays accepted for one release as a deprecated alias
that logs a warning once (:class:`GivenStore`).

Every option of this module records that it was given on the command line
(``args.given_options``), so a ``--config`` file (:mod:`semalign.commands.config_files`) fills
only the options not given: defaults < config file < command-line flags.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from pydantic import ValidationError

from semalign.common.channels import ChannelConfig
from semalign.common.config import AlignmentConfig
from semalign.common.errors import UsageError
from semalign.common.strategies import strategy_help, strategy_names

#: Fields whose choices and help are read from a registry when a parser is built (so a
#: strategy registered after the config module was imported is offered too).
LIVE_CHOICES: dict[str, tuple[Callable[[], tuple[str, ...]], Callable[[], str]]] = {
    "strategy": (strategy_names, strategy_help),
}

#: The namespace attributes the recording actions fill.
GIVEN, DEPRECATED = "given_options", "deprecated_options"


def _record(action: argparse.Action, namespace: argparse.Namespace, spelled: str | None) -> None:
    """Note ``action.dest`` as given, and a deprecated ``spelled`` option with its successor."""
    setattr(namespace, GIVEN, {*(getattr(namespace, GIVEN, None) or ()), action.dest})
    successor = getattr(action, "deprecated", {}).get(spelled)
    if successor:
        notes = list(getattr(namespace, DEPRECATED, None) or ())
        notes.append(
            f"{spelled} is deprecated and goes in the next release: use {successor} instead"
        )
        setattr(namespace, DEPRECATED, notes)


class GivenStore(argparse._StoreAction):
    """``store``, recording the option as given; ``deprecated`` maps an old spelling (one of
    the option strings) to what replaces it."""

    def __init__(self, option_strings: list[str], dest: str, deprecated=None, **kwargs: Any):
        super().__init__(option_strings, dest, **kwargs)
        self.deprecated: dict[str, str] = dict(deprecated or {})

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        _record(self, namespace, option_string)
        super().__call__(parser, namespace, values, option_string)


class GivenFlag(argparse.BooleanOptionalAction):
    """``--x/--no-x``, recording the option as given."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:  # noqa: ANN001
        _record(self, namespace, option_string)
        super().__call__(parser, namespace, values, option_string)


def given(args: argparse.Namespace, dest: str) -> bool:
    """Whether option ``dest`` was given on the command line (not a default or a file value)."""
    return dest in (getattr(args, GIVEN, None) or ())


# ---------------------------------------------------------------------------- names
#: AlignmentConfig fields that are per-session CLI options (the seed comes from --seeds; the
#: nested ``channel`` has flat options of its own, :data:`CHANNEL_OPTIONS`).
CLI_FIELDS: tuple[str, ...] = tuple(
    f for f in AlignmentConfig.model_fields if f not in ("seed", "channel")
)

#: Config fields whose option is not ``--<field-with-dashes>``: (option, deprecated aliases).
#: ``channel.<field>`` for a ChannelConfig field.
RENAMED: dict[str, tuple[str, tuple[str, ...]]] = {
    "rho": ("--admm-penalty", ("--rho",)),
    "channel.model": ("--channel-model", ()),
    "channel.rho_tx": ("--tx-correlation", ("--rho-tx",)),
    "channel.rho_rx": ("--rx-correlation", ("--rho-rx",)),
    "channel.csi_error_variance": ("--csi-error", ()),
}


def option_of(key: str) -> str:
    """The command-line option of config key ``key`` (``rho`` -> ``--admm-penalty``,
    ``channel.rho_tx`` -> ``--tx-correlation``, ``snr_db`` -> ``--snr-db``)."""
    if key in RENAMED:
        return RENAMED[key][0]
    return "--" + key.rpartition(".")[2].replace("_", "-")


def option_label(key: str) -> str:
    """``option_of(key)`` in an error message, with a deprecated spelling the user may have
    typed: ``--admm-penalty (formerly --rho)``."""
    aliases = RENAMED.get(key, ("", ()))[1]
    return option_of(key) + (f" (formerly {', '.join(aliases)})" if aliases else "")


@dataclass(frozen=True)
class ChannelOption:
    """How one :class:`ChannelConfig` field appears on the command line: what its default
    means (the field itself is None: unset), its metavar, and a help text clearer there than
    the field's description (None: the description)."""

    default: str
    metavar: str | None = None
    help: str | None = None

    def text(self, name: str) -> str:
        base = self.help or ChannelConfig.model_fields[name].description or name
        if name in ("user_snr_db", "distances"):
            base += "; comma-separated, one per user in user order"
            if name == "user_snr_db":
                base += " (negative values need '=': --user-snr-db=-5,10)"
        return f"{base} (default: {self.default})"


#: ChannelConfig field -> its option's default text, metavar and help.
CHANNEL_OPTIONS: dict[str, ChannelOption] = {
    "model": ChannelOption("rayleigh"),
    "rho_tx": ChannelOption("0 when only --rx-correlation is given", "RHO"),
    "rho_rx": ChannelOption("0 when only --tx-correlation is given", "RHO"),
    "k_factor": ChannelOption("required by rician", "K"),
    "aod_deg": ChannelOption("uniform per user", "DEG"),
    "aoa_deg": ChannelOption("uniform per user", "DEG"),
    "csi_error_variance": ChannelOption(
        "0, perfect CSI",
        "VAR",
        "CSI error variance sigma_e^2 (linear, per entry, channel power 1): users and the AP "
        "design with Hhat = Hbar + E, symbols go through Hbar",
    ),
    "user_snr_db": ChannelOption("--snr-db for every user", "LIST"),
    "distances": ChannelOption("none", "LIST"),
    "snr_ref_db": ChannelOption("--snr-db", "DB", "path loss: SNR at --reference-distance, dB"),
    "reference_distance": ChannelOption("1", "M", "path loss: reference distance d_ref, metres"),
    "path_loss_exponent": ChannelOption(
        "3", "N", "path loss: exponent n, SNR_l = SNR_ref - 10 n log10(d_l / d_ref)"
    ),
}


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def add_option(parser: Any, key: str, **kwargs: Any) -> None:
    """Add config key ``key``'s option (with its deprecated aliases) to ``parser``."""
    option = option_of(key)
    aliases = RENAMED.get(key, ("", ()))[1]
    if kwargs.get("action") is not GivenFlag:
        kwargs.setdefault("action", GivenStore)
        kwargs["deprecated"] = dict.fromkeys(aliases, option)
    if aliases:
        kwargs["help"] += f" (formerly {', '.join(aliases)}, deprecated)"
    parser.add_argument(option, *aliases, **kwargs)


def add_channel_arguments(parser: Any) -> None:
    """Flat options for :class:`ChannelConfig` (``config_from_args`` nests them as ``channel``;
    the option of field ``x`` stores to ``channel_x``)."""
    for name, spec in CHANNEL_OPTIONS.items():
        info = ChannelConfig.model_fields[name]
        common = {"dest": f"channel_{name}", "help": spec.text(name)}
        if name == "model":
            add_option(parser, f"channel.{name}", choices=get_args(info.annotation), **common)
        elif name in ("user_snr_db", "distances"):
            add_option(parser, f"channel.{name}", type=_float_list, metavar="LIST", **common)
        else:
            add_option(parser, f"channel.{name}", type=float, metavar=spec.metavar, **common)


#: The seeds of a run when neither ``--seeds`` nor a config file names them.
DEFAULT_SEEDS = "27,42"


def add_alignment_arguments(parser: Any) -> None:
    """The session options shared by ``simulate``, ``run`` and ``ap``, generated from
    :class:`AlignmentConfig` (and :class:`ChannelConfig`), plus ``--seeds``."""
    for name in CLI_FIELDS:
        info = AlignmentConfig.model_fields[name]
        help_text = f"{info.description} (default: %(default)s)"
        kwargs: dict[str, Any] = {"dest": name, "default": info.default, "help": help_text}
        if name == "rho":
            kwargs["metavar"] = "RHO"
        if name in LIVE_CHOICES:
            choices, text = LIVE_CHOICES[name]
            kwargs["help"] = f"{text()} (default: %(default)s)"
            add_option(parser, name, choices=choices(), **kwargs)
        elif info.annotation is bool:
            add_option(parser, name, action=GivenFlag, **kwargs)
        elif get_origin(info.annotation) is Literal:
            add_option(parser, name, choices=get_args(info.annotation), **kwargs)
        elif isinstance(info.annotation, type) and info.annotation in (int, float, str):
            add_option(parser, name, type=info.annotation, **kwargs)
        else:
            add_option(parser, name, **kwargs)  # validated by the model
    add_channel_arguments(parser)
    parser.add_argument(
        "--seeds",
        default=DEFAULT_SEEDS,
        action=GivenStore,
        help="comma-separated seeds, one session each (default: %(default)s)",
    )


# ---------------------------------------------------------------------------- parsing
def parse_seeds(text: str) -> list[int]:
    """``--seeds``: comma-separated integers in 0..2^32-1 (numpy's seed range)."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise UsageError("--seeds is empty")
    bad = [s for s in seeds if not 0 <= s < 2**32]
    if bad:
        raise UsageError(f"--seeds must be in 0..{2**32 - 1}, got {bad[0]}")
    return seeds


def channel_from_args(args: argparse.Namespace) -> ChannelConfig:
    """The ChannelConfig of the flat channel options (UsageError with one line, naming the
    option, on bad values)."""
    values = {
        name: getattr(args, f"channel_{name}")
        for name in CHANNEL_OPTIONS
        if getattr(args, f"channel_{name}", None) is not None
    }
    try:
        return ChannelConfig(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["loc"]:
            option = option_label(f"channel.{err['loc'][0]}")
            raise UsageError(f"{option}: {msg} (got {err.get('input')!r})") from None
        for name in CHANNEL_OPTIONS:
            if name != "model":
                msg = re.sub(rf"\b{name}\b", option_of(f"channel.{name}"), msg)
        raise UsageError(f"channel options: {msg}") from None


def config_from_args(args: argparse.Namespace) -> AlignmentConfig:
    """Validated AlignmentConfig from CLI arguments (UsageError with one line on bad values)."""
    channel = channel_from_args(args)
    try:
        return AlignmentConfig(**{f: getattr(args, f) for f in CLI_FIELDS}, channel=channel)
    except ValidationError as exc:
        err = exc.errors()[0]
        option = option_label(str(err["loc"][0])) if err["loc"] else "config"
        msg = str(err["msg"]).removeprefix("Value error, ")
        raise UsageError(f"{option}: {msg} (got {err.get('input')!r})") from None


def check_channel_users(config: AlignmentConfig, users: int) -> None:
    """A per-user SNR list (``--user-snr-db``, ``--distances``) must have one entry per user."""
    try:
        config.channel.user_snrs(users, config.snr_db)
    except ValueError as exc:
        msg = str(exc)
        for name in ("user_snr_db", "distances"):
            msg = msg.replace(name, option_of(f"channel.{name}"))
        raise UsageError(msg) from None
