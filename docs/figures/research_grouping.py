"""User grouping at equal total channel uses (docs/research.md, "User grouping").

Reads a sweep table of ``fed`` at several ``--user-groups`` counts G (G = 1: the paper's one F;
G = number of users: one F per user with the K channel uses split among them) and
``multi-link`` (one F and link per user, K channel uses *each*), draws accuracy vs zeta with
one line per variant (mean over seeds, 95 % t band: :mod:`semalign.experiments.figures`'
conventions) and prints, as Markdown, the mean ± std over seeds (ddof=0) per variant and K, and
each variant's paired per-seed difference to one F (mean, 95 % t half-width; same seed: same
channels and pilots).

    python docs/figures/research_grouping.py TABLE.csv FIGURE.png [LATENTS_DIR]

LATENTS_DIR (e.g. ``cache/digits``): also re-run each seed's grouping probe (5 federated
rounds, as the sweep did) and print which groups the CKA clustering found and their K_g.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from semalign.experiments.cells import aggregate, load_rows, t_interval
from semalign.experiments.figures import (
    ACC_LABEL,
    FigureStyle,
    _finish,
    _native_line,
    _points_line,
    _pyplot,
    _seeds_note,
    _x,
    _zeta_axis,
)

LOOKS = {
    ("fed", 1): ("one F (paper)", "tab:blue", "o", "-"),
    ("fed", 2): ("2 groups", "tab:green", "^", "-"),
    ("fed", 3): ("3 groups", "tab:purple", "D", "-"),
    ("fed", 4): ("F per user, K split", "tab:red", "v", "-"),
    ("multi-link", 1): ("multi-link, K per user", "tab:orange", "s", "--"),
}


def _variant(point) -> tuple[str, int]:
    return point.params["strategy"], int(point.params["user_groups"])


def _label(variant: tuple[str, int]) -> str:
    return LOOKS.get(variant, (f"{variant[0]}, {variant[1]} groups",))[0]


def draw(points, out: Path, style: FigureStyle | None = None) -> list[Path]:
    style = style or FigureStyle()
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for variant in sorted({_variant(p) for p in points}, key=lambda v: (v[0] != "fed", v[1])):
        line = sorted((p for p in points if _variant(p) == variant), key=lambda p: _x(p, "zeta"))
        label, color, marker, ls = LOOKS.get(variant, (_label(variant), None, "x", ":"))
        _points_line(ax, line, "zeta", style, label=label, color=color, marker=marker, linestyle=ls)
    _native_line(ax, points)
    _zeta_axis(ax, style)
    ax.set_ylabel(ACC_LABEL)
    ax.grid(alpha=0.3, which="both")
    p0 = points[0].params
    title = (
        f"User grouping at equal total channel uses ({p0['group']}, {p0['antennas']} MIMO, "
        f"SNR {p0['snr_db']:g} dB; {_seeds_note(points, style)})"
    )
    return _finish(fig, [ax], title, out.parent, out.stem, style, ("png",))


def tables(rows, points) -> list[str]:
    ks = sorted({p.params["channel_uses"] for p in points})
    variants = sorted({_variant(p) for p in points}, key=lambda v: (v[0] != "fed", v[1]))
    cell = {(_variant(p), p.params["channel_uses"]): p for p in points}
    seeds = sorted({r["seed"] for r in rows})
    per_seed = {}  # (variant, K, seed) -> accuracy
    for seed in seeds:
        for p in aggregate([r for r in rows if r["seed"] == seed]):
            per_seed[(_variant(p), p.params["channel_uses"], seed)] = p.accuracy
    head = "| variant | " + " | ".join(f"K={k}" for k in ks) + " |"
    rule = "|---|" + "---|" * len(ks)
    lines = ["Mean accuracy ± std over seeds (ddof=0):", "", head, rule]
    for v in variants:
        text = [
            f"{c.accuracy:.3f} ± {c.accuracy_std:.3f}" if (c := cell.get((v, k))) else "-"
            for k in ks
        ]
        lines.append(f"| {_label(v)} | " + " | ".join(text) + " |")
    lines += ["", "Paired per-seed difference to one F, points (mean ± 95 % t half-width):", ""]
    lines += [head, rule]
    for v in variants:
        if v == ("fed", 1):
            continue
        text = []
        for k in ks:
            diffs = [
                per_seed[(v, k, s)] - per_seed[(("fed", 1), k, s)]
                for s in seeds
                if (v, k, s) in per_seed and (("fed", 1), k, s) in per_seed
            ]
            mean, half = t_interval([100 * d for d in diffs])
            text.append(f"{mean:+.1f} ± {half:.1f}" if diffs else "-")
        lines.append(f"| {_label(v)} | " + " | ".join(text) + " |")
    return lines


def groups_found(latents: str, rows) -> list[str]:
    """Re-run the sweep's grouping probe per K and seed; tally the groups and K_g found."""
    from semalign.common.config import AlignmentConfig

    from semalign.encoders.registry import DEFAULT_AP, GROUPS
    from semalign.engine.grouping import cka_matrix, cluster, probe_uploads, split_channel_uses
    from semalign.engine.scenario import load_scenario

    first = rows[0]
    users = list(GROUPS[first["group"]])
    scenario = load_scenario(latents, first["ap_encoder"] or DEFAULT_AP, users)
    grouped = sorted(
        {(r["channel_uses"], r["user_groups"], r["seed"]) for r in rows if r["user_groups"] > 1}
    )
    probes = {}
    tally: dict[tuple[int, int], Counter] = {}
    for k, g, seed in grouped:
        if (k, seed) not in probes:
            cfg = AlignmentConfig(
                strategy="fed",
                antennas_tx=first["antennas_tx"],
                antennas_rx=first["antennas_rx"],
                channel_uses=k,
                snr_db=first["snr_db"],
                seed=seed,
            )
            probes[(k, seed)] = cka_matrix(probe_uploads(scenario, cfg))
        found = cluster(probes[(k, seed)], g)
        uses = split_channel_uses(k, found)
        text = " / ".join(
            "+".join(users[i] for i in members) + f" (K_g={u})"
            for members, u in zip(found, uses, strict=True)
        )
        tally.setdefault((k, g), Counter())[text] += 1
    lines = ["| K | groups | found (seeds) |", "|---|---|---|"]
    for (k, g), counts in sorted(tally.items()):
        for text, n in counts.most_common():
            lines.append(f"| {k} | {g} | {text} ({n}) |")
    return lines


def main(table: str, figure: str, latents: str | None = None) -> None:
    rows = load_rows([table])
    points = aggregate(rows)
    print(f"<!-- {len(points)} cells, seeds per cell: {sorted({p.seeds for p in points})} -->")
    print("\n".join(tables(rows, points)))
    for path in draw(points, Path(figure)):
        print(f"\n<!-- wrote {path} -->")
    if latents:
        print("\n" + "\n".join(groups_found(latents, rows)))


if __name__ == "__main__":
    main(*sys.argv[1:4])
