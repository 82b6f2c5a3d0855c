"""kill -9 of a real `semalign ap` process mid-session, then `semalign ap --resume`: the two
`semalign user` processes come back on their own and the results equal an undisturbed run.
Also: the exit code 3 of an AP whose invited user never came."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import time

import numpy as np
import pytest
from semalign.deploy.serving.launcher import Processes, child_env, free_port, semalign_command
from synthetic import make_latents
from test_resume import assert_same_numbers

SEMALIGN = semalign_command()
ROUNDS = 120
ALIGN = ["--antennas-tx", "2", "--antennas-rx", "2", "--channel-uses", "2"]
ALIGN += ["--iterations", str(ROUNDS), "--seeds", "7,8"]
SECRET = "process-secret-0123456789"


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    return make_latents(tmp_path_factory.mktemp("lat"), user_dims=(12, 20), n_train=200)


def checkpoint_position(path) -> tuple[int, int | None] | None:
    """(finished seeds, round of the seed in progress) of a checkpoint file, if one is there."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    payload = data.split(b"\n", 2)[2]
    with np.load(io.BytesIO(payload)) as archive:
        meta = json.loads(archive["meta"].tobytes())
    current = meta["current"]
    return len(meta["finished"]), (current["round"] if current else None)


def _start_users(procs, root, users, port, secret):
    for i, encoder in enumerate(users, 1):
        token = subprocess.run(
            [*SEMALIGN, "token", f"user{i}", "--secret-file", str(secret)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        argv = [*SEMALIGN, "user", "--ap", f"127.0.0.1:{port}", "--user-id", f"user{i}"]
        argv += ["--encoder", encoder, "--latents", str(root), "--connect-timeout", "60"]
        argv += ["--rejoin-grace", "90", "--insecure"]
        procs.start(f"user{i}", argv, child_env(single_thread=True, SEMALIGN_TOKEN=token))


def _ap_argv(latents, tmp_path, port, secret, out, *extra):
    root, ap_enc, _ = latents
    argv = [*SEMALIGN, "ap", "--users", "user1,user2", "--listen", f"127.0.0.1:{port}"]
    argv += ["--latents", str(root), "--ap", ap_enc, *ALIGN, "-q", "--insecure"]
    argv += ["--out", str(out), "--workdir", str(tmp_path / "work"), "--secret-file", str(secret)]
    return argv + list(extra)


def _run_with_users(latents, tmp_path, name):
    root, _, users = latents
    folder = tmp_path / name
    folder.mkdir()
    secret = folder / "secret"
    secret.write_text(SECRET)
    port = free_port()
    return folder, secret, port


def test_kill_9_of_the_ap_then_resume_equals_undisturbed(latents, tmp_path):
    root, _, users = latents
    # undisturbed
    folder, secret, port = _run_with_users(latents, tmp_path, "plain")
    with Processes(folder / "logs") as procs:
        _start_users(procs, root, users, port, secret)
        argv = _ap_argv(latents, folder, port, secret, folder / "ap.json")
        done = subprocess.run(argv, capture_output=True, text=True, timeout=240, env=child_env())
        assert done.returncode == 0, done.stderr[-3000:]
        for child in procs.children:
            assert child.proc.wait(30) == 0, child.tail()
    want = json.loads((folder / "ap.json").read_text())

    # killed in the second seed's rounds, then resumed by the same command with --resume
    folder, secret, port = _run_with_users(latents, tmp_path, "killed")
    out, checkpoint = folder / "ap.json", folder / "ap.json.checkpoint"
    with Processes(folder / "logs") as procs:
        _start_users(procs, root, users, port, secret)
        argv = _ap_argv(latents, folder, port, secret, out)
        ap = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env()
        )
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                position = checkpoint_position(checkpoint)
                if position and position[0] == 1 and (position[1] or 0) >= 3:
                    break
                assert ap.poll() is None, ap.stderr.read().decode()[-3000:]
                time.sleep(0.005)
            ap.send_signal(signal.SIGKILL)
            assert ap.wait(30) == -signal.SIGKILL
        finally:
            if ap.poll() is None:
                ap.kill()
            ap.stderr.close()
        finished, at_round = checkpoint_position(checkpoint)
        assert finished == 1 and 3 <= at_round < ROUNDS  # killed mid-session
        assert not out.exists()
        done = subprocess.run(
            [*argv, "--resume"], capture_output=True, text=True, timeout=240, env=child_env()
        )
        assert done.returncode == 0, done.stderr[-3000:]
        for child in procs.children:  # the users came back by themselves and finished
            assert child.proc.wait(30) == 0, child.tail()
            log = child.log_path.read_text()
            assert "session 2 (seed 8): ok" in log and "came back 1x" in log
    got = json.loads(out.read_text())
    assert_same_numbers(got, want)
    assert got["lost"] == []


def test_ap_exit_code_3_when_an_invited_user_never_joins(latents, tmp_path):
    """--users 3 with two users: results written, the third listed as lost, exit code 3."""
    root, _, users = latents
    folder, secret, port = _run_with_users(latents, tmp_path, "three")
    out = folder / "ap.json"
    with Processes(folder / "logs") as procs:
        _start_users(procs, root, users, port, secret)
        argv = _ap_argv(latents, folder, port, secret, out, "--join-timeout", "8")
        argv[argv.index("user1,user2")] = "3"
        argv[argv.index("--iterations") + 1] = "2"
        argv[argv.index("--seeds") + 1] = "7"
        done = subprocess.run(argv, capture_output=True, text=True, timeout=240, env=child_env())
    assert done.returncode == 3, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["lost"] == [
        {"seed": 7, "user": "(unnamed user 3 of 3)", "reason": "never joined"}
    ]
    assert all(u["accuracy"] is not None for u in results["users"])
