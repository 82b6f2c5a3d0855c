"""BLAS threads: every thread for the products against the n pilots, one for the small ones.

The O(n) products of a round (Y S^H, P = (G H)^H Y, F X, P_l X^H) are large enough to use all
of BLAS's threads. Everything else (G-step solves, F-step eigendecompositions, the whole compact
protocol) works on matrices of a few hundred rows, where waking BLAS threads costs more than it
saves, and on a loaded machine far more (a thread that is descheduled stalls the product: a
(80, 42500) Hermitian product measured 25x slower on two threads than on one). Those run
inside :func:`single_thread`.

The limit is set through the libraries of one cached :class:`threadpoolctl.ThreadpoolController`
(microseconds per use, against milliseconds for a fresh ``threadpool_limits``) and restores the
thread counts the process had, so a caller's own limit (``--workers`` in sweeps: one thread per
worker) stands.
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


def _blas_libraries() -> list:
    return [lib for lib in _controller().lib_controllers if lib.user_api == "blas"]


@contextmanager
def single_thread() -> Iterator[None]:
    """Run the block with one BLAS thread (numpy's and scipy's OpenBLAS alike).

    Only libraries running more than one thread are touched, and each gets back the count it
    had: nested blocks and callers that already limited threads cost a query each.
    """
    changed = []
    for lib in _blas_libraries():
        threads = lib.num_threads
        if threads != 1:
            lib.set_num_threads(1)
            changed.append((lib, threads))
    try:
        yield
    finally:
        for lib, threads in changed:
            lib.set_num_threads(threads)


@contextmanager
def single_torch_thread() -> Iterator[None]:
    """Run the block with one torch intra-op thread; the count the process had comes back after.

    A CPU kernel splits its reductions by thread count, so its last bits depend on it: code
    whose torch results must not depend on the machine's cores or a worker's share of them
    (training a task model, extracting latents) runs inside this block. Imports torch.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def blas_threads() -> list[int]:
    """Current thread count of every loaded BLAS library (for benchmark headers)."""
    return [int(i["num_threads"]) for i in _controller().info() if i.get("user_api") == "blas"]
