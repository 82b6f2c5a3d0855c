"""``semalign run``, ``semalign ap`` and ``semalign user``: the networked system.

* ``semalign run``: everything on loopback. The AP (this process: alignment gRPC service; with
  Flower also a SuperLink and the ServerApp it spawns) and one process per user (with Flower a
  SuperNode whose ClientApp joins the AP's gRPC service; without, ``semalign user --ap``).
* ``semalign ap``: the AP of a real deployment (listen/advertise addresses, TLS, token).
* ``semalign user``: one user of a real deployment, either a Flower SuperNode (``--superlink``;
  the invitation tells it where the AP is) or a direct gRPC client (``--ap``).

The protocol is not here: the AP runs :func:`semalign.server.network.serve_sessions` (the
unchanged SessionDriver over gRPC links), a user :func:`semalign.client.stream.run_user`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import secrets
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from semalign.deploy.launcher import (
    LaunchError,
    Processes,
    child_env,
    free_port,
    start_flower_run,
    superlink_argv,
    supernode_argv,
    tool,
    wait_for_port,
    write_cli_config,
)

from semalign.commands.options import HelpFormatter

log = logging.getLogger(__name__)

DEFAULT_GROUP = "paper-users"
DEFAULT_PORT = 50051
DEFAULT_SUPERLINK_PORT = 9092


def _user_error(message: str) -> Exception:
    from semalign.common.errors import UsageError

    return UsageError(message)


# ---------------------------------------------------------------------------- shared pieces
def resolve_users(spec: str, latents: Path | None, ap: str) -> list[str]:
    """``--users``: a count N, a group name, or comma-separated encoder names.

    N takes the first N encoders of the default group (``paper-users``), or with ``--latents``
    the first N encoders of that cache other than the AP's, repeating them if N is larger.
    """
    from semalign.common.latents import available_encoders

    from semalign.encoders import registry

    spec = spec.strip()
    if spec.isdigit():
        count = int(spec)
        if count < 1:
            raise _user_error("--users must be at least 1")
        if latents is not None:
            pool = [e for e in available_encoders(latents) if e != ap]
            if not pool:
                raise _user_error(f"no user encoders in {latents}")
        else:
            pool = list(registry.GROUPS[DEFAULT_GROUP])
        return [pool[i % len(pool)] for i in range(count)]
    if latents is not None and spec not in registry.GROUPS:
        return [u.strip() for u in spec.split(",") if u.strip()]
    try:
        return registry.resolve_encoders(spec)
    except ValueError as exc:
        raise _user_error(str(exc)) from None


def ensure_cache(dataset: str, encoders: list[str], cache_dir: str | None) -> Path:
    """The latent cache for ``encoders``, encoding on first use (the encoders package)."""
    try:
        from semalign.encoders import default_cache_dir, ensure_latents
    except ImportError:
        raise _user_error(
            "encoding latents needs the encoders package (semalign.encoders.ensure_latents); "
            "give a latent cache with --latents DIR"
        ) from None
    return Path(
        ensure_latents(dataset, encoders, Path(cache_dir or default_cache_dir()), progress=True)
    )


def add_tls_arguments(parser: argparse.ArgumentParser, side: str) -> None:
    group = parser.add_argument_group("TLS (alignment service)")
    own = "the AP's" if side == "ap" else "this user's client"
    group.add_argument("--tls-cert", help=f"{own} certificate (PEM)")
    group.add_argument("--tls-key", help=f"{own} private key (PEM)")
    group.add_argument(
        "--tls-ca",
        help="CA certificate to verify users (mutual TLS)"
        if side == "ap"
        else "CA certificate to verify the AP",
    )


def _tls(args):
    from semalign.common.contract import TlsFiles

    return TlsFiles(args.tls_cert, args.tls_key, args.tls_ca)


def derive_ordinal(user_id: str) -> int:
    match = re.search(r"(\d+)$", user_id)
    if not match or int(match[1]) < 1:
        raise _user_error(f"cannot derive --ordinal from user id {user_id!r}; give --ordinal")
    return int(match[1]) - 1


def semalign_command() -> list[str]:
    """How to start ``semalign`` as a child: the console script next to this interpreter.

    (Not ``python -m semalign.cli``: run as ``__main__`` the module is imported twice and its
    UsageError is no longer caught as a one-line error.)
    """
    script = tool("semalign")
    if Path(script).exists():
        return [script]
    return [sys.executable, "-c", "import sys; from semalign.cli import main; sys.exit(main())"]


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


@contextlib.contextmanager
def sigterm_as_interrupt():
    """SIGTERM ends a command like Ctrl-C does (children are stopped in ``finally``)."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _fmt_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


class Display:
    """Live progress (rich) and the final tables, on stderr."""

    def __init__(self, config, seeds: list[int], users: int, quiet: bool) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        self.config, self.quiet, self.users = config, quiet, users
        steps = config.iterations if config.strategy in ("fed", "multi-link") else 1
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=quiet,
        )
        self.task = self.progress.add_task(config.strategy, total=steps * len(seeds), info="")
        self.steps = steps
        self.first_joined_at: float | None = None

    def status(self, text: str) -> None:
        self.progress.update(self.task, info=text)

    def joined(self, ids: list[str]) -> None:
        self.status(f"waiting for users: {len(ids)}/{self.users} joined")

    def on_joined(self, seed: int, ids: list[str]) -> None:
        if self.first_joined_at is None:
            self.first_joined_at = time.perf_counter()
        self.status(f"seed {seed}: {len(ids)}/{self.users} users joined, handshake")

    def on_round(self, seed: int, record, wire) -> None:
        down, up = sum(wire.bytes_down.values()), sum(wire.bytes_up.values())
        self.progress.update(
            self.task,
            advance=1,
            info=(
                f"seed {seed} round {record.round + 1}/{self.config.iterations} "
                f"mse {record.mse:.4f} r {record.primal_residual:.2e} "
                f"s {record.dual_residual:.2e} down {_fmt_bytes(down)} up {_fmt_bytes(up)} "
                f"{wire.latency_s * 1e3:.1f} ms"
            ),
        )

    def on_seed(self, block: dict) -> None:
        if self.steps == 1:
            self.progress.update(self.task, advance=1)
        self.status(f"seed {block['seed']}: mean accuracy {block['mean_accuracy']:.3f}")

    def summary(self, results: dict) -> None:
        from rich.table import Table

        from semalign.summary import print_summary

        print_summary(results, self.console)
        net = results["network"]
        table = Table(title="wire (gRPC boundary)")
        for col in ("rounds", "latency p50", "latency p95", "down/round", "up/round"):
            table.add_column(col, justify="right")
        ms = lambda v: "-" if v is None else f"{v * 1e3:.1f} ms"  # noqa: E731
        table.add_row(
            str(net["rounds"]),
            ms(net["latency_p50_s"]),
            ms(net["latency_p95_s"]),
            _fmt_bytes(net["bytes_down_per_round"] or 0),
            _fmt_bytes(net["bytes_up_per_round"] or 0),
        )
        self.console.print(table)
        dep = net.get("deployment", {})
        if dep:
            prepare = dep.get("prepare_s")
            self.console.print(
                f"deployment: {dep.get('mode')}, {dep.get('users')} user processes, "
                + (f"latents ready after {prepare:.1f} s, " if prepare is not None else "")
                + f"users joined {dep.get('startup_s', 0):.1f} s later, "
                f"total {dep.get('total_s', 0):.1f} s"
            )


def serve(
    service,
    ap_train,
    ap_test,
    config,
    seeds,
    expected,
    *,
    display: Display,
    join_timeout: float,
    reply_timeout: float,
    check=None,
    extra: dict | None = None,
) -> dict[str, Any]:
    from semalign.server.access_point import build_access_point
    from semalign.server.network import serve_sessions

    count = expected if isinstance(expected, int) else len(expected)

    def poll(ids: list[str]) -> None:
        display.joined(ids)
        if check:
            check()

    with display.progress:
        return serve_sessions(
            service,
            lambda cfg: build_access_point(ap_train, cfg, count),
            config,
            seeds,
            expected,
            ap_test,
            join_timeout=join_timeout,
            reply_timeout=reply_timeout,
            on_round=display.on_round,
            on_seed=display.on_seed,
            on_joined=display.on_joined,
            poll=poll,
            extra=extra,
        )


def read_reports(path: Path) -> dict | None:
    """The ServerApp's status file (rewritten as Flower replies arrive), if readable."""
    with contextlib.suppress(ValueError, OSError):
        return json.loads(path.read_text())
    return None


def wait_for_reports(path: Path, timeout: float) -> dict | None:
    """Wait until the ServerApp has every user's final report (or ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        status = read_reports(path)
        if status and status.get("done"):
            break
        time.sleep(0.1)
    return status


def check_flower(path: Path, procs: Processes):
    """Fail fast while waiting for users: a dead child, or a ClientApp that reported an error."""

    def check() -> None:
        procs.check()
        status = read_reports(path)
        if not status:
            return
        reports = status["reports"].items()
        failed = {u: r.get("error", "") for u, r in reports if r["status"] != "ok"}
        if failed or status["errors"]:
            detail = "; ".join([f"{u}: {e}" for u, e in failed.items()] + status["errors"])
            raise LaunchError(f"Flower reports a failed user: {detail}")

    return check


def workers(users: int) -> int:
    """gRPC server threads: one per open stream (users reconnecting between sessions too)."""
    return max(64, 2 * users + 8)


def _load_ap(latents_dir: Path, ap: str):
    from semalign.common.latents import LatentsError, load_encoder_splits

    try:
        return load_encoder_splits(latents_dir, ap)
    except LatentsError as exc:
        raise _user_error(str(exc)) from None


def _check_geometry(ap_train, config, users: int) -> None:
    from semalign.server.access_point import build_access_point

    try:
        build_access_point(ap_train[: max(2, min(len(ap_train), 64))], config, users)
    except ValueError as exc:
        raise _user_error(str(exc)) from None


# ---------------------------------------------------------------------------- semalign run
def run_run(args: argparse.Namespace) -> int:
    from semalign.common.contract import TransportError
    from semalign.common.io import write_json
    from semalign.server.network import NoUsersError
    from semalign.server.service import AlignmentService, start_server

    from semalign.commands.options import config_from_args, parse_seeds
    from semalign.engine.scenario import user_names

    t_start = time.perf_counter()
    config = config_from_args(args)
    seeds = parse_seeds(args.seeds)
    from semalign.encoders import registry

    ap = args.ap or registry.DEFAULT_AP
    latents = Path(args.latents) if args.latents else None
    encoders = resolve_users(args.users, latents, ap)
    ids = user_names(encoders)
    if latents is None:
        # Encode once, one encoder after another, before the user processes start: ten users
        # training at once on a small machine would only thrash. Each user process then loads
        # its own encoder's latents from this cache (--latents), without re-validating it.
        cache = ensure_cache(args.dataset, [ap, *encoders], args.cache_dir)
    else:
        cache = latents
    ap_splits = _load_ap(cache, ap)
    _check_geometry(ap_splits["train"].latents, config, len(encoders))
    t_ready = time.perf_counter()

    token = secrets.token_urlsafe(24)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="semalign-run-"))
    workdir.mkdir(parents=True, exist_ok=True)
    service = AlignmentService(token)
    try:
        server = start_server(service, args.listen, max_workers=workers(len(encoders)))
    except TransportError as exc:
        raise _user_error(str(exc)) from None
    display = Display(config, seeds, len(encoders), args.quiet)
    procs = Processes(workdir / "logs")
    reports_file = workdir / "flower-reports.json"
    deployment: dict[str, Any] = {"mode": "flower" if args.flower else "direct"}
    deployment.update(users=len(encoders), workdir=str(workdir))
    if not args.quiet:
        display.console.print(
            f"AP {ap} + {len(encoders)} users ({'Flower SuperNodes' if args.flower else 'direct'}"
            f"), alignment service on {server.address}, logs in {procs.log_dir}"
        )
    try:
        with sigterm_as_interrupt():
            if args.flower:
                _start_flower_local(
                    procs, workdir, server.address, token, ids, encoders, cache, args
                )
                deployment["flower_run_submitted_s"] = time.perf_counter() - t_start
            else:
                for ordinal, (uid, enc) in enumerate(zip(ids, encoders, strict=True)):
                    argv = user_argv(
                        uid,
                        ordinal,
                        enc,
                        ap=server.address,
                        latents=str(cache),
                    )
                    env = child_env(single_thread=True, SEMALIGN_TOKEN=token)
                    procs.start(uid, argv, env)
            try:
                results = serve(
                    service,
                    ap_splits["train"].latents,
                    ap_splits["test"].latents,
                    config,
                    seeds,
                    ids,
                    display=display,
                    join_timeout=args.join_timeout,
                    reply_timeout=args.reply_timeout,
                    check=check_flower(reports_file, procs) if args.flower else procs.check,
                    extra={"latents": str(cache), "ap": ap, "users": encoders},
                )
            except (NoUsersError, LaunchError) as exc:
                raise _user_error(f"{exc} (logs in {procs.log_dir})") from None
            deployment["prepare_s"] = t_ready - t_start
            deployment["startup_s"] = (display.first_joined_at or t_ready) - t_ready
            if args.flower:
                deployment["flower_reports"] = wait_for_reports(reports_file, 20.0)
    finally:
        procs.stop()
        server.stop()
    deployment["total_s"] = time.perf_counter() - t_start
    results["network"]["deployment"] = deployment
    if not args.quiet:
        display.summary(results)
    path = write_json(args.out, results)
    if not args.quiet:
        display.console.print(f"results written to {path}")
    return 0


def _start_flower_local(
    procs, workdir, service_address, token, ids, encoders, cache: Path, args
) -> None:
    """SuperLink + one SuperNode per user on loopback, then the Flower run (invitations)."""
    port = free_port()
    superlink = f"127.0.0.1:{port}"
    procs.start(
        "superlink", superlink_argv("127.0.0.1", port), child_env(workdir / "flwr" / "superlink")
    )
    for ordinal, (uid, enc) in enumerate(zip(ids, encoders, strict=True)):
        argv = user_argv(
            uid,
            ordinal,
            enc,
            superlink=superlink,
            latents=str(cache),
            runtime_port=free_port(),
        )
        procs.start(uid, argv, child_env(workdir / "flwr" / uid, single_thread=True))
    wait_for_port("127.0.0.1", port, 60.0, procs)
    cli_home = workdir / "flwr" / "cli"
    write_cli_config(cli_home, superlink)
    start_flower_run(
        cli_home,
        {
            "service-address": service_address,
            "token": token,
            "tls": False,
            "users": len(ids),
            "node-wait-s": float(args.join_timeout),
            "session-timeout-s": 86400.0,
            "report-file": str(workdir / "flower-reports.json"),
        },
    )


def _add_common_ap_arguments(parser: argparse.ArgumentParser) -> None:
    from semalign.commands.options import add_alignment_arguments

    parser.add_argument(
        "--latents",
        help="latent cache <dir>/<encoder>/{train,val,test}.npz (default: the digits cache, "
        "encoded on first use)",
    )
    parser.add_argument("--ap", help="AP encoder (default: the registry's default AP)")
    parser.add_argument("--dataset", default="digits", help="dataset to encode without --latents")
    parser.add_argument("--cache-dir", help="latent cache directory (default: the encoders')")
    add_alignment_arguments(parser)
    parser.add_argument(
        "--join-timeout",
        type=float,
        default=600.0,
        help="seconds to wait for users to join a session",
    )
    parser.add_argument(
        "--reply-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for a user's reply before dropping it",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress or tables")


def register(subparsers) -> None:
    fmt = HelpFormatter
    run = subparsers.add_parser(
        "run",
        help="AP and one process per user on loopback, over gRPC (Flower supervises users)",
        description="The networked system on this machine: the AP's gRPC alignment service "
        "(plus a Flower SuperLink) and one process per user (a Flower SuperNode whose ClientApp "
        "runs the user's side over one gRPC stream). Same options and results as `simulate`, "
        "plus wire figures per round.",
        formatter_class=fmt,
    )
    _add_common_ap_arguments(run)
    run.add_argument(
        "--users",
        default=DEFAULT_GROUP,
        help="a count N (the first N of the default group), a group name, or encoder names",
    )
    run.add_argument(
        "--flower",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Flower SuperLink/SuperNodes supervise the users (--no-flower: plain processes)",
    )
    run.add_argument("--listen", default="127.0.0.1:0", help="alignment service address")
    run.add_argument("--workdir", help="logs and Flower homes (default: a new temp dir)")
    run.add_argument("--out", default="results/run.json", help="write the results JSON here")
    run.set_defaults(func=run_run)

    ap = subparsers.add_parser(
        "ap",
        help="the AP of a deployment: gRPC alignment service (and a Flower SuperLink)",
        description="Serve the alignment protocol to users on other hosts.",
        formatter_class=fmt,
    )
    _add_common_ap_arguments(ap)
    ap.add_argument(
        "--users",
        required=True,
        help="how many users to wait for (N), or their comma-separated user ids",
    )
    ap.add_argument(
        "--listen", default=f"0.0.0.0:{DEFAULT_PORT}", help="alignment service listen address"
    )
    ap.add_argument(
        "--advertise",
        help="the service address as users reach it (default: --listen, with this host's name "
        "for 0.0.0.0)",
    )
    ap.add_argument("--token", help=f"session token (default: ${'SEMALIGN_TOKEN'} or random)")
    add_tls_arguments(ap, "ap")
    ap.add_argument(
        "--flower",
        action="store_true",
        help="also run a Flower SuperLink and invite the users' SuperNodes through it",
    )
    ap.add_argument(
        "--superlink-listen",
        default=f"0.0.0.0:{DEFAULT_SUPERLINK_PORT}",
        help="Flower SuperLink address (with --flower)",
    )
    ap.add_argument("--workdir", help="logs and Flower homes (default: a new temp dir)")
    ap.add_argument("--out", default="results/ap.json", help="write the results JSON here")
    ap.set_defaults(func=run_ap)

    user = subparsers.add_parser(
        "user",
        help="one user of a deployment (Flower SuperNode, or direct gRPC client)",
        description="A user process: its own encoder and private latents. With --superlink it "
        "runs a Flower SuperNode whose ClientApp joins the AP named in Flower's invitation; "
        "with --ap it connects to the AP's alignment service directly.",
        formatter_class=fmt,
    )
    where = user.add_mutually_exclusive_group(required=True)
    where.add_argument("--ap", help="the AP's alignment service HOST:PORT (direct gRPC)")
    where.add_argument("--superlink", help="the Flower SuperLink HOST:PORT (Flower deployment)")
    user.add_argument("--user-id", required=True, help="unique user id, e.g. user3")
    user.add_argument(
        "--ordinal",
        type=int,
        help="0-based position (with the seed it seeds the emulated channel; default: the "
        "user id's trailing number - 1)",
    )
    user.add_argument("--encoder", required=True, help="this user's encoder (timm name)")
    user.add_argument("--latents", help="latent cache dir (default: encode --dataset on first use)")
    user.add_argument("--dataset", default="digits", help="dataset to encode without --latents")
    user.add_argument("--cache-dir", help="latent cache directory (default: the encoders')")
    user.add_argument("--antennas-rx", type=int, help="override N_R offered by the AP")
    user.add_argument("--snr-db", type=float, help="override the SNR offered by the AP")
    user.add_argument("--token", help="session token for --ap (default: $SEMALIGN_TOKEN)")
    add_tls_arguments(user, "user")
    user.add_argument(
        "--superlink-ca", help="CA certificate of the SuperLink (default: --insecure)"
    )
    user.add_argument(
        "--runtime-port", type=int, default=9094, help="the SuperNode's local runtime API port"
    )
    user.add_argument("--flwr-home", help="FLWR_HOME of the SuperNode (default: per user id)")
    user.add_argument(
        "--connect-timeout", type=float, default=60.0, help="seconds to keep trying the AP"
    )
    user.set_defaults(func=run_user_cmd)


# ---------------------------------------------------------------------------- semalign ap
def _advertised(listen: str, advertise: str | None, port: int) -> str:
    import socket

    from semalign.common.contract import check_address

    if advertise:
        check_address(advertise, what="--advertise address")
        return advertise
    host, _ = check_address(listen, what="--listen address")
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"{host}:{port}"


def run_ap(args: argparse.Namespace) -> int:
    from semalign.common.contract import TOKEN_ENV, TransportError, check_address
    from semalign.common.io import write_json
    from semalign.server.network import NoUsersError
    from semalign.server.service import AlignmentService, start_server

    from semalign.commands.options import config_from_args, parse_seeds

    t_start = time.perf_counter()
    config = config_from_args(args)
    seeds = parse_seeds(args.seeds)
    from semalign.encoders import registry

    ap = args.ap or registry.DEFAULT_AP
    cache = Path(args.latents) if args.latents else ensure_cache(args.dataset, [ap], args.cache_dir)
    ap_splits = _load_ap(cache, ap)
    spec = args.users.strip()
    expected: int | list[str] = (
        int(spec) if spec.isdigit() else [u.strip() for u in spec.split(",") if u.strip()]
    )
    count = expected if isinstance(expected, int) else len(expected)
    if count < 1:
        raise _user_error("--users must name at least one user")
    _check_geometry(ap_splits["train"].latents, config, count)
    token = args.token or os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(24)
    tls = _tls(args)
    try:
        service = AlignmentService(token)
        server = start_server(service, args.listen, tls=tls, max_workers=workers(count))
        advertise = _advertised(args.listen, args.advertise, server.port)
    except TransportError as exc:
        raise _user_error(str(exc)) from None
    display = Display(config, seeds, count, args.quiet)
    display.console.print(f"alignment service on {server.address}, advertised as {advertise}")
    if not (args.token or os.environ.get(TOKEN_ENV)):
        display.console.print(f"session token (give it to users as ${TOKEN_ENV}): {token}")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="semalign-ap-"))
    procs = Processes(workdir / "logs")
    deployment: dict[str, Any] = {"mode": "flower" if args.flower else "direct", "users": count}
    try:
        with sigterm_as_interrupt():
            if args.flower:
                try:
                    host, port = check_address(args.superlink_listen, what="--superlink-listen")
                except TransportError as exc:
                    raise _user_error(str(exc)) from None
                tls_files = (
                    {"cert": tls.cert, "key": tls.key, "ca": tls.ca or ""} if tls.enabled else None
                )
                procs.start(
                    "superlink",
                    superlink_argv(host, port, tls=tls_files),
                    child_env(workdir / "flwr" / "superlink"),
                )
                local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
                wait_for_port(local, port, 60.0, procs)
                cli_home = workdir / "flwr" / "cli"
                root_ca = tls.ca if tls.enabled else None
                write_cli_config(cli_home, f"{local}:{port}", root_ca=root_ca)
                start_flower_run(
                    cli_home,
                    {
                        "service-address": advertise,
                        "token": token,
                        "tls": tls.enabled,
                        "users": count,
                        "node-wait-s": float(args.join_timeout),
                        "session-timeout-s": 86400.0,
                        "report-file": str(workdir / "flower-reports.json"),
                    },
                )
            try:
                results = serve(
                    service,
                    ap_splits["train"].latents,
                    ap_splits["test"].latents,
                    config,
                    seeds,
                    expected,
                    display=display,
                    join_timeout=args.join_timeout,
                    reply_timeout=args.reply_timeout,
                    check=check_flower(workdir / "flower-reports.json", procs)
                    if args.flower
                    else procs.check,
                    extra={"latents": str(cache), "ap": ap},
                )
            except (NoUsersError, LaunchError) as exc:
                raise _user_error(str(exc)) from None
            if args.flower:
                deployment["flower_reports"] = wait_for_reports(
                    workdir / "flower-reports.json", 20.0
                )
    finally:
        procs.stop()
        server.stop()
    deployment["total_s"] = time.perf_counter() - t_start
    results["network"]["deployment"] = deployment
    if not args.quiet:
        display.summary(results)
    display.console.print(f"results written to {write_json(args.out, results)}")
    return 0


# ---------------------------------------------------------------------------- semalign user
def run_user_cmd(args: argparse.Namespace) -> int:
    from semalign.common.contract import TOKEN_ENV, TransportError, check_address
    from semalign.common.latents import LatentsError, load_encoder_splits

    ordinal = args.ordinal if args.ordinal is not None else derive_ordinal(args.user_id)
    try:
        check_address(args.ap or args.superlink, what="AP address" if args.ap else "--superlink")
    except TransportError as exc:
        raise _user_error(str(exc)) from None
    # Each user loads its own encoder's latents, or encodes the dataset with its own encoder
    # on first use, before it is ready to join (so an invitation never waits on training).
    cache = (
        Path(args.latents)
        if args.latents
        else ensure_cache(args.dataset, [args.encoder], args.cache_dir)
    )
    try:  # fail now, with one line, rather than after joining the AP
        load_encoder_splits(cache, args.encoder)
    except LatentsError as exc:
        raise _user_error(str(exc)) from None
    if args.superlink:
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
        os.execvpe(tool("flower-supernode"), argv, env)  # the SuperNode replaces this process
    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        raise _user_error(f"a session token is needed: --token or ${TOKEN_ENV}")
    from semalign.client.stream import run_user, user_factory
    from semalign.client.user import user_data_from_cache

    def load(pilot_fraction: float):
        return user_data_from_cache(cache, args.encoder, pilot_fraction)

    factory = user_factory(
        args.user_id,
        args.encoder,
        ordinal,
        load,
        antennas_rx=args.antennas_rx,
        snr_db=args.snr_db,
    )

    def on_session(report) -> None:
        acc = report.report.get("accuracy")
        print(
            f"{report.user_id} session {report.index + 1} (seed {report.seed}): {report.status}"
            + (f", accuracy {acc:.3f}" if acc is not None else "")
            + f", {report.bytes_down} B down, {report.bytes_up} B up, {report.seconds:.2f} s"
            + (f" ({report.detail})" if report.detail else ""),
            flush=True,
        )

    try:
        with sigterm_as_interrupt():
            reports = run_user(
                args.ap,
                token,
                factory,
                tls=_tls(args),
                connect_timeout=args.connect_timeout,
                user_id=args.user_id,
                on_session=on_session,
            )
    except (TransportError, LatentsError) as exc:  # unreachable AP, or this user's own data
        raise _user_error(str(exc)) from None
    return 0 if all(r.status == "ok" for r in reports) else 1
