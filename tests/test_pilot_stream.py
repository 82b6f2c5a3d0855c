"""The compact handshake's X in chunks (common/pilot_stream.py): cut at the AP, reassembled
exactly at the user, refused with a clear reason when a chunk breaks what the accept declared
(the AP drops that user, the session goes on), progress logged; sessions over chunking links
equal sessions over plain ones to 1e-12, in process and over gRPC."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from semalign.client.user import User
from semalign.common.config import AlignmentConfig
from semalign.common.pilot_stream import (
    MAX_CHUNK_BYTES,
    MIN_CHUNK_BYTES,
    PilotAssembly,
    PilotSplitter,
    requested_limit,
    rows_per_chunk,
)
from semalign.common.wire import parse_ap_message, view_matrix
from semalign.proto import semalign_pb2 as pb
from semalign.server.access_point import AccessPoint
from semalign.server.session import SessionDriver
from test_core_protocol import _users_data

from semalign.engine.loopback import LoopbackLink

CONFIG = AlignmentConfig(
    antennas_tx=2, antennas_rx=2, channel_uses=2, iterations=4, protocol="compact", seed=3
)
LIMIT = MIN_CHUNK_BYTES


def _session(*, d=64, n=1200, dims=(10, 14, 12), config=CONFIG):
    """A compact AP (X: d/2 rows of n complex64) and its users, on shared random data."""
    rng = np.random.default_rng(0)
    ap_lat = rng.standard_normal((n + 60, d))
    ap = AccessPoint(config=config, pilot_latents=ap_lat[:n], pilot_ids=np.arange(n))
    users = [
        User(
            user_id=f"user{i + 1}",
            encoder=f"enc{i}",
            data=data,
            antennas_rx=config.antennas_rx,
            antennas_tx=config.antennas_tx,
            snr_db=config.snr_db,
            channel_seed=(config.seed, i),
            round_protocols=("compact",),
        )
        for i, data in enumerate(_users_data(rng, ap_lat, dims, n, 60))
    ]
    return ap, users, ap_lat[n:]


class ChunkingLink(LoopbackLink):
    """An in-process link whose user takes X in chunks of at most ``limit`` bytes (``None``:
    whole); ``tamper`` may rewrite each message on its way down (a broken chunk stream)."""

    def __init__(self, user: User, tamper=None, limit: int | None = LIMIT) -> None:
        super().__init__(user)
        self.pilot_chunk_bytes = limit
        self.tamper = tamper
        self.kinds: list[str] = []

    def send(self, data: bytes) -> None:
        self.kinds.append(parse_ap_message(data).WhichOneof("body"))
        super().send(self.tamper(data) if self.tamper else data)


def _accept(ap: AccessPoint, user: User) -> bytes:
    return ap.handshake(user.handshake_request())[1]


def test_split_reassembles_x_exactly_and_reuses_the_chunks():
    ap, users, _ = _session()
    splitter = PilotSplitter()
    whole = _accept(ap, users[0])
    parts = splitter.split(whole, LIMIT)
    header = parse_ap_message(parts[0]).accept
    original = parse_ap_message(whole).accept.pilots
    rows, n = original.shape
    # the accept keeps X's header, not its data; the declaration covers X
    assert not header.pilots.data and list(header.pilots.shape) == [rows, n]
    assert header.pilots.dtype == original.dtype
    stream = header.pilot_stream
    assert stream.total_bytes == len(original.data) == rows * n * 8
    assert stream.rows_per_chunk == rows_per_chunk(rows, n * 8, LIMIT)
    assert stream.chunks == len(parts) - 1 > 1
    chunks = [parse_ap_message(p).pilot_chunk for p in parts[1:]]
    assert [c.index for c in chunks] == list(range(stream.chunks))
    assert all(len(c.data) <= LIMIT for c in chunks)
    assert b"".join(c.data for c in chunks) == original.data
    # the user's assembly hands on every row once, decoded as the whole X would be
    assembly = PilotAssembly(header.pilots, stream, (rows, n), (pb.COMPLEX64,), limit=LIMIT)
    out = np.full((rows, n), np.nan, dtype=np.complex64)
    for chunk in chunks:
        taken, block = assembly.add(chunk)
        out[taken] = block
    assert assembly.done
    np.testing.assert_array_equal(out, view_matrix(original))
    # the next user of the session gets the same chunk messages, not new copies
    again = splitter.split(_accept(ap, users[1]), LIMIT)
    assert all(a is b for a, b in zip(again[1:], parts[1:], strict=True))
    assert parse_ap_message(again[0]).accept.user_index == 1


def test_chunk_sizes_and_the_users_limit():
    assert rows_per_chunk(192, 32_000, MAX_CHUNK_BYTES) == 12  # about 16 chunks
    assert rows_per_chunk(192, 340_000, MAX_CHUNK_BYTES) == 12  # 4.08 MB <= 4 MiB
    assert rows_per_chunk(192, 1_000_000, MAX_CHUNK_BYTES) == 4  # the byte cap binds
    assert rows_per_chunk(4, 5_000_000, MAX_CHUNK_BYTES) == 0  # one row too large: whole
    assert requested_limit(None) is None and requested_limit("lots") is None
    assert requested_limit("1") == MIN_CHUNK_BYTES
    assert requested_limit(str(1 << 30)) == MAX_CHUNK_BYTES
    ap, users, _ = _session()
    whole = _accept(ap, users[0])
    assert PilotSplitter().split(whole, None) == [whole]  # a user that did not ask


def _run(ap, links, test):
    return SessionDriver(ap, links).run(test, np.arange(len(test)))


def test_chunked_session_equals_the_whole_one_to_1e12():
    results, links = {}, {}
    for chunked in (False, True):
        ap, users, test = _session()
        made = [ChunkingLink(u, limit=LIMIT if chunked else None) for u in users]
        results[chunked], links[chunked] = _run(ap, made, test), made
    whole, chunked = results[False], results[True]
    assert not chunked.dropped
    for got, want in zip(chunked.rounds, whole.rounds, strict=True):
        for key in ("mse", "objective", "primal_residual", "dual_residual"):
            assert getattr(got, key) == pytest.approx(getattr(want, key), rel=1e-12, abs=1e-15)
        assert got.bytes_down == want.bytes_down and got.bytes_up == want.bytes_up
    for uid, report in whole.reports.items():
        for key in ("accuracy", "native_accuracy", "mse", "mse_whitened"):
            got = getattr(chunked.reports[uid], key)
            assert got == pytest.approx(getattr(report, key), rel=1e-12, abs=1e-15)
    # X travelled in chunks after a slimmer accept; the handshake's bytes grew by framing only
    kinds = links[True][0].kinds
    assert kinds[0] == "accept" and kinds[1:3] == ["pilot_chunk", "pilot_chunk"]
    assert kinds.count("pilot_chunk") > 2 and "pilot_chunk" not in links[False][0].kinds
    extra = chunked.phases["handshake"].bytes_down - whole.phases["handshake"].bytes_down
    assert 0 < extra < 64 * kinds.count("pilot_chunk") * len(whole.reports)


def _tamper_chunk(index: int, change):
    """A tamper function that rewrites PilotChunk ``index`` (``change`` gets the message)."""

    def tamper(data: bytes) -> bytes:
        msg = parse_ap_message(data)
        if msg.WhichOneof("body") == "pilot_chunk" and msg.pilot_chunk.index == index:
            change(msg)
            return msg.SerializeToString()
        return data

    return tamper


def _extra_bytes(msg):
    msg.pilot_chunk.data += b"\0" * 8


def _out_of_order(msg):
    msg.pilot_chunk.index = 5


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (_extra_bytes, "declared"),
        (_out_of_order, "where chunk 2 was due"),
    ],
)
def test_a_broken_chunk_stream_drops_that_user_and_the_session_goes_on(change, reason):
    ap, users, test = _session()
    links = [ChunkingLink(u) for u in users]
    links[1].tamper = _tamper_chunk(2, change)
    result = _run(ap, links, test)
    assert set(result.dropped) == {"user2"}
    assert "reported: pilot chunk" in result.dropped["user2"]
    assert reason in result.dropped["user2"]
    assert set(result.reports) == {"user1", "user3"}
    assert len(result.rounds) == CONFIG.iterations


def test_chunks_beyond_the_declared_count_are_refused():
    ap, users, _ = _session()
    parts = PilotSplitter().split(_accept(ap, users[0]), LIMIT)
    user = users[0]
    assert user.handle(parts[0]) is None
    for part in parts[1:]:
        assert user.handle(part) is None  # no reply to a chunk
    reply = pb.UserMessage.FromString(user.handle(parts[-1]))
    assert reply.WhichOneof("body") == "error"
    assert "beyond the" in reply.error.message and "declared" in reply.error.message


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("total_bytes", 8, "bytes declared"),
        ("chunks", 1, "do not cover"),
        ("rows_per_chunk", 0, "do not cover"),
    ],
)
def test_a_declaration_that_does_not_fit_x_is_refused(field, value, reason):
    ap, users, _ = _session()
    parts = PilotSplitter().split(_accept(ap, users[0]), LIMIT)
    msg = parse_ap_message(parts[0])
    setattr(msg.accept.pilot_stream, field, value)
    reply = pb.UserMessage.FromString(users[0].handle(msg.SerializeToString()))
    assert reply.WhichOneof("body") == "error" and reason in reply.error.message


def test_a_broadcast_before_x_is_complete_is_refused():
    ap, users, _ = _session()
    parts = PilotSplitter().split(_accept(ap, users[0]), LIMIT)
    for part in parts[:3]:
        users[0].handle(part)
    reply = pb.UserMessage.FromString(users[0].handle(ap.round_messages()["user1"]))
    assert "not complete: 2 of" in reply.error.message


def test_progress_is_logged_once_per_tenth(caplog):
    ap, users, _ = _session(n=3200)  # 32 rows of 25,600 bytes: 2 rows a chunk, 16 chunks
    parts = PilotSplitter().split(_accept(ap, users[0]), LIMIT)
    assert len(parts) == 17
    with caplog.at_level(logging.INFO, logger="semalign.common.pilot_stream"):
        for part in parts:
            users[0].handle(part)
    lines = [r.getMessage() for r in caplog.records if "pilots X" in r.getMessage()]
    assert len(lines) == 10
    assert lines[0].startswith("user1: pilots X 12 %") and "100 %" in lines[-1]
    assert "chunk 16 of 16" in lines[-1]


def test_grpc_session_with_chunks_equals_the_simulator_to_1e12(tmp_path):
    """Users over real gRPC (threads running the user's stream loop) ask for X in chunks; the
    session's numbers are the in-process simulator's (X whole) to 1e-12."""
    from semalign.server.service import AlignmentService, start_server
    from synthetic import make_latents
    from test_network_grpc import SECRET, run_ap, start_users

    from semalign.engine.scenario import load_scenario
    from semalign.engine.simulate import simulate

    root, ap_enc, encoders = make_latents(tmp_path, ap_dim=48, user_dims=(12, 20, 14))
    config = CONFIG.model_copy(update={"iterations": 3})
    service = AlignmentService(SECRET)
    server = start_server(service, "127.0.0.1:0")
    try:
        _, threads, errors = start_users(server.address, root, encoders)
        results = run_ap(service, root, ap_enc, len(encoders), config=config, seeds=[5])
        for thread in threads:
            thread.join(20)
    finally:
        server.stop()
    assert not errors
    expected = simulate(load_scenario(root, ap_enc, encoders), config, [5]).to_dict()
    got, want = results["seeds"][0], expected["seeds"][0]
    for gu, wu in zip(got["users"], want["users"], strict=True):
        for key in ("accuracy", "mse", "mse_whitened"):
            assert gu[key] == pytest.approx(wu[key], rel=1e-12, abs=1e-15)
    for gr, wr in zip(got["rounds"], want["rounds"], strict=True):
        for key in ("mse", "objective", "primal_residual", "dual_residual"):
            assert gr[key] == pytest.approx(wr[key], rel=1e-12, abs=1e-15)
    # X went in chunks: 24 rows of 400 pilots, 2 rows a chunk, after the accept
    for user in got["wire"]["users"].values():
        assert user["messages_down"] == 1 + 12 + config.iterations + 3  # + final, eval, end
