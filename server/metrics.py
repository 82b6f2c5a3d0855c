"""The AP's Prometheus metrics: a small typed facade the session driver feeds.

The driver (:class:`~semalign.server.session.SessionDriver`) calls one method per event with the
same numbers it writes into the results, never a second count:

======================================  ======================================================
metric (``semalign_`` prefix)           fed from (results file)
======================================  ======================================================
``users_joined_total``                  each user that completed its handshake in a session
                                        (``seeds[].users[].name``)
``users_lost_total``                    each user the AP dropped (``seeds[].dropped``)
``rejoins_total``                       each comeback on a new stream (``seeds[].wire.rejoins``)
``stragglers_total``                    each reply that missed ``--round-deadline``
                                        (``seeds[].wire.stragglers``)
``bytes_down_total{user,phase}``        payload bytes the AP sent the user: ``phase="round"``
``bytes_up_total{user,phase}``          from ``seeds[].rounds[].bytes_{down,up}_per_user``,
                                        ``final``/``evaluation`` (and ``setup``, secure
                                        aggregation's key setup) from ``seeds[].phases``
``current_round``                       the last ADMM round finished (``seeds[].rounds[].round``)
``round_latency_seconds``               histogram of ``seeds[].rounds[].seconds``
======================================  ======================================================

``prometheus_client`` is the optional extra ``metrics`` (``pip install 'semalign[metrics]'``);
without it :class:`ApMetrics` raises a one-line UsageError naming the extra. A driver without
metrics gets :data:`NO_METRICS`, whose methods do nothing. Each :class:`ApMetrics` has its own
registry (several APs in one test process never share counters).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from semalign.common.errors import UsageError
from semalign.common.records import RoundRecord

__all__ = ["NO_METRICS", "ApMetrics", "MetricsEndpoint", "NoMetrics", "require_prometheus"]

#: Metric names start with this.
PREFIX = "semalign"
#: The extra that installs prometheus_client.
EXTRA = "metrics"
#: Upper bounds (s) of the round latency histogram: a round takes milliseconds in-process,
#: tens of milliseconds on loopback, seconds over slow links.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def require_prometheus():
    """The ``prometheus_client`` module, or UsageError naming the extra that installs it."""
    try:
        import prometheus_client
    except ImportError:
        raise UsageError(
            f"--metrics-listen needs prometheus_client: pip install 'semalign[{EXTRA}]'"
        ) from None
    return prometheus_client


class NoMetrics:
    """The driver's metrics when none are served: every event is ignored."""

    def user_joined(self, user_id: str) -> None:
        """``user_id`` completed its handshake in a session."""

    def user_lost(self, user_id: str) -> None:
        """The AP dropped ``user_id`` (counted once per user and session)."""

    def rejoined(self, user_id: str) -> None:
        """``user_id`` came back on a new stream and was taken back."""

    def straggler(self, user_id: str) -> None:
        """``user_id``'s reply missed the round deadline."""

    def round_finished(self, record: RoundRecord) -> None:
        """An ADMM round as the results record it (round, seconds, bytes per user)."""

    def phase_traffic(self, phase: str, traffic: Mapping[str, Any]) -> None:
        """A phase's traffic block as the results hold it (``bytes_down_per_user``,
        ``bytes_up_per_user``: user id -> bytes)."""


NO_METRICS = NoMetrics()


@dataclass
class MetricsEndpoint:
    """The HTTP server that answers Prometheus scrapes on ``http://address/metrics``."""

    server: Any
    thread: Any
    address: str

    @property
    def url(self) -> str:
        return f"http://{self.address}/metrics"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class ApMetrics(NoMetrics):
    """The AP's counters, gauge and histogram in a registry of their own."""

    def __init__(self) -> None:
        prom = require_prometheus()
        self.registry = prom.CollectorRegistry()

        def counter(name: str, what: str, labels: tuple[str, ...] = ()):
            return prom.Counter(f"{PREFIX}_{name}", what, labels, registry=self.registry)

        self.joined = counter("users_joined", "Users that completed a session's handshake")
        self.lost = counter("users_lost", "Users the AP dropped during a session")
        self.rejoins = counter("rejoins", "Users taken back on a new stream")
        self.stragglers = counter("stragglers", "Replies that missed the round deadline")
        labels = ("user", "phase")
        self.bytes_down = counter("bytes_down", "Payload bytes sent to a user", labels)
        self.bytes_up = counter("bytes_up", "Payload bytes received from a user", labels)
        self.round = prom.Gauge(
            f"{PREFIX}_current_round", "The last ADMM round finished", registry=self.registry
        )
        self.latency = prom.Histogram(
            f"{PREFIX}_round_latency_seconds",
            "Wall time of an ADMM round at the AP (send, every reply, AP step)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def user_joined(self, user_id: str) -> None:
        self.joined.inc()

    def user_lost(self, user_id: str) -> None:
        self.lost.inc()

    def rejoined(self, user_id: str) -> None:
        self.rejoins.inc()

    def straggler(self, user_id: str) -> None:
        self.stragglers.inc()

    def round_finished(self, record: RoundRecord) -> None:
        self.round.set(record.round)
        self.latency.observe(record.seconds)
        self._count("round", record.bytes_down_per_user, record.bytes_up_per_user)

    def phase_traffic(self, phase: str, traffic: Mapping[str, Any]) -> None:
        self._count(
            phase, traffic.get("bytes_down_per_user", {}), traffic.get("bytes_up_per_user", {})
        )

    def _count(self, phase: str, down: Mapping[str, int], up: Mapping[str, int]) -> None:
        for user_id, count in down.items():
            self.bytes_down.labels(user=user_id, phase=phase).inc(count)
        for user_id, count in up.items():
            self.bytes_up.labels(user=user_id, phase=phase).inc(count)

    def serve(self, host: str, port: int) -> MetricsEndpoint:
        """Answer scrapes on ``host:port`` (port 0: a free one) in a daemon thread; UsageError
        with one line if it cannot listen there."""
        prom = require_prometheus()
        try:
            server, thread = prom.start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise UsageError(
                f"--metrics-listen {host}:{port}: cannot listen ({exc.strerror or exc})"
            ) from None
        shown = f"[{host}]" if ":" in host else host
        return MetricsEndpoint(server, thread, f"{shown}:{server.server_address[1]}")
