"""Broken and hostile peers against the real gRPC service on 127.0.0.1.

* Credentials come first: no token, a wrong token or another user's token end the stream with
  UNAUTHENTICATED before the offer is sent; floods of unauthenticated streams and idle sockets do
  not keep the invited users from joining and finishing.
* An authenticated peer that sends a malformed message (byte count, shape, dtype code,
  encoding, NaN, out-of-range numbers, the wrong kind) is dropped alone, at once, with the
  reason in its stream's status; the others' results equal an undisturbed run.
"""

from __future__ import annotations

import math
import queue
import socket
import threading
import time

import grpc
import numpy as np
import pytest
from semalign.client.stream import run_user, user_factory
from semalign.client.user import user_data_from_cache
from semalign.common.config import AlignmentConfig
from semalign.common.contract import (
    METHOD,
    OFFER_KEY,
    SessionOffer,
    TransportError,
    receive_limit,
)
from semalign.common.credentials import TOKEN_KEY, USER_KEY, user_token
from semalign.common.latents import load_encoder_splits, pilot_count
from semalign.common.records import measured_by_of
from semalign.common.wire import parse_user_message, to_matrix
from semalign.proto import semalign_pb2 as pb
from semalign.server.access_point import build_access_point
from semalign.server.network import SessionsPlan, serve_sessions
from semalign.server.serve_settings import ServeSettings
from semalign.server.service import AlignmentService, start_server
from semalign.server.session import WaitPolicy
from synthetic import make_latents

from semalign.engine.scenario import load_scenario
from semalign.engine.simulate import simulate

SECRET = "attack-test-secret-0123456789"
CONFIG = AlignmentConfig(antennas_tx=2, antennas_rx=2, channel_uses=2, iterations=4)
SEED = 11
N_TRAIN = 300


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    return make_latents(tmp_path_factory.mktemp("lat"), user_dims=(12, 20, 14), n_train=N_TRAIN)


@pytest.fixture(scope="module")
def undisturbed(latents):
    """Simulator results of the honest users alone (2) and with a third honest user."""
    root, ap_enc, encoders = latents
    return {
        n: simulate(load_scenario(root, ap_enc, encoders[:n]), CONFIG, [SEED]).to_dict()
        for n in (2, 3)
    }


def _server(**service_kwargs):
    """Service and server as `semalign run` sizes them for these tests: every peer is on
    127.0.0.1, so the per-address limit is the worker budget unless a test says otherwise."""
    service_kwargs.setdefault("max_streams_per_address", 64)
    service = AlignmentService(SECRET, **service_kwargs)
    limit = receive_limit(CONFIG, pilot_count(N_TRAIN, CONFIG.pilot_fraction))
    return service, start_server(service, "127.0.0.1:0", max_workers=64, max_receive_bytes=limit)


def _run_ap(service, latents, expected, join_timeout=30, reply_timeout=20, policy=None):
    root, ap_enc, _ = latents
    splits = load_encoder_splits(root, ap_enc)
    n = expected if isinstance(expected, int) else len(expected)
    plan = SessionsPlan(
        lambda cfg: build_access_point(splits["train"].latents, cfg, n),
        CONFIG,
        [SEED],
        splits["test"].latents,
    )
    policy = policy or WaitPolicy(reply_timeout=reply_timeout)
    return serve_sessions(service, plan, ServeSettings(expected, join_timeout, policy)).to_dict()


class Peer(threading.Thread):
    """A user thread running run_user; ``mutate(kind, bytes) -> bytes`` rewrites what the
    honest state machine would send (kinds: handshake, upload, ack, report, error);
    ``before(apmessage)`` runs before each AP message is handled."""

    def __init__(self, address, root, encoder, uid, ordinal, mutate=None, before=None):
        super().__init__(daemon=True, name=uid)
        self.address, self.uid = address, uid
        self.mutate, self.before = mutate, before
        base = user_factory(
            uid, encoder, ordinal, lambda pf: user_data_from_cache(root, encoder, pf)
        )
        self.make = self._wrap(base)
        self.reports = None
        self.error: Exception | None = None
        self.ended_at: float | None = None

    def _wrap(self, base):
        def make(offer):
            user = base(offer)
            handshake, handle = user.handshake_request, user.handle
            mutate, before = self.mutate, self.before

            def handle_hook(data):
                if before:
                    before(pb.ApMessage.FromString(data))
                reply = handle(data)
                if reply is None or mutate is None:
                    return reply
                return mutate(parse_user_message(reply).WhichOneof("body"), reply)

            if mutate is not None:
                user.handshake_request = lambda: mutate("handshake", handshake())
            user.handle = handle_hook
            return user

        return make

    def run(self):
        try:
            self.reports = run_user(
                self.address,
                user_token(SECRET, self.uid),
                self.make,
                connect_timeout=20,
                user_id=self.uid,
            )
        except Exception as exc:  # noqa: BLE001 - inspected by the test
            self.error = exc
        finally:
            self.ended_at = time.monotonic()


# ------------------------------------------------------------------------------ mutations
def _edit(kind_wanted, edit):
    """A mutation that applies ``edit(message)`` to the first message of ``kind_wanted``."""

    def mutate(kind, data):
        if kind != kind_wanted:
            return data
        msg = pb.UserMessage.FromString(data)
        out = edit(msg)
        return out if isinstance(out, bytes) else msg.SerializeToString()

    return mutate


def _nan_p(msg):
    p = np.frombuffer(msg.upload.p.data, dtype="<c8").copy()
    p[3] = complex(math.nan, 0)
    msg.upload.p.data = p.tobytes()


def _huge_a(msg):
    a = np.frombuffer(msg.upload.a.data, dtype="<c8").copy()
    a[:] = 1e20
    msg.upload.a.data = a.tobytes()


def _ack_for_upload(msg):
    up = msg.upload
    return pb.UserMessage(
        ack=pb.Ack(session_id=up.session_id, round=up.round, squared_error=1.0, noise_term=1.0)
    ).SerializeToString()


def _oversized(msg):
    big = np.ones((4, 4000), np.complex64)  # 128 KB: over the AP's receive limit (~78 KB)
    msg.upload.p.CopyFrom(to_matrix(big))


def _set(field, value):
    def edit(msg):
        setattr(msg.upload, field, value)

    return edit


#: Uploads (and one AP-level handshake refusal) of an authenticated, invited user: each is
#: dropped in round 0 with a reason containing the text given.
ROUND_ATTACKS = {
    "byte-count": (
        _edit("upload", lambda m: setattr(m.upload.a, "data", m.upload.a.data[:-8])),
        "needs",
    ),
    "shape": (_edit("upload", lambda m: m.upload.a.shape.__setitem__(0, 5)), "shape"),
    "dtype-code": (_edit("upload", lambda m: setattr(m.upload.a, "dtype", pb.FLOAT64)), "dtype"),
    "unknown-dtype": (_edit("upload", lambda m: setattr(m.upload.p, "dtype", 99)), "dtype"),
    "encoding": (_edit("upload", lambda m: b"\x12\xff\xff\xff\xff\x0f"), "cannot parse"),
    "nan": (_edit("upload", _nan_p), "NaN"),
    "inf-loss": (_edit("upload", _set("squared_error", math.inf)), "squared_error"),
    "negative-loss": (_edit("upload", _set("noise_term", -1.0)), "noise_term"),
    "huge-values": (_edit("upload", _huge_a), "larger than"),
    "ack-for-upload": (_edit("upload", _ack_for_upload), "expected an upload"),
    "wrong-round": (_edit("upload", _set("round", 7)), "round 7"),
    "error-reply": (
        _edit(
            "upload",
            lambda m: pb.UserMessage(error=pb.ProtocolError(message="x\ny")).SerializeToString(),
        ),
        "reported: x y",
    ),
    "oversized": (_edit("upload", _oversized), "larger than max"),
    "lacks-pilots": (
        _edit("handshake", lambda m: m.handshake.pilot_ids.__delitem__(slice(10, None))),
        "lacks",
    ),
}


def test_malformed_uploads_drop_only_their_sender_at_once(latents, undisturbed):
    root, _, encoders = latents
    service, server = _server()
    hostile_ids = [f"user{i + 3}" for i in range(len(ROUND_ATTACKS))]
    gate = threading.Event()
    waited = {}

    def hold_round_2(msg):  # user1 waits at round 2 until every hostile stream has ended
        if msg.WhichOneof("body") == "broadcast" and msg.broadcast.round == 2:
            waited["ok"] = gate.wait(15)

    try:
        peers = [
            Peer(
                server.address,
                root,
                encoders[i],
                f"user{i + 1}",
                i,
                before=hold if i == 0 else None,
            )
            for i, hold in enumerate([hold_round_2, None])
        ]
        for k, (mutate, _) in enumerate(ROUND_ATTACKS.values()):
            uid = hostile_ids[k]
            peers.append(Peer(server.address, root, encoders[k % 3], uid, k + 2, mutate=mutate))
        hostile = peers[2:]
        for peer in peers:
            peer.start()

        def open_gate():
            for peer in hostile:
                peer.join(30)
            gate.set()

        threading.Thread(target=open_gate, daemon=True).start()
        results = _run_ap(service, latents, ["user1", "user2", *hostile_ids])
        for peer in peers:
            peer.join(30)
    finally:
        server.stop()
    assert waited == {"ok": True}, "a dropped user's stream stayed open after its drop"
    block = results["seeds"][0]
    dropped = block["dropped"]
    assert set(dropped) == set(hostile_ids) - {
        hostile_ids[list(ROUND_ATTACKS).index("lacks-pilots")]
    }
    for k, (name, (_, reason)) in enumerate(ROUND_ATTACKS.items()):
        peer = hostile[k]
        seen = str(peer.error) if peer.error else peer.reports[0].detail
        assert reason in seen, (name, seen)  # the user was told why, in its stream's status
        assert "\n" not in seen
        if name == "lacks-pilots":
            assert isinstance(peer.error, TransportError) and "refused the handshake" in seen
        elif name == "oversized":
            assert "round 0" in dropped[peer.uid], (name, dropped[peer.uid])
        else:
            assert "round 0" in dropped[peer.uid] and reason in dropped[peer.uid], name
            assert peer.reports[0].status == "dropped", name
    # the honest users: not dropped, results equal to an undisturbed run of the two of them
    want = undisturbed[2]["seeds"][0]
    users = {u["name"]: u for u in block["users"]}
    for mine in want["users"]:
        got = users[mine["name"]]
        assert got["dropped"] is None
        for key in ("accuracy", "native_accuracy", "mse", "mse_whitened"):
            assert got[key] == pytest.approx(mine[key], rel=1e-9), (mine["name"], key)
        assert got["self_reported"]["accuracy"] == got["accuracy"]
    for got, ref in zip(block["rounds"], want["rounds"], strict=True):
        assert got["mse"] == pytest.approx(ref["mse"], rel=1e-9)
        assert got["primal_residual"] == pytest.approx(ref["primal_residual"], rel=1e-9)
    assert all(p.reports and p.reports[0].status == "ok" for p in peers[:2])
    assert "self_reported" in measured_by_of(results)


def _handshake_edit(edit):
    return _edit("handshake", edit)


def _csi(edit):
    def change(msg):
        edit(msg.handshake.csi)

    return _handshake_edit(change)


def _nan_csi(csi):
    values = np.frombuffer(csi.data, dtype="<c16").copy()
    values[0] = complex(math.inf, 0)
    csi.data = values.tobytes()


def _as_ack(msg):
    return pb.UserMessage(ack=pb.Ack()).SerializeToString()


#: Handshakes refused at the service's door (before the user joins the session): the status
#: code name and a text the reason contains.
DOOR_ATTACKS = {
    "antennas-4000": (
        _handshake_edit(lambda m: setattr(m.handshake, "antennas_rx", 4000)),
        "antennas_rx 4000",
    ),
    "latent-dim": (
        _handshake_edit(lambda m: setattr(m.handshake, "latent_dim", 10**6)),
        "latent_dim",
    ),
    "csi-byte-count": (_csi(lambda c: setattr(c, "data", c.data[:-1])), "needs"),
    "csi-shape": (_csi(lambda c: c.shape.__setitem__(0, 3)), "shape"),
    "csi-dtype": (_csi(lambda c: setattr(c, "dtype", pb.INT64)), "dtype"),
    "csi-inf": (_csi(_nan_csi), "NaN or infinite"),
    "snr-nan": (_handshake_edit(lambda m: setattr(m.handshake, "snr_db", math.nan)), "snr_db"),
    "duplicate-pilots": (
        _handshake_edit(lambda m: m.handshake.pilot_ids.__setitem__(1, m.handshake.pilot_ids[0])),
        "duplicates",
    ),
    "negative-pilot": (
        _handshake_edit(lambda m: m.handshake.pilot_ids.__setitem__(0, -5)),
        "out of range",
    ),
    "encoding": (_handshake_edit(lambda m: b"\x0a\x05\x08"), "cannot parse"),
    "not-a-handshake": (_handshake_edit(_as_ack), "must be a HandshakeRequest"),
    "other-user-id": (
        _handshake_edit(lambda m: setattr(m.handshake, "user_id", "user1")),
        "authenticated as",
    ),
    "token-field": (
        _handshake_edit(lambda m: setattr(m.handshake, "token", "f" * 64)),
        "token differs",
    ),
    "protocol": (
        _handshake_edit(lambda m: setattr(m.handshake, "protocol_version", 9)),
        "protocol 9",
    ),
}


def test_malformed_handshakes_are_refused_at_the_door(latents, undisturbed):
    root, _, encoders = latents
    service, server = _server()
    try:
        peers = [Peer(server.address, root, encoders[i], f"user{i + 1}", i) for i in range(2)]
        for k, (mutate, _) in enumerate(DOOR_ATTACKS.values()):
            peers.append(
                Peer(server.address, root, encoders[k % 3], f"user{k + 3}", k + 2, mutate=mutate)
            )
        box: dict = {}
        ap = threading.Thread(  # any two users: a hostile one let in would take a seat
            target=lambda: box.update(r=_run_ap(service, latents, 2)), daemon=True
        )
        ap.start()
        for peer in peers[2:]:  # the hostile ones first, while the lobby is open
            peer.start()
        for peer in peers[2:]:
            peer.join(60)
        for peer in peers[:2]:
            peer.start()
        ap.join(60)
        for peer in peers[:2]:
            peer.join(30)
        results = box["r"]
    finally:
        server.stop()
    for peer, (name, (_, reason)) in zip(peers[2:], DOOR_ATTACKS.items(), strict=True):
        assert isinstance(peer.error, TransportError), (name, peer.error, peer.reports)
        assert reason in str(peer.error) and "\n" not in str(peer.error), (name, str(peer.error))
    block = results["seeds"][0]
    assert [u["name"] for u in block["users"]] == ["user1", "user2"] and not block["dropped"]
    for got, want in zip(block["users"], undisturbed[2]["seeds"][0]["users"], strict=True):
        assert got["accuracy"] == pytest.approx(want["accuracy"], rel=1e-9)
        assert got["mse"] == pytest.approx(want["mse"], rel=1e-9)


@pytest.mark.parametrize(
    ("name", "edit", "reason"),
    [
        ("accuracy-above-1", lambda m: setattr(m.report, "accuracy", 1.5), "accuracy"),
        ("nan-mse", lambda m: setattr(m.report, "mse", math.nan), "mse"),
        ("samples", lambda m: setattr(m.report, "samples", 3), "samples"),
    ],
)
def test_out_of_range_report_is_dropped_and_not_averaged(latents, undisturbed, name, edit, reason):
    root, _, encoders = latents
    service, server = _server()
    try:
        peers = [Peer(server.address, root, encoders[i], f"user{i + 1}", i) for i in range(2)]
        peers.append(
            Peer(server.address, root, encoders[2], "user3", 2, mutate=_edit("report", edit))
        )
        for peer in peers:
            peer.start()
        results = _run_ap(service, latents, ["user1", "user2", "user3"])
        for peer in peers:
            peer.join(30)
    finally:
        server.stop()
    block = results["seeds"][0]
    assert set(block["dropped"]) == {"user3"} and reason in block["dropped"]["user3"]
    assert peers[2].reports[0].status == "dropped" and reason in peers[2].reports[0].detail
    users = {u["name"]: u for u in block["users"]}
    assert users["user3"]["accuracy"] is None and users["user3"]["self_reported"] is None
    want = {u["name"]: u for u in undisturbed[3]["seeds"][0]["users"]}
    for uid in ("user1", "user2"):
        assert users[uid]["accuracy"] == pytest.approx(want[uid]["accuracy"], rel=1e-9)
    mean = np.mean([want[u]["accuracy"] for u in ("user1", "user2")])
    assert block["mean_accuracy"] == pytest.approx(mean, rel=1e-9)


# ------------------------------------------------------------------------------ credentials
def _raw_call(address, metadata, messages=()):
    channel = grpc.insecure_channel(address)
    outbox: queue.SimpleQueue = queue.SimpleQueue()
    for m in messages:
        outbox.put(m)
    call = channel.stream_stream(METHOD)(iter(outbox.get, None), metadata=metadata)
    return channel, outbox, call


def _offer():
    return SessionOffer("s1", 0, 1, CONFIG)


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        ((USER_KEY, "user1"),),
        ((USER_KEY, "user1"), (TOKEN_KEY, "0" * 64)),
        ((USER_KEY, "user2"), (TOKEN_KEY, user_token(SECRET, "user1"))),  # another user's
        ((USER_KEY, "user1"), (TOKEN_KEY, user_token("another-secret-0123456789", "user1"))),
        ((USER_KEY, "../x"), (TOKEN_KEY, "t")),
    ],
    ids=["none", "no-token", "wrong-token", "other-users-token", "other-ap", "bad-id"],
)
def test_unauthenticated_streams_get_no_offer(metadata):
    service, server = _server()
    service.open_lobby(_offer(), ["user1", "user2"])
    handshake = pb.UserMessage(handshake=pb.HandshakeRequest(user_id="user1")).SerializeToString()
    try:
        channel, outbox, call = _raw_call(server.address, metadata, [handshake])
        assert OFFER_KEY not in dict(call.initial_metadata() or ())
        with pytest.raises(grpc.RpcError) as err:
            next(call)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "credentials" in err.value.details()
        outbox.put(None)
        channel.close()
    finally:
        server.stop()
    assert service.refused == {"UNAUTHENTICATED": 1}


def test_authenticated_idle_streams_are_limited_and_time_out():
    # 3 s: long enough that the limit checks below finish before the first streams expire
    service, server = _server(first_message_timeout=3.0, max_streams_per_address=3)
    service.open_lobby(_offer(), ["user1", "user2", "user3", "user4"])
    token = {
        u: ((USER_KEY, u), (TOKEN_KEY, user_token(SECRET, u)))
        for u in ("user1", "user2", "user3", "user4")
    }
    try:
        first = _raw_call(server.address, token["user1"])
        second = _raw_call(server.address, token["user1"])
        assert OFFER_KEY in dict(first[2].initial_metadata())  # authenticated: the offer
        # both admitted before the third starts (else, on a busy machine, the server may run the
        # third's handler before the second's and refuse the second instead)
        assert OFFER_KEY in dict(second[2].initial_metadata())
        third = _raw_call(server.address, token["user1"])  # a third stream of user1
        with pytest.raises(grpc.RpcError) as err:
            next(third[2])
        assert (
            err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            and "user user1" in err.value.details()
        )
        other = _raw_call(server.address, token["user2"])
        assert OFFER_KEY in dict(other[2].initial_metadata())
        fourth = _raw_call(server.address, token["user3"])  # the address's fourth stream
        with pytest.raises(grpc.RpcError) as err:
            next(fourth[2])
        assert (
            err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            and "address" in err.value.details()
        )
        start = time.monotonic()
        for _, _, call in (first, second, other):  # no handshake: ended after 3 s
            with pytest.raises(grpc.RpcError) as err:
                next(call)
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - start < 10  # the 3 s deadline, not the default 30 s
        time.sleep(0.2)
        assert service.open_streams == {}  # every slot released
    finally:
        server.stop()


def test_flood_of_unauthenticated_streams_and_idle_sockets_does_not_lock_users_out(
    latents, undisturbed, caplog
):
    """100 idle unauthenticated streams, 100 idle TCP sockets and a sustained flood of streams
    with wrong tokens (more at once than the server has workers) while the users join."""
    root, _, encoders = latents
    service, server = _server()
    host, port = server.address.rsplit(":", 1)
    stop = threading.Event()
    refused_codes: list = []
    sockets = []
    try:
        for _ in range(100):
            sock = socket.create_connection((host, int(port)))
            sockets.append(sock)
        channel = grpc.insecure_channel(server.address)
        method = channel.stream_stream(METHOD)
        idle = [method(iter(queue.SimpleQueue().get, None)) for _ in range(100)]

        def flood():
            bad = ((USER_KEY, "user1"), (TOKEN_KEY, "1" * 64))
            while not stop.is_set():
                calls = [
                    method(iter(queue.SimpleQueue().get, None), metadata=bad) for _ in range(40)
                ]
                for call in calls:
                    refused_codes.append(call.code())

        flooders = [threading.Thread(target=flood, daemon=True) for _ in range(3)]
        for thread in flooders:
            thread.start()
        time.sleep(0.3)
        peers = [Peer(server.address, root, encoders[i], f"user{i + 1}", i) for i in range(2)]
        for peer in peers:
            peer.start()
        results = _run_ap(service, latents, ["user1", "user2"])
        for peer in peers:
            peer.join(30)
        stop.set()
        for thread in flooders:
            thread.join(10)
        for call in idle:
            assert call.code() == grpc.StatusCode.UNAUTHENTICATED
            assert OFFER_KEY not in dict(call.initial_metadata() or ())
        channel.close()
    finally:
        stop.set()
        for sock in sockets:
            sock.close()
        server.stop()
    assert all(p.error is None and p.reports[0].status == "ok" for p in peers), [
        p.error for p in peers
    ]
    assert len(refused_codes) > 100
    logged = [r for r in caplog.records if "refused a stream" in r.getMessage()]
    assert 1 <= len(logged) <= 10  # the peer is logged, but the flood does not flood the log
    assert set(refused_codes) <= {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
    block = results["seeds"][0]
    for got, want in zip(block["users"], undisturbed[2]["seeds"][0]["users"], strict=True):
        assert got["accuracy"] == pytest.approx(want["accuracy"], rel=1e-9)


def test_messages_ahead_of_the_protocol_end_the_stream(latents, undisturbed):
    """A user that streams messages while the AP waits (here: in the lobby) is cut off after a
    few; the AP's memory does not grow with what it sends, and the session goes on."""
    root, _, encoders = latents
    service, server = _server()
    honest = [Peer(server.address, root, encoders[i], f"user{i + 1}", i) for i in range(2)]
    try:
        ap = threading.Thread(
            target=lambda: box.update(r=_run_ap(service, latents, ["user1", "user2", "user3"])),
            daemon=True,
        )
        box: dict = {}
        ap.start()
        while service._lobby is None:
            time.sleep(0.01)
        factory = user_factory(
            "user3", encoders[2], 2, lambda pf: user_data_from_cache(root, encoders[2], pf)
        )
        metadata = ((USER_KEY, "user3"), (TOKEN_KEY, user_token(SECRET, "user3")))
        channel, outbox, call = _raw_call(server.address, metadata)
        user = factory(SessionOffer.from_header(dict(call.initial_metadata())[OFFER_KEY]))
        outbox.put(user.handshake_request())
        junk = pb.UserMessage(ack=pb.Ack()).SerializeToString()
        for _ in range(200):
            outbox.put(junk)
        with pytest.raises(grpc.RpcError) as err:
            for _ in call:
                pass
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "messages ahead of the protocol" in err.value.details()
        outbox.put(None)
        channel.close()
        for peer in honest:
            peer.start()
        ap.join(60)
        for peer in honest:
            peer.join(30)
    finally:
        server.stop()
    block = box["r"]["seeds"][0]
    assert set(block["dropped"]) == {"user3"}
    assert all(p.reports[0].status == "ok" for p in honest)
    want = {u["name"]: u for u in undisturbed[2]["seeds"][0]["users"]}
    for user in block["users"][:2]:
        assert user["accuracy"] == pytest.approx(want[user["name"]]["accuracy"], rel=1e-9)


def test_busy_server_is_retried_within_the_join_timeout(latents):
    """Every stream slot of the address is held by idle authenticated streams: the user gets
    RESOURCE_EXHAUSTED, backs off, and joins once they time out."""
    root, _, encoders = latents
    service, server = _server(first_message_timeout=1.5, max_streams_per_address=2)
    try:
        holders = [
            _raw_call(server.address, ((USER_KEY, u), (TOKEN_KEY, user_token(SECRET, u))))
            for u in ("user8", "user9")
        ]
        while sum(service.open_streams.values()) < 4:  # both hold their slots
            time.sleep(0.01)
        peer = Peer(server.address, root, encoders[0], "user1", 0)
        start = time.monotonic()
        peer.start()
        results = _run_ap(service, latents, ["user1"])
        peer.join(30)
        for _, _, call in holders:
            assert call.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        server.stop()
    assert peer.error is None and peer.reports[0].status == "ok"
    assert time.monotonic() - start >= 1.0  # it had to wait for the idle streams to expire
    assert service.refused.get("RESOURCE_EXHAUSTED", 0) >= 1
    assert results["seeds"][0]["users"][0]["accuracy"] is not None


def test_dropped_user_command_prints_the_reason_and_exits_non_zero(latents):
    """A hostile AP sends user1 a broadcast with NaN symbols: the `semalign user` process
    answers with a ProtocolError, the AP drops it, and the command prints the reason as one
    line and exits 1; user2 finishes."""
    import subprocess

    from semalign.deploy.serving.launcher import child_env, semalign_command

    root, ap_enc, encoders = latents
    service, server = _server()
    argv = [*semalign_command(), "user", "--ap", server.address, "--user-id", "user1"]
    argv += ["--encoder", encoders[0], "--latents", str(root), "--connect-timeout", "60", "-q"]
    argv += ["--insecure"]  # this server is plaintext (its TLS is tested elsewhere)
    env = child_env(SEMALIGN_TOKEN=user_token(SECRET, "user1"))
    splits = load_encoder_splits(root, ap_enc)

    def make_ap(cfg):
        ap = build_access_point(splits["train"].latents, cfg, 2)
        honest = ap.round_messages

        def poisoned():
            out = honest()
            if "user1" in out:
                msg = pb.ApMessage.FromString(out["user1"])
                data = bytearray(msg.broadcast.symbols.data)
                data[0:4] = np.float32(np.nan).tobytes()
                msg.broadcast.symbols.data = bytes(data)
                out["user1"] = msg.SerializeToString()
            return out

        ap.round_messages = poisoned
        return ap

    peer = Peer(server.address, root, encoders[1], "user2", 1)
    try:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        peer.start()
        results = serve_sessions(
            service,
            SessionsPlan(make_ap, CONFIG, [SEED], splits["test"].latents),
            ServeSettings(["user1", "user2"], 60, WaitPolicy(reply_timeout=30)),
        ).to_dict()
        _, err = proc.communicate(timeout=60)
        peer.join(30)
    finally:
        server.stop()
    reason = "user user1 reported: broadcast symbols contains NaN or infinite values"
    assert reason in results["seeds"][0]["dropped"]["user1"]
    lines = err.decode().strip().splitlines()
    assert lines and lines[0].startswith("WARNING: --insecure"), err.decode()
    lines = lines[1:]  # the plaintext warning, then the one line of the drop
    assert proc.returncode == 1 and len(lines) == 1, err.decode()
    assert lines[0].startswith("semalign user: user1 dropped in session 1 (seed 11): dropped by")
    assert reason in lines[0]
    assert peer.reports[0].status == "ok"
