"""Statistics over runs that may have missing values (a dropped user, a failed seed)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def finite(values: Iterable[float | None]) -> list[float]:
    """The values that are numbers and not NaN (``None`` stands for a missing value)."""
    return [float(v) for v in values if v is not None and not math.isnan(v)]


def nan_mean(values: Iterable[float | None]) -> float:
    """Mean of the finite values; NaN when there are none."""
    kept = finite(values)
    return float(np.mean(kept)) if kept else float("nan")


def nan_std(values: Iterable[float | None]) -> float:
    """Population standard deviation (ddof=0) of the finite values; NaN when there are none."""
    kept = finite(values)
    return float(np.std(kept)) if kept else float("nan")
