"""An upload over the AP's receive limit drops its sender at once.

gRPC ends such a stream inside its core (RESOURCE_EXHAUSTED to the sender); the AP's handler
used to see only the end of the stream, took the user for gone and waited its whole rejoin
grace (61 s by default) before going on. The service runs with a small receive limit (the
session's, about 78 KB: the 128 KB upload stands for the 200 MB one) and a 60 s rejoin grace:
the session must not wait it.
"""

from __future__ import annotations

import time

import pytest
from semalign.common.contract import TransportError
from semalign.server.grpc_link import watch_receive_failures
from semalign.server.session import WaitPolicy
from synthetic import make_latents
from test_network_attacks import CONFIG, SEED, Peer, _edit, _oversized, _run_ap, _server

from semalign.engine.scenario import load_scenario
from semalign.engine.simulate import simulate

GRACE = 60.0


@pytest.fixture(scope="module")
def latents(tmp_path_factory):
    return make_latents(tmp_path_factory.mktemp("lat"), user_dims=(12, 20, 14), n_train=300)


def test_this_grpcio_reports_failed_receives():
    """The hook the drop relies on is in place (a grpcio without it fails here, not silently
    back to the grace wait)."""
    assert watch_receive_failures()


def test_oversize_upload_drops_its_sender_at_once_and_the_session_goes_on(latents):
    root, ap_enc, encoders = latents
    service, server = _server()
    limit = service.max_receive_bytes
    try:
        honest = [Peer(server.address, root, encoders[i], f"user{i + 1}", i) for i in range(2)]
        big = Peer(
            server.address, root, encoders[2], "user3", 2, mutate=_edit("upload", _oversized)
        )
        peers = [*honest, big]
        for peer in peers:
            peer.start()
        started = time.monotonic()
        results = _run_ap(
            service,
            latents,
            ["user1", "user2", "user3"],
            policy=WaitPolicy(reply_timeout=20, rejoin_grace=GRACE),
        )
        took = time.monotonic() - started
        for peer in peers:
            peer.join(30)
    finally:
        server.stop()
    assert took < GRACE / 2, f"the session waited {took:.1f} s: the rejoin grace?"
    block = results["seeds"][0]
    assert block["dropped"] == {
        "user3": f"round 0: round: message too large: over the AP's receive limit of {limit:,} "
        "bytes"
    }
    assert [(lost["user"], lost["seed"]) for lost in results["lost"]] == [("user3", SEED)]
    assert block["wire"]["rejoins"] == []
    # the sender was told by gRPC itself, and its command ended with one line
    assert isinstance(big.error, TransportError), big.error
    assert "larger than max" in str(big.error) and "\n" not in str(big.error)
    # the others finished, with the results of a session of the two of them
    assert all(p.reports and p.reports[0].status == "ok" for p in honest)
    want = simulate(load_scenario(root, ap_enc, encoders[:2]), CONFIG, [SEED]).to_dict()
    users = {u["name"]: u for u in block["users"]}
    for mine in want["seeds"][0]["users"]:
        got = users[mine["name"]]
        for key in ("accuracy", "native_accuracy", "mse", "mse_whitened"):
            assert got[key] == pytest.approx(mine[key], rel=1e-9), (mine["name"], key)
    for got, ref in zip(block["rounds"], want["seeds"][0]["rounds"], strict=True):
        assert got["mse"] == pytest.approx(ref["mse"], rel=1e-9)
        assert got["primal_residual"] == pytest.approx(ref["primal_residual"], rel=1e-9)
