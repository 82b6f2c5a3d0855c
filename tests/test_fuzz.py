"""Fuzzing every decoder and both sides' message handlers, in every phase of a session.

Inputs: random bytes; valid messages of the phase mutated at the byte level (bit flips,
truncation, insertions, splices) and at the protobuf level (any field set to an arbitrary value
of its type: huge dimensions and counts, NaN and infinities, unknown enum codes, strings;
fields cleared; the oneof body switched to another kind; matrices with wrong shapes, dtypes,
byte counts or NaN/inf data). The property: nothing but ProtocolError leaves a decoder or the
AP's handlers (or they return normally), a user answers every message (with a ProtocolError
reply when it cannot accept it) and never raises, and after the fuzzing the AP finishes the
session for the honest user with exactly the results of an undisturbed run.

Examples per test: ``SEMALIGN_FUZZ_EXAMPLES`` (default 25, a few seconds in all). The long run
(docs/reliability.md): ``SEMALIGN_FUZZ_EXAMPLES=8000 pytest -q -s tests/test_fuzz.py`` prints the
number of generated messages per test and in total.
"""

from __future__ import annotations

import copy
import json
import math
import os
import struct
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from semalign.client.user import User, UserData
from semalign.common.classifier import train_classifier
from semalign.common.config import AlignmentConfig
from semalign.common.contract import SessionOffer
from semalign.common.errors import ProtocolError
from semalign.common.wire import from_matrix, parse_ap_message, parse_user_message
from semalign.proto import semalign_pb2 as pb
from semalign.server.access_point import AccessPoint

EXAMPLES = int(os.environ.get("SEMALIGN_FUZZ_EXAMPLES", "25"))
settings.register_profile(
    "semalign-fuzz",
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=EXAMPLES <= 100,  # CI: the same examples every run; long runs: fresh ones
    suppress_health_check=list(HealthCheck),
)
FUZZ = settings.get_profile("semalign-fuzz")

#: generated messages per test (printed at the end of the module, e.g. with ``-s``)
COUNTS: Counter = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    total = sum(COUNTS.values())
    lines = [f"  {name}: {count}" for name, count in sorted(COUNTS.items())]
    print(f"\nfuzz: {total} generated messages\n" + "\n".join(lines))


# --------------------------------------------------------------------------- the session
N, N_TEST, D = 40, 12, 16
CONFIG = AlignmentConfig(antennas_tx=2, antennas_rx=2, channel_uses=2, iterations=2)


def _user_data(rng, ap_latents, m):
    labels = rng.integers(0, 3, len(ap_latents))
    lat = ap_latents @ rng.standard_normal((ap_latents.shape[1], m))
    return UserData(
        pilot_ids=np.arange(N),
        pilot_latents=lat[:N],
        test_latents=lat[N:],
        test_labels=labels[N:],
        classifier=train_classifier(lat[:N], labels[:N]),
    )


_TEMPLATES: dict = {}


def _parts(strategy="fed", **cfg):
    """(AP, [honest user1, hostile user2], AP test latents) of a fresh session (copies of one
    template per configuration: classifiers and whitening are computed once)."""
    key = (strategy, tuple(sorted(cfg.items())))
    if key not in _TEMPLATES:
        _TEMPLATES[key] = _build(strategy, **cfg)
    return copy.deepcopy(_TEMPLATES[key])


def _build(strategy, **cfg):
    rng = np.random.default_rng(0)
    ap_lat = rng.standard_normal((N + N_TEST, D))
    config = CONFIG.model_copy(update={"strategy": strategy, **cfg})
    ap = AccessPoint(config=config, pilot_latents=ap_lat[:N], pilot_ids=np.arange(N))
    users = [
        User(
            user_id=f"user{i + 1}",
            encoder=f"enc{i}",
            data=_user_data(rng, ap_lat, m),
            antennas_rx=config.antennas_rx,
            antennas_tx=config.antennas_tx,
            snr_db=config.snr_db,
            channel_seed=(config.seed, i),
            share_csi=config.csi,
            strategy_name=config.strategy,
        )
        for i, m in enumerate((10, 12))
    ]
    return ap, users, ap_lat[N:]


class Session:
    """An AP and two users driven phase by phase; records every message of both sides."""

    def __init__(self, strategy="fed", **cfg):
        self.ap, self.users, self.test = _parts(strategy, **cfg)
        self.user_msgs: dict[str, bytes] = {}  # kind -> a valid UserMessage of user2
        self.ap_msgs: dict[str, bytes] = {}  # kind -> a valid ApMessage to user2

    def _note_user(self, data):
        if data is not None:
            self.user_msgs.setdefault(parse_user_message(data).WhichOneof("body"), data)

    def _note_ap(self, data):
        self.ap_msgs.setdefault(parse_ap_message(data).WhichOneof("body"), data)

    def handshake(self):
        for user in self.users:
            request = user.handshake_request()
            self._note_user(request)
            _, accept = self.ap.handshake(request)
            self._note_ap(accept)
            assert user.handle(accept) is None

    def exchange(self, messages, receive, skip=()):
        """Deliver ``messages``; returns the replies; feeds all but ``skip`` users' to
        ``receive``."""
        replies = {}
        for user in self.users:
            if user.user_id not in messages:
                continue
            data = messages[user.user_id]
            if user.user_id == "user2":
                self._note_ap(data)
            replies[user.user_id] = user.handle(data)
            if user.user_id == "user2":
                self._note_user(replies[user.user_id])
        for uid, reply in replies.items():
            if uid not in skip:
                receive(uid, reply)
        return replies

    def rounds(self, count, skip=()):
        for _ in range(count):
            self.exchange(self.ap.round_messages(), self.ap.receive, skip)
            self.ap.step()

    def final(self, skip=()):
        return self.exchange(self.ap.final_messages(), self.ap.receive, skip)

    def evaluation(self, skip=()):
        requests = self.ap.evaluation_requests(self.test, np.arange(N_TEST))
        reports = {}
        self.exchange(
            requests, lambda u, d: reports.__setitem__(u, self.ap.receive_report(u, d)), skip
        )
        return reports

    def pool(self) -> list[bytes]:
        """Valid UserMessages of every kind (error included) to mutate."""
        error = pb.UserMessage(error=pb.ProtocolError(message="x")).SerializeToString()
        return [*self.user_msgs.values(), error]

    def ap_pool(self) -> list[bytes]:
        """Valid ApMessages of every kind (error included) to mutate."""
        error = pb.ApMessage(error=pb.ProtocolError(message="x")).SerializeToString()
        return [*self.ap_msgs.values(), error]


def _full_run(strategy, drop_at):
    """The undisturbed session in which user2 is dropped at ``drop_at`` (no fuzz)."""
    s = Session(strategy)
    s.handshake()
    return finish(s, drop_at)


def finish(s: Session, phase: str, *, fuzzed_before: bool = False):
    """Drop user2 at ``phase`` (when fuzzed_before, the phase's broadcast was already sent and
    user1's reply is in ``s.pending``) and run the session to its end for user1."""
    rounds = s.ap.rounds
    if phase == "round":
        if not fuzzed_before:
            s.exchange(s.ap.round_messages(), s.ap.receive, skip={"user2"})
        else:
            s.ap.receive("user1", s.pending)
        s.ap.drop("user2", "fuzzed")
        s.ap.step()
        s.rounds(rounds - 1)
        s.final()
    elif phase == "final":
        if not fuzzed_before:
            s.rounds(rounds)
            s.final(skip={"user2"})
        else:
            s.ap.receive("user1", s.pending)
        s.ap.drop("user2", "fuzzed")
    elif phase == "evaluation":
        if not fuzzed_before:
            s.rounds(rounds)
            s.final()
    stats = s.ap.final_stats()
    if phase == "evaluation" and fuzzed_before:
        reports = {"user1": s.ap.receive_report("user1", s.pending)}
    else:
        reports = s.evaluation(skip={"user2"} if phase == "evaluation" else ())
        reports.pop("user2", None)
    return stats, reports


# --------------------------------------------------------------------------- mutations
_UINT32 = st.one_of(
    st.sampled_from([0, 1, 2, 3, 4, 7, 255, 256, 257, 4000, 2**31, 2**32 - 1]),
    st.integers(0, 2**32 - 1),
)
_UINT64 = st.one_of(
    _UINT32, st.sampled_from([2**40, 2**62, 2**63, 2**64 - 1]), st.integers(0, 2**64 - 1)
)
_INT64 = st.one_of(
    st.sampled_from([-1, 0, 1, 2**40, -(2**63), 2**63 - 1]), st.integers(-(2**63), 2**63 - 1)
)
_DOUBLE = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, -1.0, 1.5, 1e-320]), st.floats()
)
_INT32 = st.one_of(st.sampled_from([0, 1, 99, -1, 2**31 - 1]), st.integers(-(2**31), 2**31 - 1))


def _matrix(draw, m: pb.Matrix) -> None:
    op = draw(st.sampled_from(["huge", "shape", "dtype", "bytes", "nan", "random", "clear-data"]))
    if op == "huge":
        m.shape[:] = draw(st.lists(_UINT64, min_size=1, max_size=6))
    elif op == "shape":
        dims = list(m.shape) or [1]
        i = draw(st.integers(0, len(dims) - 1))
        dims[i] = max(0, dims[i] + draw(st.sampled_from([-1, 1, 2])))
        m.shape[:] = draw(st.sampled_from([dims, dims[::-1], [*dims, 1], dims[:1]]))
    elif op == "dtype":
        m.dtype = draw(_INT32)
    elif op == "bytes":
        cut = draw(st.integers(0, max(0, len(m.data))))
        m.data = m.data[:cut] + draw(st.binary(max_size=16))
    elif op == "nan":
        size = {pb.COMPLEX64: 4, pb.FLOAT32: 4, pb.COMPLEX128: 8, pb.FLOAT64: 8}.get(m.dtype, 8)
        value = draw(st.sampled_from([math.nan, math.inf, -math.inf, 3e38, 1e300]))
        code = "<f" if size == 4 else "<d"
        try:
            cell = struct.pack(code, value)
        except OverflowError:
            cell = struct.pack(code, math.inf)
        count = len(m.data) // size
        pos = draw(st.integers(0, max(0, count - 1)))
        m.data = m.data[: pos * size] + cell + m.data[(pos + 1) * size :] if count else cell
    elif op == "random":
        m.shape[:] = draw(st.lists(st.integers(0, 50), max_size=3))
        m.dtype = draw(st.integers(0, 8))
        m.data = draw(st.binary(max_size=400))
    else:
        m.data = b""


_SCALARS = {
    "TYPE_DOUBLE": _DOUBLE,
    "TYPE_FLOAT": _DOUBLE,
    "TYPE_UINT32": _UINT32,
    "TYPE_UINT64": _UINT64,
    "TYPE_INT64": _INT64,
    "TYPE_INT32": _INT32,
    "TYPE_BOOL": st.booleans(),
    "TYPE_ENUM": _INT32,
    "TYPE_STRING": st.one_of(
        st.text(max_size=80), st.sampled_from(["", "user1", "user2", "x" * 300])
    ),
    "TYPE_BYTES": st.binary(max_size=64),
}


def _type_name(field) -> str:
    from google.protobuf.descriptor import FieldDescriptor

    for name in _SCALARS:
        if getattr(FieldDescriptor, name) == field.type:
            return name
    return "TYPE_MESSAGE"


def mutate_fields(draw, msg, depth=0) -> None:
    """Set one field somewhere in ``msg`` to an arbitrary value of its type (or clear it)."""
    fields = list(msg.DESCRIPTOR.fields)
    field = draw(st.sampled_from(fields))
    kind = _type_name(field)
    repeated = field.is_repeated
    if kind == "TYPE_MESSAGE":
        child = getattr(msg, field.name)
        if repeated:  # a list of messages (secure aggregation's keys and shares): one more
            child = child.add()
        if field.message_type.name == "Matrix":
            _matrix(draw, child)
        elif draw(st.integers(0, 5)) == 0:
            msg.ClearField(field.name)
        else:
            child.SetInParent()  # a oneof member: switches the message's kind
            if depth < 3 and child.DESCRIPTOR.fields:
                mutate_fields(draw, child, depth + 1)
        return
    if draw(st.integers(0, 7)) == 0:
        msg.ClearField(field.name)
        return
    values = _SCALARS[kind]
    if repeated:
        items = getattr(msg, field.name)
        op = draw(st.sampled_from(["replace", "append", "duplicate", "huge"]))
        if op == "replace":
            items[:] = draw(st.lists(values, max_size=30))
        elif op == "append":
            items.append(draw(values))
        elif op == "duplicate" and len(items):
            items.append(items[draw(st.integers(0, len(items) - 1))])
        else:  # one drawn value of the field's own type, 2,000 times
            items.extend([draw(values)] * 2000)
    else:
        setattr(msg, field.name, draw(values))


@st.composite
def _structured(draw, pool, cls):
    msg = cls.FromString(draw(st.sampled_from(pool)))
    for _ in range(draw(st.integers(1, 3))):
        mutate_fields(draw, msg)
    return msg.SerializeToString()


@st.composite
def _bytewise(draw, pool):
    data = bytearray(draw(st.sampled_from(pool)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "splice", "delete"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=12))
        elif op == "splice":
            other = draw(st.sampled_from(pool))
            data = data[:pos] + bytearray(other[draw(st.integers(0, len(other))) :])
        elif data:
            del data[pos : pos + draw(st.integers(1, 8))]
    return bytes(data)


def messages(pool, cls):
    """Random bytes, byte-level and protobuf-level mutants of ``pool``, and its messages."""
    return st.one_of(
        st.binary(max_size=512),
        _bytewise(pool),
        _structured(pool, cls),
        _structured(pool, cls),
        st.sampled_from(pool),
    )


# --------------------------------------------------------------------------- decoders
def test_fuzz_decoders():
    """Every decoder returns or raises ProtocolError, for anything."""
    s = Session()
    s.handshake()
    s.rounds(1)
    user_pool, ap_pool = s.pool(), s.ap_pool()

    @FUZZ
    @given(st.one_of(messages(user_pool, pb.UserMessage), messages(ap_pool, pb.ApMessage)))
    def decode(data):
        COUNTS["decoders"] += 1
        for parse in (parse_user_message, parse_ap_message):
            try:
                parse(data)
            except ProtocolError:
                pass

    decode()


def test_fuzz_from_matrix():
    @FUZZ
    @given(st.lists(_UINT64, max_size=6), _INT32, st.binary(max_size=256))
    @example([2**31, 2**31, 2**31, 2**31], pb.COMPLEX64, b"")  # product overflows int64
    @example([2**32, 2**32], pb.FLOAT64, b"")
    @example([2**64 - 1], pb.UINT16, b"\x00\x00")
    @example([0, 2**63], pb.INT64, b"")
    @example([1] * 6, pb.FLOAT32, b"\x00" * 4)
    def decode(shape, dtype, data):
        COUNTS["from_matrix"] += 1
        m = pb.Matrix(shape=shape, dtype=dtype, data=data)
        try:
            array = from_matrix(m)
        except ProtocolError:
            return
        assert array.shape == tuple(shape) and array.nbytes == len(data)

    decode()


_JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def test_fuzz_session_offer():
    valid = json.loads(SessionOffer("abc", 0, 2, CONFIG).to_header())

    @st.composite
    def headers(draw):
        choice = draw(st.integers(0, 3))
        if choice == 0:
            return draw(st.text(max_size=300))
        if choice == 1:
            return "[" * draw(st.integers(1, 5000))  # nesting deeper than the JSON parser's
        data = copy.deepcopy(valid)
        for _ in range(draw(st.integers(1, 3))):
            nested = isinstance(data.get("config"), dict) and draw(st.booleans())
            where = data["config"] if nested else data
            key = draw(st.sampled_from(sorted(where) + ["extra"]))
            if draw(st.integers(0, 4)) == 0:
                where.pop(key, None)
            else:
                where[key] = draw(_JSON | st.sampled_from([1e999, -1e999, 2**70, -1]))
        text = json.dumps(data)
        if choice == 3:
            cut = draw(st.integers(0, len(text)))
            text = text[:cut]
        return text

    @FUZZ
    @given(headers())
    @example("[" * 100_000)  # deeper than the JSON parser's recursion limit
    @example(json.dumps({**valid, "index": 1e999}).replace("Infinity", "1e999"))
    @example(json.dumps({**valid, "sessions": 2**70}))
    @example(json.dumps({**valid, "index": 3, "sessions": 2}))
    @example(json.dumps(valid).replace('"abc"', '"a\\nb"'))
    def parse(text):
        COUNTS["SessionOffer.from_header"] += 1
        try:
            SessionOffer.from_header(text)
        except ProtocolError as exc:
            assert "\n" not in str(exc)

    parse()


# --------------------------------------------------------------------------- the AP
def _ap_call(call, *args):
    try:
        return call(*args)
    except ProtocolError as exc:
        assert "\n" not in str(exc)
        return None


def test_fuzz_ap_handshake():
    """Before the handshake: a fresh AP per message; an honest user still registers after."""
    template = Session()
    template.handshake()
    pool = template.pool()

    @FUZZ
    @given(messages(pool, pb.UserMessage))
    def handshake(data):
        COUNTS["AP: handshake"] += 1
        s = Session()
        _ap_call(s.ap.handshake, data)
        honest = s.users[0]
        if honest.user_id in s.ap.users:  # the fuzzer took its id: another honest user
            honest = s.users[1]
            if honest.user_id in s.ap.users:
                return
        uid, accept = s.ap.handshake(honest.handshake_request())
        assert uid == honest.user_id and honest.handle(accept) is None

    handshake()


PHASES = ["registered", "round", "final", "evaluation"]


@pytest.mark.parametrize("phase", PHASES)
def test_fuzz_ap_phases(phase):
    """user2 sends fuzzed replies in ``phase``; user1's session then ends exactly as in an
    undisturbed run where user2 is dropped at that phase."""
    want_stats, want_reports = _full_run("fed", "round" if phase == "registered" else phase)
    s = Session()
    s.handshake()
    receive = s.ap.receive
    if phase == "round":
        replies = s.exchange(s.ap.round_messages(), lambda u, d: None)
        s.pending = replies["user1"]
    elif phase == "final":
        s.rounds(s.ap.rounds)
        s.pending = s.final(skip={"user1", "user2"})["user1"]
    elif phase == "evaluation":
        s.rounds(s.ap.rounds)
        s.final()
        requests = s.ap.evaluation_requests(s.test, np.arange(N_TEST))
        s.pending = s.exchange(requests, lambda u, d: None)["user1"]
        receive = s.ap.receive_report
    pool = s.pool()

    @FUZZ
    @given(messages(pool, pb.UserMessage))
    def fuzz(data):
        COUNTS[f"AP: {phase}"] += 1
        _ap_call(receive, "user2", data)
        if phase == "registered":  # nothing was sent to answer: everything is refused
            with pytest.raises(ProtocolError):
                s.ap.receive("user2", data)
            with pytest.raises(ProtocolError):
                s.ap.receive_report("user2", data)

    fuzz()
    if phase == "registered":
        stats, reports = finish(s, "round")
    else:
        stats, reports = finish(s, phase, fuzzed_before=True)
    assert repr(stats) == repr(want_stats)  # NaN residuals of the final stats compare equal
    assert {u: str(r) for u, r in reports.items()} == {u: str(r) for u, r in want_reports.items()}


def test_fuzz_ap_pilot_acks():
    """First-K: fuzzed Acks of the pilot transmission; user1's results are undisturbed."""
    ref = Session("first-k")
    ref.handshake()
    ref.final(skip={"user2"})
    ref.ap.drop("user2", "x")
    want = ref.evaluation()
    s = Session("first-k")
    s.handshake()
    replies = s.final(skip={"user1", "user2"})
    s.ap.receive("user1", replies["user1"])
    pool = s.pool()

    @FUZZ
    @given(messages(pool, pb.UserMessage))
    def fuzz(data):
        COUNTS["AP: pilots"] += 1
        _ap_call(s.ap.receive, "user2", data)

    fuzz()
    s.ap.drop("user2", "fuzzed")
    got = s.evaluation()
    assert str(got["user1"]) == str(want["user1"])


# --------------------------------------------------------------------------- the user
def _user_phases(strategy):
    """A user (user2) prepared in each phase, and the AP messages of the session."""
    s = Session(strategy, baseline_fit="full") if strategy != "fed" else Session()
    user = s.users[1]
    out = {"before-accept": copy.deepcopy(user)}
    s.handshake()
    out["accepted"] = copy.deepcopy(user)
    if strategy == "fed":
        s.exchange(s.ap.round_messages(), s.ap.receive)
        s.ap.step()
        out["mid-round"] = copy.deepcopy(user)
        s.rounds(s.ap.rounds - 1)
    s.final()
    out["final"] = copy.deepcopy(user)
    s.evaluation()
    out["evaluation"] = copy.deepcopy(user)
    s._note_ap(s.ap.end_message())
    return out, s.ap_pool()


@pytest.mark.parametrize("strategy", ["fed", "top-k"])
def test_fuzz_user_phases(strategy):
    """A user answers any message in any phase without raising; its replies decode and are an
    upload, an Ack, a report or a ProtocolError."""
    prepared, pool = _user_phases(strategy)

    @FUZZ
    @given(st.sampled_from(sorted(prepared)), messages(pool, pb.ApMessage))
    def fuzz(phase, data):
        COUNTS[f"user ({strategy}): {phase}"] += 1
        user = copy.deepcopy(prepared[phase])
        user.recoverable = (ProtocolError,)  # anything else escaping fails the test
        reply = user.handle(data)
        if reply is not None:
            kind = parse_user_message(reply).WhichOneof("body")
            assert kind in ("upload", "ack", "report", "error"), kind

    fuzz()
