"""Cross-implementation check against the authors' code (``benchmarks/reference_check.py``).

Needs a checkout of SPAICOM/multi-agent-semantic-alignment: ``SEMALIGN_REFERENCE=PATH`` or
``pytest --reference PATH``; skipped without one. On small synthetic well-conditioned latents:

1. fed: the authors' ``BaseStation``/``Agent`` and semalign's engine, on the same latents, the
   same channel matrices and the same F^(0), without noise (where the reference's noise
   regularizer and noise scale do not act), give the same per-user test MSE;
2. semalign's First-K and Top-K (default fit: on the received pilots) are within 10 % of the
   benchmark's independent numpy implementation of the paper's order with a correct receiver
   (the linear MMSE estimate of the whitened symbols before de-whitening) at K = 1 and 2.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from semalign.common.threads import single_thread, single_torch_thread

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reference_check.py"

#: Largest relative difference of per-user test MSE accepted for fed without noise. Measured on
#: these latents (seeds 27, 42, 100; K = 1, 2; two users): 2.1e-6 at most, the reference
#: computing in complex64 (and dividing its covariances by n - 1, not n, which only rescales
#: rho by n / (n - 1) in its F-step). The tolerance is 10 times that.
FED_RTOL = 2e-5
#: semalign's baselines against the independent implementation: different noise draws move
#: the test MSE by about 1 % on these latents; 10 % is the issue's bound.
BASELINE_RTOL = 0.10


@pytest.fixture(scope="module")
def reference_path(request) -> str:
    path = request.config.getoption("--reference") or os.environ.get("SEMALIGN_REFERENCE")
    if not path:
        pytest.skip(
            "no checkout of the authors' code: set SEMALIGN_REFERENCE=PATH or pass "
            "--reference PATH (SPAICOM/multi-agent-semantic-alignment)"
        )
    return path


@pytest.fixture(scope="module")
def check(reference_path):
    spec = importlib.util.spec_from_file_location("reference_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def latents(check):
    return check.synthetic_latents()


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread(), single_torch_thread():
        yield


@pytest.mark.parametrize("k", [1, 2])
def test_fed_agrees_with_the_reference_without_noise(check, reference_path, latents, k):
    ref = check.Reference(reference_path)
    for seed in (27, 42):
        cfg = check.config("fed", k, check.NOISELESS_DB, seed, 4)
        ours = check.semalign_mse(latents, cfg)
        theirs = check.reference_fed(ref, latents, check.channels(latents, cfg), cfg, True)
        # "Z + G refresh": the reference's F-to-Z end of session replaced by semalign's (the
        # feasible Z transmitted, each user's G refreshed for it)
        np.testing.assert_allclose(theirs["Z + G refresh"], ours, rtol=FED_RTOL)


@pytest.mark.parametrize("strategy", ["first-k", "top-k"])
@pytest.mark.parametrize("k", [1, 2])
def test_semalign_baselines_match_the_paper_order(check, latents, strategy, k):
    cfg = check.config(strategy, k, 20.0, 42, 4)
    ours = np.mean(check.semalign_mse(latents, cfg))
    fit = ("received", True)  # semalign's default fit: Q on the received pilots, affine
    rng = np.random.default_rng(7)
    hbars = check.channels(latents, cfg)
    paper, _ = check.paper_baseline(latents, hbars, cfg, (fit,), rng, unmix="lmmse")
    assert abs(ours / np.mean(paper[fit]) - 1) <= BASELINE_RTOL, (ours, np.mean(paper[fit]))
