"""What the AP's alignment service and its users agree on besides the proto messages.

* The gRPC method: ``/semalign.v1.Alignment/Session`` from proto/semalign.proto. Both sides
  register it with raw-bytes (de)serializers, so the bytes the session driver counts are exactly
  the gRPC message payloads (gRPC adds a 5-byte length prefix per message, HTTP/2 a 9-byte
  header per DATA frame of at most 16 KiB: see docs/network.md).
* The session offer: before its handshake a user must know the session's configuration (the
  seed of its emulated channel, N_T, whether the AP is channel-aware, the pilot fraction, the
  strategy), so the AP sends it as the stream's initial metadata under ``semalign-offer`` (JSON,
  the ``AlignmentConfig`` under ``config``). A user builds its ``User`` from it exactly as the
  simulator does, then sends ``User.handshake_request()``.
* Credentials: every stream carries its user id and that user's token in the call metadata
  (``semalign-user``, ``semalign-token``; :mod:`semalign.common.credentials`). The AP checks
  them before it sends or reads anything.
* Channel options (message size limits: a P_l upload at n = 42,500 pilots is about 27 MB; the
  AP accepts no message larger than :func:`receive_limit` of its session) and TLS credentials,
  and the one-line errors for bad addresses and refused connections.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semalign.common.config import AlignmentConfig
from semalign.common.errors import ProtocolError, TransportError
from semalign.proto import semalign_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["Alignment"].full_name  # semalign.v1.Alignment
METHOD_NAME = "Session"
METHOD = f"/{SERVICE}/{METHOD_NAME}"
OFFER_KEY = "semalign-offer"
#: A user's own token (``semalign user``).
TOKEN_ENV = "SEMALIGN_TOKEN"

#: Largest message a side sends, and a user accepts (bytes): the AP's broadcasts grow with the
#: users' N_R (up to 256), which only the AP knows. A P_l upload at n = 42,500 pilots and
#: K N_T = 8 is about 2.7 MB; at the paper's K N = 80 about 27 MB.
MAX_MESSAGE_BYTES = 1 << 30
#: What the AP accepts when it is not told its session (tests, benchmarks): 64 MiB.
DEFAULT_RECEIVE_BYTES = 64 << 20
#: Most sessions (seeds) one AP run may announce.
MAX_SESSIONS = 1_000_000


def receive_limit(config: AlignmentConfig, n_pilots: int) -> int:
    """Largest message a user may legitimately send in a session of ``config`` with
    ``n_pilots`` pilots, plus a margin: the AP's ``grpc.max_receive_message_length``.

    The largest messages are the upload (A_l and P_l, complex64: 8 K N_T (K N_T + n) bytes)
    and the handshake (pilot ids, at most 10 bytes each as varints, for up to 4 n ids, and CSI
    of up to 256 x N_T complex128). A quarter and 64 KiB on top cover framing and scalars.
    """
    s = config.symbols
    upload = 8 * s * (s + n_pilots)
    handshake = 10 * 4 * n_pilots + 16 * 256 * config.antennas_tx
    return int(1.25 * max(upload, handshake)) + (64 << 10)


@dataclass(frozen=True)
class SessionOffer:
    """What the AP tells a connecting user before its handshake.

    Attributes:
        session_id: the AP's session id (the HandshakeAccept repeats it).
        index: 0-based number of this session (one per seed) in the AP's run.
        sessions: total number of sessions the AP will run.
        config: the session's configuration (a dict is validated into one).
        users: L, the number of users the AP expects (0: not told; a user then takes it
            from the config's per-user SNR list, if any). A user needs it for its channel:
            ``config.channel.user_model(ordinal, users, config.snr_db)``.
    """

    session_id: str
    index: int
    sessions: int
    config: AlignmentConfig
    users: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.config, AlignmentConfig):
            object.__setattr__(self, "config", AlignmentConfig.model_validate(self.config))

    @property
    def last(self) -> bool:
        return self.index + 1 >= self.sessions

    def to_header(self) -> str:
        """The offer as one JSON line (keys sorted; the config as its JSON object)."""
        return json.dumps(
            {
                "config": json.loads(self.config.model_dump_json()),
                "index": self.index,
                "session_id": self.session_id,
                "sessions": self.sessions,
                **({"users": self.users} if self.users else {}),
            },
            separators=(",", ":"),
            sort_keys=True,
        )

    @classmethod
    def from_header(cls, text: str) -> SessionOffer:
        """Parse :meth:`to_header`'s text; ProtocolError (one line) if it is malformed."""
        try:
            data = json.loads(text)
            offer = cls(
                session_id=str(data["session_id"]),
                index=int(data["index"]),
                sessions=int(data["sessions"]),
                config=AlignmentConfig.model_validate(data["config"]),
                users=int(data.get("users", 0)),
            )
            if not 0 <= offer.index < offer.sessions <= MAX_SESSIONS:
                raise ValueError(f"session {offer.index} of {offer.sessions}")
            if not (0 < len(offer.session_id) <= 64 and offer.session_id.isprintable()):
                raise ValueError("bad session id")
            return offer
        except (KeyError, TypeError, ValueError, OverflowError, RecursionError) as exc:
            # ValidationError is a ValueError; int(inf) an OverflowError; deep nesting a
            # RecursionError
            detail = f"missing {exc}" if isinstance(exc, KeyError) else " ".join(str(exc).split())
            detail = detail[:200]
            raise ProtocolError(f"malformed session offer: {detail}") from None


def channel_options(
    max_message_bytes: int = MAX_MESSAGE_BYTES, max_receive_bytes: int | None = None
) -> list[tuple[str, Any]]:
    """gRPC options used by both sides (message size limits, keepalive for idle rounds)."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_receive_bytes or max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def server_options(
    max_message_bytes: int = MAX_MESSAGE_BYTES, max_receive_bytes: int = DEFAULT_RECEIVE_BYTES
) -> list[tuple[str, Any]]:
    """The AP's options: it sends up to ``max_message_bytes``, accepts ``max_receive_bytes``."""
    return [
        *channel_options(max_message_bytes, max_receive_bytes),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.so_reuseport", 0),
    ]


_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9a-fA-F:.]+)\]|(?P<host>[A-Za-z0-9_.-]+)):(?P<port>\d+)$")


def check_address(address: str, *, what: str = "address") -> tuple[str, int]:
    """Split ``host:port`` (or ``[v6]:port``); TransportError with one line if malformed."""
    match = _HOST_PORT.match(address.strip()) if address else None
    if not match:
        raise TransportError(f"bad {what} {address!r}: expected HOST:PORT, e.g. 127.0.0.1:50051")
    port = int(match["port"])
    if not 0 <= port <= 65535:
        raise TransportError(f"bad {what} {address!r}: port {port} out of range 0-65535")
    return match["v6"] or match["host"], port


@dataclass(frozen=True)
class TlsFiles:
    """PEM paths: ``cert``/``key`` of this side, ``ca`` to verify the peer (mutual TLS if both)."""

    cert: str | None = None
    key: str | None = None
    ca: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.cert or self.key or self.ca)

    @staticmethod
    def _read(path: str | None, what: str) -> bytes | None:
        if not path:
            return None
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise TransportError(f"cannot read TLS {what} {path}: {exc.strerror}") from None

    def server_credentials(self):
        import grpc

        if not (self.cert and self.key):
            raise TransportError("TLS on the AP needs both --tls-cert and --tls-key")
        ca = self._read(self.ca, "CA certificate")
        return grpc.ssl_server_credentials(
            [(self._read(self.key, "key"), self._read(self.cert, "certificate"))],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )

    def channel_credentials(self):
        import grpc

        if bool(self.cert) != bool(self.key):
            raise TransportError("a client certificate needs both --tls-cert and --tls-key")
        return grpc.ssl_channel_credentials(
            root_certificates=self._read(self.ca, "CA certificate"),
            private_key=self._read(self.key, "key"),
            certificate_chain=self._read(self.cert, "certificate"),
        )
