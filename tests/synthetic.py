"""Synthetic latent caches for tests: users' latents are noisy linear maps of the AP's."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_latents(
    root: Path,
    *,
    ap_dim: int = 16,
    user_dims: tuple[int, ...] = (12, 20),
    n_train: int = 400,
    n_test: int = 120,
    classes: int = 4,
    noise: float = 0.05,
    seed: int = 0,
    ap_name: str = "ap_enc",
) -> tuple[Path, str, list[str]]:
    """Write ``<root>/<encoder>/{train,val,test}.npz``; returns (root, ap name, user names)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((classes, ap_dim)) * 2.0
    splits = {"train": n_train, "val": n_test // 2, "test": n_test}
    data = {}
    for split, n in splits.items():
        labels = rng.integers(0, classes, n).astype(np.int64)
        data[split] = (centers[labels] + rng.standard_normal((n, ap_dim)), labels)
    names = [ap_name] + [f"user_enc{i}" for i in range(len(user_dims))]
    maps = [np.eye(ap_dim)] + [rng.standard_normal((ap_dim, m)) for m in user_dims]
    for name, w in zip(names, maps, strict=True):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for split, (s_ap, labels) in data.items():
            lat = s_ap @ w + (
                noise * rng.standard_normal((len(s_ap), w.shape[1])) if name != ap_name else 0
            )
            np.savez(folder / f"{split}.npz", latents=lat.astype(np.float32), labels=labels)
    return root, ap_name, names[1:]
