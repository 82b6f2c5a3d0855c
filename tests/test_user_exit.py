"""A user's streams, channel and process end with its sessions.

Once, in the soak, a `semalign user` printed its session line after the AP had been killed and
resumed (`came back 1x`) and never exited; SIGTERM did not move it (its handler never ran), so
it was stuck in C code: gRPC's teardown, which closing the process's last channel runs in the
closing thread while it holds the GIL (and the interpreter's exit runs again for whatever gRPC
object is still alive, before it waits for every non-daemon thread). Timing dependent: it did
not recur in hundreds of sessions. Here it is made certain: the user processes run with a
gRPC whose channel close never returns (in C code holding the GIL, as the hung user was) and
with a non-daemon library thread that never ends; the AP is killed by a failpoint at round 1
and resumed. A user that tore gRPC down or waited for its threads would hang; the user ends
its process without either (``deploy/commands/user.py: end_process``).

``end_process`` flushes and exits with its code whatever threads still run; should it not
finish (an output nobody reads) its watchdog writes every thread's stack and exits 1. The
library's own close (:func:`semalign.client.channel.close_channel`) is bounded and names a
close that does not return; a stream kept open for the AP's next session is not ended with the
session the user lost.
"""

from __future__ import annotations

import json
import logging
import queue
import signal
import subprocess
import sys
import threading
from types import SimpleNamespace

import grpc
import pytest
from semalign.client import stream
from semalign.client.channel import close_channel, open_channel
from semalign.common.config import AlignmentConfig
from semalign.common.contract import SessionOffer
from semalign.common.credentials import user_token
from semalign.deploy.serving.launcher import Processes, child_env, free_port, semalign_command
from synthetic import make_latents

SEMALIGN = semalign_command()
SEED = 7
ALIGN = ["--antennas-tx", "2", "--antennas-rx", "2", "--channel-uses", "2"]
ALIGN += ["--iterations", "3", "--seeds", str(SEED)]
SECRET = "user-exit-secret-0123456789"

#: ``python -c`` program: `semalign user` (its argv follows) in a process whose gRPC channel
#: close never returns, stuck in C code that keeps the GIL (a PyDLL call), and with a
#: non-daemon thread that never ends.
STUCK_TEARDOWN = """
import ctypes, sys, threading
import grpc._channel

def never_returns(*args, **kwargs):
    libc = ctypes.PyDLL(None)
    while True:
        libc.sleep(3600)

grpc._channel.Channel.close = grpc._channel.Channel._close = never_returns
grpc._channel.Channel.__exit__ = never_returns
threading.Thread(target=threading.Event().wait, name="a-library-thread").start()
from semalign.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    return make_latents(tmp_path_factory.mktemp("lat"), user_dims=(12, 20), n_train=200)


def _wait(proc: subprocess.Popen, limit: float) -> int | None:
    """The exit code; None if still running after ``limit`` seconds (a limit only)."""
    try:
        return proc.wait(limit)
    except subprocess.TimeoutExpired:
        return None


def test_user_ends_after_an_ap_restart_though_grpc_teardown_never_returns(latents, tmp_path):
    root, ap_enc, encoders = latents
    port, out, secret = free_port(), tmp_path / "ap.json", tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    ap_argv = [*SEMALIGN, "ap", "--users", "user1,user2", "--listen", f"127.0.0.1:{port}"]
    ap_argv += ["--latents", str(root), "--ap", ap_enc, *ALIGN, "-q", "--insecure"]
    ap_argv += ["--out", str(out), "--workdir", str(tmp_path / "work")]
    ap_argv += ["--secret-file", str(secret)]
    with Processes(tmp_path / "logs") as procs:
        users = {}
        for i, encoder in enumerate(encoders, 1):
            uid = f"user{i}"
            argv = [sys.executable, "-c", STUCK_TEARDOWN, "user", "--ap", f"127.0.0.1:{port}"]
            argv += ["--user-id", uid, "--encoder", encoder, "--latents", str(root)]
            argv += ["--insecure", "--connect-timeout", "90", "--rejoin-grace", "90"]
            env = child_env(single_thread=True, SEMALIGN_TOKEN=user_token(SECRET, uid))
            users[uid] = procs.start(uid, argv, env)
        kill = child_env(single_thread=True, SEMALIGN_FAILPOINTS="ap.round=1:exit")
        killed = procs.start("ap", ap_argv, kill)  # kills itself once round 1 is done
        killed_code = _wait(killed.proc, 150)
        resumed = procs.start("ap-resumed", [*ap_argv, "--resume"], child_env(single_thread=True))
        ap_code = _wait(resumed.proc, 150)
        codes = {uid: _wait(child.proc, 60) for uid, child in users.items()}
        logs = {child.name: child.log_path.read_text() for child in procs.children}
    shown = "\n".join(f"--- {name}\n{text[-3000:]}" for name, text in logs.items())
    assert killed_code == -signal.SIGKILL and ap_code == 0, shown
    assert codes == {"user1": 0, "user2": 0}, shown  # None: still running a minute later
    results = json.loads(out.read_text())
    assert results["lost"] == [] and results["seeds"][0]["dropped"] == {}
    for uid, child in users.items():  # each came back to the resumed AP, and finished
        assert f"{uid} session 1 (seed {SEED}): ok" in logs[child.name], shown
        assert "came back 1x" in logs[child.name], shown


class _CloseNeverReturns:
    """A channel whose close blocks until the test lets it go."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def close(self) -> None:
        self.release.wait()


def test_close_channel_leaves_a_close_that_does_not_return_and_names_it(caplog):
    channel = _CloseNeverReturns()
    try:
        with caplog.at_level(logging.WARNING, logger="semalign.client.channel"):
            assert close_channel(channel, limit_s=0.2) is False
    finally:
        channel.release.set()
    (record,) = caplog.records
    text = record.getMessage()
    assert "semalign-channel-close" in text and "did not return within 0.2 s" in text
    assert "in close" in text and "self.release.wait()" in text  # the stuck thread's stack


def test_close_channel_closes_a_channel():
    channel = open_channel("127.0.0.1:1")
    assert close_channel(channel) is True
    with pytest.raises(ValueError, match="closed"):  # a closed channel refuses new calls
        channel.unary_unary("/semalign.v1.Alignment/Nothing")(b"")


class _Broken(grpc.RpcError):
    def code(self):
        return grpc.StatusCode.UNAVAILABLE

    def details(self):
        return "Socket closed"


class _FakeStream(stream._Session):
    """A stream without gRPC: its requests stay in the outbox; ``broken`` ends it with
    UNAVAILABLE (the AP went away)."""

    def __init__(self, broken: bool) -> None:
        self.report = stream.UserSessionReport("user1")
        self._outbox = queue.SimpleQueue()
        self.call = SimpleNamespace(cancelled=False)
        self.call.cancel = lambda: setattr(self.call, "cancelled", True)
        self.broken = broken

    def requests(self) -> list:
        out = []
        while not self._outbox.empty():
            out.append(self._outbox.get())
        return out


def test_a_stream_kept_for_the_aps_next_session_is_not_ended(monkeypatch):
    """user1's stream breaks; when it comes back the AP has moved on to the next session: the
    broken stream is ended, the new one is handed on open (its first request, the handshake,
    still to be sent)."""
    config = AlignmentConfig(antennas_tx=2, antennas_rx=2, channel_uses=2, iterations=3)
    first, later = _FakeStream(broken=True), _FakeStream(broken=False)
    offers = [SessionOffer("s1", 0, 2, config), SessionOffer("s2", 1, 2, config)]

    def pump(session, user, report):
        if session.broken:
            raise _Broken()

    user = SimpleNamespace(user_id="user1", token="", handshake_request=lambda: b"hello")
    user.data = SimpleNamespace(pilot_ids=())  # nothing to prepare
    monkeypatch.setattr(stream, "_pump", pump)
    monkeypatch.setattr(stream, "prepare", lambda user, offer: None)
    peer = stream._Peer(None, "127.0.0.1:1", "t", "user1", lambda offer: user)
    peer.connect = lambda timeout, grace=False: (later, offers[1])
    report, last, handed = peer.run_session(first, offers[0], rejoin_grace=5.0)
    assert report.status == "interrupted" and "moved on" in report.detail and not last
    assert handed == (later, offers[1])
    assert first.requests() == [b"hello", None]  # the broken stream: handshake, end mark
    assert later.requests() == [] and not later.call.cancelled  # open, untouched


def _end_process(program: str) -> subprocess.CompletedProcess:
    """``python -c`` with ``end_process`` imported; its exit code and output."""
    head = "import sys, time\nfrom semalign.deploy.commands.user import end_process\n"
    argv = [sys.executable, "-c", head + program]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)  # a limit only


def test_end_process_flushes_and_exits_with_the_code_whatever_threads_run():
    done = _end_process(
        "import threading\n"
        "threading.Thread(target=threading.Event().wait).start()  # never ends\n"
        "print('the session line')\n"  # no flush of its own: end_process flushes
        "end_process(3)\n"
    )
    assert done.returncode == 3 and done.stdout == "the session line\n", done.stderr


def test_end_process_that_cannot_finish_dumps_every_stack_and_exits_1():
    done = _end_process(
        "import semalign.deploy.commands.user as user\n"
        "user.EXIT_LIMIT_S = 1.0\n"
        "class Stuck:\n"
        "    def flush(self):\n"
        "        time.sleep(3600)  # an output nobody reads\n"
        "sys.stdout = Stuck()\n"
        "end_process(0)\n"
    )
    assert done.returncode == 1, done.stderr
    assert "Timeout (0:00:01)!" in done.stderr and "in flush" in done.stderr, done.stderr
