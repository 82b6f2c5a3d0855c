"""Where and with what a run was made: the one ``provenance`` block of every results file.

:func:`provenance_block` builds it, for ``semalign simulate``, ``semalign run``, ``semalign ap``
(the results JSON's ``provenance``) and every sweep run (its rows):

* ``semalign_version``; ``git_commit`` (``git rev-parse HEAD`` of the source tree semalign runs
  from) and ``git_dirty`` (tracked files changed since that commit), both None when the tree is
  not a git checkout or git is not there, never an error;
* ``started_at`` (UTC, ISO 8601 to the second), ``host``, ``command_line`` (``sys.argv``);
* ``latents_id``: the content hash of the latent cache entries the run used
  (:func:`latents_id`, the sweep's cell-key fingerprint; version 2 since each file is hashed
  once, so a results file written before holds the version-1 value of the same latents), None
  when not given;
* ``python`` and ``libraries``: the versions of numpy, scipy, torch, timm, flwr and grpcio
  (None for one that is not installed: a deployment image may run without torch). Read from
  the installed distributions' metadata, so nothing heavy is imported.

:data:`PROVENANCE_KEYS` are the block's keys a sweep table stores as columns; the sweep rows
carry the whole block besides (``row["provenance"]``). A results file holds it as a
:class:`~semalign.common.records.Provenance` (``RunResult.with_provenance``). The standard
library only (the latents hash aside), and it never fails.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

#: The block's keys a results table stores as columns (schema 2 on), in the table's order.
PROVENANCE_KEYS: tuple[str, ...] = ("semalign_version", "git_commit", "started_at", "host")

#: The distributions whose versions the block records.
LIBRARIES: tuple[str, ...] = ("numpy", "scipy", "torch", "timm", "flwr", "grpcio")

#: The source tree's root (``<root>/semalign/experiments/provenance.py``).
_SOURCE_ROOT = Path(__file__).resolve().parents[2]


def provenance_block(
    started: datetime | None = None,
    *,
    latents_id: str | None = None,
    argv: list[str] | None = None,
) -> dict[str, Any]:
    """The provenance block of a run starting now (or at ``started``).

    Args:
        started: when the run started (default: now); stored in UTC.
        latents_id: the content hash of the latents it used (:func:`latents_id`).
        argv: its command line (default: ``sys.argv``).
    """
    when = (started or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return {
        "semalign_version": semalign_version(),
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "started_at": when.isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "command_line": [str(a) for a in (sys.argv if argv is None else argv)],
        "latents_id": latents_id,
        "python": platform.python_version(),
        "libraries": library_versions(),
    }


def run_provenance(started: datetime | None = None) -> dict[str, Any]:
    """The table columns of :func:`provenance_block` (:data:`PROVENANCE_KEYS`) for a run
    starting now (or at ``started``)."""
    block = provenance_block(started)
    return {key: block[key] for key in PROVENANCE_KEYS}


def latents_id(latents_dir: str | os.PathLike[str], encoders: Iterable[str]) -> str:
    """Content hash of the cache entries of ``encoders`` under ``latents_dir`` (their train
    and test latents and classifier): the fingerprint a sweep's cell keys carry
    (:func:`semalign.common.latents.latents_fingerprint`), so a results file and a sweep
    row made from the same latents name them alike."""
    from semalign.common.latents import latents_fingerprint

    return latents_fingerprint(latents_dir, encoders)


def semalign_version() -> str:
    """The version of the semalign that is running (the package's ``__version__``)."""
    from semalign import __version__

    return __version__


@functools.cache
def library_versions() -> dict[str, str | None]:
    """The installed version of each of :data:`LIBRARIES`, None where it is not installed."""
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git(folder: Path, *args: str) -> str | None:
    """``git -C folder args`` 's standard output, or None when it cannot tell (no checkout, no
    git, git fails). Only a tree with its own ``.git`` (a folder, or a file for a worktree) is
    asked, so an installed copy inside some other repository does not report that one."""
    if not (folder / ".git").exists():
        return None
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    try:
        done = subprocess.run(
            ["git", "-C", str(folder), *args],
            capture_output=True,
            text=True,
            timeout=10,
            env=env,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


@functools.cache
def git_commit(root: str | os.PathLike[str] | None = None) -> str | None:
    """``git rev-parse HEAD`` of the source tree ``root`` (default: semalign's), read-only.

    None when there is no checkout, no git, or git fails; cached per process.
    """
    out = _git(Path(root) if root is not None else _SOURCE_ROOT, "rev-parse", "HEAD")
    commit = (out or "").strip()
    if len(commit) < 40 or any(c not in "0123456789abcdef" for c in commit):
        return None
    return commit


@functools.cache
def git_dirty(root: str | os.PathLike[str] | None = None) -> bool | None:
    """Whether tracked files of the source tree ``root`` (default: semalign's) differ from its
    commit (untracked files do not count, as for ``git describe --dirty``); None when there is
    no checkout, no git, or git fails; cached per process."""
    folder = Path(root) if root is not None else _SOURCE_ROOT
    if git_commit(folder) is None:
        return None
    out = _git(folder, "status", "--porcelain", "--untracked-files=no")
    return None if out is None else bool(out.strip())
