"""Accuracy vs pilot budget for each pilot selection (docs/research.md, item 3).

Runs (or reuses) ``semalign simulate`` for every (selection, budget) and plots the figure:

    python benchmarks/research_pilots.py --latents cache/digits --out-dir results/pilots \
        --figure docs/figures/research-pilot-selection.png

Each run: ``semalign simulate --latents DIR --users paper-users --seeds 27,42 --channel-uses 4
--pilot-fraction F --pilot-selection M`` (fed, 4x4, SNR 20 dB), results in
``OUT/i3_<M>_<F>.json``; at 100 % every selection is the whole train split (one run, the
paper's ``first``). ``first`` below 100 % is not plotted: digits' train split is shuffled, so the
first n pilots are a random subset (``random`` stands for it, with a seed-dependent draw).

With ``--table`` it reads a ``semalign sweep`` table instead (pilot fractions and selections as
sweep axes, one row per seed and user, resumable, ``--workers`` in parallel), draws the same
figure with 95 % t intervals over the seeds, and prints the Markdown table of mean accuracy per
budget with each selection's share of the 100 %-pilot accuracy:

    semalign sweep --latents cache/digits-aug --groups homogeneous --antennas 4x4 --snr-db 20 \
        --channel-uses 4 --strategies fed --pilot-fractions 0.05,0.1,0.2,0.5 \
        --pilot-selections random,k-center,herding --seeds 27,42,100 --table T.csv
    semalign sweep ... --pilot-fractions 1 --pilot-selections first --table T.csv
    python benchmarks/research_pilots.py --table T.csv --figure F.png
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
            cmd += ["--user-encoders", users, "--seeds", seeds, "--channel-uses", str(k), "--quiet"]
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


def table_points(tables: list[str]):
    """The sweep's cells by (strategy, group, antennas, channel uses, selection):
    {fraction: Point}; the 100 % cell (any selection: every one is the whole train split) under
    ``"all"``."""
    from semalign.experiments.cells import aggregate, load_rows

    points: dict[tuple, dict[float, object]] = {}
    for p in aggregate(load_rows(tables)):
        fraction = float(p.params["pilot_fraction"])
        method = "all" if fraction == 1.0 else p.params["pilot_selection"]
        key = (p.params["strategy"], p.params["group"], p.params["antennas"])
        key += (int(p.params["channel_uses"]), method)
        points.setdefault(key, {})[fraction] = p
    return points


def plot_table(tables: list[str], figure: Path) -> list[str]:
    """Draw accuracy vs budget per selection (95 % t band over seeds) from sweep tables into
    ``figure`` (one panel per strategy, group, antennas and K) and return the Markdown table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from semalign.experiments.cells import band_halfwidth

    points = table_points(tables)
    panels = sorted({key[:4] for key in points})
    if not panels:
        raise SystemExit(f"no complete runs in {', '.join(tables)}")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 3.6), squeeze=False)
    lines = []
    for ax, panel in zip(axes[0], panels, strict=True):
        full = points.get((*panel, "all"), {}).get(1.0)
        fractions = sorted({f for key, cell in points.items() if key[:4] == panel for f in cell})
        methods = [m for m in (*METHODS, "first") if (*panel, m) in points]
        for method in methods:
            cells = sorted(points[(*panel, method)].items())
            xs = [100 * f for f, _ in cells]
            ys = [c.accuracy for _, c in cells]
            es = [band_halfwidth(c.samples["accuracy"]) for _, c in cells]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=method)
        if full is not None:
            ax.axhline(full.accuracy, color="k", ls="--", lw=1, label="100 % pilots")
        ax.set_xscale("log")
        ax.set_xticks([100 * f for f in fractions], [f"{100 * f:g}" for f in fractions])
        ax.set_xlabel("pilot budget (% of train)")
        ax.set_ylabel("mean accuracy over users")
        seeds = max(
            c.seeds for key, cell in points.items() if key[:4] == panel for c in cell.values()
        )
        strategy, group, antennas, k = panel
        ax.set_title(f"{strategy}, K={k}, {antennas}, {group}, {seeds} seeds", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(title="pilot selection", fontsize=8)
        lines += _markdown(panel, points, methods, fractions, full)
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=200)
    lines.append(f"wrote {figure}")
    return lines


def _markdown(panel, points, methods, fractions, full) -> list[str]:
    """Mean ± 95 % t half-width per budget and selection, and its share of the 100 % cell."""
    from semalign.experiments.cells import band_halfwidth

    strategy, group, antennas, k = panel
    head = f"{strategy}, {group}, {antennas}, K={k}"
    if full is not None:
        head += (
            f"; 100 % pilots: {full.accuracy:.3f} ± {band_halfwidth(full.samples['accuracy']):.3f}"
        )
        head += f" ({full.seeds} seeds)"
    lines = [f"**{head}**", "", "| budget | " + " | ".join(methods) + " |"]
    lines.append("|---" * (len(methods) + 1) + "|")
    for f in fractions:
        if f == 1.0:
            continue
        row = [f"{100 * f:g} %"]
        for m in methods:
            cell = points[(*panel, m)].get(f)
            if cell is None:
                row.append("")
                continue
            text = f"{cell.accuracy:.3f} ± {band_halfwidth(cell.samples['accuracy']):.3f}"
            if full is not None:
                text += f" ({100 * cell.accuracy / full.accuracy:.1f} %)"
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    return [*lines, ""]


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
    parser.add_argument(
        "--table",
        action="append",
        help="plot and tabulate a sweep table (repeatable) instead of running simulate",
    )
    parser.add_argument("--prefix", default=PREFIX, help="result file prefix")
    args = parser.parse_args()
    globals()["PREFIX"] = args.prefix
    if args.table:
        print("\n".join(plot_table(args.table, Path(args.figure))))
        return 0
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not args.plot_only:
        run(args.latents, out, args.users, args.seeds, args.channel_uses, args.protocol)
    plot(out, Path(args.figure), args.users, args.seeds, Path(args.latents).name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
