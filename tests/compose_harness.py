"""docker-compose.yml on a real Docker engine, for tests: the image (built offline by
deploy/offline-image.sh, reused while the sources it holds are unchanged), a compose project
made of the compose file plus a small override, and its cleanup.

Nothing here is pulled: the engine may have no registry. Every container, network and volume a
:class:`Project` creates carries its project name and is removed by :meth:`Project.down`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
IMAGE = "semalign:latest"
BASE_IMAGE = "semalign-base:bookworm"
#: the image label holding :func:`source_digest` of the sources it was built from
SOURCE_LABEL = "org.semalign.source"
#: what deploy/Dockerfile copies into the image (its build context minus .dockerignore)
IMAGE_SOURCES = ("pyproject.toml", "README.md", "semalign", "common", "server", "client")
IMAGE_SOURCES += ("proto", "deploy")


def compose_binary() -> list[str] | None:
    """``docker-compose`` (v1) or ``docker compose`` (v2), whichever this machine has."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


def engine_problem() -> str | None:
    """Why compose cannot run here (no binary, no engine), or None."""
    if shutil.which("docker") is None or compose_binary() is None:
        return "no docker / docker compose binary on this machine"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "the Docker engine does not answer within 60 s"
    if info.returncode != 0:
        return "the Docker engine does not answer (`docker info` failed)"
    return None


def source_digest() -> str:
    """sha256 over the files deploy/Dockerfile puts in the image (path and content)."""
    digest = hashlib.sha256()
    files: list[Path] = []
    for name in IMAGE_SOURCES:
        path = ROOT / name
        files += sorted(path.rglob("*")) if path.is_dir() else [path]
    for path in files:
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def image_label(image: str) -> str | None:
    done = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{json .Config.Labels}}", image],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return None
    return (json.loads(done.stdout.strip() or "null") or {}).get(SOURCE_LABEL)


def ensure_image() -> tuple[float, str]:
    """``semalign:latest`` for the current sources: reused if its label says so, else built by
    ``nice -n 10 bash deploy/offline-image.sh`` (TORCH=none; the base image and the wheelhouse
    are reused when present). Returns (seconds spent, what was done); skips the test when the
    image cannot be built offline here (no base image and no debootstrap, no wheels)."""
    import pytest

    digest = source_digest()
    if image_label(IMAGE) == digest:
        return 0.0, "reused"
    if not _image_exists(BASE_IMAGE) and shutil.which("debootstrap") is None:
        pytest.skip(f"no {BASE_IMAGE} image and no debootstrap to build it offline")
    env = {**os.environ, "TORCH": "none", "SOURCE_DIGEST": digest, "IMAGE": IMAGE}
    t0 = time.perf_counter()
    done = subprocess.run(
        ["nice", "-n", "10", "bash", "deploy/offline-image.sh"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        tail = (done.stdout + done.stderr)[-3000:]
        if "== docker build" not in done.stdout:  # base image or wheelhouse: not offline here
            pytest.skip(f"the image cannot be built offline here: {tail.strip()[-400:]}")
        raise AssertionError(f"docker build failed:\n{tail}")
    assert image_label(IMAGE) == digest
    return seconds, "built"


def _image_exists(image: str) -> bool:
    done = subprocess.run(["docker", "image", "inspect", image], capture_output=True)
    return done.returncode == 0


def small_override(
    latents: Path, ap_enc: str, users: list[str], ap_args: list[str]
) -> dict[str, Any]:
    """An override of docker-compose.yml for ``len(users)`` users on synthetic latents: the
    ``encode`` service copies them from ``latents`` (bind mount) into each cache volume; the
    AP waits for these users only; ``ap_args`` are added to the AP's command."""
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    pairs = [f"ap={ap_enc}"] + [f"user{i}={e}" for i, e in enumerate(users, 1)]
    out: dict[str, Any] = {
        "encode": {
            "command": ["--caches", "/caches", "--stay", "--latents", "/synthetic", *pairs],
            "volumes": [f"{latents}:/synthetic:ro"],
        }
    }
    ap = [a for a in services["ap"]["command"] if a not in ("--cache-dir", "/cache")]
    ap[ap.index("--ap") + 1] = ap_enc
    ap[ap.index("--users") + 1] = str(len(users))
    out["ap"] = {"command": [*ap, "--latents", "/cache/latents", *ap_args]}
    for i, enc in enumerate(users, 1):
        cmd = [a for a in services[f"user{i}"]["command"] if a not in ("--cache-dir", "/cache")]
        cmd[cmd.index("--encoder") + 1] = enc
        out[f"user{i}"] = {"command": [*cmd, "--latents", "/cache/latents"]}
    return (
        {"version": compose["version"], "services": out}
        if "version" in compose
        else {"services": out}
    )


class Project:
    """One compose project (``-p NAME``) of docker-compose.yml plus an override file."""

    def __init__(self, name: str, override: dict[str, Any], folder: Path, secrets: Path):
        self.name = name
        path = folder / "override.yml"
        path.write_text(yaml.safe_dump(override))
        self.base = [*compose_binary(), "-p", name, "-f", str(COMPOSE), "-f", str(path)]
        self.env = {**os.environ, "SEMALIGN_SECRETS": str(secrets)}
        self.env.pop("SEMALIGN_HOST_CACHE", None)

    def run(self, *args: str, timeout: float = 300, check: bool = False):
        return subprocess.run(
            [*self.base, *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def popen(self, *args: str, log: Path) -> subprocess.Popen:
        with open(log, "wb") as out:
            return subprocess.Popen(
                [*self.base, *args], cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )

    def container(self, service: str) -> str:
        return self.run("ps", "-q", service, check=True).stdout.strip()

    def results(self, dest: Path) -> dict[str, Any]:
        """The AP's ``/results/run.json`` (copied out of its container, running or not)."""
        ap = self.container("ap")
        subprocess.run(["docker", "cp", f"{ap}:/results/run.json", str(dest)], check=True)
        return json.loads(dest.read_text())

    def down(self) -> None:
        """Remove every container, network and volume of this project (paused ones too)."""
        listed = subprocess.run(
            ["docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={self.name}"],
            capture_output=True,
            text=True,
        ).stdout.split()
        for cid in listed:  # a paused container cannot be stopped
            subprocess.run(["docker", "unpause", cid], capture_output=True)
        self.run("down", "-v", "--remove-orphans", "-t", "5", timeout=600)


def wait_for(predicate, timeout: float, what: str, poll: float = 1.0) -> None:
    """Poll ``predicate`` until true; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(poll)
