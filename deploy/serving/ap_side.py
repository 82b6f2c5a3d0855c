"""The AP side shared by ``semalign run`` and ``semalign ap``.

Load the AP's latents and check the geometry before anything starts, start the gRPC alignment
service, then serve one session per seed (:func:`semalign.server.network.serve_sessions`, the
unchanged SessionDriver over gRPC links) while the children (Flower, or plain user processes)
run, stopping every child and the service however it ends, and finally write the results.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from semalign.common.config import AlignmentConfig
from semalign.common.errors import (
    CheckpointError,
    LatentsError,
    LaunchError,
    NoUsersError,
    TransportError,
    UsageError,
)
from semalign.common.records import RunResult, SeedResult
from semalign.deploy.flower.launch import FlowerRun
from semalign.deploy.serving.display import Display
from semalign.deploy.serving.launcher import Processes, sigterm_as_interrupt
from semalign.server.serve_settings import ServeSettings


def grpc_workers(users: int) -> int:
    """gRPC server threads, one per open stream: two per invited user (one reconnecting between
    sessions while its old stream ends) plus 16 for streams being refused. Streams beyond it get
    RESOURCE_EXHAUSTED at once, which users retry with backoff until their join timeout."""
    return 2 * users + 16


def make_workdir(path: str | None, prefix: str) -> Path:
    """``--workdir`` (created), or a new temporary folder."""
    workdir = Path(path or tempfile.mkdtemp(prefix=prefix))
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--workdir {workdir}: cannot create it ({exc.strerror})") from None
    return workdir


@dataclass
class Plan:
    """What the AP serves: its latents, the alignment config, the seeds, and how
    (:class:`~semalign.server.serve_settings.ServeSettings`: who to wait for, how long, where
    to save, the listeners)."""

    ap: str
    latents: Path
    ap_train: np.ndarray
    ap_test: np.ndarray
    config: AlignmentConfig
    seeds: list[int]
    settings: ServeSettings
    extra: dict[str, Any] = field(default_factory=dict)
    #: the Prometheus metrics the sessions feed (``--metrics-listen``; ``None``: none)
    metrics: Any = None
    #: the operator endpoints started with the service: "metrics" (URL), "health" (HOST:PORT)
    endpoints: dict[str, str] = field(default_factory=dict)
    #: each seed tracked round by round (``--track``: a ``SeedRuns``; ``None``: not tracked)
    tracked: Any = None

    @property
    def expected(self) -> int | list[str]:
        return self.settings.expected

    @property
    def users(self) -> int:
        return self.settings.users


def load_plan(
    latents: Path,
    ap: str,
    config: AlignmentConfig,
    seeds: list[int],
    settings: ServeSettings,
    *,
    extra: dict[str, Any] | None = None,
) -> Plan:
    """The AP's train/test latents and a geometry check (UsageError with one line)."""
    from semalign.common.latents import load_encoder_splits
    from semalign.server.access_point import build_access_point

    try:
        splits = load_encoder_splits(latents, ap)
    except LatentsError as exc:
        raise UsageError(str(exc)) from None
    info = {"latents": str(latents), "ap": ap, **(extra or {})}
    train, test = splits["train"].latents, splits["test"].latents
    plan = Plan(ap, latents, train, test, config, seeds, settings, info)
    try:  # the AP state machine on a few pilots: fails now on a bad geometry
        build_access_point(plan.ap_train[: max(2, min(len(plan.ap_train), 64))], config, plan.users)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return plan


def start_service(secret: str, plan: Plan):
    """The alignment service on ``plan.settings.listen``: (service, running server);
    UsageError if not.

    Users authenticate with ``user_token(secret, user_id)``; the server accepts messages up to
    :func:`~semalign.common.contract.receive_limit` of the plan's session and at most
    :func:`grpc_workers` streams; one address may hold ``max_streams_per_address`` of them
    (default: :data:`~semalign.common.network_defaults.MAX_STREAMS_PER_ADDRESS`). The settings'
    metrics and health listeners start the operator endpoints too (:func:`start_endpoints`).
    """
    from semalign.common.contract import receive_limit
    from semalign.common.latents import pilot_count
    from semalign.common.network_defaults import FIRST_MESSAGE_TIMEOUT, MAX_STREAMS_PER_ADDRESS
    from semalign.server.service import AlignmentService, start_server

    settings = plan.settings
    service = AlignmentService(
        secret,
        first_message_timeout=settings.first_message_timeout or FIRST_MESSAGE_TIMEOUT,
        max_streams_per_address=settings.max_streams_per_address or MAX_STREAMS_PER_ADDRESS,
    )
    n_pilots = pilot_count(len(plan.ap_train), plan.config.pilot_fraction)
    try:
        server = start_server(
            service,
            settings.listen,
            tls=settings.tls,
            max_workers=grpc_workers(plan.users),
            max_receive_bytes=receive_limit(plan.config, n_pilots),
        )
    except TransportError as exc:
        raise UsageError(str(exc)) from None
    try:
        start_endpoints(server, plan, settings.metrics_listen, settings.health_listen)
    except BaseException:
        server.stop(None)
        raise
    return service, server


def start_endpoints(server, plan: Plan, metrics_listen: str | None, health_listen: str | None):
    """Prometheus metrics on ``metrics_listen`` (``plan.metrics``, fed by every session) and
    the gRPC health service alone on ``health_listen``; both stop with ``server``. Their
    addresses go to ``plan.endpoints``; UsageError with one line if one cannot listen."""
    from semalign.deploy.options.observability import listen_address
    from semalign.server.service import start_health_server

    if health_listen:
        try:
            plan.endpoints["health"] = start_health_server(server, health_listen)
        except TransportError as exc:
            raise UsageError(f"--health-listen: {exc}") from None
    if metrics_listen:
        from semalign.server.metrics import ApMetrics

        plan.metrics = ApMetrics()
        endpoint = plan.metrics.serve(*listen_address("--metrics-listen", metrics_listen))
        server.companions.append(endpoint.stop)
        plan.endpoints["metrics"] = endpoint.url


def serve(service, plan: Plan, display: Display, check: Callable[[], dict[str, str]]) -> RunResult:
    """Every session of ``plan``; ``check`` runs while the first session waits for users and
    returns the users known lost meanwhile (``{user_id: reason}``; nobody waits for them)."""
    from semalign.server.access_point import build_access_point
    from semalign.server.network import SessionHooks, SessionsPlan, serve_sessions

    def poll(ids: list[str]) -> dict[str, str]:
        display.joined(ids)
        return check()

    progress = Progress(plan.settings.progress_file)

    def on_round(seed: int, record, wire) -> None:
        display.on_round(seed, record, wire)
        progress.round(seed, record.round, sorted(wire.bytes_up))
        if plan.tracked is not None:
            plan.tracked.on_round(seed, record)

    def on_seed(block: SeedResult) -> None:
        display.on_seed(block)
        if plan.tracked is not None:
            plan.tracked.on_seed(block)

    sessions = SessionsPlan(
        lambda cfg: build_access_point(plan.ap_train, cfg, plan.users),
        plan.config,
        plan.seeds,
        plan.ap_test,
        plan.extra,
    )
    hooks = SessionHooks(on_round, on_seed, display.on_joined, poll, plan.metrics)
    with display.progress:
        return serve_sessions(service, sessions, plan.settings, hooks)


class Progress:
    """The session's progress in a JSON file for monitors (``--progress-file``): seed, round
    and the users whose uploads the round carried; replaced atomically, at most every 0.5 s."""

    def __init__(self, path: str | None) -> None:
        self.path, self.last = path, 0.0

    def round(self, seed: int, round_index: int, users: list[str]) -> None:
        now = time.monotonic()
        if not self.path or now - self.last < 0.5:
            return
        from semalign.common.io import write_json

        self.last = now
        write_json(self.path, {"seed": seed, "round": round_index, "users": users})


def serve_with_children(
    service,
    server,
    procs: Processes,
    plan: Plan,
    display: Display,
    start_children: Callable[[], FlowerRun | None],
) -> tuple[RunResult, dict | None]:
    """Start the children, serve every session, stop children and service however it ends.

    Returns the results and, with Flower, the ServerApp's final reports. A user whose process
    or SuperNode is lost, or whose ClientApp fails, is a lost user (the session goes on without
    it). A child that is not a user (the SuperLink) dying, or no user joining: UsageError with
    one line naming the logs.
    """
    users = () if isinstance(plan.expected, int) else tuple(plan.expected)
    try:
        with sigterm_as_interrupt():
            flower = start_children()
            check = flower.check if flower else lambda: _lost_processes(procs, users)
            results = serve(service, plan, display, check)
            service.close()  # health: NOT_SERVING while the children stop
            reports = flower.final_reports() if flower else None
    except (NoUsersError, LaunchError) as exc:
        raise UsageError(f"{exc} (logs in {procs.log_dir})") from None
    except CheckpointError as exc:
        raise UsageError(f"{exc}; --fresh starts over (replacing it)") from None
    finally:
        procs.stop()
        server.stop()
    return results, reports


def print_endpoints(plan: Plan, say: Callable[[str], None]) -> None:
    """One line per operator endpoint started with the service (metrics URL, health)."""
    for name, where in plan.endpoints.items():
        say(f"{name} on {where}")


def _lost_processes(procs: Processes, users: tuple[str, ...]) -> dict[str, str]:
    """The user processes that exited (LaunchError if any other child did)."""
    return {uid: f"its process {why}" for uid, why in procs.check(expendable=users).items()}


def finish(
    results: RunResult,
    deployment: dict[str, Any],
    t_start: float,
    display: Display,
    out: str,
) -> int:
    """Attach the deployment figures, show the tables, write the results JSON (once); the exit
    code: 0, or 3 when users were lost (:mod:`semalign.deploy.options.reliability`)."""
    from semalign.common.io import write_json
    from semalign.deploy.options.reliability import EXIT_OK, EXIT_USERS_LOST

    deployment["total_s"] = time.perf_counter() - t_start
    results = results.with_deployment(deployment)
    if not display.quiet:
        display.summary(results)
    path = write_json(out, results.to_dict())
    display.print(f"results written to {path}")
    for lost in results.lost or []:
        display.print(f"lost: {lost.user} in seed {lost.seed}: {lost.reason}")
    return EXIT_USERS_LOST if results.lost else EXIT_OK
