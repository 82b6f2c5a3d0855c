"""The SuperNode -> ClientApp hop carries the user's token in plaintext HTTP (Flower 1.41's
Runtime API): the SuperNode must serve it on loopback only (docs/deployment.md, security)."""

from __future__ import annotations

from semalign.deploy.flower.launch import supernode_argv


def test_the_supernode_runtime_api_listens_on_loopback_only():
    argv = supernode_argv("ap:9092", 9094, {"user-id": "user1"}, root_ca="ca.pem")
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "9094"
    assert argv.count("--host") == 1
    assert not any("token" in arg.lower() for arg in argv)  # never on the command line
