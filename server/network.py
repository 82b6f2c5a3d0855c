"""The AP's networked sessions: lobby, unchanged SessionDriver, wire measurements, results.

For each seed the AP opens a lobby on the alignment service, waits for the invited users, runs
the same :class:`~semalign.server.session.SessionDriver` the simulator runs (over
:class:`~semalign.server.service.GrpcLink` objects instead of loopback links) and records, per
round, the bytes each user's stream carried across the gRPC boundary and the round latency. The
results are the simulator's (:func:`~semalign.server.results.seed_result` /
:func:`~semalign.server.results.run_result`) plus a ``wire`` block per seed and a top-level
``network`` summary.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from semalign.common.config import AlignmentConfig
from semalign.common.contract import SessionOffer
from semalign.common.errors import NoUsersError
from semalign.common.records import RoundRecord, SeedResult
from semalign.server.access_point import AccessPoint
from semalign.server.results import run_result, seed_result
from semalign.server.service import AlignmentService, GrpcLink
from semalign.server.session import SessionDriver, SessionResult

log = logging.getLogger(__name__)


@dataclass
class WireRound:
    """One ADMM round as seen at the gRPC boundary."""

    round: int
    latency_s: float
    bytes_down: dict[str, int]
    bytes_up: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "latency_s": self.latency_s,
            "bytes_down": self.bytes_down,
            "bytes_up": self.bytes_up,
            "bytes_down_total": sum(self.bytes_down.values()),
            "bytes_up_total": sum(self.bytes_up.values()),
        }


class MeasuredDriver(SessionDriver):
    """SessionDriver plus gRPC-boundary byte counters per round and drop times.

    Only measurement is added; the protocol order is the base class's.
    """

    def __init__(
        self,
        ap: AccessPoint,
        links: Sequence[GrpcLink],
        *,
        timeout: float | None,
        on_round: Callable[[RoundRecord, WireRound], None] | None = None,
    ) -> None:
        super().__init__(ap, links, timeout=timeout, on_round=self._measured)
        self.grpc_links = {link.user_id: link for link in links}
        self.wire_rounds: list[WireRound] = []
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
            if user_id in self.links:
                continue
            state = self.ap.users.get(user_id)
            if state is not None and state.dropped:
                link.abort(f"dropped by the AP at {state.dropped}")
            elif state is None:
                reason = self.ap.refused.get(user_id, "the AP could not register this user")
                link.abort(f"handshake refused: {reason}", grpc.StatusCode.INVALID_ARGUMENT)

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


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def serve_session(
    service: AlignmentService,
    ap: AccessPoint,
    offer: SessionOffer,
    expected: Sequence[str] | int,
    test_latents: np.ndarray,
    test_ids: np.ndarray,
    *,
    join_timeout: float | None,
    reply_timeout: float | None,
    on_round: Callable[[RoundRecord, WireRound], None] | None = None,
    on_joined: Callable[[list[str]], None] | None = None,
    poll: Callable[[list[str]], None] | None = None,
    required: set[str] | None = None,
) -> tuple[SessionResult, dict[str, Any]]:
    """Gather the users of one session and run it; returns the result and its wire block.

    ``poll(joined_ids)`` is called while waiting for users (progress, child checks);
    ``required``: start once these have joined (see :class:`Lobby`).
    """
    opened = time.perf_counter()
    lobby = service.open_lobby(offer, expected, required)
    links = lobby.wait(join_timeout, poll)
    join_s = time.perf_counter() - opened
    if on_joined:
        on_joined([link.user_id for link in links])
    if not links:
        raise NoUsersError(
            f"no user joined session {offer.session_id} within {join_timeout:g} s"
            if join_timeout is not None
            else f"no user joined session {offer.session_id}"
        )
    driver = MeasuredDriver(ap, links, timeout=reply_timeout, on_round=on_round)
    start = time.perf_counter()
    try:
        result = driver.run(test_latents, test_ids)
    finally:
        for link in links:
            state = ap.users.get(link.user_id)
            if state is not None and state.dropped:
                link.abort(f"dropped by the AP at {state.dropped}")
            elif state is None:
                reason = ap.refused.get(link.user_id, "the AP could not register this user")
                link.abort(f"handshake refused: {reason}", grpc.StatusCode.INVALID_ARGUMENT)
            else:
                link.finish()
    wire = _wire_block(driver, lobby, links, join_s, time.perf_counter() - start)
    for uid in lobby.missing:
        log.warning("%s never joined session %s", uid, offer.session_id)
    return result, wire


def _wire_block(
    driver: MeasuredDriver, lobby, links: list[GrpcLink], join_s: float, session_s: float
) -> dict[str, Any]:
    """One networked session's ``wire`` block: timings, latency per round, bytes per user."""
    latencies = [w.latency_s for w in driver.wire_rounds]
    return {
        "transport": "grpc",
        "join_s": join_s,
        "session_s": session_s,
        **driver.timings,
        "not_joined": lobby.missing,
        "dropped_at_s": driver.drop_times,
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "rounds": [w.as_dict() for w in driver.wire_rounds],
        "users": {
            link.user_id: {
                "peer": link.peer,
                "bytes_down": link.counters()[0],
                "bytes_up": link.counters()[1],
                "messages_down": link.messages_down,
                "messages_up": link.messages_up,
            }
            for link in links
        },
    }


def serve_sessions(
    service: AlignmentService,
    make_ap: Callable[[AlignmentConfig], AccessPoint],
    config: AlignmentConfig,
    seeds: list[int],
    expected: Sequence[str] | int,
    test_latents: np.ndarray,
    *,
    join_timeout: float | None,
    reply_timeout: float | None,
    on_round: Callable[[int, RoundRecord, WireRound], None] | None = None,
    on_seed: Callable[[dict[str, Any]], None] | None = None,
    on_joined: Callable[[int, list[str]], None] | None = None,
    poll: Callable[[list[str]], None] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One session per seed, then the simulator's aggregate plus a ``network`` summary.

    Returns the results JSON as a dict (``RunResult.to_dict()`` with ``network``); ``on_seed``
    gets each seed's ``SeedResult.to_dict()``.

    ``poll`` (progress, fail-fast checks of child processes) runs while the first session waits
    for its users; later sessions wait only for the users that finished the one before.
    """
    test_ids = np.arange(len(test_latents), dtype=np.int64)
    blocks = []
    reported: list[dict[str, dict]] = []  # per seed: each user's report as it sent it
    required: set[str] | None = None  # first session: everyone expected
    for index, seed in enumerate(seeds):
        cfg = config.model_copy(update={"seed": seed})
        start = time.perf_counter()
        ap = make_ap(cfg)
        users = expected if isinstance(expected, int) else len(expected)
        offer = SessionOffer(ap.session_id, index, len(seeds), cfg, users)
        result, wire = serve_session(
            service,
            ap,
            offer,
            expected,
            test_latents,
            test_ids,
            join_timeout=join_timeout,
            reply_timeout=reply_timeout,
            on_round=(lambda r, w, s=seed: on_round(s, r, w)) if on_round else None,
            on_joined=(lambda ids, s=seed: on_joined(s, ids)) if on_joined else None,
            poll=poll if index == 0 else None,  # fail-fast checks only while starting up
            required=required,
        )
        # The next session waits for those who finished this one; a dropped user is welcome
        # back if it joins in time, but nobody waits for it.
        required = {uid for uid in result.user_order if uid not in result.dropped}
        reported.append(result.reports)
        blocks.append(
            seed_result(
                result,
                seed,
                seconds=time.perf_counter() - start,
                whitening_condition=ap.whitener.condition,
                strategy_info=ap.result_info(),
                wire=wire,
            )
        )
        if on_seed:
            on_seed(blocks[-1].to_dict())
    run = run_result(config, blocks, extra)
    run.network = network_summary(blocks)
    return label_self_reported(run.to_dict(), reported)


#: Which results figures come from what users say about themselves, which the AP measured.
#: The AP checks the users' figures for range only (accuracies in [0, 1], finite MSEs >= 0,
#: the number of test points): it cannot verify them.
PROVENANCE = {
    "self_reported": [
        "users[].accuracy, native_accuracy, mse, mse_whitened (and their _std)",
        "mean_accuracy, mean_native_accuracy, mean_mse (and std_*)",
        "seeds[].users[].accuracy, native_accuracy, mse, mse_whitened",
        "seeds[].users[].self_reported (each user's evaluation report as it sent it)",
        "seeds[].mean_accuracy, mean_native_accuracy, mean_mse",
        "rounds[].mse, objective and seeds[].phases.final.mse, objective (users' loss terms)",
    ],
    "ap_measured": [
        "rounds[].primal_residual, dual_residual, bytes_down, bytes_up, seconds",
        "seeds[].phases bytes, seeds[].dropped, seeds[].wire, network",
    ],
}


def label_self_reported(results: dict[str, Any], reported: list[dict[str, dict]]) -> dict:
    """Add ``provenance`` and, per seed and user, a ``self_reported`` block (the user's own
    evaluation report, or None without one). Existing keys keep their names and values."""
    results["provenance"] = PROVENANCE
    for block, reports in zip(results["seeds"], reported, strict=True):
        for user in block["users"]:
            report = reports.get(user["name"])
            user["self_reported"] = dict(report) if report is not None else None
    return results


def network_summary(blocks: list[SeedResult]) -> dict[str, Any]:
    """Latency p50/p95 over all rounds of all seeds, mean bytes per round, drops."""
    latencies = [r["latency_s"] for b in blocks for r in b.wire["rounds"]]
    down = [r["bytes_down_total"] for b in blocks for r in b.wire["rounds"]]
    up = [r["bytes_up_total"] for b in blocks for r in b.wire["rounds"]]
    return {
        "transport": "grpc",
        "rounds": len(latencies),
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "latency_mean_s": float(np.mean(latencies)) if latencies else None,
        "bytes_down_per_round": float(np.mean(down)) if down else None,
        "bytes_up_per_round": float(np.mean(up)) if up else None,
        "dropped": {
            str(b.seed): {
                uid: {"reason": reason, "at_s": b.wire["dropped_at_s"].get(uid)}
                for uid, reason in b.dropped.items()
            }
            for b in blocks
            if b.dropped
        },
        "not_joined": {str(b.seed): b.wire["not_joined"] for b in blocks},
    }
