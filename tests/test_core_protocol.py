"""AP/user state machines: message round trips, protocol invariants, alignment quality."""

from __future__ import annotations

import numpy as np
import pytest
from semalign.client.user import User, UserData
from semalign.common.classifier import train_classifier
from semalign.common.config import AlignmentConfig
from semalign.common.errors import ProtocolError, SemalignError
from semalign.common.packing import complex_to_real, real_to_complex
from semalign.common.representation import LINEAR, Representation
from semalign.common.wire import from_matrix, parse_user_message, to_matrix
from semalign.proto import semalign_pb2 as pb
from semalign.server.access_point import AccessPoint
from semalign.server.session import SessionDriver

from semalign.engine.loopback import LoopbackLink


@pytest.mark.parametrize(
    "dtype", ["complex64", "complex128", "float32", "float64", "int64", "int32", "uint16"]
)
def test_matrix_round_trip(dtype):
    arr = (np.arange(24).reshape(2, 3, 4) * (1 + 1j if "complex" in dtype else 1)).astype(dtype)
    back = from_matrix(pb.Matrix.FromString(to_matrix(arr).SerializeToString()))
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)


def test_matrix_with_wrong_byte_count_is_rejected():
    msg = to_matrix(np.zeros((2, 2), np.complex64))
    msg.shape[:] = [2, 3]
    with pytest.raises(ProtocolError, match="needs"):
        from_matrix(msg)
    with pytest.raises(ProtocolError):
        to_matrix(np.array(["a"]))


def _users_data(rng, ap_latents, dims, n_pilots, n_test):
    labels = rng.integers(0, 3, len(ap_latents))
    out = []
    for m in dims:
        w = rng.standard_normal((ap_latents.shape[1], m))
        lat = ap_latents @ w
        clf = train_classifier(lat[:n_pilots], labels[:n_pilots])
        out.append(
            UserData(
                pilot_ids=np.arange(n_pilots),
                pilot_latents=lat[:n_pilots],
                test_latents=lat[n_pilots : n_pilots + n_test],
                test_labels=labels[n_pilots : n_pilots + n_test],
                classifier=clf,
            )
        )
    return out


def _session(strategy="fed", dims=(10, 12), d=16, n=200, n_test=50, **cfg):
    rng = np.random.default_rng(0)
    ap_lat = rng.standard_normal((n + n_test, d))
    config = AlignmentConfig(strategy=strategy, **cfg)
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
            share_csi=config.csi,
        )
        for i, data in enumerate(_users_data(rng, ap_lat, dims, n, n_test))
    ]
    return ap, users, ap_lat[n:]


def test_handshake_messages_and_errors():
    ap, users, _ = _session(channel_uses=1, antennas_tx=2, antennas_rx=2)
    request = users[0].handshake_request()
    user_id, accept = ap.handshake(request)
    acc = pb.ApMessage.FromString(accept).accept
    assert user_id == "user1" and acc.channel_uses == 1 and acc.antennas_tx == 2
    assert list(acc.pilot_ids) == list(range(200)) and acc.channel_aware
    with pytest.raises(ProtocolError, match="already registered"):
        ap.handshake(request)
    bad = parse_user_message(users[1].handshake_request())
    bad.handshake.protocol_version = 99
    with pytest.raises(ProtocolError, match="protocol 99"):
        ap.handshake(bad.SerializeToString())
    no_csi = parse_user_message(users[1].handshake_request())
    no_csi.handshake.ClearField("csi")
    with pytest.raises(ProtocolError, match="CSI"):
        ap.handshake(no_csi.SerializeToString())
    few = parse_user_message(users[1].handshake_request())
    del few.handshake.pilot_ids[5:]
    with pytest.raises(ProtocolError, match="lacks 195"):
        ap.handshake(few.SerializeToString())


def test_user_rejects_messages_before_handshake():
    ap, users, _ = _session()
    ap.handshake(users[0].handshake_request())
    reply = users[1].handle(ap.round_messages()["user1"])  # user2 never got an accept
    assert parse_user_message(reply).WhichOneof("body") == "error"


def test_upload_contains_only_whitened_statistics_of_documented_shapes():
    """Privacy invariant: the AP receives A_l (KN_T x KN_T) and P_l (KN_T x n), nothing else."""
    ap, users, _ = _session(channel_uses=2, antennas_tx=2, antennas_rx=3)
    for u in users:
        u.handle(ap.handshake(u.handshake_request())[1])
    for user_id, data in ap.round_messages().items():
        user = next(u for u in users if u.user_id == user_id)
        msg = parse_user_message(user.handle(data))
        assert msg.WhichOneof("body") == "upload"
        fields = {f.name for f, _ in msg.upload.ListFields()}
        assert fields <= {"session_id", "round", "a", "p", "squared_error", "noise_term"}
        a, p = from_matrix(msg.upload.a), from_matrix(msg.upload.p)
        assert a.shape == (4, 4) and p.shape == (4, 200)
        np.testing.assert_allclose(a, a.conj().T, atol=1e-5)
        # P_l = (G H)^H Y_l with Y_l whitened: recompute from the user's private state
        expected = (user.strategy.g @ user.channel.matrix).conj().T @ user.y
        np.testing.assert_allclose(p, expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(
            user.y @ user.y.conj().T / 200, np.eye(user.y.shape[0]), atol=1e-8
        )
        ap.receive(user_id, msg.SerializeToString())
    ap.step()


def test_upload_with_wrong_shape_or_round_is_rejected():
    ap, users, _ = _session()
    for u in users:
        u.handle(ap.handshake(u.handshake_request())[1])
    data = ap.round_messages()
    msg = parse_user_message(users[0].handle(data["user1"]))
    wrong_round = pb.UserMessage()
    wrong_round.CopyFrom(msg)
    wrong_round.upload.round = 5
    with pytest.raises(ProtocolError, match="round 5"):
        ap.receive("user1", wrong_round.SerializeToString())
    msg.upload.a.CopyFrom(to_matrix(np.zeros((3, 3), np.complex64)))
    with pytest.raises(ProtocolError, match="expected"):
        ap.receive("user1", msg.SerializeToString())
    with pytest.raises(ProtocolError, match="no uploads"):
        ap.step()


@pytest.mark.parametrize("strategy", ["fed", "multi-link", "first-k", "top-k"])
def test_session_runs_and_keeps_power_constraint(strategy):
    ap, users, test = _session(strategy, iterations=5, channel_uses=1, antennas_tx=2)
    result = SessionDriver(ap, [LoopbackLink(u) for u in users]).run(test, np.arange(len(test)))
    assert set(result.reports) == {"user1", "user2"}
    for rep in result.reports.values():
        assert 0 <= rep.accuracy <= 1 and rep.samples == len(test)
    if strategy == "fed":
        z = ap.strategy.shared.z
        assert np.real(np.vdot(z, z)) <= ap.config.power * (1 + 1e-9)
        assert len(result.rounds) == 5
        up = result.rounds[0].bytes_up_per_user["user1"]
        assert up >= 8 * (2 * 2 + 2 * 200)  # complex64 A_l and P_l payload
    elif strategy == "multi-link":
        for u in ap.users.values():
            z = ap.strategy.variables(u).z
            assert np.real(np.vdot(z, z)) <= ap.config.power * (1 + 1e-9)
    else:
        precoder = ap.strategy.precoder
        assert np.real(np.vdot(precoder, precoder)) <= ap.config.power * (1 + 1e-9)
        assert result.rounds == []


def test_noiseless_invertible_single_user_is_aligned_to_near_zero_mse():
    """User latents = invertible linear map of the AP's, K N_T >= d/2, no noise: MSE ~ 0.

    The map is linear over the packed complex symbols (the equalizers are complex-linear; a
    general real-linear map of the real features is only widely linear in C^(d/2)).
    """
    rng = np.random.default_rng(1)
    d, n, n_test = 8, 300, 60
    ap_lat = rng.standard_normal((n + n_test, d))
    mix = rng.standard_normal((4, 4)) + 1j * rng.standard_normal((4, 4)) + 3 * np.eye(4)
    user_lat = complex_to_real(mix @ real_to_complex(ap_lat.T), d).T
    labels = (ap_lat[:, 0] > 0).astype(np.int64)
    data = UserData(
        np.arange(n),
        user_lat[:n],
        user_lat[n:],
        labels[n:],
        train_classifier(user_lat[:n], labels[:n]),
    )
    config = AlignmentConfig(
        strategy="fed", antennas_tx=2, antennas_rx=2, channel_uses=2, snr_db=100.0, iterations=30
    )
    ap = AccessPoint(config=config, pilot_latents=ap_lat[:n], pilot_ids=np.arange(n))
    user = User("user1", "enc", data, 2, 2, 100.0, (0, 0))
    result = SessionDriver(ap, [LoopbackLink(user)]).run(ap_lat[n:], np.arange(n_test))
    report = result.reports["user1"]
    assert report.mse_whitened < 1e-4
    assert report.mse < 1e-4 * np.mean(user_lat**2)
    assert report.accuracy == pytest.approx(report.native_accuracy)


def test_fed_equals_multi_link_for_a_single_user():
    out = {}
    for strategy in ("fed", "multi-link"):
        ap, users, test = _session(strategy, dims=(10,), iterations=4)
        out[strategy] = SessionDriver(ap, [LoopbackLink(users[0])]).run(test, np.arange(50))
    a, b = out["fed"], out["multi-link"]
    assert a.reports["user1"].mse == pytest.approx(b.reports["user1"].mse, rel=1e-9)
    for ra, rb in zip(a.rounds, b.rounds, strict=True):
        assert ra.primal_residual == pytest.approx(rb.primal_residual, rel=1e-9, abs=1e-12)


def test_csi_free_ap_sends_f_x_and_user_applies_its_channel():
    ap, users, test = _session(
        csi=False, channel_uses=1, antennas_tx=2, antennas_rx=3, iterations=3
    )
    for u in users:
        u.handle(ap.handshake(u.handshake_request())[1])
    assert all(u.hbar is None for u in ap.users.values())
    sym = from_matrix(pb.ApMessage.FromString(ap.round_messages()["user1"]).broadcast.symbols)
    assert sym.shape == (2, 200)  # K N_T rows: F X, not H F X


def test_top_k_index_cost_reduces_data_channel_uses():
    ap, _, _ = _session(
        "top-k", channel_uses=4, antennas_tx=1, d=16, topk_index_cost="channel-uses", snr_db=10
    )
    assert ap.strategy.index_cost.bits_per_sample > 0
    assert ap.data_channel_uses + ap.strategy.index_cost.channel_uses <= 4
    assert ap.data_channel_uses < 4
    with pytest.raises(ValueError, match="side information"):
        _session("top-k", channel_uses=1, antennas_tx=1, d=16, topk_index_cost="channel-uses")


def test_baseline_fit_variants_differ_and_full_needs_reference():
    results = {}
    for fit in ("received", "full"):
        ap, users, test = _session(
            "first-k", channel_uses=1, antennas_tx=2, baseline_fit=fit, snr_db=5.0
        )
        res = SessionDriver(ap, [LoopbackLink(u) for u in users]).run(test, np.arange(50))
        results[fit] = res.reports["user1"].mse
    assert results["received"] != results["full"]
    ap, users, _ = _session("first-k", channel_uses=1, antennas_tx=2, baseline_fit="full")
    users[0].handle(ap.handshake(users[0].handshake_request())[1])
    msg = pb.ApMessage.FromString(ap.final_messages()["user1"])
    msg.pilots.ClearField("reference")
    reply = parse_user_message(users[0].handle(msg.SerializeToString()))
    assert reply.WhichOneof("body") == "error" and "reference" in reply.error.message


def test_compression_above_one_is_rejected():
    with pytest.raises(ValueError, match="compression factor"):
        _session(channel_uses=5, antennas_tx=2, d=16)  # 10 symbols > 8


def test_every_protocol_error_is_one_type_of_the_family():
    assert issubclass(ProtocolError, SemalignError)
    with pytest.raises(ProtocolError):
        parse_user_message(b"\xff\xff\xff")


def test_user_data_whitening_is_reused_across_sessions_without_changing_results():
    ap, users, test = _session(iterations=2)
    first = SessionDriver(ap, [LoopbackLink(u) for u in users]).run(test, np.arange(50))
    cached = users[0].data._whitened.get(LINEAR)
    assert cached is not None and cached[0] is users[0].whitener
    ap2, users2, test2 = _session(iterations=2)  # fresh data objects: whitened anew
    users2 = [
        User(u.user_id, u.encoder, old.data, u.antennas_rx, u.antennas_tx, u.snr_db, u.channel_seed)
        for u, old in zip(users2, users, strict=True)
    ]
    second = SessionDriver(ap2, [LoopbackLink(u) for u in users2]).run(test2, np.arange(50))
    assert users2[0].whitener is cached[0]
    assert second.reports == first.reports
    # a subset of pilots is whitened on its own, not from the cache
    whitener, y, _ = users[0].data.whitened_pilots([0, 2, 4, 6, 8, 10])
    assert y.shape[1] == 6 and whitener is not cached[0]
    # the widely-linear view of the same pilots is kept apart: (m, n) reals, not (m/2, n)
    rows = list(range(len(users[0].data.pilot_ids)))
    wide = users[0].data.whitened_pilots(rows, Representation(widely_linear=True))
    assert wide[1].shape[0] == users[0].latent_dim and wide[0] is not cached[0]
    assert users[0].data.whitened_pilots(rows)[0] is cached[0]


def test_user_whose_accept_cannot_be_delivered_is_dropped_not_kept():
    from semalign.common.errors import LinkError

    ap, users, test = _session(iterations=2)

    class BrokenLink(LoopbackLink):
        def send(self, data):
            raise LinkError("connection reset")

    links = [BrokenLink(users[0]), LoopbackLink(users[1])]
    result = SessionDriver(ap, links).run(test, np.arange(50))
    assert set(result.reports) == {"user2"}
    assert "handshake" in result.dropped["user1"]
