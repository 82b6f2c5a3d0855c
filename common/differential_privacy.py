"""Optional differential privacy of the secure-aggregation uploads (Gaussian mechanism).

With ``--dp-noise-multiplier z`` (> 0; needs ``--aggregation secure``) every user clips its
local pre-equalizer to Frobenius norm C (``--dp-clip``) and adds Gaussian noise to it before
masking, so that the sum the AP decodes each round is the Gaussian mechanism on the clipped
sum (the noise is distributed: each user adds its share).

* Adjacency: one user's data replaced by anything (user-level). The sum of the clipped F_l then
  moves by at most the sensitivity Delta = 2 C in L2 norm (over the real and imaginary parts).
* Noise: each user adds N(0, sigma_u^2) to every real coordinate, sigma_u = z Delta / sqrt(t)
  with t the secure-aggregation threshold: any sum the AP decodes has at least t uploads, so
  its noise has standard deviation at least z Delta per coordinate, also after drops.
* Accounting: T rounds of the Gaussian mechanism with noise multiplier z (no subsampling),
  composed with the Renyi-DP accountant of Opacus (``opacus.accountants.analysis.rdp``, from
  TensorFlow Privacy) and converted to (epsilon, delta). Opacus is an optional dependency
  (``pip install 'semalign[dp]'``); it imports torch.

The guarantee covers what the rounds upload. The loss scalars are not sent under DP (the
rounds' pilot MSE and objective are then unknown to the AP: NaN in the results); the final
broadcast's Ack and the evaluation report still carry each user's own metrics. The noise is
drawn in floating point from the operating system's entropy (numpy's PCG64 seeded by it), the
usual practice; a floating-point Gaussian is not an exact implementation of the mechanism.
"""

from __future__ import annotations

import math

import numpy as np
from semalign.common.errors import UsageError

#: Renyi orders at which the accountant evaluates the privacy loss: Opacus' default grid, with
#: orders down to 1.001 for the large epsilons of small noise
RDP_ORDERS = tuple(
    [1 + x / 1000.0 for x in range(1, 100)]
    + [1 + x / 10.0 for x in range(1, 100)]
    + list(range(12, 64))
)


def clip(f: np.ndarray, bound: float) -> np.ndarray:
    """``f`` scaled down to Frobenius norm at most ``bound`` (unchanged if within it)."""
    norm = float(np.linalg.norm(f))
    return f if norm <= bound else f * (bound / norm)


def user_noise_std(noise_multiplier: float, bound: float, threshold: int) -> float:
    """sigma_u = z (2 C) / sqrt(t): each user's share of the noise per real coordinate."""
    return noise_multiplier * 2.0 * bound / math.sqrt(threshold)


def add_noise(f: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """``f`` plus i.i.d. N(0, std^2) on every real coordinate (real and imaginary parts)."""
    noise = rng.standard_normal(f.shape)
    if np.iscomplexobj(f):
        noise = noise + 1j * rng.standard_normal(f.shape)
    return f + std * noise


def epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """The epsilon of ``rounds`` Gaussian mechanisms with ``noise_multiplier`` at ``delta``
    (Renyi-DP composition, Opacus). UsageError if Opacus is not installed."""
    try:
        from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
    except ImportError:
        raise UsageError(
            "differential privacy needs the accountant of Opacus: pip install 'semalign[dp]'"
        ) from None
    orders = list(RDP_ORDERS)
    rdp = compute_rdp(q=1.0, noise_multiplier=noise_multiplier, steps=rounds, orders=orders)
    eps, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(eps)
