"""The fast paths: compact round protocol, single precision, and the products behind them.

Equality contracts (relative Frobenius distance of every iterate, every round; the scaled dual
U, a running sum of F - Z that starts at zero, relative to max(||U||, ||F||)):
* compact vs paper protocol: F, Z, U at the AP and every user's G_l within 1e-6;
* single vs double precision (paper protocol): the same iterates within 1e-5;
* the batched products (stacked P_l X^H, stacked F-steps, Hermitian S S^H, H = I_K (x) Hbar
  applied per use) equal the plain products to 1e-12.
The paper protocol in double precision (the default) is pinned to the pre-speed results by
test_core_regression.
"""

from __future__ import annotations

import numpy as np
import pytest
from semalign.client.user import User
from semalign.common import admm, wire
from semalign.common.channels import block_channel, rayleigh_matrix
from semalign.common.config import AlignmentConfig
from semalign.common.errors import ProtocolError
from semalign.common.wire import parse_ap_message, parse_user_message, to_matrix, view_matrix
from semalign.proto import semalign_pb2 as pb
from semalign.server.access_point import AccessPoint
from semalign.server.session import SessionDriver
from test_core_protocol import _users_data

from semalign.engine.loopback import LoopbackLink


def crandn(rng, *shape):
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) / np.sqrt(2)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _session(config: AlignmentConfig, *, dims=(10, 14, 12), d=16, n=400, offers=None):
    """AP and users on shared data; ``offers``: per user, the protocols it offers."""
    rng = np.random.default_rng(0)
    ap_lat = rng.standard_normal((n + 50, d))
    ap = AccessPoint(config=config, pilot_latents=ap_lat[:n], pilot_ids=np.arange(n))
    offers = offers or [("compact",) if config.protocol == "compact" else ()] * len(dims)
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
            round_protocols=offers[i],
        )
        for i, data in enumerate(_users_data(rng, ap_lat, dims, n, 50))
    ]
    return ap, users, ap_lat[n:]


def _iterates(config: AlignmentConfig, **kwargs):
    """Run a session round by round; per round the AP's (F, Z, U) per user and every G_l."""
    ap, users, test = _session(config, **kwargs)
    driver = SessionDriver(ap, [LoopbackLink(u) for u in users])
    driver.handshake()
    out, records = [], []
    for _ in range(config.iterations):
        records.append(driver.admm_round())
        snapshot = {}
        for state in ap.users.values():
            v = ap.strategy.variables(state)
            snapshot[state.user_id] = (v.f.copy(), v.z.copy(), v.u.copy())
        gs = {u.user_id: u.strategy.g.copy() for u in users}
        out.append((snapshot, gs))
    return out, records, (ap, users, driver, test)


def _assert_close(run, ref, tol):
    (iters, records, _), (ref_iters, ref_records, _) = run, ref
    assert len(iters) == len(ref_iters)
    worst = 0.0
    for (snap, gs), (ref_snap, ref_gs) in zip(iters, ref_iters, strict=True):
        for uid, (f, z, u) in ref_snap.items():
            got_f, got_z, got_u = snap[uid]
            # U (the running sum of F - Z) is measured on the scale of F: it starts at 0
            scale_u = max(np.linalg.norm(u), np.linalg.norm(f))
            worst = max(worst, rel(got_f, f), rel(got_z, z))
            worst = max(worst, float(np.linalg.norm(got_u - u) / scale_u))
        for uid, g in ref_gs.items():
            worst = max(worst, rel(gs[uid], g))
    assert worst < tol, f"largest relative iterate difference {worst:.2e}"
    for got, want, (snap, _) in zip(records, ref_records, ref_iters, strict=True):
        assert got.mse == pytest.approx(want.mse, rel=tol)
        assert got.objective == pytest.approx(want.objective, rel=tol)
        # residuals are norms of differences (F - Z, Z - Z_prev): on the scale of F
        scale = max(np.linalg.norm(f) for f, _, _ in snap.values())
        for name in ("primal_residual", "dual_residual"):
            assert getattr(got, name) == pytest.approx(getattr(want, name), abs=tol * scale)
    return worst


#: double precision, whatever the default: the contracts compare against the double-precision
#: paper protocol (single precision is one of the fast paths compared with it)
BASE = {
    "antennas_tx": 2,
    "antennas_rx": 2,
    "channel_uses": 2,
    "iterations": 6,
    "precision": "double",
}


@pytest.mark.parametrize(
    "case",
    [
        {"strategy": "fed"},
        {"strategy": "multi-link"},
        {"strategy": "fed", "csi": False},
        {"strategy": "fed", "snr_db": 5.0, "antennas_rx": 3, "channel_uses": 3},
    ],
)
def test_compact_iterates_equal_paper(case):
    paper = AlignmentConfig(**{**BASE, **case})
    compact = paper.model_copy(update={"protocol": "compact"})
    _assert_close(_iterates(compact), _iterates(paper), 1e-6)


def test_compact_session_results_and_bytes():
    """Whole sessions: same accuracy; per-round bytes O(K N d), independent of n; the pilots
    travel once, in the handshake, and are reported."""
    results = {}
    for protocol in ("paper", "compact"):
        for n in (300, 600):
            config = AlignmentConfig(**BASE, protocol=protocol)
            ap, users, test = _session(config, n=n)
            driver = SessionDriver(ap, [LoopbackLink(u) for u in users])
            result = driver.run(test, np.arange(len(test)))
            results[protocol, n] = (result, ap.result_info())
    for n in (300, 600):
        paper, compact = results["paper", n][0], results["compact", n][0]
        for uid, report in paper.reports.items():
            assert compact.reports[uid].accuracy == pytest.approx(report.accuracy, abs=1e-9)
            assert compact.reports[uid].mse == pytest.approx(report.mse, rel=1e-6)
        info = results["compact", n][1]["round_protocol"]
        assert info["compact_users"] == 3 and info["paper_users"] == 0
        # X (8, n) complex64 + B (8, 8) complex128 Hermitian-packed (64 reals) per user,
        # inside the handshake bytes
        assert info["handshake_pilot_bytes"] >= 3 * (8 * n * 8 + 64 * 8)
        assert compact.phases["handshake"].bytes_down > info["handshake_pilot_bytes"]
        assert results["paper", n][1] == {}
    compact_round = [results["compact", n][0].rounds[0] for n in (300, 600)]
    paper_round = [results["paper", n][0].rounds[0] for n in (300, 600)]
    assert compact_round[0].bytes_down == compact_round[1].bytes_down
    assert compact_round[0].bytes_up == compact_round[1].bytes_up
    assert paper_round[1].bytes_down > 1.9 * paper_round[0].bytes_down
    assert paper_round[0].bytes_up > 10 * compact_round[0].bytes_up


def test_users_without_compact_get_paper_rounds_in_the_same_session():
    paper = AlignmentConfig(**BASE)
    compact = paper.model_copy(update={"protocol": "compact"})
    mixed = _iterates(compact, offers=[("compact",), (), ("compact",)])
    ap = mixed[2][0]
    assert [s.round_protocol for s in ap.users.values()] == ["compact", "paper", "compact"]
    assert ap.result_info()["round_protocol"]["paper_users"] == 1
    _assert_close(mixed, _iterates(paper), 1e-6)


def test_round_protocol_mismatches_are_protocol_errors():
    config = AlignmentConfig(**BASE, protocol="compact")
    ap, users, _ = _session(config, offers=[("compact",), (), ()])
    for u in users:
        u.handle(ap.handshake(u.handshake_request())[1])
    messages = ap.round_messages()
    assert parse_ap_message(messages["user1"]).WhichOneof("body") == "compact_broadcast"
    assert parse_ap_message(messages["user2"]).WhichOneof("body") == "broadcast"
    # a paper user answering a compact broadcast, and a compact upload from a paper user
    reply = users[1].handle(messages["user1"])
    assert parse_user_message(reply).WhichOneof("body") == "error"
    upload = users[0].handle(messages["user1"])
    with pytest.raises(ProtocolError, match="paper protocol"):
        ap.receive("user2", upload)
    ap.receive("user1", upload)
    # the accept the user keeps no longer holds the pilots
    assert not users[0].accept.HasField("pilots")
    assert users[0].accept.round_protocol == pb.COMPACT


def test_compact_users_sharing_data_compute_r_once():
    config = AlignmentConfig(**BASE, protocol="compact")
    ap, users, _ = _session(config, dims=(10,))
    twin = User(
        user_id="twin",
        encoder="enc0",
        data=users[0].data,
        antennas_rx=2,
        antennas_tx=2,
        snr_db=20.0,
        channel_seed=(1, 1),
        round_protocols=("compact",),
    )
    for u in (users[0], twin):
        u.handle(ap.handshake(u.handshake_request())[1])
    assert users[0].strategy.cross is twin.strategy.cross
    assert len(users[0].data.memo) == 1


@pytest.mark.parametrize("strategy", ["fed", "multi-link"])
def test_single_precision_iterates_within_1e5_of_double(strategy):
    double = AlignmentConfig(**BASE, strategy=strategy)
    single = double.model_copy(update={"precision": "single"})
    run = _iterates(single, n=2000)
    _assert_close(run, _iterates(double, n=2000), 1e-5)
    assert run[2][1][0].strategy.y_work.dtype == np.complex64


def test_default_accept_and_request_carry_no_new_fields():
    """Paper rounds in double precision: the handshake is byte for byte the old one."""
    ap, users, _ = _session(AlignmentConfig(**BASE))
    request = parse_user_message(users[0].handshake_request()).handshake
    assert len(request.round_protocols) == 0
    acc = parse_ap_message(ap.handshake(users[0].handshake_request())[1]).accept
    for name in ("round_protocol", "precision"):
        assert getattr(acc, name) == 0
    assert not acc.HasField("pilots") and not acc.HasField("pilot_gram")


def test_batched_products_equal_plain_products():
    rng = np.random.default_rng(3)
    x = crandn(rng, 7, 300)
    ps = [crandn(rng, 4, 300).astype(np.complex64) for _ in range(5)]
    old_stack = admm.STACK_BYTES
    try:
        for stack in (old_stack, 1):  # one stacked product, and one product per user
            admm.STACK_BYTES = stack
            for got, p in zip(admm.cross_terms(x, ps), ps, strict=True):
                want = p.astype(np.complex128) @ x.conj().T
                assert rel(got, want) < 1e-12
    finally:
        admm.STACK_BYTES = old_stack
    # all users' F-steps at once equal one Sylvester solve each
    gram = admm.factor_gram(x)
    uploads, duals = [], []
    for _ in range(4):
        g = crandn(rng, 4, 4)
        uploads.append((g.conj().T @ g, crandn(rng, 4, 7)))
        duals.append((crandn(rng, 4, 7), 0.1 * crandn(rng, 4, 7)))
    local = admm.f_steps(uploads, duals, gram, 0.7)
    for f, (a, cross), (z, u) in zip(local, uploads, duals, strict=True):
        want = admm.f_step_from_cross(a, cross, gram, z, u, 0.7)
        assert rel(f, want) < 1e-12
    assert admm.f_steps([], [], gram, 0.7) == []
    s = crandn(rng, 6, 500)
    for dtype, tol in ((np.complex128, 1e-13), (np.complex64, 1e-6)):
        gram = admm.hermitian_gram(s.astype(dtype))
        assert rel(gram, s @ s.conj().T) < tol and np.array_equal(gram, gram.conj().T)
    hbar = rayleigh_matrix(3, 2, rng)
    f = crandn(rng, 8, 11)
    assert rel(admm.apply_block_channel(hbar, f), block_channel(hbar, 4) @ f) < 1e-15
    with pytest.raises(ValueError):
        admm.apply_block_channel(hbar, crandn(rng, 7, 3))
    # compact products are the paper products of S = H F X
    y, h = crandn(rng, 5, 300), block_channel(hbar, 4)
    s = h @ f @ crandn(rng, 11, 300)
    xx = np.linalg.lstsq(h @ f, s, rcond=None)[0]  # the X behind S
    pp = admm.pilot_products(y, s)
    cp = admm.compact_products(y @ xx.conj().T, h @ f, xx @ xx.conj().T, pp.y_norm2, 300)
    assert rel(cp.ys, pp.ys) < 1e-10 and rel(cp.ss, pp.ss) < 1e-10


def test_view_matrix_reads_message_bytes_without_copying():
    arr = np.arange(12, dtype=np.complex64).reshape(3, 4)
    msg = pb.Matrix.FromString(to_matrix(arr).SerializeToString())
    view = view_matrix(msg)
    assert not view.flags.writeable and view.base is not None
    np.testing.assert_array_equal(view, arr)
    wide = view_matrix(msg, np.complex128)
    assert wide.dtype == np.complex128 and wide.flags.writeable
    np.testing.assert_array_equal(wide, arr)


def test_compact_over_grpc_matches_the_simulator(tmp_path):
    """The compact protocol over real gRPC streams (users learn it from the session offer)."""
    from semalign.server.service import start_server
    from synthetic import make_latents
    from test_network_grpc import SECRET, Tap, run_ap, start_users

    from semalign.engine.scenario import load_scenario
    from semalign.engine.simulate import simulate

    root, ap_enc, encoders = make_latents(tmp_path / "lat", user_dims=(12, 20), n_train=300)
    config = AlignmentConfig(**BASE, protocol="compact")
    service = Tap(SECRET)
    server = start_server(service, "127.0.0.1:0")
    try:
        _, threads, errors = start_users(server.address, root, encoders)
        results = run_ap(service, root, ap_enc, len(encoders), config=config, seeds=[42])
        for t in threads:
            t.join(20)
    finally:
        server.stop()
    assert not errors
    kinds = {parse_user_message(data).WhichOneof("body") for _, data in service.received}
    assert "compact_upload" in kinds and "upload" not in kinds
    scenario = load_scenario(root, ap_enc, encoders)
    for protocol in ("compact", "paper"):
        cfg = config.model_copy(update={"protocol": protocol})
        expected = simulate(scenario, cfg, [42]).to_dict()
        for key in ("mean_accuracy", "mean_mse"):
            assert results[key] == pytest.approx(expected[key], rel=1e-6)
        for got, want in zip(results["rounds"], expected["rounds"], strict=True):
            assert got["mse"] == pytest.approx(want["mse"], rel=1e-6)
    assert results["seeds"][0]["round_protocol"]["compact_users"] == 2


@pytest.mark.parametrize("dtype", ["complex64", "complex128", "uint16", None])
def test_fill_matrix_in_a_message_serializes_as_to_matrix(dtype):
    """Filling a field in place gives the bytes of the assigned Matrix, shape/dtype/data."""
    rng = np.random.default_rng(5)
    array = rng.standard_normal((3, 7)) + 1j * rng.standard_normal((3, 7))
    if dtype == "uint16":
        array = np.arange(21, dtype=np.int64).reshape(3, 7)
    assigned = pb.UserMessage(
        upload=pb.RoundUpload(session_id="s", round=2, p=wire.to_matrix(array, dtype))
    ).SerializeToString()
    filled = pb.UserMessage()
    filled.upload.session_id, filled.upload.round = "s", 2
    wire.fill_matrix(filled.upload.p, array, dtype)
    assert filled.SerializeToString() == assigned
    back = wire.from_matrix(filled.upload.p)
    assert back.shape == (3, 7) and np.array_equal(back, array.astype(back.dtype))
    with pytest.raises(ProtocolError):
        wire.fill_matrix(pb.Matrix(), np.array(["text"]))
