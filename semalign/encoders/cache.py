"""The latent cache: every node's latents, classifier and encoder weights on disk.

Layout (the simulator reads ``<cache>/<dataset>`` as its latents dir; ``store`` has the files
of one entry)::

    <cache>/<dataset>/<encoder>/{train,val,test}.npz, classifier.npz, classifier-mlp.npz,
        meta.json, weights-<key>.pt

Row i of a split is the same data point for every encoder. :func:`encode` (the command) and
:func:`ensure_latents` (the library callers) are one code path with the same defaults: check
every entry under its lock (``store.check_entry``), build what is missing, stale or damaged
(``build``, in worker processes: ``pool``), then check that the rows of every encoder line up
and give every entry its paper task model (the MLP, trained once on its native train latents).
The pieces: ``keys`` (cache keys), ``store`` (entries on disk), ``build`` (one entry), ``pool``
(several at once), ``reporter``/``progress`` (progress events and their display).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from semalign.common.latents import (
    SPLITS,
    Split,
    check_aligned,
    load_encoder_splits,
    load_split,
)
from semalign.encoders.build import BuildJob, load_weights
from semalign.encoders.datasets import check_dataset_name, check_limit
from semalign.encoders.keys import cache_key, cache_key_material
from semalign.encoders.registry import get_spec
from semalign.encoders.reporter import Reporter
from semalign.encoders.store import (
    META,
    EncoderResult,
    cached_result,
    check_entry,
    entry_lock,
    read_meta,
    write_meta,
)

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$SEMALIGN_CACHE`` if set, else ``./cache`` relative to the working directory."""
    env = os.environ.get("SEMALIGN_CACHE")
    return Path(env) if env else Path.cwd() / "cache"


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
    workers: int | None = None,
    reporter: Reporter | None = None,
    on_result: Callable[[EncoderResult], None] | None = None,
) -> list[EncoderResult]:
    """Make sure every encoder's entry under ``<cache_dir>/<dataset>`` is present and valid.

    Missing, stale (settings changed) or damaged entries are rebuilt: the encoder is trained
    from scratch on the training split (or loaded with pretrained weights), every split is
    encoded, and the user's classifier is fit on its native train latents. Returns one result
    per encoder, in the order given. Raises ValueError for unknown names,
    ``DatasetUnavailable`` / ``WeightsUnavailable`` when data or weights cannot be had here,
    ``LatentsError`` when the encoders' rows do not line up.

    Args:
        workers: entries built at once, each in its own process with ``cores // workers`` torch
            threads. Default (``pool.worker_count``): one per core, at most one per entry to
            build. ``workers=1`` builds in this process.
        limit, epochs: quick-test knobs (rows per split; epochs of every recipe); both are part
            of the cache key.
        on_result: called with each encoder's result as soon as it is known.
    """
    from semalign.encoders.pool import build_all, worker_count

    names = _check_arguments(dataset, encoders, image_size, pretrained, weights or {})
    check_limit(limit)
    if workers is not None:
        worker_count(1, workers)  # a bad count fails before any work
    common = {"seed": seed, "image_size": image_size, "pretrained": pretrained, "limit": limit}
    common |= {"epochs": epochs, "data_dir": data_dir, "device": device}
    root = Path(cache_dir) / dataset
    jobs = [
        _job(Path(cache_dir), dataset, name, weights_file=(weights or {}).get(name), **common)
        for name in names
    ]
    results, todo = _cached_or_todo(jobs, names, on_result)
    if pretrained and todo:  # weights that cannot be had fail here, before any build starts
        from semalign.encoders.train import check_pretrained_available

        check_pretrained_available([job.encoder for job in todo if job.weights_file is None])
    results.update(
        build_all(todo, workers=workers, reporter=reporter or Reporter(), on_result=on_result)
    )
    _check_alignment(root, names)
    for name, accuracy in _ensure_task_models(root, names).items():
        results[name].task_model_accuracy = accuracy
    return [results[name] for name in names]


def _cached_or_todo(
    jobs: list[BuildJob],
    names: list[str],
    on_result: Callable[[EncoderResult], None] | None,
) -> tuple[dict[str, EncoderResult], list[BuildJob]]:
    """The valid entries' results (each reported to ``on_result`` at once) and the jobs of the
    missing, stale or damaged ones, each with the reason it must be built."""
    results: dict[str, EncoderResult] = {}
    todo: list[BuildJob] = []
    for name, job in zip(names, jobs, strict=True):
        started = time.perf_counter()
        with entry_lock(job.folder):
            reason = check_entry(job.folder, job.key)
            if not reason:
                results[name] = cached_result(job.folder, name, started)
        if reason:
            todo.append(dataclasses.replace(job, reason=reason))
        elif on_result is not None:
            on_result(results[name])
    return results, todo


def _ensure_task_models(root: Path, names: list[str]) -> dict[str, float]:
    """Every entry's paper task model (``classifier-mlp.npz``), trained on its native train
    latents where it is missing or of another recipe, so that nodes without torch can load it.
    A valid one is left as it is, without reading the train split again.

    Returns each entry's test accuracy of that model (the default task model of every run),
    recorded in ``meta.json`` under ``task_model_accuracy`` with the model's recipe, so that a
    later run reads it instead of the test split.
    """
    from semalign.common.config import PAPER_TASK_MODEL
    from semalign.common.latents import MLP_CLASSIFIER_FILE, cached_mlp, load_task_model
    from semalign.common.task_models import recipe_key

    accuracies: dict[str, float] = {}
    for name in names:
        folder = root / name
        with entry_lock(folder):
            meta = read_meta(folder) or {}
            model = None
            if (folder / MLP_CLASSIFIER_FILE).is_file() and "dim" in meta:
                model = cached_mlp(folder / MLP_CLASSIFIER_FILE, int(meta["dim"]))[0]
            if model is None:
                model = load_task_model(
                    root, name, load_split(root, name, "train"), kind=PAPER_TASK_MODEL
                )
            recorded = _recorded_accuracy(meta, PAPER_TASK_MODEL, recipe_key())
            if recorded is not None:
                accuracies[name] = recorded
                continue
            test = load_split(root, name, "test")
            accuracies[name] = float(model.accuracy(test.latents, test.labels))
            if meta:
                known = meta.get("task_model_accuracy")
                meta["task_model_accuracy"] = {
                    **(known if isinstance(known, dict) else {}),
                    PAPER_TASK_MODEL: {"test": accuracies[name], "recipe": recipe_key()},
                }
                write_meta(folder, meta)
    return accuracies


def _recorded_accuracy(meta: dict[str, Any], kind: str, recipe: str) -> float | None:
    """The test accuracy ``meta.json`` records for the ``kind`` task model of ``recipe``, or
    None where it records none, another recipe's or something that is not an accuracy."""
    known = meta.get("task_model_accuracy")
    entry = known.get(kind) if isinstance(known, dict) else None
    if not isinstance(entry, dict) or entry.get("recipe") != recipe:
        return None
    value = entry.get("test")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        return None
    return float(value)


def _job(
    cache_dir: Path,
    dataset: str,
    encoder: str,
    *,
    seed: int,
    image_size: int,
    pretrained: bool,
    weights_file: str | Path | None,
    limit: int | None,
    epochs: int | None,
    data_dir: str | Path | None,
    device: str | None,
) -> BuildJob:
    """The build job of one entry, with its cache key (``reason`` is filled in if it is built)."""
    material = cache_key_material(
        dataset,
        encoder,
        seed=seed,
        image_size=image_size,
        pretrained=pretrained,
        limit=limit,
        weights_file=weights_file,
        epochs=epochs,
    )
    return BuildJob(
        folder=cache_dir / dataset / encoder,
        dataset=dataset,
        encoder=encoder,
        material=material,
        key=cache_key(material),
        reason="",
        seed=seed,
        image_size=image_size,
        pretrained=pretrained,
        weights_file=None if weights_file is None else str(weights_file),
        data_dir=None if data_dir is None else str(data_dir),
        limit=limit,
        download_root=str(cache_dir / "datasets"),
        device=device,
    )


def _check_arguments(
    dataset: str,
    encoders: list[str],
    image_size: int,
    pretrained: bool,
    weights: dict[str, str | Path],
) -> list[str]:
    """The encoder names, deduplicated; ValueError for anything wrong, before any work."""
    check_dataset_name(dataset)
    names = list(dict.fromkeys(encoders))
    if not names:
        raise ValueError("no encoder given")
    for name in names:
        get_spec(name)  # unknown names fail before any work
    if image_size < 8:
        raise ValueError(f"image size must be at least 8, got {image_size}")
    for name in weights:
        if name not in names:
            raise ValueError(f"--weights given for {name!r}, which is not being encoded")
    if weights and not pretrained:
        raise ValueError("--weights needs --pretrained")
    for name, path in weights.items():
        if not Path(path).is_file():
            raise ValueError(f"weights file for {name} not found: {path}")
    return names


def _check_alignment(root: Path, names: list[str]) -> None:
    """Every encoder's split files must list the same labels in the same order."""
    check_aligned({name: load_encoder_splits(root, name, SPLITS) for name in names})


def ensure_latents(
    dataset: str,
    encoders: list[str],
    cache_dir: str | Path,
    *,
    progress: bool = False,
    **options: Any,
) -> Path:
    """Make every listed encoder's latents and classifier present and valid; return the
    latents dir ``<cache_dir>/<dataset>`` (which holds ``<encoder>/{train,val,test}.npz``).

    ``progress=True`` shows rich progress bars on stderr. Every other option is
    :func:`encode`'s, with the same defaults (``workers``: one per core), so this and
    ``semalign encode`` build the same way. ``jobs`` is accepted as the old name of ``workers``.
    """
    if "jobs" in options:
        options.setdefault("workers", options.pop("jobs"))
    if progress:
        from semalign.encoders.progress import RichReporter

        with RichReporter() as reporter:
            encode(dataset, encoders, cache_dir, reporter=reporter, **options)
    else:
        encode(dataset, encoders, cache_dir, **options)
    return Path(cache_dir) / dataset


def load_latents(
    latents_dir: str | Path, encoder: str, split: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(latents, labels)`` of one encoder's split from a latents dir (``<cache>/<dataset>``);
    LatentsError if it is missing or damaged."""
    data: Split = load_split(latents_dir, encoder, split)
    return data.latents, data.labels


def load_encoder_model(latents_dir: str | Path, encoder: str):
    """The trained from-scratch torch model behind a cache entry (eval mode), and its
    ``InputSpec``; for a node that needs to encode new images itself."""
    from semalign.encoders import train as tr

    folder = Path(latents_dir) / encoder
    meta = read_meta(folder)
    if meta is None or not meta.get("weights"):
        raise FileNotFoundError(f"no from-scratch weights recorded in {folder / META}")
    material = meta["key_material"]
    model, _ = load_weights(
        get_spec(encoder), folder / meta["weights"], material, int(meta.get("num_classes", 10))
    )
    return model, tr.scratch_input(int(material["image_size"]))
