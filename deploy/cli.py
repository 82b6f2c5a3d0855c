"""The command line of the networked system: the parsers of ``semalign run``, ``ap``, ``user``,
``certs``, ``token`` and ``health``.

Argparse only: every option, its help and its validation (one line, exit code 2, through
:class:`~semalign.common.errors.UsageError`) before the entry point runs. The entry points are
the modules of :mod:`semalign.deploy.commands`, one per command, imported when their command
runs so ``semalign --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
from collections.abc import Callable

from semalign.common.errors import UsageError
from semalign.common.network_defaults import (
    AP_LISTEN,
    CONNECT_TIMEOUT,
    LOCAL_LISTEN,
    MAX_STREAMS_PER_ADDRESS,
    SUPERLINK_LISTEN,
    SUPERNODE_RUNTIME_PORT,
)
from semalign.deploy.options import observability, reliability
from semalign.deploy.options.checks import (
    check_data,
    check_file,
    check_host_port,
    check_positive,
    check_seconds,
    check_tls,
    check_token,
    check_user_ids,
    one_line_errors,
    read_secret,
    warn_insecure,
)
from semalign.deploy.options.groups import (
    add_ap_side_arguments,
    add_output_arguments,
    add_tls_arguments,
)

from semalign.commands.config_files import apply_config_file
from semalign.commands.options import (
    HelpFormatter,
    add_data_arguments,
    add_expected_users_arguments,
    add_users_argument,
    add_verbosity_arguments,
    check_folder,
)
from semalign.commands.tracking_options import check_tracking

#: The ``--config`` keys besides the config fields, of ``run`` and of ``ap``.
RUN_SCENARIO = ("seeds", "ap_encoder", "user_encoders", "num_users", "latents", "dataset")
AP_SCENARIO = ("seeds", "ap_encoder", "num_users", "user_ids", "latents", "dataset")


def check_ap_side(args: argparse.Namespace, scenario: tuple[str, ...]) -> None:
    """Options shared by ``run`` and ``ap`` (a ``--config`` file read first)."""
    from semalign.commands.options import check_output, config_from_args

    apply_config_file(args, scenario)
    # the alignment options, before anything else; the command uses this config
    args.alignment_config = config_from_args(args)
    check_tracking(args)
    check_data(args, "--ap-encoder", "ap")
    check_seconds("--join-timeout", args.join_timeout)
    check_seconds("--reply-timeout", args.reply_timeout)
    check_seconds("--first-message-timeout", args.first_message_timeout)
    check_host_port("--listen address", args.listen)
    reliability.check_ap(args)
    if args.progress_file:
        check_output(args.progress_file)
    observability.check_metrics(args)


def validate_run(args: argparse.Namespace) -> None:
    check_ap_side(args, RUN_SCENARIO)
    check_folder("--workdir", args.workdir)
    if args.insecure:
        warn_insecure()


def validate_ap(args: argparse.Namespace) -> None:
    from semalign.deploy.commands.ap import expected_users

    check_ap_side(args, AP_SCENARIO)
    check_host_port("--advertise address", args.advertise)
    check_host_port("--superlink-listen address", args.superlink_listen)
    observability.check_health(args)
    if args.users is None:
        raise UsageError(
            "the users to wait for are required: --users, now spelled --num-users N or "
            "--user-ids IDS"
        )
    expected = expected_users(args.users)
    if not isinstance(expected, int):
        check_user_ids("--user-ids", expected)
    check_positive("--max-streams-per-address", args.max_streams_per_address)
    check_folder("--workdir", args.workdir)
    check_file("--secret-file", args.secret_file)
    args.secret = read_secret(args, required=False)
    check_tls(args, side="ap")  # last: every other option is reported first


def validate_token(args: argparse.Namespace) -> None:
    check_file("--secret-file", args.secret_file)
    args.secret = read_secret(args, required=True)
    check_user_ids("USER_ID", args.user_ids)


def validate_user(args: argparse.Namespace) -> None:

    from semalign.common.contract import TOKEN_ENV

    if args.ap is not None:
        check_host_port("AP address", args.ap)
    else:
        check_host_port("--superlink address", args.superlink)
    check_user_ids("--user-id", [args.user_id])
    if args.ap is not None:
        args.token = args.token or os.environ.get(TOKEN_ENV) or None
        if not args.token:
            raise UsageError(f"this user's token is needed: --token or ${TOKEN_ENV}")
        check_token(args.token)
    if not args.encoder.strip():
        raise UsageError("--encoder is empty")
    if args.ordinal is not None and args.ordinal < 0:
        raise UsageError(f"--ordinal must be 0 or more, got {args.ordinal}")
    if args.antennas_rx is not None and args.antennas_rx < 1:
        raise UsageError(f"--antennas-rx must be at least 1, got {args.antennas_rx}")
    if args.snr_db is not None and not math.isfinite(args.snr_db):
        raise UsageError(f"--snr-db must be a finite number, got {args.snr_db}")
    if not 1 <= args.runtime_port <= 65535:
        raise UsageError(f"--runtime-port must be in 1-65535, got {args.runtime_port}")
    check_seconds("--connect-timeout", args.connect_timeout)
    reliability.check_user(args)
    check_folder("--flwr-home", args.flwr_home)
    check_data(args, "--encoder")
    check_tls(args, side="user")
    check_file("--superlink-ca", args.superlink_ca)


def entry(module: str, validate: Callable[[argparse.Namespace], None]):
    """A command's ``func``: validate the options, then run ``module.command`` (a module of
    :mod:`semalign.deploy.commands`)."""

    def func(args: argparse.Namespace) -> int:
        validate(args)
        return importlib.import_module(module).command(args)

    return func


def register_run(subparsers) -> None:
    run = subparsers.add_parser(
        "run",
        help="AP and one process per user on loopback, over gRPC (Flower supervises users)",
        description="The networked system on this machine: the AP's gRPC alignment service "
        "(plus a Flower SuperLink) and one process per user (a Flower SuperNode whose ClientApp "
        "runs the user's side over one gRPC stream). Same options and results as `simulate`, "
        "plus wire figures per round.",
        epilog=reliability.EXIT_EPILOG,
        formatter_class=HelpFormatter,
    )
    add_ap_side_arguments(run)
    add_users_argument(run)
    run.add_argument(
        "--flower",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Flower SuperLink/SuperNodes supervise the users (--no-flower: plain processes)",
    )
    run.add_argument(
        "--listen", default=LOCAL_LISTEN, help="alignment service address (port 0: any free)"
    )
    run.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext and no SuperNode authentication (default: a CA and certificates are "
        "made for this run in the workdir: TLS everywhere, mutual on the alignment service)",
    )
    add_output_arguments(run, "results/run.json")
    run.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep the workdir at the end (its secrets: CA key, certificates, AP secret); "
        "without it a temporary workdir is removed and a --workdir loses its secrets",
    )
    one_line_errors(run)
    run.set_defaults(func=entry("semalign.deploy.commands.run", validate_run))


def register_ap(subparsers) -> None:
    ap = subparsers.add_parser(
        "ap",
        help="the AP of a deployment: gRPC alignment service (and a Flower SuperLink)",
        description="Serve the alignment protocol to users on other hosts.",
        epilog=reliability.EXIT_EPILOG,
        formatter_class=HelpFormatter,
    )
    add_ap_side_arguments(ap)
    add_expected_users_arguments(ap)
    ap.add_argument("--listen", default=AP_LISTEN, help="alignment service listen address")
    ap.add_argument(
        "--advertise",
        help="the service address as users reach it (default: --listen, with this host's name "
        "for 0.0.0.0)",
    )
    observability.add_health_argument(ap)
    creds = ap.add_argument_group("credentials and limits")
    creds.add_argument(
        "--secret-file",
        help="file holding the AP's secret, from which each user's token is derived "
        "(`semalign token USER_ID`); default: $SEMALIGN_SECRET, else a new secret written to "
        "WORKDIR/ap-secret (mode 0600)",
    )
    creds.add_argument(
        "--max-streams-per-address",
        type=int,
        default=MAX_STREAMS_PER_ADDRESS,
        help="open streams allowed from one peer address (users behind one NAT share it)",
    )
    add_tls_arguments(ap, "ap")
    flower = ap.add_argument_group("Flower")
    flower.add_argument(
        "--flower",
        action="store_true",
        help="also run a Flower SuperLink and invite the users' SuperNodes through it",
    )
    flower.add_argument(
        "--superlink-listen",
        default=SUPERLINK_LISTEN,
        help="Flower SuperLink address (with --flower; only its Fleet API answers other hosts)",
    )
    flower.add_argument(
        "--supernode-keys",
        help="folder of the users' SuperNode public keys (*.pub), registered with the "
        "SuperLink (default: SECRETS/supernodes)",
    )
    add_output_arguments(ap, "results/ap.json")
    one_line_errors(ap)
    ap.set_defaults(func=entry("semalign.deploy.commands.ap", validate_ap))


def register_user(subparsers) -> None:
    user = subparsers.add_parser(
        "user",
        help="one user of a deployment (Flower SuperNode, or direct gRPC client)",
        description="A user process: its own encoder and private latents. With --superlink it "
        "runs a Flower SuperNode whose ClientApp joins the AP named in Flower's invitation; "
        "with --ap it connects to the AP's alignment service directly.",
        epilog=reliability.USER_EXIT_EPILOG,
        formatter_class=HelpFormatter,
    )
    where = user.add_mutually_exclusive_group(required=True)
    where.add_argument("--ap", help="the AP's alignment service HOST:PORT (direct gRPC)")
    where.add_argument("--superlink", help="the Flower SuperLink HOST:PORT (Flower deployment)")
    user.add_argument("--user-id", required=True, help="unique user id, e.g. user3")
    user.add_argument(
        "--ordinal",
        type=int,
        help="0-based position (with the seed it seeds the emulated channel; default: the "
        "user id's trailing number - 1)",
    )
    user.add_argument("--encoder", required=True, help="this user's encoder (timm name)")
    add_data_arguments(user)
    user.add_argument("--antennas-rx", type=int, help="override N_R offered by the AP")
    user.add_argument("--snr-db", type=float, help="override the SNR offered by the AP")
    user.add_argument(
        "--token",
        help="this user's own token for --ap, from the AP's operator (`semalign token USER_ID`; "
        "default: $SEMALIGN_TOKEN); with --superlink Flower's invitation brings it",
    )
    user.add_argument(
        "--connect-timeout",
        type=float,
        default=CONNECT_TIMEOUT,
        help="seconds to keep trying the AP",
    )
    reliability.add_user_arguments(user)
    add_tls_arguments(user, "user")
    flower = user.add_argument_group("Flower (with --superlink)")
    flower.add_argument("--superlink-ca", help="CA certificate of the SuperLink (default: SECRETS)")
    flower.add_argument(
        "--supernode-key",
        help="this SuperNode's authentication key (EC, OpenSSH format; default: SECRETS)",
    )
    flower.add_argument(
        "--runtime-port",
        type=int,
        default=SUPERNODE_RUNTIME_PORT,
        help="the SuperNode's local runtime API port",
    )
    flower.add_argument("--flwr-home", help="FLWR_HOME of the SuperNode (default: per user id)")
    add_verbosity_arguments(user)
    one_line_errors(user)
    user.set_defaults(func=entry("semalign.deploy.commands.user", validate_user))


def register_certs(subparsers) -> None:
    certs = subparsers.add_parser(
        "certs",
        help="make a CA, the AP's and users' certificates and SuperNode keys",
        description="Make (or complete) a secrets folder: a CA, the AP's server certificate "
        "(compose service name 'ap', the given --name values, localhost, 127.0.0.1), a client "
        "certificate and a Flower SuperNode key pair per user; one sub-folder per host (mount "
        "only that one there). Existing files are kept.",
        formatter_class=HelpFormatter,
    )
    certs.add_argument("--out", default="secrets", help="the secrets folder")
    add_expected_users_arguments(certs, "to make secrets for", default="10")
    certs.add_argument(
        "--name",
        action="append",
        help="host name or IP address of the AP in its certificate (repeat, or comma-separated; "
        "default: ap)",
    )
    certs.add_argument("--days", type=int, default=365, help="validity of the certificates")
    certs.add_argument(
        "--owner", help="UID[:GID] to own the files (the image runs as 1000), e.g. 1000"
    )
    certs.add_argument("-q", "--quiet", action="store_true", help="do not list the files")

    def validate(args: argparse.Namespace) -> None:
        from semalign.deploy.commands.certs import user_ids

        if args.days < 1:
            raise UsageError(f"--days must be at least 1, got {args.days}")
        ids = user_ids(args.users)
        if not ids:
            raise UsageError("--user-ids must name at least one user")
        check_user_ids("--user-ids", ids)
        check_folder("--out", args.out)

    certs.set_defaults(func=entry("semalign.deploy.commands.certs", validate))


def register_token(subparsers) -> None:
    token = subparsers.add_parser(
        "token",
        help="print users' tokens for the AP's secret (give each user only its own)",
        description="Print the token of each USER_ID, one per line in the order given: "
        "HMAC-SHA256(secret, user id), hex. A token opens only its own user id at the AP. "
        "Example: SEMALIGN_TOKEN=$(semalign token user3 --secret-file ap-secret) "
        "semalign user --ap HOST:PORT --user-id user3 ...",
        formatter_class=HelpFormatter,
    )
    token.add_argument("user_ids", nargs="+", metavar="USER_ID", help="user ids, e.g. user3")
    token.add_argument(
        "--secret-file", help="file holding the AP's secret (default: $SEMALIGN_SECRET)"
    )
    one_line_errors(token)
    token.set_defaults(func=entry("semalign.deploy.commands.token", validate_token))


def register(subparsers) -> None:
    register_certs(subparsers)
    register_run(subparsers)
    register_ap(subparsers)
    register_user(subparsers)
    register_token(subparsers)
    from semalign.deploy.commands import health

    health.register(subparsers)
