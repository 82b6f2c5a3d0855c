"""Running a plan: every run not yet in the table, longest first, in this process or a pool.

Each run is one seed of one cell on the in-process engine
(:func:`semalign.engine.simulate.simulate_seed`); its rows are appended to the
:class:`~semalign.experiments.table.ResultsTable` as soon as it ends, so a sweep stopped by a
crash or Ctrl-C resumes where it was.

Parallelism: ``workers`` processes (``spawn``, :class:`~semalign.common.io.SpawnPool`), each
loading every scenario it needs once and limiting BLAS to one thread (on a loaded 2-core machine
a 2-thread OpenBLAS eigendecomposition measured 8x slower than a 1-thread one).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from semalign.common.io import SpawnPool
from semalign.experiments.plan import Plan, Run, ScenarioSpec, describe
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


def execute(run: Run) -> list[dict[str, Any]]:
    """Run one (cell, seed) in this process; returns its table rows.

    The users' data is loaded and whitened before the engine's clock starts, so a run's
    ``seconds`` measure the session alone, whichever run first needed the data.
    """
    from semalign.engine.simulate import simulate_seed

    scenario = _scenario(run.spec)
    for encoder in run.spec.users:
        data = scenario.data_for(encoder, run.config.pilot_fraction, run.config)
        data.whitened_pilots(list(range(len(data.pilot_ids))))
    return rows_from_seed(run, simulate_seed(scenario, run.config))


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


def _worker_execute(run: Run) -> tuple[str, list[dict[str, Any]] | None, str | None]:
    try:
        return run.key, execute(run), None
    except Exception as exc:  # reported by the parent; the run stays undone
        log.debug("run %s failed", run.key, exc_info=True)
        return run.key, None, f"{type(exc).__name__}: {exc}"


@dataclass
class SweepSummary:
    """What a sweep call did."""

    total: int
    already_done: int
    done: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


#: Called after each run with (run, rows or None, error or None).
RunCallback = Callable[[Run, list[dict[str, Any]] | None, str | None], None]
#: Called once a run has ended (rows or an error), inside run_sweep.
_Finish = Callable[[Run, list[dict[str, Any]] | None, str | None], None]


def run_sweep(
    plan: Plan,
    table_path: str | os.PathLike[str],
    *,
    workers: int = 1,
    on_run: RunCallback | None = None,
    on_start: Callable[[SweepSummary], None] | None = None,
    blas_threads: int = 1,
) -> SweepSummary:
    """Run every run of ``plan`` not already complete in the table, appending as each ends.

    ``workers == 1`` runs in this process; more use a process pool (``spawn``). A failing run is
    reported (``on_run``, a warning in the log and the summary) and left undone; the rest go
    on. KeyboardInterrupt stops the pool at once; finished runs are already in the table.

    Raises:
        SweepError: the table belongs to another schema or another sweep is writing it.
    """
    start = time.perf_counter()
    with ResultsTable(table_path) as table:
        todo = [r for r in plan.runs if r.key not in table.complete]
        todo.sort(key=lambda r: r.cost, reverse=True)
        summary = SweepSummary(total=len(plan.runs), already_done=len(plan.runs) - len(todo))
        if on_start:
            on_start(summary)

        def finish(run: Run, rows: list[dict[str, Any]] | None, error: str | None) -> None:
            if rows is not None:
                table.append(rows)
                summary.done += 1
            else:
                summary.failed.append((run.key, error or "unknown error"))
                log.warning(
                    "run %s (%s) failed: %s", run.key, describe(run.group, run.config), error
                )
            if on_run:
                on_run(run, rows, error)

        if workers <= 1 or len(todo) <= 1:
            with _limit_blas(blas_threads):
                for run in todo:
                    _, rows, error = _worker_execute(run)
                    finish(run, rows, error)
        else:
            _run_pool(todo, workers, blas_threads, finish)
    summary.seconds = time.perf_counter() - start
    return summary


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
                    _, rows, error = future.result()
                except Exception as exc:  # the worker process died (e.g. out of memory)
                    rows, error = None, f"worker failed: {type(exc).__name__}: {exc}"
                finish(run, rows, error)
                nxt = next(pending, None)
                if nxt is not None:
                    inflight[pool.submit(_worker_execute, nxt)] = nxt
