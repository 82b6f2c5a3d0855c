"""Accuracy vs compression factor under channel correlation and CSI error (docs/results.md).

Reads a sweep table holding the two grids of docs/results.md ("Channels") and writes
``channels-accuracy-vs-zeta.png``: left, Kronecker correlation rho (rho_tx = rho_rx); right,
CSI error variance. Drawn in ``semalign plot``'s conventions, with its helpers
(:mod:`semalign.experiments.figures`): each point is the mean over seeds of the network
accuracy (the mean over users of each run) with its 95 % t confidence band over seeds, zeta in
% on a log axis, the legend below the panels, 200 dpi. Prints the table of docs/results.md (mean
over seeds per channel and K) and the latents' fingerprints.

    python docs/figures/channels.py TABLE.csv [OUT.png]
"""

from __future__ import annotations

import sys
from pathlib import Path

from semalign.experiments.cells import aggregate, group_by, load_rows
from semalign.experiments.figures import (
    ACC_LABEL,
    GROUP_COLORS,
    FigureStyle,
    _finish,
    _native_line,
    _points_line,
    _pyplot,
    _seeds_note,
    _zeta_axis,
)

#: (channel as the table names it, legend label, colour): the two panels' lines.
CORRELATED = [
    (f"kronecker(rho_tx={r:g},rho_rx={r:g})", f"Kronecker ρ = {r:g}", color)
    for r, color in zip((0, 0.5, 0.9), GROUP_COLORS[:3], strict=True)
]
CSI_ERRORS = [
    (f"rayleigh csi_err={e:g}" if e else "rayleigh", f"CSI error σ_e² = {e:g}", color)
    # not GROUP_COLORS' gray, the native line's colour
    for e, color in zip((0, 0.1, 0.3), (*GROUP_COLORS[3:5], "tab:olive"), strict=True)
]
PANELS = (
    (CORRELATED, "Kronecker correlation (rho_tx = rho_rx), perfect CSI"),
    (CSI_ERRORS, "CSI error (i.i.d. Rayleigh)"),
)


def draw(points, out: Path, style: FigureStyle | None = None) -> list[Path]:
    """The two panels, one line per channel, from :func:`aggregate`'s points."""
    style = style or FigureStyle()
    by_channel = group_by(points, ("channel",))
    fig, axes = _pyplot().subplots(1, 2, figsize=(10.0, 3.8), sharey=True)
    for ax, (channels, title) in zip(axes, PANELS, strict=True):
        drawn = []
        for channel, label, color in channels:
            line = by_channel.get((channel,), [])
            drawn += line
            _points_line(ax, line, "zeta", style, label=label, color=color, marker="o")
        _native_line(ax, drawn)
        ax.set_title(title, fontsize=9)
        _zeta_axis(ax, style)
        ax.grid(alpha=0.3, which="both" if style.x_scale == "log" else "major")
    axes[0].set_ylabel(ACC_LABEL)
    title = (
        "Fed, 4x4 MIMO, SNR 20 dB, paper-users, under correlation and CSI error "
        f"({_seeds_note(points, style)})"
    )
    return _finish(fig, axes, title, out.parent, out.stem, style, ("png",))


def markdown(points) -> str:
    """Mean accuracy over seeds: one row per channel of :data:`PANELS`, one column per K."""
    ks = sorted({p.params["channel_uses"] for p in points})
    cell = {(p.params["channel"], p.params["channel_uses"]): p for p in points}
    lines = ["| channel | " + " | ".join(f"K = {k}" for k in ks) + " |"]
    lines.append("|---" + "|---" * len(ks) + "|")
    for channels, _title in PANELS:
        for channel, label, _color in channels:
            values = [cell.get((channel, k)) for k in ks]
            text = [f"{p.accuracy:.3f}" if p else "" for p in values]
            lines.append(f"| {label} | " + " | ".join(text) + " |")
    return "\n".join(lines)


def main(table: str, out: str = "docs/figures/channels-accuracy-vs-zeta.png") -> None:
    rows = load_rows([table])
    points = aggregate(rows)
    for path in draw(points, Path(out)):
        print(f"wrote {path}")
    print(markdown(points))
    seeds = sorted({p.seeds for p in points})
    print(f"seeds per cell: {seeds}; latents_id: {sorted({r['latents_id'] for r in rows})}")


if __name__ == "__main__":
    main(*sys.argv[1:])
