"""Cache entries on disk: writing them, and deciding whether one can be trusted.

An entry is one encoder's folder ``<cache>/<dataset>/<encoder>/``::

    train.npz, val.npz, test.npz   latents float32 (n, d), labels int64 (n,)
    classifier.npz                 the user's own classifier (native train latents)
    meta.json                      key, key material, dims, accuracies, sha256 of each file
    weights-<key>.pt               from-scratch encoder weights (state_dict), one per key

It is trusted only when ``meta.json`` carries the current key and every file still has the
recorded sha256 (split files also their shape, dtypes and finite values); otherwise it is
rebuilt. Crash safety: every file is written atomically (``common.io``); a rebuild removes
``meta.json`` first and writes it last, so an interrupted run leaves at worst stray temporaries
(removed under the lock by the next run), never an entry a later run would trust. A lock file
per entry (``.lock``) serializes concurrent runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semalign.common.errors import LatentsError
from semalign.common.io import atomic_write_bytes, atomic_write_text, file_lock, remove_temporaries
from semalign.common.latents import (
    CLASSIFIER_FILE,
    MLP_CLASSIFIER_FILE,
    SPLITS,
    read_split_file,
)
from semalign.encoders.keys import sha256_file

log = logging.getLogger(__name__)

META = "meta.json"
CLASSIFIER = CLASSIFIER_FILE
LOCK = ".lock"
#: The files ``meta.json`` lists, in the order they are checked.
ENTRY_FILES: tuple[str, ...] = (*(f"{split}.npz" for split in SPLITS), CLASSIFIER)


@dataclass
class EncoderResult:
    """What ``encode`` did for one encoder (also the rows of the command's summary table)."""

    encoder: str
    dim: int
    native_accuracy: float
    val_accuracy: float
    seconds: float
    cached: bool
    trained: bool = False
    reason: str = ""
    cpu_seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict, repr=False)
    #: Test accuracy of the paper's MLP task model (the default of every run); NaN until
    #: ``encode`` has made sure of that model. ``native_accuracy`` is the logistic model's.
    task_model_accuracy: float = float("nan")


@contextlib.contextmanager
def entry_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock (created if needed), with stray temporaries of a killed run gone."""
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(folder / LOCK):
        remove_temporaries(folder)
        yield


def read_meta(folder: Path) -> dict[str, Any] | None:
    """The parsed ``meta.json`` of an encoder folder, or None if missing or unreadable."""
    try:
        with open(folder / META) as handle:
            meta = json.load(handle)
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def check_entry(folder: Path, key: str) -> str:
    """Why the entry in ``folder`` cannot be trusted for ``key``; ``""`` if it is valid."""
    meta = read_meta(folder)
    if meta is None:
        return "not cached" if not (folder / META).exists() else "unreadable meta.json"
    if meta.get("key") != key:
        return "settings changed"
    files = meta.get("files")
    if not isinstance(files, dict):
        return "meta.json has no file list"
    for name in ENTRY_FILES:
        info = files.get(name)
        path = folder / name
        if not isinstance(info, dict) or not path.is_file():
            return f"{name} missing"
        if sha256_file(path) != info.get("sha256"):
            return f"{name} checksum mismatch"
        if name == CLASSIFIER:
            continue
        try:
            latents = read_split_file(path, exact=True).latents
        except LatentsError as exc:
            return f"{name} unreadable ({exc})"
        expected = (info.get("rows"), meta.get("dim"))
        if latents.shape != expected:
            return f"{name} has shape {latents.shape}, meta says ({expected[0]}, {expected[1]})"
    return ""


def cached_result(folder: Path, encoder: str, started: float) -> EncoderResult:
    """The result of a valid entry that was reused (``started``: ``perf_counter`` at the check)."""
    meta = read_meta(folder) or {}
    acc = meta.get("native_accuracy", {})
    return EncoderResult(
        encoder,
        int(meta["dim"]),
        float(acc.get("test", float("nan"))),
        float(acc.get("val", float("nan"))),
        time.perf_counter() - started,
        cached=True,
        meta=meta,
    )


def clear_entry(folder: Path) -> None:
    """Untrust the entry before a rebuild: ``meta.json`` goes first, then the files it lists,
    so a reader that skips the checks never mixes splits of two different settings. The MLP
    task model trained on the old latents goes too."""
    for name in (META, *ENTRY_FILES, MLP_CLASSIFIER_FILE):
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()


def save_split(path: Path, latents: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Write ``latents`` float32 (n, d) and ``labels`` int64 (n,) to ``path`` atomically;
    returns its ``meta.json`` record (sha256 and rows)."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        latents=np.asarray(latents, dtype=np.float32),
        labels=np.asarray(labels, dtype=np.int64),
    )
    atomic_write_bytes(path, buffer.getvalue())
    return {"sha256": sha256_file(path), "rows": len(labels)}


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    """Write ``meta.json`` (last: from then on the entry is trusted)."""
    atomic_write_text(folder / META, json.dumps(meta, indent=2) + "\n")
