"""Task-oriented targets against every baseline (docs/research.md, "Targets at every K").

Reads a sweep table over targets x strategies (both baseline fits) x K x antennas x groups and
prints, as Markdown:

1. per antenna configuration and user group, the mean accuracy over seeds of every method
   (strategy, and for First-K/Top-K the fitting variant) and target, one column per K;
2. per antenna configuration, group and K, the federated method with its best task target
   (logits or task-subspace) against the best *fair* baseline (First-K or Top-K, either fit,
   any target: the same channel uses as fed) and against multi-link (any target; one link per
   user, L times the channel resources), with the margins in points.

    python docs/figures/research_targets.py TABLE.csv [SEEDS]

SEEDS (e.g. ``27,42``): only those seeds' runs, so that every cell has the same seeds.
"""

from __future__ import annotations

import sys

from semalign.experiments.cells import aggregate, load_rows

METHODS = (
    ("fed", ""),
    ("multi-link", ""),
    ("first-k", "received"),
    ("first-k", "full"),
    ("top-k", "received"),
    ("top-k", "full"),
)
NAMES = {"fed": "fed", "multi-link": "multi-link", "first-k": "First-K", "top-k": "Top-K"}
TARGETS = ("latents", "logits", "task-subspace")
TASK_TARGETS = ("logits", "task-subspace")
FAIR = ("first-k", "top-k")


def _method(strategy: str, fit: str) -> str:
    return NAMES[strategy] + (f" ({fit} fit)" if fit else "")


def means(table: str, seeds: set[int] | None = None) -> dict[tuple, tuple[float, int]]:
    """(antennas, group, strategy, fit, target, K) -> (mean accuracy over seeds, seeds)."""
    rows = [r for r in load_rows([table]) if seeds is None or r["seed"] in seeds]
    out = {}
    for p in aggregate(rows):
        q = p.params
        key = (q["antennas"], q["group"], q["strategy"], q["baseline_fit"], q["target"])
        out[(*key, q["channel_uses"])] = (p.accuracy, p.seeds)
    return out


def accuracy_tables(data: dict, ks: list[int]) -> list[str]:
    lines = []
    for antennas, group in sorted({k[:2] for k in data}, key=lambda a: (-int(a[0][0]), a[1])):
        lines += [f"**{antennas}, {group}** (mean accuracy over seeds)", ""]
        lines.append("| method | target | " + " | ".join(f"K={k}" for k in ks) + " |")
        lines.append("|---|---|" + "---|" * len(ks))
        for strategy, fit in METHODS:
            for target in TARGETS:
                cells = [data.get((antennas, group, strategy, fit, target, k)) for k in ks]
                if not any(cells):
                    continue
                text = [f"{c[0]:.3f}" if c else "-" for c in cells]
                lines.append(f"| {_method(strategy, fit)} | {target} | " + " | ".join(text) + " |")
        lines.append("")
    return lines


def _best(data: dict, antennas: str, group: str, k: int, methods, targets) -> tuple[float, str]:
    found = [
        (data[key][0], f"{_method(s, f)}, {t}")
        for s, f in methods
        for t in targets
        if (key := (antennas, group, s, f, t, k)) in data
    ]
    return max(found) if found else (float("nan"), "-")


def verdict_rows(data: dict, ks: list[int]) -> list[tuple]:
    """Per (antennas, group, K): (antennas, group, K, fed, fair, multi), each of the last three
    a (mean accuracy, name) pair from :func:`_best` ((nan, "-") when the table has no run):
    fed with its best task target, the best fair baseline, multi-link with its best target."""
    fair = [m for m in METHODS if m[0] in FAIR]
    rows = []
    for antennas, group in sorted({k[:2] for k in data}, key=lambda a: (-int(a[0][0]), a[1])):
        for k in ks:
            fed = _best(data, antennas, group, k, [("fed", "")], TASK_TARGETS)
            base = _best(data, antennas, group, k, fair, TARGETS)
            multi = _best(data, antennas, group, k, [("multi-link", "")], TARGETS)
            rows.append((antennas, group, k, fed, base, multi))
    return rows


def verdict_table(data: dict, ks: list[int], multi_link: bool = True) -> list[str]:
    """:func:`verdict_rows` as Markdown; ``multi_link=False`` leaves out its two columns."""
    head = "| MIMO | group | K | fed, best task target | best fair baseline | margin |"
    rule = "|---|---|---|---|---|---|"
    if multi_link:
        head, rule = head + " multi-link (best target) | margin |", rule + "---|---|"
    lines = [head, rule]
    for antennas, group, k, (fed, fed_name), (base, base_name), (multi, multi_name) in verdict_rows(
        data, ks
    ):
        line = (
            f"| {antennas} | {group} | {k} | {fed:.3f} ({fed_name.split(', ')[-1]}) | "
            f"{base:.3f} ({base_name}) | {100 * (fed - base):+.1f} |"
        )
        if multi_link:
            line += f" {multi:.3f} ({multi_name.split(', ')[-1]}) | {100 * (fed - multi):+.1f} |"
        lines.append(line)
    return lines


def main(table: str, seeds: str | None = None) -> None:
    data = means(table, {int(s) for s in seeds.split(",")} if seeds else None)
    ks = sorted({k[-1] for k in data})
    seeds = sorted({v[1] for v in data.values()})
    print(f"<!-- {len(data)} cells, seeds per cell: {seeds} -->")
    print("\n".join(accuracy_tables(data, ks)))
    print("\n".join(verdict_table(data, ks)))


if __name__ == "__main__":
    main(*sys.argv[1:3])
