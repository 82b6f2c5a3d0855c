"""Flower in the deployment: the SuperLink, the users' SuperNodes and the run that invites them.

:func:`start_flower` is the one way ``semalign run`` and ``semalign ap`` start Flower: a
SuperLink (plus, for ``run``, one SuperNode per user on the same machine), then the semalign
Flower App (:mod:`semalign.deploy.flower.app`) submitted with ``flwr run``. Its ServerApp invites
every SuperNode to the AP's alignment service and writes the users' final reports to a status
file, which :class:`FlowerRun` reads (users lost while the others join; final reports at the
end).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semalign.common.contract import TlsFiles
from semalign.common.errors import LaunchError
from semalign.deploy.flower.superlink import is_loopback
from semalign.deploy.serving.launcher import Processes, child_env, tool, wait_for_port

#: The Flower App folder (its pyproject.toml names the components in semalign.deploy.flower.app).
APP_DIR = Path(__file__).resolve().parent / "app"

#: How long the AP waits for its SuperLink to listen (minutes on a busy 2-core host with ten
#: user containers starting).
SUPERLINK_START_S = 300.0

#: How long the ServerApp waits for the users' reports (the AP process ends the run sooner).
SESSION_TIMEOUT_S = 86400.0


# ---------------------------------------------------------------------------- command lines
def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string


def config_string(values: dict[str, Any]) -> str:
    """``key=value`` pairs with TOML-typed values, as --node-config/--run-config expect."""
    return " ".join(f"{key}={toml_value(v)}" for key, v in values.items() if v is not None)


def superlink_argv(
    host: str, port: int, *, tls: TlsFiles | None = None, supernode_auth: bool = False
) -> list[str]:
    """``flower-superlink`` behind :mod:`semalign.deploy.flower.superlink` (Control and Runtime APIs
    loopback-only). TLS needs the CA too: Flower's SuperExec verifies the SuperLink with it.
    SuperNode authentication needs TLS."""
    argv = [sys.executable, "-m", "semalign.deploy.flower.superlink"]
    argv += ["--disable-runtime-dependency-installation", "--host", host, "--port", str(port)]
    if tls is not None and tls.enabled:
        if not (tls.cert and tls.key and tls.ca):
            raise LaunchError("TLS on the SuperLink needs a certificate, its key and the CA")
        argv += ["--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key)]
        argv += ["--ssl-ca-certfile", str(tls.ca)]
        if supernode_auth:
            argv.append("--enable-supernode-auth")
    elif supernode_auth:
        raise LaunchError("SuperNode authentication needs TLS on the SuperLink")
    else:
        argv.append("--insecure")
    return argv


def control_host(host: str) -> str:
    """Where the AP's own ``flwr`` calls reach a SuperLink listening on ``host``: loopback
    always (the guard serves the Control API to loopback only; on a specific non-loopback
    address the SuperLink listens on 127.0.0.1 too, :mod:`semalign.deploy.flower.superlink`)."""
    return host if is_loopback(host) else "127.0.0.1"


def supernode_argv(
    superlink: str,
    runtime_port: int,
    node_config: dict[str, Any],
    *,
    root_ca: str | None = None,
    auth_key: str | None = None,
) -> list[str]:
    """``flower-supernode`` (behind :mod:`semalign.deploy.flower.supernode`: time for ClientApps to
    start): TLS to the SuperLink when ``root_ca`` is given (else --insecure), SuperNode
    authentication with ``auth_key`` (EC private key, OpenSSH format)."""
    argv = [sys.executable, "-m", "semalign.deploy.flower.supernode", "--superlink", superlink]
    argv += ["--host", "127.0.0.1", "--port", str(runtime_port)]
    argv += ["--node-config", config_string(node_config)]
    argv += ["--root-certificates", root_ca] if root_ca else ["--insecure"]
    if auth_key:
        argv += ["--auth-supernode-private-key", auth_key]
    return argv


def write_cli_config(flwr_home: Path, superlink: str, *, root_ca: str | None = None) -> None:
    """The `flwr` CLI's connection to our SuperLink, in its own FLWR_HOME."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", 'default = "semalign"', "", "[superlink.semalign]"]
    lines.append(f"address = {json.dumps(superlink)}")
    if root_ca:
        lines.append(f"root-certificates = {json.dumps(root_ca)}")
    else:
        lines.append("insecure = true")
    (flwr_home / "config.toml").write_text("\n".join(lines) + "\n")


def flwr_cli(flwr_home: Path, argv: list[str], *, what: str, timeout: float = 60) -> dict:
    """Run ``flwr ARGV --format json`` against our SuperLink; its JSON answer (LaunchError
    with the CLI's last line if it fails)."""
    argv = [tool("flwr"), *argv, "--format", "json"]
    try:
        done = subprocess.run(
            argv,
            env=child_env(flwr_home),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            cwd=flwr_home,
        )
    except subprocess.TimeoutExpired:
        raise LaunchError(f"`{what}` did not answer within {timeout:g} s") from None
    except OSError as exc:
        raise LaunchError(f"cannot start `{what}` ({argv[0]}): {exc.strerror}") from None
    try:
        payload = json.loads(done.stdout[done.stdout.index("{") :])
    except ValueError:
        payload = {}
    if done.returncode != 0 or not payload.get("success"):
        detail = (payload.get("error-message") or done.stderr or done.stdout).strip().splitlines()
        raise LaunchError(f"`{what}` failed: {detail[-1] if detail else done.returncode}")
    return payload


def register_supernodes(flwr_home: Path, public_keys: Sequence[Path]) -> list[int]:
    """Register SuperNode public keys with the SuperLink (SuperNode authentication): only
    SuperNodes holding one of the private keys may then connect. Returns the node ids."""
    if not public_keys:
        return []
    argv = [sys.executable, "-m", "semalign.deploy.flower.superlink", "register"]
    argv += [str(Path(k).resolve()) for k in public_keys]
    done = subprocess.run(
        argv, env=child_env(flwr_home), capture_output=True, text=True, timeout=300, cwd=flwr_home
    )
    try:
        return list(json.loads(done.stdout.strip().splitlines()[-1])["node-ids"])
    except (ValueError, IndexError, KeyError):
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise LaunchError(
            f"registering the SuperNode keys failed: {detail[-1] if detail else done.returncode}"
        ) from None


def submit_run(
    flwr_home: Path, run_config: dict[str, Any], *, app_dir: Path = APP_DIR, timeout: float = 300
) -> int:
    """Submit the semalign Flower App to the SuperLink (``flwr run``); returns the run id."""
    argv = ["run", str(app_dir), "semalign", "--run-config", config_string(run_config)]
    payload = flwr_cli(flwr_home, argv, what="flwr run", timeout=timeout)
    return int(payload["run-id"])


# ---------------------------------------------------------------------------- a running App
def read_reports(path: Path) -> dict | None:
    """The ServerApp's status file (rewritten as Flower replies arrive), if readable."""
    with contextlib.suppress(ValueError, OSError):
        return json.loads(path.read_text())
    return None


@dataclass
class FlowerRun:
    """The submitted Flower run: its status file and the processes that carry it
    (``users``: the names of the children that run users' SuperNodes, if any)."""

    reports_file: Path
    procs: Processes
    users: tuple[str, ...] = ()

    def check(self) -> dict[str, str]:
        """While waiting for users: the users known lost so far, ``{user_id: reason}`` (a
        SuperNode process that exited, a SuperNode that Flower lost after it said who it is,
        a ClientApp that reported an error); the session goes on without them. LaunchError
        if Flower itself failed (the SuperLink or another child that is not a user exited)."""
        lost = {
            uid: f"its SuperNode {why}"
            for uid, why in self.procs.check(expendable=self.users).items()
        }
        status = read_reports(self.reports_file)
        if not status:
            return lost
        for uid, report in status["reports"].items():
            if report["status"] != "ok":
                lost.setdefault(uid, f"its ClientApp failed: {report.get('error', '')}")
        for uid, reason in status.get("lost", {}).items():
            lost.setdefault(uid, reason)
        return lost

    def final_reports(self, timeout: float = 20.0) -> dict | None:
        """Wait until the ServerApp has every user's final report (or ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        status = None
        while time.monotonic() < deadline:
            status = read_reports(self.reports_file)
            if status and status.get("done"):
                break
            time.sleep(0.1)
        return status


def start_flower(
    procs: Processes,
    workdir: Path,
    *,
    host: str,
    port: int,
    service_address: str,
    secret_file: Path,
    invited: Sequence[str] | None,
    users: int,
    node_wait_s: float,
    tls: TlsFiles | None = None,
    supernode_keys: Sequence[Path] | None = None,
    supernodes: Sequence[tuple[str, list[str]]] = (),
) -> FlowerRun:
    """A SuperLink on ``host:port``, the ``supernodes`` (name, ``semalign user`` argv; one
    BLAS thread each, their own FLWR_HOME under ``workdir``), then the Flower run that invites
    ``users`` SuperNodes to the alignment service at ``service_address``: each SuperNode gets
    the token of the user id it runs (derived by the ServerApp from the AP's secret in
    ``secret_file``, which never enters Flower's run config), if that id is ``invited`` (any
    ids, up to ``users`` of them, for ``None``) and no other SuperNode claimed it first.

    Without SuperNode authentication the SuperNodes start before the SuperLink listens: they
    keep trying to connect, and the users prepare their latents meanwhile. With it they start
    once their keys are registered.

    ``tls`` (certificate, key, CA): TLS on the SuperLink. ``supernode_keys`` (public keys, with
    TLS): SuperNode authentication on, these keys registered before the run is submitted
    (SuperNodes retry until their key is known). The Control and Runtime APIs answer only on
    loopback (:mod:`semalign.deploy.flower.superlink`).
    """
    flwr = workdir / "flwr"
    auth = supernode_keys is not None
    argv = superlink_argv(host, port, tls=tls, supernode_auth=auth)
    procs.start("superlink", argv, child_env(flwr / "superlink"))
    local = control_host(host)
    secure = tls is not None and tls.enabled
    address = f"[{local}]:{port}" if ":" in local else f"{local}:{port}"
    write_cli_config(flwr / "cli", address, root_ca=tls.ca if secure else None)
    if not auth:  # they keep trying until the SuperLink listens
        _start_supernodes(procs, flwr, supernodes)
    wait_for_port(local, port, SUPERLINK_START_S, procs)
    if auth:  # keys first: a SuperNode whose key is unknown exits (users retry, see user.py)
        register_supernodes(flwr / "cli", list(supernode_keys or ()))
        _start_supernodes(procs, flwr, supernodes)
    run = FlowerRun(workdir / "flower-reports.json", procs, tuple(n for n, _ in supernodes))
    submit_run(
        flwr / "cli",
        {
            "service-address": service_address,
            "secret-file": str(secret_file),
            "user-ids": ",".join(invited or []),
            "tls": secure,
            "users": users,
            "node-wait-s": float(node_wait_s),
            "session-timeout-s": SESSION_TIMEOUT_S,
            "report-file": str(run.reports_file),
        },
    )
    return run


def _start_supernodes(
    procs: Processes, flwr: Path, supernodes: Sequence[tuple[str, list[str]]]
) -> None:
    """Start each SuperNode (name, ``semalign user`` argv): one BLAS thread, its own
    FLWR_HOME under ``flwr``."""
    for name, argv in supernodes:
        procs.start(name, argv, child_env(flwr / name, single_thread=True))
