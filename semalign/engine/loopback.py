"""The in-process transport: a user's link that calls its state machine directly."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from semalign.client.user import User
from semalign.common.errors import LinkError

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
