"""``semalign user``: one user of a deployment.

Either a Flower SuperNode (``--superlink``: this process becomes the SuperNode, whose ClientApp
joins the AP named in Flower's invitation) or a direct gRPC client of the AP's alignment
service (``--ap``). The user's side of the protocol is :func:`semalign.client.stream.run_user`.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import logging
import os
import re
import sys
import tempfile
import threading
from pathlib import Path
from typing import NoReturn

from semalign.common.contract import TOKEN_ENV
from semalign.common.errors import LatentsError, TransportError, UsageError
from semalign.deploy.serving.launcher import child_env, semalign_command

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
    secrets: str | None = None,
) -> list[str]:
    """The ``semalign user`` command line of one user (local launcher and docker-compose):
    with the user's ``secrets`` folder, else ``--insecure``."""
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
    argv += ["--secrets", secrets] if secrets else ["--insecure"]
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


#: What flower-supernode prints when the SuperLink refuses to activate it (with SuperNode
#: authentication: its key is not registered yet, e.g. the AP has not started yet). Its exit
#: status is 1 for every error, so the supervisor reads its output.
SUPERNODE_NOT_ACTIVATED = "Failed to activate SuperNode"
#: How long a user keeps restarting a SuperNode the SuperLink does not know yet.
REGISTER_WAIT_S = 3600.0


def become_supernode(args: argparse.Namespace, ordinal: int, cache: Path) -> None:
    """Run a Flower SuperNode whose node config describes this user (does not return).

    With --insecure this process becomes the SuperNode (exec). With SuperNode authentication
    it supervises it instead: the SuperNode exits when the SuperLink does not know its key yet
    (users may start before the AP has registered their keys), so it is started again every
    few seconds for up to ``REGISTER_WAIT_S``; SIGTERM/SIGINT stop it and all it started."""
    from semalign.deploy.flower.launch import supernode_argv

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
        "rejoin-grace-s": float(args.rejoin_grace),
    }
    argv = supernode_argv(
        args.superlink,
        args.runtime_port,
        node,
        root_ca=None if args.insecure else args.superlink_ca,
        auth_key=None if args.insecure else args.supernode_key,
    )
    home = args.flwr_home or os.environ.get("FLWR_HOME")
    home = Path(home) if home else Path(tempfile.gettempdir()) / f"semalign-flwr-{args.user_id}"
    env = child_env(home)
    sys.stdout.flush()
    sys.stderr.flush()
    if args.insecure:
        try:
            os.execve(argv[0], argv, env)
        except OSError as exc:
            raise UsageError(
                f"cannot start the Flower SuperNode ({argv[0]}): {exc.strerror}"
            ) from None
    sys.exit(supervise_supernode(argv, env, args.user_id))


def _forward(stream, refused) -> None:
    for line in iter(stream.readline, b""):
        sys.stdout.buffer.write(line)
        sys.stdout.flush()
        if SUPERNODE_NOT_ACTIVATED.encode() in line:
            refused.set()


def supervise_supernode(argv: list[str], env: dict[str, str], user_id: str) -> int:
    import subprocess
    import time

    import psutil
    from semalign.deploy.serving.launcher import sigterm_as_interrupt, terminate_tree

    deadline = time.monotonic() + REGISTER_WAIT_S
    pause = 5.0
    proc = None
    try:
        with sigterm_as_interrupt():
            while True:
                try:
                    proc = subprocess.Popen(
                        argv,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                    )
                except OSError as exc:
                    raise UsageError(
                        f"cannot start the Flower SuperNode ({argv[0]}): {exc.strerror}"
                    ) from None
                refused = threading.Event()
                # its log, passed on; a thread, since what it started (SuperExec, which exits
                # by itself when its parent is gone) may hold the pipe open after it exits
                threading.Thread(target=_forward, args=(proc.stdout, refused), daemon=True).start()
                code = proc.wait()
                time.sleep(0.5)  # its last lines
                if code == 0 or not refused.is_set() or time.monotonic() > deadline:
                    return code
                print(
                    f"{user_id}: the SuperLink does not accept this SuperNode yet (key not "
                    f"registered, or the AP not started); trying again in {pause:g} s",
                    file=sys.stderr,
                    flush=True,
                )
                time.sleep(pause)
                pause = min(pause * 1.5, 15.0)
    except KeyboardInterrupt:
        return 130
    finally:
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                terminate_tree([psutil.Process(proc.pid)])


def join_directly(args: argparse.Namespace, ordinal: int, cache: Path) -> NoReturn:
    """Join the AP's sessions over gRPC, then end the process (:func:`end_process`): exit
    code 0 if every session ended ok, else 1. Refused or unreachable before any session:
    UsageError."""
    from semalign.client.channel import open_channel
    from semalign.client.stream import run_user, user_factory
    from semalign.client.user import user_data_from_cache
    from semalign.common.contract import TlsFiles
    from semalign.deploy.serving.launcher import sigterm_as_interrupt

    token = args.token or os.environ.get(TOKEN_ENV)  # checked with the options
    if not token:
        raise UsageError(f"this user's token is needed: --token or ${TOKEN_ENV}")

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
    offers = []  # the sessions this user joined (a session lost is exit 1, not 2)

    def joining(offer):
        offers.append(offer)
        return factory(offer)

    try:
        with sigterm_as_interrupt():
            channel = open_channel(args.ap, tls=TlsFiles(args.tls_cert, args.tls_key, args.tls_ca))
            reports = run_user(
                args.ap,
                token,
                joining,
                channel=channel,  # left open: the process ends without gRPC's teardown
                connect_timeout=args.connect_timeout,
                user_id=args.user_id,
                on_session=None if args.quiet else print_session,
                rejoin_grace=args.rejoin_grace,
            )
    except TransportError as exc:
        if not offers:  # refused at the door, or no AP to reach: before any session
            raise UsageError(str(exc)) from None
        # in a session: the stream broke for longer than --rejoin-grace, or a refusal
        code = session_lost(args.user_id, offers[-1], exc)
    except LatentsError as exc:  # this user's own data
        raise UsageError(str(exc)) from None
    else:
        code = exit_code(reports)
    end_process(code)


#: Seconds a user process may take to end once it is done with the AP (a limit only: it ends
#: at once); past it, every thread's stack goes to stderr and it exits with code 1.
EXIT_LIMIT_S = 30.0


def end_process(code: int) -> NoReturn:
    """End this process with ``code`` now that its sessions are over, without gRPC's teardown.

    Every stream has ended and every line is written; what is left is gRPC's teardown:
    closing the process's last channel tears gRPC core down (``grpc_shutdown``: its timer,
    executor and I/O threads) in the calling thread while it holds the GIL, and the
    interpreter's exit would do the same for any gRPC object still alive and then wait for
    every non-daemon thread. Once, after an AP was killed and resumed, a user printed its
    session line and never exited, unmoved by SIGTERM: stuck in C code there. The kernel
    closes the connection and reclaims the threads, so the process flushes its output and
    leaves with ``os._exit``; faulthandler's watchdog (a C thread: it needs no GIL) writes
    every thread's stack to stderr and exits with code 1 should even that not be done within
    :data:`EXIT_LIMIT_S`.
    """
    faulthandler.dump_traceback_later(EXIT_LIMIT_S, exit=True)
    logging.shutdown()  # flushes the log handlers
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def exit_code(reports: list) -> int:
    """0 if every session ended ok; else 1, with the first failure's reason (e.g. the AP
    dropped this user for a message it refused) as one line on stderr."""
    failed = [r for r in reports if r.status != "ok"]
    if not failed:
        return 0
    first = failed[0]
    print(
        f"semalign user: {first.user_id} {first.status} in session {first.index + 1} "
        f"(seed {first.seed}): {first.detail}",
        file=sys.stderr,
        flush=True,
    )
    return 1


def session_lost(user_id: str, offer, exc: Exception) -> int:
    """A session this user joined and lost without a word from the AP: one line, exit 1
    (like a drop; ``reliability_options.USER_EXIT_EPILOG``)."""
    print(
        f"semalign user: {user_id} lost session {offer.index + 1} (seed {offer.config.seed}): "
        f"{exc}",
        file=sys.stderr,
        flush=True,
    )
    return 1


def print_session(report) -> None:
    """One line per finished session on stdout (the user's log)."""
    acc = report.report.get("accuracy")
    print(
        f"{report.user_id} session {report.index + 1} (seed {report.seed}): {report.status}"
        + (f", accuracy {acc:.3f}" if acc is not None else "")
        + f", {report.bytes_down} B down, {report.bytes_up} B up, {report.seconds:.2f} s"
        + (f", came back {report.rejoins}x" if report.rejoins else "")
        + (f" ({report.detail})" if report.detail else ""),
        flush=True,
    )
