"""The AP's status in the standard gRPC health checking protocol (``grpc.health.v1.Health``).

Two names are answered: ``""`` (the server) and ``semalign.v1.Alignment`` (the alignment
service). Both are NOT_SERVING until the AP opens its first session's lobby, SERVING from then
on, and NOT_SERVING for good once the service closes (its sessions are over, or the AP shuts
down). The health service needs no credentials and tells nothing but that status. It is added
to the alignment service's own server;
:func:`~semalign.server.service.start_health_server` also serves it alone on another address
in plaintext (a container's own probe, when the alignment service wants client certificates,
which the AP's container does not hold).
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from semalign.common.contract import SERVICE

__all__ = ["ApHealth"]

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class ApHealth:
    """The health servicer of one alignment service; starts NOT_SERVING."""

    def __init__(self) -> None:
        self.servicer = health.HealthServicer()
        self._set(NOT_SERVING)

    def _set(self, status: int) -> None:
        for name in ("", SERVICE):
            self.servicer.set(name, status)

    def serving(self) -> None:
        """The AP accepts handshakes (a lobby is open, or its sessions run)."""
        self._set(SERVING)

    def stopped(self) -> None:
        """NOT_SERVING from now on (later :meth:`serving` calls change nothing)."""
        self.servicer.enter_graceful_shutdown()

    def add_to(self, server: grpc.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self.servicer, server)
