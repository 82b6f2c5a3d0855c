"""A user's gRPC stream as the driver's ``UserLink``, rebindable to a new stream.

The driver's side is :meth:`GrpcLink.send` / :meth:`GrpcLink.receive`; the gRPC side (the
service's handler and a reader thread per stream) feeds one *binding* per stream. When a user
whose stream broke comes back (its fresh handshake passed the service's checks), the service
calls :meth:`GrpcLink.rebind`: the next ``receive`` raises
:class:`~semalign.common.errors.LinkRejoined` with the new handshake, and once the driver has
taken the user back (:meth:`GrpcLink.accept_rejoin`) everything it sends goes to the new stream.
Messages of an older stream that arrive later are discarded.

A second stream never evicts a live one (:meth:`GrpcLink.rebind`): a comeback must pass the
AP's rejoin check (the same encoder, dimensions, SNR, CSI and pilots as the first handshake)
before anything changes, and is refused while the user's stream (or one already waiting to
replace it) is alive; only a stream the transport reports gone is replaced.

A message over the AP's receive limit ends its stream inside gRPC: the server's handler only
sees the stream end, like a user that vanished. The one sign is that gRPC's receive operation
failed (a stream cut by the network, or cancelled by the user, ends with a successful empty
receive), which :func:`watch_receive_failures` records on the call; such a stream ends its
link for good (``receive`` raises ``LinkError``: the driver drops the user at once, with no
rejoin grace).

Bytes are counted where they cross the gRPC boundary, over all of a link's streams.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc
from semalign.common.errors import LinkClosed, LinkError, LinkRejoined, LinkTimeout, ProtocolError

_CLOSED = object()  # outbox sentinel: the stream is gone
_FINISH = object()  # outbox sentinel: end the stream with status OK

#: Unread messages a user may have queued at the AP. The protocol is one reply per AP message,
#: so an honest user has at most one or two ahead; more end its stream (RESOURCE_EXHAUSTED), so a
#: user cannot fill the AP's memory while it waits in the lobby or for the other users.
MAX_QUEUED = 8


@dataclass(frozen=True)
class Abort:
    """End a stream with an error status."""

    code: grpc.StatusCode
    reason: str


class Binding:
    """One stream of a link: its generation and the queue of messages for it.

    ``pilot_chunk_bytes``: the most bytes of X in one PilotChunk the user's process on this
    stream takes (its metadata, :mod:`semalign.common.pilot_stream`); ``None``: X whole, in
    the HandshakeAccept.
    """

    def __init__(self, generation: int, peer: str, pilot_chunk_bytes: int | None = None) -> None:
        self.generation = generation
        self.peer = peer
        self.pilot_chunk_bytes = pilot_chunk_bytes
        self.outbox: queue.SimpleQueue = queue.SimpleQueue()
        self.closed_reason: str | None = None
        #: the stream ended in a way that ends the user (a message over the receive limit)
        self.final = False
        #: the stream's gRPC context, once it is served (asked whether the stream is alive)
        self.context: grpc.ServicerContext | None = None

    @property
    def alive(self) -> bool:
        """Neither ended (its reader or the stream's callback saw it) nor, per the transport,
        gone (``is_active``: cancelled, reset, or finished with a status)."""
        if self.closed_reason is not None:
            return False
        context = self.context
        return context is None or context.is_active()


class GrpcLink:
    """A user's streams as one ``UserLink``: the driver's side of an inbox and an outbox.

    ``send`` never blocks and never raises: a message for a closed stream is discarded and
    the next ``receive`` raises ``LinkClosed`` (or ``LinkRejoined`` once the user is back),
    so the driver decides at a well-defined point.
    """

    def __init__(
        self, user_id: str, handshake: bytes, peer: str = "", pilot_chunk_bytes: int | None = None
    ) -> None:
        self.user_id = user_id
        self._cond = threading.Condition()
        self._items: deque[tuple[int, bytes]] = deque()
        self._binding = Binding(0, peer, pilot_chunk_bytes)
        self._pending: tuple[Binding, bytes] | None = None
        self.ended = False  # finished or aborted by the AP: no coming back
        self.bytes_up = 0
        self.bytes_down = 0
        self.messages_up = 0
        self.messages_down = 0
        self.joined_at = time.time()
        self.closed_at: float | None = None
        #: the AP's check of a comeback's handshake (set by the driver once the user is
        #: registered): raises ProtocolError, changes nothing
        self.rejoin_check: Callable[[bytes], object] | None = None
        self._incoming(self._binding, handshake)

    @property
    def binding(self) -> Binding:
        """The stream the driver sends on."""
        return self._binding

    @property
    def peer(self) -> str:
        return self._binding.peer

    @property
    def pilot_chunk_bytes(self) -> int | None:
        """The chunk size for X the current stream takes (the driver's
        :meth:`~semalign.server.session.SessionDriver._send_accept` asks it)."""
        return self._binding.pilot_chunk_bytes

    @property
    def closed_reason(self) -> str | None:
        return self._binding.closed_reason

    # ---------------------------------------------------------------- driver side
    def send(self, data: bytes) -> None:
        with self._cond:
            binding = self._binding
            if binding.closed_reason is not None:
                return
            self.bytes_down += len(data)  # counted as handed to this stream, in order
            self.messages_down += 1
        binding.outbox.put(data)

    def receive(self, timeout: float | None) -> bytes:
        """The next message of the current stream; LinkRejoined once the user is back on a
        new stream, LinkClosed if the stream ended, LinkTimeout after ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                current = self._binding.generation
                while self._items and self._items[0][0] != current:
                    self._items.popleft()  # a stream the user left
                if self._items:
                    return self._items.popleft()[1]
                if self._pending is not None:
                    raise LinkRejoined(self._pending[1])
                if self._binding.closed_reason is not None:
                    if self._binding.final:  # no coming back from this one
                        raise LinkError(self._binding.closed_reason)
                    raise LinkClosed(self._binding.closed_reason)
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise LinkTimeout(f"no reply within {timeout:g} s")
                self._cond.wait(left)

    def wait_rejoin(self, timeout: float) -> bytes | None:
        """The handshake of the user's new stream, once it comes back within ``timeout`` s."""
        with self._cond:
            self._cond.wait_for(lambda: self._pending is not None or self.ended, timeout)
            return self._pending[1] if self._pending is not None else None

    def check_rejoins_with(self, check: Callable[[bytes], object]) -> None:
        """From now on, a comeback's handshake must pass ``check`` (the AP's
        :meth:`~semalign.server.access_point.AccessPoint.check_rejoin`) before :meth:`rebind`
        changes anything."""
        self.rejoin_check = check

    def refuse_rejoin(self, reason: str) -> None:
        """End the stream waiting to replace the current one (the driver refused its
        handshake); the current stream, alive or not, stays the link's."""
        with self._cond:
            pending, self._pending = self._pending, None
        if pending is not None:
            pending[0].outbox.put(Abort(grpc.StatusCode.INVALID_ARGUMENT, reason))

    def accept_rejoin(self) -> None:
        """Send on the new stream from now on (the old one, if still open, is ended)."""
        with self._cond:
            if self._pending is None:
                return
            old, (self._binding, _) = self._binding, self._pending
            self._pending = None
        old.outbox.put(Abort(grpc.StatusCode.ABORTED, "replaced by a newer stream of this user"))

    def finish(self) -> None:
        """End the stream normally (status OK) once the queued messages are sent."""
        with self._cond:
            self.ended = True
            self._cond.notify_all()
        self._binding.outbox.put(_FINISH)

    def abort(self, reason: str, code: grpc.StatusCode = grpc.StatusCode.ABORTED) -> None:
        """End the stream (and one waiting to replace it) with an error status: the user was
        dropped or refused."""
        with self._cond:
            self.ended = True
            pending, self._pending = self._pending, None
            self._cond.notify_all()
        self._binding.outbox.put(Abort(code, reason))
        if pending is not None:
            pending[0].outbox.put(Abort(code, reason))

    def counters(self) -> tuple[int, int]:
        with self._cond:
            return self.bytes_down, self.bytes_up

    # ---------------------------------------------------------------- gRPC side
    def rebind(
        self, handshake: bytes, peer: str, pilot_chunk_bytes: int | None = None
    ) -> Binding | Abort:
        """A new stream of this user with its handshake, or why it is refused (the link and
        its streams are then untouched):

        * ABORTED: the AP has ended the link (finished, or dropped the user);
        * INVALID_ARGUMENT: the handshake fails the AP's rejoin check (another encoder,
          dimensions, SNR, CSI, or without the session's pilots);
        * ALREADY_EXISTS: the user's stream is alive (or one that is waiting to replace it):
          a second stream never evicts a live one.

        A stream that was waiting to replace the current one and is gone itself is replaced.
        """
        ended = Abort(grpc.StatusCode.ABORTED, "the AP has ended this user's session")
        if self.ended:
            return ended
        check = self.rejoin_check
        if check is not None:
            try:
                check(handshake)
            except ProtocolError as exc:
                return Abort(grpc.StatusCode.INVALID_ARGUMENT, f"rejoin refused: {exc}")
        with self._cond:
            if self.ended:
                return ended
            live = self._pending[0] if self._pending is not None else self._binding
            if live.alive:
                return Abort(
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"rejoin refused: {self.user_id} has a live stream (from {live.peer}); a "
                    "second stream is refused while it lasts",
                )
            newest = live.generation
            binding = Binding(newest + 1, peer, pilot_chunk_bytes)
            replaced, self._pending = self._pending, (binding, handshake)
            self.bytes_up += len(handshake)
            self.messages_up += 1
            self._cond.notify_all()
        if replaced is not None:
            replaced[0].outbox.put(Abort(grpc.StatusCode.ABORTED, "replaced by a newer stream"))
        return binding

    def _incoming(self, binding: Binding, data: bytes) -> int:
        """Queue a message of ``binding``; returns how many of its messages wait unread."""
        with self._cond:
            self.bytes_up += len(data)
            self.messages_up += 1
            self._items.append((binding.generation, data))
            self._cond.notify_all()
            return sum(g == binding.generation for g, _ in self._items)

    def _closed(self, binding: Binding, reason: str, *, final: bool = False) -> None:
        """``binding``'s stream ended; ``final``: in a way that ends the user (no comeback)."""
        with self._cond:
            if binding.closed_reason is not None:
                return
            binding.closed_reason = reason
            binding.final = final
            if binding is self._binding:
                self.closed_at = time.time()
            self._cond.notify_all()
        binding.outbox.put(_CLOSED)

    def _outgoing(self, binding: Binding, context: grpc.ServicerContext) -> Iterator[bytes]:
        while True:
            item = binding.outbox.get()
            if item is _FINISH or item is _CLOSED:
                return
            if isinstance(item, Abort):
                context.abort(item.code, item.reason)
            yield item


def read_stream(
    request_iterator, link: GrpcLink, binding: Binding, too_large: str | None = None
) -> None:
    """Feed one stream's messages into its link until the stream ends (a reader thread).
    ``too_large``: the reason to end the user with if gRPC failed to receive a message."""
    reason = "the stream broke"
    try:
        for data in request_iterator:
            if link._incoming(binding, data) > MAX_QUEUED:
                reason = f"more than {MAX_QUEUED} messages ahead of the protocol"
                link.abort(reason, grpc.StatusCode.RESOURCE_EXHAUSTED)
                binding.outbox.put(Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, reason))
                return
        reason = "the user closed its stream"
    except Exception as exc:  # grpc raises a bare RpcError when the user cancels or vanishes
        details = getattr(exc, "details", None)
        text = details() if callable(details) else str(exc)
        reason = f"the stream broke ({type(exc).__name__}{': ' + text if text else ''})"
    finally:
        if too_large is not None and receive_failed(binding.context):
            link._closed(binding, too_large, final=True)
        link._closed(binding, reason)


def watch_receive_failures() -> bool:
    """Record on each server call whether gRPC failed to receive one of its messages.

    grpcio's server hands a message that its core refused (over
    ``grpc.max_receive_message_length``: the core ends the stream with RESOURCE_EXHAUSTED,
    "Received message larger than max") to the handler as the end of the request stream, the
    same as a user that vanished; only the receive operation's ``success`` tells them apart.
    This wraps grpcio's private ``grpc._server._receive_message`` once per process to keep
    that flag (read by :func:`receive_failed`). False, and nothing changed, if this grpcio
    lacks it: such a stream then waits out the rejoin grace as before
    (``tests/test_network_oversize.py`` pins the behaviour).
    """
    try:
        from grpc import _server
    except ImportError:
        return False
    original = getattr(_server, "_receive_message", None)
    if original is None:
        return False
    if getattr(original, "_semalign_watch", False):
        return True

    def receive_message(state, call, deserializer):
        callback = original(state, call, deserializer)

        def watched(event):
            if not getattr(event, "success", True):
                try:
                    state.semalign_receive_failed = True
                except AttributeError:  # a state without a __dict__: cannot say
                    pass
            return callback(event)

        return watched

    receive_message._semalign_watch = True  # type: ignore[attr-defined]
    _server._receive_message = receive_message
    return True


def receive_failed(context: grpc.ServicerContext | None) -> bool:
    """Whether gRPC failed to receive a message of ``context``'s stream (see
    :func:`watch_receive_failures`)."""
    state = getattr(context, "_state", None)
    return bool(getattr(state, "semalign_receive_failed", False))
