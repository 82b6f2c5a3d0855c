"""The Fig. 2 table of docs/results.md (markdown) from a per-cell CSV of cell_means.py.

One row per antenna configuration and strategy, one column per K: the mean over seeds of the
network accuracy +/- its standard deviation over seeds (ddof=0), as the CSV has them.

    python docs/figures/fig2_table.py docs/data/fig2-cells.csv [K,K,...]   # default 1,2,4,8,20
"""

from __future__ import annotations

import csv
import sys

from semalign.experiments.cells import sort_key

#: How docs/results.md names the strategies.
LABELS = {"first-k": "First-K", "top-k": "Top-K"}


def markdown(cells: str, ks: list[int]) -> str:
    with open(cells, newline="") as fh:
        rows = list(csv.DictReader(fh))
    value = {
        (r["antennas"], r["strategy"], int(r["channel_uses"])): (
            float(r["accuracy"]),
            float(r["accuracy_std"]),
        )
        for r in rows
    }
    lines = ["| MIMO | strategy | " + " | ".join(f"K={k}" for k in ks) + " |"]
    lines.append("|---|---" + "|---" * len(ks) + "|")
    keys = sorted({(a, s) for a, s, _ in value}, key=lambda a_s: (a_s[0], sort_key(a_s[1])))
    for antennas, strategy in keys:
        cells_ = []
        for k in ks:
            mean, std = value.get((antennas, strategy, k), (float("nan"), float("nan")))
            cells_.append(f"{mean:.3f} ± {std:.3f}")
        label = LABELS.get(strategy, strategy)
        lines.append(f"| {antennas} | {label} | " + " | ".join(cells_) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    ks = [int(k) for k in (sys.argv[2] if len(sys.argv) > 2 else "1,2,4,8,20").split(",")]
    print(markdown(sys.argv[1], ks))
