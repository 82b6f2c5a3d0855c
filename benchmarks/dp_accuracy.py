"""Accuracy against epsilon: secure aggregation with differential privacy, in-process.

For every noise multiplier z, runs ``fed`` with ``--protocol compact --aggregation secure
--dp-noise-multiplier z`` (clip C, T rounds) over several seeds on a latent cache (by default
synthetic latents: an AP of d = 32 reals, ten users of 24-40 reals, 10 classes; K N_T = 8
symbols carry half of the AP latent), and prints and writes per z: epsilon at delta (Renyi-DP
accountant, Opacus), mean and standard deviation over seeds of the users' mean test accuracy,
and their mean test MSE; z = 0 is secure aggregation without noise (epsilon infinite).
Optionally draws accuracy and MSE against epsilon.

    python benchmarks/dp_accuracy.py --csv docs/data/dp-accuracy-vs-epsilon.csv \
        --figure docs/figures/dp-accuracy-vs-epsilon.png
    python benchmarks/dp_accuracy.py --latents CACHE --ap-encoder AP --user-encoders A,B,C
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
import tempfile
from pathlib import Path

from semalign.common.config import AlignmentConfig
from semalign.common.differential_privacy import epsilon

from semalign.engine.scenario import load_scenario
from semalign.engine.simulate import simulate_seed

NOISE = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


def synthetic_cache(root: Path) -> tuple[Path, str, list[str]]:
    """The synthetic latents of the test suite, at a larger size (tests/synthetic.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from synthetic import make_latents

    dims = (24, 40, 28, 36, 32, 24, 40, 28, 36, 32)
    return make_latents(root, ap_dim=32, user_dims=dims, n_train=1000, n_test=400, classes=10)


def measure(scenario, config: AlignmentConfig, seeds: list[int]) -> dict:
    """Mean and standard deviation over seeds of the users' mean accuracy and MSE."""
    acc, mse = [], []
    for seed in seeds:
        block = simulate_seed(scenario, config.model_copy(update={"seed": seed}))
        users = [u for u in block.to_dict()["users"] if u["accuracy"] is not None]
        acc.append(statistics.fmean(u["accuracy"] for u in users))
        mse.append(statistics.fmean(u["mse"] for u in users))
    spread = statistics.stdev(acc) if len(acc) > 1 else 0.0
    return {"accuracy": statistics.fmean(acc), "accuracy_std": spread, "mse": statistics.fmean(mse)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latents", help="latent cache (default: synthetic latents)")
    parser.add_argument("--ap-encoder", default="ap_enc")
    parser.add_argument("--user-encoders", default="")
    parser.add_argument("--noise", type=float, nargs="+", default=list(NOISE))
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--csv", type=Path)
    parser.add_argument("--figure", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.latents:
            root, ap, users = Path(args.latents), args.ap_encoder, args.user_encoders.split(",")
        else:
            root, ap, users = synthetic_cache(Path(tmp))
        run(args, load_scenario(root, ap, users), len(users))


def run(args, scenario, users: int) -> None:
    """Every noise multiplier over every seed: the table, and the CSV and figure if asked."""
    base = AlignmentConfig(
        protocol="compact",
        aggregation="secure",
        iterations=args.iterations,
        dp_clip=args.clip,
        dp_delta=args.delta,
    )
    plain = measure(scenario, base.model_copy(update={"aggregation": "plain"}), args.seeds)
    rows = []
    print(f"L={users} T={args.iterations} C={args.clip} delta={args.delta:g} seeds={args.seeds}")
    print(f"plain aggregation: accuracy {plain['accuracy']:.4f}")
    print(f"{'z':>8s} {'epsilon':>12s} {'accuracy':>9s} {'+/-':>7s} {'mse':>10s}")
    for z in args.noise:
        eps = epsilon(z, args.iterations, args.delta) if z > 0 else math.inf
        got = measure(scenario, base.model_copy(update={"dp_noise_multiplier": z}), args.seeds)
        rows.append({"noise_multiplier": z, "epsilon": eps, **got})
        spread = got["accuracy_std"]
        print(f"{z:8g} {eps:12.4g} {got['accuracy']:9.4f} {spread:7.4f} {got['mse']:10.4g}")
    if args.csv:
        with args.csv.open("w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if args.figure:
        draw(rows, plain, args, users)


def draw(rows: list[dict], plain: dict, args, users: int) -> None:
    """Accuracy (mean over seeds, +/- one standard deviation) and MSE against epsilon."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    noisy = [r for r in rows if math.isfinite(r["epsilon"])]
    eps = [r["epsilon"] for r in noisy]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.5, 5.2), sharex=True)
    top.errorbar(
        eps,
        [r["accuracy"] for r in noisy],
        yerr=[r["accuracy_std"] for r in noisy],
        marker="o",
        capsize=3,
        label="secure + DP",
    )
    top.axhline(plain["accuracy"], color="grey", linestyle="--", label="no DP")
    top.set_ylabel("test accuracy")
    top.set_title(f"fed, {users} users, T = {args.iterations}, clip C = {args.clip:g}", fontsize=10)
    top.legend(fontsize=8)
    bottom.plot(eps, [r["mse"] for r in noisy], marker="o")
    bottom.axhline(plain["mse"], color="grey", linestyle="--")
    bottom.set_ylabel("test MSE (native)")
    bottom.set_xscale("log")
    bottom.set_xlabel(f"epsilon (delta = {args.delta:g})")
    fig.tight_layout()
    fig.savefig(args.figure, dpi=150)


if __name__ == "__main__":
    main()
