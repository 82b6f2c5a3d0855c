"""The compact user's round two ways, side by side: explicit (form G_l, then A_l, P_l X^H and the
loss terms from it) and ``admm.compact_step`` (from (K N_R, c) and (c, c) matrices, G_l never
formed), on random matrices of the paper-scale shapes.

    nice python benchmarks/compact_step.py                 # m = 640, c = 192, K*N_T = 4, 16, 80
    python benchmarks/compact_step.py --reps 30 --json out.json

Both run on one BLAS thread (as the user's round does), interleaved, each first call untimed;
the ratio of the medians is what to compare between runs. The load average is printed before
and after. The two results agree to 1e-9 (tests/test_core_math.py), checked again here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from measure_env import load_average_line, print_load
from semalign.common import admm
from semalign.common.threads import single_thread


def explicit(r, hf, hbar, gram, y_norm2, n, noise_var):
    """The round as the compact protocol first computed it: G_l (m, K N_R) formed."""
    pp = admm.compact_products(r, hf, gram, y_norm2, n)
    g = admm.g_step(None, None, noise_var, pp)
    sq, noise = admm.local_objective_terms(None, g, None, noise_var, pp)
    a, cross = admm.uplink_statistics(g, hbar, r)
    return a, cross, sq, noise


def measure(m: int, c: int, k_nt: int, n: int, reps: int, seed: int = 0) -> dict:
    """Median seconds of both ways over ``reps`` interleaved warm calls, and their agreement."""
    rng = np.random.default_rng(seed)

    def crandn(*shape):
        return rng.standard_normal(shape) + 1j * rng.standard_normal(shape)

    x = crandn(c, 4 * c)
    gram = x @ x.conj().T * (n / x.shape[1])
    r, hbar, f = crandn(m, c) * np.sqrt(n), crandn(k_nt, k_nt), crandn(k_nt, c)
    hf, cross_gram = hbar @ f, r.conj().T @ r
    y_norm2, noise_var = float(n * m), 0.05
    ways = {
        "explicit": lambda: explicit(r, hf, hbar, gram, y_norm2, n, noise_var),
        "compact_step": lambda: admm.compact_step(
            hf, hbar, gram, cross_gram, y_norm2, n, noise_var
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    with single_thread():
        out = {name: fn() for name, fn in ways.items()}  # warm-up, and the agreement
        for _ in range(reps):
            for name, fn in ways.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    a, cross, _, _ = out["explicit"]
    step = out["compact_step"]
    agreement = max(
        np.linalg.norm(step.a - a) / np.linalg.norm(a),
        np.linalg.norm(step.cross - cross) / np.linalg.norm(cross),
    )
    med = {name: statistics.median(ts) for name, ts in times.items()}
    return {
        "k_nt": k_nt,
        "explicit_s": med["explicit"],
        "compact_step_s": med["compact_step"],
        "speedup": med["explicit"] / med["compact_step"],
        "agreement": float(agreement),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=640, help="user complex dim m (real dim 2m)")
    parser.add_argument("--c", type=int, default=192, help="AP complex dim c (real dim 2c)")
    parser.add_argument("--symbols", default="4,16,80", help="K*N_T values (N_R = N_T)")
    parser.add_argument("--pilots", type=int, default=42_500, help="n (scales the matrices)")
    parser.add_argument("--reps", type=int, default=15, help="timed calls per way")
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args()
    print(f"m={args.m}, c={args.c}, one BLAS thread; {load_average_line(2)}", flush=True)
    rows = []
    for k_nt in (int(v) for v in args.symbols.split(",")):
        row = measure(args.m, args.c, k_nt, args.pilots, args.reps)
        rows.append(row)
        print(
            f"K*N_T={k_nt:3d}: explicit {row['explicit_s'] * 1e3:7.2f} ms, compact_step "
            f"{row['compact_step_s'] * 1e3:7.2f} ms, {row['speedup']:.2f}x "
            f"(agreement {row['agreement']:.1e})",
            flush=True,
        )
    print_load("after", digits=2)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
