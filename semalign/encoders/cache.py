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
    """Receives progress events, keyed by encoder (several may run at once); the default does
    nothing. The CLI passes a rich one (``progress.RichReporter``)."""

    def begin(self, encoder: str, phase: str, total: int) -> None:
        """``encoder`` starts ``phase`` (``train`` in steps, ``encode`` in images)."""

    def update(self, encoder: str, done: int, total: int) -> None:
        """``done`` of ``total`` units of the current phase of ``encoder`` are finished."""

    def end(self, encoder: str) -> None:
        """The current phase of ``encoder`` is over."""


class _QueueReporter(Reporter):
    """Forwards events from a worker process to the parent through a multiprocessing queue."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def begin(self, encoder: str, phase: str, total: int) -> None:
        self.queue.put(("begin", encoder, phase, total))

    def update(self, encoder: str, done: int, total: int) -> None:
        self.queue.put(("update", encoder, done, total))

    def end(self, encoder: str) -> None:
        self.queue.put(("end", encoder))


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
    cpu_seconds: float = 0.0
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


@dataclass(frozen=True)
class _Job:
    """One entry to (re)build; picklable so a worker process can run it."""

    folder: Path
    dataset: str
    encoder: str
    material: dict[str, Any]
    key: str
    reason: str
    seed: int
    image_size: int
    pretrained: bool
    weights_file: str | None
    data_dir: str | None
    limit: int | None
    download_root: str
    device: str | None


_DATA_MEMO: dict[tuple, Any] = {}


def _job_data(job: _Job):
    from semalign.encoders.datasets import load_dataset

    memo_key = (job.dataset, job.data_dir, job.limit, job.download_root)
    if memo_key not in _DATA_MEMO:
        _DATA_MEMO.clear()
        _DATA_MEMO[memo_key] = load_dataset(
            job.dataset, data_dir=job.data_dir, limit=job.limit, download_root=job.download_root
        )
    return _DATA_MEMO[memo_key]


def _cached_result(folder: Path, encoder: str, started: float) -> EncoderResult:
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


def _build_locked(job: _Job, reporter: Reporter) -> EncoderResult:
    """Build ``job`` holding its folder's lock; a valid entry found under the lock is reused."""
    started = time.perf_counter()
    with _locked(job.folder):
        _remove_stale_temporaries(job.folder)
        if not check_entry(job.folder, job.key):  # another process built it meanwhile
            return _cached_result(job.folder, job.encoder, started)
        log.info("%s/%s: building (%s)", job.dataset, job.encoder, job.reason)
        result = _build(job, reporter)
    result.reason = job.reason
    return result


_WORKER_QUEUE: Any = None


def _worker_init(queue: Any, threads: int) -> None:
    """Runs first in each worker: progress queue, and torch and BLAS threads = its core share."""
    global _WORKER_QUEUE
    _WORKER_QUEUE = queue
    from threadpoolctl import threadpool_limits

    from semalign.encoders.train import setup_torch

    setup_torch(threads)
    threadpool_limits(limits=threads)  # applies at once, for the worker's lifetime


def _worker_build(job: _Job) -> EncoderResult:
    return _build_locked(job, _QueueReporter(_WORKER_QUEUE))


def _load_weights(spec: Any, path: Path, material: dict[str, Any], num_classes: int):
    """A from-scratch model with the weights stored at ``path`` (eval mode) and the precision
    it was trained in."""
    import torch

    from semalign.encoders import train as tr

    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = tr.build_scratch_model(
        spec,
        int(material["image_size"]),
        num_classes,
        int(material["seed"]),
        material["timm_kwargs"],
    )
    model.load_state_dict(saved["state_dict"])
    return model.eval(), str(saved.get("training_precision", "fp32"))


def _build(job: _Job, reporter: Reporter) -> EncoderResult:
    """Train (or load) the encoder, encode every split, fit the classifier, write the entry."""
    import torch

    from semalign.common.classifier import train_classifier
    from semalign.encoders import train as tr

    folder, encoder, material, key = job.folder, job.encoder, job.material, job.key
    seed, image_size, device = job.seed, job.image_size, job.device
    started = time.perf_counter()
    cpu_started = time.process_time()
    # From here on nothing in this folder is trusted: meta.json goes first, then the old files,
    # so a reader that skips the checks never mixes splits of two different settings.
    for stale in (META, *(f"{split}.npz" for split in SPLITS), CLASSIFIER):
        with contextlib.suppress(FileNotFoundError):
            (folder / stale).unlink()
    data = _job_data(job)
    spec = get_spec(encoder)
    trained = False
    train_seconds = 0.0
    if job.pretrained:
        model, inputs = tr.build_pretrained_model(encoder, job.weights_file)
    else:
        inputs = tr.scratch_input(image_size)
        weights_path = folder / f"weights-{key}.pt"
        model = None
        precision = None
        if weights_path.is_file():
            try:
                model, precision = _load_weights(spec, weights_path, material, data.num_classes)
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
                reporter.update(encoder, done, total)

            t0 = time.perf_counter()
            model = tr.train_scratch(
                spec,
                data["train"],
                image_size=image_size,
                seed=seed,
                flip=FLIP_OK[job.dataset],
                num_classes=data.num_classes,
                device=device,
                tick=tick,
                recipe=Recipe(**material["recipe"]),
            )
            reporter.end(encoder)
            train_seconds = time.perf_counter() - t0
            trained = True
            buffer = io.BytesIO()
            precision = model.training_precision  # set by train_scratch
            state = {k: v.cpu() for k, v in model.state_dict().items()}
            torch.save({"state_dict": state, "training_precision": precision}, buffer)
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
            tick=lambda done, _total, offset=offset: reporter.update(
                encoder, offset + done, total_rows
            ),
        )
        done_rows += len(data[split])
    reporter.end(encoder)
    del model
    files: dict[str, dict[str, Any]] = {}
    for split in SPLITS:
        path = folder / f"{split}.npz"
        save_split(path, latents[split], data[split].labels)
        files[path.name] = {"sha256": _sha256(path), "rows": len(data[split])}
    # Single-threaded BLAS: this fit is small, and OpenBLAS's second thread spin-waits for a
    # core; measured here with other load on the two cores, the fit of a (64, 1024) problem
    # took 17 s with two BLAS threads and 0.19 s with one ((1257, 1280): 3.0 s and 0.20 s).
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        classifier = train_classifier(latents["train"], data["train"].labels, seed=seed)
        test_acc = classifier.accuracy(latents["test"], data["test"].labels)
        val_acc = classifier.accuracy(latents["val"], data["val"].labels)
    classifier.save(folder / CLASSIFIER)
    files[CLASSIFIER] = {"sha256": _sha256(folder / CLASSIFIER)}
    dim = int(latents["train"].shape[1])
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    import timm

    meta = {
        "key": key,
        "key_material": material,
        "dataset": job.dataset,
        "encoder": encoder,
        "family": spec.family,
        "dim": dim,
        "num_classes": int(data.num_classes),
        "input_size": inputs.size,
        "native_accuracy": {"val": val_acc, "test": test_acc},
        "train_seconds": round(train_seconds, 2),
        "training_precision": None if job.pretrained else precision,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "weights": None if job.pretrained else f"weights-{key}.pt",
        "files": files,
        "versions": {"torch": torch.__version__, "timm": timm.__version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _atomic_write_bytes(folder / META, (json.dumps(meta, indent=2) + "\n").encode())
    # Weights of other settings stay (switching back is then cheap); bounded by the settings used.
    return EncoderResult(
        encoder,
        dim,
        test_acc,
        val_acc,
        seconds,
        cached=False,
        trained=trained,
        cpu_seconds=cpu_seconds,
        meta=meta,
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
    jobs: int | None = None,
    reporter: Reporter | None = None,
    on_result: Callable[[EncoderResult], None] | None = None,
) -> list[EncoderResult]:
    """Make sure every encoder's entry under ``<cache_dir>/<dataset>`` is present and valid.

    Missing, stale (settings changed) or damaged entries are rebuilt: the encoder is trained
    from scratch on the training split (or loaded with pretrained weights), every split is
    encoded, and the user's classifier is fit on its native train latents. Returns one result
    per encoder, in the order given. Raises ValueError for unknown names,
    ``DatasetUnavailable`` / ``WeightsUnavailable`` when data or weights cannot be had here.

    Args:
        jobs: encoders built at once, each in its own process with ``cores // jobs`` torch
            threads. Default: one per core (at most one per entry to build). Small models
            train far faster as single-threaded processes side by side than as one process
            with two threads, and are much less hurt by other load on the machine. ``jobs=1``
            builds in this process.
        limit, epochs: quick-test knobs (rows per split; epochs of every recipe); both are part
            of the cache key.
    """
    check_dataset_name(dataset)
    names = list(dict.fromkeys(encoders))
    if not names:
        raise ValueError("no encoder given")
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
    if jobs is not None and jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    reporter = reporter or Reporter()
    root = Path(cache_dir) / dataset

    results: dict[str, EncoderResult] = {}
    todo: list[_Job] = []
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
                results[name] = _cached_result(folder, name, started)
        if reason:
            weights_file = weights.get(name)
            todo.append(
                _Job(
                    folder=folder,
                    dataset=dataset,
                    encoder=name,
                    material=material,
                    key=key,
                    reason=reason,
                    seed=seed,
                    image_size=image_size,
                    pretrained=pretrained,
                    weights_file=None if weights_file is None else str(weights_file),
                    data_dir=None if data_dir is None else str(data_dir),
                    limit=limit,
                    download_root=str(Path(cache_dir) / "datasets"),
                    device=device,
                )
            )
        elif on_result is not None:
            on_result(results[name])

    if todo:
        cores = max(1, len(os.sched_getaffinity(0)))
        workers = min(jobs or cores, len(todo))
        if workers <= 1:
            for job in todo:
                results[job.encoder] = _build_locked(job, reporter)
                if on_result is not None:
                    on_result(results[job.encoder])
        else:
            _build_parallel(todo, workers, max(1, cores // workers), reporter, on_result, results)
    _check_alignment(root, names)
    return [results[name] for name in names]


def _build_parallel(
    todo: list[_Job],
    workers: int,
    threads: int,
    reporter: Reporter,
    on_result: Callable[[EncoderResult], None] | None,
    results: dict[str, EncoderResult],
) -> None:
    """Build ``todo`` in ``workers`` spawned processes, longest first; relay their progress."""
    import multiprocessing
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # The dataset (cifar10) may need a download: do it once here, before the workers start.
    if todo[0].dataset == "cifar10" and todo[0].data_dir is None:
        _job_data(todo[0])
    ctx = multiprocessing.get_context("spawn")
    events = ctx.Queue()
    order = sorted(todo, key=lambda job: -get_spec(job.encoder).cost)

    def relay() -> None:
        while True:
            try:
                event = events.get_nowait()
            except queue_mod.Empty:
                return
            getattr(reporter, event[0])(*event[1:])

    pool = ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_worker_init, initargs=(events, threads)
    )
    try:
        pending = {pool.submit(_worker_build, job): job for job in order}
        while pending:
            done, _ = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
            relay()
            for future in done:
                job = pending.pop(future)
                results[job.encoder] = future.result()  # re-raises a worker's exception
                if on_result is not None:
                    on_result(results[job.encoder])
        relay()
    except BaseException:
        # Ctrl-C or a failed build: stop the workers now. Every file they write is atomic and
        # meta.json comes last, so whatever they leave behind is never trusted.
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


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
    jobs: int | None = None,
) -> Path:
    """Make every listed encoder's latents and classifier present and valid; return the
    latents dir ``<cache_dir>/<dataset>`` (which holds ``<encoder>/{train,val,test}.npz``).

    ``progress=True`` shows rich progress bars on stderr. See ``encode`` for the details.
    """
    kwargs: dict[str, Any] = dict(
        seed=seed,
        image_size=image_size,
        pretrained=pretrained,
        data_dir=data_dir,
        weights=weights,
        limit=limit,
        epochs=epochs,
        jobs=jobs,
    )
    if progress:
        from semalign.encoders.progress import RichReporter

        with RichReporter() as reporter:
            encode(dataset, encoders, cache_dir, reporter=reporter, **kwargs)
    else:
        encode(dataset, encoders, cache_dir, **kwargs)
    return Path(cache_dir) / dataset


def load_latents(
    latents_dir: str | Path, encoder: str, split: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(latents, labels)`` of one encoder's split from a latents dir (``<cache>/<dataset>``)."""
    return load_split(Path(latents_dir) / encoder / f"{split}.npz")


def load_encoder_model(latents_dir: str | Path, encoder: str):
    """The trained from-scratch torch model behind a cache entry (eval mode), and its
    ``InputSpec``; for a node that needs to encode new images itself."""
    from semalign.encoders import train as tr

    folder = Path(latents_dir) / encoder
    meta = read_meta(folder)
    if meta is None or not meta.get("weights"):
        raise FileNotFoundError(f"no from-scratch weights recorded in {folder / META}")
    material = meta["key_material"]
    model, _ = _load_weights(
        get_spec(encoder), folder / meta["weights"], material, int(meta.get("num_classes", 10))
    )
    return model, tr.scratch_input(int(material["image_size"]))
