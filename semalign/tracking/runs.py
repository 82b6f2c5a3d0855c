"""What a tracked run is, for every backend: :class:`TrackedRun` (a whole run: a sweep's), the
:class:`Tracker` and :class:`LiveRun` protocols (a run logged round by round as it happens:
``simulate``, ``run``, ``ap``), the metric names and the errors.

Per-round metrics: ``pilot_mse_whitened`` (the round's network MSE on the whitened pilots),
``objective``, ``primal_residual``, ``dual_residual``, ``bytes_down``, ``bytes_up`` and
``round_seconds``. Final metrics: ``accuracy``, ``native_accuracy``, ``mse``, ``network_mse``,
``seconds`` and, per user id, ``<user>/accuracy``, ``<user>/native_accuracy``, ``<user>/mse``,
``<user>/mse_whitened``; each user's encoder is the parameter ``<user>/encoder``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from semalign.common.errors import SemalignError
from semalign.common.records import RoundRecord, SeedResult, UserResult

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


class LiveRun(Protocol):
    """A run being logged as it happens: one :meth:`round` per ADMM round, then :meth:`finish`
    once (final metrics at the last round's step)."""

    def round(self, step: int, metrics: dict[str, float]) -> None: ...

    def finish(self, final: dict[str, float], failed: bool = False) -> None: ...


class Tracker(Protocol):
    """A backend, used from one process: logs whole runs (:meth:`log`) or starts one to log
    round by round (:meth:`start`)."""

    name: str

    def log(self, run: TrackedRun) -> None: ...

    def start(self, run: TrackedRun) -> LiveRun:
        """Open ``run`` (its name, params, tags, group; its rounds and final metrics are what
        the live run is then given)."""
        ...

    def close(self) -> None: ...


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def round_metric_values(record: RoundRecord) -> dict[str, float]:
    """The tracked metrics of one round record (non-numeric values, NaN aside, left out)."""
    metrics = {}
    for source, name in ROUND_METRICS.items():
        value = _number(getattr(record, source))
        if value is not None:
            metrics[name] = value
    return metrics


def round_metrics(rounds: Iterable[RoundRecord]) -> list[dict[str, float]]:
    """The tracked metrics of each round record (non-numeric values left out)."""
    return [round_metric_values(record) for record in rounds]


def user_encoders(users: Iterable[UserResult]) -> dict[str, str]:
    """``{"<user>/encoder": encoder}`` for per-user results that name both (the parameters
    that say which encoder each user id's metrics belong to)."""
    out = {}
    for user in users:
        name, encoder = user.name, user.encoder
        if name and encoder:
            out[f"{name}/encoder"] = str(encoder)
    return out


def _mean(values: Iterable[Any]) -> float | None:
    kept = [v for v in (_number(x) for x in values) if v is not None and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else None


def final_metrics(
    users: Iterable[UserResult], extra: dict[str, Any] | None = None
) -> dict[str, float]:
    """Final metrics from per-user results (:data:`USER_METRICS`): each user's values and the
    means over users, plus the numbers in ``extra``."""
    users = list(users)
    final: dict[str, float] = {}
    for key in ("accuracy", "native_accuracy", "mse"):
        mean = _mean(getattr(u, key) for u in users)
        if mean is not None:
            final[key] = mean
    for user in users:
        for key in USER_METRICS:
            value = _number(getattr(user, key))
            if value is not None:
                final[f"{user.name}/{key}"] = value
    for key, value in (extra or {}).items():
        number = _number(value)
        if number is not None:
            final[key] = number
    return final


def from_seed_block(
    name: str,
    params: dict[str, Any],
    block: SeedResult,
    tags: dict[str, Any] | None = None,
    group: str | None = None,
) -> TrackedRun:
    """A tracked run from one seed's results (a results file's seed: ``SeedResult.from_dict``)."""
    rounds = block.rounds
    final_phase = block.phases.get("final")
    if final_phase is not None and final_phase.final is not None:
        network_mse = final_phase.final.mse
    else:
        network_mse = rounds[-1].mse if rounds else None
    extra = {"network_mse": network_mse, "seconds": block.seconds}
    return TrackedRun(
        name=name,
        params={**params, **user_encoders(block.users)},
        tags={k: "" if v is None else str(v) for k, v in (tags or {}).items()},
        rounds=round_metrics(rounds),
        final=final_metrics(block.users, extra),
        group=group,
    )
