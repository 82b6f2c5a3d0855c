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
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from semalign.common.contract import TlsFiles
from semalign.common.credentials import SECRET_FILE, new_secret, user_token, write_secret_file
from semalign.common.records import Provenance
from semalign.deploy.commands.certs import ApSecrets, make_secrets
from semalign.deploy.commands.user import user_argv
from semalign.deploy.flower.launch import FlowerRun, start_flower
from semalign.deploy.options.checks import serve_settings
from semalign.deploy.options.reliability import remove_checkpoint, start_afresh
from semalign.deploy.serving.ap_side import (
    Plan,
    finish,
    grpc_workers,
    load_plan,
    make_workdir,
    print_endpoints,
    serve_with_children,
    start_service,
)
from semalign.deploy.serving.display import Display
from semalign.deploy.serving.launcher import Processes, child_env, free_port
from semalign.server.serve_settings import ServeSettings

from semalign.commands.options import (
    check_channel_users,
    check_latents,
    parse_seeds,
    prepare_latents,
    resolve_users,
)
from semalign.commands.tracking_options import end_session_tracking, track_session
from semalign.experiments.provenance import latents_id, provenance_block


@dataclass(frozen=True)
class LocalUsers:
    """The users ``semalign run`` launches on this machine, and the latents they share.

    Attributes:
        ap: the AP's encoder; ``encoders``: user i's encoder; ``ids``: user i's id.
        snrs: each user's SNR (dB), recorded in the results.
        cache: the latents folder every process loads (encoded once, before they start).
        origin: the provenance block stamped on the results.
    """

    ap: str
    encoders: list[str]
    ids: list[str]
    snrs: dict[str, float]
    cache: Path
    origin: dict[str, Any]


def command(args: argparse.Namespace) -> int:
    t_start, started = time.perf_counter(), datetime.now(timezone.utc)
    config, seeds = args.alignment_config, parse_seeds(args.seeds)
    local, settings = local_users(args, config, started)
    start_afresh(args)
    plan = load_plan(
        local.cache, local.ap, config, seeds, settings, extra={"users": local.encoders}
    )
    named = dict(zip(local.ids, local.encoders, strict=True))
    plan.tracked = track_session(args, "run", config, local.ap, named, local.origin)
    t_ready = time.perf_counter()
    secret = new_secret()  # a fresh secret per run; each user process gets only its own token
    with run_workdir(args) as workdir:
        keys = None if args.insecure else run_secrets(workdir, local.ids)
        tls = TlsFiles(str(keys.cert), str(keys.key), str(keys.ca)) if keys else None
        plan.settings = replace(plan.settings, tls=tls)
        service, server = start_service(secret, plan)
        display = Display(config, seeds, len(local.ids), args.quiet)
        procs = Processes(workdir / "logs")
        deployment = run_deployment(args, local, workdir, keys)
        display.print(
            f"AP {local.ap} + {len(local.ids)} users "
            f"({'Flower SuperNodes' if args.flower else 'direct'}), "
            f"alignment service on {server.address}, logs in {procs.log_dir}"
        )
        print_endpoints(plan, display.print)
        start = LocalStart(args, plan, local, procs, workdir, secret, keys, server.address)
        try:
            results, reports = serve_with_children(
                service, server, procs, plan, display, start.children
            )
        finally:
            end_session_tracking(plan.tracked, args, display.print)
        results = results.with_user_snrs(local.snrs)
        results = results.with_provenance(Provenance.from_dict(local.origin))
        if start.submitted_at is not None:
            deployment["flower_run_submitted_s"] = start.submitted_at - t_start
        deployment["prepare_s"] = t_ready - t_start
        deployment["startup_s"] = (display.first_joined_at or t_ready) - t_ready
        if args.flower:
            deployment["flower_reports"] = reports
        code = finish(results, deployment, t_start, display, args.out)
    remove_checkpoint(settings.checkpoint)  # the results are written: it is spent
    return code


def local_users(
    args: argparse.Namespace, config, started: datetime
) -> tuple[LocalUsers, ServeSettings]:
    """The users to launch, their latents (encoded and checked now) and the AP's settings.

    Encode once, one encoder after another, before the user processes start: ten users training
    at once on a small machine would only thrash. Each user process then loads its own
    encoder's latents from this cache (``--latents``), without re-validating it; every user's
    encoder name and latents are checked here as simulate checks them (a user process that
    cannot load its data would otherwise only fail in its own log)."""
    from semalign.encoders import registry
    from semalign.engine.scenario import user_names
    from semalign.engine.simulate import user_snrs

    ap = args.ap or registry.DEFAULT_AP
    encoders = resolve_users(args.users, Path(args.latents) if args.latents else None, ap)
    check_channel_users(config, len(encoders))
    ids = user_names(encoders)
    settings = serve_settings(args, ids, max_streams_per_address=grpc_workers(len(ids)))
    snrs = user_snrs(config, ids)  # user i has ordinal i (user_argv below)
    cache = prepare_latents(args, [ap, *encoders])
    check_latents(cache, ap, encoders)
    origin = provenance_block(started, latents_id=latents_id(cache, [ap, *encoders]))
    return LocalUsers(ap, encoders, ids, snrs, cache, origin), settings


def run_deployment(
    args: argparse.Namespace, local: LocalUsers, workdir: Path, keys: ApSecrets | None
) -> dict[str, Any]:
    """The results' ``deployment`` block as far as it is known before the users start."""
    deployment: dict[str, Any] = {"mode": "flower" if args.flower else "direct"}
    deployment.update(users=len(local.ids), workdir=str(workdir))
    deployment.update(tls="off" if keys is None else "mutual", supernode_auth=keys is not None)
    return deployment


@dataclass
class LocalStart:
    """Starts the users of ``semalign run`` once the service listens at ``address``: plain
    ``semalign user --ap`` processes, or (``--flower``) a SuperLink, SuperNodes and the run;
    ``submitted_at``: when the Flower run was submitted (``perf_counter``)."""

    args: argparse.Namespace
    plan: Plan
    local: LocalUsers
    procs: Processes
    workdir: Path
    secret: str
    keys: ApSecrets | None
    address: str
    submitted_at: float | None = None

    def children(self) -> FlowerRun | None:
        if not self.args.flower:
            self.direct_users()
            return None
        secret_file = self.workdir / SECRET_FILE  # for the ServerApp, which derives each token
        secret_file.unlink(missing_ok=True)
        write_secret_file(secret_file, self.secret)
        tls = self.plan.settings.tls
        encoders = self.local.encoders
        flower = start_local_flower(
            self.procs,
            self.workdir,
            self.plan,
            encoders,
            self.address,
            secret_file,
            tls=tls,
            keys=self.keys,
        )
        self.submitted_at = time.perf_counter()
        return flower

    def direct_users(self) -> None:
        """One ``semalign user --ap`` process per user, each with its own token only."""
        users = zip(self.local.ids, self.local.encoders, strict=True)
        for ordinal, (uid, enc) in enumerate(users):
            mine = user_secrets(self.workdir, uid) if self.keys else None
            argv = user_argv(
                uid, ordinal, enc, ap=self.address, latents=str(self.local.cache), secrets=mine
            )
            token = user_token(self.secret, uid)
            self.procs.start(uid, argv, child_env(single_thread=True, SEMALIGN_TOKEN=token))


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
        node_wait_s=plan.settings.join_timeout,
        tls=tls,
        supernode_keys=keys.supernode_keys if keys else None,
        supernodes=supernodes,
    )
