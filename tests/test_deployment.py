"""The deployment across hosts: `semalign ap` and `semalign user` on separate emulated hosts
(network namespaces, semalign_testing/testbed.py), TLS and SuperNode authentication by default,
and an outsider on the same LAN who can neither join, nor list or stop the run, nor read the
protocol.

Also: `semalign certs`, deploy/requirements.txt against pyproject.toml.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomllib
from semalign.common.credentials import user_token
from semalign.deploy.serving.launcher import child_env, semalign_command
from synthetic import make_latents

from semalign.cli import main
from semalign_testing.testbed import Testbed, capture, require_testbed, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
SEMALIGN = semalign_command()
ALIGN = ["--antennas-tx", "2", "--antennas-rx", "2", "--channel-uses", "2", "--iterations", "3"]
SECRET = "sec-" + "Q7x" * 10  # the AP's secret, given, so the test can look for it on the wire
#: the users' own tokens (what Flower's invitations carry), also looked for on the wire
TOKENS = [user_token(SECRET, f"user{i}") for i in (1, 2)]
REASON = require_testbed()


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


# ---------------------------------------------------------------------------- certs
def _cert_names(pem: Path) -> set[str]:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(pem.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(n.value) for n in san}


def test_certs_makes_one_folder_per_host_with_the_right_names(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["certs", "--out", str(out), "--num-users", "2", "--name", "ap,ap.example"]) == 0
    assert {p.name for p in out.iterdir()} == {"ca.pem", "ca.key", "ap", "user1", "user2"}
    assert _cert_names(out / "ap" / "server.pem") == {"ap", "ap.example", "localhost", "127.0.0.1"}
    assert _cert_names(out / "user2" / "client.pem") == {"user2"}
    assert {p.name for p in (out / "ap" / "supernodes").iterdir()} == {"user1.pub", "user2.pub"}
    assert (out / "ap" / "supernodes" / "user1.pub").read_text().startswith("ecdsa-sha2-nistp384")
    for key in (out / "ca.key", out / "ap" / "server.key", out / "user1" / "supernode.key"):
        assert key.stat().st_mode & 0o077 == 0, key  # private keys: owner only
    assert not list((out / "ap").glob("ca.key"))  # the CA key stays at the top
    # again with a third user: only its files are new, same CA
    ca = (out / "ca.pem").read_bytes()
    capsys.readouterr()
    assert main(["certs", "--out", str(out), "--num-users", "3"]) == 0
    assert "5 new files" in capsys.readouterr().out  # user3: ca, cert, key, sn key; pub
    assert (out / "ca.pem").read_bytes() == ca == (out / "user3" / "ca.pem").read_bytes()


def test_plaintext_only_when_asked(capsys, tmp_path):
    assert main(["ap", "--users", "2", "--flower", "--latents", str(tmp_path)]) == 2
    assert "TLS is on by default" in capsys.readouterr().err
    argv = ["user", "--superlink", "ap:9092", "--user-id", "u1", "--encoder", "rexnet_100"]
    assert main(argv) == 2
    assert "TLS is on by default" in capsys.readouterr().err
    assert main([*argv, "--insecure", "--secrets", str(tmp_path)]) == 2
    assert "--insecure excludes" in capsys.readouterr().err


def test_image_requirements_follow_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    want = {re.split(r"[<>=]", d)[0]: d for d in deps}
    have = {}
    for name in ("requirements.txt", "requirements-torch.txt"):
        for line in (ROOT / "deploy" / name).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                have[re.split(r"[<>=]", line)[0]] = line.strip()
    assert have == want  # same packages, same pins: the image runs what the tests run
    runtime = (ROOT / "deploy" / "requirements.txt").read_text().splitlines()
    assert not [r for r in runtime if r.startswith(("torch", "timm"))]  # torch: encoding only


# ---------------------------------------------------------------------------- two hosts
def _start(tb, host, argv, log: Path):
    return tb.run(host, argv, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=log.parent)


def _outsider_https(tb, path: str, ca: Path) -> str:
    """What an outsider on the LAN gets for POST https://ap:9092{path} (verifying the AP)."""
    code = (
        "import ssl,http.client,sys;"
        f"c=http.client.HTTPSConnection('ap',9092,context=ssl.create_default_context(cafile={str(ca)!r}),timeout=10);"  # noqa: E501
        f"c.request('POST',{path!r},body=b'',headers={{'content-type':'application/protobuf'}});"
        "r=c.getresponse(); print(r.status, r.read()[:200])"
    )
    return tb.check_output("eve", [sys.executable, "-c", code]).strip()


@pytest.mark.skipif(REASON is not None, reason=f"no emulated hosts: {REASON}")
def test_two_hosts_tls_walkthrough_and_an_outsider_gets_nothing(latents, simulated, tmp_path):
    """docs/deployment.md's walkthrough: the AP on one host, users on others (user2 joins
    late), everything from `semalign certs`; eve, on the same LAN with the CA certificate (it
    is public) and her own keys, tries to join, list and stop runs, and listens on the wire."""
    root, ap_enc, users = latents
    secrets, eve_secrets = tmp_path / "secrets", tmp_path / "eve-secrets"
    assert main(["certs", "--out", str(secrets), "--num-users", "2", "-q"]) == 0
    assert main(["certs", "--out", str(eve_secrets), "--user-ids", "user1", "-q"]) == 0
    out = tmp_path / "ap.json"
    with Testbed(["ap", "user1", "user2", "eve"]) as tb:
        wire = tmp_path / "wire.bin"
        capture(tb, wire)
        ap = [*SEMALIGN, "ap", "--flower", "--users", "2", "--listen", "0.0.0.0:50051"]
        ap += ["--advertise", "ap:50051", "--superlink-listen", "0.0.0.0:9092"]
        secret_file = tmp_path / "ap-secret"
        secret_file.write_text(SECRET + "\n")
        secret_file.chmod(0o600)
        ap += ["--secrets", str(secrets / "ap"), "--secret-file", str(secret_file)]
        ap += ["--join-timeout", "120"]
        ap += ["--latents", str(root), "--ap", ap_enc, *ALIGN, "--seeds", "7", "-q"]
        ap += ["--workdir", str(tmp_path / "ap-work"), "--out", str(out)]
        ap_proc = _start(tb, "ap", ap, tmp_path / "ap.log")

        def user(i: int):
            argv = [*SEMALIGN, "user", "--superlink", "ap:9092", "--user-id", f"user{i}"]
            argv += ["--encoder", users[i - 1], "--latents", str(root)]
            argv += ["--secrets", str(secrets / f"user{i}")]
            argv += ["--flwr-home", str(tmp_path / f"flwr-user{i}")]
            return _start(tb, f"user{i}", argv, tmp_path / f"user{i}.log")

        user(1)
        wait_for_port(tb, "eve", "ap", 9092, timeout=60)
        # eve cannot list, stop or submit runs, nor reach the Runtime API (Flower's SuperExec
        # API: runs, messages, the invitation's token); 403 from the guard, before Flower
        for path in ("/v1/control/list-runs", "/v1/control/stop-run", "/v1/control/start-run"):
            assert _outsider_https(tb, path, secrets / "ca.pem").startswith("403"), path
        assert _outsider_https(tb, "/v1/runtime/get-run", secrets / "ca.pem").startswith("403")
        eve_home = tmp_path / "eve-flwr"
        eve_home.mkdir()
        (eve_home / "config.toml").write_text(
            '[superlink]\ndefault = "ap"\n\n[superlink.ap]\naddress = "ap:9092"\n'
            f'root-certificates = "{secrets / "ca.pem"}"\n'
        )
        env = {**os.environ, "FLWR_HOME": str(eve_home)}
        for cli in (["ls"], ["stop", "1"]):
            done = subprocess.run(
                tb.argv("eve", [str(Path(sys.executable).parent / "flwr"), *cli]),
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode != 0, (cli, done.stdout)
        # eve's own SuperNode (a key the AP never registered) is refused (412 at activation:
        # it exits, or keeps retrying), and is never invited (the reports below)
        flower_supernode = str(Path(sys.executable).parent / "flower-supernode")
        eve_node = tb.run(
            "eve",
            [flower_supernode, "--superlink", "ap:9092", "--root-certificates"]
            + [str(secrets / "ca.pem"), "--auth-supernode-private-key"]
            + [str(eve_secrets / "user1" / "supernode.key"), "--max-retries", "1"],
            stdout=(tmp_path / "eve-supernode.log").open("wb"),
            stderr=subprocess.STDOUT,
            env=child_env(tmp_path / "eve-node-home"),
        )
        # nor can she join the alignment service directly: no client certificate of this CA
        eve = [*SEMALIGN, "user", "--ap", "ap:50051", "--user-id", "user2", "--encoder"]
        # (even with user2's own token)
        eve += [users[1], "--latents", str(root), "--token", TOKENS[1], "--connect-timeout", "3"]
        for creds in (
            ["--tls-ca", str(secrets / "ca.pem")],  # no client certificate
            ["--secrets", str(eve_secrets / "user1")],  # a certificate from another CA
        ):
            done = subprocess.run(
                tb.argv("eve", [*eve, *creds]), capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 2, done.stderr
        time.sleep(2.0)
        user(2)  # joins late: the AP waits (--join-timeout) and Flower invites it on arrival
        assert ap_proc.wait(150) == 0, (tmp_path / "ap.log").read_text()[-3000:]
        time.sleep(0.5)
    results = json.loads(out.read_text())
    for key in ("mean_accuracy", "mean_mse"):
        assert results[key] == pytest.approx(simulated[key], rel=1e-6)
    dep = results["network"]["deployment"]
    assert dep["tls"] == "mutual" and dep["supernode_auth"] is True
    assert set(dep["flower_reports"]["reports"]) == {"user1", "user2"}  # not eve
    assert dep["flower_reports"]["nodes"] == 2
    assert eve_node.returncode != 0
    eve_log = (tmp_path / "eve-supernode.log").read_text()
    assert "Failed to activate SuperNode" in eve_log, eve_log[-2000:]
    # what crossed the LAN: the whole session, none of it readable
    seen = wire.read_bytes()
    session_bytes = sum(r["bytes_down"] + r["bytes_up"] for r in results["rounds"])
    assert len(seen) > session_bytes
    readable = [SECRET.encode(), *(t.encode() for t in TOKENS)]
    for secret in (*readable, b"semalign.v1", b"semalign-offer", b"/v1/fleet/"):
        assert secret not in seen, secret
