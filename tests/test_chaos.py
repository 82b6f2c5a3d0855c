"""Chaos with real processes: a fault kind x a protocol phase, each cell one networked session
of ``semalign ap`` and two ``semalign user`` processes on 127.0.0.1.

The fault is a failpoint (``common/failpoints.py``) in the process's environment, so it
strikes at exactly the same protocol step every run: user2 kills itself (``exit``, like kill
-9), stops itself past the round deadline (``stop``; SIGCONT once the AP is done), cuts its
gRPC stream (``sever``), or the AP kills itself (``exit`` on the AP side). Phases: handshake
(the user has its HandshakeAccept / the AP has every handshake), round 1, the final broadcast
and the evaluation.

What each cell must show is the table :data:`EXPECTED` (fault kind -> outcome); a kind listed
in :data:`PENDING` is a strict xfail (none is). Outcomes:

* ``dropped``: user2 is dropped with a reason, user1 finishes, the results file is written,
  lists user2 in ``lost``, and the AP exits with code 3 (users lost); user1's figures and every
  round's residuals equal, to 1e-9, an in-process session in which user2's link fails at the
  same step (for the final broadcast and the evaluation that is the undisturbed session
  itself). A killed user is given up on after the AP's ``--rejoin-grace``; a stopped one at
  the ``--round-deadline`` (``--stragglers drop``).
* ``recovered``: nothing is lost: nobody dropped, ``lost`` empty, AP exit code 0, both users
  exit 0, and every number of the results equals the undisturbed networked run to 1e-9. A
  severed user comes back by itself within its ``--rejoin-grace`` (the results' ``rejoins``
  show it); a killed AP is started again with the same command and ``--resume``, and the users
  come back to it by themselves.

Timeouts and grace periods here are limits only (a hung cell fails instead of blocking);
nothing is timed. ``SEMALIGN_CHAOS_LONG=1`` adds the same matrix at round 0 and the last round.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from semalign.common.config import AlignmentConfig
from semalign.common.credentials import user_token
from semalign.common.errors import LinkError
from semalign.deploy.serving.launcher import Processes, child_env, free_port, semalign_command
from semalign.server.session import SessionDriver
from synthetic import make_latents
from test_resume import assert_same_numbers

from semalign.engine.loopback import LoopbackLink
from semalign.engine.scenario import build_session, load_scenario

SEMALIGN = semalign_command()
T = 3  # ADMM rounds
SEED = 7
ALIGN = ["--antennas-tx", "2", "--antennas-rx", "2", "--channel-uses", "2"]
ALIGN += ["--iterations", str(T), "--seeds", str(SEED)]
SECRET = "chaos-secret-0123456789abcdef"
REL = 1e-9

#: Fault kind -> outcome (see the module's docstring).
EXPECTED = {
    "user-exit": "dropped",
    "user-stop": "dropped",
    "user-sever": "recovered",
    "ap-exit": "recovered",
}
#: Kinds still expected to fail (strict xfail): switching one is one line. None left.
PENDING: set[str] = set()
#: Outcome -> exit code of ``semalign ap``: 3 results written but users lost, 0 nobody lost.
AP_EXIT = {"dropped": 3, "recovered": 0}
#: Fault kind -> the AP's options for it; limits only, short where they are waited out.
AP_OPTIONS = {
    "user-exit": ["--rejoin-grace", "3"],  # a killed user is given up on after 3 s
    "user-stop": ["--round-deadline", "6", "--stragglers", "drop"],  # a stopped one at 6 s
    "user-sever": ["--rejoin-grace", "60"],
    "ap-exit": [],
}
#: Seconds a user may take to come back after its stream broke (a limit only).
USER_REJOIN_GRACE = "90"

#: Phase -> (failpoint suffix, index of user2's reply at which an in-process link must fail
#: to lose it at the same step: 0 is its handshake, 1 + t its round-t upload).
PHASES = {
    "handshake": ("handshake", 1),
    "round": ("round=1", 2),
    "final": ("final", 1 + T),
    "evaluation": ("evaluation", 2 + T),
}
LONG_PHASES = {"round0": ("round=0", 1), "last-round": (f"round={T - 1}", T)}


@dataclass(frozen=True)
class Cell:
    kind: str
    phase: str

    @property
    def failpoint(self) -> str:
        """The SEMALIGN_FAILPOINTS value of the faulty process (user2 or the AP)."""
        side, action = self.kind.split("-")[:2]
        point = {**PHASES, **LONG_PHASES}[self.phase][0]
        return f"{side}.{point}:{action}"

    @property
    def fails_at(self) -> int:
        return {**PHASES, **LONG_PHASES}[self.phase][1]


def _cells() -> list:
    phases = list(PHASES) + (list(LONG_PHASES) if os.environ.get("SEMALIGN_CHAOS_LONG") else [])
    params = []
    for kind in EXPECTED:
        marks = [pytest.mark.xfail(strict=True, reason="pending")] if kind in PENDING else []
        for phase in phases:
            params.append(pytest.param(Cell(kind, phase), id=f"{kind}-{phase}", marks=marks))
    return params


# ---------------------------------------------------------------------------- references
class FailingLink:
    """A loopback link that is lost (LinkError) from its ``fails_at``-th reply on."""

    def __init__(self, link: LoopbackLink, fails_at: int) -> None:
        self.link, self.fails_at, self.replies, self.lost = link, fails_at, 0, False

    def send(self, data: bytes) -> None:
        if self.lost:
            raise LinkError("lost")
        self.link.send(data)

    def receive(self, timeout: float | None) -> bytes:
        self.lost = self.lost or self.replies >= self.fails_at
        if self.lost:
            raise LinkError("lost")
        self.replies += 1
        return self.link.receive(timeout)


def in_process(latents, fails_at: int | None) -> dict:
    """The session in one process, user2's link lost at reply ``fails_at`` (None: never)."""
    root, ap, users = latents
    scenario = load_scenario(root, ap, users)
    config = AlignmentConfig(antennas_tx=2, antennas_rx=2, channel_uses=2, iterations=T, seed=SEED)
    ap_machine, machines = build_session(scenario, config)
    links = [LoopbackLink(u) for u in machines]
    if fails_at is not None:
        links[1] = FailingLink(links[1], fails_at)
    test_ids = np.arange(len(scenario.ap_test), dtype=np.int64)
    result = SessionDriver(ap_machine, links).run(scenario.ap_test, test_ids)
    reports = {uid: report.to_dict() for uid, report in result.reports.items()}
    return {"reports": reports, "rounds": result.rounds, "dropped": result.dropped}


def assert_same_user(got: dict, want: dict) -> None:
    for key in ("accuracy", "mse", "mse_whitened"):
        assert got[key] == pytest.approx(want[key], rel=REL, abs=1e-12), key


def assert_same_rounds(got: list[dict], want: list) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        for key in ("mse", "primal_residual", "dual_residual"):
            assert g[key] == pytest.approx(getattr(w, key), rel=REL, abs=1e-12), key


# ---------------------------------------------------------------------------- processes
@dataclass
class Outcome:
    ap_code: int | None
    results: dict | None
    users: dict[str, int | None]
    logs: str
    resumed: bool = False  # the AP was killed and started again with --resume


def session(latents, tmp: Path, cell: Cell | None = None) -> Outcome:
    """One networked session (``cell``: with its fault); every process is gone on return."""
    root, ap_enc, encoders = latents
    port = free_port()
    secret = tmp / "secret"
    secret.write_text(SECRET + "\n")
    out = tmp / "ap.json"
    kind = cell.kind if cell else ""
    ap_argv = [*SEMALIGN, "ap", "--users", "user1,user2", "--listen", f"127.0.0.1:{port}"]
    ap_argv += ["--latents", str(root), "--ap", ap_enc, *ALIGN, "-q", "--insecure"]
    ap_argv += ["--out", str(out), "--workdir", str(tmp / "work"), "--secret-file", str(secret)]
    ap_argv += ["--reply-timeout", "60", "--join-timeout", "90", *AP_OPTIONS.get(kind, [])]
    resumed = False
    with Processes(tmp / "logs") as procs:
        users = {}
        for i, encoder in enumerate(encoders, 1):
            argv = [*SEMALIGN, "user", "--ap", f"127.0.0.1:{port}", "--user-id", f"user{i}"]
            argv += ["--encoder", encoder, "--latents", str(root), "--insecure"]
            argv += ["--connect-timeout", "90", "--rejoin-grace", USER_REJOIN_GRACE]
            env = child_env(single_thread=True, SEMALIGN_TOKEN=user_token(SECRET, f"user{i}"))
            if cell and i == 2 and not kind.startswith("ap-"):
                env["SEMALIGN_FAILPOINTS"] = cell.failpoint
            users[f"user{i}"] = procs.start(f"user{i}", argv, env)
        ap_env = child_env(single_thread=True)
        if kind.startswith("ap-"):
            ap_env["SEMALIGN_FAILPOINTS"] = cell.failpoint
        ap = procs.start("ap", ap_argv, ap_env)
        code = _wait(ap.proc, 150)
        if kind.startswith("ap-") and code == -signal.SIGKILL:  # killed: the same, resumed
            ap = procs.start("ap-resumed", [*ap_argv, "--resume"], child_env(single_thread=True))
            code, resumed = _wait(ap.proc, 150), True
        # users end once the AP is done: a stopped user goes on and finds it was dropped;
        # after an AP that failed (not a session's end) they would retry: not waited for
        limit = 60 if code in (0, 3) else 5
        codes = {}
        for name, child in users.items():
            if child.proc.poll() is None:
                os.kill(child.proc.pid, signal.SIGCONT)
            codes[name] = _wait(child.proc, limit)
        logs = "\n".join(f"--- {c.name}\n{c.log_path.read_text()[-3000:]}" for c in procs.children)
    results = json.loads(out.read_text()) if out.exists() else None
    return Outcome(code, results, codes, logs, resumed)


def _wait(proc: subprocess.Popen, limit: float) -> int | None:
    """The exit code; None if it was still running after ``limit`` seconds (a limit only)."""
    try:
        return proc.wait(limit)
    except subprocess.TimeoutExpired:
        return None


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    return make_latents(tmp_path_factory.mktemp("lat"), user_dims=(12, 20), n_train=200)


@pytest.fixture(scope="module")
def baseline(latents, tmp_path_factory) -> Outcome:
    """The undisturbed networked session, shared by every cell."""
    outcome = session(latents, tmp_path_factory.mktemp("baseline"))
    assert outcome.ap_code == 0 and outcome.results is not None, outcome.logs
    return outcome


def test_undisturbed_session_equals_the_in_process_one(latents, baseline):
    """The baseline itself: nobody dropped, and the same figures as the in-process engine (the
    references of the ``dropped`` cells come from there)."""
    want = in_process(latents, None)
    (block,) = baseline.results["seeds"]
    assert block["dropped"] == {} and want["dropped"] == {}
    assert baseline.results["lost"] == []
    for user in block["users"]:
        assert_same_user(user, want["reports"][user["name"]])
    assert_same_rounds(block["rounds"], want["rounds"])
    assert baseline.users == {"user1": 0, "user2": 0}


@pytest.mark.parametrize("cell", _cells())
def test_chaos_cell(cell: Cell, latents, baseline, tmp_path):
    outcome = session(latents, tmp_path, cell)
    assert outcome.ap_code is not None, "the AP hung\n" + outcome.logs
    expected = EXPECTED[cell.kind]
    assert outcome.ap_code == AP_EXIT[expected], outcome.logs
    assert outcome.results is not None, outcome.logs
    if expected == "dropped":
        check_dropped(cell, latents, baseline, outcome)
    else:
        check_recovered(cell, baseline, outcome)


def check_dropped(cell: Cell, latents, baseline: Outcome, outcome: Outcome) -> None:
    (block,) = outcome.results["seeds"]
    assert set(block["dropped"]) == {"user2"} and block["dropped"]["user2"], block["dropped"]
    reason = block["dropped"]["user2"]
    assert outcome.results["lost"] == [
        {"seed": SEED, "user": "user2", "reason": f"dropped at {reason}"}
    ]
    user1, user2 = block["users"]
    assert user2["name"] == "user2" and user2["dropped"] and user2["accuracy"] is None
    want = in_process(latents, cell.fails_at)
    assert set(want["dropped"]) == {"user2"}
    # lost at the same step: "round R: PHASE: why" agrees up to the why
    got_at, want_at = reason.split(": "), want["dropped"]["user2"].split(": ")
    if cell.kind == "user-stop":  # "round R: straggler: no reply within S s at round R"
        assert got_at[0] == want_at[0] and got_at[1] == "straggler", reason
    else:  # "round R: PHASE: the stream ended ...; it did not come back within S s"
        assert got_at[:2] == want_at[:2] and "did not come back" in reason, reason
    assert_same_user(user1, want["reports"]["user1"])
    assert_same_rounds(block["rounds"], want["rounds"])
    if cell.phase in ("final", "evaluation"):  # alignment was complete: nothing changed
        assert_same_user(user1, baseline.results["seeds"][0]["users"][0])
    assert outcome.users["user1"] == 0, outcome.logs
    assert outcome.users["user2"] != 0  # killed, or told it was dropped


def check_recovered(cell: Cell, baseline: Outcome, outcome: Outcome) -> None:
    (block,) = outcome.results["seeds"]
    assert block["dropped"] == {}, block["dropped"]
    assert outcome.results["lost"] == []
    assert_same_numbers(outcome.results, baseline.results)
    assert outcome.users == {"user1": 0, "user2": 0}, outcome.logs
    if cell.kind == "ap-exit":  # the failpoint fired: the AP died and was resumed
        assert outcome.resumed, outcome.logs
    else:  # the stream was cut and user2 came back on a new one
        rejoins = outcome.results["seeds"][0]["wire"]["rejoins"]
        assert [r["user"] for r in rejoins] == ["user2"], rejoins


# ---------------------------------------------------------------------------- failpoints
@pytest.fixture
def points():
    from semalign.common import failpoints

    yield failpoints
    failpoints.configure("")
    failpoints.on_sever(None)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("user.round=2:exit", [("user.round", "exit", 2, 0.0)]),
        (
            "ap.final=:stop, user.evaluation:sever",
            [("ap.final", "stop", None, 0.0), ("user.evaluation", "sever", None, 0.0)],
        ),
        ("user.handshake:sleep:1.5,", [("user.handshake", "sleep", None, 1.5)]),
        ("", []),
    ],
)
def test_failpoint_syntax(points, spec, expected):
    got = [(p.name, p.action, p.at, p.seconds) for p in points.parse(spec)]
    assert got == expected


@pytest.mark.parametrize(
    "spec",
    [
        "user.rnd:exit",
        "user.round:explode",
        "user.round=x:exit",
        "user.round:sleep:-1",
        "user.round:sleep:nan",
        "user.round:exit:3",
        "ap.final",
    ],
)
def test_malformed_failpoints_are_refused(points, spec):
    with pytest.raises(ValueError, match="user.r|ap.final"):
        points.parse(spec)


def test_malformed_failpoints_stop_the_command_with_one_line(monkeypatch, capsys):
    from semalign.common import failpoints

    from semalign.cli import main

    monkeypatch.setattr(failpoints, "_SPEC", "user.round:explode")
    monkeypatch.setattr(failpoints, "_points", None)
    assert main(["token", "user1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "SEMALIGN_FAILPOINTS" in err and "explode" in err


def test_failpoints_fire_once_where_they_match(points, monkeypatch):
    slept, severed = [], []
    monkeypatch.setattr(points.time, "sleep", slept.append)
    points.on_sever(lambda: severed.append(True))
    points.configure("user.round=2:sleep:0.25,user.final:sever")
    for t in range(4):
        points.failpoint("user.round", at=t)
    points.failpoint("user.round", at=2)  # fired already
    assert slept == [0.25]
    points.failpoint("user.final")
    points.failpoint("user.final")
    assert severed == [True]
    points.configure("")
    points.failpoint("user.final")  # off: nothing happens, nothing is parsed
    assert severed == [True] and points._points is None
