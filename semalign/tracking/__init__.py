"""Experiment tracking: every run of a sweep (or a ``simulate``, ``run`` or ``ap`` seed) as a
tracked run in MLflow, TensorBoard or Weights & Biases, logged after the run (a sweep's:
:meth:`Tracker.log`) or round by round as it happens (``simulate``, ``run``, ``ap``:
:meth:`Tracker.start`).

The records, metric names and errors are in :mod:`semalign.tracking.runs` (re-exported here),
the backends in :mod:`semalign.tracking.backends`, which import only that module (no circle).
A :class:`TrackedRun` is backend-neutral: the run's name, its parameters (the config, and each
user's encoder as ``<user>/encoder``), tags (the provenance), one dict of metrics per ADMM round
(step = round) and the final metrics (network means and ``<user>/<metric>`` per user id).
:func:`from_seed_block` builds one from a seed's results block
(:func:`semalign.engine.simulate.simulate_seed`'s :class:`~semalign.common.records.SeedResult`);
:func:`open_tracker` opens a backend, whose package is an optional extra
(``pip install 'semalign[mlflow]'``, ``[tensorboard]``, ``[wandb]``)::

    with open_tracker("mlflow", uri="file:./mlruns", experiment="my-sweep") as tracker:
        tracker.log(from_seed_block("fed 4x4 K=2 seed 27", params, block, run_provenance()))
        live = tracker.start("simulate fed seed 27", params)
        live.round(0, {"pilot_mse_whitened": 0.4})
        live.finish({"accuracy": 0.9})
"""

from __future__ import annotations

from typing import Any

from semalign.tracking.runs import (
    ROUND_METRICS,
    TRACKERS,
    USER_METRICS,
    LiveRun,
    TrackedRun,
    Tracker,
    TrackerUnavailable,
    TrackingError,
    final_metrics,
    from_seed_block,
    round_metric_values,
    round_metrics,
    user_encoders,
)


def open_tracker(kind: str, uri: str | None = None, experiment: str = "semalign") -> Any:
    """Open the ``kind`` backend (a :class:`Tracker`, usable as a context manager).

    Args:
        kind: ``mlflow``, ``tensorboard`` or ``wandb``.
        uri: MLflow: the tracking URI (default ``$MLFLOW_TRACKING_URI``, else ``file:./mlruns``);
            TensorBoard: the log folder (default ``runs``); W&B: the folder its files go to
            (default: the current folder; the mode follows ``WANDB_MODE``, e.g. ``offline``).
        experiment: MLflow experiment, TensorBoard sub-folder, W&B project.

    Raises:
        TrackerUnavailable: the backend's package is not installed.
        TrackingError: unknown backend, or the backend refused to open.
    """
    from semalign.tracking import backends

    openers = {
        "mlflow": backends.MlflowTracker,
        "tensorboard": backends.TensorBoardTracker,
        "wandb": backends.WandbTracker,
    }
    if kind not in openers:
        raise TrackingError(f"unknown tracker {kind!r}; choose from {', '.join(TRACKERS)}")
    return openers[kind](uri=uri, experiment=experiment)


def missing_backend(kind: str) -> str | None:
    """Why the ``kind`` backend cannot be imported here (one line), None when it can."""
    from semalign.tracking import backends

    try:
        backends.import_backend(kind)
    except TrackerUnavailable as exc:
        return str(exc)
    return None


__all__ = [
    "ROUND_METRICS",
    "TRACKERS",
    "USER_METRICS",
    "LiveRun",
    "TrackedRun",
    "Tracker",
    "TrackerUnavailable",
    "TrackingError",
    "final_metrics",
    "from_seed_block",
    "missing_backend",
    "open_tracker",
    "round_metric_values",
    "round_metrics",
    "user_encoders",
]
