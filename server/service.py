"""The AP's gRPC alignment service: one long-lived bidirectional stream per user.

This is only a transport. Each incoming ``Alignment/Session`` stream becomes a :class:`GrpcLink`
(a queue-backed ``UserLink``); a :class:`Lobby` collects the links of one session, and the
unchanged :class:`~semalign.server.session.SessionDriver` then runs the protocol over them
exactly as it does over in-process loopback links.

Stream life cycle, seen from the AP (each refusal ends the stream at once with a one-line
reason):

1. credentials first: the stream's metadata must carry a user id and that user's token
   (:mod:`semalign.common.credentials`), otherwise UNAUTHENTICATED before anything is sent or
   read; then the stream counts against its peer address's and user id's limits
   (RESOURCE_EXHAUSTED beyond them);
2. the handler waits for an open lobby and sends the
   :class:`~semalign.common.contract.SessionOffer` as initial metadata;
3. the first message must arrive within ``first_message_timeout`` (DEADLINE_EXCEEDED) and be a
   HandshakeRequest of the authenticated user id (PERMISSION_DENIED) within the session's bounds
   (INVALID_ARGUMENT, :func:`~semalign.common.validation.check_handshake`);
4. the link joins the lobby (PERMISSION_DENIED: not invited, ALREADY_EXISTS, RESOURCE_EXHAUSTED:
   full); a reader thread feeds the user's messages into the link, the handler's generator hands
   the driver's messages to gRPC. Once the AP's last session runs, a user that is not part of
   it is refused at once (FAILED_PRECONDITION ``the session has started (round R); joining is
   closed``). Once the session runs, an admitted user whose link the AP
   has not ended may come back: its new stream, checked the same way, must pass the AP's
   rejoin check (INVALID_ARGUMENT: another encoder, dimensions, SNR, CSI or pilots than its
   first handshake) and is refused while the user's stream is alive (ALREADY_EXISTS: a second
   stream never evicts a live one); only then is it bound to its link
   (:meth:`GrpcLink.rebind`) and the driver takes it back;
5. after SessionEnd the AP finishes the stream with status OK; a user the driver drops (timeout,
   disconnect, a message that breaks the protocol) gets status ABORTED with the reason at once
   (INVALID_ARGUMENT if the AP refused its handshake). A message over the receive limit ends
   the stream inside gRPC (RESOURCE_EXHAUSTED to the user); the driver drops that user at once
   with "message too large", without waiting for a comeback.

The server also answers the standard gRPC health checking protocol
(:mod:`semalign.server.health`): SERVING from the first lobby until the service closes;
:func:`start_health_server` serves it alone on another address.

A user that sends ``semalign-pilot-chunks`` in its metadata (the most bytes it takes in one
message) gets the compact handshake's X in PilotChunks after a HandshakeAccept without X's
data (:mod:`semalign.common.pilot_stream`; the driver cuts it, the stream's binding carries the
size, a comeback's new stream its own).

Bytes are counted per link where they cross the gRPC boundary: both sides register the method
without protobuf (de)serializers, so the byte strings a link hands to gRPC (counted when the driver
sends them, so each lands in its own round) and receives from it are the gRPC message payloads.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from semalign.common.contract import (
    DEFAULT_RECEIVE_BYTES,
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
from semalign.common.credentials import TOKEN_KEY, USER_KEY, check_secret, token_is_valid
from semalign.common.errors import ProtocolError, UsageError
from semalign.common.network_defaults import (
    FIRST_MESSAGE_TIMEOUT,
    LOCAL_LISTEN,
    MAX_STREAMS_PER_ADDRESS,
)
from semalign.common.pilot_stream import CHUNKS_KEY, requested_limit
from semalign.common.validation import check_handshake, one_line
from semalign.common.wire import parse_user_message
from semalign.server.grpc_link import (
    Abort,
    Binding,
    GrpcLink,
    read_stream,
    receive_failed,
    watch_receive_failures,
)
from semalign.server.health import ApHealth
from semalign.server.lobby import Lobby

__all__ = ["AlignmentService", "GrpcLink", "Lobby", "RunningServer", "start_server"]

log = logging.getLogger(__name__)

#: Refused streams logged per peer address and minute.
LOG_REFUSALS = 10


class AlignmentService:
    """The ``semalign.v1.Alignment`` service: streams in, lobbies of links out.

    Args:
        secret: the AP's secret; user ``u``'s token is ``user_token(secret, u)``.
        lobby_wait: seconds an authenticated user may wait for the next session to open.
        first_message_timeout: seconds an authenticated stream has to send its handshake.
        max_streams_per_address: open streams allowed from one peer address (host).
        max_streams_per_user: open streams allowed for one user id.
    """

    def __init__(
        self,
        secret: str,
        *,
        lobby_wait: float = 300.0,
        first_message_timeout: float = FIRST_MESSAGE_TIMEOUT,
        max_streams_per_address: int = MAX_STREAMS_PER_ADDRESS,
        max_streams_per_user: int = 2,
    ) -> None:
        try:
            self._secret = check_secret(secret)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        self.lobby_wait = lobby_wait
        self.first_message_timeout = first_message_timeout
        self.limits = {"address": max_streams_per_address, "user": max_streams_per_user}
        self.open_streams: dict[tuple[str, str], int] = {}
        self.refused: dict[str, int] = {}  # status code name -> count, for tests and logs
        self._count_lock = threading.Lock()
        self._refusal_log: dict[str, tuple[float, int, int]] = {}
        self._cond = threading.Condition()
        self._lobby: Lobby | None = None
        self._closing = False
        #: the server's receive limit (bytes), named in the reason of a user that exceeds it
        self.max_receive_bytes: int | None = None
        self.health = ApHealth()  # SERVING once a lobby opened, until close()

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
        self.health.serving()
        return self._lobby

    def close(self) -> None:
        """Refuse new streams (users waiting for a lobby get UNAVAILABLE); health:
        NOT_SERVING from now on."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self.health.stopped()

    # ---------------------------------------------------------------- gRPC side
    def _wait_lobby(self, context: grpc.ServicerContext, user_id: str) -> Lobby | None:
        """An open lobby, or the running session's if ``user_id`` may come back to it. A user
        that is not part of the AP's last session, once it runs, is refused at once
        (FAILED_PRECONDITION: nothing is left to join); before an earlier session's end it
        waits for the next lobby."""
        deadline = time.monotonic() + self.lobby_wait
        with self._cond:
            while not self._closing and context.is_active():
                lobby = self._lobby
                if lobby is not None and (lobby.is_open or lobby.can_rejoin(user_id)):
                    return lobby
                if lobby is not None and lobby.offer.last and lobby.is_running():
                    reason = lobby.late_reason()
                    self._log_refusal(context.peer(), f"{reason} ({user_id!r})")
                    self._cond.release()  # _refuse raises; never abort holding the lock
                    try:
                        self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, reason)
                    finally:
                        self._cond.acquire()
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.5))
        return None

    def _log_refusal(self, peer: str, what: str) -> None:
        """Log a refused stream with its peer, at most LOG_REFUSALS per address per minute (a
        flood must not flood the log too); the count of the others is logged with the next."""
        host, now = _peer_host(peer), time.monotonic()
        with self._count_lock:
            start, logged, quiet = self._refusal_log.get(host, (now, 0, 0))
            if now - start > 60:
                start, logged = now, 0
            if logged >= LOG_REFUSALS:
                self._refusal_log[host] = (start, logged, quiet + 1)
                return
            self._refusal_log[host] = (start, logged + 1, 0)
        more = f" (+{quiet} more from this address not logged)" if quiet else ""
        log.warning("refused a stream from %s: %s%s", peer, what, more)

    def _refuse(self, context: grpc.ServicerContext, code: grpc.StatusCode, reason: str):
        with self._count_lock:
            self.refused[code.name] = self.refused.get(code.name, 0) + 1
        context.abort(code, one_line(reason))

    def _authenticate(self, context: grpc.ServicerContext) -> tuple[str, str]:
        """(user id, token) the stream's metadata proves (constant-time token compare), or
        abort UNAUTHENTICATED before anything is sent or read."""
        metadata = _metadata(context)
        user_id, token = metadata.get(USER_KEY, ""), metadata.get(TOKEN_KEY, "")
        if token_is_valid(self._secret, user_id, token):
            return user_id, token
        why = "no credentials" if not (user_id or token) else "invalid credentials"
        self._log_refusal(context.peer(), f"{why} (user id {one_line(user_id, 80)!r})")
        self._refuse(
            context,
            grpc.StatusCode.UNAUTHENTICATED,
            f"{why}: a stream needs {USER_KEY} and that user's {TOKEN_KEY} in its metadata",
        )
        raise AssertionError("unreachable")  # context.abort raised

    def _admit(self, context: grpc.ServicerContext, user_id: str) -> None:
        """Count the stream against its address's and user id's limits (released when the
        stream ends), or abort RESOURCE_EXHAUSTED: one peer cannot hold every worker."""
        keys = [("address", _peer_host(context.peer())), ("user", user_id)]
        with self._count_lock:
            for key in keys:
                if self.open_streams.get(key, 0) >= self.limits[key[0]]:
                    full = key
                    break
            else:
                full = None
                for key in keys:
                    self.open_streams[key] = self.open_streams.get(key, 0) + 1
        if full is not None:
            self._log_refusal(context.peer(), f"too many streams ({user_id!r})")
            self._refuse(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many open streams for {full[0]} {full[1]} (at most {self.limits[full[0]]})",
            )

        def release() -> None:
            with self._count_lock:
                for key in keys:
                    self.open_streams[key] -= 1
                    if not self.open_streams[key]:
                        del self.open_streams[key]

        if not context.add_callback(release):  # the stream already ended
            release()

    def _handshake(
        self, context: grpc.ServicerContext, request_iterator, credentials: tuple[str, str], lobby
    ) -> bytes | None:
        """The stream's first message, within ``first_message_timeout``: a HandshakeRequest of
        the authenticated user id, its token field empty or the metadata's, within the bounds
        of the session's configuration. Aborts the stream otherwise; ``None``: it closed."""
        first = _first_message(request_iterator, self.first_message_timeout)
        if first is _TIMEOUT:
            self._refuse(
                context,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no handshake within {self.first_message_timeout:g} s",
            )
        if first is None:
            return None
        code = grpc.StatusCode.INVALID_ARGUMENT
        user_id, token = credentials
        try:
            msg = parse_user_message(first)
            if msg.WhichOneof("body") != "handshake":
                raise ProtocolError("the first message must be a HandshakeRequest")
            req = msg.handshake
            if req.user_id != user_id:
                code = grpc.StatusCode.PERMISSION_DENIED
                raise ProtocolError(
                    f"handshake for user id {one_line(req.user_id, 80)!r} on a stream "
                    f"authenticated as {user_id!r}"
                )
            if req.token and not hmac.compare_digest(req.token.encode(), token.encode()):
                code = grpc.StatusCode.PERMISSION_DENIED
                raise ProtocolError("the handshake's token differs from the stream's")
            check_handshake(req, lobby.offer.config)
        except ProtocolError as exc:
            log.warning("refused %r from %s: %s", user_id, context.peer(), exc)
            self._refuse(context, code, f"handshake refused: {exc}")
        return first

    def session(self, request_iterator, context: grpc.ServicerContext) -> Iterator[bytes]:
        """The ``Session`` method: raw UserMessage bytes in, raw ApMessage bytes out.

        Order: credentials (metadata), stream limits, an open lobby, the offer, the handshake
        (with a deadline), the lobby's own checks; only then the driver sees the stream.
        """
        credentials = self._authenticate(context)
        user_id = credentials[0]
        self._admit(context, user_id)
        lobby = self._wait_lobby(context, user_id)
        if lobby is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "no alignment session is open at the AP")
        context.send_initial_metadata(((OFFER_KEY, lobby.offer.to_header()),))
        first = self._handshake(context, request_iterator, credentials, lobby)
        if first is None:
            return
        chunks = requested_limit(_metadata(context).get(CHUNKS_KEY))
        if lobby.is_open:
            link = GrpcLink(user_id, first, peer=context.peer(), pilot_chunk_bytes=chunks)
            binding = link.binding
            refused = lobby.join(link)
            if refused is not None:
                lobby.rejected.append(link.user_id)
                log.warning("rejected %r: %s", link.user_id, refused.reason)
                context.abort(refused.code, refused.reason)
        else:  # a user of the running session, back on a new stream
            link = lobby.links[user_id]
            rebound = link.rebind(first, context.peer(), chunks)
            if isinstance(rebound, Abort):
                log.warning("refused %r from %s: %s", user_id, context.peer(), rebound.reason)
                self._refuse(context, rebound.code, rebound.reason)
            binding = rebound
            log.info("%s is back on a new stream from %s", user_id, context.peer())
        yield from self._serve_stream(context, request_iterator, link, binding)

    def _too_large(self) -> str:
        limit = self.max_receive_bytes
        where = f" of {limit:,} bytes" if limit else ""
        return f"message too large: over the AP's receive limit{where}"

    def _serve_stream(self, context, request_iterator, link: GrpcLink, binding: Binding):
        """Feed the stream into its link (a reader thread); hand the driver's messages out."""
        binding.context = context
        too_large = self._too_large()

        def closed() -> None:
            if receive_failed(context):  # gRPC refused a message: the user is not coming back
                link._closed(binding, too_large, final=True)
            link._closed(binding, "the stream ended (user gone)")

        if not context.add_callback(closed):
            closed()
        threading.Thread(
            target=read_stream,
            args=(request_iterator, link, binding, too_large),
            name=f"read-{link.user_id}",
            daemon=True,
        ).start()
        yield from link._outgoing(binding, context)

    def handler(self) -> grpc.GenericRpcHandler:
        method = grpc.stream_stream_rpc_method_handler(self.session)  # raw bytes both ways
        return grpc.method_handlers_generic_handler(SERVICE, {METHOD_NAME: method})


_TIMEOUT = object()


def _first_message(request_iterator, timeout: float) -> bytes | object | None:
    """The next message of ``request_iterator`` within ``timeout`` s (``_TIMEOUT`` if none came;
    ``None`` if the stream closed or broke). The reader thread ends with the stream."""
    box: dict[str, bytes | None] = {"data": None}
    done = threading.Event()

    def read() -> None:
        try:
            box["data"] = next(request_iterator)
        except Exception:  # noqa: BLE001 - StopIteration, or the RpcError of a broken stream
            pass
        finally:
            done.set()

    threading.Thread(target=read, name="first-message", daemon=True).start()
    if not done.wait(timeout):
        return _TIMEOUT
    return box["data"]


def _metadata(context: grpc.ServicerContext) -> dict[str, str]:
    """The stream's text metadata (credentials, the pilot chunk size a user takes)."""
    known = (USER_KEY, TOKEN_KEY, CHUNKS_KEY)
    return {
        key: value
        for key, value in context.invocation_metadata() or ()
        if key in known and isinstance(value, str)
    }


def _peer_host(peer: str) -> str:
    """``ipv4:1.2.3.4:5678`` -> ``ipv4:1.2.3.4``; ``ipv6:[::1]:5678`` -> ``ipv6:[::1]``."""
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() else peer


@dataclass
class RunningServer:
    server: grpc.Server
    service: AlignmentService
    port: int
    address: str
    #: stopped with the server: the health and metrics endpoints on their own addresses
    companions: list[Callable[[], None]] = field(default_factory=list)

    def stop(self, grace: float | None = 1.0) -> None:
        self.service.close()
        self.server.stop(grace).wait()
        for stop in self.companions:
            stop()


def start_server(
    service: AlignmentService,
    address: str = LOCAL_LISTEN,
    *,
    tls: TlsFiles | None = None,
    max_workers: int = 64,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    max_receive_bytes: int = DEFAULT_RECEIVE_BYTES,
) -> RunningServer:
    """Serve ``service`` on ``address`` (port 0: an ephemeral port). One worker per stream;
    at most ``max_workers`` streams at once (more get RESOURCE_EXHAUSTED, which users retry).
    Messages from users larger than ``max_receive_bytes`` end their stream
    (:func:`~semalign.common.contract.receive_limit` of the session) and their user: dropped
    at once with "message too large", no rejoin grace."""
    host, _ = check_address(address, what="listen address")
    watch_receive_failures()  # a message over max_receive_bytes: drop its user at once
    service.max_receive_bytes = max_receive_bytes
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="alignment"),
        options=server_options(max_message_bytes, max_receive_bytes),
        maximum_concurrent_rpcs=max_workers,
    )
    server.add_generic_rpc_handlers((service.handler(),))
    service.health.add_to(server)
    port = _listen(server, address, tls)
    server.start()
    return RunningServer(server, service, port, _shown(host, port))


def start_health_server(running: RunningServer, address: str) -> str:
    """Serve ``running``'s health service alone, in plaintext, on ``address`` (for loopback: a
    container's healthcheck), stopped with ``running``; the bound ``host:port``."""
    host, _ = check_address(address, what="health listen address")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health"))
    running.service.health.add_to(server)
    port = _listen(server, address, None)
    server.start()
    running.companions.append(lambda: server.stop(None).wait())
    return _shown(host, port)


def _listen(server: grpc.Server, address: str, tls: TlsFiles | None) -> int:
    """Add ``address`` (TLS with ``tls``) to ``server``: its port, or TransportError."""
    try:
        if tls is not None and tls.enabled:
            port = server.add_secure_port(address, tls.server_credentials())
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise TransportError(f"cannot listen on {address}: {exc}") from None
    if not port:
        raise TransportError(f"cannot listen on {address} (in use or not a local address)")
    return port


def _shown(host: str, port: int) -> str:
    return f"{f'[{host}]' if ':' in host else host}:{port}"
