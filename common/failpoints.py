"""Failpoints: named places in the protocol where a test makes a real process fail.

A testing tool in the style of fail-rs and FoundationDB's buggify: the chaos tests
(``tests/test_chaos.py``) start real ``semalign ap`` and ``semalign user`` processes with the
environment variable :data:`ENV` set, and the process itself fails at the named phase, exactly
there, every run. Without the variable (every real deployment) :func:`failpoint` returns at
once: one function call and one falsy test per protocol phase, nothing else.

Syntax: comma-separated entries ``NAME[=N]:ACTION[:ARG]``::

    SEMALIGN_FAILPOINTS="user.round=2:exit"                 # this user dies on round 2
    SEMALIGN_FAILPOINTS="ap.final=:stop,user.round:sleep:5"

* ``NAME``: a failpoint, :data:`POINTS` lists them. ``=N`` fires only where the failpoint is
  reached with ``at=N`` (the round index; for ``user.invited`` the user's ordinal); without
  it (or with ``=``) the first time it is reached. Each entry fires at most once per process.
* ``ACTION``: ``exit`` (SIGKILL to itself: like ``kill -9``, no cleanup, no flush),
  ``stop`` (SIGSTOP to itself: the test sends SIGCONT or SIGKILL later), ``sever`` (close
  the transport: the user's gRPC stream, through the handler :func:`on_sever` registered;
  the process goes on), ``sleep:S`` (S seconds, finite, >= 0).

A malformed value is a :class:`~semalign.common.errors.UsageError` before the command starts
(:func:`check`; one line, exit code 2): a typo must not silently test nothing.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from semalign.common.errors import UsageError

log = logging.getLogger(__name__)

#: The environment variable that activates failpoints.
ENV = "SEMALIGN_FAILPOINTS"

#: Every failpoint and where it is, by protocol phase.
POINTS: dict[str, str] = {
    "user.invited": "user (Flower ClientApp): invited, before joining; N is the user's ordinal",
    "user.handshake": "user: the AP's HandshakeAccept arrived (registered, nothing uploaded)",
    "user.round": "user: round N's broadcast arrived, before its upload",
    "user.final": "user: the final broadcast (or the baselines' pilots) arrived, before its Ack",
    "user.evaluation": "user: the evaluation request arrived, before its report",
    "ap.handshake": "AP: every user's handshake done, before round 0",
    "ap.round": "AP: round N done (F, Z, U updated), before round N+1",
    "ap.final": "AP: final broadcast and Acks done, before the evaluation",
    "ap.evaluation": "AP: evaluation reports received, before the session's results",
}
ACTIONS = ("exit", "stop", "sever", "sleep")


@dataclass
class Failpoint:
    """One entry of :data:`ENV`: fire ``action`` at ``name`` (where ``at`` matches, if set)."""

    name: str
    action: str
    at: int | None = None
    seconds: float = 0.0
    fired: bool = False

    def matches(self, name: str, at: int | None) -> bool:
        return not self.fired and self.name == name and (self.at is None or self.at == at)


def parse(spec: str) -> list[Failpoint]:
    """The failpoints of a :data:`ENV` value (ValueError naming the bad entry)."""
    points = []
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        where, _, rest = entry.partition(":")
        name, _, at_text = where.partition("=")
        action, _, arg = rest.partition(":")
        if name not in POINTS:
            raise ValueError(f"{entry!r}: unknown failpoint {name!r} ({', '.join(POINTS)})")
        if action not in ACTIONS:
            raise ValueError(f"{entry!r}: unknown action {action!r} ({', '.join(ACTIONS)})")
        try:
            at = int(at_text) if at_text.strip() else None
            seconds = float(arg) if action == "sleep" else 0.0
        except ValueError:
            raise ValueError(f"{entry!r}: N and S must be numbers") from None
        if not (math.isfinite(seconds) and seconds >= 0) or (arg and action != "sleep"):
            raise ValueError(f"{entry!r}: only sleep takes an argument, finite and >= 0")
        points.append(Failpoint(name, action, at, seconds))
    return points


#: The raw value of :data:`ENV` at import ("" in every real run: then nothing else happens).
_SPEC = os.environ.get(ENV, "").strip()
_points: list[Failpoint] | None = None
_sever: Callable[[], None] | None = None


def configure(spec: str) -> None:
    """Replace the active failpoints (tests in one process; "" turns them off)."""
    global _SPEC, _points
    _SPEC, _points = spec.strip(), None


def on_sever(handler: Callable[[], None] | None) -> None:
    """The transport's way to cut its link (the ``sever`` action calls it)."""
    global _sever
    _sever = handler


def check() -> None:
    """Parse :data:`ENV` now (the CLI calls it first): UsageError if it is malformed."""
    global _points
    if _SPEC and _points is None:
        try:
            _points = parse(_SPEC)
        except ValueError as exc:
            raise UsageError(f"${ENV}: {exc}") from None


def failpoint(name: str, at: int | None = None) -> None:
    """Fail here if :data:`ENV` says so (see the module's docstring); else return at once."""
    if not _SPEC:
        return
    check()
    for point in _points or ():
        if point.matches(name, at):
            point.fired = True
            _fire(point, at)


def _fire(point: Failpoint, at: int | None) -> None:
    where = point.name + ("" if at is None else f"={at}")
    log.warning("failpoint %s: %s (pid %d)", where, point.action, os.getpid())
    for handler in logging.getLogger().handlers:
        handler.flush()
    if point.action == "exit":
        os.kill(os.getpid(), signal.SIGKILL)
        os._exit(137)  # not reached where SIGKILL exists
    elif point.action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    elif point.action == "sever":
        if _sever is None:
            log.warning("failpoint %s: no transport to sever here", where)
        else:
            _sever()
    else:
        time.sleep(point.seconds)
