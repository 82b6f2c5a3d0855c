"""Top-K with its index bits charged against Top-K with free indices (docs/research.md,
"Top-K with its index bits charged").

Reads a sweep table of ``top-k`` run with ``--topk-index-cost channel-uses`` (both baseline
fits, the three targets) and the targets sweep with free indices (its table, or its per-cell
means such as ``docs/data/research-targets-mlp-cells.csv``), and prints, as Markdown:

1. how the K channel uses split into data and index uses (and the index bits per sample);
2. per MIMO, group and fitting variant, Top-K's best target, free -> charged, per K;
3. the targets sweep's verdict table (:func:`research_targets.verdict_table`) with Top-K's
   free numbers replaced by the charged ones, and how many cells fed still wins (without the
   multi-link columns when FREE has no multi-link runs).

    python docs/figures/research_topk_charged.py CHARGED.csv FREE.csv
"""

from __future__ import annotations

import csv
import sys

from research_targets import TARGETS, means, verdict_rows, verdict_table

from semalign.experiments.cells import load_rows


def free_means(path: str) -> dict[tuple, tuple[float, int]]:
    """The same keys as :func:`research_targets.means`, from a sweep table or from a per-cell
    means CSV (``docs/figures/cell_means.py``)."""
    with open(path, newline="") as fh:
        if "run_key" in next(csv.reader(fh)):
            return means(path)
    out = {}
    with open(path, newline="") as fh:
        for r in csv.DictReader(fh):
            key = (r["antennas"], r["group"], r["strategy"], r["baseline_fit"], r["target"])
            out[(*key, int(r["channel_uses"]))] = (float(r["accuracy"]), int(r["seeds"]))
    return out


def _best(data, antennas, group, fit, k) -> tuple[float, str] | None:
    found = [
        (data[key][0], t) for t in TARGETS if (key := (antennas, group, "top-k", fit, t, k)) in data
    ]
    return max(found) if found else None


def split_table(rows) -> list[str]:
    uses = sorted(
        {
            (r["antennas"], r["channel_uses"], r["data_channel_uses"], r["index_channel_uses"])
            + (r["index_bits_per_sample"],)
            for r in rows
        },
        key=lambda u: (-int(u[0][0]), u[1]),
    )
    lines = ["| MIMO | K | data uses | index uses | index bits per sample |"]
    lines.append("|---|---|---|---|---|")
    lines += [f"| {a} | {k} | {d} | {i} | {b} |" for a, k, d, i, b in uses]
    return lines


def free_vs_charged(free, charged, ks) -> list[str]:
    lines = [
        "| MIMO | group | Top-K fit | " + " | ".join(f"K={k}" for k in ks) + " |",
        "|---|---|---|" + "---|" * len(ks),
    ]
    contexts = sorted({k[:2] for k in charged}, key=lambda a: (-int(a[0][0]), a[1]))
    for antennas, group in contexts:
        for fit in ("received", "full"):
            cells = []
            for k in ks:
                f = _best(free, antennas, group, fit, k)
                c = _best(charged, antennas, group, fit, k)
                cells.append(
                    (f"{f[0]:.3f}" if f else "-") + " → " + (f"{c[0]:.3f}" if c else "none")
                )
            lines.append(f"| {antennas} | {group} | {fit} | " + " | ".join(cells) + " |")
    return lines


def main(charged_table: str, free_cells: str) -> None:
    rows = load_rows([charged_table])
    assert {r["topk_index_cost"] for r in rows} == {"channel-uses"}, "not a charged table"
    charged = means(charged_table)
    free = free_means(free_cells)
    ks = sorted({k[-1] for k in free})
    seeds = sorted({v[1] for v in charged.values()})
    print(f"<!-- {len(charged)} charged cells, seeds per cell: {seeds} -->")
    print("\n".join(split_table(rows)) + "\n")
    print("Top-K's best target (mean accuracy over seeds), free indices → charged:\n")
    print("\n".join(free_vs_charged(free, charged, ks)) + "\n")
    combined = {k: v for k, v in free.items() if k[2] != "top-k"} | charged
    multi_link = any(key[2] == "multi-link" for key in combined)  # else its columns are empty
    print("\n".join(verdict_table(combined, ks, multi_link=multi_link)))
    rows_ = verdict_rows(combined, ks)
    margins = [round(100 * (fed[0] - base[0]), 1) for *_, fed, base, _multi in rows_]
    wins = sum(m > 0 for m in margins)
    print(f"\nfed ahead of the best fair baseline (Top-K charged) in {wins} of {len(margins)}")
    names = {base[1] for *_, base, _multi in rows_}
    print("best fair baselines: " + "; ".join(sorted(names)))


if __name__ == "__main__":
    main(*sys.argv[1:3])
