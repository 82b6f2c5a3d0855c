"""A user that starts after the AP's (last) session began is refused at once with a clear line
and exits 2 ``the session has started (round R); joining is closed``, never a
"connection refused" a minute later. A user with no AP listening says so."""

from __future__ import annotations

import re
import subprocess
import time

import pytest
from semalign.common.credentials import user_token
from semalign.deploy.serving.launcher import Processes, child_env, free_port, semalign_command
from synthetic import make_latents

SECRET = "late-user-secret-0123456789abcdef"
ALIGN = ["--antennas-tx", "2", "--antennas-rx", "2", "--channel-uses", "2", "--iterations", "3"]


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    return make_latents(tmp_path_factory.mktemp("lat"), user_dims=(12, 12), n_train=200)


def _user(port: int, user_id: str, root, encoder: str) -> list[str]:
    argv = [*semalign_command(), "user", "--ap", f"127.0.0.1:{port}", "--user-id", user_id]
    return argv + ["--encoder", encoder, "--latents", str(root), "--insecure", "-q"]


def test_a_user_after_the_session_began_is_refused_at_once(latents, tmp_path):
    root, ap_enc, encoders = latents
    port = free_port()
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    ap = [*semalign_command(), "ap", "--users", "1", "--listen", f"127.0.0.1:{port}"]
    ap += ["--latents", str(root), "--ap", ap_enc, *ALIGN, "--seeds", "7", "--insecure"]
    ap += ["--out", str(tmp_path / "ap.json"), "--workdir", str(tmp_path / "work")]
    ap += ["--secret-file", str(secret), "--join-timeout", "90"]
    first = _user(port, "user1", root, encoders[0]) + ["--connect-timeout", "90"]
    late = _user(port, "user2", root, encoders[1]) + ["--connect-timeout", "90"]
    with Processes(tmp_path / "logs") as procs:
        held = child_env(single_thread=True, SEMALIGN_FAILPOINTS="ap.round=1:sleep:120")
        server = procs.start("ap", ap, held)  # the session stays in round 1 meanwhile
        procs.start(
            "user1",
            first,
            child_env(single_thread=True, SEMALIGN_TOKEN=user_token(SECRET, "user1")),
        )
        deadline = time.monotonic() + 90  # a limit only
        while "failpoint ap.round=1: sleep" not in server.log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline and server.proc.poll() is None, server.tail(20)
            time.sleep(0.2)
        env = child_env(single_thread=True, SEMALIGN_TOKEN=user_token(SECRET, "user2"))
        joined = procs.start("user2", late, env)
        try:
            code = joined.proc.wait(60)  # a limit only: the refusal comes at once
        except subprocess.TimeoutExpired:
            code = None
        log = joined.log_path.read_text(errors="replace")
    lines = [line for line in log.strip().splitlines() if "--insecure" not in line]
    assert code == 2, log[-3000:]
    assert len(lines) == 1, log[-3000:]
    assert re.fullmatch(
        r"semalign user: error: the AP refused this user: "
        r"the session has started \(round \d+\); joining is closed",
        lines[0],
    ), lines


def test_a_user_with_no_ap_listening_says_so(latents, tmp_path, capsys):
    from semalign.cli import main

    root, _, encoders = latents
    port = free_port()  # nothing listens there
    argv = ["user", "--ap", f"127.0.0.1:{port}", "--user-id", "user1", "--token", "t"]
    argv += ["--encoder", encoders[0], "--latents", str(root), "--insecure"]
    assert main([*argv, "--connect-timeout", "0.5", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the --insecure warning
    assert err.startswith(
        f"semalign user: error: no AP listening at 127.0.0.1:{port}: the session may have "
        "ended or not started (tried for 0.5 s: "
    ), err
