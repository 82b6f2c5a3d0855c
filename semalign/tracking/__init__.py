"""Experiment tracking: every run of a sweep (or a ``simulate`` seed) as a tracked run in MLflow,
TensorBoard or Weights & Biases.

A :class:`TrackedRun` is backend-neutral: the run's name, its parameters (the config), tags (the
provenance), one dict of metrics per ADMM round (step = round) and the final metrics (network
means and ``<user>/<metric>`` per user). :func:`from_seed_block` builds one from a seed's
results block (:func:`semalign.engine.simulate.simulate_seed`'s dict, or a record with
``to_dict()``); :func:`open_tracker` opens a backend, whose package is an optional extra
(``pip install 'semalign[mlflow]'``, ``[tensorboard]``, ``[wandb]``)::

    with open_tracker("mlflow", uri="file:./mlruns", experiment="my-sweep") as tracker:
        tracker.log(from_seed_block("fed 4x4 K=2 seed 27", params, block, run_provenance()))

Per-round metrics: ``pilot_mse_whitened`` (the round's network MSE on the whitened pilots),
``objective``, ``primal_residual``, ``dual_residual``, ``bytes_down``, ``bytes_up`` and
``round_seconds``. Final metrics: ``accuracy``, ``native_accuracy``, ``mse``, ``network_mse``,
``seconds`` and, per user, ``<user>/accuracy``, ``<user>/native_accuracy``, ``<user>/mse``,
``<user>/mse_whitened``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from semalign.common.errors import SemalignError

#: Backends :func:`open_tracker` knows, with the extra that installs each.
TRACKERS: dict[str, str] = {"mlflow": "mlflow", "tensorboard": "tensorboard", "wandb": "wandb"}

#: A round record's field -> the tracked metric's name.
ROUND_METRICS: dict[str, str] = {
    "mse": "pilot_mse_whitened",
    "objective": "objective",
    "primal_residual": "primal_residual",
    "dual_residual": "dual_residual",
    "bytes_down": "bytes_down",
    "bytes_up": "bytes_up",
    "seconds": "round_seconds",
}

#: A user's result field -> the final metric's name after ``<user>/``.
USER_METRICS: tuple[str, ...] = ("accuracy", "native_accuracy", "mse", "mse_whitened")


class TrackingError(SemalignError, RuntimeError):
    """A tracking backend cannot be used: not installed, or it refused the run."""


class TrackerUnavailable(TrackingError):
    """The backend's package is not installed (the message says which extra installs it)."""


@dataclass
class TrackedRun:
    """One run as every backend logs it."""

    name: str
    params: dict[str, Any]
    tags: dict[str, str] = field(default_factory=dict)
    rounds: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    group: str | None = None  # runs of one cell (W&B group; a tag elsewhere)


class Tracker(Protocol):
    """A backend: logs whole runs, one at a time, from one process."""

    name: str

    def log(self, run: TrackedRun) -> None: ...

    def close(self) -> None: ...


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def round_metrics(rounds: Iterable[dict[str, Any]]) -> list[dict[str, float]]:
    """The tracked metrics of each round record (missing or non-numeric values left out)."""
    out = []
    for record in rounds:
        metrics = {}
        for source, name in ROUND_METRICS.items():
            value = _number(record.get(source))
            if value is not None:
                metrics[name] = value
        out.append(metrics)
    return out


def _mean(values: Iterable[Any]) -> float | None:
    kept = [v for v in (_number(x) for x in values) if v is not None and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else None


def final_metrics(
    users: Iterable[dict[str, Any]], extra: dict[str, Any] | None = None
) -> dict[str, float]:
    """Final metrics from per-user results (``name`` or ``user``, and :data:`USER_METRICS`):
    each user's values and the means over users, plus the numbers in ``extra``."""
    users = list(users)
    final: dict[str, float] = {}
    for key in ("accuracy", "native_accuracy", "mse"):
        mean = _mean(u.get(key) for u in users)
        if mean is not None:
            final[key] = mean
    for user in users:
        name = user.get("name") or user.get("user")
        for key in USER_METRICS:
            value = _number(user.get(key))
            if value is not None:
                final[f"{name}/{key}"] = value
    for key, value in (extra or {}).items():
        number = _number(value)
        if number is not None:
            final[key] = number
    return final


def from_seed_block(
    name: str,
    params: dict[str, Any],
    block: Any,
    tags: dict[str, Any] | None = None,
    group: str | None = None,
) -> TrackedRun:
    """A tracked run from one seed's results block (a dict, or a record with ``to_dict()``)."""
    if hasattr(block, "to_dict"):
        block = block.to_dict()
    rounds = block.get("rounds") or []
    final_phase = (block.get("phases") or {}).get("final") or {}
    network_mse = final_phase.get("mse", rounds[-1].get("mse") if rounds else None)
    extra = {"network_mse": network_mse, "seconds": block.get("seconds")}
    return TrackedRun(
        name=name,
        params=dict(params),
        tags={k: "" if v is None else str(v) for k, v in (tags or {}).items()},
        rounds=round_metrics(rounds),
        final=final_metrics(block.get("users") or [], extra),
        group=group,
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
    "TrackedRun",
    "Tracker",
    "TrackerUnavailable",
    "TrackingError",
    "final_metrics",
    "from_seed_block",
    "missing_backend",
    "open_tracker",
    "round_metrics",
]
