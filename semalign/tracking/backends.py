"""The tracking backends: MLflow, TensorBoard and Weights & Biases, each imported only when used.

Each logs a run as one run of its own: the params, the tags, one step per ADMM round and the
final metrics at the last round's step. :meth:`start` opens a live run that logs each round as it
is given (``simulate``, ``run``, ``ap``); :meth:`log` logs a whole
:class:`~semalign.tracking.runs.TrackedRun` through it (a sweep's finished run).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from semalign.tracking.runs import TrackedRun, TrackerUnavailable, TrackingError

log = logging.getLogger(__name__)

#: Backend -> the packages that provide it (the first importable one is used).
_PACKAGES: dict[str, tuple[str, ...]] = {
    "mlflow": ("mlflow",),
    "tensorboard": ("tensorboard", "tensorboardX"),
    "wandb": ("wandb",),
}


def import_backend(kind: str) -> Any:
    """The backend's entry point (``mlflow``, a ``SummaryWriter`` class, ``wandb``).

    Raises:
        TrackerUnavailable: its package is not installed (one line naming the extra).
    """
    try:
        if kind == "mlflow":
            import mlflow

            return mlflow
        if kind == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter  # needs `tensorboard`
            except ImportError:
                from tensorboardX import SummaryWriter
            return SummaryWriter
        if kind == "wandb":
            import wandb

            return wandb
    except ImportError:
        packages = " or ".join(_PACKAGES[kind])
        raise TrackerUnavailable(
            f"tracking with {kind} needs the {packages} package, which is not installed here; "
            f"install it with: pip install 'semalign[{kind}]'"
        ) from None
    raise TrackingError(f"unknown tracker {kind!r}")


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return "" if value is None else str(value)


class _Backend:
    """What the backends share: a whole run logged through a live one (:meth:`start` takes the
    run's name, params, tags and group; its rounds and final metrics come to the live run), the
    context manager."""

    name = ""

    def start(self, run: TrackedRun) -> Any:
        raise NotImplementedError

    def log(self, run: TrackedRun) -> None:
        """Log a finished run: its rounds (step = round), then its final metrics."""
        live = self.start(run)
        try:
            for step, values in enumerate(run.rounds):
                live.round(step, values)
        except BaseException:
            live.finish({}, failed=True)
            raise
        live.finish(run.final)

    def close(self) -> None:
        pass

    def __enter__(self) -> _Backend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# ---------------------------------------------------------------------------- MLflow
def _is_file_store(uri: str) -> bool:
    return (
        uri.startswith("file:")
        or "://" not in uri
        and not uri.startswith(("databricks", "sqlite:", "postgresql", "mysql", "mssql"))
    )


class MlflowTracker(_Backend):
    """One MLflow run per tracked run, in experiment ``experiment`` at ``uri``.

    A local file store (``file:...`` or a folder) is MLflow's "maintenance mode" backend: it is
    allowed here (``MLFLOW_ALLOW_FILE_STORE=true``) since naming it is a deliberate choice; use
    ``sqlite:///mlflow.db`` (needs the full ``mlflow`` package) or a server for the newest
    MLflow features.
    """

    name = "mlflow"
    #: MLflow's log_batch limits per call.
    _MAX_METRICS, _MAX_PARAMS = 1000, 100

    def __init__(self, uri: str | None = None, experiment: str = "semalign") -> None:
        import_backend("mlflow")
        from mlflow.tracking import MlflowClient

        uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or Path("mlruns").resolve().as_uri()
        if _is_file_store(uri):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.uri = uri
        try:
            self.client = MlflowClient(tracking_uri=uri)
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = (
                found.experiment_id if found else self.client.create_experiment(experiment)
            )
        except Exception as exc:
            raise TrackingError(f"MLflow at {uri}: {exc}") from None

    def start(self, run: TrackedRun) -> _MlflowRun:
        from mlflow.entities import Param

        tags = {**run.tags, "semalign.group": run.group or ""}
        try:
            created = self.client.create_run(self.experiment_id, run_name=run.name, tags=tags)
        except Exception as exc:
            raise TrackingError(f"MLflow at {self.uri}: {exc}") from None
        live = _MlflowRun(self.client, created.info.run_id, run.name)
        values = [Param(key, _text(value)) for key, value in run.params.items()]
        live.batch(params=values)
        return live


class _MlflowRun:
    """One MLflow run being logged: each round's metrics as they come (one ``log_batch``)."""

    _MAX_METRICS, _MAX_PARAMS = MlflowTracker._MAX_METRICS, MlflowTracker._MAX_PARAMS

    def __init__(self, client: Any, run_id: str, name: str) -> None:
        self.client, self.run_id, self.name = client, run_id, name
        self.last_step = 0

    def batch(self, metrics: list | None = None, params: list | None = None) -> None:
        metrics, params = metrics or [], params or []
        try:
            for i in range(0, len(params), self._MAX_PARAMS):
                self.client.log_batch(self.run_id, params=params[i : i + self._MAX_PARAMS])
            for i in range(0, len(metrics), self._MAX_METRICS):
                self.client.log_batch(self.run_id, metrics=metrics[i : i + self._MAX_METRICS])
        except Exception as exc:
            self.client.set_terminated(self.run_id, "FAILED")
            raise TrackingError(f"MLflow run {self.name!r}: {exc}") from None

    def round(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self.last_step = max(self.last_step, step)
        self.batch(metrics=[Metric(key, value, stamp, step) for key, value in metrics.items()])

    def finish(self, final: dict[str, float], failed: bool = False) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self.batch(metrics=[Metric(k, v, stamp, self.last_step) for k, v in final.items()])
        try:
            self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")
        except Exception as exc:
            raise TrackingError(f"MLflow run {self.name!r}: {exc}") from None


# ---------------------------------------------------------------------------- TensorBoard
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+=-]+", "_", text).strip("_") or "run"


def _hparam(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)):
        return value
    return _text(value)


class TensorBoardTracker(_Backend):
    """One event folder per tracked run: ``<uri>/<experiment>/<run name>``.

    Scalars ``round/<metric>`` per round and ``final/<metric>`` at the last round's step; the
    params and tags as text, and the params with the final accuracy and network MSE in the
    HParams dashboard.
    """

    name = "tensorboard"

    def __init__(self, uri: str | None = None, experiment: str = "semalign") -> None:
        self._writer_class = import_backend("tensorboard")
        self.root = Path(uri or "runs") / _slug(experiment)

    def _folder(self, name: str) -> Path:
        folder = self.root / _slug(name)
        n = 2
        while folder.exists():
            folder = self.root / f"{_slug(name)}-{n}"
            n += 1
        return folder

    def start(self, run: TrackedRun) -> _TensorBoardRun:
        folder = self._folder(run.name)
        try:
            writer = self._writer_class(log_dir=str(folder))
        except Exception as exc:
            raise TrackingError(f"TensorBoard log folder {folder}: {exc}") from None
        tags = {**run.tags, "group": run.group or ""}
        return _TensorBoardRun(writer, run.name, dict(run.params), tags)


class _TensorBoardRun:
    """One event folder being written: ``round/<metric>`` scalars as they come; at the end
    ``final/<metric>`` at the last round's step, the params and tags as text, and the HParams
    dashboard's records."""

    def __init__(self, writer: Any, name: str, params: dict[str, Any], tags: dict[str, str]):
        self.writer, self.name, self.params, self.tags = writer, name, params, tags
        self.last_step = 0

    def round(self, step: int, metrics: dict[str, float]) -> None:
        self.last_step = max(self.last_step, step)
        try:
            for key, value in metrics.items():
                self.writer.add_scalar(f"round/{key}", value, step)
        except Exception as exc:
            self.writer.close()
            raise TrackingError(f"TensorBoard run {self.name!r}: {exc}") from None

    def finish(self, final: dict[str, float], failed: bool = False) -> None:
        try:
            for key, value in final.items():
                self.writer.add_scalar(f"final/{key}", value, self.last_step)
            self.writer.add_text("params", _markdown(self.params))
            self.writer.add_text("tags", _markdown({**self.tags, "failed": str(failed)}))
            self._hparams(final)
        except Exception as exc:
            raise TrackingError(f"TensorBoard run {self.name!r}: {exc}") from None
        finally:
            self.writer.close()

    def _hparams(self, final: dict[str, float]) -> None:
        """The HParams dashboard's records (what ``add_hparams`` writes, without its extra
        scalars and sub-folder)."""
        try:
            from torch.utils.tensorboard.summary import hparams
        except ImportError:  # tensorboardX
            from tensorboardX.summary import hparams
        shown = {f"final/{k}": final[k] for k in ("accuracy", "network_mse") if k in final}
        if not shown:
            return
        params = {key: _hparam(value) for key, value in self.params.items()}
        file_writer = self.writer._get_file_writer()
        for summary in hparams(params, shown):
            file_writer.add_summary(summary)


def _markdown(values: dict[str, Any]) -> str:
    lines = ["| key | value |", "|---|---|"]
    lines += [f"| {key} | {_text(value)} |" for key, value in values.items()]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- W&B
class WandbTracker(_Backend):
    """One W&B run per tracked run in project ``experiment``, grouped by cell.

    The mode follows W&B's settings (``WANDB_MODE=offline`` writes runs under ``<uri>/wandb`` for
    a later ``wandb sync``); the params and the provenance (``provenance.*``) go to the run's
    config, rounds to its history (step = round) and final metrics to its summary.
    """

    name = "wandb"

    def __init__(self, uri: str | None = None, experiment: str = "semalign") -> None:
        self.wandb = import_backend("wandb")
        self.folder = Path(uri) if uri else None
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
        self.project = experiment

    def start(self, run: TrackedRun) -> _WandbRun:
        wandb = self.wandb
        config = {**run.params, **{f"provenance.{k}": v for k, v in run.tags.items()}}
        try:
            active = wandb.init(
                project=self.project,
                name=run.name,
                group=run.group,
                config=config,
                dir=str(self.folder) if self.folder else None,
                reinit="create_new",
                settings=wandb.Settings(silent=True, console="off"),
            )
        except Exception as exc:
            raise TrackingError(
                f"wandb: {exc} (log in with `wandb login`, or set WANDB_MODE=offline)"
            ) from None
        return _WandbRun(active, run.name)

    def close(self) -> None:
        """Shut W&B's service down: its files are complete only then (``finish`` returns before
        the service has written an offline run)."""
        teardown = getattr(self.wandb, "teardown", None)
        if teardown is not None:
            teardown()


class _WandbRun:
    """One W&B run: each round to its history as it comes, the final metrics to its summary."""

    def __init__(self, active: Any, name: str) -> None:
        self.active, self.name = active, name

    def round(self, step: int, metrics: dict[str, float]) -> None:
        try:
            self.active.log({f"round/{k}": v for k, v in metrics.items()}, step=step)
        except Exception as exc:
            self.active.finish(exit_code=1)
            raise TrackingError(f"wandb run {self.name!r}: {exc}") from None

    def finish(self, final: dict[str, float], failed: bool = False) -> None:
        try:
            self.active.summary.update({f"final/{k}": v for k, v in final.items()})
        except Exception as exc:
            self.active.finish(exit_code=1)
            raise TrackingError(f"wandb run {self.name!r}: {exc}") from None
        self.active.finish(exit_code=1 if failed else 0)
