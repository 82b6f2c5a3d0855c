"""End to end with real processes on 127.0.0.1: `semalign run` (Flower and direct), the
docker-compose service commands as local processes, and Ctrl-C leaving no orphan.

Synthetic latents (no encoder training); 2 users, 3 rounds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import yaml
from semalign.deploy.serving.launcher import (
    Processes,
    alive,
    child_env,
    descendants,
    free_port,
    semalign_command,
    terminate_tree,
)
from synthetic import make_latents

from semalign.cli import main

ROOT = Path(__file__).resolve().parents[1]
SEMALIGN = semalign_command()
ALIGN = ["--antennas-tx", "2", "--antennas-rx", "2", "--channel-uses", "2", "--iterations", "3"]


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    return make_latents(tmp_path_factory.mktemp("lat"), user_dims=(12, 20), n_train=200)


@pytest.fixture(scope="module")
def simulated(latents, tmp_path_factory):
    root, ap, users = latents
    out = tmp_path_factory.mktemp("sim") / "sim.json"
    argv = ["simulate", "--latents", str(root), "--ap", ap, "--users", ",".join(users)]
    assert main([*argv, *ALIGN, "--seeds", "7", "-q", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def _same_math(got: dict, want: dict, rel: float = 1e-6) -> None:
    for key in ("mean_accuracy", "mean_mse", "mean_native_accuracy"):
        assert got[key] == pytest.approx(want[key], rel=rel)
    for gu, wu in zip(got["users"], want["users"], strict=True):
        assert (gu["name"], gu["encoder"]) == (wu["name"], wu["encoder"])
        assert gu["accuracy"] == pytest.approx(wu["accuracy"], rel=rel)
        assert gu["mse"] == pytest.approx(wu["mse"], rel=rel)


def _run(latents, tmp_path, *extra, timeout=150):
    root, ap, users = latents
    out = tmp_path / "run.json"
    argv = [*SEMALIGN, "run", "--latents", str(root), "--ap", ap, "--users", "2", *ALIGN]
    argv += ["--seeds", "7", "--workdir", str(tmp_path / "work"), "--out", str(out), *extra]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done


def _no_semalign_processes_under(pid_root: int) -> None:
    assert descendants(pid_root) == []


def test_semalign_run_with_flower_matches_simulate(latents, simulated, tmp_path):
    results, done = _run(latents, tmp_path)
    _same_math(results, simulated)
    net = results["network"]
    dep = net["deployment"]
    assert dep["mode"] == "flower" and dep["users"] == 2
    assert dep["tls"] == "mutual" and dep["supernode_auth"] is True  # secure by default
    # Flower carried the invitations and brought back each user's final report
    reports = dep["flower_reports"]["reports"]
    assert set(reports) == {"user1", "user2"}
    for uid, rep in reports.items():
        assert rep["status"] == "ok"
        (session,) = rep["sessions"]
        assert session["seed"] == 7 and session["status"] == "ok"
        mine = next(u for u in results["users"] if u["name"] == uid)
        assert session["report"]["accuracy"] == pytest.approx(mine["accuracy"])
    # wire figures per round, per user, and p50/p95
    wire = results["seeds"][0]["wire"]
    assert len(wire["rounds"]) == 3 and set(wire["rounds"][0]["bytes_up"]) == {"user1", "user2"}
    assert net["latency_p95_s"] >= net["latency_p50_s"] > 0
    # live progress and the tables went to stderr
    assert "aligned acc" in done.stderr and "latency p50" in done.stderr
    assert "Flower SuperNodes" in done.stderr


def test_semalign_run_direct_processes_matches_simulate(latents, simulated, tmp_path):
    results, _ = _run(latents, tmp_path, "--no-flower", "-q", timeout=60)
    _same_math(results, simulated)
    assert results["network"]["deployment"]["mode"] == "direct"
    assert results["rounds"][0]["bytes_down"] == sum(
        results["seeds"][0]["wire"]["rounds"][0]["bytes_down"].values()
    )
    # run.json: which figures the users reported (``measured_by``, once ``provenance``), the
    # provenance block, each user's SNR (the default: the session's for all)
    assert set(results["measured_by"]) == {"self_reported", "ap_measured"}
    block = results["provenance"]
    assert block["semalign_version"] and block["host"] and block["started_at"]
    assert block["command_line"][1] == "run" and "--no-flower" in block["command_line"]
    assert block["latents_id"] == simulated["provenance"]["latents_id"]
    assert [u["snr_db"] for u in results["users"]] == [u["snr_db"] for u in simulated["users"]]


def _set(argv: list[str], name: str, value: str | None) -> list[str]:
    """Replace (or drop with None, or append) an option's value in a command line."""
    argv = list(argv)
    if name in argv:
        i = argv.index(name)
        del argv[i : i + 2]
    return argv + ([name, value] if value is not None else [])


#: compose's AP command as written, and with the two options docs/privacy.md says to add
COMPOSE_VARIANTS = {
    "plain": (),
    "secure": ("--protocol", "compact", "--aggregation", "secure"),
}


@pytest.mark.parametrize("variant", sorted(COMPOSE_VARIANTS))
def test_compose_service_commands_run_as_local_processes(latents, simulated, tmp_path, variant):
    """docker-compose.yml's AP and two of its users, on loopback instead of the compose network,
    with secrets made by `semalign certs` (TLS, mutual TLS, SuperNode authentication); also with
    secure aggregation switched on in the AP's command only (the users take it from the offer):
    the same numbers as the in-process plain session (compact and secure agree with paper and
    plain to about 1e-7 each)."""
    root, ap_enc, users = latents
    secrets = tmp_path / "secrets"
    assert main(["certs", "--out", str(secrets), "--num-users", "2", "-q"]) == 0
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    port, superlink = free_port(), free_port()
    out = tmp_path / "results" / "run.json"
    ap = services["ap"]["command"]
    for name, value in (
        ("--num-users", "2"),
        ("--ap-encoder", ap_enc),
        ("--listen", f"127.0.0.1:{port}"),
        ("--advertise", f"127.0.0.1:{port}"),
        ("--superlink-listen", f"127.0.0.1:{superlink}"),
        ("--cache-dir", None),
        ("--latents", str(root)),
        ("--join-timeout", "120"),
        ("--workdir", str(tmp_path / "work")),
        ("--out", str(out)),
        ("--seeds", "7"),
        ("--secrets", str(secrets / "ap")),
    ):
        ap = _set(ap, name, value)
    with Processes(tmp_path / "logs") as procs:
        for i, encoder in enumerate(users, 1):
            argv = services[f"user{i}"]["command"]
            for name, value in (
                ("--superlink", f"127.0.0.1:{superlink}"),
                ("--encoder", encoder),
                ("--cache-dir", None),
                ("--latents", str(root)),
                ("--runtime-port", str(free_port())),
                ("--flwr-home", str(tmp_path / f"flwr-user{i}")),
                ("--secrets", str(secrets / f"user{i}")),
            ):
                argv = _set(argv, name, value)
            procs.start(f"user{i}", [*SEMALIGN, *argv], child_env(single_thread=True))
        done = subprocess.run(
            [*SEMALIGN, *ap, *ALIGN, *COMPOSE_VARIANTS[variant], "-q"],
            capture_output=True,
            text=True,
            timeout=150,
            env=child_env(),
        )
        assert done.returncode == 0, done.stderr[-3000:]
        procs.check()  # the SuperNodes are still up: Flower supervises them, not the AP
    results = json.loads(out.read_text())
    _same_math(results, simulated, rel=1e-6 if variant == "plain" else 1e-5)
    assert results["config"].get("aggregation", "plain") == variant
    reports = results["network"]["deployment"]["flower_reports"]["reports"]
    assert {uid: r["status"] for uid, r in reports.items()} == {"user1": "ok", "user2": "ok"}
    dep = results["network"]["deployment"]
    assert dep["tls"] == "mutual" and dep["supernode_auth"] is True


def test_ctrl_c_stops_every_child_process(latents, tmp_path):
    root, ap, _ = latents
    argv = [*SEMALIGN, "run", "--latents", str(root), "--ap", ap, "--users", "2", *ALIGN]
    argv = _set(argv, "--iterations", "100000")  # a session that would last for long
    argv += ["--workdir", str(tmp_path / "work"), "--out", str(tmp_path / "r.json"), "-q"]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # SIGINT as from a terminal's Ctrl-C, also when the tests run as a background job of a
        # non-interactive shell (which starts them with SIGINT ignored, inherited by children)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 90
        seen: set[psutil.Process] = set()
        while time.monotonic() < deadline:  # until both ClientApps run the protocol
            tree = descendants(proc.pid)
            seen.update(tree)
            apps = [p for p in tree if "flwr-clientapp" in _cmdline(p)]
            if len(apps) == 2:
                break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.2)
        else:
            pytest.fail("the ClientApps never started")
        time.sleep(1.0)
        seen.update(descendants(proc.pid))
        assert len(seen) >= 7  # SuperLink, its SuperExec, ServerApp, 2 x (SuperNode, ...)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(240)  # a limit, not a speed check (loaded CI hosts)
    finally:
        if proc.poll() is None:  # the test failed: take the whole tree down, not only the parent
            terminate_tree([psutil.Process(proc.pid), *alive(seen)], grace=2.0)
    assert code == 130
    assert "interrupted" in proc.stderr.read()
    time.sleep(0.5)
    survivors = alive(seen)
    assert survivors == [], [_cmdline(p) for p in survivors]
    assert not (tmp_path / "r.json").exists()


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["user", "--ap", "localhost", "--user-id", "user1", "--encoder", "e"], "bad AP address"),
        (["user", "--superlink", "x:99999", "--user-id", "u1", "--encoder", "e"], "out of range"),
        (
            ["user", "--ap", "h:1", "--user-id", "u1", "--encoder", "rexnet_100"],
            "TLS is on by default",
        ),
    ],
)
def test_bad_addresses_fail_with_one_line(argv, expected, capsys, monkeypatch):
    monkeypatch.setenv("SEMALIGN_TOKEN", "t")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1


def test_refused_connection_fails_with_one_line(latents, tmp_path):
    root, _, users = latents
    port = free_port()
    argv = [*SEMALIGN, "user", "--ap", f"127.0.0.1:{port}", "--user-id", "user1"]
    argv += ["--encoder", users[0], "--latents", str(root), "--connect-timeout", "1", "--insecure"]
    env = {**os.environ, "SEMALIGN_TOKEN": "t"}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("WARNING: --insecure")  # plaintext only when asked, with a warning
    lines = lines[1:]
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0], done.stderr
    assert "refused" in lines[0].lower()


def test_semalign_ap_and_users_direct_with_their_own_tokens(latents, simulated, tmp_path):
    """`semalign ap` (no Flower, secret in a file) and two `semalign user --ap` processes,
    each with its own token from `semalign token` in its environment."""
    root, ap_enc, users = latents
    port = free_port()
    secret = tmp_path / "secret"
    secret.write_text("e2e-secret-0123456789abcdef\n")
    out = tmp_path / "ap.json"
    with Processes(tmp_path / "logs") as procs:
        for i, encoder in enumerate(users, 1):
            token = subprocess.run(
                [*SEMALIGN, "token", f"user{i}", "--secret-file", str(secret)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            argv = [*SEMALIGN, "user", "--ap", f"127.0.0.1:{port}", "--user-id", f"user{i}"]
            argv += ["--encoder", encoder, "--latents", str(root), "--connect-timeout", "60"]
            argv += ["--insecure"]
            procs.start(f"user{i}", argv, child_env(SEMALIGN_TOKEN=token))
        argv = [*SEMALIGN, "ap", "--users", "user1,user2", "--listen", f"127.0.0.1:{port}"]
        argv += ["--latents", str(root), "--ap", ap_enc, *ALIGN, "--seeds", "7", "-q"]
        argv += ["--out", str(out), "--workdir", str(tmp_path / "work"), "--insecure"]
        argv += ["--secret-file", str(secret)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=child_env())
        assert done.returncode == 0, done.stderr[-3000:]
        for child in procs.children:  # each user saw its one session and exited cleanly
            assert child.proc.wait(20) == 0, child.tail()
            assert "session 1 (seed 7): ok, accuracy" in child.log_path.read_text()
    results = json.loads(out.read_text())
    _same_math(results, simulated)
    assert "AP secret" not in done.stderr  # given, so not generated
    assert not (tmp_path / "work" / "ap-secret").exists()
    assert results["seeds"][0]["users"][0]["self_reported"]["samples"] > 0
    assert "self_reported" in results["measured_by"]  # (called ``provenance`` before)
    assert results["provenance"]["command_line"][1:3] == ["ap", "--users"]


def test_user_without_its_latents_fails_with_one_line(latents, capsys, monkeypatch):
    root, _, _ = latents
    monkeypatch.setenv("SEMALIGN_TOKEN", "t")
    argv = ["user", "--ap", "127.0.0.1:1", "--user-id", "user1", "--encoder", "user_encX"]
    assert main([*argv, "--latents", str(root), "--insecure"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("WARNING: --insecure")
    assert "no latents for encoder 'user_encX'" in err[1] and len(err) == 2
