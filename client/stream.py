"""A user's side of the networked session: one gRPC stream to the AP's alignment service.
(Over 450 lines: the session loop, its reconnecting peer and the user factory it builds its
users with, kept beside the session state they share.)

The loop is the whole transport: read the :class:`~semalign.common.contract.SessionOffer` from the
stream's initial metadata, build the ``User`` state machine for it, send
``User.handshake_request()``, then feed every ApMessage into ``User.handle`` and send back what
it returns, until the AP ends the stream. An AP running several sessions (one per seed) is
joined again for each; :func:`run_user` returns one :class:`UserSessionReport` per session.
A stream that breaks mid-session is reopened within the rejoin grace period, with a fresh
handshake (the AP sends what the user needs to go on).

Every stream (a gRPC call; a daemon thread of gRPC's takes its requests from the session's
outbox) ends with its session: the outbox gets its end mark, and a stream given up on is
cancelled. The channel (:mod:`semalign.client.channel`) outlives the streams.

Two things overlap the handshake's transfer with the user's arithmetic: the stream asks for
the compact handshake's X in chunks (metadata ``semalign-pilot-chunks``,
:mod:`semalign.common.pilot_stream`), which the state machine turns into R = Y X^H block by
block as they arrive; and the user whitens its pilots and test latents before it joins
(:func:`prepare`), so no session waits for that in its first round.

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
import numpy as np
from semalign.client.channel import close_channel, open_channel
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
    check_address,
)
from semalign.common.credentials import TOKEN_KEY, USER_KEY, check_user_id
from semalign.common.errors import ProtocolError, SemalignError
from semalign.common.pilot_stream import CHUNKS_KEY, MAX_CHUNK_BYTES
from semalign.common.representation import Representation
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
    grpc.StatusCode.FAILED_PRECONDITION: "the AP refused this user",  # its session has started
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
    rejoins: int = 0
    report: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


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
        # X of a compact handshake in chunks, worked on as they arrive (common/pilot_stream)
        metadata = ((USER_KEY, user_id), (TOKEN_KEY, token), (CHUNKS_KEY, str(MAX_CHUNK_BYTES)))
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
        """No more requests: gRPC's thread that sends them ends (the stream half-closes)."""
        self._outbox.put(None)

    def cancel(self) -> None:
        self.call.cancel()

    def end(self) -> None:
        """This user is done with the stream: no more requests, and cancelled if it has not
        ended (a no-op for a stream the AP ended)."""
        self.close()
        self.cancel()


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
    rejoin_grace: float = 0.0,
    channel: grpc.Channel | None = None,
) -> list[UserSessionReport]:
    """Join the AP's sessions until its last one; returns one report per session.

    ``user_id`` and ``token`` (this user's own, ``user_token(secret, user_id)``) travel in the
    metadata of every stream; ``make_user`` must build a User with that id.

    A stream that breaks mid-session (the AP restarted, the network failed) is reopened with
    backoff for up to ``rejoin_grace`` seconds; the user handshakes again with a state machine
    built afresh from the offer (the same one: it depends on the seed and the ordinal only)
    and the session goes on where the AP is. ``rejoin_grace`` 0: a broken stream is an error.

    ``channel``: the caller's open channel to ``address`` (:func:`open_channel`), left open
    on return (every stream ended); by default one is opened here and closed with
    :func:`close_channel`.

    Raises ``TransportError`` (one line) when the AP cannot be reached within
    ``connect_timeout`` seconds (refusals for being busy are retried until then), refuses this
    user, or breaks a stream for longer than ``rejoin_grace``.
    """
    check_address(address, what="AP address")
    try:
        check_user_id(user_id)
    except ValueError as exc:
        raise TransportError(str(exc)) from None
    if not token or len(token) > 256 or not (token.isascii() and token.isprintable()):
        raise TransportError(f"user {user_id}: the token must be 1-256 printable ASCII characters")
    own = channel is None
    if own:
        channel = open_channel(address, tls=tls, max_message_bytes=max_message_bytes)
    peer = _Peer(channel, address, token, user_id, make_user)
    reports: list[UserSessionReport] = []
    opened: tuple[_Session, SessionOffer] | None = None
    try:
        while True:
            if opened is None:
                opened = peer.connect(connect_timeout)
            report, last, opened = peer.run_session(*opened, rejoin_grace)
            reports.append(report)
            if on_session:
                on_session(report)
            if last and opened is None:
                break
    finally:
        if opened is not None:  # a stream for a session this user will not run (an error)
            opened[0].end()
        if own:
            close_channel(channel)
    return reports


class _Peer:
    """This user's side of the AP's sessions: connecting, one session, coming back."""

    def __init__(self, channel, address, token, user_id, make_user) -> None:
        self.channel, self.address, self.token = channel, address, token
        self.user_id, self.make_user = user_id, make_user

    def connect(self, timeout: float, *, grace: bool = False) -> tuple[_Session, SessionOffer]:
        """A stream with the AP's offer, retried with backoff while the AP is not up, between
        sessions or busy, for up to ``timeout`` s; TransportError when refused or too late."""
        deadline = time.monotonic() + timeout
        delay = _BACKOFF[0]
        while True:
            session = _Session(self.channel, UserSessionReport(self.user_id), self._creds())
            failpoints.on_sever(session.cancel)  # chaos tests only: cut this stream
            offer = session.offer()
            if offer is not None:
                return session, offer
            code, details = session.call.code(), session.call.details()
            session.end()
            left = deadline - time.monotonic()
            if code in _RETRY and left > 0:  # not up yet, between sessions, or busy: again
                time.sleep(min(left, delay * (1 + 0.5 * random.random())))
                delay = min(2 * delay, _BACKOFF[1])
                continue
            if code == grpc.StatusCode.UNAVAILABLE and not grace and _nobody_listens(details):
                raise TransportError(
                    f"no AP listening at {self.address}: the session may have ended or not "
                    f"started (tried for {timeout:g} s: {_short(details)})"
                )
            if code == grpc.StatusCode.UNAVAILABLE:
                what = "come back to" if grace else "reach"
                raise TransportError(
                    f"cannot {what} the AP at {self.address} within {timeout:g} s: "
                    f"{_short(details)}"
                )
            if code == grpc.StatusCode.ABORTED:
                raise _Dropped(_short(details))
            if code in _FATAL:
                raise TransportError(f"{_FATAL[code]}: {_short(details)}")
            raise TransportError(f"AP at {self.address}: {code.name}: {_short(details)}")

    def _creds(self) -> tuple[str, str]:
        return self.user_id, self.token

    def _start(self, session: _Session, offer: SessionOffer, report: UserSessionReport) -> User:
        try:
            user = self.make_user(offer)
            if user.user_id != self.user_id:
                raise TransportError(
                    f"built user {user.user_id!r} for credentials of {self.user_id!r}"
                )
        except Exception:
            session.end()
            raise
        user.token = self.token
        report.session_id, report.index = offer.session_id, offer.index
        report.seed = offer.config.seed
        session.report = report
        prepare(user, offer)  # ready before joining: the session waits for nobody's whitening
        session.send(user.handshake_request())
        return user

    def run_session(
        self, session: _Session, offer: SessionOffer, rejoin_grace: float
    ) -> tuple[UserSessionReport, bool, tuple[_Session, SessionOffer] | None]:
        """One session to its end: (report, whether it was the last, a stream already open
        for a later session, when the AP had moved on while this user came back)."""
        report = UserSessionReport(user_id=self.user_id)
        start = time.perf_counter()
        comeback_until: float | None = None  # coming back: by when (one grace per break)
        handed_on = None  # the stream of a later session, open for the caller
        try:
            while True:
                user = self._start(session, offer, report)
                heard = report.messages_down
                try:
                    _pump(session, user, report)
                    return report, offer.last, None
                except grpc.RpcError as exc:
                    code, details = exc.code(), _short(exc.details())
                    if report.messages_down > heard:  # this stream worked: a new break
                        comeback_until = None
                    retry = comeback_until is not None and _still_live(code, details)
                    if retry:
                        # the AP has not seen our old stream go yet: try again in the grace
                        if time.monotonic() >= comeback_until:
                            raise TransportError(f"{_FATAL[code]}: {details}") from None
                        time.sleep(_BACKOFF[0] * (1 + 0.5 * random.random()))
                    elif not self._broken(code, details, report, offer):
                        return report, offer.last, None
                    if rejoin_grace <= 0:
                        raise TransportError(
                            f"the stream to the AP at {self.address} broke: {code.name}: {details}"
                        ) from None
                    log.warning("%s: the stream broke (%s); coming back", self.user_id, details)
                    session.end()
                    if comeback_until is None:
                        comeback_until = time.monotonic() + rejoin_grace
                    try:
                        left = max(comeback_until - time.monotonic(), 0.001)
                        session, later = self.connect(left, grace=True)
                    except _Dropped as dropped:
                        report.status, report.detail = "dropped", str(dropped)
                        return report, offer.last, None
                    if later.index != offer.index:  # the AP finished this one without us
                        report.status = "interrupted"
                        report.detail = f"the stream broke ({details}); the AP moved on"
                        handed_on = session
                        return report, offer.last, (session, later)
                    report.rejoins += 0 if retry else 1
                    offer = later
        finally:
            if session is not handed_on:
                session.end()  # a stream broken off by an error is cancelled here
            report.seconds = time.perf_counter() - start

    def _broken(self, code, details: str, report: UserSessionReport, offer) -> bool:
        """Classify how a stream ended: raise for a refusal, record a drop or a missed
        session (False), or True: it broke, and the user may come back."""
        if code in _FATAL:
            raise TransportError(f"{_FATAL[code]}: {details}") from None
        if code == grpc.StatusCode.ABORTED:  # the AP dropped us; it goes on without us
            report.status, report.detail = "dropped", details
            log.info("%s: dropped by the AP: %s", self.user_id, details)
            return False
        if code == grpc.StatusCode.UNAVAILABLE and "already started" in details:
            # came too late: the session started without us; try the next one, if any
            report.status, report.detail = "missed", details
            log.warning("%s: missed session %d: %s", self.user_id, offer.index, details)
            return False
        return True


def prepare(user: User, offer: SessionOffer) -> None:
    """Work this user can do on its own data before it joins: whiten its pilots (in their
    stored order, the rows the AP asks for by default) and its test latents (all rows, what
    the AP evaluates by default) in the offer's representation, kept in its
    :class:`~semalign.client.user.UserData`, where the state machine finds them when the
    accept and the evaluation come. O(m^2 n) of the user's own arithmetic (m = 1,280 features
    of 4,000 pilots: about a second on one core), once per process (later sessions and a
    comeback find it done), before the handshake: a session starts once its users have
    joined, so none of them whitens in its first round while the others wait. The same arrays
    the state machine would compute, so nothing changes but when; anything that fails here is
    left to the accept to report as it always did."""
    data = user.data
    try:
        representation = Representation.of(offer.config.equalizer)
        rows = list(range(len(data.pilot_ids)))
        whitener = data.whitened_pilots(rows, representation)[0]
        ids = np.arange(len(data.test_latents))
        data.evaluation_reference(ids, whitener, representation, data.pilot_ids)
    except (SemalignError, ValueError, ArithmeticError) as exc:
        log.debug("%s: nothing prepared before the accept: %s", user.user_id, exc)


def _nobody_listens(details: str | None) -> bool:
    """gRPC's UNAVAILABLE because the connection was refused: no process listens there."""
    text = (details or "").lower()
    return "connection refused" in text


def _still_live(code, details: str) -> bool:
    """The AP refused a comeback because it still sees this user's previous stream alive
    (it has not noticed yet that the stream broke)."""
    return code == grpc.StatusCode.ALREADY_EXISTS and "has a live stream" in details


class _Dropped(Exception):
    """The AP refused this user's comeback: it was dropped (ABORTED)."""


def _pump(session: _Session, user: User, report: UserSessionReport) -> None:
    """Answer the AP's messages on this stream until it ends (RpcError if it breaks)."""
    for data in session.call:
        report.bytes_down += len(data)
        report.messages_down += 1
        reply = user.handle(data)
        if reply is not None:
            session.send(reply)
            if len(reply) < 4096:
                _note_report(report, reply)


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
