"""Building several entries at once: one worker process per entry in flight, longest first.

Small models train far faster as single-threaded processes side by side than as one process
with several threads, and are much less hurt by other load on the machine; so by default there
is one worker per core (at most one per entry), each with ``cores // workers`` torch and BLAS
threads. Workers are spawned (``common.io.SpawnPool``, which ends them on Ctrl-C or a failed
build); their progress events come back through a queue to the caller's reporter.
"""

from __future__ import annotations

import os
import queue as queue_mod
from collections.abc import Callable
from typing import Any

from semalign.encoders.build import BuildJob, build_locked, job_data
from semalign.encoders.registry import get_spec
from semalign.encoders.reporter import Reporter
from semalign.encoders.store import EncoderResult

OnResult = Callable[[EncoderResult], None]


def usable_cores() -> int:
    """Cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def worker_count(pending: int, workers: int | None = None) -> int:
    """Workers for ``pending`` entries: ``workers`` if given, else one per core; at most one per
    entry. The one default of ``semalign encode`` and ``ensure_latents`` alike."""
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    return max(1, min(workers or usable_cores(), pending))


def build_all(
    todo: list[BuildJob],
    *,
    workers: int | None,
    reporter: Reporter,
    on_result: OnResult | None,
) -> dict[str, EncoderResult]:
    """Build every job; ``on_result`` is called as each finishes. One worker builds in this
    process; more build in spawned processes."""
    results: dict[str, EncoderResult] = {}
    if not todo:
        return results
    count = worker_count(len(todo), workers)
    if count == 1:
        for job in todo:
            results[job.encoder] = build_locked(job, reporter)
            if on_result is not None:
                on_result(results[job.encoder])
        return results
    threads = max(1, usable_cores() // count)
    _build_parallel(todo, count, threads, reporter, on_result, results)
    return results


class QueueReporter(Reporter):
    """Forwards events from a worker process to the parent through a queue."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def begin(self, encoder: str, phase: str, total: int) -> None:
        self.queue.put(("begin", encoder, phase, total))

    def update(self, encoder: str, done: int, total: int) -> None:
        self.queue.put(("update", encoder, done, total))

    def end(self, encoder: str) -> None:
        self.queue.put(("end", encoder))


_WORKER_QUEUE: Any = None


def _worker_init(events: Any, threads: int) -> None:
    """Runs first in each worker: progress queue, and torch and BLAS threads = its core share."""
    global _WORKER_QUEUE
    _WORKER_QUEUE = events
    from threadpoolctl import threadpool_limits

    from semalign.encoders.train import setup_torch

    setup_torch(threads)
    threadpool_limits(limits=threads)  # applies at once, for the worker's lifetime


def _worker_build(job: BuildJob) -> EncoderResult:
    return build_locked(job, QueueReporter(_WORKER_QUEUE))


def _build_parallel(
    todo: list[BuildJob],
    workers: int,
    threads: int,
    reporter: Reporter,
    on_result: OnResult | None,
    results: dict[str, EncoderResult],
) -> None:
    """Build ``todo`` in ``workers`` spawned processes, longest first; relay their progress.

    On Ctrl-C or a failed build the pool ends its workers at once. Every file they write is
    atomic and ``meta.json`` comes last, so whatever they leave behind is never trusted.
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, wait

    from semalign.common.io import SpawnPool

    # The dataset (cifar10) may need a download: do it once here, before the workers start.
    if todo[0].dataset == "cifar10" and todo[0].data_dir is None:
        job_data(todo[0])
    events = multiprocessing.get_context("spawn").Queue()
    order = sorted(todo, key=lambda job: -get_spec(job.encoder).cost)

    def relay() -> None:
        while True:
            try:
                event = events.get_nowait()
            except queue_mod.Empty:
                return
            getattr(reporter, event[0])(*event[1:])

    with SpawnPool(workers, initializer=_worker_init, initargs=(events, threads)) as pool:
        pending = {pool.submit(_worker_build, job): job for job in order}
        while pending:
            done, _ = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
            relay()
            for future in done:
                job = pending.pop(future)
                results[job.encoder] = future.result()  # re-raises a worker's exception
                if on_result is not None:
                    on_result(results[job.encoder])
        relay()
