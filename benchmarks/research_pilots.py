"""Accuracy vs pilot budget for each pilot selection (docs/research.md, item 3).

Runs (or reuses) ``semalign simulate`` for every (selection, budget) and plots the figure:

    python benchmarks/research_pilots.py --latents cache/digits --out-dir results/pilots \
        --figure docs/figures/research-pilot-selection.png

Each run: ``semalign simulate --latents DIR --users paper-users --seeds 27,42 --channel-uses 4
--pilot-fraction F --pilot-selection M`` (fed, 4x4, SNR 20 dB), results in
``OUT/i3_<M>_<F>.json``; at 100 % every selection is the whole train split (one run, the
paper's ``first``). ``first`` below 100 % is not plotted: digits' train split is shuffled, so the
first n pilots are a random subset (``random`` stands for it, with a seed-dependent draw).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

BUDGETS = (0.05, 0.1, 0.2, 0.5, 1.0)
METHODS = ("random", "k-center", "herding")


PREFIX = "i3_"


def result_path(out: Path, method: str, budget: float) -> Path:
    name = f"first_{budget}" if budget == 1.0 else f"{method}_{budget}"
    return out / f"{PREFIX}{name}.json"


def run(latents: str, out: Path, users: str, seeds: str, k: int, protocol: str = "paper") -> None:
    for budget in BUDGETS:
        for method in METHODS if budget < 1.0 else ("first",):
            path = result_path(out, method, budget)
            if path.exists():
                continue
            cmd = [sys.executable, "-m", "semalign", "simulate", "--latents", latents]
            cmd += ["--users", users, "--seeds", seeds, "--channel-uses", str(k), "--quiet"]
            cmd += ["--pilot-fraction", str(budget), "--pilot-selection", method]
            cmd += ["--protocol", protocol]
            subprocess.run([*cmd, "--out", str(path)], check=True)


def plot(
    out: Path, figure: Path, users: str = "paper-users", seeds: str = "27,42", data: str = "digits"
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for method in METHODS:
        xs, ys, es = [], [], []
        for budget in BUDGETS:
            path = result_path(out, method, budget)
            if path.exists():
                r = json.loads(path.read_text())
                xs.append(100 * budget)
                ys.append(r["mean_accuracy"])
                es.append(r["std_accuracy"])
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_xticks([100 * b for b in BUDGETS], [f"{100 * b:g}" for b in BUDGETS])
    ax.set_xlabel("pilot budget (% of train)")
    ax.set_ylabel("mean accuracy over users")
    seeds_label = ", ".join(seeds.split(","))
    ax.set_title(f"fed, K=4, 4x4, 20 dB, {data}, {users}, seeds {seeds_label}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(title="pilot selection", fontsize=8)
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=200)
    print(f"wrote {figure}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latents", default="cache/digits")
    parser.add_argument("--out-dir", default="results/pilots")
    parser.add_argument("--users", default="paper-users")
    parser.add_argument("--seeds", default="27,42")
    parser.add_argument("--channel-uses", type=int, default=4)
    parser.add_argument("--figure", default="docs/figures/research-pilot-selection.png")
    parser.add_argument(
        "--protocol",
        choices=("paper", "compact"),
        default="paper",
        help="round protocol of every run (compact: same iterates to 1e-6, faster at large n)",
    )
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument("--prefix", default=PREFIX, help="result file prefix")
    args = parser.parse_args()
    globals()["PREFIX"] = args.prefix
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not args.plot_only:
        run(args.latents, out, args.users, args.seeds, args.channel_uses, args.protocol)
    plot(out, Path(args.figure), args.users, args.seeds, Path(args.latents).name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
