"""Options shared by the subcommands, and the help formatter they all use.

Alignment options are generated from :class:`~semalign.common.config.AlignmentConfig`, so
the config model is the one place a field, its bounds, its default and its help are written.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Literal, get_args, get_origin

from pydantic import ValidationError

from semalign.common.channels import ChannelConfig
from semalign.common.config import AlignmentConfig
from semalign.common.errors import UsageError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to an option's help, except where the help already states its
    default, the default is ``None`` (the option then falls back to a preset or a config
    field, which the help text names) or the option is a plain off-by-default flag."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action)


#: AlignmentConfig fields that are per-session CLI options (the seed comes from --seeds; the
#: nested ``channel`` has flat options of its own, ``CHANNEL_OPTIONS``).
CLI_FIELDS: tuple[str, ...] = tuple(
    f for f in AlignmentConfig.model_fields if f not in ("seed", "channel")
)

#: ChannelConfig field -> its flat option of ``simulate`` / ``run`` / ``ap``.
CHANNEL_OPTIONS: dict[str, str] = {
    "model": "--channel-model",
    "rho_tx": "--rho-tx",
    "rho_rx": "--rho-rx",
    "k_factor": "--k-factor",
    "aod_deg": "--aod-deg",
    "aoa_deg": "--aoa-deg",
    "csi_error_variance": "--csi-error",
    "user_snr_db": "--user-snr-db",
    "distances": "--distances",
    "snr_ref_db": "--snr-ref-db",
    "reference_distance": "--reference-distance",
    "path_loss_exponent": "--path-loss-exponent",
}

#: What each channel option defaults to, for its help.
_CHANNEL_DEFAULTS: dict[str, str] = {
    "model": "rayleigh",
    "rho_tx": "0 when only --rho-rx is given",
    "rho_rx": "0 when only --rho-tx is given",
    "k_factor": "required by rician",
    "aod_deg": "uniform per user",
    "aoa_deg": "uniform per user",
    "csi_error_variance": "0, perfect CSI",
    "user_snr_db": "--snr-db for every user",
    "distances": "none",
    "snr_ref_db": "--snr-db",
    "reference_distance": "1",
    "path_loss_exponent": "3",
}


def _float_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


#: Help texts clearer on a command line than the field descriptions.
_CHANNEL_HELP: dict[str, str] = {
    "csi_error_variance": "CSI error variance sigma_e^2 (linear, per entry, channel power 1): "
    "users and the AP design with Hhat = Hbar + E, symbols go through Hbar",
    "snr_ref_db": "path loss: SNR at --reference-distance, dB",
    "reference_distance": "path loss: reference distance d_ref, metres",
    "path_loss_exponent": "path loss: exponent n, SNR_l = SNR_ref - 10 n log10(d_l / d_ref)",
}


def add_channel_arguments(parser: argparse.ArgumentParser) -> None:
    """Flat options for :class:`ChannelConfig` (``config_from_args`` nests them as ``channel``)."""
    for name, option in CHANNEL_OPTIONS.items():
        info = ChannelConfig.model_fields[name]
        text = _CHANNEL_HELP.get(name, info.description)
        help_text = f"{text} (default: {_CHANNEL_DEFAULTS[name]})"
        dest = f"channel_{name}"
        if name == "model":
            parser.add_argument(
                option, dest=dest, choices=get_args(info.annotation), help=help_text
            )
        elif name in ("user_snr_db", "distances"):
            help_text += "; comma-separated, one per user in --users order"
            if name == "user_snr_db":
                help_text += " (negative values need '=': --user-snr-db=-5,10)"
            parser.add_argument(option, dest=dest, type=_float_list, metavar="LIST", help=help_text)
        else:
            metavar = {"rho_tx": "RHO", "rho_rx": "RHO", "k_factor": "K", "aod_deg": "DEG"}
            metavar |= {"aoa_deg": "DEG", "csi_error_variance": "VAR", "snr_ref_db": "DB"}
            metavar |= {"reference_distance": "M", "path_loss_exponent": "N"}
            parser.add_argument(
                option, dest=dest, type=float, metavar=metavar[name], help=help_text
            )


def add_alignment_arguments(parser: argparse.ArgumentParser) -> None:
    """The alignment options shared by ``simulate`` and ``run`` (names of the reference code).

    Generated from :class:`AlignmentConfig`: option ``--channel-uses`` for field
    ``channel_uses``, its description as help, its default, its Literal values as choices.
    """
    for name in CLI_FIELDS:
        info = AlignmentConfig.model_fields[name]
        option = "--" + name.replace("_", "-")
        help_text = f"{info.description} (default: %(default)s)"
        if info.annotation is bool:
            parser.add_argument(
                option, action=argparse.BooleanOptionalAction, default=info.default, help=help_text
            )
        elif get_origin(info.annotation) is Literal:
            parser.add_argument(
                option, choices=get_args(info.annotation), default=info.default, help=help_text
            )
        else:
            parser.add_argument(option, type=info.annotation, default=info.default, help=help_text)
    add_channel_arguments(parser)
    parser.add_argument(
        "--seeds", default="27,42", help="comma-separated seeds (default: %(default)s)"
    )


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
    given = {
        name: getattr(args, f"channel_{name}")
        for name in CHANNEL_OPTIONS
        if getattr(args, f"channel_{name}", None) is not None
    }
    try:
        return ChannelConfig(**given)
    except ValidationError as exc:
        err = exc.errors()[0]
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["loc"]:
            option = CHANNEL_OPTIONS[str(err["loc"][0])]
            raise UsageError(f"{option}: {msg} (got {err.get('input')!r})") from None
        for name, option in CHANNEL_OPTIONS.items():
            if name != "model":
                msg = re.sub(rf"\b{name}\b", option, msg)
        raise UsageError(f"channel options: {msg}") from None


def config_from_args(args: argparse.Namespace) -> AlignmentConfig:
    """Validated AlignmentConfig from CLI arguments (UsageError with one line on bad values)."""

    channel = channel_from_args(args)
    try:
        return AlignmentConfig(**{f: getattr(args, f) for f in CLI_FIELDS}, channel=channel)
    except ValidationError as exc:
        err = exc.errors()[0]
        option = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "config"
        raise UsageError(f"{option}: {err['msg']} (got {err.get('input')!r})") from None


def check_channel_users(config: AlignmentConfig, users: int) -> None:
    """A per-user SNR list (``--user-snr-db``, ``--distances``) must have one entry per user."""
    try:
        config.channel.user_snrs(users, config.snr_db)
    except ValueError as exc:
        msg = str(exc)
        for name in ("user_snr_db", "distances"):
            msg = msg.replace(name, CHANNEL_OPTIONS[name])
        raise UsageError(msg) from None


#: The user group when ``--users`` is not given.
DEFAULT_USERS = "paper-users"


def add_verbosity_arguments(parser: argparse.ArgumentParser) -> None:
    """``-v/--verbose`` (repeatable) and ``-q/--quiet``, accepted after the subcommand too.

    The top-level parser defines ``-v`` as well; ``argparse.SUPPRESS`` keeps a subcommand's
    own ``-v`` from resetting what was given before the subcommand.
    """
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="more log output (-vv for debug)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress display or table")


def add_data_arguments(parser: argparse.ArgumentParser, *, latents: bool = True) -> None:
    """``--dataset``, ``--cache-dir`` and (optionally) ``--latents``: where latents come from."""
    from semalign.encoders.datasets import DATASETS

    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset",
        default="digits",
        choices=list(DATASETS),
        help="dataset the encoders encode when their latents are not cached yet",
    )
    group.add_argument(
        "--cache-dir",
        help="latent cache folder (default: $SEMALIGN_CACHE, else ./cache)",
    )
    if latents:
        group.add_argument(
            "--latents",
            help="use this latent folder <dir>/<encoder>/{train,val,test}.npz as it is "
            "(default: <cache-dir>/<dataset>, encoded on first use)",
        )
        group.add_argument(
            "--pretrained",
            action="store_true",
            help="encode missing entries with timm's pretrained weights (Hugging Face cache, "
            "network or --weights) instead of training each encoder locally",
        )
        group.add_argument(
            "--weights",
            action="append",
            default=[],
            metavar="NAME=PATH",
            help="local pretrained weights file for one encoder (repeatable; default: none)",
        )


def parse_weights(items: list[str]) -> dict[str, Path]:
    """``--weights NAME=PATH`` items -> {name: path} (UsageError for a malformed item)."""
    out: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--weights expects NAME=PATH, got {item!r}")
        out[name.strip()] = Path(path)
    return out


def add_users_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--users",
        default=DEFAULT_USERS,
        help="user encoders: a count N (the first N of the paper-users group, or of --latents), "
        "a group name, or comma-separated encoder names (default: %(default)s)",
    )


def add_workers_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"parallel worker processes for {what} (default: the CPU count, at most the jobs)",
    )


def check_workers(args: argparse.Namespace) -> int | None:
    """``--workers`` validated (>= 1) or None."""
    workers = getattr(args, "workers", None)
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    return workers


def check_output(path: str | Path | None, option: str = "--out") -> None:
    """An output file (``--out``, ``--json``): fail now, before any work, if it could not be
    written there (its folder is created and a probe file written and removed)."""
    if path is None or str(path) == "":
        return
    from semalign.common.io import check_writable

    parent = Path(path).absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: {parent} is not a folder")
    try:
        check_writable(path)
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot write there ({exc.strerror or exc})") from None


def check_folder(option: str, value: str | Path | None) -> None:
    """An output folder (``--cache-dir``, ``--workdir``, ``plot --out``): one that exists or
    can be created (not a file, nor under one) and where a file can be written (a probe file
    in it, or in its nearest existing parent, is created and removed). Nothing is created."""
    if value is None:
        return
    import tempfile

    path = Path(value).absolute()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {value}: exists and is not a folder")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{option} {value}: {parent} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=parent, prefix=".semalign-probe-"):
            pass
    except OSError as exc:
        raise UsageError(
            f"{option} {value}: cannot write in {parent} ({exc.strerror or exc})"
        ) from None


def check_cache_dir(args: argparse.Namespace) -> None:
    """``--cache-dir`` (when latents may be encoded into it, i.e. without ``--latents``)."""
    if not getattr(args, "latents", None):
        check_folder("--cache-dir", getattr(args, "cache_dir", None))


def resolve_users(spec: str, latents: Path | None, ap: str) -> list[str]:
    """``--users``: a count N, a group name, or comma-separated encoder names.

    N takes the first N encoders of the default group (``paper-users``), or with ``--latents``
    the first N encoders of that cache other than the AP's, repeating them if N is larger.
    With ``--latents`` any name is accepted here (the cache is checked when loaded).
    """
    from semalign.common.latents import available_encoders
    from semalign.encoders import registry

    spec = spec.strip()
    if not spec.strip(", "):
        raise UsageError("--users is empty")
    if spec.isdigit():
        count = int(spec)
        if count < 1:
            raise UsageError("--users must be at least 1")
        if latents is not None:
            pool = [e for e in available_encoders(latents) if e != ap]
            if not pool:
                raise UsageError(f"no user encoders in {latents}")
        else:
            pool = list(registry.GROUPS[DEFAULT_USERS])
        return [pool[i % len(pool)] for i in range(count)]
    if latents is not None and spec not in registry.ALL_GROUPS:
        return [u.strip() for u in spec.split(",") if u.strip()]
    try:
        return registry.resolve_encoders(spec)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def prepare_latents(args: argparse.Namespace, encoders: list[str]) -> Path:
    """The latent folder for ``encoders``: ``--latents`` as given, else ``<cache-dir>/<dataset>``
    with every missing entry encoded now (progress on the console unless ``--quiet``)."""
    if getattr(args, "latents", None):
        return Path(args.latents)
    from semalign.common.errors import DatasetUnavailable, WeightsUnavailable
    from semalign.encoders import default_cache_dir, ensure_latents

    cache_dir = Path(args.cache_dir) if getattr(args, "cache_dir", None) else default_cache_dir()
    check_folder("--cache-dir" if getattr(args, "cache_dir", None) else "cache folder", cache_dir)
    options = {}
    if getattr(args, "pretrained", False):
        options = {"pretrained": True, "weights": parse_weights(args.weights)}
    elif getattr(args, "weights", None):
        raise UsageError("--weights needs --pretrained")
    try:
        return Path(
            ensure_latents(
                args.dataset,
                encoders,
                cache_dir,
                progress=not getattr(args, "quiet", False),
                **options,
            )
        )
    except (DatasetUnavailable, WeightsUnavailable) as exc:
        raise UsageError(str(exc)) from None


def check_latents(latents_dir: str | Path, ap: str, users: list[str]) -> None:
    """Load the AP's and every user's latents as ``simulate`` does (:func:`load_scenario`:
    each split file read and checked finite, rows aligned across encoders: same counts, same
    labels); UsageError with one line naming the encoder or its file and the problem.

    ``run`` calls it before it starts any process, so a misspelled encoder or a damaged or
    misaligned user cache is refused up front instead of starting the session without that
    user."""
    from semalign.common.errors import LatentsError
    from semalign.engine.scenario import load_scenario

    try:
        load_scenario(latents_dir, ap, list(users))
    except LatentsError as exc:
        raise UsageError("; ".join(str(exc).splitlines())) from None


def resolve_latents(args: argparse.Namespace) -> tuple[Path, str, list[str]]:
    """``--latents``/``--ap``/``--users`` -> (latent folder, AP encoder, user encoders)."""
    from semalign.encoders import registry

    ap = args.ap or registry.DEFAULT_AP
    latents = Path(args.latents) if getattr(args, "latents", None) else None
    users = resolve_users(args.users, latents, ap)
    return prepare_latents(args, [ap, *users]), ap, users
