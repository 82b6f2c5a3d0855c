"""`semalign ap --flower --superlink-listen ADDRESS` on a specific address that is not
loopback: the AP's own `flwr` calls (key registration, `flwr run`) and the SuperLink's SuperExec
go over 127.0.0.1 (a second listener), while a peer on the network still gets 403 from the
guard for anything but the Fleet API."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
from semalign.deploy.flower.launch import control_host
from semalign.deploy.flower.superlink import FleetOnlyFromNetwork, needs_loopback_listener

from semalign.cli import main
from semalign_testing.testbed import Testbed, require_testbed, wait_for_port

REASON = require_testbed()


@pytest.mark.parametrize(
    ("host", "target"),
    [
        ("198.18.0.7", "127.0.0.1"),
        ("10.0.0.5", "127.0.0.1"),
        ("0.0.0.0", "127.0.0.1"),
        ("::", "127.0.0.1"),
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "::1"),
    ],
)
def test_the_aps_own_calls_go_to_loopback_whatever_the_listen_address(host, target):
    assert control_host(host) == target


@pytest.mark.parametrize(
    ("host", "extra"),
    [
        ("198.18.0.7", True),
        ("2001:db8::1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("127.0.0.1", False),
        ("[::1]", False),
        ("localhost", False),
    ],
)
def test_a_loopback_listener_only_beside_a_specific_public_address(host, extra):
    assert needs_loopback_listener(host) is extra


def _status(client: str, path: str) -> int:
    sent: list[dict] = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "path": path, "client": (client, 40000)}
    asyncio.run(FleetOnlyFromNetwork(app)(scope, receive, send))
    return sent[0]["status"]


def test_the_guard_still_refuses_a_network_peer_on_the_public_address():
    assert _status("198.18.0.9", "/v1/control/list-runs") == 403
    assert _status("198.18.0.7", "/v1/runtime/get-run") == 403  # even the AP's own address
    assert _status("198.18.0.9", "/v1/fleet/pull-messages") == 200
    assert _status("127.0.0.1", "/v1/control/list-runs") == 200


# ---------------------------------------------------------------------------- two hosts
AP_SCRIPT = """
import json, sys, time
from pathlib import Path
from semalign.common.contract import TlsFiles
from semalign.deploy.flower.launch import start_flower
from semalign.deploy.serving.launcher import Processes

host, secrets, work = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
secret = work / "ap-secret"
secret.write_text("sec-" + "x" * 30 + "\\n")
secret.chmod(0o600)
ap = secrets / "ap"
tls = TlsFiles(str(ap / "server.pem"), str(ap / "server.key"), str(secrets / "ca.pem"))
procs = Processes(work / "logs")
try:
    start_flower(procs, work, host=host, port=9092, service_address=f"{host}:50051",
                 secret_file=secret, invited=None, users=1, node_wait_s=60, tls=tls,
                 supernode_keys=sorted((ap / "supernodes").glob("*.pub")))
    print("submitted", flush=True)
    time.sleep(float(sys.argv[4]))
    print("log", json.dumps((work / "logs" / "superlink.log").read_text()), flush=True)
finally:
    procs.stop()
"""


@pytest.mark.skipif(REASON is not None, reason=f"no emulated hosts: {REASON}")
def test_superlink_on_the_aps_own_address_starts_and_the_lan_gets_403(tmp_path):
    secrets = tmp_path / "secrets"
    assert main(["certs", "--out", str(secrets), "--num-users", "1", "-q"]) == 0
    ap_files = sorted(p.name for p in (secrets / "ap").iterdir())
    assert "supernodes" in ap_files, ap_files
    with Testbed(["ap", "eve"]) as tb:
        ap_ip = tb.ip("ap")
        (tmp_path / "work").mkdir()
        proc = tb.run(
            "ap",
            [sys.executable, "-c", AP_SCRIPT, ap_ip, str(secrets), str(tmp_path / "work"), "15"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        wait_for_port(tb, "eve", "ap", 9092, timeout=120)
        code = (
            "import ssl,http.client;"
            f"ctx=ssl.create_default_context(cafile={str(secrets / 'ca.pem')!r});"
            "out=[]\n"
            "for p in ('/v1/control/list-runs','/v1/runtime/get-run','/v1/fleet/pull-messages'):\n"
            " c=http.client.HTTPSConnection('ap',9092,context=ctx,timeout=10)\n"
            " c.request('POST',p,body=b'',headers={'content-type':'application/protobuf'})\n"
            " out.append(c.getresponse().status)\n"
            "print(*out)"
        )
        statuses = tb.check_output("eve", [sys.executable, "-c", code]).split()
        out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:]
    assert "submitted" in out, out[-3000:]
    assert statuses[:2] == ["403", "403"] and statuses[2] != "403", statuses
    log = next(line for line in out.splitlines() if line.startswith("log "))
    log = log[4:]
    # the AP's own calls (register, flwr run) and the SuperExec's came over loopback: none
    # was refused, and the eve's two were
    assert log.count(" 403") == 2, log[-3000:]
    assert "127.0.0.1" in log, log[-3000:]
    assert (
        Path(tmp_path / "work" / "flwr" / "cli" / "config.toml").read_text().count("127.0.0.1:9092")
    )
