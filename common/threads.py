"""BLAS threads: every thread for the products against the n pilots, one for the small ones.

The O(n) products of a round (Y S^H, P = (G H)^H Y, F X, P_l X^H) are large enough to use all
of BLAS's threads. Everything else (G-step solves, F-step eigendecompositions, the whole compact
protocol) works on matrices of a few hundred rows, where waking BLAS threads costs more than it
saves, and on a loaded machine far more (a thread that is descheduled stalls the product: a
(80, 42500) Hermitian product measured 25x slower on two threads than on one). Those run
inside :func:`single_thread`.

The limit is set through one cached :class:`threadpoolctl.ThreadpoolController` (about 10 us per
use, against milliseconds for a fresh ``threadpool_limits``) and restores the thread counts the
process had, so a caller's own limit (``--workers`` in sweeps: one thread per worker) stands.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np  # noqa: F401 (loads numpy's BLAS before the controller looks)
import scipy.linalg  # noqa: F401 (and scipy's)

_CONTROLLER = None


def _controller():
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER


@contextmanager
def single_thread() -> Iterator[None]:
    """Run the block with one BLAS thread (numpy's and scipy's OpenBLAS alike)."""
    with _controller().limit(limits=1, user_api="blas"):
        yield


def blas_threads() -> list[int]:
    """Current thread count of every loaded BLAS library (for benchmark headers)."""
    return [int(i["num_threads"]) for i in _controller().info() if i.get("user_api") == "blas"]
