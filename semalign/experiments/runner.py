"""Running a plan: every run not yet in the table, longest first, in this process or a pool.

Each run is one seed of one cell on the in-process engine
(:func:`semalign.engine.simulate.simulate_seed`); its rows are appended to the
:class:`~semalign.experiments.table.ResultsTable` as soon as it ends, so a sweep stopped by a
crash or Ctrl-C resumes where it was.

Executors: ``local`` runs in this process (``workers == 1``) or on ``workers`` processes
(``spawn``, :class:`~semalign.common.io.SpawnPool`); ``ray`` makes every run a Ray task, on a
local Ray instance of ``workers`` CPUs or on the cluster at ``ray_address``. Either way each
worker loads every scenario it needs once and limits BLAS to one thread (on a loaded 2-core
machine a 2-thread OpenBLAS eigendecomposition measured 8x slower than a 1-thread one), and the
rows come back to this process, which alone writes the table (and logs to the tracker).

Every run's rows carry its :func:`~semalign.experiments.provenance.provenance_block`, taken in
the process that ran it (its host, its start time) with the plan's latents fingerprint: the
table keeps its :data:`~semalign.experiments.provenance.PROVENANCE_KEYS` columns, each row dict
the whole block (``row["provenance"]``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from semalign.common.errors import SweepError
from semalign.common.io import SpawnPool
from semalign.common.records import SeedResult
from semalign.experiments.plan import Plan, Run, ScenarioSpec, describe, zeta
from semalign.experiments.provenance import PROVENANCE_KEYS, provenance_block
from semalign.experiments.rekey import older_runs
from semalign.experiments.table import ResultsTable, rows_from_seed

log = logging.getLogger(__name__)

#: This process's scenarios, loaded once per spec (user data and whitening cached inside).
_SCENARIOS: dict[ScenarioSpec, Any] = {}


def _scenario(spec: ScenarioSpec):
    """This process's Scenario for ``spec`` (loaded once, user data cached inside)."""
    from semalign.engine.scenario import load_scenario

    if spec not in _SCENARIOS:
        _SCENARIOS[spec] = load_scenario(spec.latents_dir, spec.ap, list(spec.users))
    return _SCENARIOS[spec]


#: The executors :func:`run_sweep` knows.
EXECUTORS: tuple[str, ...] = ("local", "ray")


def execute(run: Run) -> tuple[list[dict[str, Any]], SeedResult]:
    """Run one (cell, seed) in this process; returns its table rows and its results block.

    The users' data is loaded and whitened before the engine's clock starts, so a run's
    ``seconds`` measure the session alone, whichever run first needed the data.
    """
    from semalign.engine.simulate import simulate_seed

    provenance = provenance_block(latents_id=run.spec.fingerprint or None)
    scenario = _scenario(run.spec)
    for encoder in run.spec.users:
        data = scenario.data_for(encoder, run.config.pilot_fraction, run.config)
        data.whitened_pilots(list(range(len(data.pilot_ids))))
    block = simulate_seed(scenario, run.config)
    rows = rows_from_seed(run, block, provenance)
    for row in rows:
        row["provenance"] = provenance
    return rows, block


def _worker_init(blas_threads: int, log_level: int) -> None:
    """Initializer of a pool worker: Ctrl-C left to the parent, BLAS threads, logging."""
    import signal

    # The parent handles Ctrl-C (it stops the pool); workers must not die mid-write noisily.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(blas_threads)  # read when the BLAS library loads
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    _limit_blas(blas_threads)


def _limit_blas(threads: int):
    """Limit BLAS threads now (returns the limiter; use as a context manager to restore).

    numpy and scipy are imported first: threadpoolctl only sees libraries already loaded.
    """
    import numpy  # noqa: F401
    import scipy.linalg  # noqa: F401

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(limits=threads)


def blas_threads() -> list[int]:
    """Thread counts of the BLAS libraries loaded in this process (diagnostics, tests)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover
        return []
    return [int(i["num_threads"]) for i in threadpool_info() if i.get("user_api") == "blas"]


@dataclass
class Outcome:
    """What a worker sends back for one run: its rows and results block, or an error."""

    key: str
    rows: list[dict[str, Any]] | None
    block: SeedResult | None
    error: str | None = None


def _worker_execute(run: Run) -> Outcome:
    try:
        rows, block = execute(run)
        return Outcome(run.key, rows, block)
    except Exception as exc:  # reported by the parent; the run stays undone
        log.debug("run %s failed", run.key, exc_info=True)
        return Outcome(run.key, None, None, f"{type(exc).__name__}: {exc}")


def _ray_execute(run: Run, blas_threads: int) -> Outcome:
    """A run as a Ray task (in a Ray worker process, which keeps its scenarios between tasks)."""
    with _limit_blas(blas_threads):
        return _worker_execute(run)


@dataclass
class SweepSummary:
    """What a sweep call did."""

    total: int
    already_done: int
    done: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    rekeyed: int = 0  # runs of an older table found under their former keys (rekey.py)
    tracked: int = 0  # runs logged to the tracker
    tracking_error: str | None = None  # why tracking stopped (the sweep went on)


#: Called after each run with (run, rows or None, error or None).
RunCallback = Callable[[Run, list[dict[str, Any]] | None, str | None], None]
#: Called once a run has ended (its outcome), inside run_sweep.
_Finish = Callable[[Run, Outcome], None]


def _importable(name: str) -> bool:
    """Whether ``import name`` can work, without importing it (slow for Ray)."""
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def check_executor(executor: str) -> None:
    """SweepError (one line) when ``executor`` is unknown or its package is not installed."""
    if executor not in EXECUTORS:
        raise SweepError(f"unknown executor {executor!r}; choose from {', '.join(EXECUTORS)}")
    if executor == "ray" and not _importable("ray"):
        raise SweepError(
            "the ray executor needs Ray, which is not installed here; install it with: "
            "pip install 'semalign[ray]'"
        )


def tracked_run(run: Run, rows: list[dict[str, Any]], block: SeedResult) -> Any:
    """The :class:`~semalign.tracking.TrackedRun` of a finished run: its config and cell as
    params, its provenance as tags, its rounds and per-user results as metrics."""
    from semalign.tracking import from_seed_block

    cell = describe(run.group, run.config)
    params = {
        **run.config.model_dump(),
        "group": run.group,
        "ap_encoder": run.spec.ap,
        "users": "+".join(run.spec.users),
        "latents_id": run.spec.fingerprint,
        "d_ap": run.d_ap,
        "zeta": zeta(run.config.channel_uses, run.d_ap),
        "cell_key": run.cell_key,
        "run_key": run.key,
    }
    tags = {key: rows[0].get(key) for key in PROVENANCE_KEYS} if rows else {}
    tags.update(run_key=run.key, cell_key=run.cell_key, cell=cell)
    return from_seed_block(f"{cell} seed {run.config.seed}", params, block, tags, group=cell)


def run_sweep(
    plan: Plan,
    table_path: str | os.PathLike[str],
    *,
    workers: int = 1,
    on_run: RunCallback | None = None,
    on_start: Callable[[SweepSummary], None] | None = None,
    blas_threads: int = 1,
    tracker: Any = None,
    executor: str = "local",
    ray_address: str | None = None,
) -> SweepSummary:
    """Run every run of ``plan`` not already complete in the table, appending as each ends.

    Executor ``local``: ``workers == 1`` runs in this process, more use a process pool
    (``spawn``); ``ray``: Ray tasks on a local instance of ``workers`` CPUs, or on the cluster at
    ``ray_address``. A failing run is reported (``on_run``, a warning in the log and the summary)
    and left undone; the rest go on. KeyboardInterrupt stops the workers at once; finished runs
    are already in the table. Runs of an older table found under their former keys
    (:mod:`semalign.experiments.rekey`) are re-keyed, not run again.

    ``tracker`` (a :class:`~semalign.tracking.Tracker`) gets each run done by this call, from
    this process; a tracking failure stops the tracking (``summary.tracking_error``), not the
    sweep.

    Raises:
        SweepError: the table belongs to another schema or another sweep is writing it, or the
            executor cannot be used.
    """
    check_executor(executor)
    start = time.perf_counter()
    with ResultsTable(table_path) as table:
        todo, summary = _pending(plan, table)
        if on_start:
            on_start(summary)

        def finish(run: Run, outcome: Outcome) -> None:
            rows, error = outcome.rows, outcome.error
            if rows is not None:
                table.append(rows)
                summary.done += 1
                _track(tracker, summary, run, rows, outcome.block)
            else:
                summary.failed.append((run.key, error or "unknown error"))
                log.warning(
                    "run %s (%s) failed: %s", run.key, describe(run.group, run.config), error
                )
            if on_run:
                on_run(run, rows, error)

        _execute(todo, executor, workers, blas_threads, finish, ray_address)
    summary.seconds = time.perf_counter() - start
    return summary


def _pending(plan: Plan, table: ResultsTable) -> tuple[list[Run], SweepSummary]:
    """The plan's runs ``table`` does not hold, longest first, and the summary they start, once
    the table's runs under older keys are re-keyed (:mod:`semalign.experiments.rekey`)."""
    older = older_runs(plan, table)
    rekeyed = table.rekey(older.runs, older.latents_ids)
    if rekeyed:
        log.info("%s: %d run(s) of an older table re-keyed", table.path, rekeyed)
    todo = [r for r in plan.runs if r.key not in table.complete]
    todo.sort(key=lambda r: r.cost, reverse=True)
    summary = SweepSummary(
        total=len(plan.runs), already_done=len(plan.runs) - len(todo), rekeyed=rekeyed
    )
    return todo, summary


def _execute(
    todo: list[Run],
    executor: str,
    workers: int,
    blas_threads: int,
    finish: Callable[[Run, Outcome], None],
    ray_address: str | None,
) -> None:
    """Run ``todo`` on the executor (Ray, this process, or a process pool), ``finish`` told of
    each run as it ends."""
    if executor == "ray":
        _run_ray(todo, workers, blas_threads, finish, ray_address)
    elif workers <= 1 or len(todo) <= 1:
        with _limit_blas(blas_threads):
            for run in todo:
                finish(run, _worker_execute(run))
    else:
        _run_pool(todo, workers, blas_threads, finish)


def _track(
    tracker: Any,
    summary: SweepSummary,
    run: Run,
    rows: list[dict[str, Any]],
    block: SeedResult | None,
) -> None:
    """Log a finished run to ``tracker``; the first failure stops the tracking (logged and in
    the summary), never the sweep: the run is in the table."""
    if tracker is None or block is None or summary.tracking_error is not None:
        return
    try:
        tracker.log(tracked_run(run, rows, block))
        summary.tracked += 1
    except Exception as exc:
        summary.tracking_error = str(exc) or type(exc).__name__
        log.warning("tracking stopped (the sweep goes on): %s", summary.tracking_error)


def _run_ray(
    todo: list[Run], workers: int, blas_threads: int, finish: _Finish, address: str | None
) -> None:
    """Run ``todo`` as Ray tasks, calling ``finish`` in this process as each run ends.

    Ray is started here (a local instance of ``workers`` CPUs, or connected to ``address`` or
    ``$RAY_ADDRESS``) and shut down at the end unless it was already initialized. At most two
    tasks per CPU are in flight, so that the longest-first order holds and Ctrl-C has little to
    cancel.
    """
    if not todo:
        return
    import ray

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # quiet a FutureWarning
    started = not ray.is_initialized()
    cluster = address or os.environ.get("RAY_ADDRESS")  # ray.init() itself reads RAY_ADDRESS
    if started:
        where = {"address": address} if address else {} if cluster else {"num_cpus": workers}
        try:
            ray.init(
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
                **where,
            )
        except Exception as exc:
            place = f" at {cluster}" if cluster else ""
            raise SweepError(f"cannot start Ray{place}: {exc}") from None
    inflight: dict[Any, Run] = {}
    try:
        slots = workers
        if cluster or not started:
            slots = max(1, int(ray.cluster_resources().get("CPU", workers)))
        task = ray.remote(num_cpus=1)(_ray_execute)
        pending = iter(todo)
        for run in itertools.islice(pending, 2 * slots):
            inflight[task.remote(run, blas_threads)] = run
        while inflight:
            done, _ = ray.wait(list(inflight), num_returns=1)
            for ref in done:
                run = inflight.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as exc:  # the task or its worker died
                    outcome = Outcome(run.key, None, None, f"ray task failed: {exc}")
                finish(run, outcome)
                nxt = next(pending, None)
                if nxt is not None:
                    inflight[task.remote(nxt, blas_threads)] = nxt
    except BaseException:
        for ref in inflight:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()


def _run_pool(todo: list[Run], workers: int, blas_threads: int, finish: _Finish) -> None:
    """Run ``todo`` on a spawn pool, calling ``finish`` in this process as each run ends.

    The queue is kept short (two runs per worker) so that Ctrl-C has little to cancel and the
    longest-first order holds; on any exception the workers are terminated.
    """
    from concurrent.futures import FIRST_COMPLETED, wait

    initargs = (blas_threads, logging.getLogger().level)
    pending = iter(todo)
    with SpawnPool(min(workers, len(todo)), _worker_init, initargs) as pool:
        inflight = {
            pool.submit(_worker_execute, run): run for run in itertools.islice(pending, 2 * workers)
        }
        while inflight:
            done, _ = wait(inflight, return_when=FIRST_COMPLETED)
            for future in done:
                run = inflight.pop(future)
                try:
                    outcome = future.result()
                except Exception as exc:  # the worker process died (e.g. out of memory)
                    error = f"worker failed: {type(exc).__name__}: {exc}"
                    outcome = Outcome(run.key, None, None, error)
                finish(run, outcome)
                nxt = next(pending, None)
                if nxt is not None:
                    inflight[pool.submit(_worker_execute, nxt)] = nxt
