"""``semalign user``: one user of a deployment.

Either a Flower SuperNode (``--superlink``: this process becomes the SuperNode, whose ClientApp
joins the AP named in Flower's invitation) or a direct gRPC client of the AP's alignment
service (``--ap``). The user's side of the protocol is :func:`semalign.client.stream.run_user`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

from semalign.common.contract import TOKEN_ENV
from semalign.common.errors import LatentsError, TransportError, UsageError
from semalign.deploy.launcher import child_env, semalign_command, tool

from semalign.commands.options import prepare_latents


def derive_ordinal(user_id: str) -> int:
    """``user3`` -> 2: the 0-based position from the user id's trailing number."""
    match = re.search(r"(\d+)$", user_id)
    if not match or int(match[1]) < 1:
        raise UsageError(f"cannot derive --ordinal from user id {user_id!r}; give --ordinal")
    return int(match[1]) - 1


def user_argv(
    user_id: str,
    ordinal: int,
    encoder: str,
    *,
    ap: str | None = None,
    superlink: str | None = None,
    latents: str | None = None,
    dataset: str = "digits",
    cache_dir: str | None = None,
    runtime_port: int | None = None,
    connect_timeout: float | None = None,
) -> list[str]:
    """The ``semalign user`` command line of one user (local launcher and docker-compose)."""
    argv = [*semalign_command(), "user", "--user-id", user_id]
    argv += ["--ordinal", str(ordinal), "--encoder", encoder]
    argv += ["--ap", ap] if ap else ["--superlink", str(superlink)]
    argv += ["--latents", latents] if latents else ["--dataset", dataset]
    if cache_dir and not latents:
        argv += ["--cache-dir", cache_dir]
    if runtime_port:
        argv += ["--runtime-port", str(runtime_port)]
    if connect_timeout:
        argv += ["--connect-timeout", f"{connect_timeout:g}"]
    return argv


def command(args: argparse.Namespace) -> int:
    from semalign.common.latents import load_encoder_splits

    ordinal = args.ordinal if args.ordinal is not None else derive_ordinal(args.user_id)
    # Each user loads its own encoder's latents, or encodes the dataset with its own encoder
    # on first use, before it is ready to join (so an invitation never waits on training).
    cache = prepare_latents(args, [args.encoder])
    try:  # fail now, with one line, rather than after joining the AP
        load_encoder_splits(cache, args.encoder)
    except LatentsError as exc:
        raise UsageError(str(exc)) from None
    if args.superlink:
        become_supernode(args, ordinal, cache)  # does not return
    return join_directly(args, ordinal, cache)


def become_supernode(args: argparse.Namespace, ordinal: int, cache: Path) -> None:
    """Replace this process with a Flower SuperNode whose node config describes this user."""
    from semalign.deploy.flower import supernode_argv

    node = {
        "user-id": args.user_id,
        "ordinal": ordinal,
        "encoder": args.encoder,
        "latents": str(cache.resolve()),
        "antennas-rx": args.antennas_rx,
        "snr-db": args.snr_db,
        "tls-ca": args.tls_ca,
        "tls-cert": args.tls_cert,
        "tls-key": args.tls_key,
        "connect-timeout-s": float(args.connect_timeout),
    }
    argv = supernode_argv(args.superlink, args.runtime_port, node, root_ca=args.superlink_ca)
    home = args.flwr_home or os.environ.get("FLWR_HOME")
    home = Path(home) if home else Path(tempfile.gettempdir()) / f"semalign-flwr-{args.user_id}"
    env = child_env(home)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(tool("flower-supernode"), argv, env)
    except OSError as exc:
        raise UsageError(f"cannot start the Flower SuperNode ({argv[0]}): {exc.strerror}") from None


def join_directly(args: argparse.Namespace, ordinal: int, cache: Path) -> int:
    """Join the AP's sessions over gRPC; 0 if every session ended ok, else 1."""
    from semalign.client.stream import run_user, user_factory
    from semalign.client.user import user_data_from_cache
    from semalign.common.contract import TlsFiles
    from semalign.deploy.launcher import sigterm_as_interrupt

    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        raise UsageError(f"a session token is needed: --token or ${TOKEN_ENV}")

    def load(pilot_fraction: float, config=None):
        if config is not None:  # research options (semalign.client.task)
            from semalign.client.task import task_user_data

            return task_user_data(cache, args.encoder, config)
        return user_data_from_cache(cache, args.encoder, pilot_fraction)

    factory = user_factory(
        args.user_id,
        args.encoder,
        ordinal,
        load,
        antennas_rx=args.antennas_rx,
        snr_db=args.snr_db,
    )
    try:
        with sigterm_as_interrupt():
            reports = run_user(
                args.ap,
                token,
                factory,
                tls=TlsFiles(args.tls_cert, args.tls_key, args.tls_ca),
                connect_timeout=args.connect_timeout,
                user_id=args.user_id,
                on_session=None if args.quiet else print_session,
            )
    except (TransportError, LatentsError) as exc:  # unreachable AP, or this user's own data
        raise UsageError(str(exc)) from None
    return 0 if all(r.status == "ok" for r in reports) else 1


def print_session(report) -> None:
    """One line per finished session on stdout (the user's log)."""
    acc = report.report.get("accuracy")
    print(
        f"{report.user_id} session {report.index + 1} (seed {report.seed}): {report.status}"
        + (f", accuracy {acc:.3f}" if acc is not None else "")
        + f", {report.bytes_down} B down, {report.bytes_up} B up, {report.seconds:.2f} s"
        + (f" ({report.detail})" if report.detail else ""),
        flush=True,
    )
