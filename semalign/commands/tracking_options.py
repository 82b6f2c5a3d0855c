"""``--track``, ``--track-uri`` and ``--track-experiment`` (``simulate``, ``run``, ``ap``,
``sweep``): their arguments, their checks before any work and the tracker they open."""

from __future__ import annotations

import argparse
from typing import Any

from semalign.common.errors import UsageError
from semalign.tracking import TRACKERS


def add_tracking_arguments(parser: argparse.ArgumentParser, what: str, experiment: str) -> None:
    """The tracking options; ``what`` says what is logged, ``experiment`` the default name."""
    track = parser.add_argument_group("experiment tracking")
    track.add_argument(
        "--track",
        choices=tuple(TRACKERS),
        help=f"log {what} to MLflow, TensorBoard or W&B (pip install 'semalign[mlflow]', "
        "[tensorboard] or [wandb])",
    )
    track.add_argument(
        "--track-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the file store "
        "file:./mlruns), TensorBoard log folder (default: runs) or W&B folder (default: here; "
        "WANDB_MODE=offline for no account)",
    )
    track.add_argument(
        "--track-experiment",
        help=f"MLflow experiment, TensorBoard sub-folder or W&B project (default: {experiment})",
    )


def check_tracking(args: argparse.Namespace) -> None:
    """``--track-uri``/``--track-experiment`` need ``--track``; a backend that is not
    installed is one line (UsageError, exit 2) before any work."""
    from semalign.tracking import missing_backend

    for option, value in (
        ("--track-uri", args.track_uri),
        ("--track-experiment", args.track_experiment),
    ):
        if value and not args.track:
            raise UsageError(f"{option} needs --track")
    if args.track:
        reason = missing_backend(args.track)
        if reason:
            raise UsageError(f"--track {args.track}: {reason}")


def open_tracker_from_args(args: argparse.Namespace, experiment: str) -> Any:
    """The tracker of ``--track`` (None without it); ``experiment`` unless
    ``--track-experiment`` names one."""
    from semalign.tracking import TrackingError, open_tracker

    if not args.track:
        return None
    try:
        return open_tracker(args.track, args.track_uri, args.track_experiment or experiment)
    except TrackingError as exc:
        raise UsageError(f"--track {args.track}: {exc}") from None


def track_session(
    args: argparse.Namespace,
    command: str,
    config: Any,
    ap_encoder: str,
    user_encoders: dict[str, str],
    tags: dict[str, Any],
) -> Any:
    """The :class:`~semalign.tracking.live.SeedRuns` of ``--track`` for a session run
    (``simulate``, ``run``, ``ap``; None without ``--track``): one tracked run per seed named
    ``<command> <strategy> seed <seed>`` in experiment ``command``, the config, the AP's and
    each user id's encoder as params (``<user>/encoder``), ``tags`` (the provenance) as tags."""
    from semalign.tracking.live import SeedRuns

    tracker = open_tracker_from_args(args, command)
    if tracker is None:
        return None
    params = {**config.params(), "ap_encoder": ap_encoder}
    params.pop("seed", None)
    return SeedRuns(tracker, f"{command} {config.strategy}", params, tags, user_encoders)


def end_session_tracking(runs: Any, args: argparse.Namespace, say: Any) -> None:
    """Close the tracker of :func:`track_session` and say what it logged (``say``: prints
    one line)."""
    if runs is None:
        return
    runs.tracker.close()
    say(f"tracked: {runs.finished} seed run(s) in {args.track}")
    if runs.error:
        say(f"tracking stopped after a failure (the results have every seed): {runs.error}")
