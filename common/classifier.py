"""Each user's downstream task: a linear softmax classifier on its own native latents.

A user trains it on its own native train latents (never on anything received) and uses it to
classify decoded latents. Weights are a plain ``.npz`` so any node can load them without torch.
"""

from __future__ import annotations

import io
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from semalign.common.errors import LatentsError
from semalign.common.io import atomic_write_bytes


class ScoreClassifier:
    """What every task model shares: labels from its scores (the subclass provides
    ``decision_function`` -> (n, c) scores and ``classes`` (c,))."""

    def predict(self, latents: np.ndarray) -> np.ndarray:
        """Predicted labels (n,) int64 for latents (n, d)."""
        return self.classes[np.argmax(self.decision_function(latents), axis=1)]

    def accuracy(self, latents: np.ndarray, labels: np.ndarray) -> float:
        """Fraction of rows of ``latents`` (n, d) classified as ``labels`` (n,)."""
        if len(labels) == 0:
            raise ValueError("accuracy of an empty set is undefined")
        return float(np.mean(self.predict(latents) == np.asarray(labels)))


@dataclass(frozen=True)
class LinearClassifier(ScoreClassifier):
    """Multinomial logistic regression on standardized features.

    Attributes:
        mean: (d,) feature mean used for standardization.
        scale: (d,) feature standard deviation (floored at 1e-8).
        weight: (c, d) class weights on standardized features.
        bias: (c,) class biases.
        classes: (c,) int64 class labels.
    """

    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: np.ndarray
    classes: np.ndarray

    kind = "logistic"

    @property
    def first_weight(self) -> np.ndarray:
        """(c, d): the linear map applied to :meth:`features` (task-oriented targets)."""
        return self.weight

    def features(self, latents: np.ndarray) -> np.ndarray:
        """Standardized latents (n, d): the input of the linear map."""
        return (np.asarray(latents, dtype=np.float64) - self.mean) / self.scale

    def head(self, features: np.ndarray) -> np.ndarray:
        """Scores (n, c) from :meth:`features` (n, d)."""
        return np.asarray(features, dtype=np.float64) @ self.weight.T + self.bias

    def decision_function(self, latents: np.ndarray) -> np.ndarray:
        """Scores (n, c) for latents (n, d)."""
        z = (np.asarray(latents, dtype=np.float64) - self.mean) / self.scale
        return z @ self.weight.T + self.bias

    def save(self, path: str | Path) -> None:
        """Write the weights to ``path`` (.npz) atomically."""
        buffer = io.BytesIO()
        np.savez(
            buffer,
            mean=self.mean,
            scale=self.scale,
            weight=self.weight,
            bias=self.bias,
            classes=self.classes,
        )
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> LinearClassifier:
        """The classifier saved at ``path``; LatentsError if it is missing, unreadable or its
        arrays do not make a classifier (shapes, dtypes, non-finite values, a zero scale)."""
        arrays = read_npz(path, ("mean", "scale", "weight", "bias", "classes"))
        check_model_arrays(path, arrays, cls.SHAPES)
        if not np.all(arrays["scale"] > 0):
            raise LatentsError(f"{path}: scale has zero or negative entries")
        return cls(**arrays)

    #: Each array's shape by dimension name (c classes, d features).
    SHAPES = {
        "mean": ("d",),
        "scale": ("d",),
        "weight": ("c", "d"),
        "bias": ("c",),
        "classes": ("c",),
    }


#: What numpy and zipfile raise on a truncated, corrupt or foreign file.
_UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)


def read_npz(path: str | Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays ``names`` of the ``.npz`` file at ``path`` (the reader of every cache file).

    Raises LatentsError naming the file and the problem when it is missing, truncated, corrupt,
    not an ``.npz`` archive or lacks one of ``names`` (never a zipfile or numpy error).
    """
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise LatentsError(f"missing {path}") from None
    except _UNREADABLE as exc:
        raise LatentsError(f"cannot read {path} (truncated or corrupt?): {exc}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise LatentsError(f"cannot read {path}: not an .npz archive")
    with data:
        missing = [name for name in names if name not in data.files]
        if missing:
            raise LatentsError(f"{path}: no {', '.join(map(repr, missing))} array")
        try:
            return {name: data[name] for name in names}
        except _UNREADABLE as exc:
            raise LatentsError(f"cannot read {path} (truncated or corrupt?): {exc}") from None


def check_model_arrays(
    path: str | Path, arrays: dict[str, np.ndarray], shapes: dict[str, tuple[str, ...]]
) -> None:
    """Check a task model read from ``path``: each array has the shape ``shapes`` names (equal
    names, equal sizes; every size at least 1), ``classes`` holds integers and every other
    array finite real numbers. LatentsError naming the file and the problem otherwise."""
    sizes: dict[str, int] = {}
    for name, dims in shapes.items():
        array = arrays[name]
        want = f"({', '.join(dims)})"
        if array.ndim != len(dims) or 0 in array.shape:
            raise LatentsError(f"{path}: {name} has shape {array.shape}, want {want}")
        for dim, size in zip(dims, array.shape, strict=True):
            if sizes.setdefault(dim, size) != size:
                raise LatentsError(
                    f"{path}: {name} has shape {array.shape}, want {want} with {dim}={sizes[dim]}"
                )
        if name == "classes":
            if array.dtype.kind not in "iu":
                raise LatentsError(f"{path}: classes are {array.dtype}, want integers")
        elif array.dtype.kind not in "fiu" or not np.all(np.isfinite(array)):
            raise LatentsError(f"{path}: {name} is not an array of finite real numbers")


def train_classifier(
    latents: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int = 0,
    c_reg: float = 1.0,
    max_iter: int = 500,
) -> LinearClassifier:
    """Fit a multinomial logistic regression (L2, lbfgs) to ``latents`` (n, d), ``labels`` (n,)."""
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(latents, dtype=np.float64)
    if x.ndim != 2 or len(x) != len(labels):
        raise ValueError(f"latents {x.shape} and labels ({len(labels)},) do not match")
    if not np.all(np.isfinite(x)):
        raise ValueError("latents contain non-finite values")
    mean = x.mean(axis=0)
    scale = np.maximum(x.std(axis=0), 1e-8)
    model = LogisticRegression(C=c_reg, max_iter=max_iter, random_state=seed)
    model.fit((x - mean) / scale, np.asarray(labels))
    classes = np.asarray(model.classes_, dtype=np.int64)
    weight, bias = model.coef_, model.intercept_
    if len(classes) == 2:  # sklearn returns one row for binary problems
        weight = np.vstack([-weight[0] / 2, weight[0] / 2])
        bias = np.array([-bias[0] / 2, bias[0] / 2])
    return LinearClassifier(mean=mean, scale=scale, weight=weight, bias=bias, classes=classes)
