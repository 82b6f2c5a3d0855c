"""Options shared by the subcommands, and the help formatter they all use.

Alignment options are generated from :class:`~semalign.common.config.AlignmentConfig`, so
the config model is the one place a field, its bounds, its default and its help are written.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal, get_args, get_origin

from pydantic import ValidationError

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


#: AlignmentConfig fields that are per-session CLI options (the seed comes from --seeds).
CLI_FIELDS: tuple[str, ...] = tuple(f for f in AlignmentConfig.model_fields if f != "seed")


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
    parser.add_argument(
        "--seeds", default="27,42", help="comma-separated seeds (default: %(default)s)"
    )


def parse_seeds(text: str) -> list[int]:

    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise UsageError("--seeds is empty")
    return seeds


def config_from_args(args: argparse.Namespace) -> AlignmentConfig:
    """Validated AlignmentConfig from CLI arguments (UsageError with one line on bad values)."""

    try:
        return AlignmentConfig(**{f: getattr(args, f) for f in CLI_FIELDS})
    except ValidationError as exc:
        err = exc.errors()[0]
        option = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "config"
        raise UsageError(f"{option}: {err['msg']} (got {err.get('input')!r})") from None


def resolve_latents(args: argparse.Namespace) -> tuple[Path, str, list[str]]:
    """--latents/--ap/--users, defaulting to the digits cache (encoded on first use)."""
    from semalign.encoders import registry

    ap = args.ap or registry.DEFAULT_AP
    if args.latents and args.users not in registry.GROUPS:
        users = [u.strip() for u in args.users.split(",") if u.strip()]  # checked on load
    else:
        try:
            users = registry.resolve_encoders(args.users)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if args.latents:
        return Path(args.latents), ap, users
    from semalign.encoders import default_cache_dir, ensure_latents

    return ensure_latents("digits", [ap, *users], default_cache_dir(), progress=True), ap, users
