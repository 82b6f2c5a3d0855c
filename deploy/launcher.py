"""Starting and stopping the processes of a deployment: Flower SuperLink, SuperNodes, users.

Every child runs in its own process session (``start_new_session``) with Flower telemetry and
update checks off, its own ``FLWR_HOME`` and a log file; :meth:`Processes.stop` ends each one by
its process-group id and every process it started by process id (SIGTERM, then SIGKILL after a
grace period): that reaches what Flower spawns (SuperExec, ClientApp and ServerApp processes,
some in sessions of their own). On Linux each child also gets SIGTERM if the launcher dies
(``PR_SET_PDEATHSIG``); Flower's SuperExec watches its parent's pid.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

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

APP_DIR = Path(__file__).resolve().parent / "flwr_app"


def bin_dir() -> Path:
    return Path(sys.executable).parent


def tool(name: str) -> str:
    """A console script next to this interpreter (the venv), else from PATH."""
    candidate = bin_dir() / name
    return str(candidate) if candidate.exists() else name


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


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


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
    """The children of one launcher; a context manager that always stops them."""

    log_dir: Path
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        try:
            proc = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        except OSError as exc:
            log_file.close()
            raise LaunchError(f"cannot start {name} ({argv[0]}): {exc.strerror}") from None
        child = Child(name, proc, log_path, log_file)
        self.children.append(child)
        log.info("started %s (pid %d): %s", name, proc.pid, " ".join(argv))
        return child

    def check(self) -> None:
        """LaunchError if a child exited (they all must live until stop())."""
        for child in self.children:
            code = child.proc.poll()
            if code is not None:
                raise LaunchError(
                    f"{child.name} exited with code {code} (log {child.log_path}: {child.tail()})"
                )

    def stop(self, grace: float = 5.0) -> None:
        """End every child and everything it started, by process id.

        SIGTERM to each child's process group and to each descendant outside it (Flower's
        SuperLink starts its SuperExec in a session of its own), a grace period, then SIGKILL
        for whatever is left. Descendants are listed before the first signal, so processes
        re-parented to init once their parent exits are still found.
        """
        tree = {pid: start for child in self.children for pid, start in descendants(child.proc.pid)}
        for child in self.children:
            _signal_group(child.proc, signal.SIGTERM)
        _signal_pids(tree, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in self.children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(max(0.0, deadline - time.monotonic()))
        while _alive(tree) and time.monotonic() < deadline:
            time.sleep(0.05)
        for child in self.children:
            _signal_group(child.proc, signal.SIGKILL)  # stragglers, and grandchildren
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(2)
            child.log_file.close()
        _signal_pids(tree, signal.SIGKILL)
        self.children.clear()

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    # Our children lead their own process group (start_new_session): pgid == pid.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, start time in clock ticks), from /proc (empty elsewhere)."""
    table = {}
    for entry in Path("/proc").glob("[0-9]*/stat") if Path("/proc").is_dir() else ():
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = entry.read_text().rsplit(")", 1)[1].split()
            table[int(entry.parent.name)] = (int(fields[1]), int(fields[19]))
    return table


def descendants(pid: int) -> list[tuple[int, int]]:
    """(pid, start time) of every process below ``pid``."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    found, stack = [], list(children.get(pid, []))
    while stack:
        current = stack.pop()
        found.append((current, table[current][1]))
        stack.extend(children.get(current, []))
    return found


def _alive(tree: dict[int, int]) -> list[int]:
    """The pids of ``tree`` still running as the same process (same start time, not zombie)."""
    table = _proc_table()
    alive = []
    for pid, start in tree.items():
        if pid in table and table[pid][1] == start:
            with contextlib.suppress(OSError):
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    alive.append(pid)
    return alive


def _signal_pids(tree: dict[int, int], sig: int) -> None:
    for pid in _alive(tree):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def wait_for_port(host: str, port: int, timeout: float, procs: Processes | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        if procs is not None:
            procs.check()
        if time.monotonic() > deadline:
            raise LaunchError(f"nothing listens on {host}:{port} after {timeout:g} s")
        time.sleep(0.1)


# ---------------------------------------------------------------------------- Flower
def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string


def config_string(values: dict[str, Any]) -> str:
    """``key=value`` pairs with TOML-typed values, as --node-config/--run-config expect."""
    return " ".join(f"{key}={toml_value(v)}" for key, v in values.items() if v is not None)


def superlink_argv(host: str, port: int, *, tls: dict[str, str] | None = None) -> list[str]:
    argv = [tool("flower-superlink"), "--disable-runtime-dependency-installation"]
    argv += ["--host", host, "--port", str(port)]
    if tls:
        argv += ["--ssl-certfile", tls["cert"], "--ssl-keyfile", tls["key"]]
        if tls.get("ca"):
            argv += ["--ssl-ca-certfile", tls["ca"]]
    else:
        argv.append("--insecure")
    return argv


def supernode_argv(
    superlink: str, runtime_port: int, node_config: dict[str, Any], *, root_ca: str | None = None
) -> list[str]:
    argv = [tool("flower-supernode"), "--superlink", superlink]
    argv += ["--host", "127.0.0.1", "--port", str(runtime_port)]
    argv += ["--node-config", config_string(node_config)]
    argv += ["--root-certificates", root_ca] if root_ca else ["--insecure"]
    return argv


def write_cli_config(flwr_home: Path, superlink: str, *, root_ca: str | None = None) -> None:
    """The `flwr` CLI's connection to our SuperLink, in its own FLWR_HOME."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", 'default = "semalign"', "", "[superlink.semalign]"]
    lines.append(f"address = {json.dumps(superlink)}")
    if root_ca:
        lines.append(f"root-certificates = {json.dumps(root_ca)}")
    else:
        lines.append("insecure = true")
    (flwr_home / "config.toml").write_text("\n".join(lines) + "\n")


def start_flower_run(
    flwr_home: Path, run_config: dict[str, Any], *, app_dir: Path = APP_DIR, timeout: float = 60
) -> int:
    """Submit the semalign Flower App to the SuperLink (``flwr run``); returns the run id."""
    argv = [tool("flwr"), "run", str(app_dir), "semalign", "--format", "json"]
    argv += ["--run-config", config_string(run_config)]
    try:
        done = subprocess.run(
            argv,
            env=child_env(flwr_home),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            cwd=flwr_home,
        )
    except subprocess.TimeoutExpired:
        raise LaunchError(f"`flwr run` did not answer within {timeout:g} s") from None
    try:
        payload = json.loads(done.stdout[done.stdout.index("{") :])
    except ValueError:
        payload = {}
    if done.returncode != 0 or not payload.get("success"):
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise LaunchError(f"`flwr run` failed: {detail[-1] if detail else done.returncode}")
    return int(payload["run-id"])
