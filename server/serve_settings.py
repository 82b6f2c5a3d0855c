"""How the AP serves a networked run: one typed record, validated once when it is built.

:class:`ServeSettings` holds the network policy of ``semalign run`` and ``semalign ap`` (and of
any caller of :func:`semalign.server.network.serve_sessions`): who is invited, how long the
AP waits for them (join timeout, :class:`~semalign.server.session.WaitPolicy`), where the run
is saved after every round and whether it resumes, where progress goes, and the listeners
(service address, TLS files, metrics and health endpoints). Both commands build it from their
options with one function (:func:`semalign.deploy.options.checks.serve_settings`), so their
serve paths cannot drift; nothing below them takes these values one by one.

A bad value raises :class:`~semalign.common.errors.UsageError` with one line naming the
command-line option that sets it (exit code 2 through the CLI).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from semalign.common.contract import TlsFiles
from semalign.common.errors import UsageError
from semalign.common.network_defaults import LOCAL_LISTEN
from semalign.server.session import WaitPolicy

#: What ``--stragglers`` may say (:class:`~semalign.server.session.WaitPolicy`).
STRAGGLER_CHOICES = ("drop", "wait")


def check_seconds(option: str, value: float | None) -> None:
    """``value`` is ``None`` or a positive, finite number of seconds (UsageError if not)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise UsageError(f"{option} must be a positive number of seconds, got {value:g}")


def check_grace(value: float) -> None:
    """A rejoin grace: 0 or a positive, finite number of seconds (UsageError if not)."""
    if not (math.isfinite(value) and value >= 0):
        raise UsageError(f"--rejoin-grace must be 0 or a positive number of seconds, got {value:g}")


def check_policy(policy: WaitPolicy) -> None:
    """Every field of the driver's wait policy (UsageError with one line if one is bad)."""
    check_seconds("--reply-timeout", policy.reply_timeout)
    check_seconds("--round-deadline", policy.round_deadline)
    if policy.stragglers not in STRAGGLER_CHOICES:
        raise UsageError(f"--stragglers must be drop or wait, got {policy.stragglers!r}")
    check_grace(policy.rejoin_grace)


def check_invitees(invitees: int | tuple[str, ...]) -> None:
    """How many users to wait for (at least 1), or their distinct ids (at least one)."""
    count = invitees if isinstance(invitees, int) else len(invitees)
    if count < 1:
        raise UsageError("--users must name at least one user")
    if not isinstance(invitees, int) and len(set(invitees)) != len(invitees):
        raise UsageError("--user-ids: a user id is given twice")


@dataclass(frozen=True)
class ServeSettings:
    """The AP's network policy for one run.

    Attributes:
        invitees: how many users to wait for, or their user ids (in order).
        join_timeout: seconds the first session waits for its users (``None``: forever).
        policy: how long the driver waits for replies, stragglers and rejoins.
        checkpoint: where the run is saved after every handshake, round and seed (``None``:
            not saved); ``resume``: continue the run saved there.
        progress_file: where the session's progress goes for monitors (``None``: nowhere).
        listen: the alignment service's ``HOST:PORT``; ``tls``: its PEM files (``None``:
            plaintext).
        first_message_timeout: seconds a new stream may take to send its first message
            (``None``: the service's default).
        max_streams_per_address: streams one peer address may hold (``None``: the default).
        metrics_listen / health_listen: the operator endpoints' ``HOST:PORT`` (``None``: off).
    """

    invitees: int | tuple[str, ...]
    join_timeout: float | None = None
    policy: WaitPolicy = field(default_factory=WaitPolicy)
    checkpoint: str | None = None
    resume: bool = False
    progress_file: str | None = None
    listen: str = LOCAL_LISTEN
    tls: TlsFiles | None = None
    first_message_timeout: float | None = None
    max_streams_per_address: int | None = None
    metrics_listen: str | None = None
    health_listen: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.invitees, int):
            object.__setattr__(self, "invitees", tuple(self.invitees))
        check_invitees(self.invitees)
        check_seconds("--join-timeout", self.join_timeout)
        check_policy(self.policy)
        check_seconds("--first-message-timeout", self.first_message_timeout)
        if self.max_streams_per_address is not None and self.max_streams_per_address < 1:
            raise UsageError(
                f"--max-streams-per-address must be at least 1, got {self.max_streams_per_address}"
            )
        if self.resume and not self.checkpoint:
            raise UsageError("--resume needs a --checkpoint to continue")

    @property
    def users(self) -> int:
        """How many users are invited."""
        return self.invitees if isinstance(self.invitees, int) else len(self.invitees)

    @property
    def expected(self) -> int | list[str]:
        """The invitees as the lobby and the checkpoint key take them (a count, or a list)."""
        return self.invitees if isinstance(self.invitees, int) else list(self.invitees)
