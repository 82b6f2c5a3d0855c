"""Starting and stopping the processes of a deployment: Flower SuperLink, SuperNodes, users.

Every child runs in its own process session (``start_new_session``) with Flower telemetry and
update checks off, its own ``FLWR_HOME`` and a log file. :meth:`Processes.stop` (also on leaving
the ``with`` block, on Ctrl-C and, through :func:`sigterm_as_interrupt`, on SIGTERM) ends every
child and every process below it: the process tree is listed with psutil before the first
signal, each process gets SIGTERM, then SIGKILL after a grace period, and each child's process
group gets the same signals. That reaches what Flower spawns (SuperExec, ClientApp and
ServerApp processes, some in sessions of their own, some re-parented once their parent exits)
on Linux and macOS alike.

If the launcher itself is killed (SIGKILL) nothing runs ``stop``; on Linux each child then gets
SIGTERM from the kernel (:func:`linux_parent_death_signal`, best effort), and Flower's SuperExec
watches its parent's pid.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil
from semalign.common.errors import LaunchError

log = logging.getLogger(__name__)

# We fork only to exec (Popen). gRPC's fork handlers are then useless, and with the alignment
# service's threads running they log "skipping fork() handlers" for every child we start.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

#: Set in every process we start: no telemetry posts, no update checks (privacy and speed).
FLOWER_ENV = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}

#: For user processes that share one machine (the local launcher): one BLAS thread each.
#: Idle OpenBLAS threads spin; ten users with two threads each on two cores measured a p95 round
#: latency of 1.2 s instead of about 0.3 s. Values already set in the environment win.
SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def bin_dir() -> Path:
    return Path(sys.executable).parent


def tool(name: str) -> str:
    """A console script next to this interpreter (the venv), else from PATH."""
    candidate = bin_dir() / name
    return str(candidate) if candidate.exists() else name


def semalign_command() -> list[str]:
    """How to start ``semalign`` as a child: the console script next to this interpreter.

    (Not ``python -m semalign.cli``: run as ``__main__`` the module is imported twice and its
    UsageError is no longer caught as a one-line error.)
    """
    script = tool("semalign")
    if Path(script).exists():
        return [script]
    return [sys.executable, "-c", "import sys; from semalign.cli import main; sys.exit(main())"]


def child_env(
    flwr_home: Path | None = None, *, single_thread: bool = False, **extra: str
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(FLOWER_ENV)
    if single_thread:
        for key, value in SINGLE_THREAD_ENV.items():
            env.setdefault(key, value)
    env["PATH"] = f"{bin_dir()}{os.pathsep}{env.get('PATH', '')}"  # flower-superexec & co
    env["PYTHONUNBUFFERED"] = "1"
    if flwr_home is not None:
        flwr_home.mkdir(parents=True, exist_ok=True)
        env["FLWR_HOME"] = str(flwr_home)
    env.update(extra)
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float, procs: Processes | None = None) -> None:
    """Wait until something accepts connections on ``host:port`` (LaunchError after
    ``timeout`` s, or at once when one of ``procs`` exited)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        if procs is not None:
            procs.check()
        if time.monotonic() > deadline:
            raise LaunchError(f"nothing listens on {host}:{port} after {timeout:g} s")
        time.sleep(0.1)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends a command like Ctrl-C does (children are stopped in ``finally``)."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------- process trees
def descendants(pid: int) -> list[psutil.Process]:
    """Every process below ``pid`` (empty when ``pid`` is gone). A :class:`psutil.Process`
    remembers its start time, so it never stands for a later process that reuses the pid."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def alive(processes: Iterable[psutil.Process]) -> list[psutil.Process]:
    """Those of ``processes`` still running (same process, not a zombie)."""
    running = []
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                running.append(proc)
    return running


def _signal_all(processes: Iterable[psutil.Process], sig: int) -> None:
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)  # checks it is still the same process first


def _signal_group(pid: int, sig: int) -> None:
    # Our children lead their own process group (start_new_session): pgid == pid. The group
    # also holds grandchildren whose parent exited before the tree was listed.
    with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
        os.killpg(pid, sig)


def terminate_tree(
    roots: Iterable[psutil.Process], *, groups: Iterable[int] = (), grace: float = 5.0
) -> None:
    """SIGTERM ``roots`` and every process below them, SIGKILL whatever is left after
    ``grace`` seconds. ``groups``: process-group ids that get the same two signals.

    The tree is listed before the first signal (and again before the second, for processes
    started meanwhile), so children re-parented once their parent exits are still reached.
    """
    groups = list(groups)
    tree: dict[psutil.Process, None] = {}
    for root in roots:
        tree.update(dict.fromkeys([root, *descendants(root.pid)]))
    for pgid in groups:
        _signal_group(pgid, signal.SIGTERM)
    _signal_all(tree, signal.SIGTERM)
    _, left = psutil.wait_procs(alive(tree), timeout=grace)
    for proc in left:  # list what they started meanwhile, then kill it all
        tree.update(dict.fromkeys(descendants(proc.pid)))
    for pgid in groups:
        _signal_group(pgid, signal.SIGKILL)
    _signal_all(alive(tree), signal.SIGKILL)
    psutil.wait_procs(alive(tree), timeout=2.0)


def linux_parent_death_signal() -> None:
    """Best effort, Linux only: the calling process gets SIGTERM when its parent dies
    (``prctl(PR_SET_PDEATHSIG)``; kept across exec). Used between fork and exec of a child, so
    children of a launcher killed with SIGKILL do not live on. Silently does nothing where it
    is not available; :meth:`Processes.stop` does not depend on it."""
    with contextlib.suppress(Exception):
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 == PR_SET_PDEATHSIG


# ---------------------------------------------------------------------------- children
@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log_path: Path
    log_file: IO[bytes]

    def tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text[-lines:])


@dataclass
class Processes:
    """The children of one launcher; a context manager that always stops them.

    ``bind_to_parent``: on Linux, also ask the kernel to SIGTERM each child when the launcher
    dies (:func:`linux_parent_death_signal`); elsewhere, or if False, only :meth:`stop` ends
    them.
    """

    log_dir: Path
    bind_to_parent: bool = True
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        bind = self.bind_to_parent and sys.platform.startswith("linux")
        try:
            proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=linux_parent_death_signal if bind else None,
            )
        except OSError as exc:
            log_file.close()
            raise LaunchError(f"cannot start {name} ({argv[0]}): {exc.strerror}") from None
        child = Child(name, proc, log_path, log_file)
        self.children.append(child)
        log.info("started %s (pid %d): %s", name, proc.pid, " ".join(argv))
        return child

    def check(self, expendable: Collection[str] = ()) -> dict[str, str]:
        """LaunchError if a child exited (they all must live until stop()), except the
        ``expendable`` ones (users: the session goes on without them), which are returned
        as ``{name: "exited with code N"}``."""
        gone = {}
        for child in self.children:
            code = child.proc.poll()
            if code is None:
                continue
            why = f"{child.name} exited with code {code} (log {child.log_path}: {child.tail()})"
            if child.name not in expendable:
                raise LaunchError(why)
            gone[child.name] = f"exited with code {code}"
        return gone

    def stop(self, grace: float = 5.0) -> None:
        """End every child and everything it started (:func:`terminate_tree`)."""
        roots = []
        for child in self.children:
            if child.proc.poll() is None:  # not reaped yet: the pid is still this child's
                with contextlib.suppress(psutil.Error):
                    roots.append(psutil.Process(child.proc.pid))
        terminate_tree(roots, groups=[c.proc.pid for c in self.children], grace=grace)
        for child in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(2)  # reap
            child.log_file.close()
        self.children.clear()

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()
