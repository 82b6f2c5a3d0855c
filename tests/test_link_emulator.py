"""semalign_testing/link_emulator.py: units, FIFO timing, a relay on loopback (no root)."""

from __future__ import annotations

import asyncio
import json
import os
import time

import pytest

from semalign_testing.link_emulator import LinkDirection, LinkEmulator, parse_delay, parse_rate


def test_units_follow_tc():
    assert parse_rate("100mbit") == 1e8 and parse_rate("512kbit") == 512e3
    assert parse_rate("1gbit") == 1e9 and parse_rate("1000bps") == 8000  # tc: bps = bytes/s
    assert parse_delay("20ms") == pytest.approx(0.02) and parse_delay("1s") == 1.0
    assert parse_delay("250us") == pytest.approx(250e-6)
    for bad in ("100", "fast", "0mbit", "-1mbit", "1mb"):
        with pytest.raises(ValueError, match="rate"):
            parse_rate(bad)
    for bad in ("20", "soon", "1h"):
        with pytest.raises(ValueError, match="delay"):
            parse_delay(bad)


def test_the_link_serializes_in_order_then_delays():
    link = LinkDirection(delay_s=0.05, rate_bps=8e6)  # 1 MB/s
    first = link.due(10.0, 1_000_000)  # 1 s on the wire, then 50 ms
    second = link.due(10.0, 500_000)  # queued behind the first
    assert first == pytest.approx(11.05) and second == pytest.approx(11.55)
    later = link.due(20.0, 1_000)  # the link was idle: no queue
    assert later == pytest.approx(20.0 + 0.001 + 0.05)
    assert link.bytes == 1_501_000
    free = LinkDirection(delay_s=0.02)  # no rate: delay only
    assert free.due(3.0, 10**9) == pytest.approx(3.02)


def test_half_duplex_shares_one_serializer():
    full = LinkEmulator(("127.0.0.1", 0), ("127.0.0.1", 1), delay_s=0.01, rate_bps=8e6)
    full.up.due(0.0, 1_000_000)
    assert full.down.due(0.0, 1_000) == pytest.approx(0.001 + 0.01)  # its own direction
    half = LinkEmulator(("127.0.0.1", 0), ("127.0.0.1", 1), rate_bps=8e6, half_duplex=True)
    half.up.due(0.0, 1_000_000)
    assert half.down.due(0.0, 1_000) == pytest.approx(1.001)  # behind the upload


async def _echo_through_relay(payload: bytes, delay: float, stats) -> tuple[bytes, float]:
    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    target = server.sockets[0].getsockname()[:2]
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    emulator = LinkEmulator(("127.0.0.1", port), target, delay_s=delay, buffer=256_000, stats=stats)
    stop = asyncio.Event()
    serving = asyncio.ensure_future(emulator.serve(stop))
    while not stats.exists():
        await asyncio.sleep(0.01)
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    writer.write_eof()
    back = await reader.read()  # to EOF: the relay forwards the half-close and the echo's FIN
    elapsed = time.perf_counter() - start
    writer.close()
    stop.set()
    await serving
    server.close()
    return back, elapsed


def test_a_relay_returns_every_byte_after_the_delays(tmp_path):
    payload = os.urandom(2_000_000)  # many chunks; more than the 256 kB buffer
    stats = tmp_path / "stats.json"
    back, elapsed = asyncio.run(_echo_through_relay(payload, 0.03, stats))
    assert back == payload
    assert elapsed >= 0.06  # one delay there, one back (a lower bound: never sooner)
    counts = json.loads(stats.read_text())
    assert counts["bytes_up"] == counts["bytes_down"] == len(payload)
    assert counts["connections"] == 1 and counts["delay_s"] == pytest.approx(0.03)
