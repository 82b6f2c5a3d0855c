"""``semalign ap``: the AP of a deployment whose users run on other hosts.

Serves the alignment protocol on ``--listen`` (TLS and a session token optional) and, with
``--flower``, runs a Flower SuperLink whose ServerApp invites the users' SuperNodes.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import time
from typing import Any

from semalign.common.contract import TOKEN_ENV, TlsFiles, check_address
from semalign.common.errors import UsageError
from semalign.deploy.display import Display
from semalign.deploy.flower import FlowerRun, start_flower
from semalign.deploy.launcher import Processes
from semalign.deploy.serving import (
    finish,
    load_plan,
    make_workdir,
    serve_with_children,
    start_service,
)

from semalign.commands.options import (
    check_channel_users,
    check_output,
    config_from_args,
    parse_seeds,
    prepare_latents,
)


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


def command(args: argparse.Namespace) -> int:
    from semalign.encoders import registry

    t_start = time.perf_counter()
    config = config_from_args(args)
    seeds = parse_seeds(args.seeds)
    check_output(args.out)
    expected = expected_users(args.users)
    check_channel_users(config, expected if isinstance(expected, int) else len(expected))
    ap = args.ap or registry.DEFAULT_AP
    plan = load_plan(
        prepare_latents(args, [ap]),
        ap,
        config,
        seeds,
        expected,
        join_timeout=args.join_timeout,
        reply_timeout=args.reply_timeout,
    )
    given_token = args.token or os.environ.get(TOKEN_ENV)
    token = given_token or secrets.token_urlsafe(24)
    tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_ca)
    supernode_keys = None
    if args.flower and not args.insecure:
        from pathlib import Path

        supernode_keys = sorted(Path(args.supernode_keys).glob("*.pub"))
    workdir = make_workdir(args.workdir, "semalign-ap-")
    service, server = start_service(token, args.listen, plan.users, tls)
    advertise = advertised(args.listen, args.advertise, server.port)
    display = Display(config, seeds, plan.users, args.quiet)
    display.console.print(f"alignment service on {server.address}, advertised as {advertise}")
    if not given_token:
        display.console.print(f"session token (give it to users as ${TOKEN_ENV}): {token}")
    procs = Processes(workdir / "logs")
    deployment: dict[str, Any] = {"mode": "flower" if args.flower else "direct"}
    deployment["users"] = plan.users
    deployment["tls"] = "mutual" if tls.ca and tls.cert else ("server" if tls.cert else "off")
    deployment["supernode_auth"] = supernode_keys is not None

    def start_superlink() -> FlowerRun | None:
        if not args.flower:
            return None
        host, port = check_address(args.superlink_listen, what="--superlink-listen")
        return start_flower(
            procs,
            workdir,
            host=host,
            port=port,
            service_address=advertise,
            token=token,
            users=plan.users,
            node_wait_s=plan.join_timeout,
            tls=tls,
            supernode_keys=supernode_keys,
        )

    results, reports = serve_with_children(service, server, procs, plan, display, start_superlink)
    if args.flower:
        deployment["flower_reports"] = reports
    return finish(results, deployment, t_start, display, args.out)
