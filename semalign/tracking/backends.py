"""The tracking backends: MLflow, TensorBoard and Weights & Biases, each imported only when used.

Each logs a :class:`~semalign.tracking.TrackedRun` as one run of its own: the params, the tags,
one step per ADMM round and the final metrics at the last round's step.
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

from semalign.tracking import TrackedRun, TrackerUnavailable, TrackingError

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


def _final_step(run: TrackedRun) -> int:
    return max(len(run.rounds) - 1, 0)


class _Backend:
    """Context-manager behaviour shared by the backends."""

    name = ""

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

    def log(self, run: TrackedRun) -> None:
        from mlflow.entities import Metric, Param

        tags = {**run.tags, "semalign.group": run.group or ""}
        try:
            created = self.client.create_run(self.experiment_id, run_name=run.name, tags=tags)
        except Exception as exc:
            raise TrackingError(f"MLflow at {self.uri}: {exc}") from None
        run_id = created.info.run_id
        stamp = int(time.time() * 1000)
        metrics = [
            Metric(key, value, stamp, step)
            for step, values in enumerate(run.rounds)
            for key, value in values.items()
        ]
        last = _final_step(run)
        metrics += [Metric(key, value, stamp, last) for key, value in run.final.items()]
        params = [Param(key, _text(value)) for key, value in run.params.items()]
        try:
            for i in range(0, len(params), self._MAX_PARAMS):
                self.client.log_batch(run_id, params=params[i : i + self._MAX_PARAMS])
            for i in range(0, len(metrics), self._MAX_METRICS):
                self.client.log_batch(run_id, metrics=metrics[i : i + self._MAX_METRICS])
            self.client.set_terminated(run_id, "FINISHED")
        except Exception as exc:
            self.client.set_terminated(run_id, "FAILED")
            raise TrackingError(f"MLflow run {run.name!r}: {exc}") from None


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

    def log(self, run: TrackedRun) -> None:
        folder = self._folder(run.name)
        try:
            writer = self._writer_class(log_dir=str(folder))
        except Exception as exc:
            raise TrackingError(f"TensorBoard log folder {folder}: {exc}") from None
        try:
            for step, values in enumerate(run.rounds):
                for key, value in values.items():
                    writer.add_scalar(f"round/{key}", value, step)
            last = _final_step(run)
            for key, value in run.final.items():
                writer.add_scalar(f"final/{key}", value, last)
            writer.add_text("params", _markdown(run.params))
            writer.add_text("tags", _markdown({**run.tags, "group": run.group or ""}))
            self._hparams(writer, run)
        except Exception as exc:
            raise TrackingError(f"TensorBoard run {run.name!r}: {exc}") from None
        finally:
            writer.close()

    @staticmethod
    def _hparams(writer: Any, run: TrackedRun) -> None:
        """The HParams dashboard's records (what ``add_hparams`` writes, without its extra
        scalars and sub-folder)."""
        try:
            from torch.utils.tensorboard.summary import hparams
        except ImportError:  # tensorboardX
            from tensorboardX.summary import hparams
        shown = {f"final/{k}": run.final[k] for k in ("accuracy", "network_mse") if k in run.final}
        if not shown:
            return
        params = {key: _hparam(value) for key, value in run.params.items()}
        file_writer = writer._get_file_writer()
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

    def log(self, run: TrackedRun) -> None:
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
        try:
            for step, values in enumerate(run.rounds):
                active.log({f"round/{k}": v for k, v in values.items()}, step=step)
            active.summary.update({f"final/{k}": v for k, v in run.final.items()})
        except Exception as exc:
            active.finish(exit_code=1)
            raise TrackingError(f"wandb run {run.name!r}: {exc}") from None
        active.finish()

    def close(self) -> None:
        """Shut W&B's service down: its files are complete only then (``finish`` returns before
        the service has written an offline run)."""
        teardown = getattr(self.wandb, "teardown", None)
        if teardown is not None:
            teardown()
