"""semalign_testing/testbed.py: namespaces, addresses, names, netem shaping, link cut, cleanup."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from semalign_testing.testbed import Testbed, TestbedError, require_testbed, wait_for_port

REASON = require_testbed()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"testbed unavailable: {REASON}")
NETEM = require_testbed(shaping=True)

SERVER = (
    "import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
    "s.bind(('0.0.0.0',7000)); s.listen(16)\n"
    "while True:\n c,_=s.accept(); c.sendall(socket.gethostname().encode()); c.close()"
)


def _connect_ms(tb: Testbed, host: str, target: str, timeout: float = 10.0) -> float:
    """Milliseconds for a TCP connect + reply from ``host`` to ``target``:7000 (inside host)."""
    code = (
        "import socket,time; t=time.perf_counter();"
        f"c=socket.create_connection(({target!r},7000),{timeout}); c.recv(64);"
        "print((time.perf_counter()-t)*1000)"
    )
    return float(tb.check_output(host, [sys.executable, "-c", code], timeout=30))


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


def test_hosts_reach_each_other_by_name_and_links_cut():
    with Testbed(["ap", "user1", "user2"]) as tb:
        prefix = tb.prefix
        assert tb.ip("ap").startswith("198.18.0.") and len({tb.ip(h) for h in tb.names}) == 3
        server = tb.run("ap", [sys.executable, "-c", SERVER])
        wait_for_port(tb, "user1", "ap", 7000)
        _connect_ms(tb, "user1", "ap")  # by name, unshaped: connects (raises otherwise)
        # the AP's own namespace has no route to the root namespace's networks
        assert "198.18.0.0/24" in tb.check_output("ap", ["ip", "route"])
        tb.link_down("user1")
        with pytest.raises(TestbedError):
            _connect_ms(tb, "user1", "ap", timeout=1.0)
        _connect_ms(tb, "user2", "ap")  # the others are untouched: still connect
        tb.link_up("user1")
        _connect_ms(tb, "user1", "ap")  # restored: connects again
        assert prefix in _namespaces()
    assert server.poll() is not None  # stopped on exit
    assert prefix not in _namespaces()


def test_everything_is_removed_when_the_body_fails():
    with pytest.raises(RuntimeError, match="boom"), Testbed(2) as tb:
        prefix = tb.prefix
        proc = tb.run("h1", ["sleep", "300"])
        raise RuntimeError("boom")
    assert proc.poll() is not None
    time.sleep(0.1)
    assert prefix not in _namespaces()


def test_parallel_testbeds_do_not_collide():
    with Testbed(["a", "b"]) as one, Testbed(["a", "b"]) as two:
        assert one.ns("a") != two.ns("a")
        assert one.ip("a") == two.ip("a")  # same addresses, separate LANs
        one.run("a", [sys.executable, "-c", SERVER])
        wait_for_port(one, "b", "a", 7000)
        with pytest.raises(TestbedError):  # two's "b" is not on one's LAN
            wait_for_port(two, "b", "a", 7000, timeout=1.0)


BULK = (
    "import socket,time; c=socket.create_connection(('a',7001)); t=time.perf_counter();"
    "c.sendall(b'x'*2_000_000); c.shutdown(socket.SHUT_WR); c.recv(1);"
    "print(time.perf_counter()-t)"
)
SINK = (
    "import socket; s=socket.socket(); s.bind(('0.0.0.0',7001)); s.listen(4)\n"
    "while True:\n"
    " c,_=s.accept()\n"
    " while c.recv(65536): pass\n"
    " c.sendall(b'k'); c.close()"
)


def test_rate_limit_slows_a_bulk_transfer():
    with Testbed(["a", "b"]) as tb:
        tb.shape("b", rate="8mbit")  # netem, or tbf where netem is missing
        tb.run("a", [sys.executable, "-c", SINK])
        wait_for_port(tb, "b", "a", 7001)
        seconds = float(tb.check_output("b", [sys.executable, "-c", BULK]))
        assert seconds > 1.5  # 16 Mbit at 8 Mbit/s: about 2 s (loopback speed: milliseconds)


@pytest.mark.skipif(NETEM is not None, reason=f"no delay emulation: {NETEM}")
def test_netem_delay_on_a_link():
    with Testbed(["ap", "user2"]) as tb:
        tb.run("ap", [sys.executable, "-c", SERVER])
        wait_for_port(tb, "user2", "ap", 7000)
        tb.shape("user2", rate="100mbit", delay="40ms")
        assert _connect_ms(tb, "user2", "ap") >= 80  # 40 ms each way of user2's link
        tb.shape("user2")  # all None: removed again
        _connect_ms(tb, "user2", "ap")  # still reachable without shaping


def test_delay_without_netem_fails_clearly():
    if NETEM is None:
        pytest.skip("netem is available here: delays work")
    with Testbed(["a"]) as tb, pytest.raises(TestbedError, match="netem"):
        tb.shape("a", delay="20ms")


ECHO = (
    "import socket; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
    "s.bind(('127.0.0.1',7002)); s.listen(16)\n"
    "while True:\n"
    " c,_=s.accept()\n"
    " while d:=c.recv(65536): c.sendall(d)\n"
    " c.close()"
)
ECHO_CLIENT = (
    "import hashlib,os,socket,sys,time; payload=os.urandom(int(sys.argv[1]));"
    "t=time.perf_counter(); c=socket.create_connection(('ap',7002),10); c.sendall(payload);"
    "c.shutdown(socket.SHUT_WR); back=b''\n"
    "while d:=c.recv(65536): back+=d\n"
    "print((time.perf_counter()-t)*1000, back==payload, len(back))"
)


def _echo_out(tb: Testbed, size: int) -> tuple[float, bool, int]:
    """Connect, send ``size`` random bytes, read the echo to EOF (user -> ap:7002): ms, whether
    the echo equals what was sent, its length."""
    out = tb.check_output("user", [sys.executable, "-c", ECHO_CLIENT, str(size)]).split()
    return float(out[0]), out[1] == "True", int(out[2])


def test_relay_delays_every_round_trip_and_keeps_the_bytes():
    with Testbed(["ap", "user"]) as tb:
        tb.run("ap", [sys.executable, "-c", ECHO])  # listens on the ap's loopback only
        link = tb.relay("ap", 7002, delay="40ms")  # ap:7002 (its eth0) -> 127.0.0.1:7002
        assert link.address == f"{tb.ip('ap')}:7002"
        wait_for_port(tb, "user", "ap", 7002)
        ms, same, length = _echo_out(tb, 1)
        assert ms >= 80 and same and length == 1  # 40 ms there, 40 ms back at least
        ms, same, length = _echo_out(tb, 3_000_000)  # many chunks, both directions at once
        assert same and length == 3_000_000 and ms >= 80
        time.sleep(0.5)  # the stats file is rewritten every 0.2 s
        stats = link.stats()
        assert stats["bytes_up"] == stats["bytes_down"] == 3_000_001
        assert stats["connections"] >= 3  # the port probe, then two echoes


def test_relay_rate_limits_a_bulk_transfer():
    with Testbed(["ap", "user"]) as tb:
        tb.run("ap", [sys.executable, "-c", ECHO])
        tb.relay("ap", 7002, rate="8mbit")
        wait_for_port(tb, "user", "ap", 7002)
        ms, same, _ = _echo_out(tb, 1_000_000)
        assert same and ms >= 1000  # 8 Mbit each way (in parallel) at 8 Mbit/s: >= 1 s


def test_relay_with_a_bad_delay_fails_to_start():
    with Testbed(["ap"]) as tb, pytest.raises(TestbedError, match="did not start"):
        tb.relay("ap", 7002, delay="bogus")  # the emulator rejects the delay and exits
