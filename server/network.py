"""The AP's networked sessions: lobby, unchanged SessionDriver, wire measurements, results.

For each seed the AP opens a lobby on the alignment service, waits for the invited users, runs
the same :class:`~semalign.server.session.SessionDriver` the simulator runs (over
:class:`~semalign.server.service.GrpcLink` objects instead of loopback links) and records, per
round, the bytes each user's stream carried across the gRPC boundary and the round latency. The
results are the simulator's (:func:`~semalign.server.results.seed_result` /
:func:`~semalign.server.results.run_result`) plus a ``wire`` block per seed and a top-level
``network`` summary, ``measured_by`` and ``lost``: one typed :class:`RunResult`, the same
whether the run went through or continued from a checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import grpc
import numpy as np
from semalign.common.config import AlignmentConfig
from semalign.common.contract import SessionOffer
from semalign.common.errors import NoUsersError
from semalign.common.network_records import WireBlock, WireRound, WireUser
from semalign.common.records import RoundRecord, RunResult, SeedResult, UserReport
from semalign.server import checkpoint as checkpoints
from semalign.server.access_point import AccessPoint
from semalign.server.metrics import NoMetrics
from semalign.server.network_results import (
    label_self_reported,
    lost_users,
    network_summary,
    percentile,
)
from semalign.server.results import run_result, seed_result
from semalign.server.serve_settings import ServeSettings
from semalign.server.service import AlignmentService, GrpcLink
from semalign.server.session import RestoredSession, SessionDriver, SessionResult, WaitPolicy

log = logging.getLogger(__name__)


def refusal(ap: AccessPoint, user_id: str) -> str:
    """Why the AP did not register ``user_id``."""
    return ap.refused.get(user_id, "the AP could not register this user")


def end_if_not_served(ap: AccessPoint, link: GrpcLink) -> bool:
    """End ``link``'s stream at once with the AP's reason if its user was dropped (ABORTED)
    or never registered (INVALID_ARGUMENT); False, and the stream untouched, otherwise."""
    state = ap.users.get(link.user_id)
    if state is not None and state.dropped:
        link.abort(f"dropped by the AP at {state.dropped}")
    elif state is None:
        reason = refusal(ap, link.user_id)
        link.abort(f"handshake refused: {reason}", grpc.StatusCode.INVALID_ARGUMENT)
    else:
        return False
    return True


class MeasuredDriver(SessionDriver):
    """SessionDriver plus gRPC-boundary byte counters per round and drop times.

    Only measurement is added; the protocol order is the base class's.
    """

    def __init__(
        self,
        ap: AccessPoint,
        links: Sequence[GrpcLink],
        *,
        policy: WaitPolicy,
        on_round: Callable[[RoundRecord, WireRound], None] | None = None,
        checkpoint: Callable[[SessionDriver], None] | None = None,
        restored: RestoredSession | None = None,
        wire_rounds: Sequence[WireRound] = (),
        metrics: NoMetrics | None = None,
    ) -> None:
        super().__init__(
            ap,
            links,
            policy=policy,
            on_round=self._measured,
            checkpoint=checkpoint,
            resumed=restored is not None,
            restored=restored,
            metrics=metrics,
        )
        self.grpc_links = {link.user_id: link for link in links}
        self.wire_rounds: list[WireRound] = list(wire_rounds)
        self.drop_times: dict[str, float] = {}
        self.timings: dict[str, float] = {}
        self._callback = on_round
        self._before: dict[str, tuple[int, int]] = {}
        self._t0 = time.perf_counter()

    def _snapshot(self) -> dict[str, tuple[int, int]]:
        return {uid: link.counters() for uid, link in self.grpc_links.items()}

    def handshake(self) -> None:
        start = time.perf_counter()
        try:
            super().handshake()
        finally:
            self.timings["handshake_s"] = time.perf_counter() - start
            self._refuse_unregistered()

    def _refuse_unregistered(self) -> None:
        """End at once, with the AP's reason, the streams whose handshake the AP refused."""
        for user_id, link in self.grpc_links.items():
            if user_id not in self.links:
                end_if_not_served(self.ap, link)

    def admm_round(self) -> RoundRecord:
        self._before = self._snapshot()
        return super().admm_round()

    def _measured(self, record: RoundRecord) -> None:
        after = self._snapshot()
        down, up = {}, {}
        for uid, (d, u) in after.items():
            d0, u0 = self._before.get(uid, (d, u))
            if d - d0 or u - u0:
                down[uid], up[uid] = d - d0, u - u0
        wire = WireRound(record.round, record.seconds, down, up)
        self.wire_rounds.append(wire)
        if self._callback:
            self._callback(record, wire)

    def _drop(self, user_id: str, reason: str) -> None:
        """Drop the user and end its stream at once with the reason (status ABORTED)."""
        self.drop_times.setdefault(user_id, time.perf_counter() - self._t0)
        super()._drop(user_id, reason)
        link = self.grpc_links.get(user_id)
        state = self.ap.users.get(user_id)
        if link is not None and state is not None and state.dropped:
            link.abort(f"dropped by the AP at {state.dropped}")


def serve_session(
    service: AlignmentService,
    ap: AccessPoint,
    offer: SessionOffer,
    expected: Sequence[str] | int,
    test_latents: np.ndarray,
    test_ids: np.ndarray,
    *,
    join_timeout: float | None,
    policy: WaitPolicy,
    on_round: Callable[[RoundRecord, WireRound], None] | None = None,
    on_joined: Callable[[list[str]], None] | None = None,
    poll: Callable[[list[str]], dict[str, str] | None] | None = None,
    required: set[str] | None = None,
    checkpoint: Callable[[SessionDriver], None] | None = None,
    restored: tuple[RestoredSession, list[WireRound]] | None = None,
    metrics: NoMetrics | None = None,
) -> tuple[SessionResult, WireBlock]:
    """Gather the users of one session and run it; returns the result and its wire block.

    ``poll(joined_ids)`` is called while waiting for users (progress, child checks; it may
    return the users known lost meanwhile, ``{user_id: reason}``, whom nobody waits for);
    ``required``: start once these have joined (see :class:`Lobby`); ``checkpoint``: called
    after the handshake and each round; ``restored``: the session continues from a checkpoint
    (:func:`semalign.server.checkpoint.restore`, and the wire rounds measured before).
    """
    opened = time.perf_counter()
    lobby = service.open_lobby(offer, expected, required)
    links = lobby.wait(join_timeout, poll)
    join_s = time.perf_counter() - opened
    if on_joined:
        on_joined([link.user_id for link in links])
    if not links:
        lobby.end()
        raise _no_users(offer, join_timeout, lobby.lost)
    driver = MeasuredDriver(
        ap,
        links,
        policy=policy,
        on_round=on_round,
        checkpoint=checkpoint,
        restored=restored[0] if restored else None,
        wire_rounds=restored[1] if restored else (),
        metrics=metrics,
    )
    lobby.progress = lambda: ap.round
    start = time.perf_counter()
    try:
        result = driver.run(test_latents, test_ids)
    finally:
        _end_streams(ap, lobby, links)
    refused = {
        link.user_id: refusal(ap, link.user_id) for link in links if link.user_id not in ap.users
    }
    session_s = time.perf_counter() - start
    wire = _wire_block(driver, lobby, links, (join_s, session_s), (result, refused))
    for uid, reason in lobby.missing_reasons.items():
        log.warning("%s did not join session %s: %s", uid, offer.session_id, reason)
    return result, wire


def _end_streams(ap: AccessPoint, lobby, links: list[GrpcLink]) -> None:
    """Close the lobby and end every stream: with the AP's reason for a user it dropped or
    refused, normally for the others."""
    lobby.end()
    for link in links:
        if not end_if_not_served(ap, link):
            link.finish()


def _no_users(
    offer: SessionOffer, join_timeout: float | None, lost: dict[str, str]
) -> NoUsersError:
    """The error of a session nobody joined, with the users known lost and why."""
    within = f" within {join_timeout:g} s" if join_timeout is not None else ""
    reasons = "".join(f"; {uid}: {reason}" for uid, reason in lost.items())
    return NoUsersError(f"no user joined session {offer.session_id}{within}{reasons}")


def _wire_block(
    driver: MeasuredDriver,
    lobby,
    links: list[GrpcLink],
    times: tuple[float, float],
    outcome: tuple[SessionResult, dict[str, str]],
) -> WireBlock:
    """One networked session's ``wire`` block: ``times`` (join_s, session_s), latency per
    round, bytes per user, and from ``outcome`` (the session's result, the refused users and
    why) its rejoins, stragglers and refusals."""
    latencies = [w.latency_s for w in driver.wire_rounds]
    result, refused = outcome
    return WireBlock(
        transport="grpc",
        join_s=times[0],
        session_s=times[1],
        handshake_s=driver.timings.get("handshake_s"),
        not_joined=list(lobby.missing),
        not_joined_reasons=dict(lobby.missing_reasons),
        dropped_at_s=dict(driver.drop_times),
        latency_p50_s=percentile(latencies, 50),
        latency_p95_s=percentile(latencies, 95),
        rounds=list(driver.wire_rounds),
        users={
            link.user_id: WireUser(
                peer=link.peer,
                bytes_down=link.counters()[0],
                bytes_up=link.counters()[1],
                messages_down=link.messages_down,
                messages_up=link.messages_up,
            )
            for link in links
        },
        rejoins=list(result.rejoins),
        stragglers=list(result.stragglers),
        refused=refused,
    )


@dataclass(frozen=True)
class SessionsPlan:
    """What the AP aligns: one session per seed of ``config``.

    Attributes:
        make_ap: a fresh :class:`AccessPoint` for a seed's config (its training latents).
        config: the alignment config (each session's seed replaces ``config.seed``).
        seeds: one session per seed, in order.
        test_latents: the AP's test latents, (n_test, d_ap).
        extra: entries added to the results' ``run`` block.
    """

    make_ap: Callable[[AlignmentConfig], AccessPoint]
    config: AlignmentConfig
    seeds: list[int]
    test_latents: np.ndarray
    extra: dict[str, Any] | None = None


@dataclass(frozen=True)
class SessionHooks:
    """Who is told what while the sessions run (each ``None``: nobody).

    Attributes:
        on_round: ``(seed, record, wire)`` after each round.
        on_seed: each seed's :class:`SeedResult` once it is done.
        on_joined: ``(seed, user_ids)`` once a session's users have joined.
        poll: ``(joined_ids) -> {user_id: reason}`` while the first session waits for its
            users (progress, fail-fast checks of child processes; the users known lost).
        metrics: told every session's events (:mod:`semalign.server.metrics`).
    """

    on_round: Callable[[int, RoundRecord, WireRound], None] | None = None
    on_seed: Callable[[SeedResult], None] | None = None
    on_joined: Callable[[int, list[str]], None] | None = None
    poll: Callable[[list[str]], dict[str, str] | None] | None = None
    metrics: NoMetrics | None = None


def serve_sessions(
    service: AlignmentService,
    plan: SessionsPlan,
    settings: ServeSettings,
    hooks: SessionHooks | None = None,
) -> RunResult:
    """One session per seed, then the simulator's aggregate plus a ``network`` summary, the
    users' own reports (``measured_by``) and the users that were ``lost``.

    Returns the run's results (its ``to_dict()`` is the results JSON). The first
    session waits for every invitee (``settings.join_timeout``; ``hooks.poll`` meanwhile);
    later sessions wait only for the users that finished the one before. With
    ``settings.checkpoint`` the run is saved after every handshake, round and seed;
    ``settings.resume`` continues the run saved there (CheckpointError if it cannot be trusted
    or belongs to another run).
    """
    hooks = hooks or SessionHooks()
    saved = _start_or_resume(plan, settings)
    blocks = list(saved.finished)
    reported: list[dict[str, UserReport]] = list(saved.reported)  # per seed: users' reports
    required: set[str] | None = None  # first session: everyone expected
    for index in range(len(blocks), len(plan.seeds)):
        result, block = _serve_seed(service, plan, settings, hooks, saved, index, required)
        # The next session waits for those who finished this one; a dropped user is welcome
        # back if it joins in time, but nobody waits for it.
        required = {uid for uid in result.user_order if uid not in result.dropped}
        reported.append(result.reports)
        blocks.append(block)
        if settings.checkpoint:
            saved.finished.append(block)
            saved.reported.append(result.reports)
            saved.current = None
            checkpoints.save(settings.checkpoint, saved)
        if hooks.on_seed:
            hooks.on_seed(block)
    return networked_result(plan, blocks, reported)


def networked_result(
    plan: SessionsPlan, blocks: list[SeedResult], reported: list[dict[str, UserReport]]
) -> RunResult:
    """The run's results from its seeds (served now or restored from a checkpoint) and, per
    seed, the users' own reports: the simulator's aggregate, labelled, with ``network`` and
    ``lost``."""
    run = run_result(plan.config, blocks, plan.extra)
    run = replace(run, network=network_summary(blocks), lost=lost_users(blocks))
    return label_self_reported(run, reported)


def _start_or_resume(plan: SessionsPlan, settings: ServeSettings) -> checkpoints.Checkpoint:
    """A new checkpoint record for this run, or the one saved at ``settings.checkpoint``
    (``settings.resume``; CheckpointError if it is not this run's)."""
    key = checkpoints.run_key(plan.config, list(plan.seeds), settings.expected)
    if not settings.resume:
        config = json.loads(plan.config.model_dump_json())
        return checkpoints.Checkpoint(key, config, list(plan.seeds))
    saved = checkpoints.load(settings.checkpoint, key)
    log.info("resuming: %d of %d seeds done", len(saved.finished), len(plan.seeds))
    return saved


def _serve_seed(
    service: AlignmentService,
    plan: SessionsPlan,
    settings: ServeSettings,
    hooks: SessionHooks,
    saved: checkpoints.Checkpoint,
    index: int,
    required: set[str] | None,
) -> tuple[SessionResult, SeedResult]:
    """Session ``index`` (continued from ``saved`` if it was cut there): its result and its
    seed's results block."""
    seed = plan.seeds[index]
    cfg = plan.config.model_copy(update={"seed": seed})
    start = time.perf_counter()
    ap = plan.make_ap(cfg)
    restored = None
    if saved.current is not None and saved.current.index == index:
        wire_rounds = saved.current.extra.get("wire_rounds", [])
        restored = (
            checkpoints.restore(ap, saved.current),
            [WireRound.from_dict(w) for w in wire_rounds],
        )
        required = {u["user_id"] for u in saved.current.users if not u["dropped"]}

    def save_point(driver: MeasuredDriver) -> None:
        wire_rounds = [w.record() for w in driver.wire_rounds]
        saved.current = checkpoints.capture(ap, driver, index, {"wire_rounds": wire_rounds})
        checkpoints.save(settings.checkpoint, saved)

    on_round, on_joined = hooks.on_round, hooks.on_joined
    offer = SessionOffer(ap.session_id, index, len(plan.seeds), cfg, settings.users)
    result, wire = serve_session(
        service,
        ap,
        offer,
        settings.expected,
        plan.test_latents,
        np.arange(len(plan.test_latents), dtype=np.int64),
        join_timeout=settings.join_timeout,
        policy=settings.policy,
        on_round=(lambda r, w: on_round(seed, r, w)) if on_round else None,
        on_joined=(lambda ids: on_joined(seed, ids)) if on_joined else None,
        poll=hooks.poll if index == 0 else None,  # fail-fast checks only while starting up
        required=required,
        checkpoint=save_point if settings.checkpoint else None,
        restored=restored,
        metrics=hooks.metrics,
    )
    block = seed_result(
        result,
        seed,
        seconds=time.perf_counter() - start,
        whitening_condition=ap.whitener.condition,
        strategy_info=ap.result_info(),
        wire=wire,
    )
    return result, block
