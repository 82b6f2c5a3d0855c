"""Options of ``semalign run``, ``ap`` and ``user`` for crashes, rejoins and stragglers, and the
exit codes of the networked commands.

* ``--checkpoint PATH`` (AP side; default ``<--out>.checkpoint``): the run is saved there
  atomically after every handshake, round and seed (:mod:`semalign.server.checkpoint`);
  ``--resume`` continues the run saved there after the AP process died; a checkpoint already
  there is never overwritten silently: without ``--resume`` the command is refused unless
  ``--fresh`` (start over, replacing it). ``semalign run`` removes its checkpoint once its
  results are written (a failed run keeps it for ``--resume``).
* ``--rejoin-grace S``: on the AP, how long a user whose stream broke may take to come back;
  on a user, how long it keeps trying to come back (the AP restarting included).
* ``--round-deadline S`` and ``--stragglers drop|wait``: what the AP does with a user whose
  reply misses the deadline (:class:`~semalign.server.session.WaitPolicy`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from semalign.common.errors import UsageError
from semalign.common.network_defaults import REJOIN_GRACE

#: Exit codes of ``semalign run`` and ``semalign ap``.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_USERS_LOST = 0, 1, 2, 3
EXIT_EPILOG = (
    "exit codes: 0 every invited user finished every session; 3 results written, but some "
    "user was lost (dropped, refused, or never joined: the results' `lost` list says who, in "
    "which seed and why); 1 failure (no results); 2 bad usage (one line on stderr). "
    "Crashes: with --checkpoint (default OUT.checkpoint) the AP saves the run after every "
    "round; after the AP process died, the same command with --resume finishes it with the "
    "same results, users coming back within their --rejoin-grace. A checkpoint already there "
    "is refused (exit 2) unless --resume or --fresh (start over, replacing it)."
)
#: Exit codes of ``semalign user`` (direct, ``--ap``).
USER_EXIT_EPILOG = (
    "exit codes: 0 every session ended ok; 1 this user lost a session (dropped by the AP, a "
    "session went on without it, or its stream broke and it did not come back within "
    "--rejoin-grace; one line on stderr); 2 bad usage, or refused or unreachable before its "
    "first session (one line on stderr)."
)


def add_ap_arguments(parser: argparse.ArgumentParser) -> None:
    """The AP side's options (``run`` and ``ap``)."""
    group = parser.add_argument_group("crashes, rejoin and stragglers")
    group.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="save the run here after every handshake, round and seed (atomically; default: "
        "OUT.checkpoint next to --out)",
    )
    group.add_argument(
        "--resume",
        action="store_true",
        help="continue the run saved in --checkpoint (same options; refused if the file is "
        "damaged or belongs to another run)",
    )
    group.add_argument(
        "--fresh",
        action="store_true",
        help="start over even though --checkpoint holds a saved run, replacing it (without "
        "--resume or --fresh, a checkpoint already there is refused)",
    )
    group.add_argument(
        "--rejoin-grace",
        type=float,
        default=REJOIN_GRACE,
        metavar="S",
        help="seconds a user whose stream broke may take to come back (0: drop it at once)",
    )
    group.add_argument(
        "--round-deadline",
        type=float,
        metavar="S",
        help="seconds from the start of a round (or the final broadcast, or the evaluation) "
        "by which every reply should be in (default: none)",
    )
    group.add_argument(
        "--stragglers",
        choices=("drop", "wait"),
        default="wait",
        help="a reply that misses --round-deadline: drop its user, or wait up to "
        "--reply-timeout (recorded as a straggler)",
    )


def add_user_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rejoin-grace",
        type=float,
        default=REJOIN_GRACE,
        metavar="S",
        help="seconds to keep coming back when the stream to the AP breaks mid-session "
        "(the AP restarting included; 0: give up at once)",
    )


def check_user(args: argparse.Namespace) -> None:
    from semalign.server.serve_settings import check_grace

    check_grace(args.rejoin_grace)


def check_ap(args: argparse.Namespace) -> None:
    """The AP side's options; fills ``args.checkpoint`` with its default. ``--out`` is checked
    first: the default checkpoint lies beside it, and a bad ``--out`` is the error to report."""
    from semalign.server.serve_settings import check_grace, check_seconds

    from semalign.commands.options import check_output

    check_output(args.out)
    check_grace(args.rejoin_grace)
    check_seconds("--round-deadline", args.round_deadline)
    args.checkpoint = args.checkpoint or f"{args.out}.checkpoint"
    path = Path(args.checkpoint)
    if args.resume and args.fresh:
        raise UsageError("--resume and --fresh exclude each other")
    if args.resume and not path.is_file():
        raise UsageError(f"--resume: no checkpoint at {path}")
    if not (args.resume or args.fresh) and (path.exists() or path.is_symlink()):
        raise UsageError(
            f"checkpoint {path} holds a saved run: --resume to continue it, --fresh to start "
            "over and replace it"
        )
    check_output(path, "--checkpoint")


def start_afresh(args: argparse.Namespace) -> None:
    """``--fresh``: remove the old checkpoint now, so that a run that fails before its first
    save leaves none of the old run to ``--resume`` by mistake."""
    if args.fresh:
        try:
            Path(args.checkpoint).unlink(missing_ok=True)
        except OSError as exc:
            raise UsageError(
                f"--fresh: cannot remove the checkpoint {args.checkpoint}: {exc.strerror}"
            ) from None


def remove_checkpoint(path: str | Path) -> None:
    """Once the results are written the checkpoint is spent (``semalign run``)."""
    import contextlib

    with contextlib.suppress(OSError):
        Path(path).unlink(missing_ok=True)


def wait_policy(args: argparse.Namespace):
    """The driver's :class:`~semalign.server.session.WaitPolicy` from the options."""
    from semalign.server.session import WaitPolicy

    return WaitPolicy(
        reply_timeout=args.reply_timeout,
        round_deadline=args.round_deadline,
        stragglers=args.stragglers,
        rejoin_grace=args.rejoin_grace,
    )


def exit_code(results: dict) -> int:
    """0 if every invited user finished every session, else 3 (results written, users lost)."""
    return EXIT_USERS_LOST if results.get("lost") else EXIT_OK
