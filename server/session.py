"""The session driver: runs one alignment session over any transport.

The driver owns the order of the protocol (handshake, ADMM rounds or baseline pilots, final
broadcast, evaluation, end) and the measurements (bytes per user and direction, counted on the
serialized messages, and wall time per round). A transport only provides one
:class:`UserLink` per user; the in-process engine uses a loopback link
(``semalign.engine.loopback``), the gRPC service
a link over each user's stream. Users that time out, disconnect or break the protocol are
dropped and the session finishes with the others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from semalign.common.errors import LinkError, ProtocolError
from semalign.common.failpoints import failpoint
from semalign.common.records import RoundRecord
from semalign.server.access_point import AccessPoint, RoundStats

log = logging.getLogger(__name__)


class UserLink(Protocol):
    """One user's message pipe as seen from the AP."""

    def send(self, data: bytes) -> None:
        """Deliver one serialized ApMessage to the user (raises LinkError on failure)."""

    def receive(self, timeout: float | None) -> bytes:
        """Next serialized UserMessage from the user (raises LinkError on timeout/close)."""


@dataclass
class SessionResult:
    """What a session produced.

    Attributes:
        reports: user id -> its evaluation report (accuracy, native_accuracy, mse,
            mse_whitened, samples); users without a report are missing.
        rounds: one record per ADMM round (none for the baselines).
        phases: traffic per phase, see :class:`~semalign.common.records.SeedResult`.
        dropped: user id -> why and when it was dropped.
        user_order: user ids in handshake order.
        encoders: user id -> its encoder name.
    """

    reports: dict[str, dict]
    rounds: list[RoundRecord]
    phases: dict[str, dict]
    dropped: dict[str, str]
    user_order: list[str]
    encoders: dict[str, str]


class SessionDriver:
    """Runs :class:`AccessPoint` against a set of links.

    Args:
        ap: the AP state machine.
        links: one link per user, in the order users appear in results.
        timeout: seconds to wait for a user's reply before dropping it (``None``: forever).
        on_round: called with each RoundRecord as soon as it is measured (progress display).
    """

    def __init__(
        self,
        ap: AccessPoint,
        links: Sequence[UserLink],
        *,
        timeout: float | None = None,
        on_round: Callable[[RoundRecord], None] | None = None,
    ) -> None:
        self.ap = ap
        self.pending = list(links)
        self.links: dict[str, UserLink] = {}
        self.timeout = timeout
        self.on_round = on_round
        self.phases: dict[str, dict] = {}

    # -------------------------------------------------------------- plumbing
    def _drop(self, user_id: str, reason: str) -> None:
        self.ap.drop(user_id, reason)
        self.links.pop(user_id, None)

    def _exchange(self, phase: str, messages: dict[str, bytes]) -> dict[str, bytes]:
        """Send each user its message, then collect one reply each; counts bytes both ways."""
        down, up, replies = {}, {}, {}
        for user_id, data in messages.items():
            try:
                self.links[user_id].send(data)
                down[user_id] = len(data)
            except LinkError as exc:
                self._drop(user_id, f"{phase}: send failed: {exc}")
        for user_id in list(down):
            try:
                replies[user_id] = self.links[user_id].receive(self.timeout)
                up[user_id] = len(replies[user_id])
            except LinkError as exc:
                self._drop(user_id, f"{phase}: {exc}")
        self.phases[phase] = {
            "bytes_down": sum(down.values()),
            "bytes_up": sum(up.values()),
            "bytes_down_per_user": down,
            "bytes_up_per_user": up,
        }
        return replies

    def _deliver(
        self, phase: str, handler: Callable[[str, bytes], object], replies: dict[str, bytes]
    ) -> dict[str, object]:
        out = {}
        for user_id, data in replies.items():
            try:
                out[user_id] = handler(user_id, data)
            except ProtocolError as exc:
                self._drop(user_id, f"{phase}: {exc}")
        return out

    # -------------------------------------------------------------- phases
    def handshake(self) -> None:
        down = up = 0
        for link in self.pending:
            user_id = None
            try:
                request = link.receive(self.timeout)
                user_id, accept = self.ap.handshake(request)
                link.send(accept)
            except (LinkError, ProtocolError) as exc:
                log.warning("handshake failed: %s", exc)
                if user_id is not None:  # registered, but the accept never arrived
                    self.ap.drop(user_id, f"handshake: {exc}")
                continue
            self.links[user_id] = link
            down, up = down + len(accept), up + len(request)
        self.phases["handshake"] = {"bytes_down": down, "bytes_up": up}
        if not self.links:
            raise ProtocolError("no user completed the handshake")

    def admm_round(self) -> RoundRecord:
        start = time.perf_counter()
        replies = self._exchange("round", self.ap.round_messages())
        self._deliver("round", self.ap.receive, replies)
        stats: RoundStats = self.ap.step()
        failpoint("ap.round", at=stats.round)
        traffic = self.phases.pop("round")
        record = RoundRecord(
            round=stats.round,
            mse=stats.mse,
            objective=stats.objective,
            primal_residual=stats.primal_residual,
            dual_residual=stats.dual_residual,
            bytes_down=traffic["bytes_down"],
            bytes_up=traffic["bytes_up"],
            seconds=time.perf_counter() - start,
            users=stats.users,
            bytes_down_per_user=traffic["bytes_down_per_user"],
            bytes_up_per_user=traffic["bytes_up_per_user"],
        )
        if self.on_round:
            self.on_round(record)
        return record

    def align(self) -> list[RoundRecord]:
        """The strategy's rounds (if any), then its final transmission and the users' Acks."""
        rounds = []
        for _ in range(self.ap.rounds):
            if not self.links:
                break
            rounds.append(self.admm_round())
        phase = self.ap.final_phase
        replies = self._exchange(phase, self.ap.final_messages())
        self._deliver("final", self.ap.receive, replies)
        try:
            final = self.ap.final_stats()
            self.phases["final"] = self.phases.pop(phase)
            self.phases["final"].update(mse=final.mse, objective=final.objective)
        except ProtocolError as exc:
            log.warning("%s", exc)
        failpoint("ap.final")
        return rounds

    def run(self, test_latents: np.ndarray, test_ids: np.ndarray) -> SessionResult:
        """Handshake, alignment, evaluation on ``test_latents`` (n_test, d), end."""
        self.handshake()
        failpoint("ap.handshake")
        user_order = list(self.links)
        rounds = self.align()
        replies = self._exchange("evaluation", self.ap.evaluation_requests(test_latents, test_ids))
        reports = self._deliver("evaluation", self.ap.receive_report, replies)
        failpoint("ap.evaluation")
        end = self.ap.end_message()
        for user_id, link in list(self.links.items()):
            try:
                link.send(end)
            except LinkError as exc:
                log.debug("end to %s failed: %s", user_id, exc)
        return SessionResult(
            reports={uid: _report_dict(r) for uid, r in reports.items()},
            rounds=rounds,
            phases=self.phases,
            dropped={u.user_id: u.dropped for u in self.ap.users.values() if u.dropped},
            user_order=user_order,
            encoders={u.user_id: u.encoder for u in self.ap.users.values()},
        )


def _report_dict(report) -> dict:
    return {
        "accuracy": report.accuracy,
        "native_accuracy": report.native_accuracy,
        "mse": report.mse,
        "mse_whitened": report.mse_whitened,
        "samples": report.samples,
    }
