"""Emulated hosts for tests and benchmarks: Linux network namespaces joined by veth pairs.

::

    from semalign_testing.testbed import Testbed, require_testbed

    with Testbed(["ap", "user1", "user2"]) as tb:          # everything removed on exit
        tb.shape("user1", rate="100mbit", delay="20ms")   # tc netem on user1's link
        server = tb.run("ap", ["python", "-m", "http.server", "8000"])
        tb.run("user1", ["curl", f"http://{tb.ip('ap')}:8000/"]).wait()
        tb.link_down("user2")                             # cut user2 off (no RST, no FIN)
        tb.link_up("user2")

Layout: a *switch* namespace holds a bridge; each host is a namespace with one interface
``eth0`` whose veth peer is a port of that bridge. The bridge lives in its own namespace, so the
root namespace's iptables (Docker sets ``FORWARD DROP`` and ``br_netfilter``) never sees the
frames, and nothing is added to the root namespace at all: no interface, no route, no address.
Hosts get addresses in 198.18.0.0/24 (RFC 2544's benchmarking range), only ever used inside these
namespaces; every host name resolves inside every host (``/etc/netns/<ns>/hosts``, which
``ip netns exec`` mounts over ``/etc/hosts``).

Names carry a prefix with the pid and a counter (``satb<pid>x<n>-``), so parallel runs do not
collide; :func:`remove_stale` removes what runs that died (SIGKILL) left behind.

Link shaping (:meth:`Testbed.shape`) puts a ``netem`` qdisc (rate, delay, jitter, loss) on both
directions of a host's link: the host's ``eth0`` (egress, host -> switch) and the switch port
(egress, switch -> host). One-way delay between two hosts is therefore the sum of their two
links' ``delay``; a 100 Mbit/s, 20 ms one-way path between A and B is
``shape(A, rate="100mbit", delay="10ms")`` and ``shape(B, rate="100mbit", delay="10ms")``, or
``shape(A, rate="100mbit", delay="20ms")`` with B unshaped.

Without ``sch_netem`` (some kernels lack it) :meth:`Testbed.shape` can only limit the rate (tbf);
:meth:`Testbed.relay` emulates a link of given delay and rate for the TCP connections to one port
of a host instead: a userspace relay (``semalign_testing.link_emulator``) inside that host, on its
address, in front of the service listening on the host's loopback::

    link = tb.relay("ap", 50051, delay="20ms", rate="100mbit")  # ap:50051 -> 127.0.0.1:50051
    ...                                                          # users dial ap:50051
    link.stats()["bytes_down"]                                   # bytes that crossed it

Needs root, ``ip`` (iproute2) and, for shaping, ``tc`` with the ``sch_netem`` module.
:func:`require_testbed` returns why not (or None), for ``pytest.skip``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semalign_testing.link_emulator import COMMAND, Relay

#: Where host addresses come from (RFC 2544 benchmarking range; only inside the namespaces).
SUBNET_PREFIX = "198.18.0."
PREFIX_LEN = 24
NETNS_ETC = Path("/etc/netns")
_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_STALE_RE = re.compile(r"^satb(\d+)x\d+-")
_counter = itertools.count()


class TestbedError(RuntimeError):
    """A command that builds or changes the testbed failed (its stderr in the message)."""

    __test__ = False  # not a pytest test class


def _sh(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(list(argv), capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise TestbedError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done


def require_testbed(*, shaping: bool = False, rate: bool = False) -> str | None:
    """None if namespaces can be used here, else why not. With ``shaping``: also netem
    (delay, loss); with ``rate``: a rate limit (netem, else tbf)."""
    if os.name != "posix" or not hasattr(os, "geteuid"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root (run the tests as root)"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    if shaping and shutil.which("tc") is None:
        return "`tc` (iproute2) is not installed"
    probe = f"satb{os.getpid()}probe{next(_counter)}"
    done = _sh(["ip", "netns", "add", probe], check=False)
    if done.returncode != 0:
        return f"`ip netns add` fails here: {done.stderr.strip()}"
    try:
        if shaping or rate:
            qdisc = ["ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo", "root"]
            done = _sh([*qdisc, "netem", "delay", "1ms"], check=False)
            if done.returncode != 0 and shaping:
                return f"tc netem is unavailable (sch_netem module?): {done.stderr.strip()}"
            if done.returncode != 0:
                done = _sh([*qdisc, *_tbf("1mbit")], check=False)
                if done.returncode != 0:
                    return f"neither tc netem nor tbf is available: {done.stderr.strip()}"
    finally:
        _sh(["ip", "netns", "del", probe], check=False)
    return None


def _tbf(rate: str) -> list[str]:
    return ["tbf", "rate", rate, "burst", "64kb", "latency", "100ms"]


def _has_netem() -> bool:
    probe = f"satb{os.getpid()}probe{next(_counter)}"
    if _sh(["ip", "netns", "add", probe], check=False).returncode != 0:
        return False
    try:
        qdisc = ["ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo", "root"]
        return _sh([*qdisc, "netem", "delay", "1ms"], check=False).returncode == 0
    finally:
        _sh(["ip", "netns", "del", probe], check=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[str]:
    """Remove the namespaces (and their /etc/netns folders) of testbeds whose process died.

    Only names this module makes (``satb<pid>x<n>-...``) whose pid is not running are touched.
    Returns the names removed."""
    done = _sh(["ip", "netns", "list"], check=False)
    removed = []
    for line in done.stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        match = _STALE_RE.match(name)
        if match and not _pid_alive(int(match[1])):
            _kill_namespace_pids(name)
            _sh(["ip", "netns", "del", name], check=False)
            shutil.rmtree(NETNS_ETC / name, ignore_errors=True)
            removed.append(name)
    return removed


def _kill_namespace_pids(ns: str) -> None:
    done = _sh(["ip", "netns", "pids", ns], check=False)
    for pid in done.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


@dataclass
class Host:
    name: str
    ns: str  # network namespace name
    ip: str
    port: str  # its bridge port (interface name in the switch namespace)


@dataclass
class Testbed:
    """N hosts on one emulated LAN; a context manager that removes everything on exit.

    ``hosts``: host names (lower case, e.g. ``["ap", "user1"]``) or a count (``h1..hN``).
    ``shaping``: optional ``{host: dict(rate=..., delay=..., loss=...)}`` applied at start.
    """

    hosts: Sequence[str] | int = 2
    shaping: dict[str, dict[str, Any]] = field(default_factory=dict)
    __test__ = False  # not a pytest test class

    def __post_init__(self) -> None:
        names = (
            [f"h{i}" for i in range(1, self.hosts + 1)]
            if isinstance(self.hosts, int)
            else list(self.hosts)
        )
        if not names or len(set(names)) != len(names) or len(names) > 250:
            raise ValueError("testbed hosts: 1 to 250 distinct names")
        for name in names:
            if not _NAME_RE.match(name):
                raise ValueError(f"bad host name {name!r} (lower case letters, digits, _ or -)")
        self.prefix = f"satb{os.getpid()}x{next(_counter)}-"
        self.switch = f"{self.prefix}sw"
        self.host: dict[str, Host] = {
            name: Host(name, f"{self.prefix}{name}", f"{SUBNET_PREFIX}{i}", f"p{i}")
            for i, name in enumerate(names, 1)
        }
        self.procs: list[subprocess.Popen] = []
        self._namespaces: list[str] = []
        self._netem: bool | None = None
        self._up = False
        self._tmp: tempfile.TemporaryDirectory | None = None

    # ------------------------------------------------------------------ life cycle
    def __enter__(self) -> Testbed:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def start(self) -> None:
        if self._up:
            return
        self._up = True
        self._add_ns(self.switch)
        self._in(self.switch, "ip", "link", "add", "br0", "type", "bridge")
        self._in(self.switch, "ip", "link", "set", "br0", "up")
        hosts_file = "127.0.0.1 localhost\n" + "".join(
            f"{h.ip} {h.name}\n" for h in self.host.values()
        )
        for h in self.host.values():
            self._add_ns(h.ns)
            etc = NETNS_ETC / h.ns
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(hosts_file)
            (etc / "hostname").write_text(h.name + "\n")
            _sh(["ip", "-n", self.switch, "link", "add", h.port, "type", "veth"]
                + ["peer", "name", "eth0", "netns", h.ns])  # fmt: skip
            self._in(self.switch, "ip", "link", "set", h.port, "master", "br0", "up")
            self._in(h.ns, "ip", "link", "set", "lo", "up")
            self._in(h.ns, "ip", "addr", "add", f"{h.ip}/{PREFIX_LEN}", "dev", "eth0")
            self._in(h.ns, "ip", "link", "set", "eth0", "up")
        for name, spec in self.shaping.items():
            self.shape(name, **spec)

    def close(self) -> None:
        """Stop every process started here, then delete every namespace and file made here."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.0, deadline - time.monotonic()))
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(2)
        for ns in reversed(self._namespaces):
            _kill_namespace_pids(ns)  # anything left in our namespaces is ours
            _sh(["ip", "netns", "del", ns], check=False)
            shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)
        self._namespaces.clear()
        self.procs.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self._up = False

    # ------------------------------------------------------------------ hosts
    def ip(self, host: str) -> str:
        return self._host(host).ip

    def ns(self, host: str) -> str:
        return self._host(host).ns

    @property
    def names(self) -> list[str]:
        return list(self.host)

    def argv(self, host: str, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed to run inside ``host`` (``ip netns exec NS ...``)."""
        return ["ip", "netns", "exec", self._host(host).ns, *argv]

    def run(self, host: str, argv: Sequence[str], **popen: Any) -> subprocess.Popen:
        """Start ``argv`` inside ``host`` (own session; stopped on :meth:`close`). Keyword
        arguments go to :class:`subprocess.Popen` (``stdout``, ``env``, ``cwd``, ...)."""
        popen.setdefault("stdin", subprocess.DEVNULL)
        popen["start_new_session"] = True
        proc = subprocess.Popen(self.argv(host, argv), **popen)
        self.procs.append(proc)
        return proc

    def check_output(self, host: str, argv: Sequence[str], timeout: float = 60) -> str:
        """Run ``argv`` inside ``host`` to completion; its stdout (TestbedError if it fails)."""
        done = subprocess.run(
            self.argv(host, argv), capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise TestbedError(f"{host}: {' '.join(argv)}: {done.stderr.strip()}")
        return done.stdout

    # ------------------------------------------------------------------ links
    def link_down(self, host: str) -> None:
        """Cut ``host`` off the LAN (its bridge port down: packets vanish, no RST)."""
        self._in(self.switch, "ip", "link", "set", self._host(host).port, "down")

    def link_up(self, host: str) -> None:
        self._in(self.switch, "ip", "link", "set", self._host(host).port, "up")

    def shape(
        self,
        host: str,
        *,
        rate: str | None = None,
        delay: str | None = None,
        jitter: str | None = None,
        loss: float | str | None = None,
        direction: str = "both",
    ) -> None:
        """netem on ``host``'s link: ``rate`` ("100mbit"), one-way ``delay`` ("20ms"),
        ``jitter`` ("2ms"), ``loss`` (percent, e.g. 0.5). ``direction``: "both", "up" (host ->
        switch) or "down". Calling again replaces the previous shaping; all None removes it.

        Without the netem module (some kernels lack ``sch_netem``) a rate alone falls back to a
        token bucket (tbf); delay, jitter or loss then raise TestbedError."""
        if direction not in ("both", "up", "down"):
            raise ValueError("direction is 'both', 'up' or 'down'")
        h = self._host(host)
        spec: list[str] = []
        if delay:
            spec += ["delay", str(delay)] + ([str(jitter)] if jitter else [])
        if loss not in (None, 0, "0"):
            spec += ["loss", f"{str(loss).rstrip('%')}%"]
        if rate:
            spec += ["rate", str(rate)]
        if spec and self._netem is None:
            self._netem = _has_netem()
        if spec and not self._netem:
            if delay or jitter or loss not in (None, 0, "0"):
                raise TestbedError(
                    "delay/jitter/loss need tc netem (sch_netem), absent here; "
                    "Testbed.relay() emulates delay and rate for one port"
                )
            spec = _tbf(str(rate))
        else:
            spec = ["netem", "limit", "10000", *spec] if spec else []
        sides = {"up": (h.ns, "eth0"), "down": (self.switch, h.port)}
        for side, (ns, dev) in sides.items():
            if direction not in ("both", side):
                continue
            _sh(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root"], check=False)
            if spec:
                self._in(ns, "tc", "qdisc", "add", "dev", dev, "root", *spec)

    def relay(
        self,
        host: str,
        port: int,
        *,
        delay: str | None = None,
        rate: str | None = None,
        listen_port: int | None = None,
        half_duplex: bool = False,
        timeout: float = 30.0,
    ) -> Relay:
        """Emulate a link (one-way ``delay`` such as "20ms", ``rate`` such as "100mbit", both
        directions, shared by all connections) in front of ``127.0.0.1:port`` inside ``host``:
        a relay listens on the host's address, port ``listen_port`` (default ``port``), so
        clients dial ``host:port`` as before and the service listens on 127.0.0.1 only.
        ``half_duplex``: both directions share the rate (a shared medium's airtime).
        Started like :meth:`run` (stopped on :meth:`close`); returns once it listens."""
        h = self._host(host)
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=f"{self.prefix}relay-")
        stats = Path(self._tmp.name) / f"{host}-{port}.json"
        argv = [*COMMAND, "--listen", f"{h.ip}:{listen_port or port}"]
        argv += ["--target", f"127.0.0.1:{port}"]
        argv += ["--stats", str(stats)] + (["--half-duplex"] if half_duplex else [])
        argv += (["--delay", str(delay)] if delay else []) + (["--rate", str(rate)] if rate else [])
        proc = self.run(host, argv)
        deadline = time.monotonic() + timeout
        while not stats.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise TestbedError(f"link emulator in {host} did not start (exit {proc.poll()})")
            time.sleep(0.05)
        return Relay(host, f"{h.ip}:{listen_port or port}", f"127.0.0.1:{port}", proc, stats)

    # ------------------------------------------------------------------ internals
    def _host(self, host: str) -> Host:
        try:
            return self.host[host]
        except KeyError:
            raise KeyError(f"no host {host!r} in this testbed ({', '.join(self.host)})") from None

    def _add_ns(self, ns: str) -> None:
        _sh(["ip", "netns", "add", ns])
        self._namespaces.append(ns)

    @staticmethod
    def _in(ns: str, *argv: str) -> None:
        _sh(["ip", "netns", "exec", ns, *argv])


def wait_for_port(tb: Testbed, host: str, ip: str, port: int, timeout: float = 30.0) -> None:
    """Wait until something inside ``host`` can connect to ``ip:port`` (TestbedError if not)."""
    probe = f"import socket; socket.create_connection(({ip!r}, {port}), 1)"
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(tb.argv(host, [sys.executable, "-c", probe]), capture_output=True)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise TestbedError(f"nothing listens on {ip}:{port} as seen from {host}")
        time.sleep(0.2)


SNIFFER = r"""
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))  # ETH_P_ALL, every port
s.settimeout(0.5)
with open(sys.argv[1], "wb", buffering=0) as out:
    while True:
        try:
            out.write(s.recv(65535))
        except socket.timeout:
            pass
"""


def capture(tb: Testbed, path: str | os.PathLike) -> subprocess.Popen:
    """Record every frame on the testbed's switch ports into ``path`` (raw frames, appended
    back to back; each frame twice, in and out) until :meth:`Testbed.close`: what an
    eavesdropper on the LAN would see."""
    argv = ["ip", "netns", "exec", tb.switch, sys.executable, "-c", SNIFFER, str(path)]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
    tb.procs.append(proc)
    return proc
