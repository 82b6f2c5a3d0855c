"""The gRPC alignment service with in-process clients: AP + 3 users over real gRPC on 127.0.0.1.

No Flower processes here: the users are threads running the same stream loop a user process runs.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from semalign.client.stream import run_user, user_factory
from semalign.client.user import user_data_from_cache
from semalign.common.config import AlignmentConfig
from semalign.common.contract import TransportError
from semalign.common.credentials import user_token
from semalign.common.latents import load_encoder_splits
from semalign.common.wire import from_matrix, parse_user_message
from semalign.proto import semalign_pb2 as pb
from semalign.server.access_point import build_access_point
from semalign.server.network import SessionsPlan, serve_sessions
from semalign.server.serve_settings import ServeSettings
from semalign.server.service import AlignmentService, start_server
from semalign.server.session import WaitPolicy
from synthetic import make_latents

from semalign.engine.scenario import load_scenario
from semalign.engine.simulate import simulate

SECRET = "test-secret-0123456789"
TOKEN = user_token(SECRET, "user1")
CONFIG = AlignmentConfig(antennas_tx=2, antennas_rx=2, channel_uses=2, iterations=4)
SEEDS = [27, 42]


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    return make_latents(tmp_path_factory.mktemp("lat"), user_dims=(12, 20, 14), n_train=300)


class Tap(AlignmentService):
    """Records every message the AP receives (user id, raw bytes) for inspection."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.received: list[tuple[str, bytes]] = []

    def session(self, request_iterator, context):
        def tapped():
            for data in request_iterator:
                msg = parse_user_message(data)
                uid = msg.handshake.user_id if msg.WhichOneof("body") == "handshake" else "?"
                self.received.append((uid, data))
                yield data

        yield from super().session(tapped(), context)


def start_users(address, root, encoders, *, token=None, make=None, errors=None, connect=10.0):
    """One thread per user running run_user with its own token (or ``token`` for every one)."""
    reports, threads = {}, []
    errors = errors if errors is not None else {}
    for ordinal, enc in enumerate(encoders):
        uid = f"user{ordinal + 1}"
        factory = (
            make(uid, enc, ordinal)
            if make
            else user_factory(
                uid, enc, ordinal, lambda pf, enc=enc: user_data_from_cache(root, enc, pf)
            )
        )

        def target(uid=uid, factory=factory):
            try:
                reports[uid] = run_user(
                    address,
                    token or user_token(SECRET, uid),
                    factory,
                    connect_timeout=connect,
                    user_id=uid,
                )
            except Exception as exc:  # noqa: BLE001 - reported to the test
                errors[uid] = exc

        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        threads.append(thread)
    return reports, threads, errors


def faulty_users(root, fault):
    """A ``make`` for :func:`start_users`: users of ``root``'s latents that pass every AP message
    to ``fault(user_id, message)`` before handling it (``fault`` raises: the user crashes;
    blocks: it stalls)."""

    def make(uid, enc, ordinal):
        base = user_factory(uid, enc, ordinal, lambda pf: user_data_from_cache(root, enc, pf))

        def build(offer):
            user = base(offer)
            handle = user.handle

            def faulty(data):
                fault(uid, pb.ApMessage.FromString(data))
                return handle(data)

            user.handle = faulty
            return user

        return build

    return make


def run_ap(
    service, root, ap_enc, n_users, config=CONFIG, seeds=SEEDS, join_timeout=20, reply_timeout=20
):
    ap_splits = load_encoder_splits(root, ap_enc)
    plan = SessionsPlan(
        lambda cfg: build_access_point(ap_splits["train"].latents, cfg, n_users),
        config,
        seeds,
        ap_splits["test"].latents,
    )
    settings = ServeSettings(
        [f"user{i + 1}" for i in range(n_users)],
        join_timeout=join_timeout,
        policy=WaitPolicy(reply_timeout=reply_timeout),
    )
    return serve_sessions(service, plan, settings).to_dict()  # the JSON


def test_grpc_session_matches_simulator_and_measures_bytes(latents):
    root, ap_enc, encoders = latents
    service = Tap(SECRET)
    server = start_server(service, "127.0.0.1:0")
    try:
        reports, threads, errors = start_users(server.address, root, encoders)
        results = run_ap(service, root, ap_enc, len(encoders))
        for t in threads:
            t.join(20)
    finally:
        server.stop()
    assert not errors
    expected = simulate(load_scenario(root, ap_enc, encoders), CONFIG, SEEDS).to_dict()
    # Same math: every final metric equal to the simulator's (relative difference < 1e-6).
    for key in ("mean_accuracy", "mean_native_accuracy", "mean_mse"):
        assert results[key] == pytest.approx(expected[key], rel=1e-6)
    for got, want in zip(results["seeds"], expected["seeds"], strict=True):
        for gu, wu in zip(got["users"], want["users"], strict=True):
            assert gu["name"] == wu["name"] and gu["encoder"] == wu["encoder"]
            for key in ("accuracy", "mse", "mse_whitened"):
                assert gu[key] == pytest.approx(wu[key], rel=1e-6)
        for gr, wr in zip(got["rounds"], want["rounds"], strict=True):
            assert gr["mse"] == pytest.approx(wr["mse"], rel=1e-6)
            assert gr["primal_residual"] == pytest.approx(wr["primal_residual"], rel=1e-6)
    # Each user saw one session per seed and its own evaluation report.
    for user_reports in reports.values():
        assert [r.seed for r in user_reports] == SEEDS
        assert all(r.status == "ok" and r.report["samples"] == 120 for r in user_reports)
    # Wire figures at the gRPC boundary: per user per round, payload = formula + framing.
    n, knr, knt = 300, 2 * 2, 2 * 2
    for block in results["seeds"]:
        wire = block["wire"]
        assert len(wire["rounds"]) == CONFIG.iterations
        assert wire["latency_p50_s"] > 0 and wire["latency_p95_s"] >= wire["latency_p50_s"]
        for row, rec in zip(wire["rounds"], block["rounds"], strict=True):
            assert set(row["bytes_down"]) == {"user1", "user2", "user3"}
            for uid in row["bytes_down"]:
                down, up = row["bytes_down"][uid], row["bytes_up"][uid]
                assert 0 < down - 8 * knr * n < 100
                assert 0 < up - (8 * knt * n + 4 * knt * knt) < 150  # A_l packed: knt^2 reals
                # the driver counts the same serialized messages
                assert down == rec["bytes_down_per_user"][uid]
                assert up == rec["bytes_up_per_user"][uid]
    net = results["network"]
    assert net["rounds"] == CONFIG.iterations * len(SEEDS)
    assert net["latency_p95_s"] >= net["latency_p50_s"] > 0
    assert not net["dropped"]


def test_ap_receives_only_whitened_statistics(latents):
    """Privacy: every message the AP receives is a handshake, A_l/P_l upload, ack or report."""
    root, ap_enc, encoders = latents
    service = Tap(SECRET)
    server = start_server(service, "127.0.0.1:0")
    try:
        _, threads, errors = start_users(server.address, root, encoders)
        run_ap(service, root, ap_enc, len(encoders), seeds=[5])
        for t in threads:
            t.join(20)
    finally:
        server.stop()
    assert not errors
    n, knt = 300, CONFIG.symbols
    kinds = {}
    raw = {}
    for enc in encoders:
        lat = load_encoder_splits(root, enc, ("train", "test"))
        raw[enc] = [lat["train"].latents[:3], lat["test"].latents[:3]]
    for _, data in service.received:
        msg = parse_user_message(data)
        kind = msg.WhichOneof("body")
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind == "handshake":
            h = msg.handshake
            assert h.token == user_token(SECRET, h.user_id)
            assert from_matrix(h.csi).shape == (2, 2)
        elif kind == "upload":
            assert from_matrix(msg.upload.a).shape == (knt, knt)
            assert from_matrix(msg.upload.p).shape == (knt, n)
            assert msg.upload.a.dtype == pb.COMPLEX64 == msg.upload.p.dtype
        else:
            assert kind in ("ack", "report"), kind
            assert len(data) < 200  # scalars only
        # no raw latent row (float32 as stored, or as float64/complex64 views) on the wire
        for rows in raw.values():
            for row in np.concatenate(rows):
                for dtype in ("<f4", "<f8"):
                    assert row.astype(dtype)[:4].tobytes() not in data
    assert kinds == {
        "handshake": 3,
        "upload": 3 * CONFIG.iterations,
        "ack": 3,
        "report": 3,
    }


def test_bad_token_is_refused_with_one_line(latents):
    root, ap_enc, encoders = latents
    service = AlignmentService(SECRET)
    server = start_server(service, "127.0.0.1:0")
    errors: dict = {}
    try:
        service.open_lobby(
            __import__("semalign.common.contract", fromlist=["x"]).SessionOffer("s", 0, 1, CONFIG),
            ["user1"],
        )
        _, threads, errors = start_users(server.address, root, encoders[:1], token="wrong")
        threads[0].join(10)
    finally:
        server.stop()
    exc = errors["user1"]
    assert isinstance(exc, TransportError)
    assert "token" in str(exc) and "\n" not in str(exc)


def test_refused_connection_and_bad_address_fail_fast_with_one_line():
    import socket

    with socket.socket() as sock:  # a free port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.perf_counter()
    with pytest.raises(TransportError) as err:
        run_user(
            f"127.0.0.1:{port}", TOKEN, lambda offer: None, connect_timeout=1.0, user_id="user1"
        )
    assert time.perf_counter() - start < 5
    text = str(err.value)
    assert f"127.0.0.1:{port}" in text and "\n" not in text
    assert "refused" in text.lower() or "unavailable" in text.lower() or "connect" in text.lower()
    for bad in ("nohostport", "127.0.0.1:99999", ""):
        with pytest.raises(TransportError, match="bad AP address"):
            run_user(bad, TOKEN, lambda offer: None, connect_timeout=1.0, user_id="user1")


def test_stalled_and_dead_users_are_dropped_and_session_finishes(latents):
    """user2 stalls at round 1, user3 dies there: both dropped, results still written."""
    root, ap_enc, encoders = latents
    service = AlignmentService(SECRET)
    server = start_server(service, "127.0.0.1:0")
    release = threading.Event()

    def fault(uid, msg):
        if msg.WhichOneof("body") == "broadcast" and msg.broadcast.round == 1:
            if uid == "user2":
                release.wait(30)  # stall past the AP's reply timeout
            if uid == "user3":
                raise RuntimeError("user3 crashed")

    try:
        make = faulty_users(root, fault)
        _, threads, errors = start_users(server.address, root, encoders, make=make, connect=2)
        start = time.perf_counter()
        results = run_ap(service, root, ap_enc, 3, seeds=[3, 4], reply_timeout=1.5, join_timeout=30)
        elapsed = time.perf_counter() - start
    finally:
        release.set()
        server.stop()  # user2, dropped twice over, may still be waiting for a third session
    for t in threads:
        t.join(20)
    block = results["seeds"][0]
    assert set(block["dropped"]) == {"user2", "user3"}
    assert (
        "round 1" in block["dropped"]["user2"]
        and "no reply within 1.5 s" in block["dropped"]["user2"]
    )
    assert "round 1" in block["dropped"]["user3"]
    assert block["wire"]["dropped_at_s"]["user2"] >= 1.5
    users = {u["name"]: u for u in block["users"]}
    assert users["user1"]["accuracy"] is not None and users["user2"]["accuracy"] is None
    assert len(block["rounds"]) == CONFIG.iterations and block["rounds"][-1]["users"] == 1
    assert results["network"]["dropped"]["3"]["user2"]["at_s"] >= 1.5
    # the second session (seed 4) waits only for user1, who finished the first one
    second = results["seeds"][1]
    assert second["users"][0]["name"] == "user1" and second["users"][0]["accuracy"] is not None
    assert "user3" not in [u["name"] for u in second["users"]]
    assert second["wire"]["join_s"] < 10
    assert elapsed < 20
    assert isinstance(errors.get("user3"), RuntimeError)


def _write_tls(tmp_path):
    """A throwaway CA and a server certificate for localhost / 127.0.0.1 (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    day = datetime.timedelta(days=1)

    def build(subject, issuer, key, sign_key, serial, ca):
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - day)
            .not_valid_after(now + day)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(sign_key, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "semalign test CA")])
    host = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    ca = build(ca_name, ca_name, ca_key, ca_key, 1, True)
    cert = build(host, ca_name, key, ca_key, 2, False)
    paths = {}
    for name, data in (
        ("ca.pem", ca.public_bytes(serialization.Encoding.PEM)),
        ("cert.pem", cert.public_bytes(serialization.Encoding.PEM)),
        (
            "key.pem",
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        ),
    ):
        (tmp_path / name).write_bytes(data)
        paths[name] = str(tmp_path / name)
    return paths


def test_tls_session_and_plaintext_client_refused(latents, tmp_path):
    from semalign.common.contract import TlsFiles

    root, ap_enc, encoders = latents
    files = _write_tls(tmp_path)
    service = AlignmentService(SECRET)
    server = start_server(
        service, "127.0.0.1:0", tls=TlsFiles(cert=files["cert.pem"], key=files["key.pem"])
    )
    config = CONFIG.model_copy(update={"iterations": 2})
    try:
        factory = user_factory(
            "user1", encoders[0], 0, lambda pf: user_data_from_cache(root, encoders[0], pf)
        )
        with pytest.raises(TransportError, match="cannot reach the AP"):
            run_user(server.address, TOKEN, factory, connect_timeout=1.0, user_id="user1")
        result = {}
        thread = threading.Thread(
            target=lambda: result.update(
                r=run_user(
                    f"localhost:{server.port}",
                    TOKEN,
                    factory,
                    tls=TlsFiles(ca=files["ca.pem"]),
                    connect_timeout=10,
                    user_id="user1",
                )
            ),
            daemon=True,
        )
        thread.start()
        results = run_ap(service, root, ap_enc, 1, config=config, seeds=[1])
        thread.join(20)
    finally:
        server.stop()
    assert results["users"][0]["accuracy"] > 0.5
    assert [r.status for r in result["r"]] == ["ok"]
