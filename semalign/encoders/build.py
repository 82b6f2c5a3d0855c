"""Building one cache entry: dataset -> train (or load) the encoder -> encode -> classifier ->
write the files, ``meta.json`` last.

A :class:`BuildJob` is plain data (picklable), so a worker process of ``pool`` can run it;
:func:`build_locked` is what either runs, in the worker or in this process.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semalign.encoders.datasets import FLIP_OK, SPLITS, Dataset
from semalign.encoders.keys import sha256_file
from semalign.encoders.registry import EncoderSpec, Recipe, get_spec
from semalign.encoders.reporter import Reporter
from semalign.encoders.store import (
    CLASSIFIER,
    EncoderResult,
    cached_result,
    check_entry,
    clear_entry,
    entry_lock,
    save_split,
    write_meta,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildJob:
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


_DATA_MEMO: dict[tuple, Dataset] = {}


def job_data(job: BuildJob) -> Dataset:
    """The job's dataset, loaded once per process for a run of jobs on the same data."""
    from semalign.encoders.datasets import load_dataset

    memo_key = (job.dataset, job.data_dir, job.limit, job.download_root)
    if memo_key not in _DATA_MEMO:
        _DATA_MEMO.clear()
        _DATA_MEMO[memo_key] = load_dataset(
            job.dataset, data_dir=job.data_dir, limit=job.limit, download_root=job.download_root
        )
    return _DATA_MEMO[memo_key]


def build_locked(job: BuildJob, reporter: Reporter) -> EncoderResult:
    """Build ``job`` holding its folder's lock; a valid entry found under the lock is reused."""
    started = time.perf_counter()
    with entry_lock(job.folder):
        if not check_entry(job.folder, job.key):  # another process built it meanwhile
            return cached_result(job.folder, job.encoder, started)
        log.info("%s/%s: building (%s)", job.dataset, job.encoder, job.reason)
        result = _build(job, reporter)
    result.reason = job.reason
    return result


def load_weights(spec: EncoderSpec, path: Path, material: dict[str, Any], num_classes: int):
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


@dataclass
class _Model:
    """The encoder of a build and how it came to be."""

    model: Any
    inputs: Any  # train.InputSpec
    trained: bool = False
    train_seconds: float = 0.0
    precision: str | None = None


def _build(job: BuildJob, reporter: Reporter) -> EncoderResult:
    """Train (or load) the encoder, encode every split, fit the classifier, write the entry."""
    started = time.perf_counter()
    cpu_started = time.process_time()
    # From here on nothing in this folder is trusted (meta.json goes first).
    clear_entry(job.folder)
    data = job_data(job)
    spec = get_spec(job.encoder)
    encoder = _pretrained(job) if job.pretrained else _scratch(job, spec, data, reporter)
    latents = _encode_splits(job, encoder, data, reporter)
    files = {
        f"{split}.npz": save_split(job.folder / f"{split}.npz", latents[split], data[split].labels)
        for split in SPLITS
    }
    classifier, test_acc, val_acc = _fit_classifier(latents, data, job.seed)
    classifier.save(job.folder / CLASSIFIER)
    files[CLASSIFIER] = {"sha256": sha256_file(job.folder / CLASSIFIER)}
    dim = int(latents["train"].shape[1])
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    meta = _meta(job, spec, data, encoder, files, dim, (val_acc, test_acc), (seconds, cpu_seconds))
    write_meta(job.folder, meta)
    # Weights of other settings stay (switching back is then cheap); bounded by the settings used.
    return EncoderResult(
        job.encoder,
        dim,
        test_acc,
        val_acc,
        seconds,
        cached=False,
        trained=encoder.trained,
        cpu_seconds=cpu_seconds,
        meta=meta,
    )


def _pretrained(job: BuildJob) -> _Model:
    from semalign.encoders import train as tr

    model, inputs = tr.build_pretrained_model(job.encoder, job.weights_file)
    return _Model(model, inputs)


def _scratch(job: BuildJob, spec: EncoderSpec, data: Dataset, reporter: Reporter) -> _Model:
    """The from-scratch encoder: the weights stored for this key, else trained now (and stored)."""
    from semalign.encoders import train as tr

    inputs = tr.scratch_input(job.image_size)
    weights_path = job.folder / f"weights-{job.key}.pt"
    if weights_path.is_file():
        try:
            model, precision = load_weights(spec, weights_path, job.material, data.num_classes)
            log.info("%s: loaded cached weights %s", job.encoder, weights_path.name)
            return _Model(model, inputs, precision=precision)
        except Exception as exc:  # corrupt or incompatible weights: retrain
            log.warning("%s: cached weights unusable (%s); retraining", job.encoder, exc)
    t0 = time.perf_counter()
    model = tr.train_scratch(
        spec,
        data["train"],
        image_size=job.image_size,
        seed=job.seed,
        flip=FLIP_OK[job.dataset],
        num_classes=data.num_classes,
        device=job.device,
        tick=_train_ticker(job.encoder, reporter),
        recipe=Recipe(**job.material["recipe"]),
    )
    reporter.end(job.encoder)
    train_seconds = time.perf_counter() - t0
    precision = model.training_precision  # set by train_scratch
    _save_weights(weights_path, model, precision)
    return _Model(model, inputs, trained=True, train_seconds=train_seconds, precision=precision)


def _train_ticker(encoder: str, reporter: Reporter):
    """A ``tick(done, total)`` for training that begins the phase on its first call."""
    steps_total = [0]

    def tick(done: int, total: int) -> None:
        if steps_total[0] != total:
            steps_total[0] = total
            reporter.begin(encoder, "train", total)
        reporter.update(encoder, done, total)

    return tick


def _save_weights(path: Path, model: Any, precision: str) -> None:
    import torch

    from semalign.common.io import atomic_write_bytes

    buffer = io.BytesIO()
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "training_precision": precision}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _encode_splits(
    job: BuildJob, encoder: _Model, data: Dataset, reporter: Reporter
) -> dict[str, np.ndarray]:
    """Every split's latents, one progress phase over all of them; frees the model after."""
    from semalign.encoders import train as tr

    total_rows = sum(len(data[split]) for split in SPLITS)
    reporter.begin(job.encoder, "encode", total_rows)
    done_rows = 0
    latents: dict[str, np.ndarray] = {}
    for split in SPLITS:
        offset = done_rows
        latents[split] = tr.extract_latents(
            encoder.model,
            data[split].images,
            encoder.inputs,
            device=job.device,
            tick=lambda done, _total, offset=offset: reporter.update(
                job.encoder, offset + done, total_rows
            ),
        )
        done_rows += len(data[split])
    reporter.end(job.encoder)
    encoder.model = None
    return latents


def _fit_classifier(latents: dict[str, np.ndarray], data: Dataset, seed: int):
    """The user's classifier on its native train latents, and its test and val accuracy."""
    from threadpoolctl import threadpool_limits

    from semalign.common.classifier import train_classifier

    # Single-threaded BLAS: this fit is small, and OpenBLAS's second thread spin-waits for a
    # core; measured here with other load on the two cores, the fit of a (64, 1024) problem
    # took 17 s with two BLAS threads and 0.19 s with one ((1257, 1280): 3.0 s and 0.20 s).
    with threadpool_limits(limits=1):
        classifier = train_classifier(latents["train"], data["train"].labels, seed=seed)
        test_acc = classifier.accuracy(latents["test"], data["test"].labels)
        val_acc = classifier.accuracy(latents["val"], data["val"].labels)
    return classifier, test_acc, val_acc


def _meta(
    job: BuildJob,
    spec: EncoderSpec,
    data: Dataset,
    encoder: _Model,
    files: dict[str, dict[str, Any]],
    dim: int,
    accuracies: tuple[float, float],
    timing: tuple[float, float],
) -> dict[str, Any]:
    """``meta.json`` of a finished build."""
    import timm
    import torch

    val_acc, test_acc = accuracies
    seconds, cpu_seconds = timing
    return {
        "key": job.key,
        "key_material": job.material,
        "dataset": job.dataset,
        "encoder": job.encoder,
        "family": spec.family,
        "dim": dim,
        "num_classes": int(data.num_classes),
        "input_size": encoder.inputs.size,
        "native_accuracy": {"val": val_acc, "test": test_acc},
        "train_seconds": round(encoder.train_seconds, 2),
        "training_precision": None if job.pretrained else encoder.precision,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "weights": None if job.pretrained else f"weights-{job.key}.pt",
        "files": files,
        "versions": {"torch": torch.__version__, "timm": timm.__version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
