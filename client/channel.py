"""A user's gRPC channel to the AP: opened to come back quickly, closed within a limit.

The channel outlives the user's streams (one a session, and one more for each comeback) and
holds what gRPC keeps per connection: the subchannel and its reconnect backoff. Closing it
cancels what is still open and, for the process's last channel, tears gRPC core down
(``grpc_shutdown``) in the closing thread: :func:`close_channel` bounds that wait, and
``semalign user``, whose process ends with its sessions, skips it (``deploy/commands/user.py``).
"""

from __future__ import annotations

import logging
import sys
import threading
import traceback

import grpc
from semalign.common.contract import MAX_MESSAGE_BYTES, TlsFiles, channel_options, check_address

log = logging.getLogger(__name__)

#: Seconds :func:`close_channel` waits for gRPC's close (a limit only: it takes milliseconds;
#: gRPC core's own teardown gives its I/O objects up to 10 s).
CLOSE_LIMIT_S = 15.0


def open_channel(
    address: str, *, tls: TlsFiles | None = None, max_message_bytes: int = MAX_MESSAGE_BYTES
) -> grpc.Channel:
    """A channel to the AP at ``address`` (TLS when ``tls`` is enabled) that reconnects within
    0.2-2 s once the AP listens again."""
    check_address(address, what="AP address")
    options = channel_options(max_message_bytes) + [
        # come back quickly once the AP listens again (gRPC's default backoff reaches 120 s)
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]
    if tls is not None and tls.enabled:
        return grpc.secure_channel(address, tls.channel_credentials(), options=options)
    return grpc.insecure_channel(address, options=options)


def close_channel(channel: grpc.Channel, limit_s: float = CLOSE_LIMIT_S) -> bool:
    """Close ``channel``, waiting at most ``limit_s`` seconds; False, with a warning naming the
    closing thread and its stack, if gRPC's close has not returned by then.

    The close runs in a daemon thread, so a close that never returns cannot keep the process
    alive. (One stuck in C code that holds the GIL stops every Python thread, the waiting one
    included: only ending the process ends that.)
    """
    closer = threading.Thread(target=channel.close, name="semalign-channel-close", daemon=True)
    closer.start()
    closer.join(limit_s)
    if not closer.is_alive():
        return True
    frame = sys._current_frames().get(closer.ident)
    stack = "".join(traceback.format_stack(frame)).rstrip() if frame else "  (no Python frame)"
    log.warning(
        "thread %s: gRPC's channel close did not return within %g s; left to itself:\n%s",
        closer.name,
        limit_s,
        stack,
    )
    return False
