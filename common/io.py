"""Files and worker processes, done once: atomic writes, cross-process locks, a spawn pool.

* :func:`atomic_write_bytes` / :func:`atomic_write_text` / :func:`write_json`: the file at
  ``path`` is either the old one or the complete new one, never half-written (temporary file in
  the same folder, fsync, ``os.replace``, fsync of the folder).
* :func:`file_lock`: an exclusive lock shared by processes (``filelock``, every OS).
* :class:`SpawnPool`: a process pool on the ``spawn`` context whose :meth:`SpawnPool.stop`
  really ends its workers (Ctrl-C, a failed job), so nothing is left running.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

#: Prefix of the temporary files :func:`atomic_write_bytes` creates (swept by cleaners).
TMP_MARK = ".tmp-"


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_MARK}{os.getpid()}-{path.name}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_folder(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf floats as ``None`` and numpy scalars as Python numbers."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return json_safe(value.item())
    return value


def write_json(path: str | Path, payload: Any) -> Path:
    """Write ``payload`` as indented JSON atomically (NaN written as null); returns the path."""
    return atomic_write_text(path, json.dumps(json_safe(payload), indent=2))


def remove_temporaries(folder: Path) -> None:
    """Remove what an interrupted :func:`atomic_write_bytes` left in ``folder``."""
    for stale in folder.glob(f"{TMP_MARK}*"):
        with contextlib.suppress(OSError):
            stale.unlink()


def check_writable(path: str | Path) -> Path:
    """Fail now, not after the work, if ``path`` cannot be written (OSError otherwise).

    Creates the parent folder and a probe file beside ``path`` and removes the probe.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    probe = path.with_name(f"{TMP_MARK}probe-{os.getpid()}-{path.name}")
    probe.write_bytes(b"")
    probe.unlink()
    return path


@contextlib.contextmanager
def file_lock(path: str | Path, *, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive inter-process lock on ``path`` (a ``.lock`` file) while inside.

    With ``blocking=False`` it yields ``False`` at once when another process holds the lock
    (and holds nothing); otherwise it yields ``True`` once the lock is held.
    """
    from filelock import FileLock, Timeout

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=-1 if blocking else 0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


class SpawnPool:
    """A ``ProcessPoolExecutor`` on the spawn context with a stop that ends its workers.

    Use as a context manager; on an exception inside the block (Ctrl-C included) the workers
    are terminated before the exception goes on, so no worker outlives its caller.
    """

    def __init__(
        self,
        workers: int,
        initializer: Callable[..., None] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        import psutil

        self._before = {p.pid for p in psutil.Process().children(recursive=True)}
        self.context = multiprocessing.get_context("spawn")
        self.executor = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=self.context,
            initializer=initializer,
            initargs=initargs,
        )

    def submit(self, fn: Callable[..., Any], *args: Any):
        return self.executor.submit(fn, *args)

    def stop(self) -> None:
        """Terminate every worker now and cancel what has not started.

        Workers are found portably with psutil: this process's children started by
        ``multiprocessing``'s spawn (``spawn_main`` on their command line) since the pool began.
        """
        import psutil

        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if child.pid not in self._before and "spawn_main" in " ".join(child.cmdline()):
                    child.terminate()
        self.executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> SpawnPool:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.stop()
        else:
            self.executor.shutdown(wait=True)
