"""`semalign user` exit codes (`semalign user --help`, docs/reliability.md): 1 when it lost a
session, here the AP killed (kill -9) in round 1 and never back within the user's
--rejoin-grace; 2 for bad usage or a refusal before any session (one line each: the
refusals at the door are in tests/test_late_user.py, a late user and no AP listening)."""

from __future__ import annotations

import subprocess

import pytest
from semalign.common.credentials import user_token
from semalign.deploy.serving.launcher import Processes, child_env, free_port, semalign_command
from synthetic import make_latents

SECRET = "exit-code-secret-0123456789abcdef"
ALIGN = ["--antennas-tx", "2", "--antennas-rx", "2", "--channel-uses", "2", "--iterations", "3"]


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    return make_latents(tmp_path_factory.mktemp("lat"), user_dims=(12,), n_train=200)


def test_a_user_whose_session_is_lost_exits_1(latents, tmp_path):
    root, ap_enc, encoders = latents
    port = free_port()
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    ap = [*semalign_command(), "ap", "--users", "user1", "--listen", f"127.0.0.1:{port}"]
    ap += ["--latents", str(root), "--ap", ap_enc, *ALIGN, "--seeds", "7", "-q", "--insecure"]
    ap += ["--out", str(tmp_path / "ap.json"), "--workdir", str(tmp_path / "work")]
    ap += ["--secret-file", str(secret), "--join-timeout", "90"]
    user = [*semalign_command(), "user", "--ap", f"127.0.0.1:{port}", "--user-id", "user1"]
    user += ["--encoder", encoders[0], "--latents", str(root), "--insecure"]
    user += ["--connect-timeout", "90", "--rejoin-grace", "1"]
    with Processes(tmp_path / "logs") as procs:
        env = child_env(single_thread=True, SEMALIGN_TOKEN=user_token(SECRET, "user1"))
        joined = procs.start("user1", user, env)
        procs.start("ap", ap, child_env(single_thread=True, SEMALIGN_FAILPOINTS="ap.round=1:exit"))
        try:
            code = joined.proc.wait(120)  # a limit only
        except subprocess.TimeoutExpired:
            code = None
        log = joined.log_path.read_text()
    assert code == 1, log[-3000:]
    assert "semalign user: user1 lost session 1 (seed 7): " in log, log[-3000:]
    assert "cannot come back to the AP" in log, log[-3000:]
