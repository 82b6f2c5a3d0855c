"""Where and with what a run was made: semalign's version, the git commit, the start time, the host.

:func:`run_provenance` is the one block every record of a run carries (a sweep table's row, a
tracked run's tags, later a results JSON). It depends on the standard library only and never
fails: a source tree that is not a git checkout, or a machine without git, gives
``git_commit=None``.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

#: The keys of :func:`run_provenance`, in the order the results table stores them.
PROVENANCE_KEYS: tuple[str, ...] = ("semalign_version", "git_commit", "started_at", "host")

#: The source tree's root (``<root>/semalign/experiments/provenance.py``).
_SOURCE_ROOT = Path(__file__).resolve().parents[2]


def run_provenance(started: datetime | None = None) -> dict[str, Any]:
    """The provenance block of a run starting now (or at ``started``).

    Returns:
        ``semalign_version``: this package's version; ``git_commit``: ``git rev-parse HEAD`` of
        the source tree semalign runs from, None when it is not a git checkout or git is not
        there; ``started_at``: UTC, ISO 8601 to the second; ``host``: this machine's name.
    """
    when = (started or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return {
        "semalign_version": semalign_version(),
        "git_commit": git_commit(),
        "started_at": when.isoformat(timespec="seconds"),
        "host": socket.gethostname(),
    }


def semalign_version() -> str:
    """The version of the semalign that is running (the package's ``__version__``)."""
    from semalign import __version__

    return __version__


@functools.cache
def git_commit(root: str | os.PathLike[str] | None = None) -> str | None:
    """``git rev-parse HEAD`` of the source tree ``root`` (default: semalign's), read-only.

    Only a tree with its own ``.git`` (a folder, or a file for a worktree) is asked, so an
    installed copy inside some other repository does not report that repository's commit.
    None when there is no checkout, no git, or git fails; cached per process.
    """
    folder = Path(root) if root is not None else _SOURCE_ROOT
    if not (folder / ".git").exists():
        return None
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            env=env,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    if done.returncode != 0 or len(commit) < 40 or any(c not in "0123456789abcdef" for c in commit):
        return None
    return commit
