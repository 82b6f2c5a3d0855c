"""docker-compose.yml and deploy/Dockerfile: parsed, then run on a Docker engine.

The end-to-end tests (`docker-compose up` of the AP and users; chaos on the running
deployment) need a Docker engine with Compose and an image that can be built offline
(deploy/offline-image.sh); they are skipped with the reason otherwise. The image is reused while
the sources it holds are unchanged (tests/compose_harness.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import tomllib
import yaml
from compose_harness import (
    Project,
    compose_binary,
    engine_problem,
    ensure_image,
    small_override,
    wait_for,
)
from semalign.deploy.commands.user import user_argv
from synthetic import make_latents

from semalign.cli import build_parser, main
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
        if name == "ap":  # the gRPC health service (tests/test_observability.py)
            assert test[1:4] == ["python", "-m", "semalign.deploy.commands.health"], name
        elif name != "encode":
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
    assert encode["entrypoint"][-1] == "semalign.deploy.commands.prepare"
    assert "--stay" in encode["command"]
    pairs = dict(a.split("=", 1) for a in encode["command"] if "=" in a)
    assert pairs == {"ap": DEFAULT_AP} | {
        f"user{i}": e for i, e in enumerate(GROUPS["paper-users"], 1)
    }
    # each cache volume mounted at its own folder; the AP and users start once it is healthy
    mounts = dict(
        v.rsplit(":", 2)[:2] if v.endswith(":ro") else v.split(":") for v in encode["volumes"]
    )
    host_cache = "${SEMALIGN_HOST_CACHE:-./cache}"
    assert mounts == {f"cache-{name}": f"/caches/{name}" for name in pairs} | {
        host_cache: "/host-cache"
    }
    # a cache made on the host by `semalign encode` is copied first (read-only mount)
    assert f"{host_cache}:/host-cache:ro" in encode["volumes"]
    assert encode["command"][encode["command"].index("--from") + 1] == "/host-cache"
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


@pytest.mark.skipif(compose_binary() is None, reason="no docker compose binary on this machine")
def test_docker_compose_config_accepts_the_file():
    done = subprocess.run(
        [*compose_binary(), "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr


def test_the_image_installs_every_package_of_the_source_tree():
    """The image runs `pip install .` (not an editable install): a sub-package missing from
    pyproject's list is missing there (the strategies once were)."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed, dirs = set(setuptools["packages"]), setuptools["package-dir"]
    found = set()
    for package, folder in dirs.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *rel.parts]))
    assert found <= listed, sorted(found - listed)


def test_the_test_hosts_stay_out_of_the_wheel_and_the_image():
    """semalign_testing (network namespaces, the link emulator) is for tests and benchmarks:
    no package of the wheel is it or maps onto its folder, the image does not copy it, and it
    is importable from the repository root (pytest's pythonpath)."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert not [p for p in setuptools["packages"] if p.split(".")[0] == "semalign_testing"]
    folders = {Path(folder).parts[0] for folder in setuptools["package-dir"].values()}
    assert "semalign_testing" not in folders and "." not in setuptools["package-dir"].values()
    assert "semalign_testing" not in (ROOT / "deploy" / "Dockerfile").read_text()
    import semalign_testing.link_emulator
    import semalign_testing.testbed

    assert Path(semalign_testing.testbed.__file__).parent == ROOT / "semalign_testing"
    # a relay starts from any working folder: the file itself, run as a script
    assert semalign_testing.link_emulator.COMMAND[1] == str(
        ROOT / "semalign_testing" / "link_emulator.py"
    )


def test_compose_dockerfile_and_flower_app_repeat_the_default_ports(compose):
    """The files that cannot import Python repeat common/network_defaults.py's ports."""
    from semalign.common import network_defaults as net

    services = compose["services"]
    ap = services["ap"]["command"]
    assert _opt(ap, "--listen") == net.AP_LISTEN
    assert _opt(ap, "--advertise") == f"ap:{net.SERVICE_PORT}"
    assert _opt(ap, "--superlink-listen") == net.SUPERLINK_LISTEN
    assert _opt(ap, "--health-listen") == f"127.0.0.1:{net.HEALTH_PORT}"
    probe = services["ap"]["healthcheck"]["test"]
    assert _opt(probe, "--address") == f"127.0.0.1:{net.HEALTH_PORT}"
    for i in range(1, 11):
        user = services[f"user{i}"]
        assert _opt(user["command"], "--superlink") == f"ap:{net.SUPERLINK_PORT}"
        assert _opt(user["command"], "--runtime-port") is None  # the default, probed below
        probe = " ".join(user["healthcheck"]["test"])
        assert f"('127.0.0.1', {net.SUPERNODE_RUNTIME_PORT})" in probe
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(rf"^EXPOSE {net.SERVICE_PORT} {net.SUPERLINK_PORT}$", dockerfile, re.M)
    app = tomllib.loads((ROOT / "deploy" / "flower" / "app" / "pyproject.toml").read_text())
    config = app["tool"]["flwr"]["app"]["config"]
    assert config["service-address"] == f"127.0.0.1:{net.SERVICE_PORT}"


def test_prepare_copies_a_host_cache_entry_without_its_weights(tmp_path):
    from semalign.deploy.commands.prepare import copy_entry

    from semalign.encoders.store import ENTRY_FILES, META

    source, dest = tmp_path / "host" / "enc", tmp_path / "vol" / "enc"
    source.mkdir(parents=True)
    for name in (*ENTRY_FILES, META, "weights-0123.pt"):
        (source / name).write_text(name)
    assert copy_entry(source, dest)
    assert sorted(p.name for p in dest.iterdir()) == sorted([*ENTRY_FILES, META])
    # with the host's MLP task model, it comes too (an image without torch needs it)
    (source / "classifier-mlp.npz").write_text("mlp")
    other = tmp_path / "vol2" / "enc"
    assert copy_entry(source, other)
    assert (other / "classifier-mlp.npz").read_text() == "mlp"
    (dest / META).write_text("kept")
    assert not copy_entry(source, dest)  # an entry already there is the volume's own
    assert (dest / META).read_text() == "kept"
    assert not copy_entry(tmp_path / "nothing", tmp_path / "vol" / "other")


# ---------------------------------------------------------------------------- on an engine
ALIGN = ["--antennas-tx", "2", "--antennas-rx", "2", "--channel-uses", "2"]
ENGINE = engine_problem()


@pytest.fixture(scope="module")
def image():
    """The project image for the current sources (built offline once, then reused)."""
    if ENGINE is not None:
        pytest.skip(f"compose end to end: {ENGINE}")
    return ensure_image()


@pytest.fixture
def deployment(tmp_path):
    """Synthetic latents for ten users, `semalign certs` secrets, and the projects to remove."""
    lat = tmp_path / "lat"
    root, ap_enc, users = make_latents(
        lat, user_dims=(12, 20, 16, 8, 24, 12, 20, 16, 10, 14), n_train=200
    )
    from semalign.common.config import PAPER_TASK_MODEL
    from semalign.common.latents import load_split, load_task_model

    for enc in users:  # the image may have no torch: its users load the MLPs trained here
        load_task_model(root, enc, load_split(root, enc, "train"), kind=PAPER_TASK_MODEL)
    for path in [lat, *lat.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    secrets = tmp_path / "secrets"
    assert main(["certs", "--out", str(secrets), "--num-users", "10", "--owner", "1000", "-q"]) == 0
    projects: list[Project] = []

    def project(users: int, ap_args: list[str]) -> Project:
        override = small_override(lat, ap_enc, users_list[:users], ap_args)
        made = Project(f"satest{os.getpid()}x{len(projects)}", override, tmp_path, secrets)
        projects.append(made)
        return made

    users_list = users
    try:
        yield root, ap_enc, users, project
    finally:
        for made in projects:
            made.down()


def _services(users: int) -> list[str]:
    return ["encode", "ap", *(f"user{i}" for i in range(1, users + 1))]


def test_compose_up_runs_the_session_and_equals_simulate(image, deployment, tmp_path):
    """`docker-compose up --abort-on-container-exit --exit-code-from ap` of docker-compose.yml
    (one image, TLS, SuperNode authentication, certificates from `semalign certs`) with an
    override for synthetic latents and SEMALIGN_COMPOSE_USERS users (default 4): the results
    in the `results` volume equal `semalign simulate` for the same configuration."""
    root, ap_enc, users, project = deployment
    n = int(os.environ.get("SEMALIGN_COMPOSE_USERS", "4"))
    session = [*ALIGN, "--iterations", "3", "--seeds", "7"]
    sim = tmp_path / "sim.json"
    argv = ["simulate", "--latents", str(root), "--ap", ap_enc, "--users", ",".join(users[:n])]
    assert main([*argv, *session, "-q", "--out", str(sim)]) == 0
    compose = project(n, session)
    t0 = time.perf_counter()
    up = compose.run(
        "up", "--abort-on-container-exit", "--exit-code-from", "ap", *_services(n), timeout=900
    )
    wall = time.perf_counter() - t0
    (tmp_path / "up.log").write_text(up.stdout + up.stderr)
    ap_lines = [line for line in up.stdout.splitlines() if "ap_1 " in line]
    assert up.returncode == 0, "\n".join(ap_lines[-40:]) or up.stdout[-5000:]
    assert any("mean accuracy" in line.lower() for line in ap_lines), ap_lines[-20:]  # summary
    results = compose.results(tmp_path / "run.json")
    want = json.loads(sim.read_text())
    assert_same_results(results, want)
    dep = results["network"]["deployment"]
    assert dep["tls"] == "mutual" and dep["supernode_auth"] is True
    assert {u: r["status"] for u, r in dep["flower_reports"]["reports"].items()} == {
        f"user{i}": "ok" for i in range(1, n + 1)
    }
    net = results["network"]
    print(
        f"\ncompose ({n} users): image {image[1]} in {image[0]:.0f} s, up {wall:.0f} s, "
        f"round latency p50 {net['latency_p50_s'] * 1e3:.1f} ms "
        f"p95 {net['latency_p95_s'] * 1e3:.1f} ms"
    )


def assert_same_results(results: dict, want: dict) -> None:
    """Every number of the two results JSONs equal to 1e-9 (relative), except timings and
    what only a networked run has (its wire measurements, deployment, config paths, and the
    handshake's bytes, which carry each user's token)."""
    skip = {"seconds", "wire", "network", "extra_config", "latents", "config", "handshake"}

    def walk(got, exp, path):
        if isinstance(exp, dict):
            for key, value in exp.items():
                if key not in skip:
                    assert key in got, path + key
                    walk(got[key], value, f"{path}{key}.")
        elif isinstance(exp, list):
            assert len(got) == len(exp), path
            for i, (a, b) in enumerate(zip(got, exp, strict=True)):
                walk(a, b, f"{path}{i}.")
        elif isinstance(exp, float):
            assert got == pytest.approx(exp, rel=1e-9, abs=1e-12), path
        else:
            assert got == exp, path

    walk(results, want, "")
    assert results["config"]["iterations"] == want["config"]["iterations"]


@pytest.mark.skipif(
    os.environ.get("SEMALIGN_COMPOSE_CHAOS") != "1",
    reason="set SEMALIGN_COMPOSE_CHAOS=1 (opt-in for the CI budget: 3 to 11 minutes here, "
    "depending on the load; see docs/deployment.md, Chaos)",
)
def test_chaos_killed_paused_and_disconnected_users_are_reported(image, deployment, tmp_path):
    """During a compose run of five users, once all five are in the session's rounds (the AP's
    --progress-file in the results volume): user1's container is killed, user2's paused past
    the round deadline, user3's disconnected from the network. The AP finishes with user4 and
    user5, exit code 3, and its results say who was lost and why."""
    _, _, _, project = deployment
    session = [*ALIGN, "--iterations", "1000", "--seeds", "7", "--round-deadline", "10"]
    session += ["--stragglers", "drop", "--rejoin-grace", "0"]
    compose = project(5, session)
    up = compose.popen("up", *_services(5), log=tmp_path / "up.log")  # no abort: user1 dies
    try:
        wait_for(lambda: compose.container("ap") != "", 600, "the AP container")
        ap = compose.container("ap")
        wait_for(lambda: len(rounds_running(ap)) == 5, 900, "five users in the rounds")
        user = {i: compose.container(f"user{i}") for i in (1, 2, 3)}
        network = f"{compose.name}_semalign"
        subprocess.run(["docker", "kill", user[1]], check=True, capture_output=True)
        subprocess.run(["docker", "pause", user[2]], check=True, capture_output=True)
        subprocess.run(
            ["docker", "network", "disconnect", network, user[3]], check=True, capture_output=True
        )
        waited = subprocess.run(["docker", "wait", ap], capture_output=True, text=True, timeout=900)
        code = int(waited.stdout.strip())
        results = compose.results(tmp_path / "run.json")
        ap_log = compose.run("logs", "--no-color", "ap").stdout
    finally:
        compose.down()
        up.wait(timeout=300)
    (tmp_path / "ap.log").write_text(ap_log)
    seed = results["seeds"][0]
    dropped = seed["dropped"]
    print(f"\nchaos: the AP exited with {code}; dropped: {dropped}; lost: {results['lost']}")
    assert set(dropped) == {"user1", "user2", "user3"}, (dropped, ap_log[-3000:])
    for uid in ("user1", "user2", "user3"):
        assert dropped[uid].startswith("round"), dropped  # lost during the rounds
    assert "straggler" in dropped["user2"], dropped  # paused: past the round deadline
    # killed: its stream closed; disconnected: the stream ended (docker resets its
    # connections) or, where it does not, past the round deadline like user2
    survivors = {u["name"]: u for u in seed["users"] if not u.get("dropped")}
    assert set(survivors) == {"user4", "user5"}
    assert all(u["accuracy"] is not None for u in survivors.values())
    assert {lost["user"] for lost in results["lost"]} == {"user1", "user2", "user3"}
    assert code == 3, ap_log[-3000:]


def rounds_running(ap: str) -> list[str]:
    """The users in the AP's rounds (its --progress-file), none before the first round."""
    done = subprocess.run(
        ["docker", "exec", ap, "cat", "/results/progress.json"], capture_output=True, text=True
    )
    try:
        return list(json.loads(done.stdout)["users"]) if done.returncode == 0 else []
    except ValueError:
        return []
