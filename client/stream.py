"""A user's side of the networked session: one gRPC stream to the AP's alignment service.

The loop is the whole transport: read the :class:`~semalign.common.contract.SessionOffer` from the
stream's initial metadata, build the ``User`` state machine for it, send
``User.handshake_request()``, then feed every ApMessage into ``User.handle`` and send back what
it returns, until the AP ends the stream. An AP running several sessions (one per seed) is
joined again for each; :func:`run_user` returns one :class:`UserSessionReport` per session.

Only what ``User.handle`` produces leaves this process: the handshake (ids, dimensions, CSI),
A_l and whitened P_l per round, scalar loss terms and evaluation metrics.
"""

from __future__ import annotations

import logging
import queue
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import grpc
from semalign.client.user import User, UserData, build_user
from semalign.common import failpoints
from semalign.common.channels import ChannelConfig
from semalign.common.contract import (
    MAX_MESSAGE_BYTES,
    METHOD,
    OFFER_KEY,
    SessionOffer,
    TlsFiles,
    TransportError,
    channel_options,
    check_address,
)
from semalign.common.credentials import TOKEN_KEY, USER_KEY, check_user_id
from semalign.common.errors import ProtocolError
from semalign.common.wire import parse_user_message

log = logging.getLogger(__name__)

#: Status codes with which the AP refuses a user outright: no point in trying again.
_FATAL = {
    grpc.StatusCode.UNAUTHENTICATED: "the AP refused this user's token",
    grpc.StatusCode.PERMISSION_DENIED: "the AP refused this user",
    grpc.StatusCode.ALREADY_EXISTS: "the AP refused this user",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "the AP refused this user (session full) or a message",
    grpc.StatusCode.INVALID_ARGUMENT: "the AP refused the handshake",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the AP gave up waiting for the handshake",
}
#: Status codes before the offer that mean "not now": the AP is not up yet, between sessions,
#: or busy (every worker taken, e.g. by a flood of streams): try again until the join timeout.
_RETRY = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
#: Backoff between attempts: from the first value, doubling up to the second (seconds), with
#: up to 50 % random jitter so users refused together do not come back together.
_BACKOFF = (0.2, 2.0)


@dataclass
class UserSessionReport:
    """What one user saw of one session (its final report to the AP operator)."""

    user_id: str
    session_id: str = ""
    index: int = 0
    seed: int | None = None
    status: str = "ok"
    detail: str = ""
    seconds: float = 0.0
    bytes_down: int = 0
    bytes_up: int = 0
    messages_down: int = 0
    messages_up: int = 0
    report: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def open_channel(
    address: str, *, tls: TlsFiles | None = None, max_message_bytes: int = MAX_MESSAGE_BYTES
) -> grpc.Channel:
    check_address(address, what="AP address")
    options = channel_options(max_message_bytes)
    if tls is not None and tls.enabled:
        return grpc.secure_channel(address, tls.channel_credentials(), options=options)
    return grpc.insecure_channel(address, options=options)


def _short(details: str | None) -> str:
    """gRPC connection errors are long; keep the most specific line."""
    text = (details or "").strip()
    for marker in ("last error: ", "Failed to connect to remote host: "):
        if marker in text:
            text = text.rsplit(marker, 1)[1]
    return " ".join(text.split())[:300] or "unknown error"


class _Session:
    """One stream: the offer, the user's replies and the byte counters."""

    def __init__(
        self, channel: grpc.Channel, report: UserSessionReport, credentials: tuple[str, str]
    ) -> None:
        self.report = report
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        method = channel.stream_stream(METHOD)  # raw bytes both ways
        user_id, token = credentials
        metadata = ((USER_KEY, user_id), (TOKEN_KEY, token))
        self.call = method(iter(self._outbox.get, None), metadata=metadata)

    def offer(self) -> SessionOffer | None:
        metadata = self.call.initial_metadata()  # blocks until the AP answers or the call fails
        values = dict(metadata or ())
        return SessionOffer.from_header(values[OFFER_KEY]) if OFFER_KEY in values else None

    def send(self, data: bytes) -> None:
        self.report.bytes_up += len(data)
        self.report.messages_up += 1
        self._outbox.put(data)

    def close(self) -> None:
        self._outbox.put(None)

    def cancel(self) -> None:
        self.call.cancel()


def run_user(
    address: str,
    token: str,
    make_user: Callable[[SessionOffer], User],
    *,
    tls: TlsFiles | None = None,
    connect_timeout: float = 30.0,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    user_id: str = "",
    on_session: Callable[[UserSessionReport], None] | None = None,
) -> list[UserSessionReport]:
    """Join the AP's sessions until its last one; returns one report per session.

    ``user_id`` and ``token`` (this user's own, ``user_token(secret, user_id)``) travel in the
    metadata of every stream; ``make_user`` must build a User with that id.

    Raises ``TransportError`` (one line) when the AP cannot be reached within
    ``connect_timeout`` seconds (refusals for being busy are retried until then), refuses this
    user, or breaks a stream.
    """
    check_address(address, what="AP address")
    try:
        check_user_id(user_id)
    except ValueError as exc:
        raise TransportError(str(exc)) from None
    if not token or len(token) > 256 or not (token.isascii() and token.isprintable()):
        raise TransportError(f"user {user_id}: the token must be 1-256 printable ASCII characters")
    channel = open_channel(address, tls=tls, max_message_bytes=max_message_bytes)
    reports: list[UserSessionReport] = []
    try:
        while True:
            report, last = _join_once(channel, address, token, make_user, connect_timeout, user_id)
            reports.append(report)
            if on_session:
                on_session(report)
            if last:
                break
    finally:
        channel.close()
    return reports


def _join_once(
    channel: grpc.Channel,
    address: str,
    token: str,
    make_user: Callable[[SessionOffer], User],
    connect_timeout: float,
    user_id: str,
) -> tuple[UserSessionReport, bool]:
    deadline = time.monotonic() + connect_timeout
    delay = _BACKOFF[0]
    while True:
        report = UserSessionReport(user_id=user_id)
        session = _Session(channel, report, (user_id, token))
        failpoints.on_sever(session.cancel)  # chaos tests only: cut this stream
        offer = session.offer()
        if offer is not None:
            break
        code, details = session.call.code(), session.call.details()
        session.close()
        left = deadline - time.monotonic()
        if code in _RETRY and left > 0:  # not up yet, between sessions, or busy: again
            time.sleep(min(left, delay * (1 + 0.5 * random.random())))
            delay = min(2 * delay, _BACKOFF[1])
            continue
        if code == grpc.StatusCode.UNAVAILABLE:
            raise TransportError(
                f"cannot reach the AP at {address} within {connect_timeout:g} s: {_short(details)}"
            )
        if code in _FATAL:
            raise TransportError(f"{_FATAL[code]}: {_short(details)}")
        raise TransportError(f"AP at {address}: {code.name}: {_short(details)}")
    start = time.perf_counter()
    try:
        user = make_user(offer)
        if user.user_id != user_id:
            raise TransportError(f"built user {user.user_id!r} for credentials of {user_id!r}")
    except Exception:
        session.cancel()
        session.close()
        raise
    user.token = token
    report.user_id, report.session_id = user.user_id, offer.session_id
    report.index, report.seed = offer.index, offer.config.seed
    session.send(user.handshake_request())
    try:
        for data in session.call:
            report.bytes_down += len(data)
            report.messages_down += 1
            reply = user.handle(data)
            if reply is not None:
                session.send(reply)
                if len(reply) < 4096:
                    _note_report(report, reply)
    except grpc.RpcError as exc:
        code = exc.code()
        if code in _FATAL:
            raise TransportError(f"{_FATAL[code]}: {_short(exc.details())}") from None
        if code == grpc.StatusCode.ABORTED:  # the AP dropped us; it goes on without us
            report.status, report.detail = "dropped", _short(exc.details())
            log.info("%s: dropped by the AP: %s", user.user_id, report.detail)
        elif code == grpc.StatusCode.UNAVAILABLE and report.messages_down == 0:
            # came too late: the session started without us; try the next one, if any
            report.status, report.detail = "missed", _short(exc.details())
            log.warning("%s: missed session %d: %s", user.user_id, offer.index, report.detail)
        else:
            raise TransportError(
                f"the stream to the AP at {address} broke: {code.name}: {_short(exc.details())}"
            ) from None
    except BaseException:
        session.cancel()
        raise
    finally:
        session.close()
        report.seconds = time.perf_counter() - start
    return report, offer.last


def _note_report(report: UserSessionReport, reply: bytes) -> None:
    try:
        msg = parse_user_message(reply)
    except ProtocolError:  # not ours to judge: the AP refuses it
        return
    if msg.WhichOneof("body") == "report":
        r = msg.report
        report.report = {
            "accuracy": r.accuracy,
            "native_accuracy": r.native_accuracy,
            "mse": r.mse,
            "mse_whitened": r.mse_whitened,
            "samples": float(r.samples),
        }


def user_factory(
    user_id: str,
    encoder: str,
    ordinal: int,
    load_data: Callable[[float], UserData],
    *,
    antennas_rx: int | None = None,
    snr_db: float | None = None,
) -> Callable[[SessionOffer], User]:
    """Build this user's state machine for each offer, exactly as the simulator does.

    ``load_data(pilot_fraction)`` returns the user's private latents (loaded once per fraction).
    ``antennas_rx``/``snr_db`` override the AP's suggestion for a real deployment (``snr_db``
    also replaces a per-user SNR list or path loss of the offered channel). The channel's
    fading law and CSI error are the offer's; its number of users (``offer.users``) and this
    user's ``ordinal`` pick this user's SNR.
    """
    cache: dict[float, UserData] = {}

    def make(offer: SessionOffer) -> User:
        config = offer.config
        overrides: dict = {
            k: v for k, v in (("antennas_rx", antennas_rx), ("snr_db", snr_db)) if v is not None
        }
        if snr_db is not None:
            overrides["channel"] = _same_snr_for_all(config.channel)
        if overrides:
            config = config.model_copy(update=overrides)
        if not _paper_user_side(config):
            return build_user(
                user_id, encoder, _task_data(config), config, ordinal, offer.users or None
            )
        if config.pilot_fraction not in cache:
            cache[config.pilot_fraction] = load_data(config.pilot_fraction)
        data = cache[config.pilot_fraction]
        return build_user(user_id, encoder, data, config, ordinal, offer.users or None)

    task_cache: dict[tuple, UserData] = {}

    def _task_data(config) -> UserData:
        """Research options (task model, target, pilot selection): ``load_data`` must take
        the config as a second argument (:func:`semalign.client.task.task_user_data`)."""
        from semalign.client.task import data_key
        from semalign.common.errors import ProtocolError

        if _positional_count(load_data) < 2:
            raise ProtocolError(
                "the AP asks for research options (task_model/target/pilot_selection) this "
                "user's data loader does not support"
            )
        key = data_key(config)
        if key not in task_cache:
            task_cache[key] = load_data(config.pilot_fraction, config)
        return task_cache[key]

    return make


def _paper_user_side(config) -> bool:
    from semalign.client.task import is_default

    return is_default(config)


def _positional_count(func) -> int:
    import inspect

    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return 1
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def _same_snr_for_all(channel: ChannelConfig) -> ChannelConfig:
    """``channel`` without its per-user SNR source (every user at the session's ``snr_db``)."""
    snr_fields = ("user_snr_db", "distances", "snr_ref_db", "reference_distance")
    cleared = dict.fromkeys((*snr_fields, "path_loss_exponent"))
    return ChannelConfig(**{**channel.model_dump(), **cleared})
