"""The wire at its limit: Hermitian-packed A_l and B = X X^H, and 16-bit wire precisions.

Packing is lossless (exact round trips, every number of a session unchanged, bytes as
predicted); a bad packed length, layout or exponent is refused with a reason that names it;
bfloat16 and float16 meet their rounding bounds and refuse NaN and infinity; a float16 or
bfloat16 session agrees with the native one within the tolerances stated below, with half the
bytes of its float payloads; the option reaches ``simulate``, ``run`` and ``ap`` and config files,
and a results file has the bytes per round and per session (``traffic``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from semalign.common import half_precision as hp
from semalign.common.config import AlignmentConfig
from semalign.common.errors import LinkError, ProtocolError
from semalign.common.wire import (
    PROTOCOL_VERSION,
    WireFormat,
    check_matrix,
    from_matrix,
    pack_hermitian,
    packed_count,
    parse_ap_message,
    parse_user_message,
    to_matrix,
)
from semalign.proto import semalign_pb2 as pb
from semalign.server.session import SessionDriver
from synthetic import make_latents
from test_speed import _session

from semalign.cli import main
from semalign.engine.loopback import LoopbackLink
from semalign.engine.scenario import load_scenario
from semalign.engine.simulate import simulate

SMALL = {"antennas_tx": 2, "antennas_rx": 2, "channel_uses": 2, "task_model": "logistic"}
#: a 16-bit session against the native one: largest relative difference of a user's test MSE
#: and of a round's pilot MSE (measured: about 1e-4 for float16 and 4e-4 for bfloat16 on these
#: latents), and of the accuracy (absolute)
TOLERANCE = {"float16": 2e-3, "bfloat16": 1e-2}
ACCURACY_TOLERANCE = 0.02


def _hermitian(size: int, dtype: str, rng: np.random.Generator) -> np.ndarray:
    g = rng.standard_normal((size + 2, size))
    if "complex" in dtype:
        g = g + 1j * rng.standard_normal((size + 2, size))
    a = g.conj().T @ g
    return ((a + a.conj().T) / 2).astype(dtype)


# ---------------------------------------------------------------------------- packing
@pytest.mark.parametrize("dtype", ["complex64", "complex128", "float32", "float64"])
def test_hermitian_packing_round_trips_exactly_in_the_predicted_size(dtype):
    rng = np.random.default_rng(1)
    for size in (1, 2, 3, 8, 13):
        a = _hermitian(size, dtype, rng)
        message = pb.Matrix.FromString(to_matrix(a, hermitian=True).SerializeToString())
        assert message.layout == pb.HERMITIAN and tuple(message.shape) == (size, size)
        real_size = np.finfo(a.dtype).dtype.itemsize
        count = packed_count(size, "complex" in dtype)
        assert len(message.data) == count * real_size
        dense = to_matrix(a)
        assert len(dense.data) == a.nbytes
        if size > 1:
            assert len(message.data) <= 0.75 * len(dense.data)
        back = from_matrix(message)
        assert back.dtype == a.dtype
        np.testing.assert_array_equal(back, a)  # exact: the lower triangle is the upper's


def test_packing_refuses_what_it_would_lose():
    with pytest.raises(ProtocolError, match="not Hermitian"):
        pack_hermitian(np.arange(9.0).reshape(3, 3))
    with pytest.raises(ProtocolError, match="square"):
        pack_hermitian(np.zeros((2, 3)))


def test_a_bad_packed_matrix_is_refused_naming_what_is_wrong():
    a = _hermitian(4, "complex64", np.random.default_rng(2))
    message = to_matrix(a, hermitian=True)
    short = pb.Matrix()
    short.CopyFrom(message)
    short.data = message.data[:-4]
    with pytest.raises(ProtocolError, match=r"Hermitian-packed needs 64 bytes, got 60"):
        check_matrix(short, "A", (4, 4), layouts=(pb.HERMITIAN,))
    dense_length = pb.Matrix()
    dense_length.CopyFrom(to_matrix(a))
    dense_length.layout = pb.HERMITIAN  # a dense payload declared packed
    with pytest.raises(ProtocolError, match="needs 64 bytes, got 128"):
        from_matrix(dense_length)
    not_square = to_matrix(np.zeros((2, 8), np.complex64))
    not_square.layout = pb.HERMITIAN
    with pytest.raises(ProtocolError, match="not square"):
        from_matrix(not_square)
    unknown = to_matrix(a)
    unknown.layout = 7
    with pytest.raises(ProtocolError, match="layout"):
        from_matrix(unknown)
    with pytest.raises(ProtocolError, match="A: layout HERMITIAN"):
        check_matrix(message, "A", (4, 4))  # where a dense matrix is expected
    scaled = to_matrix(a)
    scaled.exponent = 3  # an exponent belongs to 16-bit matrices only
    with pytest.raises(ProtocolError, match="exponent"):
        from_matrix(scaled)


class _ShortPackedA(LoopbackLink):
    """Cuts 4 bytes off the packed A_l of every upload (a peer that breaks the layout)."""

    def receive(self, timeout):
        data = super().receive(timeout)
        msg = parse_user_message(data)
        if msg.WhichOneof("body") == "upload":
            msg.upload.a.data = msg.upload.a.data[:-4]
            return msg.SerializeToString()
        return data


def test_a_peer_with_a_bad_packed_length_is_dropped_with_the_reason():
    config = AlignmentConfig(**{**SMALL, "iterations": 2})
    ap, users, test = _session(config)
    links = [_ShortPackedA(users[0])] + [LoopbackLink(u) for u in users[1:]]
    result = SessionDriver(ap, links).run(test, np.arange(len(test)))
    reason = result.dropped["user1"]
    assert "A: matrix (4, 4) complex64 Hermitian-packed needs 64 bytes, got 60" in reason
    assert set(result.reports) == {u.user_id for u in users[1:]}


def test_uploads_carry_a_packed_and_the_bytes_shrink_as_predicted():
    """Per user per round (K N_T = s, n pilots, K N_R = r): up 8 s n + 4 s^2 bytes at native
    precision (P_l, then A_l's s^2 reals), 4 s n + 2 s^2 at 16 bits; down 8 r n, 4 r n; plus
    under 100 bytes of framing."""
    k, nt, nr = 2, 2, 2
    s, r = k * nt, k * nr
    for precision, size in (("native", 4), ("float16", 2), ("bfloat16", 2)):
        config = AlignmentConfig(**{**SMALL, "iterations": 2, "wire_precision": precision})
        ap, users, test = _session(config)
        n = ap.n
        result = SessionDriver(ap, [LoopbackLink(u) for u in users]).run(test, np.arange(50))
        for record in result.rounds:
            for up in record.bytes_up_per_user.values():
                assert 0 < up - size * (2 * s * n + s * s) < 100, (precision, up)
            for down in record.bytes_down_per_user.values():
                assert 0 < down - size * 2 * r * n < 100, (precision, down)


# ---------------------------------------------------------------------------- 16-bit formats
def test_bfloat16_rounds_to_nearest_even_within_its_bound():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(20_000) * np.exp(rng.uniform(-40, 40, 20_000))).astype(np.float32)
    back = hp.from_bfloat16(hp.to_bfloat16(x))
    assert back.dtype == np.float32
    assert np.all(np.abs(back - x) <= 2.0**-8 * np.abs(x))
    # values that are bfloat16 already come back exactly; ties go to the even neighbour
    np.testing.assert_array_equal(hp.from_bfloat16(hp.to_bfloat16(back)), back)
    ties = np.array([1 + 2.0**-8, 1 + 3 * 2.0**-8, -(1 + 2.0**-8)], dtype=np.float32)
    np.testing.assert_array_equal(hp.from_bfloat16(hp.to_bfloat16(ties)), [1.0, 1 + 2.0**-6, -1.0])
    assert hp.to_bfloat16(np.float32(1.0)) == 0x3F80  # the top 16 bits of the float32


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 3.4e38, 1e300])
def test_bfloat16_refuses_nan_infinity_and_overflow(bad):
    with pytest.raises(ProtocolError, match="bfloat16"):
        hp.to_bfloat16(np.array([1.0, bad]))


def test_a_nan_or_infinite_16_bit_value_is_refused_on_receipt():
    for pattern, fmt in ((0x7FC0, "bfloat16"), (0x7F80, "bfloat16"), (0x7C00, "float16")):
        data = np.array([0, pattern], dtype="<u2").tobytes()
        with pytest.raises(ProtocolError, match="NaN or infinite"):
            hp.decode(data, fmt, 0)
    with pytest.raises(ProtocolError, match="exponent"):
        hp.decode(b"\0\0", "float16", hp.MAX_EXPONENT + 1)
    for fmt in hp.HALF_FORMATS:
        with pytest.raises(ProtocolError, match="NaN or infinite"):
            hp.encode(np.array([1.0, np.nan]), fmt)


@pytest.mark.parametrize("fmt", ["float16", "bfloat16"])
@pytest.mark.parametrize("scale", [1e-12, 1.0, 1e6, 1e12])
def test_16_bit_blocks_round_within_their_bound_at_any_scale(fmt, scale):
    """Relative error at most u per value (2^-11 float16, 2^-8 bfloat16), down to 2^-29 of the
    block's largest value for float16 (its block exponent keeps large blocks from overflowing
    and small ones out of the subnormals)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((7, 300)) * np.exp(rng.uniform(-8, 8, (7, 300))) * scale
    data, exponent = hp.encode(x, fmt)
    assert len(data) == 2 * x.size
    back = hp.decode(data, fmt, exponent).reshape(x.shape).astype(np.float64)
    u = hp.UNIT_ROUNDOFF[fmt] * (1 + 2.0**-12)  # bfloat16 from float64: via float32
    floor = 2.0 ** (exponent - 25) if fmt == "float16" else 0.0
    assert np.all(np.abs(back - x) <= u * np.abs(x) + floor)
    if fmt == "float16":
        assert 2.0**14 <= np.max(np.abs(x)) * 2.0**-exponent < 2.0**15


def test_a_16_bit_matrix_decodes_to_single_precision_and_keeps_its_layout():
    rng = np.random.default_rng(5)
    a = _hermitian(6, "complex128", rng)
    x = rng.standard_normal((4, 9)) + 1j * rng.standard_normal((4, 9))
    for fmt, code in (("float16", pb.COMPLEX_FLOAT16), ("bfloat16", pb.COMPLEX_BFLOAT16)):
        wire = WireFormat(precision=fmt)
        dense = pb.Matrix.FromString(wire.matrix(x).SerializeToString())
        assert dense.dtype == code and len(dense.data) == 2 * 2 * x.size
        got = from_matrix(dense)
        assert got.dtype == np.complex64 and got.shape == x.shape
        assert np.max(np.abs(got - x)) <= 2 * hp.UNIT_ROUNDOFF[fmt] * np.max(np.abs(x))
        packed = wire.matrix(a, hermitian=True)
        assert len(packed.data) == 2 * 36
        back = from_matrix(packed)
        np.testing.assert_array_equal(back, back.conj().T)
        assert np.max(np.abs(back - a)) <= 2 * hp.UNIT_ROUNDOFF[fmt] * np.max(np.abs(a))
    real = WireFormat(real=True, precision="float16").matrix(np.eye(3))
    assert real.dtype == pb.FLOAT16 and from_matrix(real).dtype == np.float32
    with pytest.raises(ProtocolError, match="unknown wire precision"):
        WireFormat(precision="float8")


# ---------------------------------------------------------------------------- sessions
def test_the_accept_announces_the_precision_and_the_user_holds_to_it():
    config = AlignmentConfig(**{**SMALL, "iterations": 2, "wire_precision": "float16"})
    ap, users, _ = _session(config)
    for user in users:
        _, accept = ap.handshake(user.handshake_request())
        assert parse_ap_message(accept).accept.wire_precision == pb.WIRE_FLOAT16
        user.handle(accept)
    assert users[0].wire == WireFormat(precision="float16")
    messages = ap.round_messages()
    broadcast = parse_ap_message(messages["user1"]).broadcast
    assert broadcast.symbols.dtype == pb.COMPLEX_FLOAT16
    upload = parse_user_message(users[0].handle(messages["user1"])).upload
    assert upload.a.dtype == upload.p.dtype == pb.COMPLEX_FLOAT16
    assert upload.a.layout == pb.HERMITIAN
    # a native matrix where float16 was announced is refused, both ways
    broadcast.symbols.CopyFrom(to_matrix(from_matrix(broadcast.symbols), "complex64"))
    reply = users[1].handle(pb.ApMessage(broadcast=broadcast).SerializeToString())
    assert "dtype COMPLEX64" in parse_user_message(reply).error.message
    upload.p.CopyFrom(to_matrix(from_matrix(upload.p), "complex64"))
    with pytest.raises(ProtocolError, match="dtype COMPLEX64"):
        ap.strategy.receive_upload(ap.users["user1"], upload)
    # a native session's accept is byte for byte what it was: no precision field
    native_ap, native_users, _ = _session(AlignmentConfig(**SMALL))
    _, accept = native_ap.handshake(native_users[0].handshake_request())
    assert parse_ap_message(accept).accept.wire_precision == pb.WIRE_PRECISION_UNSPECIFIED


def test_a_user_of_another_protocol_version_is_refused_clearly():
    assert PROTOCOL_VERSION == 3  # 3: packed A_l and B, 16-bit precisions
    ap, users, _ = _session(AlignmentConfig(**SMALL))
    request = parse_user_message(users[0].handshake_request())
    request.handshake.protocol_version = 2
    with pytest.raises(ProtocolError, match="user speaks protocol 2, AP speaks 3"):
        ap.handshake(request.SerializeToString())


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    root, ap, users = make_latents(tmp_path_factory.mktemp("latents"))
    return load_scenario(root, ap, users)


CASES = {
    "fed": {"strategy": "fed"},
    "fed-compact": {"strategy": "fed", "protocol": "compact"},
    "multi-link": {"strategy": "multi-link"},
    "top-k": {"strategy": "top-k"},
    "first-k-full": {"strategy": "first-k", "baseline_fit": "full"},
    "widely-linear": {"strategy": "fed", "equalizer": "widely-linear"},
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_a_16_bit_session_agrees_with_the_native_one(scenario, case):
    runs = {}
    for precision in ("native", "float16", "bfloat16"):
        fields = {**SMALL, "iterations": 8, **CASES[case], "wire_precision": precision}
        config = AlignmentConfig(**fields)
        runs[precision] = simulate(scenario, config, [27])
    native = runs["native"]
    for precision in ("float16", "bfloat16"):
        run, tol = runs[precision], TOLERANCE[precision]
        assert run.config.params()["wire_precision"] == precision
        for got, want in zip(run.users, native.users, strict=True):
            assert got.mse == pytest.approx(want.mse, rel=tol), precision
            assert abs(got.accuracy - want.accuracy) <= ACCURACY_TOLERANCE
        for got, want in zip(run.rounds, native.rounds, strict=True):
            assert got.mse == pytest.approx(want.mse, rel=tol)
            # half the bytes of the float payloads: well under 60% of the native traffic
            assert got.bytes_up < 0.6 * want.bytes_up and got.bytes_down < 0.6 * want.bytes_down
        if not native.rounds:  # baselines: the pilot transmission's symbols are 16-bit too
            pilots = native.seeds[0].phases["final"].bytes_down
            assert run.seeds[0].phases["final"].bytes_down < pilots
    assert "wire_precision" not in native.config.params()  # the default stays out of results


def test_secure_aggregation_keeps_its_fixed_point_uploads(scenario):
    """Secure aggregation: F and X travel at 16 bits, the masked uploads stay fixed point."""
    base = {**SMALL, "iterations": 4, "protocol": "compact", "aggregation": "secure"}
    native = simulate(scenario, AlignmentConfig(**base), [27])
    half = simulate(scenario, AlignmentConfig(**base, wire_precision="float16"), [27])
    for got, want in zip(half.rounds, native.rounds, strict=True):
        assert got.bytes_up == want.bytes_up  # exempt: the same masked vectors
        assert got.bytes_down < want.bytes_down
        assert got.mse == pytest.approx(want.mse, rel=TOLERANCE["float16"])
    for got, want in zip(half.users, native.users, strict=True):
        assert got.mse == pytest.approx(want.mse, rel=TOLERANCE["float16"])


# ---------------------------------------------------------------------------- the option
@pytest.mark.parametrize("command", ["simulate", "run", "ap"])
def test_the_option_is_in_simulate_run_and_ap(command, capsys):
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--wire-precision {native,float16,bfloat16}" in out


def test_the_option_from_a_config_file_reaches_the_results(tmp_path, capsys):
    root, ap, users = make_latents(tmp_path / "lat", n_train=160, n_test=48)
    config = tmp_path / "wire.toml"
    config.write_text('wire_precision = "bfloat16"\niterations = 2\nseeds = "5"\n')
    out = tmp_path / "out.json"
    argv = ["simulate", "--config", str(config), "--latents", str(root), "--ap-encoder", ap]
    argv += ["--user-encoders", ",".join(users), "--channel-uses", "1", "--antennas-tx", "2"]
    argv += ["--antennas-rx", "2", "--out", str(out), "-q"]
    assert main(argv) == 0
    results = json.loads(out.read_text())
    assert results["config"]["wire_precision"] == "bfloat16"
    # bytes per round and per session in the results file: every phase and round counted
    seed = results["seeds"][0]
    traffic, rounds, phases = seed["traffic"], seed["rounds"], seed["phases"].values()
    assert traffic["rounds"] == len(rounds) == 2
    for way in ("down", "up"):
        per_round = [r[f"bytes_{way}"] for r in rounds]
        total = sum(per_round) + sum(p[f"bytes_{way}"] for p in phases)
        assert traffic[f"bytes_{way}"] == total
        assert traffic[f"bytes_{way}_per_round"] == pytest.approx(np.mean(per_round))
    capsys.readouterr()
    bad = tmp_path / "bad.toml"
    bad.write_text('wire_precision = "float8"\n')
    assert main(["simulate", "--config", str(bad), "--latents", str(root), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--wire-precision" in err[0]


def test_every_message_of_a_16_bit_session_decodes(scenario):
    """No matrix of a float16 session is left undecodable by the generic reader (what
    ``semalign audit`` reads): every float matrix is 16-bit or one of the stated exceptions."""
    from semalign.engine.ap_record import ApRecorder, message_matrices
    from semalign.engine.scenario import build_session

    config = AlignmentConfig(**{**SMALL, "iterations": 2, "protocol": "compact"})
    config = config.model_copy(update={"wire_precision": "float16"})
    ap, users = build_session(scenario, config)
    tap = ApRecorder()
    links = [LoopbackLink(u, tap) for u in users]
    SessionDriver(ap, links).run(scenario.ap_test, np.arange(20))
    kinds = set()
    for data in tap.sent["user1"]:
        for path, array in message_matrices(parse_ap_message(data)):
            kinds.add((path, array.dtype.name))
    assert ("accept.pilot_gram", "complex128") in kinds  # B: double by design
    assert ("accept.pilots", "complex64") in kinds  # X: decoded from float16
    assert ("compact_broadcast.pre_equalizer", "complex64") in kinds
    with pytest.raises(LinkError):
        links[0].receive(None)  # nothing left unanswered
