"""The in-process transport: a user's link that calls its state machine directly, and a link
whose user drops at a given round (tests, ``semalign audit``, benchmarks)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from semalign.client.user import User
from semalign.common.errors import LinkClosed, LinkError
from semalign.proto import semalign_pb2 as pb

#: Called with (user id, "up" or "down", bytes) for every message the AP takes from a link
#: ("up") or hands to it ("down").
Tap = Callable[[str, str, bytes], None]


class LoopbackLink:
    """In-process link: delivering a message calls the user's state machine directly.

    ``tap`` (optional) sees every message the AP receives on this link ("up") or sends on it
    ("down"), as bytes, at the moment they pass: a record of the AP's side of the wire
    (``semalign audit``), independent of what the user keeps in memory afterwards.
    """

    def __init__(self, user: User, tap: Tap | None = None) -> None:
        self.user = user
        self.tap = tap
        self._replies: deque[bytes] = deque([user.handshake_request()])

    def send(self, data: bytes) -> None:
        if self.tap is not None:
            self.tap(self.user.user_id, "down", data)
        reply = self.user.handle(data)
        if reply is not None:
            self._replies.append(reply)

    def receive(self, timeout: float | None) -> bytes:
        if not self._replies:
            raise LinkError(f"user {self.user.user_id} has nothing to send")
        data = self._replies.popleft()
        if self.tap is not None:
            self.tap(self.user.user_id, "up", data)
        return data


class DroppingLink:
    """A link whose user drops when the broadcast of round ``dies_at`` reaches it: that
    broadcast is not delivered, the user never answers again, and the AP sees its stream
    closed (:class:`~semalign.common.errors.LinkClosed`) on every later send or receive.

    Wraps a :class:`LoopbackLink` (its ``tap`` still records what passed); ``dead`` says
    whether the user has dropped. Only ADMM rounds of the compact protocol (CompactBroadcast,
    secure aggregation's rounds) count; the final broadcast never drops.
    """

    def __init__(self, link: LoopbackLink, dies_at: int) -> None:
        self.link, self.dies_at, self.dead = link, dies_at, False
        self.user = link.user

    def send(self, data: bytes) -> None:
        if self.dead:
            raise LinkClosed(f"user {self.user.user_id} dropped")
        message = pb.ApMessage.FromString(data)
        if message.WhichOneof("body") == "compact_broadcast":
            body = message.compact_broadcast
            if body.round == self.dies_at and not body.final:
                self.dead = True
                return
        self.link.send(data)

    def receive(self, timeout: float | None) -> bytes:
        if self.dead:
            raise LinkClosed(f"user {self.user.user_id} dropped")
        return self.link.receive(timeout)
