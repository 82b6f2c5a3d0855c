"""A userspace link emulator: a TCP relay that holds every byte for a one-way delay and
serializes it at a link rate, for kernels without ``sch_netem``.

::

    python -m semalign_testing.link_emulator --listen 198.18.0.1:50051 \\
        --target 127.0.0.1:50051 --delay 20ms --rate 100mbit --stats relay.json [--half-duplex]

The relay accepts TCP connections on ``--listen`` and forwards each, both directions, to
``--target``. Every chunk it reads goes through one :class:`LinkDirection` per direction,
*shared by all connections* (one emulated link, e.g. an AP's access link that all its users
share): the chunk waits until the link is free, takes ``bytes * 8 / rate`` seconds to
serialize, then ``delay`` seconds to propagate, and only then is written on. With
``--half-duplex`` both directions share one serializer (a shared medium such as a Wi-Fi
channel's airtime: a byte up waits for the bytes down ahead of it). Order is kept, no
byte is lost or changed. ``--buffer`` bounds the bytes held per connection and direction; once
it is full the relay stops reading, so TCP flow control pushes back on the sender (a bottleneck
buffer that never drops).

How this differs from ``tc netem`` on the interfaces (docs/network.md, "Emulated links"):

* The relay terminates TCP on both sides: the client's TCP handshake, ACKs, congestion window
  and retransmissions run against the relay over an undelayed path. The relay opens its
  connection to the target one ``delay`` after the client connected (the SYN's trip), so the
  first byte the target sends reaches the client no sooner than one round trip after the
  connect; but the client's ``connect()`` itself returns at once (netem: after one round trip)
  and slow start never limits a transfer. Application round trips (a request and its reply,
  HTTP/2 window updates, gRPC pings) all cross the relay and see the full delay.
* ``rate`` is the rate of TCP *payload* bytes (what the protocol's byte counts measure). A real
  100 Mbit/s Ethernet link carries about 95 Mbit/s of TCP payload at MTU 1500 (IP, TCP and
  Ethernet headers); netem's and tbf's ``rate`` count those headers.
* Chunks (at most ``CHUNK`` bytes) move as a whole: a chunk's first byte arrives when its last
  byte does (store and forward, at most 64 KiB: 52 ms at 10 Mbit/s). The last byte of a
  transfer arrives when it would on a real link.
* The relay is a process: on a busy machine it can be scheduled late, which delays bytes
  further (never earlier). Figures measured through it are upper bounds on the link's.

``--stats FILE`` is rewritten (atomically) at most every 0.2 s while bytes move, and at exit:
``{"listen", "target", "delay_s", "rate_bps", "half_duplex", "connections", "bytes_up",
"bytes_down"}``
(``up``: client -> target). The file appears once the relay listens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semalign.common.io import atomic_write_text

log = logging.getLogger(__name__)

#: How to start a relay from any working folder (a testbed host, a benchmark's child): this file
#: run as a script, so the repository root need not be on the child's path (it imports only the
#: installed semalign). ``python -m semalign_testing.link_emulator`` from the root does the same.
COMMAND = (sys.executable, str(Path(__file__).resolve()))

#: Most bytes read (and forwarded as one piece) at a time.
CHUNK = 64 * 1024
#: Default bytes held per connection and direction before the relay stops reading.
BUFFER = 8 * 1024 * 1024
_RATE_UNITS = {"bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "bps": 8.0}
_TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}
_QUANTITY = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-z]+)\s*$", re.IGNORECASE)


def parse_rate(text: str) -> float:
    """tc-style rate -> bits per second: "100mbit" -> 1e8 ("kbit", "gbit", "bit"; "bps" is
    bytes per second, as in tc). Raises ValueError on anything else or a rate <= 0."""
    match = _QUANTITY.match(str(text))
    unit = match[2].lower() if match else ""
    if not match or unit not in _RATE_UNITS or float(match[1]) <= 0:
        raise ValueError(f"bad rate {text!r} (e.g. 100mbit, 512kbit)")
    return float(match[1]) * _RATE_UNITS[unit]


def parse_delay(text: str) -> float:
    """tc-style time -> seconds: "20ms" -> 0.02 ("s", "ms", "us"). ValueError otherwise."""
    match = _QUANTITY.match(str(text))
    unit = match[2].lower() if match else ""
    if not match or unit not in _TIME_UNITS:
        raise ValueError(f"bad delay {text!r} (e.g. 20ms, 1s)")
    return float(match[1]) * _TIME_UNITS[unit]


@dataclass
class LinkDirection:
    """One direction of the emulated link: a FIFO serializer at ``rate_bps`` (None: no rate
    limit) followed by ``delay_s`` of propagation, shared by every connection."""

    delay_s: float = 0.0
    rate_bps: float | None = None
    bytes: int = 0
    free_at: float = field(default=float("-inf"))

    def due(self, now: float, size: int) -> float:
        """When ``size`` bytes handed to the link at ``now`` have fully arrived at the far end
        (and book the link for their serialization)."""
        self.bytes += size
        if self.rate_bps is None:
            return now + self.delay_s
        self.free_at = max(now, self.free_at) + size * 8.0 / self.rate_bps
        return self.free_at + self.delay_s


class _Pipe:
    """One direction of one connection: read, stamp with the link's due time, write on due."""

    def __init__(
        self,
        link: LinkDirection,
        reader: asyncio.StreamReader | None,
        buffer: int,
        counts: dict[str, int],
        key: str,
    ) -> None:
        self.link, self.reader, self.buffer = link, reader, buffer
        self.counts, self.key = counts, key
        self.items: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()
        self.held = 0
        self.room = asyncio.Event()
        self.room.set()

    async def read(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        assert self.reader is not None
        try:
            while True:
                await self.room.wait()
                data = await self.reader.read(CHUNK)
                if not data:
                    break
                last = self.link.due(loop.time(), len(data))
                self.counts[self.key] += len(data)
                self.held += len(data)
                if self.held >= self.buffer:
                    self.room.clear()
                self.items.put_nowait((last, data))
        except OSError as exc:  # reset by the peer: forward the end, not the error
            log.debug("read ended: %s", exc)
        # the end of the stream (FIN) follows the data, one propagation delay after it is seen
        self.items.put_nowait((max(last, loop.time() + self.link.delay_s), None))

    async def write(self, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await self.items.get()
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            if data is None:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
            self.held -= len(data)
            if self.held < self.buffer:
                self.room.set()


@dataclass
class Relay:
    """A running link emulator (a process started by ``Testbed.relay``, :mod:`.testbed`)."""

    host: str
    address: str  # "IP:PORT" clients dial (the host's address)
    target: str  # "127.0.0.1:PORT" inside the host
    proc: subprocess.Popen
    stats_file: Path

    def stats(self) -> dict[str, Any]:
        """The relay's last stats (``connections``, ``bytes_up``, ``bytes_down``, ...); they
        lag the traffic by up to 0.2 s."""
        return json.loads(self.stats_file.read_text())

    def stop(self, timeout: float = 5.0) -> dict[str, Any]:
        """Stop the relay (its connections end); returns its final stats."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)
        return self.stats()


class LinkEmulator:
    """The relay: ``listen`` -> ``target`` through one shared :class:`LinkDirection` each way."""

    def __init__(
        self,
        listen: tuple[str, int],
        target: tuple[str, int],
        *,
        delay_s: float = 0.0,
        rate_bps: float | None = None,
        buffer: int = BUFFER,
        stats: Path | None = None,
        half_duplex: bool = False,
    ) -> None:
        self.listen, self.target, self.buffer, self.stats = listen, target, buffer, stats
        self.up = LinkDirection(delay_s, rate_bps)
        self.down = self.up if half_duplex else LinkDirection(delay_s, rate_bps)
        self.half_duplex = half_duplex
        self.bytes = {"up": 0, "down": 0}  # read from clients / from the target
        self.connections = 0
        self._written: tuple[int, int, int] | None = None

    def write_stats(self) -> None:
        """Rewrite the stats file if anything changed since the last write."""
        now = (self.connections, self.bytes["up"], self.bytes["down"])
        if self.stats is None or now == self._written:
            return
        self._written = now
        payload = {
            "listen": f"{self.listen[0]}:{self.listen[1]}",
            "target": f"{self.target[0]}:{self.target[1]}",
            "delay_s": self.up.delay_s,
            "rate_bps": self.up.rate_bps,
            "half_duplex": self.half_duplex,
            "connections": self.connections,
            "bytes_up": self.bytes["up"],
            "bytes_down": self.bytes["down"],
        }
        atomic_write_text(self.stats, json.dumps(payload))

    async def _connection(self, c_reader, c_writer) -> None:
        try:
            await self._relay(c_reader, c_writer)
        except asyncio.CancelledError:  # the relay stops (asyncio.run cancels what is left)
            c_writer.transport.abort()

    async def _relay(self, c_reader, c_writer) -> None:
        """One client connection: connect to the target one delay later, pipe both ways."""
        loop = asyncio.get_running_loop()
        self.connections += 1
        opened = loop.time()
        up = _Pipe(self.up, c_reader, self.buffer, self.bytes, "up")
        down = _Pipe(self.down, None, self.buffer, self.bytes, "down")
        reading = asyncio.ensure_future(up.read())  # stamp the client's bytes from now on
        tasks = [reading]
        try:
            await asyncio.sleep(max(0.0, opened + self.up.delay_s - loop.time()))  # the SYN
            t_reader, t_writer = await asyncio.open_connection(*self.target)
        except OSError as exc:
            log.info("target %s:%s unreachable: %s", *self.target, exc)
            reading.cancel()
            c_writer.transport.abort()
            return
        down.reader = t_reader
        tasks += [
            asyncio.ensure_future(up.write(t_writer)),
            asyncio.ensure_future(down.read()),
            asyncio.ensure_future(down.write(c_writer)),
        ]
        try:
            await asyncio.gather(*tasks)
        except (OSError, asyncio.IncompleteReadError) as exc:
            log.debug("connection ended: %s", exc)
        finally:
            for task in tasks:
                task.cancel()
            for writer in (c_writer, t_writer):
                writer.transport.abort()

    async def serve(self, stop: asyncio.Event) -> None:
        """Accept and relay until ``stop`` is set; the stats file appears once listening."""
        server = await asyncio.start_server(self._connection, *self.listen, reuse_address=True)
        self.write_stats()  # (0, 0, 0) differs from "never written": the file appears now
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.2)
                self.write_stats()
        finally:
            server.close()
            self.write_stats()


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"bad address {text!r} (HOST:PORT)")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=_address, required=True, help="HOST:PORT to accept on")
    parser.add_argument("--target", type=_address, required=True, help="HOST:PORT to relay to")
    parser.add_argument("--delay", type=parse_delay, default=0.0, help="one-way delay (20ms)")
    parser.add_argument("--rate", type=parse_rate, help="link rate, TCP payload (100mbit)")
    parser.add_argument("--buffer", type=int, default=BUFFER, help="bytes held per direction")
    parser.add_argument("--stats", type=Path, help="JSON file of byte counts")
    parser.add_argument(
        "--half-duplex", action="store_true", help="both directions share one serializer"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="link_emulator: %(message)s")
    emulator = LinkEmulator(
        args.listen,
        args.target,
        delay_s=args.delay,
        rate_bps=args.rate,
        buffer=args.buffer,
        stats=args.stats,
        half_duplex=args.half_duplex,
    )

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await emulator.serve(stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
