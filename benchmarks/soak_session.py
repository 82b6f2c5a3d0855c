"""One session of the soak (``benchmarks/soak.py``): the fault kinds, the processes of a
session on 127.0.0.1 (``semalign ap``, two ``semalign user``, for ``link-cut`` a link emulator
relay in front of user2) and how each fault is injected from outside them.

Each injection returns its evidence: ``injected`` (the fault reached a live process while the
session ran) and what shows it (the victim's exit code after SIGKILL, the kernel's process
state after SIGSTOP, how the AP ended each garbage connection).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
from semalign.common.credentials import user_token
from semalign.deploy.serving.launcher import Processes, child_env, free_port, semalign_command

SEMALIGN = semalign_command()
SECRET = "soak-secret-0123456789abcdef"
USERS = ("user1", "user2")
VICTIM = "user2"


@dataclass(frozen=True)
class Fault:
    """A fault kind: what it does, what surviving it means, the AP's options for it."""

    expected: str  # "recovered" (nothing lost, equal to the twin) or "dropped" (user2 lost)
    ap_options: tuple[str, ...] = ()
    what: str = ""


#: Fault kind -> what it does and the outcome that counts as survived. The grace periods are
#: limits only (a fault that is not survived is waited out, never a timed assertion).
FAULTS = {
    "none": Fault("recovered", (), "no fault: the control"),
    "user-kill": Fault(
        "dropped",
        ("--rejoin-grace", "2"),
        "kill -9 of user2, not restarted: dropped after the AP's 2 s grace",
    ),
    "user-restart": Fault(
        "recovered",
        ("--rejoin-grace", "45"),
        "kill -9 of user2, the same `semalign user` command started again after a pause",
    ),
    "user-stop": Fault(
        "recovered",
        ("--round-deadline", "0.25", "--stragglers", "wait"),
        "SIGSTOP of user2, SIGCONT after a pause (a straggler, waited for)",
    ),
    "link-cut": Fault(
        "recovered",
        ("--rejoin-grace", "45"),
        "user2 reaches the AP through a link emulator relay, killed and restarted after a pause",
    ),
    "garbage-peer": Fault(
        "recovered",
        (),
        "a peer sends junk TCP bytes, a bad HTTP/2 preface, streams with no or wrong tokens and "
        "user1's token with a junk handshake",
    ),
    "ap-kill": Fault(
        "recovered",
        (),
        "kill -9 of the AP, the same `semalign ap` command started again with --resume",
    ),
}


@dataclass
class Plan:
    """What one session does, all drawn from the soak's seeded generator."""

    index: int
    seed: int  # the session's alignment seed (its twin's)
    fault: str
    target_round: int  # strike once the AP's checkpoint shows this round
    delay_s: float  # ... and this much later
    pause_s: float  # stop / cut / restart: how long before it is undone


# ---------------------------------------------------------------------------- one session
@dataclass
class Session:
    """The processes of one session and what happened to them."""

    plan: Plan
    folder: Path
    latents: tuple[Path, str, list[str]]
    rounds: int
    procs: Processes
    port: int = field(default_factory=free_port)
    relay_port: int | None = None
    children: dict = field(default_factory=dict)  # name -> launcher Child (the current one)
    started: float = field(default_factory=time.monotonic)

    @property
    def out(self) -> Path:
        return self.folder / "ap.json"

    def ap_argv(self) -> list[str]:
        root, ap_enc, _ = self.latents
        argv = [*SEMALIGN, "ap", "--user-ids", ",".join(USERS)]
        argv += ["--listen", f"127.0.0.1:{self.port}", "-q", "--insecure"]
        argv += ["--latents", str(root), "--ap-encoder", ap_enc]
        argv += ["--antennas-tx", "2", "--antennas-rx", "2", "--channel-uses", "2"]
        argv += ["--iterations", str(self.rounds), "--seeds", str(self.plan.seed)]
        argv += ["--out", str(self.out), "--workdir", str(self.folder / "work")]
        argv += ["--secret-file", str(self.folder / "secret"), "--reply-timeout", "60"]
        return argv + ["--join-timeout", "60", *FAULTS[self.plan.fault].ap_options]

    def user_argv(self, uid: str) -> list[str]:
        root, _, encoders = self.latents
        port = self.relay_port if uid == VICTIM and self.relay_port else self.port
        argv = [*SEMALIGN, "user", "--ap", f"127.0.0.1:{port}", "--user-id", uid]
        argv += ["--encoder", encoders[USERS.index(uid)], "--latents", str(root), "--insecure"]
        return argv + ["--connect-timeout", "60", "--rejoin-grace", "60"]

    def start(self, name: str, argv: list[str], **env: str) -> None:
        """Start ``argv`` as ``name``; faulthandler on, so SIGABRT dumps every thread's stack
        into its log (:func:`_wait` does that to a process that hangs)."""
        env = child_env(single_thread=True, PYTHONFAULTHANDLER="1", **env)
        self.children[name] = self.procs.start(f"{name}-{len(self.procs.children)}", argv, env)

    def start_user(self, uid: str) -> None:
        self.start(uid, self.user_argv(uid), SEMALIGN_TOKEN=user_token(SECRET, uid))

    def start_relay(self) -> None:
        emulator = Path(__file__).resolve().parents[1] / "semalign_testing" / "link_emulator.py"
        argv = [sys.executable, str(emulator)]  # a script: any working folder
        argv += ["--listen", f"127.0.0.1:{self.relay_port}", "--target", f"127.0.0.1:{self.port}"]
        self.start("relay", argv)

    def pid(self, name: str) -> int:
        return self.children[name].proc.pid

    def alive(self, name: str) -> bool:
        return self.children[name].proc.poll() is None

    def kill(self, name: str) -> int | None:
        """SIGKILL ``name`` (its whole process group); its exit code (None: it was gone)."""
        if not self.alive(name):
            return None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid(name), signal.SIGKILL)
        return self.children[name].proc.wait(10)

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 3)


def checkpoint_round(path: Path) -> int | None:
    """The round of the seed in progress in an AP checkpoint (None: no checkpoint yet, or none
    in progress). The file is replaced atomically, so any read is a whole one."""
    try:
        payload = path.read_bytes().split(b"\n", 2)[2]
        with np.load(io.BytesIO(payload)) as archive:
            current = json.loads(archive["meta"].tobytes())["current"]
    except (OSError, IndexError, ValueError, KeyError):
        return None
    return None if current is None else int(current["round"])


def wait_for_target(session: Session) -> int | None:
    """Wait until the AP's checkpoint shows the plan's round (then its delay); the round seen,
    or None if the AP ended first."""
    checkpoint = Path(f"{session.out}.checkpoint")
    limit = time.monotonic() + 180
    while session.alive("ap") and time.monotonic() < limit:
        seen = checkpoint_round(checkpoint)
        if seen is not None and seen >= session.plan.target_round:
            time.sleep(session.plan.delay_s)
            return seen
        time.sleep(0.01)
    return None


# ---------------------------------------------------------------------------- faults
def kill_user(session: Session) -> dict:
    """kill -9 of user2; injected only if it was still running."""
    code = session.kill(VICTIM)
    return {"injected": code is not None, "killed_exit": code}


def restart_user(session: Session) -> dict:
    """kill -9 of user2, then the same command again after the pause."""
    evidence = kill_user(session)
    time.sleep(session.plan.pause_s)
    session.start_user(VICTIM)
    return evidence


def stop_user(session: Session) -> dict:
    """SIGSTOP of user2, SIGCONT after the pause; evidence: the state the kernel reported."""
    if not session.alive(VICTIM):
        return {"injected": False}
    os.kill(session.pid(VICTIM), signal.SIGSTOP)
    time.sleep(0.05)
    state = None
    with contextlib.suppress(psutil.Error):
        state = psutil.Process(session.pid(VICTIM)).status()
    time.sleep(session.plan.pause_s)
    os.kill(session.pid(VICTIM), signal.SIGCONT)
    return {"injected": state == psutil.STATUS_STOPPED, "state": state}


def cut_link(session: Session) -> dict:
    """Kill user2's relay (both of its TCP connections end), restart it after the pause."""
    code = session.kill("relay")
    time.sleep(session.plan.pause_s)
    session.start_relay()
    return {"injected": code is not None, "killed_exit": code}


def kill_ap(session: Session) -> dict:
    """kill -9 of the AP, then the same command with --resume (after the pause)."""
    code = session.kill("ap")
    if code is None:
        return {"injected": False}
    time.sleep(session.plan.pause_s)
    session.start("ap", [*session.ap_argv(), "--resume"])
    return {"injected": True, "killed_exit": code}


def garbage_peer(session: Session) -> dict:
    """Junk at the AP's port while the session runs; evidence: how each attempt ended."""
    import grpc
    from semalign.common.contract import METHOD
    from semalign.common.credentials import TOKEN_KEY, USER_KEY

    rng = np.random.default_rng(session.plan.seed * 1000 + session.plan.index)
    address, ended = f"127.0.0.1:{session.port}", {}
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    for name, data in (("tcp-junk", rng.bytes(4096)), ("h2-junk", preface + rng.bytes(512))):
        ended[name] = _raw_tcp(session.port, data)
    cases = {
        "no-token": (),
        "wrong-token": ((USER_KEY, "user1"), (TOKEN_KEY, "0" * 64)),
        "user1-junk-handshake": ((USER_KEY, "user1"), (TOKEN_KEY, user_token(SECRET, "user1"))),
    }
    with grpc.insecure_channel(address) as channel:
        method = channel.stream_stream(METHOD)
        for name, metadata in cases.items():
            try:
                next(method(iter([rng.bytes(64)]), metadata=metadata, timeout=10))
                ended[name] = "answered"
            except grpc.RpcError as exc:
                ended[name] = exc.code().name
            except StopIteration:
                ended[name] = "ended-without-status"
    grpc_codes = [ended[name] for name in cases]
    return {
        "injected": any(code in REFUSALS for code in grpc_codes),  # a live AP answered
        "ended": ended,
        "all_refused": all(code in REFUSALS for code in grpc_codes),
    }


def _raw_tcp(port: int, data: bytes) -> str:
    """Send ``data`` on a fresh TCP connection; how the AP answered (closed, reset, ...)."""

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(data)
            return "closed" if not sock.recv(65536) else "answered-then-closed"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return type(exc).__name__


#: How the AP may end a garbage stream (any other ending: it was not refused at the door).
REFUSALS = {
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
    "INVALID_ARGUMENT",
    "ALREADY_EXISTS",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
}

INJECT = {
    "user-kill": kill_user,
    "user-restart": restart_user,
    "user-stop": stop_user,
    "link-cut": cut_link,
    "garbage-peer": garbage_peer,
    "ap-kill": kill_ap,
}


# ---------------------------------------------------------------------------- run and judge
def run_session(plan: Plan, latents, rounds: int, folder: Path) -> dict:
    """One session with its fault; every process is gone on return. The raw outcome: exit
    codes, results (None if not written), the injection."""
    folder.mkdir(parents=True)
    (folder / "secret").write_text(SECRET + "\n")
    with Processes(folder / "logs") as procs:
        session = Session(plan, folder, latents, rounds, procs)
        if plan.fault == "link-cut":
            session.relay_port = free_port()
            session.start_relay()
        for uid in USERS:
            session.start_user(uid)
        session.start("ap", session.ap_argv())
        injection: dict = {"injected": False}
        if plan.fault in INJECT:
            seen = wait_for_target(session)
            if seen is not None:
                injection = {"at_round": seen, "at_s": session.elapsed()}
                injection |= INJECT[plan.fault](session)
        ap_code = _wait(session.children["ap"].proc, 180)
        limit = 60 if ap_code in (0, 3) else 5  # after an AP failure users would retry
        user_codes = {}
        for uid in USERS:
            with contextlib.suppress(ProcessLookupError):
                os.kill(session.pid(uid), signal.SIGCONT)
            user_codes[uid] = _wait(session.children[uid].proc, limit)
        logs = {c.name: c.tail(8) for c in procs.children}
    results = json.loads(session.out.read_text()) if session.out.exists() else None
    return {
        "ap_exit": ap_code,
        "user_exit": user_codes,
        "injection": injection,
        "results": results,
        "logs": logs,
        "wall_s": session.elapsed(),
    }


def _wait(proc: subprocess.Popen, limit: float) -> int | None:
    """The exit code; None if still running after ``limit`` seconds (a limit only): then it
    gets SIGABRT, and faulthandler writes its threads' stacks into its log."""
    try:
        return proc.wait(limit)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGABRT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        return None
