"""The Flower SuperLink of the AP, with its Control and Runtime APIs closed to the network.

Flower 1.41 serves its Fleet API (SuperNodes), Control API (``flwr run``/``ls``/``stop``) and
Runtime API (the ServerApp's SuperExec: runs, messages, the invitation's token) on one HTTP
port, and the open-source SuperLink authenticates the Control API only with OIDC (enterprise
plugin). Exposing that port to users would let anyone who can reach it list, stop or submit
runs and read the ServerApp's messages.

``python -m semalign.deploy.flower.superlink [flower-superlink options]`` runs the unchanged
``flower-superlink`` with one ASGI middleware in front of Flower's: a request from a peer that
is not on loopback may only reach the Fleet API (``/v1/fleet/``); anything else (Control,
Runtime, docs) gets 403. The AP's own ``flwr`` CLI and SuperExec run on the AP host and connect
over 127.0.0.1. uvicorn's proxy headers are off, so no client can pose as loopback.

With ``--host`` a specific address that is not loopback (``--superlink-listen 10.0.0.5:9092``)
the SuperLink also listens on ``127.0.0.1`` on the same port, and its SuperExec connects there:
a connection to the public address comes from that address, not loopback, even from the AP
host itself, so the guard would refuse the AP's own Control and Runtime calls.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from pathlib import Path
from typing import Any

#: Path prefixes peers not on loopback may reach (the SuperNodes' Fleet API).
REMOTE_PATHS = ("/v1/fleet/",)
DENIED = b"semalign: only the Fleet API is served to the network; Control and Runtime APIs are loopback-only\n"  # noqa: E501


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def needs_loopback_listener(host: str | None) -> bool:
    """Whether a SuperLink on ``host`` needs a second listener on 127.0.0.1 for the AP's own
    calls: a specific address that is not loopback (a wildcard already covers loopback)."""
    host = (host or "").strip("[]")
    if host in ("", "0.0.0.0", "::"):
        return False
    try:
        return not ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:  # a name: loopback if it resolves to loopback
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except OSError:
            return True
        return not any(is_loopback(str(info[4][0])) for info in infos)


def _loopback_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"semalign: cannot listen on 127.0.0.1:{port} as well: {exc}") from None
    return sock


class FleetOnlyFromNetwork:
    """ASGI middleware: non-loopback peers reach only :data:`REMOTE_PATHS`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket"):
            client = scope.get("client")
            path = str(scope.get("path", ""))
            if not is_loopback(client[0] if client else None) and not path.startswith(REMOTE_PATHS):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await send(
                    {
                        "type": "http.response.start",
                        "status": 403,
                        "headers": [(b"content-type", b"text/plain")],
                    }
                )
                await send({"type": "http.response.body", "body": DENIED})
                return
        await self.app(scope, receive, send)


def install_guard() -> None:
    """Put :class:`FleetOnlyFromNetwork` outermost in the SuperLink's app; no proxy headers.
    On a specific non-loopback host, also listen on 127.0.0.1 (same port) and point the
    SuperExec there (:func:`needs_loopback_listener`)."""
    import functools
    import importlib

    import uvicorn
    from flwr.superlink import main as superlink_main
    from starlette.middleware import Middleware

    original = superlink_main._get_middleware
    if getattr(original, "_semalign_guard", False):
        return

    def middleware() -> list:
        return [Middleware(FleetOnlyFromNetwork), *original()]

    middleware._semalign_guard = True  # type: ignore[attr-defined]
    superlink_main._get_middleware = middleware
    uvicorn.run = functools.partial(uvicorn.run, proxy_headers=False)

    uvicorn_main = importlib.import_module("uvicorn.main")  # uvicorn.main is the CLI

    class Server(uvicorn_main.Server):
        def run(self, sockets: list[socket.socket] | None = None) -> None:
            if sockets is None and needs_loopback_listener(self.config.host):
                public = self.config.bind_socket()
                sockets = [public, _loopback_socket(public.getsockname()[1])]
            super().run(sockets=sockets)

    uvicorn_main.Server = Server
    flower_superlink = importlib.import_module("flwr.superlink.cli.flower_superlink")
    resolve = flower_superlink.resolve_bind_address

    def runtime_address(address: str) -> str:  # the SuperExec's connection to the SuperLink
        host, _, port = resolve(address).rpartition(":")
        return f"127.0.0.1:{port}" if needs_loopback_listener(host) else f"{host}:{port}"

    flower_superlink.resolve_bind_address = runtime_address


def main(argv: list[str] | None = None) -> None:
    """``flower-superlink ARGS`` with the guard; ``register KEY.pub...``: register keys and
    print their node ids as JSON (one process for all keys, not one ``flwr`` call each)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["register"]:
        import json

        print(json.dumps({"success": True, "node-ids": register_keys(argv[1:])}))
        return
    from flwr.superlink.cli.flower_superlink import flower_superlink

    install_guard()
    sys.argv = ["flower-superlink", *argv]
    flower_superlink()


def register_keys(public_keys: list[str]) -> list[int]:
    """Register SuperNode public keys (OpenSSH) with the SuperLink that ``$FLWR_HOME``'s
    ``flwr`` config names (over its loopback Control API), in this process; the node ids."""
    from flwr.cli.flower_config import read_superlink_connection
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.cli.utils import init_http_client_from_connection
    from flwr.proto.control_pb2 import RegisterNodeRequest

    client = init_http_client_from_connection(read_superlink_connection(None))
    try:
        ids = []
        for path in public_keys:
            key = try_load_public_key(Path(path))
            request = RegisterNodeRequest(public_key=key, name=Path(path).stem)
            ids.append(int(client.RegisterNode(request=request).node_id))
        return ids
    finally:
        client.close()


if __name__ == "__main__":
    main()
