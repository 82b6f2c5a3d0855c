"""The AP's gRPC alignment service: one long-lived bidirectional stream per user.

This is only a transport. Each incoming ``Alignment/Session`` stream becomes a :class:`GrpcLink`
(a queue-backed ``UserLink``); a :class:`Lobby` collects the links of one session (checking the
per-session token and the user id of each handshake), and the unchanged
:class:`~semalign.server.session.SessionDriver` then runs the protocol over them exactly as it
does over in-process loopback links.

Stream life cycle, seen from the AP:

1. the user opens the stream; the handler waits for an open lobby and sends the
   :class:`~semalign.common.contract.SessionOffer` as initial metadata;
2. the first message must be a HandshakeRequest with the session token, otherwise the stream is
   aborted (UNAUTHENTICATED, PERMISSION_DENIED, ALREADY_EXISTS...) with a one-line reason;
3. the link joins the lobby; a reader thread feeds the user's messages into the link, the
   handler's generator hands the driver's messages to gRPC;
4. after SessionEnd the AP finishes the stream with status OK; a user the driver dropped (timeout,
   disconnect, protocol error) gets status ABORTED with the reason.

Bytes are counted per link where they cross the gRPC boundary: both sides register the method
without protobuf (de)serializers, so the byte strings a link hands to gRPC (counted when the driver
sends them, so each lands in its own round) and receives from it are the gRPC message payloads.
"""

from __future__ import annotations

import hmac
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from semalign.common.contract import (
    MAX_MESSAGE_BYTES,
    METHOD_NAME,
    OFFER_KEY,
    SERVICE,
    SessionOffer,
    TlsFiles,
    TransportError,
    check_address,
    server_options,
)
from semalign.common.errors import LinkError, ProtocolError, UsageError
from semalign.common.wire import parse_user_message

log = logging.getLogger(__name__)

_CLOSED = object()  # inbox sentinel: the stream is gone
_FINISH = object()  # outbox sentinel: end the stream with status OK


@dataclass(frozen=True)
class _Abort:
    code: grpc.StatusCode
    reason: str


class GrpcLink:
    """A user's stream as a ``UserLink``: the driver's side of two queues.

    ``send`` never blocks and never raises: a message for a closed stream is discarded and the
    next ``receive`` raises ``LinkError``, so the driver drops the user at a well-defined point.
    """

    def __init__(self, user_id: str, handshake: bytes, peer: str = "") -> None:
        self.user_id = user_id
        self.peer = peer
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.closed_reason: str | None = None
        self.closed_at: float | None = None
        self.bytes_up = 0
        self.bytes_down = 0
        self.messages_up = 0
        self.messages_down = 0
        self.joined_at = time.time()
        self._incoming(handshake)

    # ---------------------------------------------------------------- driver side
    def send(self, data: bytes) -> None:
        if self.closed_reason is None:
            with self._lock:  # counted as handed to this stream, in the driver's order
                self.bytes_down += len(data)
                self.messages_down += 1
            self._outbox.put(data)

    def receive(self, timeout: float | None) -> bytes:
        try:
            item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            raise LinkError(f"no reply within {timeout:g} s") from None
        if item is _CLOSED:
            self._inbox.put(_CLOSED)  # every later receive fails the same way
            raise LinkError(self.closed_reason or "stream closed")
        return item

    def finish(self) -> None:
        """End the stream normally (status OK) once the queued messages are sent."""
        self._outbox.put(_FINISH)

    def abort(self, reason: str, code: grpc.StatusCode = grpc.StatusCode.ABORTED) -> None:
        """End the stream with an error status (the user was dropped)."""
        self._outbox.put(_Abort(code, reason))

    # ---------------------------------------------------------------- gRPC side
    def _incoming(self, data: bytes) -> None:
        with self._lock:
            self.bytes_up += len(data)
            self.messages_up += 1
        self._inbox.put(data)

    def _closed(self, reason: str) -> None:
        with self._lock:
            if self.closed_reason is not None:
                return
            self.closed_reason = reason
            self.closed_at = time.time()
        self._inbox.put(_CLOSED)
        self._outbox.put(_CLOSED)

    def _outgoing(self, context: grpc.ServicerContext) -> Iterator[bytes]:
        while True:
            item = self._outbox.get()
            if item is _FINISH or item is _CLOSED:
                return
            if isinstance(item, _Abort):
                context.abort(item.code, item.reason)
            yield item

    def counters(self) -> tuple[int, int]:
        with self._lock:
            return self.bytes_down, self.bytes_up


def _natural_key(user_id: str) -> tuple:
    """user2 before user10: digit runs compare as numbers."""
    import re

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
    """

    offer: SessionOffer
    expected: Sequence[str] | int
    required: set[str] | None = None
    links: dict[str, GrpcLink] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self.is_open = True
        self.opened_at = time.time()

    @property
    def expected_count(self) -> int:
        return self.expected if isinstance(self.expected, int) else len(self.expected)

    def join(self, link: GrpcLink) -> _Abort | None:
        with self._cond:
            if not self.is_open:
                return _Abort(grpc.StatusCode.UNAVAILABLE, "the session has already started")
            if not isinstance(self.expected, int) and link.user_id not in self.expected:
                return _Abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"user id {link.user_id!r} is not invited to this session",
                )
            if link.user_id in self.links:
                return _Abort(
                    grpc.StatusCode.ALREADY_EXISTS, f"user id {link.user_id!r} already joined"
                )
            if len(self.links) >= self.expected_count:
                return _Abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the session is full ({self.expected_count} users)",
                )
            self.links[link.user_id] = link
            self._cond.notify_all()
        log.info("%s joined session %s from %s", link.user_id, self.offer.session_id, link.peer)
        return None

    def wait(
        self, timeout: float | None, poll: Callable[[list[str]], None] | None = None
    ) -> list[GrpcLink]:
        """Wait for every expected user (or ``timeout`` s), close the lobby, return the links.

        ``poll(joined_ids)`` is called about every 0.25 s while waiting (progress display, child
        process checks); an exception from it closes the lobby and propagates.
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
                            poll(joined)
                        finally:
                            self._cond.acquire()
                    self._cond.wait(0.25 if left is None else min(left, 0.25))
        finally:
            with self._cond:
                self.is_open = False
                links = sorted(self.links.values(), key=lambda link: _natural_key(link.user_id))
        return links

    def _complete(self) -> bool:
        if len(self.links) >= self.expected_count:
            return True
        return self.required is not None and self.required <= set(self.links)

    @property
    def missing(self) -> list[str]:
        if isinstance(self.expected, int):
            return []
        return [u for u in self.expected if u not in self.links]


class AlignmentService:
    """The ``semalign.v1.Alignment`` service: streams in, lobbies of links out.

    Args:
        token: the per-session secret users must present in their HandshakeRequest.
        lobby_wait: seconds a connecting user may wait for the next session to open.
    """

    def __init__(self, token: str, *, lobby_wait: float = 300.0) -> None:
        if not token:
            raise UsageError("the alignment service needs a non-empty session token")
        self._token = token.encode()
        self.lobby_wait = lobby_wait
        self._cond = threading.Condition()
        self._lobby: Lobby | None = None
        self._closing = False

    # ---------------------------------------------------------------- AP side
    def open_lobby(
        self,
        offer: SessionOffer,
        expected: Sequence[str] | int,
        required: set[str] | None = None,
    ) -> Lobby:
        with self._cond:
            self._lobby = Lobby(offer, expected, required=required)
            self._cond.notify_all()
            return self._lobby

    def close(self) -> None:
        """Refuse new streams (users waiting for a lobby get UNAVAILABLE)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    # ---------------------------------------------------------------- gRPC side
    def _wait_lobby(self, context: grpc.ServicerContext) -> Lobby | None:
        deadline = time.monotonic() + self.lobby_wait
        with self._cond:
            while not self._closing and context.is_active():
                lobby = self._lobby
                if lobby is not None and lobby.is_open:
                    return lobby
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.5))
        return None

    def session(self, request_iterator, context: grpc.ServicerContext) -> Iterator[bytes]:
        """The ``Session`` method: raw UserMessage bytes in, raw ApMessage bytes out."""
        lobby = self._wait_lobby(context)
        if lobby is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "no alignment session is open at the AP")
        context.send_initial_metadata(((OFFER_KEY, lobby.offer.to_header()),))
        try:
            first = next(request_iterator)
        except StopIteration:
            return
        try:
            msg = parse_user_message(first)
        except ProtocolError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if msg.WhichOneof("body") != "handshake":
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a HandshakeRequest"
            )
        if not hmac.compare_digest(msg.handshake.token.encode(), self._token):
            log.warning("rejected %r from %s: bad token", msg.handshake.user_id, context.peer())
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid session token")
        link = GrpcLink(msg.handshake.user_id, first, peer=context.peer())
        refused = lobby.join(link)
        if refused is not None:
            lobby.rejected.append(link.user_id)
            log.warning("rejected %r: %s", link.user_id, refused.reason)
            context.abort(refused.code, refused.reason)
        context.add_callback(lambda: link._closed("the stream ended (user gone)"))
        threading.Thread(
            target=_read_stream,
            args=(request_iterator, link),
            name=f"read-{link.user_id}",
            daemon=True,
        ).start()
        yield from link._outgoing(context)

    def handler(self) -> grpc.GenericRpcHandler:
        method = grpc.stream_stream_rpc_method_handler(self.session)  # raw bytes both ways
        return grpc.method_handlers_generic_handler(SERVICE, {METHOD_NAME: method})


def _read_stream(request_iterator, link: GrpcLink) -> None:
    reason = "the stream broke"
    try:
        for data in request_iterator:
            link._incoming(data)
        reason = "the user closed its stream"
    except Exception as exc:  # grpc raises a bare RpcError when the user cancels or vanishes
        details = getattr(exc, "details", None)
        text = details() if callable(details) else str(exc)
        reason = f"the stream broke ({type(exc).__name__}{': ' + text if text else ''})"
    finally:
        link._closed(reason)


@dataclass
class RunningServer:
    server: grpc.Server
    service: AlignmentService
    port: int
    address: str

    def stop(self, grace: float | None = 1.0) -> None:
        self.service.close()
        self.server.stop(grace).wait()


def start_server(
    service: AlignmentService,
    address: str = "127.0.0.1:0",
    *,
    tls: TlsFiles | None = None,
    max_workers: int = 64,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> RunningServer:
    """Serve ``service`` on ``address`` (port 0: an ephemeral port). One worker per stream."""
    host, _ = check_address(address, what="listen address")
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="alignment"),
        options=server_options(max_message_bytes),
        maximum_concurrent_rpcs=max_workers,
    )
    server.add_generic_rpc_handlers((service.handler(),))
    try:
        if tls is not None and tls.enabled:
            port = server.add_secure_port(address, tls.server_credentials())
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise TransportError(f"cannot listen on {address}: {exc}") from None
    if not port:
        raise TransportError(f"cannot listen on {address} (in use or not a local address)")
    server.start()
    shown = f"[{host}]" if ":" in host else host
    return RunningServer(server, service, port, f"{shown}:{port}")
