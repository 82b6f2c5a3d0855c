"""The one family of semalign errors.

Every error the library raises on purpose derives from :class:`SemalignError`, so a caller
(the CLI, a transport, a test) can catch the whole family in one ``except``. The CLI maps
:class:`UsageError` (bad input from the person at the keyboard or in a file they named) to one
line on stderr and exit code 2.

Wire and protocol problems share :class:`ProtocolError`: a message that cannot be decoded, has
the wrong shape or kind, or arrives out of order is all the same to a session — the sender is
dropped with the error's text as the reason.

Some classes also derive from the builtin they replaced (``ValueError``, ``RuntimeError``) so
callers written against the builtin keep working.
"""

from __future__ import annotations


class SemalignError(Exception):
    """Base of every error semalign raises on purpose."""


class UsageError(SemalignError):
    """Bad input (an option, a file, a name): reported as one line, exit code 2."""


class ProtocolError(SemalignError):
    """A message that breaks the alignment protocol: undecodable, malformed, out of order or
    inconsistent with the handshake. The session drops its sender and goes on."""


class LinkError(SemalignError, RuntimeError):
    """A user's link failed: timeout, disconnect, or a message that could not be delivered."""


class LinkTimeout(LinkError):
    """No reply from the user within the time the driver allowed."""


class LinkClosed(LinkError):
    """The user's stream ended or broke (it may come back: see :class:`LinkRejoined`)."""


class LinkRejoined(SemalignError):
    """The user came back on a new stream with a fresh handshake (``handshake``: its bytes);
    the driver decides whether to take it back (:meth:`SessionDriver._rejoin`)."""

    def __init__(self, handshake: bytes) -> None:
        super().__init__("the user rejoined on a new stream")
        self.handshake = handshake


class CheckpointError(SemalignError, ValueError):
    """A checkpoint that cannot be trusted: unreadable, truncated, another format version,
    a checksum or configuration that does not match. It is refused, never half-used."""


class TransportError(SemalignError, RuntimeError):
    """A connection problem, reported as one line (bad address, refused, TLS, timeout)."""


class NoUsersError(SemalignError, RuntimeError):
    """No user completed the handshake of a networked session."""


class LatentsError(SemalignError, ValueError):
    """A latent cache is missing, malformed or inconsistent."""


class WhiteningError(SemalignError, ValueError):
    """Pilot statistics that cannot be whitened (too few pilots, non-finite values)."""


class DatasetUnavailable(SemalignError, RuntimeError):
    """A dataset cannot be loaded here (offline, or a local folder missing)."""


class WeightsUnavailable(SemalignError, RuntimeError):
    """Pretrained weights cannot be loaded here (offline and not in a local cache)."""


class SweepError(SemalignError, ValueError):
    """A bad sweep grid or a results table that cannot be used."""


class LaunchError(SemalignError, RuntimeError):
    """A process of the local deployment failed to start or died."""
