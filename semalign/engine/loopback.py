"""The in-process transport: a user's link that calls its state machine directly."""

from __future__ import annotations

from collections import deque

from semalign.client.user import User
from semalign.common.errors import LinkError


class LoopbackLink:
    """In-process link: delivering a message calls the user's state machine directly."""

    def __init__(self, user: User) -> None:
        self.user = user
        self._replies: deque[bytes] = deque([user.handshake_request()])

    def send(self, data: bytes) -> None:
        reply = self.user.handle(data)
        if reply is not None:
            self._replies.append(reply)

    def receive(self, timeout: float | None) -> bytes:
        if not self._replies:
            raise LinkError(f"user {self.user.user_id} has nothing to send")
        return self._replies.popleft()
