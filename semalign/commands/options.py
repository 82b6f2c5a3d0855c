"""Options shared by the subcommands, and the help formatter they all use.

Session options are generated from :class:`~semalign.common.config.AlignmentConfig` and
:class:`~semalign.common.channels.ChannelConfig` (:mod:`semalign.commands.config_options`,
re-exported here), so the config models are the one place a field, its bounds, its default and
its help are written; ``--config FILE`` is :mod:`semalign.commands.config_files`.

Names mean one thing everywhere: ``--ap-encoder`` is the AP's encoder, ``--user-encoders`` the
users' encoders, ``--num-users`` how many users, ``--user-ids`` which users (``ap``), and
``semalign user --ap`` the AP's address. The older ``--ap`` (an encoder) and ``--users`` (an
encoder list, a count or ids) stay accepted for one release and log a deprecation warning.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semalign.commands.config_options import (  # noqa: F401 (re-exported)
    CHANNEL_OPTIONS,
    CLI_FIELDS,
    DEFAULT_SEEDS,
    GivenStore,
    add_alignment_arguments,
    add_channel_arguments,
    channel_from_args,
    check_channel_users,
    config_from_args,
    given,
    option_of,
    parse_seeds,
)
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
        action=GivenStore,
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
            action=GivenStore,
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


def names_not_count(text: str) -> str:
    """``--user-encoders``, ``--user-ids``: names, never a bare count (``--num-users``)."""
    if text.strip().isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is a count: use --num-users {text.strip()}")
    return text


def user_count(text: str) -> str:
    """``--num-users``: a positive integer (kept as text: the users' spec)."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return text.strip()


def add_users_argument(parser: argparse.ArgumentParser) -> None:
    """``--user-encoders`` or ``--num-users`` (``simulate``, ``run``; both store the users'
    spec in ``args.users``), and the deprecated ``--users`` that took either."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--user-encoders",
        dest="users",
        default=DEFAULT_USERS,
        action=GivenStore,
        type=names_not_count,
        metavar="ENCODERS",
        help="the users' encoders, one user each: a group name (paper-users, homogeneous, "
        "heterogeneous) or comma-separated encoder names (default: %(default)s)",
    )
    group.add_argument(
        "--num-users",
        dest="users",
        action=GivenStore,
        type=user_count,
        metavar="N",
        help="N users: the first N encoders of the paper-users group, or of --latents "
        "(repeated if N is larger)",
    )
    group.add_argument(
        "--users",
        dest="users",
        action=GivenStore,
        deprecated={"--users": "--user-encoders or --num-users"},
        help="deprecated: --user-encoders ENCODERS or --num-users N",
    )


def add_expected_users_arguments(
    parser: argparse.ArgumentParser, what: str = "to wait for", default: str | None = None
) -> None:
    """``ap`` (the users ``what``: to wait for) and ``certs`` (to make secrets for):
    ``--num-users N`` or ``--user-ids IDS`` (one of them, in ``args.users``; ``default`` when
    neither is given), and the deprecated ``--users`` that took either."""
    group = parser.add_mutually_exclusive_group()
    add = group.add_argument
    otherwise = f"; default: {default}" if default else ""
    add("--num-users", dest="users", action=GivenStore, type=user_count, metavar="N",
        default=default, help=f"how many users {what} (ids user1..userN{otherwise})")  # fmt: skip
    add("--user-ids", dest="users", action=GivenStore, type=names_not_count, metavar="IDS",
        help=f"the comma-separated ids of the users {what}")  # fmt: skip
    add("--users", dest="users", action=GivenStore,
        deprecated={"--users": "--num-users N or --user-ids IDS"},
        help="deprecated: --num-users N or --user-ids IDS")  # fmt: skip


def add_ap_encoder_argument(parser: argparse.ArgumentParser) -> None:
    """``--ap-encoder`` (``args.ap``), and its deprecated spelling ``--ap``."""
    parser.add_argument(
        "--ap-encoder",
        "--ap",
        dest="ap",
        action=GivenStore,
        deprecated={"--ap": "--ap-encoder"},
        metavar="ENCODER",
        help="the AP's encoder (default: the registry's default AP; formerly --ap, deprecated)",
    )


def add_config_argument(parser: argparse.ArgumentParser, what: str = "") -> None:
    """``--config FILE``: options from a TOML, YAML or results JSON file; flags override it."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="read options from FILE: TOML or YAML (keys: the config fields, e.g. snr_db, "
        "admm_penalty or rho, channel.rho_tx or a [channel] table, seeds, ap_encoder, "
        "user_encoders, latents" + what + ") or a results JSON (its `config` block: the "
        "same run again); options given on the command line override it",
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
    """The users' spec (``--num-users`` N, or ``--user-encoders``: a group name or
    comma-separated encoder names) -> the user encoders.

    N takes the first N encoders of the default group (``paper-users``), or with ``--latents``
    the first N encoders of that cache other than the AP's, repeating them if N is larger.
    With ``--latents`` any name is accepted here (the cache is checked when loaded).
    """
    from semalign.common.latents import available_encoders
    from semalign.encoders import registry

    spec = spec.strip()
    if not spec.strip(", "):
        raise UsageError("--user-encoders/--users is empty")
    if spec.isdigit():
        count = int(spec)
        if count < 1:
            raise UsageError("--num-users must be at least 1")
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
    """``--latents``/``--ap-encoder``/``--user-encoders`` or ``--num-users`` -> (latent
    folder, AP encoder, user encoders)."""
    from semalign.encoders import registry

    ap = args.ap or registry.DEFAULT_AP
    latents = Path(args.latents) if getattr(args, "latents", None) else None
    users = resolve_users(args.users, latents, ap)
    return prepare_latents(args, [ap, *users]), ap, users


@dataclass(frozen=True)
class CheckedScenario:
    """What :func:`load_checked_scenario` gives: the loaded scenario, the latent folder, the
    AP's and the users' encoder names."""

    scenario: Any
    latents_dir: Path
    ap: str
    users: list[str]


def load_checked_scenario(args: argparse.Namespace, configs: Sequence[Any]) -> CheckedScenario:
    """Resolve the latents (:func:`resolve_latents`), check ``configs[0]``'s per-user channel
    lists against the users, load the scenario and build every config's session once (its
    geometry), before any work; a LatentsError or ValueError becomes a one-line UsageError."""
    from semalign.common.errors import LatentsError
    from semalign.engine.scenario import build_session, load_scenario

    try:
        latents_dir, ap, users = resolve_latents(args)
        check_channel_users(configs[0], len(users))
        scenario = load_scenario(latents_dir, ap, users)
        for config in configs:
            build_session(scenario, config)
    except (LatentsError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    return CheckedScenario(scenario, latents_dir, ap, users)
