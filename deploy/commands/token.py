"""``semalign token``: print users' tokens for the AP's secret (give each user only its own)."""

from __future__ import annotations

import argparse


def command(args: argparse.Namespace) -> int:
    """One token per USER_ID on stdout: HMAC-SHA256(secret, user id), hex."""
    from semalign.common.credentials import user_token

    for user_id in args.user_ids:
        print(user_token(args.secret, user_id))
    return 0
