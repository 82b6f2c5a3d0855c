"""Reading the latent cache shared by the encoders, the simulator and the networked system.

Layout: ``<dir>/<encoder>/{train,val,test}.npz`` with ``latents`` float32 (n, d) and ``labels``
int64 (n,); row i is the same data point for every encoder. An optional
``<dir>/<encoder>/classifier.npz`` holds the encoder owner's classifier.

This module is the one reader of split files (:func:`read_split_file`): the encoders' cache
checks, the simulator and the user processes all go through it, so a damaged file is always a
:class:`LatentsError` naming the file and the problem. It also names a cache's content: the
latents fingerprint (:func:`latents_fingerprint`, a run's ``latents_id``).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from semalign.common.classifier import LinearClassifier, read_npz, train_classifier
from semalign.common.errors import LatentsError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CLASSIFIER_FILE = "classifier.npz"


@dataclass(frozen=True)
class Split:
    latents: np.ndarray  # (n, d) float32
    labels: np.ndarray  # (n,) int64


def available_encoders(latents_dir: Path) -> list[str]:
    return (
        sorted(
            p.name for p in Path(latents_dir).iterdir() if p.is_dir() and (p / "train.npz").exists()
        )
        if Path(latents_dir).is_dir()
        else []
    )


def load_split(latents_dir: str | Path, encoder: str, split: str) -> Split:
    """Load and validate one split of one encoder."""
    latents_dir = Path(latents_dir)
    if not latents_dir.is_dir():
        raise LatentsError(f"latents directory {latents_dir} does not exist")
    folder = latents_dir / encoder
    if not folder.is_dir():
        known = available_encoders(latents_dir)
        close = difflib.get_close_matches(encoder, known, n=3)
        hint = (
            f"; did you mean {', '.join(close)}?"
            if close
            else (
                f"; available: {', '.join(known)}" if known else "; the directory holds no encoders"
            )
        )
        raise LatentsError(f"no latents for encoder {encoder!r} in {latents_dir}{hint}")
    try:
        return read_split_file(split_path(latents_dir, encoder, split))
    except LatentsError as exc:
        raise LatentsError(
            f"{exc}; replace the file (`semalign encode` rebuilds a damaged entry of its cache)"
        ) from None


def split_path(latents_dir: str | Path, encoder: str, split: str) -> Path:
    """Where one split of one encoder lives: ``<latents_dir>/<encoder>/<split>.npz``."""
    return Path(latents_dir) / encoder / f"{split}.npz"


def read_split_file(path: str | Path, *, exact: bool = False) -> Split:
    """Read and validate one split file; LatentsError naming ``path`` and the problem if bad.

    A missing, truncated or corrupt file, a missing array, non-numeric dtypes, mismatched
    shapes, an empty split and non-finite latents are all LatentsError (never a zipfile or
    numpy error). Latents are returned as float32, labels as int64. With ``exact`` the file
    must already hold exactly those dtypes (what the encoders write).
    """
    path = Path(path)
    arrays = read_npz(path, ("latents", "labels"))
    latents, labels = arrays["latents"], arrays["labels"]
    if latents.dtype.kind not in "fiu" or labels.dtype.kind not in "iu":
        raise LatentsError(
            f"{path}: latents {latents.dtype} and labels {labels.dtype}, want real latents "
            "and integer labels"
        )
    if exact and (latents.dtype != np.float32 or labels.dtype != np.int64):
        raise LatentsError(
            f"{path}: latents {latents.dtype}, labels {labels.dtype}, want float32 and int64"
        )
    if latents.ndim != 2 or labels.ndim != 1 or len(latents) != len(labels):
        raise LatentsError(f"{path}: latents {latents.shape} and labels {labels.shape} mismatch")
    if len(latents) == 0:
        raise LatentsError(f"{path}: empty split")
    if not np.all(np.isfinite(latents)):
        raise LatentsError(f"{path}: latents contain non-finite values (NaN or inf)")
    return Split(
        latents=latents.astype(np.float32, copy=False), labels=labels.astype(np.int64, copy=False)
    )


def load_encoder_splits(
    latents_dir: str | Path, encoder: str, splits: tuple[str, ...] = ("train", "test")
) -> dict[str, Split]:
    return {s: load_split(latents_dir, encoder, s) for s in splits}


def check_aligned(named: dict[str, dict[str, Split]]) -> None:
    """Every encoder must have the same rows (same count, same labels) in every split."""
    names = list(named)
    ref = named[names[0]]
    for name in names[1:]:
        for split, data in named[name].items():
            other = ref[split]
            if len(data.labels) != len(other.labels):
                raise LatentsError(
                    f"{split} split: {name} has {len(data.labels)} rows, {names[0]} has "
                    f"{len(other.labels)}; row i must be the same data point for every encoder"
                )
            if not np.array_equal(data.labels, other.labels):
                raise LatentsError(
                    f"{split} split: labels of {name} and {names[0]} differ: "
                    "rows are not the same data points"
                )


def load_classifier(
    latents_dir: str | Path, encoder: str, train: Split, *, seed: int = 0
) -> LinearClassifier:
    """The encoder owner's classifier: cached file if valid, else trained on native train."""
    path = Path(latents_dir) / encoder / CLASSIFIER_FILE
    if path.exists():
        try:
            clf = LinearClassifier.load(path)
            if clf.weight.shape[1] == train.latents.shape[1]:
                return clf
            log.warning("%s: classifier dimension mismatch, retraining", path)
        except LatentsError as exc:
            log.warning("%s unreadable (%s), retraining", path, exc)
    log.info("training classifier for %s on %d native train latents", encoder, len(train.labels))
    return train_classifier(train.latents, train.labels, seed=seed)


#: Cache file of the MLP task model (``task_model="mlp"``), next to ``classifier.npz``.
MLP_CLASSIFIER_FILE = "classifier-mlp.npz"

#: Task models trained in this process, by (train file, its mtime, kind, seed).
_TASK_MODELS: dict[tuple, object] = {}


def load_task_model(
    latents_dir: str | Path, encoder: str, train: Split, *, kind: str = "logistic", seed: int = 0
):
    """The encoder owner's task model of ``kind`` (``logistic``: :func:`load_classifier`).

    ``mlp`` is read from ``classifier-mlp.npz`` when its dimension and recipe match, else
    trained on the native train latents and written there (when the folder is writable); a
    process keeps what it trained, so no model is trained twice.
    """
    if kind == "logistic":
        return load_classifier(latents_dir, encoder, train, seed=seed)
    from semalign.common.task_models import train_task_model

    path = Path(latents_dir) / encoder / MLP_CLASSIFIER_FILE
    train_file = split_path(latents_dir, encoder, "train")
    stamp = train_file.stat().st_mtime_ns if train_file.exists() else 0
    memo = (str(train_file.resolve()), stamp, kind, seed, len(train.labels))
    model = _TASK_MODELS.get(memo)
    if model is not None:
        if seed == 0 and not path.exists():  # removed since: cache it again
            _save_task_model(model, path)
        return model
    if path.exists() and seed == 0:
        model, problem = cached_mlp(path, train.latents.shape[1])
        if model is None:
            log.warning("%s %s, retraining", path, problem)
    if model is None:
        log.info("training %s task model for %s on %d latents", kind, encoder, len(train.labels))
        model = train_task_model(kind, train.latents, train.labels, seed=seed)
        if seed == 0:
            _save_task_model(model, path)
    _TASK_MODELS[memo] = model
    return model


def cached_mlp(path: Path, dim: int):
    """The MLP task model stored at ``path`` if it loads, takes ``dim`` inputs and was trained
    with the current recipe: ``(model, "")``; else ``(None, why not)``."""
    from semalign.common.task_models import MlpClassifier, recipe_key

    try:
        cached = MlpClassifier.load(path)
    except LatentsError as exc:
        return None, f"unreadable ({exc})"
    if cached.input_dim != dim or cached.recipe != recipe_key():
        return None, "of another dimension or recipe"
    return cached, ""


def _save_task_model(model, path: Path) -> None:
    try:
        model.save(path)
    except OSError as exc:
        log.warning("cannot cache %s (%s)", path, exc)


def pilot_count(n_train: int, pilot_fraction: float) -> int:
    """Pilots are the first ``pilot_fraction`` of the train split (at least 2)."""
    return max(2, int(round(n_train * pilot_fraction)))


#: What a fingerprint hashes of each encoder's entry, in this order.
FINGERPRINT_FILES = ("train.npz", "test.npz", "classifier.npz")
#: The fingerprint's definition, hashed into it. v1 (before): one blake2b stream over every
#: listed encoder's files, so L users read their files L times; v2: the per-file digests.
FINGERPRINT_VERSION = "v2"
#: A file modified (mtime or ctime) less than this many seconds before it is hashed is not
#: memoized: a rewrite within the file system's timestamp granularity could leave size and
#: timestamps as they were.
RACY_SECONDS = 2.0

#: Per-file digests of this process, by (resolved path, size, mtime, ctime, inode).
_FILE_DIGESTS: dict[tuple[str, int, int, int, int], str] = {}


def _stat_key(path: Path) -> tuple[str, int, int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _feed_file(digest: hashlib._Hash, path: Path) -> hashlib._Hash:
    """``digest`` (a hashlib object) updated with the bytes of ``path``, read in 1 MiB
    pieces; returned."""
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest


def file_digest(path: str | Path) -> str | None:
    """blake2b digest (32 hex digits) of a file's bytes, None when there is no file.

    Memoized in this process per (path, size, mtime, ctime, inode), so a file listed by many
    users is read once; a file changed (mtime or ctime, whichever is later: ``cp -p``,
    ``rsync -t`` or ``tar x`` keep an old mtime on a new file) less than :data:`RACY_SECONDS`
    before it is read is read again next time (its timestamps could hide a second write).
    """
    path = Path(path)
    key = _stat_key(path)
    if key is None:
        return None
    if key in _FILE_DIGESTS:
        return _FILE_DIGESTS[key]
    value = _feed_file(hashlib.blake2b(digest_size=16), path).hexdigest()
    changed = max(key[2], key[3])  # the ctime too: a copy keeping its mtime is new
    settled = changed < (time.time() - RACY_SECONDS) * 1e9  # last changed long enough ago
    if settled and _stat_key(path) == key:  # unchanged while it was read
        _FILE_DIGESTS[key] = value
    return value


def latents_fingerprint(latents_dir: str | Path, encoders: Iterable[str]) -> str:
    """Content hash (16 hex digits) of the listed encoders' entries: their train and test
    latents and classifier (:data:`FINGERPRINT_FILES`); a run's ``latents_id``.

    Version 2 (:data:`FINGERPRINT_VERSION`, hashed in): blake2b over the list, in order, of
    (encoder, the digest of each of its files or null for a missing one). Each distinct file is
    read once per process (:func:`file_digest`), however many users list its encoder: 1,000
    users of 10 encoders read 10 entries, not 1,000. The order and the repeats of ``encoders``
    count, as users do.
    """
    entries = [
        [encoder, [file_digest(Path(latents_dir) / encoder / name) for name in FINGERPRINT_FILES]]
        for encoder in encoders
    ]
    material = json.dumps({"fingerprint": FINGERPRINT_VERSION, "entries": entries})
    return hashlib.blake2b(material.encode(), digest_size=8).hexdigest()


def latents_fingerprint_v1(latents_dir: str | Path, encoders: Iterable[str]) -> str:
    """The fingerprint of before version 2 (16 hex digits): one blake2b stream over each listed
    encoder's name and files (a missing one: ``-``), every file read once per listing.

    Only to recognize what was keyed with it (a sweep table written before version 2:
    :mod:`semalign.experiments.rekey`); it reads L entries for L users.
    """
    digest = hashlib.blake2b(digest_size=8)
    for encoder in encoders:
        folder = Path(latents_dir) / encoder
        digest.update(encoder.encode())
        for name in FINGERPRINT_FILES:
            path = folder / name
            if not path.exists():
                digest.update(b"-")
                continue
            _feed_file(digest, path)
    return digest.hexdigest()
