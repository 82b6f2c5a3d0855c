"""``semalign ap``: the AP of a deployment whose users run on other hosts.

Serves the alignment protocol on ``--listen`` (TLS optional) and, with ``--flower``, runs a
Flower SuperLink whose ServerApp invites the users' SuperNodes.

Credentials: the AP holds one secret (``--secret-file``, ``$SEMALIGN_SECRET``, or a new one
written to ``WORKDIR/ap-secret``, mode 0600); user ``u``'s token is ``HMAC(secret, u)``
(``semalign token u``). Direct users get their token from the operator; with Flower the
ServerApp gives each SuperNode the token of the user id it runs, and no other.
"""

from __future__ import annotations

import argparse
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from semalign.common.contract import TlsFiles, check_address
from semalign.common.credentials import SECRET_FILE, new_secret, write_secret_file
from semalign.common.errors import UsageError
from semalign.common.records import Provenance
from semalign.deploy.flower.launch import FlowerRun, start_flower
from semalign.deploy.options.checks import serve_settings
from semalign.deploy.options.reliability import start_afresh
from semalign.deploy.serving.ap_side import (
    Plan,
    finish,
    load_plan,
    make_workdir,
    print_endpoints,
    serve_with_children,
    start_service,
)
from semalign.deploy.serving.display import Display
from semalign.deploy.serving.launcher import Processes
from semalign.server.serve_settings import ServeSettings

from semalign.commands.options import check_channel_users, parse_seeds, prepare_latents
from semalign.commands.tracking_options import end_session_tracking, track_session
from semalign.experiments.provenance import latents_id, provenance_block


def expected_users(spec: str) -> int | list[str]:
    """``--users``: how many users to wait for (N), or their comma-separated user ids."""
    spec = spec.strip()
    expected: int | list[str] = (
        int(spec) if spec.isdigit() else [u.strip() for u in spec.split(",") if u.strip()]
    )
    if (expected if isinstance(expected, int) else len(expected)) < 1:
        raise UsageError("--users must name at least one user")
    return expected


def advertised(listen: str, advertise: str | None, port: int) -> str:
    """The service address as users reach it: ``--advertise``, else ``--listen`` with the
    bound port (this host's name for a wildcard host)."""
    if advertise:
        return advertise
    host, _ = check_address(listen, what="--listen address")
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"{host}:{port}"


def ap_secret(args: argparse.Namespace, workdir: Path) -> tuple[str, Path | None, str]:
    """(secret, a file holding it, where it came from: "file", "env", "reused", "new").

    ``--secret-file`` or ``$SEMALIGN_SECRET`` (read by the option checks into ``args.secret``);
    otherwise ``WORKDIR/ap-secret`` if it exists (tokens stay valid when the AP restarts with
    the same workdir), else a new secret written there (0600). The Flower ServerApp reads the
    secret from a file, never from its run config: a secret from the environment is written to
    ``WORKDIR/ap-secret`` (0600) with ``--flower`` only.
    """
    from semalign.common.credentials import read_secret_file

    if args.secret_file:
        return args.secret, Path(args.secret_file).resolve(), "file"
    path = workdir / SECRET_FILE
    try:
        if args.secret is not None:
            if not args.flower:
                return args.secret, None, "env"
            path.unlink(missing_ok=True)
            return args.secret, write_secret_file(path, args.secret).resolve(), "env"
        if path.exists():
            return read_secret_file(path), path.resolve(), "reused"
        secret = new_secret()
        return secret, write_secret_file(path, secret).resolve(), "new"
    except OSError as exc:
        raise UsageError(f"cannot write the AP secret to {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def command(args: argparse.Namespace) -> int:
    from semalign.encoders import registry

    t_start, started = time.perf_counter(), datetime.now(timezone.utc)
    config, seeds = args.alignment_config, parse_seeds(args.seeds)
    settings = serve_settings(args, expected_users(args.users))
    check_channel_users(config, settings.users)
    ap = args.ap or registry.DEFAULT_AP
    cache = prepare_latents(args, [ap])
    # The users' latents are on their hosts: the AP's entry is all this process uses. (Each
    # user's SNR is its own: a user may override the offered one, so none is recorded here.)
    origin = provenance_block(started, latents_id=latents_id(cache, [ap]))
    start_afresh(args)
    plan = load_plan(cache, ap, config, seeds, settings)
    keys = supernode_keys(args)
    workdir = make_workdir(args.workdir, "semalign-ap-")
    secret, secret_file, source = ap_secret(args, workdir)
    service, server = start_service(secret, plan)
    advertise = advertised(args.listen, args.advertise, server.port)
    display = Display(config, seeds, plan.users, args.quiet)
    say = display.console.print
    say(f"alignment service on {server.address}, advertised as {advertise}")
    print_endpoints(plan, say)
    if source in ("new", "reused"):
        say(
            f"AP secret {'written to' if source == 'new' else 'reused from'} {secret_file}; "
            f"a user's token: semalign token USER_ID --secret-file {secret_file}"
        )
    procs = Processes(workdir / "logs")
    deployment = ap_deployment(args, settings, keys)
    superlink = Superlink(args, procs, workdir, plan, advertise, secret_file, keys)
    plan.tracked = track_session(args, "ap", config, ap, {}, origin)  # users name their own
    try:
        results, reports = serve_with_children(
            service, server, procs, plan, display, superlink.start
        )
    finally:
        end_session_tracking(plan.tracked, args, say)
    results = results.with_provenance(Provenance.from_dict(origin))
    if args.flower:
        deployment["flower_reports"] = reports
    return finish(results, deployment, t_start, display, args.out)


def supernode_keys(args: argparse.Namespace) -> list[Path] | None:
    """The users' SuperNode public keys (``--supernode-keys``: its ``*.pub``), with Flower and
    TLS; ``None``: no SuperNode authentication."""
    if args.flower and not args.insecure:
        return sorted(Path(args.supernode_keys).glob("*.pub"))
    return None


def ap_deployment(
    args: argparse.Namespace, settings: ServeSettings, keys: list[Path] | None
) -> dict[str, Any]:
    """The results' ``deployment`` block as far as it is known before the users join."""
    tls = settings.tls or TlsFiles()
    deployment: dict[str, Any] = {"mode": "flower" if args.flower else "direct"}
    deployment["users"] = settings.users
    deployment["tls"] = "mutual" if tls.ca and tls.cert else ("server" if tls.cert else "off")
    deployment["supernode_auth"] = keys is not None
    return deployment


@dataclass(frozen=True)
class Superlink:
    """With ``--flower``, the SuperLink on ``--superlink-listen`` and the Flower run whose
    ServerApp invites the users' SuperNodes to the service ``advertise``d."""

    args: argparse.Namespace
    procs: Processes
    workdir: Path
    plan: Plan
    advertise: str
    secret_file: Path | None
    keys: list[Path] | None

    def start(self) -> FlowerRun | None:
        if not self.args.flower:
            return None
        host, port = check_address(self.args.superlink_listen, what="--superlink-listen")
        settings = self.plan.settings
        return start_flower(
            self.procs,
            self.workdir,
            host=host,
            port=port,
            service_address=self.advertise,
            secret_file=self.secret_file,
            invited=None if isinstance(settings.invitees, int) else list(settings.invitees),
            users=settings.users,
            node_wait_s=settings.join_timeout,
            tls=settings.tls,
            supernode_keys=self.keys,
        )
