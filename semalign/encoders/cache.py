"""The latent cache: every node's latents, classifier and encoder weights on disk.

Layout (shared with the simulator, which reads ``<cache>/<dataset>`` as its latents dir)::

    <cache>/<dataset>/<encoder>/train.npz      latents float32 (n, d), labels int64 (n,)
    <cache>/<dataset>/<encoder>/val.npz
    <cache>/<dataset>/<encoder>/test.npz
    <cache>/<dataset>/<encoder>/classifier.npz the user's own classifier (native train latents)
    <cache>/<dataset>/<encoder>/meta.json      key, recipe, dims, accuracies, sha256 of each file
    <cache>/<dataset>/<encoder>/weights-<key>.pt   from-scratch encoder weights (state_dict)

Row i of a split is the same data point for every encoder. An entry is trusted only when
``meta.json`` carries the current key (a hash of everything that changes the latents: dataset
and its split version, encoder, image size, seed, recipe, timm arguments, row limit, weights)
and every file still has the recorded sha256 and shape; otherwise it is rebuilt. Weights are
kept per key, so going back to an earlier setting re-encodes without retraining.

Crash safety: every file is written to a temporary name and moved into place with
``os.replace``; ``meta.json`` is removed before a rebuild starts and written last, so an
interrupted run (Ctrl-C, kill) leaves at worst stray temporaries (removed on the next run) and
never an entry a later run would trust. A per-encoder lock file serializes concurrent runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semalign.encoders.datasets import DATA_VERSIONS, FLIP_OK, SPLITS, check_dataset_name
from semalign.encoders.registry import Recipe, get_spec

log = logging.getLogger(__name__)

#: Bumped when the cache format or the encoding code changes what a key means.
CACHE_VERSION = 1

META = "meta.json"
CLASSIFIER = "classifier.npz"
_TMP_MARK = ".tmp-"


def default_cache_dir() -> Path:
    """``$SEMALIGN_CACHE`` if set, else ``./cache`` relative to the working directory."""
    env = os.environ.get("SEMALIGN_CACHE")
    return Path(env) if env else Path.cwd() / "cache"


# --------------------------------------------------------------------------- progress reporting


class Reporter:
    """Receives progress events; the default does nothing. The CLI passes a rich one."""

    def begin(self, encoder: str, phase: str, total: int) -> None:  # noqa: D102
        pass

    def update(self, done: int, total: int) -> None:  # noqa: D102
        pass

    def end(self) -> None:  # noqa: D102
        pass


@dataclass
class EncoderResult:
    """What ``encode`` did for one encoder (also the rows of the CLI's summary table)."""

    encoder: str
    dim: int
    native_accuracy: float
    val_accuracy: float
    seconds: float
    cached: bool
    trained: bool = False
    reason: str = ""
    meta: dict[str, Any] = field(default_factory=dict, repr=False)


# ------------------------------------------------------------------------------- small helpers


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{_TMP_MARK}{os.getpid()}-{path.name}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def save_split(path: Path, latents: np.ndarray, labels: np.ndarray) -> None:
    """Write ``latents`` float32 (n, d) and ``labels`` int64 (n,) to ``path`` atomically."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        latents=np.asarray(latents, dtype=np.float32),
        labels=np.asarray(labels, dtype=np.int64),
    )
    _atomic_write_bytes(path, buffer.getvalue())


def load_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(latents float32 (n, d), labels int64 (n,))`` of a split file; ValueError if malformed."""
    with np.load(path, allow_pickle=False) as data:
        if "latents" not in data.files or "labels" not in data.files:
            raise ValueError(f"{path}: missing 'latents' or 'labels'")
        latents, labels = data["latents"], data["labels"]
    if latents.dtype != np.float32 or latents.ndim != 2:
        raise ValueError(f"{path}: latents {latents.dtype} {latents.shape}, want float32 (n, d)")
    if labels.dtype != np.int64 or labels.shape != (latents.shape[0],):
        raise ValueError(f"{path}: labels {labels.dtype} {labels.shape}, want int64 (n,)")
    return latents, labels


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _remove_stale_temporaries(folder: Path) -> None:
    for stale in folder.glob(f"{_TMP_MARK}*"):
        with contextlib.suppress(OSError):
            stale.unlink()
    for stale in folder.glob("*.tmp"):  # LinearClassifier.save's temporary
        with contextlib.suppress(OSError):
            stale.unlink()


# ------------------------------------------------------------------------------------- keys


def _weights_fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{_sha256(path)[:16]}"


def cache_key_material(
    dataset: str,
    encoder: str,
    *,
    seed: int,
    image_size: int,
    pretrained: bool,
    limit: int | None = None,
    weights_file: str | Path | None = None,
    epochs: int | None = None,
) -> dict[str, Any]:
    """Everything that changes an encoder's latents, as a JSON-able dict."""
    spec = get_spec(encoder)
    recipe = effective_recipe(encoder, epochs)
    material: dict[str, Any] = {
        "cache_version": CACHE_VERSION,
        "dataset": dataset,
        "data_version": DATA_VERSIONS[dataset],
        "encoder": encoder,
        "limit": limit,
        "pretrained": pretrained,
    }
    if pretrained:
        material["weights"] = (
            _weights_fingerprint(Path(weights_file)) if weights_file else "timm-default"
        )
        material["classifier_seed"] = seed
    else:
        material.update(
            seed=seed,
            image_size=image_size,
            recipe=recipe.to_dict(),
            timm_kwargs=spec.timm_kwargs(image_size),
        )
    return material


def effective_recipe(encoder: str, epochs: int | None = None) -> Recipe:
    """The registered recipe of ``encoder``, with ``epochs`` overridden if given."""
    recipe = get_spec(encoder).recipe
    if epochs is not None:
        if epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {epochs}")
        recipe = dataclasses.replace(recipe, epochs=epochs)
    return recipe


def cache_key(material: dict[str, Any]) -> str:
    blob = json.dumps(material, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------ validation


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
    dim = meta.get("dim")
    for name in (*(f"{split}.npz" for split in SPLITS), CLASSIFIER):
        info = files.get(name)
        path = folder / name
        if not isinstance(info, dict) or not path.is_file():
            return f"{name} missing"
        if _sha256(path) != info.get("sha256"):
            return f"{name} checksum mismatch"
        if name == CLASSIFIER:
            continue
        try:
            latents, labels = load_split(path)
        except (OSError, ValueError) as exc:
            return f"{name} unreadable ({exc})"
        if latents.shape != (info.get("rows"), dim):
            return f"{name} has shape {latents.shape}, meta says ({info.get('rows')}, {dim})"
        if not np.all(np.isfinite(latents)):
            return f"{name} has non-finite latents"
    return ""


# -------------------------------------------------------------------------------- encoding


def _encode_one(
    folder: Path,
    dataset_name: str,
    encoder: str,
    material: dict[str, Any],
    key: str,
    load_data: Callable[[], Any],
    *,
    seed: int,
    image_size: int,
    pretrained: bool,
    weights_file: str | Path | None,
    device: str | None,
    reporter: Reporter,
) -> EncoderResult:
    """Train (or load) the encoder, encode every split, fit the classifier, write the entry."""
    import torch

    from semalign.common.classifier import train_classifier
    from semalign.encoders import train as tr

    started = time.perf_counter()
    # From here on nothing in this folder is trusted: meta.json goes first, then the old files,
    # so a reader that skips the checks never mixes splits of two different settings.
    for stale in (META, *(f"{split}.npz" for split in SPLITS), CLASSIFIER):
        with contextlib.suppress(FileNotFoundError):
            (folder / stale).unlink()
    data = load_data()
    spec = get_spec(encoder)
    trained = False
    train_seconds = 0.0
    if pretrained:
        model, inputs = tr.build_pretrained_model(encoder, weights_file)
    else:
        inputs = tr.scratch_input(image_size)
        weights_path = folder / f"weights-{key}.pt"
        model = None
        if weights_path.is_file():
            try:
                model = tr.build_scratch_model(
                    spec, image_size, data.num_classes, seed, material["timm_kwargs"]
                )
                state = torch.load(weights_path, map_location="cpu", weights_only=True)
                model.load_state_dict(state)
                model.eval()
                log.info("%s: loaded cached weights %s", encoder, weights_path.name)
            except Exception as exc:  # corrupt or incompatible weights: retrain
                log.warning("%s: cached weights unusable (%s); retraining", encoder, exc)
                model = None
        if model is None:
            steps_total = [0]

            def tick(done: int, total: int) -> None:
                if steps_total[0] != total:
                    steps_total[0] = total
                    reporter.begin(encoder, "train", total)
                reporter.update(done, total)

            t0 = time.perf_counter()
            model = tr.train_scratch(
                spec,
                data["train"],
                image_size=image_size,
                seed=seed,
                flip=FLIP_OK[dataset_name],
                num_classes=data.num_classes,
                device=device,
                tick=tick,
                recipe=Recipe(**material["recipe"]),
            )
            reporter.end()
            train_seconds = time.perf_counter() - t0
            trained = True
            buffer = io.BytesIO()
            torch.save({k: v.cpu() for k, v in model.state_dict().items()}, buffer)
            _atomic_write_bytes(weights_path, buffer.getvalue())
    total_rows = sum(len(data[split]) for split in SPLITS)
    reporter.begin(encoder, "encode", total_rows)
    done_rows = 0
    latents: dict[str, np.ndarray] = {}
    for split in SPLITS:
        offset = done_rows
        latents[split] = tr.extract_latents(
            model,
            data[split].images,
            inputs,
            device=device,
            tick=lambda done, _total, offset=offset: reporter.update(offset + done, total_rows),
        )
        done_rows += len(data[split])
    reporter.end()
    del model
    files: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        path = folder / f"{split}.npz"
        save_split(path, latents[split], data[split].labels)
        files[path.name] = {"sha256": _sha256(path), "rows": len(data[split])}
    classifier = train_classifier(latents["train"], data["train"].labels, seed=seed)
    classifier.save(folder / CLASSIFIER)
    files[CLASSIFIER] = {"sha256": _sha256(folder / CLASSIFIER)}
    dim = int(latents["train"].shape[1])
    test_acc = classifier.accuracy(latents["test"], data["test"].labels)
    val_acc = classifier.accuracy(latents["val"], data["val"].labels)
    seconds = time.perf_counter() - started
    import timm

    meta = {
        "key": key,
        "key_material": material,
        "dataset": dataset_name,
        "encoder": encoder,
        "family": spec.family,
        "dim": dim,
        "num_classes": int(data.num_classes),
        "input_size": inputs.size,
        "native_accuracy": {"val": val_acc, "test": test_acc},
        "train_seconds": round(train_seconds, 2),
        "seconds": round(seconds, 2),
        "weights": None if pretrained else f"weights-{key}.pt",
        "files": files,
        "versions": {"torch": torch.__version__, "timm": timm.__version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _atomic_write_bytes(folder / META, (json.dumps(meta, indent=2) + "\n").encode())
    # Weights of other settings stay (switching back is then cheap); bounded by the settings used.
    return EncoderResult(
        encoder, dim, test_acc, val_acc, seconds, cached=False, trained=trained, meta=meta
    )


def encode(
    dataset: str,
    encoders: list[str],
    cache_dir: str | Path,
    *,
    seed: int = 0,
    image_size: int = 32,
    pretrained: bool = False,
    data_dir: str | Path | None = None,
    weights: dict[str, str | Path] | None = None,
    limit: int | None = None,
    epochs: int | None = None,
    device: str | None = None,
    reporter: Reporter | None = None,
    on_result: Callable[[EncoderResult], None] | None = None,
) -> list[EncoderResult]:
    """Make sure every encoder's entry under ``<cache_dir>/<dataset>`` is present and valid.

    Missing, stale (settings changed) or damaged entries are rebuilt: the encoder is trained
    from scratch on the training split (or loaded with pretrained weights), every split is
    encoded, and the user's classifier is fit on its native train latents. Returns one result
    per encoder, in order. Raises ValueError for unknown names, ``DatasetUnavailable`` /
    ``WeightsUnavailable`` when data or weights cannot be had here.
    """
    check_dataset_name(dataset)
    names = list(dict.fromkeys(encoders))
    for name in names:
        get_spec(name)  # unknown names fail before any work
    if image_size < 8:
        raise ValueError(f"image size must be at least 8, got {image_size}")
    weights = dict(weights or {})
    for name in weights:
        if name not in names:
            raise ValueError(f"--weights given for {name!r}, which is not being encoded")
    if weights and not pretrained:
        raise ValueError("--weights needs --pretrained")
    for name, path in weights.items():
        if not Path(path).is_file():
            raise ValueError(f"weights file for {name} not found: {path}")
    reporter = reporter or Reporter()
    root = Path(cache_dir) / dataset
    dataset_cache: list[Any] = []

    def load_data():
        if not dataset_cache:
            from semalign.encoders.datasets import load_dataset

            dataset_cache.append(
                load_dataset(
                    dataset,
                    data_dir=data_dir,
                    limit=limit,
                    download_root=Path(cache_dir) / "datasets",
                )
            )
        return dataset_cache[0]

    results: list[EncoderResult] = []
    for name in names:
        folder = root / name
        material = cache_key_material(
            dataset,
            name,
            seed=seed,
            image_size=image_size,
            pretrained=pretrained,
            limit=limit,
            weights_file=weights.get(name),
            epochs=epochs,
        )
        key = cache_key(material)
        started = time.perf_counter()
        with _locked(folder):
            _remove_stale_temporaries(folder)
            reason = check_entry(folder, key)
            if not reason:
                meta = read_meta(folder) or {}
                acc = meta.get("native_accuracy", {})
                result = EncoderResult(
                    name,
                    int(meta["dim"]),
                    float(acc.get("test", float("nan"))),
                    float(acc.get("val", float("nan"))),
                    time.perf_counter() - started,
                    cached=True,
                    meta=meta,
                )
            else:
                log.info("%s/%s: building (%s)", dataset, name, reason)
                result = _encode_one(
                    folder,
                    dataset,
                    name,
                    material,
                    key,
                    load_data,
                    seed=seed,
                    image_size=image_size,
                    pretrained=pretrained,
                    weights_file=weights.get(name),
                    device=device,
                    reporter=reporter,
                )
                result.reason = reason
        results.append(result)
        if on_result is not None:
            on_result(result)
    _check_alignment(root, names)
    return results


def _check_alignment(root: Path, names: list[str]) -> None:
    """Every encoder's split files must list the same labels in the same order."""
    for split in SPLITS:
        reference: np.ndarray | None = None
        for name in names:
            _, labels = load_split(root / name / f"{split}.npz")
            if reference is None:
                reference = labels
            elif not np.array_equal(reference, labels):
                raise RuntimeError(
                    f"{root}: {split} rows of {name} are not aligned with {names[0]}"
                )


def ensure_latents(
    dataset: str,
    encoders: list[str],
    cache_dir: str | Path,
    *,
    seed: int = 0,
    image_size: int = 32,
    pretrained: bool = False,
    data_dir: str | Path | None = None,
    progress: bool = False,
    weights: dict[str, str | Path] | None = None,
    limit: int | None = None,
    epochs: int | None = None,
) -> Path:
    """Make every listed encoder's latents and classifier present and valid; return the
    latents dir ``<cache_dir>/<dataset>`` (which holds ``<encoder>/{train,val,test}.npz``).

    ``progress=True`` shows rich progress bars on stderr. See ``encode`` for the details.
    """
    reporter: Reporter | None = None
    if progress:
        from semalign.encoders.progress import RichReporter

        with RichReporter() as reporter:
            encode(
                dataset,
                encoders,
                cache_dir,
                seed=seed,
                image_size=image_size,
                pretrained=pretrained,
                data_dir=data_dir,
                weights=weights,
                limit=limit,
                epochs=epochs,
                reporter=reporter,
            )
    else:
        encode(
            dataset,
            encoders,
            cache_dir,
            seed=seed,
            image_size=image_size,
            pretrained=pretrained,
            data_dir=data_dir,
            weights=weights,
            limit=limit,
            epochs=epochs,
        )
    return Path(cache_dir) / dataset


def load_latents(
    latents_dir: str | Path, encoder: str, split: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(latents, labels)`` of one encoder's split from a latents dir (``<cache>/<dataset>``)."""
    return load_split(Path(latents_dir) / encoder / f"{split}.npz")


def load_encoder_model(latents_dir: str | Path, encoder: str):
    """The trained from-scratch torch model behind a cache entry (eval mode), and its
    ``InputSpec``; for a node that needs to encode new images itself."""
    import torch

    from semalign.encoders import train as tr

    folder = Path(latents_dir) / encoder
    meta = read_meta(folder)
    if meta is None or not meta.get("weights"):
        raise FileNotFoundError(f"no from-scratch weights recorded in {folder / META}")
    material = meta["key_material"]
    size = int(material["image_size"])
    model = tr.build_scratch_model(
        get_spec(encoder),
        size,
        int(meta.get("num_classes", 10)),
        int(material["seed"]),
        material["timm_kwargs"],
    )
    state = torch.load(folder / meta["weights"], map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval(), tr.scratch_input(size)
