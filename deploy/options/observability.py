"""Options of ``semalign run`` and ``semalign ap`` for operators: Prometheus metrics and a
plaintext health endpoint.

* ``--metrics-listen HOST:PORT`` (``run`` and ``ap``): answer Prometheus scrapes on
  ``http://HOST:PORT/metrics`` (:mod:`semalign.server.metrics`; needs the extra ``metrics``).
* ``--health-listen HOST:PORT`` (``ap``): the gRPC health service alone, in plaintext, on
  another address (:mod:`semalign.server.health`); the alignment service's own port answers it
  too, with that port's TLS. Meant for loopback: a container's healthcheck cannot present a
  client certificate to a mutual-TLS AP.
"""

from __future__ import annotations

import argparse

from semalign.common.errors import TransportError, UsageError
from semalign.common.network_defaults import HEALTH_PORT


def add_metrics_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (users joined and lost, "
        "rounds, bytes per user, round latency, rejoins, stragglers; needs "
        "pip install 'semalign[metrics]')",
    )


def add_health_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--health-listen",
        metavar="HOST:PORT",
        help="also serve the gRPC health service alone, in plaintext, here (e.g. "
        f"127.0.0.1:{HEALTH_PORT} for a container's healthcheck; the --listen port answers it "
        "too)",
    )


def listen_address(option: str, value: str) -> tuple[str, int]:
    """``HOST:PORT`` with a port in 1-65535, or UsageError with one line."""
    from semalign.common.contract import check_address

    try:
        host, port = check_address(value, what=option)
    except TransportError as exc:
        raise UsageError(str(exc)) from None
    if not 1 <= port <= 65535:
        raise UsageError(f"bad {option} {value!r}: the port must be in 1-65535")
    return host, port


def check_metrics(args: argparse.Namespace) -> None:
    """``--metrics-listen``: a HOST:PORT, and prometheus_client installed."""
    if args.metrics_listen is None:
        return
    listen_address("--metrics-listen", args.metrics_listen)
    from semalign.server.metrics import require_prometheus

    require_prometheus()


def check_health(args: argparse.Namespace) -> None:
    if args.health_listen is not None:
        listen_address("--health-listen", args.health_listen)
