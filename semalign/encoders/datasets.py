"""Image datasets with a fixed train/val/test split shared by every node.

``digits`` (offline default) is scikit-learn's bundled handwritten digits: 1,797 8x8 grey images,
10 classes, split 70/10/20 (1,257 / 180 / 360) stratified with a fixed seed. ``cifar10`` is the
paper's dataset: 45,000 / 5,000 train/val (stratified, fixed seed, from the 50,000 training
images) and the official 10,000 test images. It is read from a local ``cifar-10-batches-py``
folder or downloaded once through torchvision when a network exists; with neither, loading fails
fast with a message saying what to do (never a hang).

Images are kept as uint8 (n, h, w, 3) at their native resolution; ``to_tensor`` converts a batch
to float (b, 3, s, s) in [0, 1] at the requested size. The split never depends on the training
seed, so row i of a split is the same data point for every encoder and every seed.

``digits-aug`` is digits grown to CIFAR-10's sizes (50,000 / 5,000 / 10,000, 32x32 colour) by
seeded augmentation within each split (:mod:`semalign.encoders.augment`: what it is and is not).
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semalign.common.errors import DatasetUnavailable
from semalign.common.latents import SPLITS  # splits, in the order they are written
from semalign.encoders.registry import unknown_name_message

log = logging.getLogger(__name__)

#: Known datasets.
DATASETS: tuple[str, ...] = ("digits", "cifar10", "digits-aug")

#: Bumped whenever a dataset's split or preprocessing changes; part of every cache key.
DATA_VERSIONS: dict[str, int] = {"digits": 1, "cifar10": 1, "digits-aug": 1}


#: Whether horizontal flips are label-preserving (not for digits).
FLIP_OK: dict[str, bool] = {"digits": False, "cifar10": True, "digits-aug": False}

_SPLIT_SEED = 0
_CIFAR_URL_HOST = ("www.cs.toronto.edu", 443)
_CIFAR_DIRNAME = "cifar-10-batches-py"


@dataclass(frozen=True)
class Split:
    """One split: ``images`` uint8 (n, h, w, 3) and ``labels`` int64 (n,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Dataset:
    """A dataset's three splits and class count."""

    name: str
    splits: dict[str, Split]
    num_classes: int = 10

    def __getitem__(self, split: str) -> Split:
        return self.splits[split]


def check_dataset_name(name: str) -> str:
    """Return ``name`` if it is a known dataset; ValueError listing close names otherwise."""
    if name not in DATASETS:
        raise ValueError(unknown_name_message("dataset", name, DATASETS))
    return name


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    download_root: str | Path | None = None,
) -> Dataset:
    """Load ``name`` with its fixed split.

    Args:
        name: ``digits`` or ``cifar10``.
        data_dir: for cifar10, a folder holding ``cifar-10-batches-py`` (or that folder itself).
        limit: keep at most this many rows per split (the first rows of each shuffled split,
            for quick tests); None keeps everything.
        download_root: for cifar10 without ``data_dir``: where torchvision keeps its copy (a
            copy already there is used offline; otherwise it is downloaded if a network exists).
    """
    check_dataset_name(name)
    if name == "digits":
        dataset = _load_digits()
    elif name == "digits-aug":
        return _load_digits_aug(limit)
    else:
        dataset = _load_cifar10(data_dir, download_root)
    check_limit(limit)
    if limit is not None:
        dataset = Dataset(
            dataset.name,
            {k: Split(s.images[:limit], s.labels[:limit]) for k, s in dataset.splits.items()},
            dataset.num_classes,
        )
    return dataset


def check_limit(limit: int | None) -> None:
    """``limit`` (rows per split, quick tests): None or at least 10 (ValueError otherwise)."""
    if limit is not None and limit < 10:
        raise ValueError(f"limit must be at least 10 rows per split, got {limit}")


def _stratified_split(labels: np.ndarray, fractions: tuple[float, ...]) -> list[np.ndarray]:
    """Shuffled index arrays, one per fraction, each holding every class in proportion."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    out: list[np.ndarray] = []
    rest, remaining = index, 1.0
    for frac in fractions[:-1]:
        take, rest = train_test_split(
            rest, train_size=frac / remaining, stratify=labels[rest], random_state=_SPLIT_SEED
        )
        out.append(np.asarray(take))
        remaining -= frac
    rng = np.random.default_rng(_SPLIT_SEED)
    out.append(rng.permutation(rest))
    return out


def _load_digits() -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    grey = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # (n, 8, 8), 17 levels
    images = np.repeat(grey[..., None], 3, axis=-1)
    labels = bunch.target.astype(np.int64)
    parts = _stratified_split(labels, (0.7, 0.1, 0.2))
    splits = {
        name: Split(images[idx], labels[idx]) for name, idx in zip(SPLITS, parts, strict=True)
    }
    return Dataset("digits", splits)


def _load_digits_aug(limit: int | None) -> Dataset:
    """``digits-aug`` (:mod:`semalign.encoders.augment`); ``limit`` generates only a prefix."""
    from semalign.encoders.augment import AUG_SIZES, augment_split

    check_limit(limit)
    base = _load_digits()
    splits = {}
    for name in SPLITS:
        rows = AUG_SIZES[name] if limit is None else min(limit, AUG_SIZES[name])
        splits[name] = Split(*augment_split(base[name].images, base[name].labels, name, rows))
    return Dataset("digits-aug", splits)


def _find_cifar_dir(root: Path) -> Path | None:
    for candidate in (root, root / _CIFAR_DIRNAME):
        if (candidate / "data_batch_1").is_file() and (candidate / "test_batch").is_file():
            return candidate
    return None


def network_available(host: tuple[str, int], timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` seconds.

    Name resolution is not bounded by socket timeouts (an offline resolver can stall for many
    seconds), so the attempt runs in a daemon thread that is abandoned after ``timeout``.
    ``SEMALIGN_OFFLINE=1`` answers False without trying.
    """
    if os.environ.get("SEMALIGN_OFFLINE") == "1":
        return False
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection(host, timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=attempt, name="semalign-netcheck", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _load_cifar10(data_dir: str | Path | None, download_root: str | Path | None) -> Dataset:
    if data_dir is not None:
        found = _find_cifar_dir(Path(data_dir))
        if found is None:
            raise DatasetUnavailable(
                f"no CIFAR-10 in {data_dir}: expected {_CIFAR_DIRNAME}/data_batch_1..5 and "
                "test_batch (the python version from https://www.cs.toronto.edu/~kriz/"
                "cifar-10-python.tar.gz, extracted)"
            )
    else:
        root = Path(download_root) if download_root is not None else Path("data")
        found = _find_cifar_dir(root)
        if found is None:
            if not network_available(_CIFAR_URL_HOST):
                raise DatasetUnavailable(
                    "CIFAR-10 is not available offline: no local copy under "
                    f"{root}/{_CIFAR_DIRNAME} and no network to download it. Download "
                    "cifar-10-python.tar.gz on a connected machine, extract it, and pass "
                    "--data-dir DIR (the folder holding cifar-10-batches-py), or use "
                    "--dataset digits"
                )
            from torchvision.datasets import CIFAR10

            log.info("downloading CIFAR-10 to %s", root)
            CIFAR10(str(root), train=True, download=True)
            found = _find_cifar_dir(root)
            if found is None:
                raise DatasetUnavailable(f"CIFAR-10 download into {root} did not complete")
    return _read_cifar_batches(found)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, 32, 32, 3) uint8 and labels (n,) of one CIFAR-10 python batch file;
    DatasetUnavailable naming the file when it is missing, truncated or not such a batch."""
    try:
        with open(path, "rb") as handle:
            entry = pickle.load(handle, encoding="latin1")
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
        if labels.shape != (len(data),):
            raise ValueError(f"{len(data)} images but labels of shape {labels.shape}")
    except Exception as exc:  # pickle, numpy and OS errors of a damaged file alike
        raise DatasetUnavailable(
            f"{path}: not a readable CIFAR-10 batch ({type(exc).__name__}: {exc}); extract "
            "cifar-10-python.tar.gz again into the --data-dir folder"
        ) from None
    return data.transpose(0, 2, 3, 1), labels


def _read_cifar_batches(folder: Path) -> Dataset:
    parts = [_read_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    test_images, test_labels = _read_batch(folder / "test_batch")
    train_idx, val_idx = _stratified_split(labels, (0.9, 0.1))
    splits = {
        "train": Split(images[train_idx], labels[train_idx]),
        "val": Split(images[val_idx], labels[val_idx]),
        "test": Split(test_images, test_labels),
    }
    return Dataset("cifar10", splits)


def to_tensor(images: np.ndarray, size: int):
    """uint8 (b, h, w, 3) -> float32 torch tensor (b, 3, size, size) in [0, 1] (bilinear)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < x.shape[-1]
        )
    return x
