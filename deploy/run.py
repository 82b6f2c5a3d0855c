"""``semalign run``: the networked system on this machine.

The AP (this process: the gRPC alignment service; with Flower also a SuperLink and the
ServerApp it spawns) and one process per user on loopback: with Flower a SuperNode whose
ClientApp joins the AP's service, without (``--no-flower``) a plain ``semalign user --ap``.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from semalign.common.contract import TlsFiles
from semalign.common.credentials import SECRET_FILE, new_secret, user_token, write_secret_file
from semalign.deploy.certs import ApSecrets, make_secrets
from semalign.deploy.display import Display
from semalign.deploy.flower import FlowerRun, start_flower
from semalign.deploy.launcher import Processes, child_env, free_port
from semalign.deploy.reliability_options import remove_checkpoint, start_afresh, wait_policy
from semalign.deploy.serving import (
    Plan,
    finish,
    grpc_workers,
    load_plan,
    make_workdir,
    serve_with_children,
    start_service,
)
from semalign.deploy.user import user_argv

from semalign.commands.options import (
    check_channel_users,
    check_latents,
    check_output,
    config_from_args,
    parse_seeds,
    prepare_latents,
    resolve_users,
)
from semalign.commands.tracking_options import end_session_tracking, track_session
from semalign.experiments.provenance import latents_id, provenance_block, stamp_results


def command(args: argparse.Namespace) -> int:
    from semalign.encoders import registry
    from semalign.engine.scenario import user_names
    from semalign.engine.simulate import record_user_snrs, user_snrs

    t_start, started = time.perf_counter(), datetime.now(timezone.utc)
    config = config_from_args(args)
    seeds = parse_seeds(args.seeds)
    check_output(args.out)
    if args.progress_file:
        check_output(args.progress_file)
    ap = args.ap or registry.DEFAULT_AP
    encoders = resolve_users(args.users, Path(args.latents) if args.latents else None, ap)
    check_channel_users(config, len(encoders))
    ids = user_names(encoders)
    snrs = user_snrs(config, ids)  # user i has ordinal i (user_argv below)
    # Encode once, one encoder after another, before the user processes start: ten users
    # training at once on a small machine would only thrash. Each user process then loads its
    # own encoder's latents from this cache (--latents), without re-validating it.
    cache = prepare_latents(args, [ap, *encoders])
    # Every user's encoder name and latents, checked here as simulate checks them: a user
    # process that cannot load its data would otherwise only fail in its own log.
    check_latents(cache, ap, encoders)
    origin = provenance_block(started, latents_id=latents_id(cache, [ap, *encoders]))
    start_afresh(args)
    plan = load_plan(
        cache,
        ap,
        config,
        seeds,
        ids,
        join_timeout=args.join_timeout,
        reply_timeout=args.reply_timeout,
        policy=wait_policy(args),
        checkpoint=args.checkpoint,
        resume=args.resume,
        extra={"users": encoders},
    )
    plan.progress_file = args.progress_file
    plan.tracked = track_session(
        args, "run", config, ap, dict(zip(ids, encoders, strict=True)), origin
    )
    t_ready = time.perf_counter()

    # A fresh secret per run; each user process gets only its own token.
    secret = new_secret()
    with run_workdir(args) as workdir:
        keys = None if args.insecure else run_secrets(workdir, ids)
        tls = TlsFiles(str(keys.cert), str(keys.key), str(keys.ca)) if keys else None
        service, server = start_service(
            secret,
            args.listen,
            plan,
            tls,
            first_message_timeout=args.first_message_timeout,
            max_streams_per_address=grpc_workers(len(ids)),  # every user is on this host
            metrics_listen=args.metrics_listen,
        )
        display = Display(config, seeds, len(ids), args.quiet)
        procs = Processes(workdir / "logs")
        deployment: dict[str, Any] = {"mode": "flower" if args.flower else "direct"}
        deployment.update(users=len(ids), workdir=str(workdir))
        deployment.update(tls="off" if keys is None else "mutual", supernode_auth=keys is not None)
        display.print(
            f"AP {ap} + {len(ids)} users ({'Flower SuperNodes' if args.flower else 'direct'}), "
            f"alignment service on {server.address}, logs in {procs.log_dir}"
        )
        for name, where in plan.endpoints.items():
            display.print(f"{name} on {where}")

        def start_users() -> FlowerRun | None:
            address = server.address
            if not args.flower:
                for ordinal, (uid, enc) in enumerate(zip(ids, encoders, strict=True)):
                    mine = user_secrets(workdir, uid) if keys else None
                    argv = user_argv(
                        uid, ordinal, enc, ap=address, latents=str(cache), secrets=mine
                    )
                    token = user_token(secret, uid)
                    procs.start(uid, argv, child_env(single_thread=True, SEMALIGN_TOKEN=token))
                return None
            secret_file = workdir / SECRET_FILE  # for the ServerApp, which derives each token
            secret_file.unlink(missing_ok=True)
            write_secret_file(secret_file, secret)
            flower = start_local_flower(
                procs, workdir, plan, encoders, address, secret_file, tls=tls, keys=keys
            )
            deployment["flower_run_submitted_s"] = time.perf_counter() - t_start
            return flower

        try:
            results, reports = serve_with_children(
                service, server, procs, plan, display, start_users
            )
        finally:
            end_session_tracking(plan.tracked, args, display.print)
        stamp_results(record_user_snrs(results, snrs), origin)
        deployment["prepare_s"] = t_ready - t_start
        deployment["startup_s"] = (display.first_joined_at or t_ready) - t_ready
        if args.flower:
            deployment["flower_reports"] = reports
        code = finish(results, deployment, t_start, display, args.out)
    remove_checkpoint(plan.checkpoint)  # the results are written: it is spent
    return code


@contextlib.contextmanager
def run_workdir(args: argparse.Namespace) -> Iterator[Path]:
    """The run's workdir (``--workdir``, else a new temporary folder), cleaned up at the end.

    Its secrets (``secrets/``: the CA key, certificates and SuperNode keys; ``ap-secret``) are
    removed however the run ends; a temporary workdir is removed whole after a run that wrote
    its results (a failed run keeps its logs, which its error line names). ``--keep-workdir``
    keeps everything and says where."""
    workdir = make_workdir(args.workdir, "semalign-run-")
    finished = False
    try:
        yield workdir
        finished = True
    finally:
        if args.keep_workdir:
            print(
                f"semalign run: workdir kept at {workdir} (it holds this run's secrets: CA key, "
                "certificates, AP secret)",
                file=sys.stderr,
                flush=True,
            )
        elif finished and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            shutil.rmtree(workdir / "secrets", ignore_errors=True)
            with contextlib.suppress(OSError):
                (workdir / SECRET_FILE).unlink(missing_ok=True)


def run_secrets(workdir: Path, ids: list[str]) -> ApSecrets:
    """A CA, certificates and SuperNode keys for this run only (``WORKDIR/secrets``)."""
    make_secrets(workdir / "secrets", ids, names=["localhost"], days=7)
    return ApSecrets(workdir / "secrets" / "ap")


def user_secrets(workdir: Path, user_id: str) -> str:
    return str((workdir / "secrets" / user_id).resolve())


def start_local_flower(
    procs: Processes,
    workdir: Path,
    plan: Plan,
    encoders: list[str],
    service_address: str,
    secret_file: Path,
    *,
    tls: TlsFiles | None = None,
    keys: ApSecrets | None = None,
) -> FlowerRun:
    """A SuperLink and one SuperNode per user on loopback, then the Flower run (TLS and
    SuperNode authentication with ``keys``)."""
    port = free_port()
    superlink = f"127.0.0.1:{port}"
    supernodes = [
        (
            uid,
            user_argv(
                uid,
                ordinal,
                enc,
                superlink=superlink,
                latents=str(plan.latents),
                runtime_port=free_port(),
                secrets=user_secrets(workdir, uid) if keys else None,
            ),
        )
        for ordinal, (uid, enc) in enumerate(zip(plan.expected, encoders, strict=True))
    ]
    return start_flower(
        procs,
        workdir,
        host="127.0.0.1",
        port=port,
        service_address=service_address,
        secret_file=secret_file,
        invited=list(plan.expected),
        users=plan.users,
        node_wait_s=plan.join_timeout,
        tls=tls,
        supernode_keys=keys.supernode_keys if keys else None,
        supernodes=supernodes,
    )
