"""``semalign health`` (or ``python -m semalign.deploy.commands.health``): ask an AP's gRPC health
service (``grpc.health.v1.Health/Check``) whether it serves.

Exit code 0 when the answer is SERVING, 1 otherwise (NOT_SERVING, an unknown service name, no
answer within ``--timeout``, a refused or failed connection), 2 on bad usage; one line on
stdout (the status) or stderr (why there is none). Usable as a docker-compose healthcheck
``test:``. TLS as the users connect: ``--secrets DIR`` (a folder made by ``semalign certs``: its
``ca.pem`` and, if there, the client certificate for a mutual-TLS AP), the ``--tls-*`` files,
or ``--insecure`` (plaintext: ``semalign ap --health-listen``, or an AP run with
``--insecure``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from semalign.common.contract import SERVICE, TlsFiles, TransportError, check_address
from semalign.common.errors import UsageError
from semalign.common.network_defaults import HEALTH_CHECK_TIMEOUT

#: Exit codes: serving, not serving (or no answer), bad usage.
EXIT_SERVING, EXIT_NOT_SERVING, EXIT_USAGE = 0, 1, 2
DESCRIPTION = (
    "Ask an AP's gRPC health service whether it serves: exit 0 SERVING, 1 not serving or no "
    "answer, 2 bad usage (a docker-compose healthcheck). The AP answers on its --listen port "
    "(with that port's TLS) and, in plaintext, on its --health-listen address."
)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--address", required=True, help="the AP's HOST:PORT")
    parser.add_argument(
        "--service",
        default="",
        help=f'the service name to ask about: "" (default: the server) or {SERVICE}',
    )
    parser.add_argument(
        "--timeout", type=float, default=HEALTH_CHECK_TIMEOUT, help="seconds to wait for it"
    )
    tls = parser.add_argument_group("TLS (on by default)")
    tls.add_argument(
        "--secrets",
        help="a folder made by `semalign certs` (a user's: ca.pem, client.pem, client.key)",
    )
    tls.add_argument("--tls-ca", help="CA certificate to verify the AP (PEM)")
    tls.add_argument("--tls-cert", help="client certificate for a mutual-TLS AP (PEM)")
    tls.add_argument("--tls-key", help="its private key (PEM)")
    tls.add_argument("--insecure", action="store_true", help="plaintext")
    return parser


def tls_files(args: argparse.Namespace) -> TlsFiles | None:
    """The probe's TLS files from the options (``None``: plaintext); UsageError if they do not
    fit together or a file is missing or not PEM."""
    given = [args.tls_ca, args.tls_cert, args.tls_key, args.secrets]
    if args.insecure:
        if any(given):
            raise UsageError("--insecure excludes --secrets and the --tls-* options")
        return None
    if args.secrets:
        root = Path(args.secrets)
        client = (root / "client.pem", root / "client.key")
        args.tls_ca = args.tls_ca or str(root / "ca.pem")
        if all(path.is_file() for path in client) and not (args.tls_cert or args.tls_key):
            args.tls_cert, args.tls_key = (str(path) for path in client)
    if not args.tls_ca:
        raise UsageError("TLS is on by default: --secrets DIR or --tls-ca FILE, or --insecure")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    from semalign.deploy.options.checks import check_pem

    for option in ("--tls-ca", "--tls-cert", "--tls-key"):
        check_pem(option, getattr(args, option[2:].replace("-", "_")))
    return TlsFiles(args.tls_cert, args.tls_key, args.tls_ca)


def validate(args: argparse.Namespace) -> TlsFiles | None:
    try:
        check_address(args.address, what="--address")
    except TransportError as exc:
        raise UsageError(str(exc)) from None
    if not (args.timeout > 0 and args.timeout < float("inf")):
        raise UsageError(f"--timeout must be a positive number of seconds, got {args.timeout:g}")
    return tls_files(args)


def check_health(address: str, service: str, tls: TlsFiles | None, timeout: float) -> str:
    """The status name the health service at ``address`` gives ``service`` (``SERVING``,
    ``NOT_SERVING``, ``SERVICE_UNKNOWN``); TransportError with one line if there is no answer."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    channel = (
        grpc.secure_channel(address, tls.channel_credentials())
        if tls is not None
        else grpc.insecure_channel(address)
    )
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return "SERVICE_UNKNOWN"
        details = " ".join(str(exc.details() or "").split())[:300]
        raise TransportError(f"no answer from {address}: {exc.code().name}: {details}") from None
    finally:
        channel.close()
    names = health_pb2.HealthCheckResponse.ServingStatus
    return names.Name(reply.status) if reply.status in names.values() else f"{reply.status}?"


def command(args: argparse.Namespace) -> int:
    """Validate, ask, print one line; the exit code."""
    tls = validate(args)
    try:
        status = check_health(args.address, args.service, tls, args.timeout)
    except TransportError as exc:
        print(f"semalign health: {exc}", file=sys.stderr)
        return EXIT_NOT_SERVING
    print(status)
    return EXIT_SERVING if status == "SERVING" else EXIT_NOT_SERVING


def register(subparsers) -> None:
    from semalign.deploy.options.checks import one_line_errors

    parser = subparsers.add_parser(
        "health", help="ask an AP's gRPC health service (exit 0: serving)", description=DESCRIPTION
    )
    one_line_errors(add_arguments(parser))
    parser.set_defaults(func=command)


def main(argv: list[str] | None = None) -> int:
    """``python -m semalign.deploy.commands.health``: without the CLI's other imports."""
    parser = argparse.ArgumentParser(prog="semalign health", description=DESCRIPTION)
    parser.error = lambda message: parser.exit(  # type: ignore[method-assign]
        EXIT_USAGE, f"{parser.prog}: error: {message}\n"
    )
    args = add_arguments(parser).parse_args(argv)
    try:
        return command(args)
    except UsageError as exc:
        print(f"semalign health: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
