"""docker-compose.yml and deploy/Dockerfile, checked by parsing (no Docker engine here)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from semalign.deploy.user import user_argv

from semalign.cli import build_parser
from semalign.encoders.registry import DEFAULT_AP, GROUPS

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE.read_text())


def _opt(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def test_ap_and_ten_users_from_one_image_on_one_network(compose):
    services = compose["services"]
    assert list(services) == ["encode", "ap"] + [f"user{i}" for i in range(1, 11)]
    ap = services["ap"]
    assert ap["build"]["dockerfile"] == "deploy/Dockerfile"
    assert "BASE_IMAGE" in ap["build"]["args"]
    images = {svc["image"] for svc in services.values()}
    assert images == {ap["image"]}  # one image
    networks = {tuple(svc["networks"]) for n, svc in services.items() if n != "encode"}
    assert networks == {("semalign",)} and "semalign" in compose["networks"]
    assert services["encode"]["network_mode"] == "none"  # encoding needs no network
    for name, svc in services.items():
        test = svc["healthcheck"]["test"]
        assert test[0] == "CMD", name
        if name != "encode":
            assert "create_connection" in " ".join(test), name
        env = svc["environment"]
        assert env["FLWR_TELEMETRY_ENABLED"] == "0" and env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert "results:/results" in ap["volumes"] and "results" in compose["volumes"]
    assert _opt(ap["command"], "--out").startswith("/results/")


def test_service_commands_are_valid_cli_invocations(compose):
    parser = build_parser()
    services = compose["services"]
    ap = parser.parse_args(services["ap"]["command"])
    assert ap.command == "ap" and ap.flower and ap.users == "10" and ap.ap == DEFAULT_AP
    ap_host = _opt(services["ap"]["command"], "--advertise").split(":")[0]
    superlink_port = ap.superlink_listen.rsplit(":", 1)[1]
    for i, encoder in enumerate(GROUPS["paper-users"], 1):
        argv = services[f"user{i}"]["command"]
        args = parser.parse_args(argv)
        assert args.command == "user" and args.user_id == f"user{i}" and args.ordinal == i - 1
        # the default user set of `semalign run`, in the same order
        assert args.encoder == encoder
        assert args.superlink == f"{ap_host}:{superlink_port}"
        assert services[f"user{i}"]["depends_on"] == {
            "encode": {"condition": "service_healthy"},
            "ap": {"condition": "service_started"},
        }
        # each user its own cache volume (encoders and latents stay private) and only its own
        # secrets, read-only
        assert services[f"user{i}"]["volumes"] == [
            f"cache-user{i}:/cache",
            f"${{SEMALIGN_SECRETS:-./secrets}}/user{i}:/secrets:ro",
        ]
        assert args.secrets == "/secrets" and not args.insecure
        # the local launcher (`semalign run`) starts users with the same options
        local = user_argv(
            f"user{i}", i - 1, encoder, superlink="127.0.0.1:1", cache_dir="/c", secrets="/s"
        )
        local_opts = {a for a in local if a.startswith("--")} - {"--dataset"}
        assert local_opts <= {a for a in argv if a.startswith("--")} | {"--runtime-port"}


def test_dockerfile_has_base_image_argument_and_telemetry_off():
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=", text, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}", text, re.M)
    assert "FLWR_TELEMETRY_ENABLED=0" in text and "FLWR_DISABLE_UPDATE_CHECK=1" in text
    assert re.search(r'^ENTRYPOINT \["semalign"\]', text, re.M)
    for folder in ("semalign", "common", "server", "client", "proto", "deploy"):
        assert f"COPY {folder}/ {folder}/" in text
    # dependencies in a layer before the sources: a source change does not reinstall them
    assert text.index("requirements.txt") < text.index("COPY semalign/ semalign/")


def test_encode_service_prepares_each_cache_once_and_the_others_wait(compose):
    services = compose["services"]
    encode = services["encode"]
    assert encode["entrypoint"][-1] == "semalign.deploy.prepare" and "--stay" in encode["command"]
    pairs = dict(a.split("=", 1) for a in encode["command"] if "=" in a)
    assert pairs == {"ap": DEFAULT_AP} | {
        f"user{i}": e for i, e in enumerate(GROUPS["paper-users"], 1)
    }
    # each cache volume mounted at its own folder; the AP and users start once it is healthy
    mounts = {v.split(":")[0]: v.split(":")[1] for v in encode["volumes"]}
    assert mounts == {f"cache-{name}": f"/caches/{name}" for name in pairs}
    assert services["ap"]["depends_on"] == {"encode": {"condition": "service_healthy"}}


def test_secure_by_default_each_service_mounts_only_its_own_secrets(compose):
    parser = build_parser()
    services = compose["services"]
    ap = services["ap"]
    assert "${SEMALIGN_SECRETS:-./secrets}/ap:/secrets:ro" in ap["volumes"]
    args = parser.parse_args(ap["command"])
    assert args.secrets == "/secrets" and not args.insecure
    for name, svc in services.items():
        assert "--insecure" not in svc["command"], name
        mounted = [v for v in svc.get("volumes", []) if "secrets" in v]
        assert all(v.endswith(f"/{name}:/secrets:ro") for v in mounted), name
        assert not any("ca.key" in v for v in svc.get("volumes", [])), name
    assert "secrets" in (ROOT / ".dockerignore").read_text().split()  # never in the image


def _compose_binary() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


@pytest.mark.skipif(_compose_binary() is None, reason="no docker compose binary on this machine")
def test_docker_compose_config_accepts_the_file():
    done = subprocess.run(
        [*_compose_binary(), "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
