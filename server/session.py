"""The session driver: runs one alignment session over any transport.

The driver owns the order of the protocol (handshake, ADMM rounds or baseline pilots, final
broadcast, evaluation, end) and the measurements (bytes per user and direction, counted on the
serialized messages, and wall time per round). A transport only provides one
:class:`UserLink` per user; the in-process engine uses a loopback link
(``semalign.engine.loopback``), the gRPC service
a link over each user's stream. Users that time out, disconnect or break the protocol are
dropped and the session finishes with the others.

How long the driver waits, and for what, is decided in one place, :meth:`SessionDriver._await`,
under a :class:`WaitPolicy`: the reply timeout, the round deadline and what happens to a
straggler (drop it, or wait), and the grace period in which a user whose stream broke may come
back on a new stream (links that can be rebound raise :class:`LinkRejoined`). A user that comes
back gets its HandshakeAccept again, then what it needs to answer the current phase: the
final broadcast (or the baselines' pilots) it already acknowledged, if the session is past it,
and the message it has not answered yet. Users are stateless across rounds (G_l is computed
from each round's message), so the round completes as if nothing had happened.

The driver keeps the link busy and the AP's work beside it: a HandshakeAccept goes to a link
that takes chunks (gRPC, when its user asked) with the compact protocol's X cut into
PilotChunks (:meth:`SessionDriver._send_accept`, :mod:`semalign.common.pilot_stream`), so the
user works on X as it arrives; each reply is handed to the AP as soon as it is in, while the
later ones travel; and a round's checkpoint is written once the next round's messages are out.
None of it changes the order in which the AP takes anything, so a session's numbers are the
same.

A session can also continue from a checkpoint (:mod:`semalign.server.checkpoint`): the driver
is then built with ``resumed=True``, takes every user back through :meth:`AccessPoint.rejoin`
and continues at the AP's next round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from semalign.common.errors import LinkClosed, LinkError, LinkRejoined, LinkTimeout, ProtocolError
from semalign.common.failpoints import failpoint
from semalign.common.network_records import Rejoin, Straggler
from semalign.common.pilot_stream import PilotSplitter
from semalign.common.records import PhaseTraffic, RoundRecord, UserReport, phases_from_dict
from semalign.common.wire import parse_user_message
from semalign.server.access_point import AccessPoint, RoundStats
from semalign.server.metrics import NO_METRICS, NoMetrics

log = logging.getLogger(__name__)


class UserLink(Protocol):
    """One user's message pipe as seen from the AP.

    A link that can be rebound to a new stream (gRPC) also has ``wait_rejoin(timeout) ->
    bytes | None`` (the new stream's handshake, once the user came back) and
    ``accept_rejoin()`` (from now on, send on the new stream); its ``receive`` raises
    :class:`LinkRejoined` when the user came back. Optionally ``check_rejoins_with(check)``
    (the driver hands it :meth:`AccessPoint.check_rejoin`, so a comeback is checked before it
    touches the live stream) and ``refuse_rejoin(reason)`` (end the new stream only).
    """

    def send(self, data: bytes) -> None:
        """Deliver one serialized ApMessage to the user (raises LinkError on failure)."""

    def receive(self, timeout: float | None) -> bytes:
        """Next serialized UserMessage from the user (raises LinkTimeout, LinkClosed or another
        LinkError)."""


#: What the driver does with a user whose reply misses the round deadline.
STRAGGLER_POLICIES = ("drop", "wait")


@dataclass(frozen=True)
class WaitPolicy:
    """How long the driver waits for users.

    Attributes:
        reply_timeout: seconds from sending a message until its reply must be in (``None``:
            forever); a user that misses it is dropped.
        round_deadline: seconds from the start of an exchange (an ADMM round, the final
            broadcast, the evaluation) by which every reply should be in (``None``: none).
        stragglers: ``drop``: a user whose reply misses the deadline is dropped ("straggler:
            no reply within S s at round t"); ``wait``: it is recorded as a straggler and
            waited for up to ``reply_timeout``.
        rejoin_grace: seconds a user whose stream broke may take to come back on a new stream
            (0: it is dropped at once). Only links that can be rebound (gRPC) come back.
    """

    reply_timeout: float | None = None
    round_deadline: float | None = None
    stragglers: str = "wait"
    rejoin_grace: float = 0.0


@dataclass
class SessionResult:
    """What a session produced.

    Attributes:
        reports: user id -> its evaluation report; users without a report are missing.
        rounds: one record per ADMM round (none for the baselines).
        phases: traffic per phase (handshake, setup, final, evaluation), in that order.
        dropped: user id -> why and when it was dropped.
        user_order: user ids in handshake order.
        encoders: user id -> its encoder name.
        rejoins: users that came back on a new stream: user, round, phase.
        stragglers: replies that missed the round deadline: user, round, phase, deadline_s.
    """

    reports: dict[str, UserReport]
    rounds: list[RoundRecord]
    phases: dict[str, PhaseTraffic]
    dropped: dict[str, str]
    user_order: list[str]
    encoders: dict[str, str]
    rejoins: list[Rejoin] = field(default_factory=list)
    stragglers: list[Straggler] = field(default_factory=list)


@dataclass(frozen=True)
class RestoredSession:
    """What a session continued from a checkpoint had recorded before the AP stopped: its
    rounds, the traffic per phase so far (the driver's running counts: ``bytes_down``,
    ``bytes_up`` and per user) and the users in handshake order."""

    rounds: list[RoundRecord]
    phases: dict[str, dict]
    user_order: list[str]


class SessionDriver:
    """Runs :class:`AccessPoint` against a set of links.

    Args:
        ap: the AP state machine.
        links: one link per user, in the order users appear in results.
        timeout: seconds to wait for a user's reply before dropping it (``None``: forever);
            ignored when ``policy`` is given.
        on_round: called with each RoundRecord as soon as it is measured (progress display).
        policy: reply timeout, round deadline, stragglers, rejoin grace (:class:`WaitPolicy`).
        checkpoint: called with the driver after the handshake and after every round (the AP
            has stepped; :mod:`semalign.server.checkpoint` saves the session there).
        resumed: the AP was restored from a checkpoint: users come back through
            :meth:`AccessPoint.rejoin` and ``restored`` holds the rounds, traffic and user
            order recorded before.
        metrics: told every join, drop, rejoin, straggler, round and phase's traffic, with
            the numbers the results hold (:mod:`semalign.server.metrics`; default: none).
    """

    def __init__(
        self,
        ap: AccessPoint,
        links: Sequence[UserLink],
        *,
        timeout: float | None = None,
        on_round: Callable[[RoundRecord], None] | None = None,
        policy: WaitPolicy | None = None,
        checkpoint: Callable[[SessionDriver], None] | None = None,
        resumed: bool = False,
        restored: RestoredSession | None = None,
        metrics: NoMetrics | None = None,
    ) -> None:
        self.ap = ap
        self.metrics = metrics or NO_METRICS
        self.pending = list(links)
        self.links: dict[str, UserLink] = {}
        self.policy = policy or WaitPolicy(reply_timeout=timeout)
        self.on_round = on_round
        self.checkpoint = checkpoint
        self.resumed = resumed
        restored = restored or RestoredSession([], {}, [])
        self.phases: dict[str, dict] = {k: dict(v) for k, v in restored.phases.items()}
        self.records: list[RoundRecord] = list(restored.rounds)
        self.user_order: list[str] = list(restored.user_order)
        self.rejoins: list[Rejoin] = []
        self.stragglers: list[Straggler] = []
        #: per user: the message it has not answered yet, and the state-building messages it
        #: answered (final broadcast, pilots) that a user coming back needs again
        self.unanswered: dict[str, bytes | None] = {}
        self.prelude: dict[str, list[bytes]] = {}
        #: cuts a compact accept's X into chunks for links that take them (made once a session)
        self.splitter = PilotSplitter()
        #: a round's checkpoint, written once the next exchange's messages are out
        self._checkpoint_due = False

    # -------------------------------------------------------------- plumbing
    def _drop(self, user_id: str, reason: str) -> None:
        self._lose(user_id, reason)
        self.links.pop(user_id, None)

    def _lose(self, user_id: str, reason: str) -> None:
        """Drop ``user_id`` at the AP; the metrics count it once."""
        state = self.ap.users.get(user_id)
        if state is not None and state.dropped is None:
            self.metrics.user_lost(user_id)
        self.ap.drop(user_id, reason)

    def _exchange(
        self,
        phase: str,
        messages: dict[str, bytes],
        handler: Callable[[str, bytes], object] | None = None,
        label: str | None = None,
    ) -> dict[str, object]:
        """Send each user its message, then collect one reply each; counts bytes both ways
        (the protocol's messages once: what a rejoin resends is the wire's, not the phase's).

        Without ``handler``: the replies (bytes). With it, each reply is handed to
        ``handler(user_id, reply)`` as soon as it is in, while the later ones are still on
        their way, and its results are returned; a ProtocolError drops that user (the reason
        names ``label``, default ``phase``). Replies are taken in the users' order, so the
        handler sees them in the order it would after the last one.
        """
        down, up, out = {}, {}, {}
        for user_id, data in messages.items():
            try:
                self.unanswered[user_id] = data
                self.links[user_id].send(data)
                down[user_id] = len(data)
            except LinkError as exc:
                self._drop(user_id, f"{phase}: send failed: {exc}")
        self._write_checkpoint()  # while the messages travel and the users compute
        started = time.monotonic()
        for user_id in list(down):
            reply = self._await(user_id, phase, started)
            if reply is None:
                continue
            up[user_id] = len(reply)
            if handler is None:
                out[user_id] = reply
            else:
                out.update(self._deliver(label or phase, handler, {user_id: reply}))
        self.phases[phase] = {
            "bytes_down": sum(down.values()),
            "bytes_up": sum(up.values()),
            "bytes_down_per_user": down,
            "bytes_up_per_user": up,
        }
        return out

    def _send_accept(self, link: UserLink, accept: bytes) -> int:
        """Send a HandshakeAccept: whole, or, to a link that takes chunks
        (``pilot_chunk_bytes``), without X's data and then X in PilotChunks, so the user works
        on each as it arrives (:mod:`semalign.common.pilot_stream`). Returns the bytes sent."""
        parts = self.splitter.split(accept, getattr(link, "pilot_chunk_bytes", None))
        for part in parts:
            link.send(part)
        return sum(len(part) for part in parts)

    def _wait_time(self, sent_at: float, started: float, straggled: bool) -> tuple[float, bool]:
        """(seconds to wait now, whether that wait ends at the round deadline)."""
        now, policy = time.monotonic(), self.policy
        reply = None if policy.reply_timeout is None else sent_at + policy.reply_timeout - now
        if policy.round_deadline is not None and not straggled:
            left = started + policy.round_deadline - now
            if reply is None or left < reply:
                return max(0.0, left), True
        return (None if reply is None else max(0.0, reply)), False

    def _await(self, user_id: str, phase: str, started: float) -> bytes | None:
        """The user's reply to its unanswered message, or ``None`` once it is dropped.

        The one place where the driver waits: the reply timeout (from when the message was
        sent), the round deadline (from the start of the exchange) and its straggler policy,
        and a broken stream's grace period for the user to come back.
        """
        link, policy = self.links[user_id], self.policy
        sent_at, straggled = started, False
        while True:
            timeout, at_deadline = self._wait_time(sent_at, started, straggled)
            try:
                data = link.receive(timeout)
            except LinkRejoined as back:  # it came back on a new stream before we noticed
                taken = self._rejoin(user_id, back.handshake, phase)
                if taken is None:  # its handshake was refused; the user's link is as it was
                    continue
                if not taken:
                    return None
                sent_at = time.monotonic()
                continue
            except LinkTimeout:
                if not at_deadline:
                    self._drop(user_id, f"{phase}: no reply within {policy.reply_timeout:g} s")
                    return None
                if not self._straggler(user_id, phase):
                    return None
                straggled = True
                continue
            except LinkClosed as exc:
                handshake = self._wait_rejoin(link)
                if handshake is None:
                    grace = f"; it did not come back within {policy.rejoin_grace:g} s"
                    self._drop(user_id, f"{phase}: {exc}{grace if policy.rejoin_grace else ''}")
                    return None
                taken = self._rejoin(user_id, handshake, phase)
                if taken is None:
                    continue
                if not taken:
                    return None
                sent_at = time.monotonic()
                continue
            except LinkError as exc:  # also a stream that ended its user (message too large)
                self._drop(user_id, f"{phase}: {exc}")
                return None
            self.unanswered[user_id] = None
            return data

    def _straggler(self, user_id: str, phase: str) -> bool:
        """Record the user's reply as past the round deadline; False if the policy drops it
        for that (``stragglers="drop"``), True if the driver waits on."""
        policy = self.policy
        self.stragglers.append(Straggler(user_id, self.ap.round, phase, policy.round_deadline))
        self.metrics.straggler(user_id)
        if policy.stragglers == "drop":
            self._drop(
                user_id,
                f"straggler: no reply within {policy.round_deadline:g} s at round {self.ap.round}",
            )
            return False
        log.warning("%s: straggler at round %d (%s)", user_id, self.ap.round, phase)
        return True

    def _wait_rejoin(self, link: UserLink) -> bytes | None:
        wait = getattr(link, "wait_rejoin", None)
        if wait is None or self.policy.rejoin_grace <= 0:
            return None
        return wait(self.policy.rejoin_grace)

    def _rejoin(self, user_id: str, handshake: bytes, phase: str) -> bool | None:
        """Take the user back on its new stream: its accept again, the state-building messages
        it answered before (their replies checked and discarded), then its unanswered message.

        The handshake is checked before anything changes: if the AP refuses it and the link
        can refuse the new stream alone, only that stream ends and ``None`` is returned (the
        user's link goes on as it was). False if the user was dropped instead (a refused
        handshake on a link that cannot refuse it, a broken replay)."""
        link = self.links[user_id]
        try:
            registered, accept = self.ap.rejoin(handshake)
            if registered != user_id:
                raise ProtocolError(f"a handshake of {registered!r} on {user_id}'s link")
        except ProtocolError as exc:
            refuse_rejoin = getattr(link, "refuse_rejoin", None)
            if refuse_rejoin is None:
                self._drop(user_id, f"{phase}: rejoin failed: {exc}")
                return False
            log.warning("%s: refused a comeback at round %d: %s", user_id, self.ap.round, exc)
            refuse_rejoin(f"rejoin refused: {exc}")
            return None
        accept_rejoin = getattr(link, "accept_rejoin", None)
        if accept_rejoin is not None:
            accept_rejoin()
        try:
            self._send_accept(link, accept)
            for message in self.prelude.get(user_id, []):
                link.send(message)
                reply = parse_user_message(link.receive(self.policy.reply_timeout))
                if reply.WhichOneof("body") == "error":
                    raise ProtocolError(f"user {user_id} reported: {reply.error.message}")
        except (ProtocolError, LinkError, LinkRejoined) as exc:
            text = str(exc) if not isinstance(exc, LinkRejoined) else "it rejoined twice"
            self._drop(user_id, f"{phase}: rejoin failed: {text}")
            return False
        self.rejoins.append(Rejoin(user_id, self.ap.round, phase))
        self.metrics.rejoined(user_id)
        where = {"session_id": self.ap.session_id, "user_id": user_id, "round": self.ap.round}
        log.info("%s rejoined at round %d (%s)", user_id, self.ap.round, phase, extra=where)
        if self.unanswered.get(user_id) is not None:
            link.send(self.unanswered[user_id])
        return True

    def _deliver(
        self, phase: str, handler: Callable[[str, bytes], object], replies: dict[str, bytes]
    ) -> dict[str, object]:
        """``handler(user_id, reply)`` of each reply; a ProtocolError drops that user (the
        reason names ``phase``) and leaves it out of the results."""
        out = {}
        for user_id, data in replies.items():
            try:
                out[user_id] = handler(user_id, data)
            except ProtocolError as exc:
                self._drop(user_id, f"{phase}: {exc}")
        return out

    # -------------------------------------------------------------- phases
    def handshake(self) -> None:
        """Register every link's user (a resumed session: take it back); the AP's accepts."""
        register = self.ap.rejoin if self.resumed else self.ap.handshake
        down = up = 0
        for link in self.pending:
            user_id = None
            try:
                request = link.receive(self.policy.reply_timeout)
                user_id, accept = register(request)
                sent = self._send_accept(link, accept)
            except (LinkError, ProtocolError) as exc:
                log.warning("handshake failed: %s", exc)
                if user_id is not None:  # registered, but the accept never arrived
                    self._lose(user_id, f"handshake: {exc}")
                continue
            self.links[user_id] = link
            self.metrics.user_joined(user_id)
            check_rejoins_with = getattr(link, "check_rejoins_with", None)
            if check_rejoins_with is not None:
                check_rejoins_with(self.ap.check_rejoin)
            down, up = down + sent, up + len(request)
        if self.resumed:  # the traffic of the first handshake stays the session's
            for user_id in self.ap.users:
                if user_id not in self.links:
                    self._lose(user_id, "did not come back after the AP restarted")
        else:
            self.phases["handshake"] = {"bytes_down": down, "bytes_up": up}
            self.user_order = list(self.links)
        if not self.links:
            raise ProtocolError("no user completed the handshake")
        setup = self._extra_exchanges("setup")
        if setup["bytes_down"]:  # secure aggregation's key setup
            self.phases["setup"] = setup
            self.metrics.phase_traffic("setup", setup)
        if self.checkpoint:
            self.checkpoint(self)

    def _extra_exchanges(self, phase: str) -> dict:
        """The AP's exchanges besides the protocol's phases (:meth:`AccessPoint.extra_messages`:
        secure aggregation's key setup, a round's mask recovery) until it has none; their
        traffic summed, as :meth:`_exchange` counts it."""
        total: dict = {"bytes_down": 0, "bytes_up": 0}
        while messages := self.ap.extra_messages():
            self._exchange(phase, messages, self.ap.receive_extra)
            _add_traffic(total, self.phases.pop(phase))
        return total

    def admm_round(self) -> RoundRecord:
        start = time.perf_counter()
        self._exchange("round", self.ap.round_messages(), self.ap.receive)
        recovery = self._extra_exchanges("recovery")
        stats: RoundStats = self.ap.step()
        failpoint("ap.round", at=stats.round)
        traffic = _add_traffic(self.phases.pop("round"), recovery)
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
        self.records.append(record)
        self.metrics.round_finished(record)
        where = {"session_id": self.ap.session_id, "round": record.round}
        log.info("round %d finished: %.3f s", record.round, record.seconds, extra=where)
        if self.on_round:
            self.on_round(record)
        # written once the next exchange's messages are out: off the round trip's path, and
        # on disk before that exchange's replies are taken (:meth:`_write_checkpoint`)
        self._checkpoint_due = self.checkpoint is not None
        return record

    def _write_checkpoint(self) -> None:
        """Save the checkpoint of the last round if it is due. The driver calls it after
        sending the next exchange's messages, which change nothing a checkpoint holds (the
        AP's F, Z, U, round and users, the records and traffic so far), so the file is the
        one written right after the round; and before taking that exchange's replies, so a
        crash from then on resumes where it did."""
        if self._checkpoint_due:
            self._checkpoint_due = False
            self.checkpoint(self)

    def align(self) -> list[RoundRecord]:
        """The strategy's rounds (if any, from the AP's current round on), then its final
        transmission and the users' Acks."""
        while self.ap.round < self.ap.rounds and self.links:
            self.admm_round()
        phase = self.ap.final_phase
        messages = self.ap.final_messages()
        self._exchange(phase, messages, self.ap.receive, label="final")
        for user_id in self.links:  # a user coming back later needs it again
            if user_id in messages:
                self.prelude[user_id] = [messages[user_id]]
        try:
            final = self.ap.final_stats()
            self.phases["final"] = self.phases.pop(phase)
            self.phases["final"].update(mse=final.mse, objective=final.objective)
            self.metrics.phase_traffic("final", self.phases["final"])
        except ProtocolError as exc:
            log.warning("%s", exc)
        self._write_checkpoint()  # no exchange followed the last round (no users left)
        failpoint("ap.final")
        return self.records

    def run(self, test_latents: np.ndarray, test_ids: np.ndarray) -> SessionResult:
        """Handshake, alignment, evaluation on ``test_latents`` (n_test, d), end."""
        self.handshake()
        failpoint("ap.handshake")
        rounds = self.align()
        requests = self.ap.evaluation_requests(test_latents, test_ids)
        reports = self._exchange("evaluation", requests, self.ap.receive_report)
        self.metrics.phase_traffic("evaluation", self.phases["evaluation"])
        failpoint("ap.evaluation")
        end = self.ap.end_message()
        for user_id, link in list(self.links.items()):
            try:
                link.send(end)
            except LinkError as exc:
                log.debug("end to %s failed: %s", user_id, exc)
        return SessionResult(
            reports={uid: _user_report(r) for uid, r in reports.items()},
            rounds=rounds,
            phases=phases_from_dict(self.phases),
            dropped={u.user_id: u.dropped for u in self.ap.users.values() if u.dropped},
            user_order=self.user_order,
            encoders={u.user_id: u.encoder for u in self.ap.users.values()},
            rejoins=self.rejoins,
            stragglers=self.stragglers,
        )


def _add_traffic(total: dict, more: dict) -> dict:
    """``total`` with the bytes (and per-user bytes) of ``more`` added; returns it."""
    for key in ("bytes_down", "bytes_up"):
        total[key] = total.get(key, 0) + more.get(key, 0)
        per_user = more.get(f"{key}_per_user", {})
        if per_user:
            merged = total.setdefault(f"{key}_per_user", {})
            for user_id, count in per_user.items():
                merged[user_id] = merged.get(user_id, 0) + count
    return total


def _user_report(report) -> UserReport:
    """The typed copy of a user's evaluation report (its protobuf message)."""
    keys = ("accuracy", "native_accuracy", "mse", "mse_whitened", "samples")
    return UserReport(**{key: getattr(report, key) for key in keys})
