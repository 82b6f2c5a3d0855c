"""The ``semalign`` command line.

Each subcommand lives in its own module, which exposes ``register(subparsers)`` adding an
argparse sub-parser whose ``func`` default is called with the parsed arguments and returns the
process exit code. Modules are imported lazily so ``semalign --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from semalign import __version__
from semalign.commands.log_format import LOG_FORMATS, configure_logging
from semalign.common import failpoints
from semalign.common.errors import UsageError

#: Modules that contribute subcommands (each defines ``register(subparsers)``).
COMMAND_MODULES: tuple[str, ...] = (
    "semalign.commands.simulate",
    "semalign.deploy.cli",
    "semalign.commands.sweep",
    "semalign.commands.plot",
    "semalign.commands.encode",
    "semalign.commands.audit",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semalign",
        description="Federated latent-space alignment for multi-user semantic communications.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"semalign {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="log lines on stderr: text, or json (one object per line, for log shippers)",
    )
    one_line_errors(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    for command in subparsers.choices.values():
        # no prefix matching (``--seed 5`` is not ``--seeds 5``), and one-line errors
        command.allow_abbrev = False
        one_line_errors(command)
    return parser


def one_line_errors(parser: argparse.ArgumentParser) -> None:
    """Argparse's own errors (unknown option, bad value or choice, a missing option) as one
    line and exit code 2, like every other bad input, instead of the usage text."""
    parser.error = lambda message: parser.exit(  # type: ignore[method-assign]
        2, f"{parser.prog}: error: {message} (see {parser.prog} --help)\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    configure_logging(level, args.log_format)
    for note in dict.fromkeys(getattr(args, "deprecated_options", None) or ()):
        logging.getLogger("semalign.cli").warning(note)  # once each
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        failpoints.check()  # chaos tests' SEMALIGN_FAILPOINTS, if set: malformed is exit 2
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"semalign {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"semalign {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
