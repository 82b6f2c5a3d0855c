"""Datasets, timm encoders and the latent cache.

Public API (importing this package is cheap; torch and timm load only when encoding):

- ``registry``: ``DEFAULT_AP``, ``GROUPS``, ``DEFAULT_SET``, ``resolve_encoders(spec)``,
  ``get_spec(name)``.
- ``ensure_latents(dataset, encoders, cache_dir, *, progress=False, **encode_options) -> Path``:
  make the cache entries present and valid, return ``<cache_dir>/<dataset>`` (the simulator's
  latents dir).
- ``encode(...) -> list[EncoderResult]``: the same with per-encoder results (the one build
  path of both, and of ``semalign encode``).
- ``default_cache_dir() -> Path``: ``$SEMALIGN_CACHE`` or ``./cache``.
- ``load_latents(latents_dir, encoder, split)``, ``load_encoder_model(latents_dir, encoder)``.
- ``Reporter``: the progress protocol ``encode`` reports to.

Modules: ``cache`` (the API above), ``keys`` (cache keys), ``store`` (entries on disk),
``build`` (building one entry), ``pool`` (several at once), ``reporter`` and ``progress``
(progress events and their display), ``datasets``, ``train``, ``registry``.
"""

from __future__ import annotations

from typing import Any

from semalign.encoders import registry
from semalign.encoders.registry import DEFAULT_AP, DEFAULT_SET, GROUPS, get_spec, resolve_encoders

_LAZY = {
    "ensure_latents": "semalign.encoders.cache",
    "encode": "semalign.encoders.cache",
    "default_cache_dir": "semalign.encoders.cache",
    "load_latents": "semalign.encoders.cache",
    "load_encoder_model": "semalign.encoders.cache",
    "EncoderResult": "semalign.encoders.store",
    "Reporter": "semalign.encoders.reporter",
    "DATASETS": "semalign.encoders.datasets",
    "load_dataset": "semalign.encoders.datasets",
    "DatasetUnavailable": "semalign.common.errors",
    "WeightsUnavailable": "semalign.common.errors",
}

__all__ = [
    "DEFAULT_AP",
    "DEFAULT_SET",
    "GROUPS",
    "get_spec",
    "registry",
    "resolve_encoders",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'semalign.encoders' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
