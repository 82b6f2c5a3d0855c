"""A user lost while the others join (its process or its Flower SuperNode gone): that user is
lost, with the reason; the session goes on with the others, results are written, exit code 3.

The end-to-end case is a real local Flower deployment (`semalign run`, 3 users): user2's
ClientApp stops itself when it is invited (failpoint ``user.invited``), then the test kills
user2's whole process tree (launcher, SuperNode, ClientApp) before it has joined the AP.
The other cases check the pieces on their own (no processes).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from semalign.common.config import AlignmentConfig
from semalign.common.contract import SessionOffer
from semalign.deploy.flower.launch import FlowerRun
from semalign.deploy.serving.launcher import Processes, alive, descendants, semalign_command
from semalign.server.lobby import Lobby
from synthetic import make_latents

ALIGN = ["--antennas-tx", "2", "--antennas-rx", "2", "--channel-uses", "2", "--iterations", "3"]


class FakeLink:
    def __init__(self, user_id: str) -> None:
        self.user_id, self.peer, self.ended = user_id, "test", False


def _lobby(expected) -> Lobby:
    return Lobby(SessionOffer("s", 0, 1, AlignmentConfig(), 3), expected)


def test_lobby_stops_waiting_for_users_lost_before_joining():
    lobby = _lobby(["user1", "user2", "user3"])
    assert lobby.join(FakeLink("user1")) is None  # type: ignore[arg-type]
    assert lobby.join(FakeLink("user3")) is None  # type: ignore[arg-type]
    polls = []

    def poll(joined):
        polls.append(joined)
        return {"user2": "its SuperNode was lost: Node Unavailable", "user1": "ignored: joined"}

    links = lobby.wait(None, poll)  # no timeout: returns only because user2 is given up
    assert [link.user_id for link in links] == ["user1", "user3"]
    assert polls == [["user1", "user3"]]
    assert lobby.missing_reasons == {"user2": "its SuperNode was lost: Node Unavailable"}
    assert "user1" not in lobby.lost


def test_lobby_with_a_count_names_the_lost_users_it_learnt_of():
    lobby = _lobby(3)
    assert lobby.join(FakeLink("user1")) is None  # type: ignore[arg-type]
    lobby.give_up("user3", "its ClientApp failed: X")
    lobby.wait(0.0)
    assert lobby.missing == ["user3", "(unnamed user 3 of 3)"]
    assert lobby.missing_reasons["(unnamed user 3 of 3)"] == "never joined"


def test_flower_check_returns_lost_users_and_fails_only_for_flower_itself(tmp_path):
    reports = tmp_path / "flower-reports.json"
    status = {
        "reports": {"user3": {"status": "error", "error": "LatentsError: no latents"}},
        "lost": {"user2": "its SuperNode was lost: Node Unavailable"},
        "errors": ["only 2 of 3 users' SuperNodes"],
    }
    reports.write_text(json.dumps(status))
    with Processes(tmp_path / "logs") as procs:
        procs.start("user4", ["true"], {})
        procs.children[-1].proc.wait()
        run = FlowerRun(reports, procs, ("user4",))
        assert run.check() == {
            "user2": "its SuperNode was lost: Node Unavailable",
            "user3": "its ClientApp failed: LatentsError: no latents",
            "user4": "its SuperNode exited with code 0",
        }
        procs.start("superlink", ["true"], {})
        procs.children[-1].proc.wait()
        with pytest.raises(Exception, match="superlink exited with code 0"):
            run.check()


# ----------------------------------------------------------------------------- end to end
def _stopped_clientapp(root: psutil.Process) -> psutil.Process | None:
    for proc in descendants(root.pid):
        try:
            if proc.status() == psutil.STATUS_STOPPED:
                return proc
        except psutil.Error:
            continue
    return None


def _user_tree(root: psutil.Process, inner: psutil.Process) -> list[psutil.Process]:
    """The direct child of ``root`` above ``inner`` (the user's launcher) and all below it."""
    top = inner
    while top.ppid() != root.pid:
        top = top.parent()
    return [top, *top.children(recursive=True), inner]


def test_semalign_run_goes_on_when_a_supernode_is_killed_before_joining(tmp_path):
    root_dir, ap, _ = make_latents(tmp_path / "lat", user_dims=(12, 20, 16), n_train=200)
    out = tmp_path / "run.json"
    argv = [*semalign_command(), "run", "--latents", str(root_dir), "--ap", ap, "--users", "3"]
    argv += [*ALIGN, "--seeds", "7", "--workdir", str(tmp_path / "work"), "--out", str(out)]
    argv += ["-q", "--join-timeout", "600"]
    env = {**os.environ, "SEMALIGN_FAILPOINTS": "user.invited=1:stop"}
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    root = psutil.Process(proc.pid)
    killed: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 400  # a limit for a hung run, not a speed check
        while time.monotonic() < deadline and proc.poll() is None:
            stopped = _stopped_clientapp(root)
            if stopped is not None:  # user2 is invited and has not joined: kill it all
                killed = _user_tree(root, stopped)
                for p in killed:
                    p.kill()
                break
            time.sleep(0.2)
        assert killed, f"user2 never stopped at its invitation: {proc.stderr.read()[-2000:]}"
        code = proc.wait(400)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert code == 3, err[-3000:]
    assert alive(killed) == []
    results = json.loads(Path(out).read_text())
    assert [u["name"] for u in results["users"]] == ["user1", "user3"]
    (lost,) = results["lost"]
    assert lost["user"] == "user2" and lost["reason"].startswith("never joined: its SuperNode")
    assert "user2" in err and "exited with code -9" in err  # the AP's log says who and why
    reports = results["network"]["deployment"]["flower_reports"]["reports"]
    assert {uid: r["status"] for uid, r in reports.items()} == {"user1": "ok", "user3": "ok"}
