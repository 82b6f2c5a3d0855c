"""The option groups several networked commands share: TLS (``run``, ``ap``, ``user``), the AP
side's (``run`` and ``ap``: config file, data, AP encoder, alignment, timeouts, reliability,
tracking, metrics) and the output options (``run``, ``user``).
"""

from __future__ import annotations

import argparse
import os

from semalign.common.network_defaults import FIRST_MESSAGE_TIMEOUT, JOIN_TIMEOUT, REPLY_TIMEOUT
from semalign.deploy.options import observability, reliability

from semalign.commands.options import (
    add_alignment_arguments,
    add_ap_encoder_argument,
    add_config_argument,
    add_data_arguments,
    add_verbosity_arguments,
)
from semalign.commands.tracking_options import add_tracking_arguments


def add_tls_arguments(parser: argparse.ArgumentParser, side: str) -> None:
    group = parser.add_argument_group(
        "security (TLS on by default)",
        "TLS on the alignment service (mutual: users hold client certificates) and on Flower, "
        "SuperNode authentication on. --secrets names this host's folder made by "
        "`semalign certs`; the --tls-* options override single files.",
    )
    group.add_argument(
        "--secrets",
        default=None,
        help=f"this {'AP' if side == 'ap' else 'user'}'s secrets folder, e.g. secrets/"
        + ("ap" if side == "ap" else "user3")
        + " (default: $SEMALIGN_SECRETS)",
    )
    group.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext, no SuperNode authentication (prints a warning)",
    )
    own = "the AP's" if side == "ap" else "this user's client"
    group.add_argument("--tls-cert", help=f"{own} certificate (PEM)")
    group.add_argument("--tls-key", help=f"{own} private key (PEM)")
    group.add_argument(
        "--tls-ca",
        help="CA certificate to verify users (mutual TLS)"
        if side == "ap"
        else "CA certificate to verify the AP",
    )


def add_ap_side_arguments(parser: argparse.ArgumentParser) -> None:
    """The options ``run`` and ``ap`` share: a config file, data, AP encoder, alignment,
    timeouts."""
    add_config_argument(parser)
    add_ap_encoder_argument(parser)
    add_data_arguments(parser)
    add_alignment_arguments(parser.add_argument_group("alignment"))  # type: ignore[arg-type]
    parser.add_argument(
        "--progress-file",
        metavar="PATH",
        help="write the session's progress here (JSON, replaced atomically at most twice a "
        "second: seed, round, the users in the session and those dropped), for monitors",
    )
    group = parser.add_argument_group("timeouts")
    group.add_argument(
        "--join-timeout",
        type=float,
        default=JOIN_TIMEOUT,
        help="seconds to wait for users to join a session",
    )
    group.add_argument(
        "--reply-timeout",
        type=float,
        default=REPLY_TIMEOUT,
        help="seconds to wait for a user's reply before dropping it",
    )
    group.add_argument(
        "--first-message-timeout",
        type=float,
        default=FIRST_MESSAGE_TIMEOUT,
        help="seconds an authenticated stream has to send its handshake",
    )
    reliability.add_ap_arguments(parser)
    add_tracking_arguments(parser, "each seed (its rounds as they end)", "the command: run or ap")
    observability.add_metrics_argument(parser)


def add_output_arguments(parser: argparse.ArgumentParser, out: str) -> None:
    parser.add_argument(
        "--workdir",
        type=os.path.abspath,  # Flower's homes under it are read from other working folders
        help="logs and Flower homes (default: a new temp dir)",
    )
    parser.add_argument(
        "--out", default=out, help="write the results JSON here (checked before any work)"
    )
    add_verbosity_arguments(parser)
