"""The checks of the networked commands' options (``run``, ``ap``, ``user``, ``token``): each
bad value is one line through :class:`~semalign.common.errors.UsageError` (exit code 2)."""

from __future__ import annotations

import argparse
from pathlib import Path

from semalign.common.errors import TransportError, UsageError

from semalign.commands.options import check_folder


def check_seconds(option: str, value: float | None) -> None:
    """``None`` or a positive, finite number of seconds: the settings record's own check."""
    from semalign.server.serve_settings import check_seconds as positive_seconds

    positive_seconds(option, value)


def check_host_port(option: str, value: str | None) -> None:
    if value is None:
        return
    from semalign.common.contract import check_address

    try:
        check_address(value, what=option)
    except TransportError as exc:
        raise UsageError(str(exc)) from None


def one_line_errors(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Argparse's own errors (unknown option, bad type or choice, missing --users) as one
    line and exit code 2, like every other bad input of these commands."""

    def error(message: str):
        parser.exit(2, f"{parser.prog}: error: {message} (see {parser.prog} --help)\n")

    parser.error = error  # type: ignore[method-assign]
    return parser


def check_file(option: str, value: str | None) -> None:
    if value is None or Path(value).is_file():
        return
    path = Path(value)
    if path.is_dir():
        raise UsageError(f"{option} {value}: is a directory, not a file")
    if path.exists():
        raise UsageError(f"{option} {value}: not a regular file")
    raise UsageError(f"{option} {value}: no such file")


INSECURE_WARNING = (
    "WARNING: --insecure: the alignment protocol and Flower run in plaintext and SuperNodes "
    "are not authenticated; anyone on the network can read the latents' projections and join. "
    "Use it only on a trusted network or for tests."
)


def warn_insecure() -> None:
    import sys

    print(INSECURE_WARNING, file=sys.stderr, flush=True)


def apply_secrets(args: argparse.Namespace, *, side: str) -> None:
    """``--secrets DIR`` (a folder made by ``semalign certs``) fills the TLS options not given
    explicitly; ``--insecure`` excludes both. Without either, TLS is required."""
    import os

    from semalign.deploy.commands.certs import ApSecrets, UserSecrets

    if args.secrets is None and not args.insecure:
        args.secrets = os.environ.get("SEMALIGN_SECRETS") or None

    explicit = [o for o in ("tls_cert", "tls_key", "tls_ca") if getattr(args, o, None)]
    if side == "user" and args.superlink_ca:
        explicit.append("superlink_ca")
    if args.insecure:
        if args.secrets or explicit:
            raise UsageError("--insecure excludes --secrets and the --tls-* options")
        return
    if args.secrets:
        if side == "ap":
            ap = ApSecrets(Path(args.secrets))
            ap.check()
            args.tls_cert = args.tls_cert or str(ap.cert)
            args.tls_key = args.tls_key or str(ap.key)
            args.tls_ca = args.tls_ca or str(ap.ca)
            if args.supernode_keys is None and (ap.root / "supernodes").is_dir():
                args.supernode_keys = str(ap.root / "supernodes")
        else:
            user = UserSecrets(Path(args.secrets))
            user.check()
            args.tls_cert = args.tls_cert or str(user.cert)
            args.tls_key = args.tls_key or str(user.key)
            args.tls_ca = args.tls_ca or str(user.ca)
            args.superlink_ca = args.superlink_ca or str(user.ca)
            args.supernode_key = args.supernode_key or str(user.supernode_key)
    for option in ("tls_cert", "tls_key", "tls_ca"):  # absolute: Flower runs elsewhere
        if getattr(args, option, None):
            setattr(args, option, str(Path(getattr(args, option)).resolve()))


#: What a PEM file of each TLS option must hold (a garbage file otherwise fails deep in gRPC
#: with a misleading "cannot bind" or "connection refused").
PEM_MARKERS = {
    "--tls-cert": "-----BEGIN CERTIFICATE-----",
    "--tls-ca": "-----BEGIN CERTIFICATE-----",
    "--tls-key": "PRIVATE KEY-----",
}


def check_pem(option: str, value: str | None) -> None:
    """``value`` is a readable file holding what ``option`` needs (:data:`PEM_MARKERS`)."""
    check_file(option, value)
    if value is None:
        return
    try:
        text = Path(value).read_bytes()[:1_000_000].decode("ascii", errors="replace")
    except OSError as exc:
        raise UsageError(f"{option} {value}: cannot read it ({exc.strerror})") from None
    if PEM_MARKERS[option] not in text:
        what = "a PEM private key" if option == "--tls-key" else "a PEM certificate"
        raise UsageError(f"{option} {value}: not {what}")


def check_tls(args: argparse.Namespace, *, side: str) -> None:
    apply_secrets(args, side=side)
    for option in ("--tls-cert", "--tls-key", "--tls-ca"):
        check_file(option, getattr(args, option[2:].replace("-", "_")))
    if bool(args.tls_cert) != bool(args.tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    if side == "ap" and args.tls_ca and not args.tls_cert:
        raise UsageError("--tls-ca on the AP (mutual TLS) needs --tls-cert and --tls-key")
    for option in ("--tls-cert", "--tls-key", "--tls-ca"):
        check_pem(option, getattr(args, option[2:].replace("-", "_")))
    if args.insecure:
        warn_insecure()
        return
    hint = "give --secrets DIR (made by `semalign certs`), or --insecure for plaintext"
    if side == "ap":
        if not args.tls_cert:
            raise UsageError(f"TLS is on by default: {hint} (or --tls-cert/--tls-key/--tls-ca)")
        if args.flower and not args.tls_ca:
            raise UsageError("the Flower SuperLink needs the CA too: --tls-ca (or --secrets)")
        if args.flower and args.supernode_keys is None:
            raise UsageError(
                "SuperNode authentication is on: --supernode-keys DIR (users' *.pub; "
                "--secrets has them)"
            )
        if args.supernode_keys is not None and not Path(args.supernode_keys).is_dir():
            raise UsageError(f"--supernode-keys {args.supernode_keys}: no such folder")
    else:
        if not args.tls_ca:
            raise UsageError(f"TLS is on by default: {hint} (or --tls-ca)")
        if args.superlink and not (args.superlink_ca and args.supernode_key):
            raise UsageError(
                "the SuperNode needs --superlink-ca and --supernode-key (or --secrets)"
            )
        check_file("--supernode-key", args.supernode_key)


def check_user_ids(option: str, ids: list[str]) -> None:
    from semalign.common.credentials import check_user_id

    for user_id in ids:
        try:
            check_user_id(user_id)
        except ValueError as exc:
            raise UsageError(f"{option}: {exc}") from None
    if len(set(ids)) != len(ids):
        raise UsageError(f"{option}: a user id is given twice")


def check_token(token: str | None) -> None:
    """A user's token as given (``--token``/``$SEMALIGN_TOKEN``): printable ASCII, <= 256."""
    if token is not None and not (
        0 < len(token) <= 256 and token.isascii() and token.isprintable()
    ):
        raise UsageError("the token must be 1-256 printable ASCII characters")


def read_secret(args: argparse.Namespace, *, required: bool) -> str | None:
    """The AP's secret: ``--secret-file``, else ``$SEMALIGN_SECRET``; None if neither (and not
    ``required``). UsageError with one line if it is missing, unreadable or too short."""
    import os

    from semalign.common.credentials import SECRET_ENV, check_secret, read_secret_file

    try:
        if args.secret_file:
            return read_secret_file(args.secret_file)
        if os.environ.get(SECRET_ENV):
            return check_secret(os.environ[SECRET_ENV].strip())
    except ValueError as exc:
        source = args.secret_file or f"${SECRET_ENV}"
        raise UsageError(f"{source}: {exc}") from None
    if required:
        raise UsageError(f"the AP's secret is needed: --secret-file PATH or ${SECRET_ENV}")
    return None


def check_positive(option: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise UsageError(f"{option} must be at least 1, got {value}")


def check_data(args: argparse.Namespace, encoder_option: str, dest: str | None = None) -> None:
    """``--latents`` (an existing folder) or ``--cache-dir`` (a folder we can write) and, to
    encode into it, a registered encoder in ``encoder_option`` (if given; stored in ``dest``,
    by default the option's name)."""
    if args.latents is not None:
        if not Path(args.latents).is_dir():
            raise UsageError(f"--latents {args.latents}: no such folder")
        return
    check_folder("--cache-dir", args.cache_dir)
    name = getattr(args, dest or encoder_option[2:].replace("-", "_"))
    if name:
        from semalign.encoders import registry

        try:
            registry.get_spec(name)
        except ValueError as exc:
            raise UsageError(f"{encoder_option}: {exc}") from None


def serve_settings(args: argparse.Namespace, invitees: int | list[str], **overrides):
    """The AP's :class:`~semalign.server.serve_settings.ServeSettings` from the options of
    ``run`` or ``ap`` (the one place either command builds it; the record validates itself).

    ``invitees``: how many users, or their ids; ``overrides``: what the command itself decides
    (``run``: the per-address stream limit for users all on this host, later its own TLS)."""
    from semalign.common.contract import TlsFiles
    from semalign.deploy.options.reliability import wait_policy
    from semalign.server.serve_settings import ServeSettings

    tls = None
    if hasattr(args, "tls_cert"):  # ``ap``; ``run`` makes its own once its workdir exists
        tls = TlsFiles(args.tls_cert, args.tls_key, args.tls_ca)
    fields = {
        "invitees": invitees if isinstance(invitees, int) else tuple(invitees),
        "join_timeout": args.join_timeout,
        "policy": wait_policy(args),
        "checkpoint": args.checkpoint,
        "resume": args.resume,
        "progress_file": args.progress_file,
        "listen": args.listen,
        "tls": tls,
        "first_message_timeout": args.first_message_timeout,
        "max_streams_per_address": getattr(args, "max_streams_per_address", None),
        "metrics_listen": args.metrics_listen,
        "health_listen": getattr(args, "health_listen", None),
    }
    return ServeSettings(**{**fields, **overrides})
