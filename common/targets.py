"""Task-oriented alignment targets: what a user aligns instead of its raw latents.

A user computes its target locally from its own latents and its own task model, and the
protocol runs unchanged on it (the target is whitened locally like latents; only whitened
statistics of the target leave the user):

* ``latents`` (the paper): the native latents; decoded latents go to the task model.
* ``logits``: the task model's logits (c features); decoding is the argmax of the decoded
  logits.
* ``task-subspace``: the coordinates of the task model's first-layer input (standardized
  latents for ``logistic``, LayerNorm(x/||x||) for ``mlp``) in the top-r right singular
  subspace of its first weight matrix (r = ``target_dim``, 0: the number of classes); decoding
  maps the coordinates back into that input (the complement held at its train mean) and runs
  the rest of the task model. For ``logistic`` with r = c this is exact.

:func:`task_target` returns the transform (latents -> target) and the *head* that scores
targets (``decision_function`` / ``predict`` / ``accuracy``), which replaces the classifier
at evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

TARGETS: tuple[str, ...] = ("latents", "logits", "task-subspace")


class _Scorer:
    """predict / accuracy from ``decision_function`` and ``classes``."""

    classes: np.ndarray

    def decision_function(self, targets: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def predict(self, targets: np.ndarray) -> np.ndarray:
        return self.classes[np.argmax(self.decision_function(targets), axis=1)]

    def accuracy(self, targets: np.ndarray, labels: np.ndarray) -> float:
        if len(labels) == 0:
            raise ValueError("accuracy of an empty set is undefined")
        return float(np.mean(self.predict(targets) == np.asarray(labels)))


@dataclass(frozen=True)
class ArgmaxHead(_Scorer):
    """Scores logits targets: the decoded logits themselves."""

    classes: np.ndarray

    def decision_function(self, targets: np.ndarray) -> np.ndarray:
        return np.asarray(targets, dtype=np.float64)


@dataclass(frozen=True)
class SubspaceHead(_Scorer):
    """Scores subspace coordinates t (n, r): ``model.head(mean + t basis^T)``."""

    model: Any
    mean: np.ndarray  # (d,) train mean of the model's features
    basis: np.ndarray  # (d, r) orthonormal columns

    @property
    def classes(self) -> np.ndarray:  # type: ignore[override]
        return self.model.classes

    def decision_function(self, targets: np.ndarray) -> np.ndarray:
        return self.model.head(self.mean + np.asarray(targets, dtype=np.float64) @ self.basis.T)


def task_subspace(model: Any, train_latents: np.ndarray, dim: int = 0) -> tuple[np.ndarray, ...]:
    """(mean (d,), basis (d, r)) of the task subspace of ``model`` (see the module docstring)."""
    features = model.features(train_latents)
    _, _, vh = np.linalg.svd(np.asarray(model.first_weight, dtype=np.float64), full_matrices=False)
    r = dim if dim > 0 else len(model.classes)
    r = max(1, min(r, vh.shape[0]))
    return features.mean(axis=0), vh[:r].T


def task_target(
    model: Any, kind: str, train_latents: np.ndarray, dim: int = 0
) -> tuple[Callable[[np.ndarray], np.ndarray], Any]:
    """(transform, head) of target ``kind`` for task model ``model`` fitted on
    ``train_latents`` (n, d); ``transform`` maps latents (n, d) to targets (n, t) float32."""
    if kind == "latents":
        return (lambda x: np.asarray(x, dtype=np.float32)), model
    if kind == "logits":
        return (
            lambda x: model.decision_function(x).astype(np.float32),
            ArgmaxHead(classes=np.asarray(model.classes)),
        )
    if kind == "task-subspace":
        mean, basis = task_subspace(model, train_latents, dim)
        head = SubspaceHead(model=model, mean=mean, basis=basis)
        return (lambda x: ((model.features(x) - mean) @ basis).astype(np.float32)), head
    raise ValueError(f"unknown target {kind!r}; known: {', '.join(TARGETS)}")
