"""The users gathering for one networked session, and the ones that may come back to it."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
from semalign.common.contract import SessionOffer
from semalign.server.grpc_link import Abort, GrpcLink

log = logging.getLogger(__name__)


def natural_key(user_id: str) -> tuple:
    """user2 before user10: digit runs compare as numbers."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", user_id))


@dataclass
class Lobby:
    """The users gathering for one session.

    Args:
        offer: sent to each user as initial metadata.
        expected: the user ids to wait for (``semalign run``), or just how many (``semalign ap``).
        required: if given, the session starts as soon as these users have joined (later
            sessions wait only for the users that finished the previous one; a dropped user may
            still join while the lobby is open).

    Once the session runs (the lobby is closed) an admitted user whose link the AP has not
    ended may come back on a new stream (:meth:`can_rejoin`) until :meth:`end`.
    """

    offer: SessionOffer
    expected: Sequence[str] | int
    required: set[str] | None = None
    links: dict[str, GrpcLink] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)
    #: users known lost before joining (their process died, their SuperNode vanished), and why
    lost: dict[str, str] = field(default_factory=dict)
    #: the running session's round (the driver's AP), named when a late user is refused
    progress: Callable[[], int] | None = None

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self.is_open = True
        self.running = True
        self.opened_at = time.time()

    @property
    def expected_count(self) -> int:
        return self.expected if isinstance(self.expected, int) else len(self.expected)

    def join(self, link: GrpcLink) -> Abort | None:
        with self._cond:
            if not self.is_open:
                return Abort(grpc.StatusCode.UNAVAILABLE, "the session has already started")
            if not isinstance(self.expected, int) and link.user_id not in self.expected:
                return Abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"user id {link.user_id!r} is not invited to this session",
                )
            if link.user_id in self.links:
                return Abort(
                    grpc.StatusCode.ALREADY_EXISTS, f"user id {link.user_id!r} already joined"
                )
            if len(self.links) >= self.expected_count:
                return Abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the session is full ({self.expected_count} users)",
                )
            self.links[link.user_id] = link
            self._cond.notify_all()
        log.info("%s joined session %s from %s", link.user_id, self.offer.session_id, link.peer)
        return None

    def can_rejoin(self, user_id: str) -> bool:
        """Whether ``user_id`` may come back to the running session on a new stream."""
        with self._cond:
            link = self.links.get(user_id)
            return not self.is_open and self.running and link is not None and not link.ended

    def is_running(self) -> bool:
        """Whether the session has started and not ended (joining is closed)."""
        with self._cond:
            return not self.is_open and self.running

    def late_reason(self) -> str:
        """Why a user that is not part of the running session cannot join it."""
        at = f" (round {self.progress()})" if self.progress is not None else ""
        return f"the session has started{at}; joining is closed"

    def give_up(self, user_id: str, reason: str) -> None:
        """Stop waiting for ``user_id``: it is known lost (``reason``) before joining. A user
        that has already joined is the session's to drop; a given-up user that joins while
        the lobby is open is still welcome."""
        with self._cond:
            if user_id in self.links or user_id in self.lost:
                return
            if not isinstance(self.expected, int) and user_id not in self.expected:
                return
            self.lost[user_id] = reason
            self._cond.notify_all()
        log.warning("%s lost before joining session %s: %s", user_id, self.offer.session_id, reason)

    def end(self) -> None:
        """The session is over: nobody comes back to it."""
        with self._cond:
            self.running = False

    def wait(
        self,
        timeout: float | None,
        poll: Callable[[list[str]], dict[str, str] | None] | None = None,
    ) -> list[GrpcLink]:
        """Wait for every expected user (or ``timeout`` s), close the lobby, return the links.

        ``poll(joined_ids)`` is called about every 0.25 s while waiting (progress display, child
        process checks); it may return the users known lost meanwhile (``{user_id: reason}``:
        nobody waits for them, :meth:`give_up`); an exception from it closes the lobby and
        propagates.
        Links are returned in natural order of user id (user1, user2, ..., user10), the order
        the simulator registers users, so the AP's averaging order is the same.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            with self._cond:
                while not self._complete():
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    if poll is not None:
                        joined = list(self.links)
                        self._cond.release()
                        try:
                            lost = poll(joined) or {}
                        finally:
                            self._cond.acquire()
                        for user_id, reason in lost.items():
                            self.give_up(user_id, reason)  # the condition's lock is an RLock
                        if self._complete():
                            break
                    self._cond.wait(0.25 if left is None else min(left, 0.25))
        finally:
            with self._cond:
                self.is_open = False
                links = sorted(self.links.values(), key=lambda link: natural_key(link.user_id))
        return links

    def _complete(self) -> bool:
        gone = sum(1 for user_id in self.lost if user_id not in self.links)
        if len(self.links) + gone >= self.expected_count:
            return True
        return self.required is not None and self.required <= set(self.links)

    @property
    def missing(self) -> list[str]:
        """Invited users that never joined: their ids, or with only a number of users expected
        (``semalign ap --users N``) the ids known lost (:attr:`lost`), then one placeholder per
        other missing user (their ids are unknown)."""
        if isinstance(self.expected, int):
            named = [u for u in self.lost if u not in self.links]
            absent = range(len(self.links) + len(named) + 1, self.expected + 1)
            return named + [f"(unnamed user {i} of {self.expected})" for i in absent]
        return [u for u in self.expected if u not in self.links]

    @property
    def missing_reasons(self) -> dict[str, str]:
        """Why each of :attr:`missing` did not join: the reason it was lost, if known."""
        return {u: self.lost.get(u, "never joined") for u in self.missing}
