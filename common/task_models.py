"""The paper's evaluation model: a small MLP on L2-normalized latents (``task_model="mlp"``).

Architecture (the authors' classifier): x / ||x|| -> LayerNorm(d) -> Linear(d, h) -> Tanh ->
LayerNorm(h) -> Linear(h, c). A user trains it with torch on its own native train latents (Adam,
fixed seeded recipe :data:`MLP_RECIPE`, CPU, full determinism for one seed) and the weights are a
plain ``.npz``: inference is numpy, so any node can load it without torch.

Both task models (:class:`~semalign.common.classifier.LinearClassifier` and
:class:`MlpClassifier`) expose the same interface: ``decision_function`` / ``predict`` /
``accuracy`` on latents, and the split ``features`` (the input of the first linear layer) /
``head`` (features to logits) with ``first_weight`` that task-oriented targets
(:mod:`semalign.common.targets`) use.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from semalign.common.classifier import (
    LinearClassifier,
    ScoreClassifier,
    check_model_arrays,
    read_npz,
    train_classifier,
)
from semalign.common.errors import LatentsError
from semalign.common.io import atomic_write_bytes

#: The fixed training recipe; its hash is stored with the weights (a changed recipe retrains).
MLP_RECIPE: dict[str, float | int] = {
    "hidden": 256,
    "epochs": 60,
    "batch_size": 64,
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "layernorm_eps": 1e-5,
}
TASK_MODELS: tuple[str, ...] = ("logistic", "mlp")


def recipe_key(recipe: dict | None = None) -> str:
    """16 hex digits identifying a training recipe."""
    text = json.dumps(recipe or MLP_RECIPE, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _layernorm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


@dataclass(frozen=True)
class MlpClassifier(ScoreClassifier):
    """The authors' MLP classifier (weights in torch's layout: Linear weight is (out, in)).

    Attributes:
        ln1_w, ln1_b: (d,) input LayerNorm.
        w1 (h, d), b1 (h,): first Linear.
        ln2_w, ln2_b: (h,) hidden LayerNorm.
        w2 (c, h), b2 (c,): output Linear.
        classes: (c,) int64 class labels.
        eps: LayerNorm epsilon.
        recipe: hash of the training recipe (:func:`recipe_key`).
    """

    ln1_w: np.ndarray
    ln1_b: np.ndarray
    w1: np.ndarray
    b1: np.ndarray
    ln2_w: np.ndarray
    ln2_b: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    classes: np.ndarray
    eps: float = 1e-5
    recipe: str = ""

    kind = "mlp"
    _ARRAYS = ("ln1_w", "ln1_b", "w1", "b1", "ln2_w", "ln2_b", "w2", "b2", "classes")
    #: Each array's shape by dimension name (d features, h hidden units, c classes).
    SHAPES = {
        "ln1_w": ("d",),
        "ln1_b": ("d",),
        "w1": ("h", "d"),
        "b1": ("h",),
        "ln2_w": ("h",),
        "ln2_b": ("h",),
        "w2": ("c", "h"),
        "b2": ("c",),
        "classes": ("c",),
    }

    @property
    def input_dim(self) -> int:
        return self.ln1_w.shape[0]

    @property
    def first_weight(self) -> np.ndarray:
        """(h, d): the linear map applied to :meth:`features`."""
        return self.w1

    def features(self, latents: np.ndarray) -> np.ndarray:
        """Input of the first Linear: LayerNorm(x / ||x||), (n, d)."""
        x = np.asarray(latents, dtype=np.float64)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return _layernorm(x, self.ln1_w, self.ln1_b, self.eps)

    def head(self, features: np.ndarray) -> np.ndarray:
        """Logits (n, c) from :meth:`features` (n, d)."""
        hidden = np.tanh(np.asarray(features, dtype=np.float64) @ self.w1.T + self.b1)
        return _layernorm(hidden, self.ln2_w, self.ln2_b, self.eps) @ self.w2.T + self.b2

    def decision_function(self, latents: np.ndarray) -> np.ndarray:
        """Scores (n, c) for latents (n, d)."""
        return self.head(self.features(latents))

    def save(self, path: str | Path) -> None:
        import io

        buffer = io.BytesIO()
        np.savez(
            buffer,
            **{name: getattr(self, name) for name in self._ARRAYS},
            eps=np.float64(self.eps),
            recipe=np.str_(self.recipe),
        )
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> MlpClassifier:
        """The MLP saved at ``path``; LatentsError if it is missing or unreadable."""
        arrays = read_npz(path, (*cls._ARRAYS, "eps", "recipe"))
        check_model_arrays(path, arrays, cls.SHAPES)
        eps = arrays["eps"]
        if eps.shape != () or eps.dtype.kind != "f" or not 0 < float(eps) < 1:
            raise LatentsError(f"{path}: eps is not a number in (0, 1)")
        if arrays["recipe"].shape != () or arrays["recipe"].dtype.kind != "U":
            raise LatentsError(f"{path}: recipe is not a string")
        return cls(
            **{name: arrays[name] for name in cls._ARRAYS},
            eps=float(arrays["eps"]),
            recipe=str(arrays["recipe"]),
        )


def train_mlp_classifier(
    latents: np.ndarray, labels: np.ndarray, *, seed: int = 0, recipe: dict | None = None
) -> MlpClassifier:
    """Train the MLP on ``latents`` (n, d), ``labels`` (n,) with torch on CPU (seeded)."""
    import torch
    from semalign.common.threads import single_torch_thread

    recipe = dict(recipe or MLP_RECIPE)
    x = np.asarray(latents, dtype=np.float32)
    if x.ndim != 2 or len(x) != len(labels):
        raise ValueError(f"latents {x.shape} and labels ({len(labels)},) do not match")
    if not np.all(np.isfinite(x)):
        raise ValueError("latents contain non-finite values")
    classes, y = np.unique(np.asarray(labels), return_inverse=True)
    d, c, h = x.shape[1], len(classes), int(recipe["hidden"])
    eps = float(recipe["layernorm_eps"])
    with single_torch_thread():  # deterministic and polite on a shared CPU
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        model = torch.nn.Sequential(
            torch.nn.LayerNorm(d, eps=eps),
            torch.nn.Linear(d, h),
            torch.nn.Tanh(),
            torch.nn.LayerNorm(h, eps=eps),
            torch.nn.Linear(h, c),
        )
        opt = torch.optim.Adam(
            model.parameters(), lr=float(recipe["lr"]), weight_decay=float(recipe["weight_decay"])
        )
        xt = torch.nn.functional.normalize(torch.from_numpy(x), dim=1)
        yt = torch.from_numpy(y.astype(np.int64))
        batch = int(recipe["batch_size"])
        model.train()
        for _ in range(int(recipe["epochs"])):
            order = torch.randperm(len(xt), generator=gen)
            for start in range(0, len(xt), batch):
                idx = order[start : start + batch]
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
                loss.backward()
                opt.step()
    p = [t.detach().double().numpy().copy() for t in model.parameters()]
    return MlpClassifier(
        ln1_w=p[0],
        ln1_b=p[1],
        w1=p[2],
        b1=p[3],
        ln2_w=p[4],
        ln2_b=p[5],
        w2=p[6],
        b2=p[7],
        classes=classes.astype(np.int64),
        eps=eps,
        recipe=recipe_key(recipe),
    )


#: Either task model (same interface).
TaskModel = LinearClassifier | MlpClassifier


def train_task_model(
    kind: str, latents: np.ndarray, labels: np.ndarray, *, seed: int = 0
) -> TaskModel:
    """Train task model ``kind`` (``logistic`` or ``mlp``) on native train latents."""
    if kind == "logistic":
        return train_classifier(latents, labels, seed=seed)
    if kind == "mlp":
        return train_mlp_classifier(latents, labels, seed=seed)
    raise ValueError(f"unknown task model {kind!r}; known: {', '.join(TASK_MODELS)}")
