"""Cache keys: a fingerprint of everything that changes an encoder's latents.

The key is the first 16 hex digits of the sha256 of the key material (sorted, compact JSON).
Changing what goes into the material, or how it is serialized, invalidates every existing
cache: bump ``CACHE_VERSION`` when that is the intent, and never otherwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from semalign.encoders.datasets import DATA_VERSIONS
from semalign.encoders.registry import Recipe, get_spec

#: Bumped when the cache format or the encoding code changes what a key means.
CACHE_VERSION = 1


def sha256_file(path: Path) -> str:
    """Hex sha256 of the file at ``path`` (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_fingerprint(path: Path) -> str:
    """``<resolved path>:<size>:<sha256 prefix>`` of a pretrained weights file."""
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{sha256_file(path)[:16]}"


def effective_recipe(encoder: str, epochs: int | None = None) -> Recipe:
    """The registered recipe of ``encoder``, with ``epochs`` overridden if given."""
    recipe = get_spec(encoder).recipe
    if epochs is not None:
        if epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {epochs}")
        recipe = dataclasses.replace(recipe, epochs=epochs)
    return recipe


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
            weights_fingerprint(Path(weights_file)) if weights_file else "timm-default"
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


def cache_key(material: dict[str, Any]) -> str:
    """The 16-hex key of ``material`` (see the module docstring)."""
    blob = json.dumps(material, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
