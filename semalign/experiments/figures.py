"""``semalign plot``: the paper's figures from a sweep table (matplotlib, Agg backend).

(Over 450 lines: the three figures share their drawing, styles and line grouping, one concept;
what they draw, the cells and which of their columns differ, is :mod:`.cells`.)

Every figure shows, per point, the mean over seeds of the network accuracy (the mean over users
of each user's task accuracy in that run) with a band over seeds: by default the 95 %
confidence interval of that mean (Student's t with n - 1 degrees of freedom, sample standard
deviation with ddof=1: mean +/- t_{0.975, n-1} s / sqrt(n); no band for one seed), or +/- one
(population) standard deviation, or none (:class:`FigureStyle`). Only complete runs are read
(see :func:`semalign.experiments.table.read_table`).

Conventions: the compression factor zeta is shown in % on a logarithmic axis (linear on
request), PNGs are written at 200 dpi, and the legend sits below the panels, outside every
axes, so it never hides data.

Figures (each written as PNG and PDF by default):

* ``fig2``: accuracy vs compression factor zeta = K/(d/2), one panel per antenna configuration,
  the strategies side by side (paper Fig. 2). One file per combination of group, SNR, pilot
  fraction and CSI mode found in the table that compares two or more strategies.
* ``fig3``: network MSE on the pilots (the ADMM objective's error term, whitened: 1.0 means
  nothing explained), latent MSE on held-out test data (each user's native space) and accuracy
  vs zeta, one line per user group (colour) and pilot fraction (line style) (paper Fig. 3).
  One file per strategy, antenna configuration, SNR and CSI mode that has more than one
  (group, pilot fraction) pair.
* ``snr``: accuracy vs SNR, one panel per number of channel uses K, strategies side by side.

A figure needs at least two distinct x values in a context; contexts without them are skipped.

Figures never mix configurations: every configuration column that differs within the table
(:func:`~semalign.experiments.cells.varying_fields`: ADMM rounds, rho, power, AP encoder,
latents, Top-K index cost, ...) and that a figure does not already separate (by file, panel, x
axis or line) splits its lines, each labelled with the field and its value
(``Federated (shared F), iterations=5``); a field a strategy does not read (a baseline's
iterations) does not split that strategy's line. Cells that no column tells apart are refused
(:func:`~semalign.experiments.cells.check_distinct`). Each line drawn is reported as a
:class:`Series` (figure, panel, label) to the caller of :func:`make_figures`.
"""

from __future__ import annotations

import logging
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semalign.common.errors import UsageError
from semalign.common.stats import nan_mean
from semalign.common.strategies import UnknownStrategy, get_strategy
from semalign.experiments.cells import (  # noqa: F401 - re-exported for plot and docs
    _PAPER_VALUES,
    _VARIANT_KEYS,
    BANDS,
    Point,
    aggregate,
    band_halfwidth,
    check_distinct,
    group_by,
    load_rows,
    qualifier_text,
    qualifiers,
    sort_key,
    summary_rows,
    t_interval,
    varying_fields,
)

log = logging.getLogger(__name__)

FIGURES: tuple[str, ...] = ("fig2", "fig3", "snr")
FORMATS: tuple[str, ...] = ("png", "pdf")
X_SCALES: tuple[str, ...] = ("log", "linear")


@dataclass(frozen=True)
class FigureStyle:
    """How figures are drawn: the band over seeds, the zeta axis, the PNG resolution."""

    band: str = "ci"  # one of BANDS
    level: float = 0.95  # the confidence level of the "ci" band
    x_scale: str = "log"  # the zeta axis: one of X_SCALES
    dpi: int = 200  # PNG resolution

    def __post_init__(self) -> None:
        if self.band not in BANDS:
            raise ValueError(f"band {self.band!r}: choose from {', '.join(BANDS)}")
        if self.x_scale not in X_SCALES:
            raise ValueError(f"x scale {self.x_scale!r}: choose from {', '.join(X_SCALES)}")
        if not 0.0 < self.level < 1.0:
            raise ValueError(f"confidence level must be in (0, 1), got {self.level}")
        if self.dpi < 50:
            raise ValueError(f"dpi must be at least 50, got {self.dpi}")


@dataclass(frozen=True)
class Series:
    """One line drawn: the figure's first file, the panel it is on, its legend label."""

    figure: Path
    panel: str
    label: str


#: Baseline fitting variants in legend order: the fair one (solid) first.
FIT_ORDER = {"": 0, "received": 1, "full": 2}
GROUP_COLORS = ("tab:blue", "tab:red", "tab:green", "tab:purple", "tab:brown", "tab:gray")
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "v", "D", "P")
ZETA_LABEL = r"compression factor $\zeta = K/(d/2)$ (%)"
ACC_LABEL = "accuracy (mean over users, fraction)"
MSE_LABEL = "network MSE on pilots (whitened, per complex feature)"
TEST_MSE_LABEL = "latent MSE on test data (user's native space, per feature)"


def strategy_style(name: str, variant: int = 0) -> dict[str, Any]:
    """The look of a strategy's ``variant``-th line in a panel, from its registered spec: label,
    colour, marker, and its line style (the spec's first, then the other :data:`LINESTYLES` in
    turn). A name this version does not register (an older table's) gets its name as label
    and matplotlib's defaults."""
    try:
        spec = get_strategy(name)
        look = {"label": spec.label, "color": spec.color, "marker": spec.marker}
        first = spec.linestyle
    except UnknownStrategy:
        look, first = {"label": name, "color": None, "marker": None}, LINESTYLES[0]
    styles = (first, *(s for s in LINESTYLES if s != first))
    return {**look, "linestyle": styles[variant % len(styles)]}


def _antenna_sort(label: str) -> tuple[int, int]:
    nt, nr = label.split("x")
    return int(nt), int(nr)


def _fmt_context(names: Sequence[str], values: Sequence[Any]) -> tuple[str, str]:
    """(title text, file-name suffix) for a context."""
    parts, slug = [], []
    for name, value in zip(names, values, strict=True):
        if name in _PAPER_VALUES:
            if value != _PAPER_VALUES[name]:
                parts.append(f"{name.replace('_', ' ')} {value}")
                slug.append(f"{name.replace('_', '')}{value}".replace("+", "_").replace(" ", "_"))
        elif name == "baseline_fit":
            if value:  # ADMM strategies have no baseline fit
                parts.append(f"{value} fit")
                slug.append(f"fit{value}")
        elif name == "snr_db":
            parts.append(f"SNR {value:g} dB")
            slug.append(f"snr{value:g}")
        elif name == "pilot_fraction":
            parts.append(f"pilots {value * 100:g}%")
            slug.append(f"pilots{value * 100:g}")
        elif name == "csi":
            parts.append("CSI" if value else "no CSI")
            slug.append("csi" if value else "nocsi")
        elif name == "antennas":
            parts.append(f"{value} MIMO")
            slug.append(str(value))
        elif name == "strategy":
            parts.append(strategy_style(str(value))["label"])
            slug.append(str(value))
        else:
            parts.append(str(value))
            slug.append(str(value).replace("+", "_"))
    return ", ".join(parts), "-".join(slug)


# ---------------------------------------------------------------------------- drawing
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _line(ax, xs, ys, halves, *, label, color, marker=None, linestyle="-") -> None:
    """The mean line and its band (half-widths; NaN: none at that point)."""
    xs, ys, halves = np.asarray(xs, float), np.asarray(ys, float), np.asarray(halves, float)
    order = np.argsort(xs)
    xs, ys, halves = xs[order], ys[order], np.nan_to_num(halves[order])
    ax.plot(xs, ys, label=label, color=color, marker=marker, linestyle=linestyle, ms=4, lw=1.5)
    if np.any(halves > 0):
        ax.fill_between(xs, ys - halves, ys + halves, color=color, alpha=0.18, lw=0)


def _points_line(
    ax, points: Sequence[Point], x_key: str, style: FigureStyle, metric: str = "accuracy", **look
) -> None:
    """One line through ``points``: their mean ``metric`` and its band (``style``'s) against
    ``params[x_key]`` (zeta in %); ``look``: :func:`_line`'s label, color, marker, linestyle."""
    _line(
        ax,
        [_x(p, x_key) for p in points],
        [getattr(p, metric) for p in points],
        [p.band(metric, style) for p in points],
        **look,
    )


def _zeta_axis(ax: Any, style: FigureStyle) -> None:
    """The zeta axis (values in %): logarithmic with ticks at 1, 2, 5 x 10^k, or linear."""
    ax.set_xlabel(ZETA_LABEL)
    if style.x_scale != "log":
        return
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _x(point: Point, x_key: str) -> float:
    """A point's x value: zeta in %, anything else as it is."""
    value = point.params[x_key]
    return value * 100 if x_key == "zeta" else value


def _native_line(ax, points: list[Point], fields: Sequence[str] = ()) -> list[str]:
    """The users' native accuracy: one line, or one per combination of ``fields`` values where
    their natives differ (e.g. other latents). Returns the labels drawn."""
    label = "native (own encoder, no channel)"
    by: dict[tuple, list[Point]] = {}
    for p in points:
        by.setdefault(qualifiers(p, fields), []).append(p)
    natives = {q: nan_mean([p.native for p in by[q]]) for q in sorted(by, key=str)}
    natives = {q: v for q, v in natives.items() if not math.isnan(v)}
    if len({round(v, 9) for v in natives.values()}) == 1:
        natives = {(): nan_mean([p.native for p in points])}
    drawn = []
    for i, (q, native) in enumerate(natives.items()):
        text = f"{label}, {qualifier_text(q)}" if q else label
        ax.axhline(native, color="0.4", ls=LINESTYLES[(2 + i) % len(LINESTYLES)], lw=1, label=text)
        drawn.append(text)
    return drawn


def _save(fig, out_dir: Path, name: str, formats: Sequence[str], dpi: int = 200) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out_dir / f"{name}.{fmt}"
        # bbox_inches="tight" takes in the legend below the panels
        fig.savefig(path, dpi=dpi if fmt == "png" else None, bbox_inches="tight")
        paths.append(path)
    _pyplot().close(fig)
    return paths


def _finish(
    fig, axes: Sequence[Any], title: str, out_dir: Path, name: str, style: FigureStyle, formats
) -> list[Path]:
    """Title, layout, the legend below the panels, and the files of a finished figure."""
    # wrapped to the figure's width (about 14 characters an inch at 10 pt)
    fig.suptitle(textwrap.fill(title, width=int(fig.get_figwidth() * 14)), fontsize=10)
    fig.tight_layout()
    _shared_legend(fig, axes)
    return _save(fig, out_dir, name, formats, style.dpi)


def _seeds_note(points: list[Point], style: FigureStyle) -> str:
    seeds = sorted({p.seeds for p in points})
    count = seeds[0] if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
    if seeds == [1]:  # one seed has no spread: no band is drawn, none is named
        return "one seed, no band"
    band = {
        "ci": f" ± {style.level * 100:g} % CI (t, n-1)",
        "std": " ± 1 std",
        "none": "",
    }[style.band]
    return f"mean{band} over {count} seeds"


def _strategy_lines(
    ax: Any,
    panel: list[Point],
    x_key: str,
    style: FigureStyle,
    fits: bool = False,
    fields: Sequence[str] = (),
) -> list[str]:
    """One line per strategy (mean accuracy and its band against ``params[x_key]``) and the
    users' native accuracy, on one panel. ``fits``: one line per baseline fitting variant too
    (labelled with it); ``fields``: one line per value of each of them too (labelled
    ``field=value``); a strategy's variants differ in line style. Returns the labels drawn."""
    lines: dict[tuple, list[Point]] = {}
    for p in panel:
        key = (p.params["strategy"], p.params["baseline_fit"], qualifiers(p, fields))
        lines.setdefault(key, []).append(p)
    order = sorted(
        lines,
        key=lambda k: (
            sort_key(k[0]),
            FIT_ORDER.get(k[1], len(FIT_ORDER)),
            tuple(sort_key(v) for _, v in k[2]),
        ),
    )
    labels = []
    for strategy, fit, quals in order:
        variant = [k for k in order if k[0] == strategy].index((strategy, fit, quals))
        look = strategy_style(strategy, variant)
        label = f"{look['label']}, {fit} fit" if fits and fit else look["label"]
        label = f"{label}, {qualifier_text(quals)}" if quals else label
        _points_line(
            ax,
            lines[(strategy, fit, quals)],
            x_key,
            style,
            label=label,
            color=look["color"],
            marker=look["marker"],
            linestyle=look["linestyle"],
        )
        labels.append(label)
    return labels + _native_line(ax, panel, fields)


def _split_fields(points: list[Point], drawn_by: Sequence[str]) -> tuple[str, ...]:
    """The configuration columns that differ among ``points`` (the whole table) and that a
    figure does not separate by ``drawn_by`` (its files, panels, x axis and lines): its lines
    are split on them."""
    return tuple(f for f in varying_fields(points) if f not in drawn_by)


def _in_figure(fields: Sequence[str], points: list[Point]) -> tuple[str, ...]:
    """Those of ``fields`` that differ among one figure's ``points``: a field that differs only
    between figures (e.g. the latents of two groups drawn in two files) labels no line."""
    varying = set(varying_fields(points))
    return tuple(f for f in fields if f in varying)


def _several_fits(points: list[Point]) -> bool:
    """Whether ``points`` hold baselines of both fitting variants (lines then say which)."""
    return len({p.params["baseline_fit"] for p in points} - {""}) > 1


def _shared_legend(fig: Any, axes: Sequence[Any], max_columns: int = 5) -> None:
    """One legend below the panels, outside every axes (so it hides no data), with every label
    any panel drew, in the first panel's order. Call after ``tight_layout``."""
    handles: list[Any] = []
    labels: list[str] = []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if not labels:
        return
    fig.canvas.draw()  # the axes' tick labels are measured where they are drawn
    renderer = fig.canvas.get_renderer()
    bottom = min(ax.get_tightbbox(renderer).y0 for ax in axes)
    y = fig.transFigure.inverted().transform((0, bottom))[1]
    fig.legend(
        handles,
        labels,
        loc="upper center",
        ncol=min(len(labels), max_columns),
        fontsize=8,
        bbox_to_anchor=(0.5, y - 0.01),
        bbox_transform=fig.transFigure,
        frameon=False,
    )


#: What a figure maker returns per figure: its files and the (panel, label) of every line.
Drawn = tuple[list[Path], list[tuple[str, str]]]


def figure_fig2(
    points: list[Point], out_dir: Path, formats: Sequence[str], style: FigureStyle = FigureStyle()
) -> list[Drawn]:
    """Accuracy vs zeta per antenna configuration, strategies side by side."""
    plt = _pyplot()
    context_keys = ("group", "snr_db", "pilot_fraction", "csi", *_VARIANT_KEYS)
    fields = _split_fields(
        points, (*context_keys, "antennas", "channel_uses", "strategy", "baseline_fit")
    )
    contexts = {
        ctx: pts
        for ctx, pts in group_by(points, context_keys).items()
        if len({p.params["zeta"] for p in pts}) >= 2
    }
    # Strategies side by side: contexts with one strategy only (e.g. a fig3 sweep) are left
    # out, unless no context has more than one.
    compared = {c: p for c, p in contexts.items() if len({q.params["strategy"] for q in p}) >= 2}
    contexts = compared or contexts
    out: list[Drawn] = []
    for ctx, pts in contexts.items():
        antennas = sorted({p.params["antennas"] for p in pts}, key=_antenna_sort)
        fig, axes = plt.subplots(
            1, len(antennas), figsize=(4.2 * len(antennas), 3.6), sharey=True, squeeze=False
        )
        series = []
        for ax, ant in zip(axes[0], antennas, strict=True):
            panel = [p for p in pts if p.params["antennas"] == ant]
            labels = _strategy_lines(
                ax, panel, "zeta", style, _several_fits(pts), _in_figure(fields, pts)
            )
            series += [(ant, label) for label in labels]
            ax.set_title(f"{ant} MIMO")
            _zeta_axis(ax, style)
            ax.grid(alpha=0.3, which="both" if style.x_scale == "log" else "major")
        axes[0][0].set_ylabel(ACC_LABEL)
        title, slug = _fmt_context(context_keys, ctx)
        title = f"Accuracy vs compression factor ({title}; {_seeds_note(pts, style)})"
        name = "fig2-accuracy-vs-zeta" + ("" if len(contexts) == 1 else f"-{slug}")
        out.append((_finish(fig, axes[0], title, out_dir, name, style, formats), series))
    return out


def figure_fig3(
    points: list[Point], out_dir: Path, formats: Sequence[str], style: FigureStyle = FigureStyle()
) -> list[Drawn]:
    """Network MSE and accuracy vs zeta per group (colour) and pilot fraction (line style);
    lines that differ in another field differ in marker."""
    plt = _pyplot()
    context_keys = ("strategy", "antennas", "snr_db", "csi", "baseline_fit", *_VARIANT_KEYS)
    fields = _split_fields(points, (*context_keys, "channel_uses", "group", "pilot_fraction"))
    contexts = {}
    for ctx, pts in group_by(points, context_keys).items():
        pairs = {(p.params["group"], p.params["pilot_fraction"]) for p in pts}
        if len(pairs) >= 2 and len({p.params["zeta"] for p in pts}) >= 2:
            contexts[ctx] = pts
    out: list[Drawn] = []
    for ctx, pts in contexts.items():
        groups = sorted({p.params["group"] for p in pts})
        fractions = sorted({p.params["pilot_fraction"] for p in pts}, reverse=True)
        here = _in_figure(fields, pts)
        variants = sorted({qualifiers(p, here) for p in pts}, key=str)
        fig, axes = plt.subplots(1, 3, figsize=(14, 4.0))
        ax_mse, ax_test, ax_acc = axes
        panels = (
            (ax_mse, "network_mse", "network MSE"),
            (ax_test, "test_mse", "latent MSE"),
            (ax_acc, "accuracy", "accuracy"),
        )
        lines: dict[tuple, list[Point]] = {}
        for p in pts:
            key = (p.params["group"], p.params["pilot_fraction"], qualifiers(p, here))
            lines.setdefault(key, []).append(p)
        series = []
        for group, frac, quals in sorted(lines, key=lambda k: (k[0], -k[1], str(k[2]))):
            label = f"{group}, pilots {frac * 100:g}%"
            label = f"{label}, {qualifier_text(quals)}" if quals else label
            for ax, metric, panel in panels:
                _points_line(
                    ax,
                    lines[(group, frac, quals)],
                    "zeta",
                    style,
                    metric,
                    label=label,
                    color=GROUP_COLORS[groups.index(group) % len(GROUP_COLORS)],
                    linestyle=LINESTYLES[fractions.index(frac) % len(LINESTYLES)],
                    marker=MARKERS[variants.index(quals) % len(MARKERS)],
                )
                series.append((panel, label))
        _label_fig3_panels(axes, style)
        title, slug = _fmt_context(context_keys, ctx)
        title = f"Homogeneous vs heterogeneous users ({title}; {_seeds_note(pts, style)})"
        name = "fig3-mse-accuracy-vs-zeta" + ("" if len(contexts) == 1 else f"-{slug}")
        out.append((_finish(fig, axes, title, out_dir, name, style, formats), series))
    return out


def _label_fig3_panels(axes, style: FigureStyle) -> None:
    """Axis labels, zeta axes, grids and titles of fig. 3's three panels (MSE, test, acc)."""
    labels = (MSE_LABEL, TEST_MSE_LABEL, ACC_LABEL)
    titles = ("network MSE (pilots, training)", "latent MSE (test, held out)", "accuracy (test)")
    for ax, label, title in zip(axes, labels, titles, strict=True):
        ax.set_ylabel(label, fontsize=8)
        _zeta_axis(ax, style)
        ax.grid(alpha=0.3, which="both" if style.x_scale == "log" else "major")
        ax.set_title(title)


def figure_snr(
    points: list[Point], out_dir: Path, formats: Sequence[str], style: FigureStyle = FigureStyle()
) -> list[Drawn]:
    """Accuracy vs SNR, one panel per K, strategies side by side."""
    plt = _pyplot()
    context_keys = ("group", "antennas", "pilot_fraction", "csi", *_VARIANT_KEYS)
    fields = _split_fields(
        points, (*context_keys, "channel_uses", "snr_db", "strategy", "baseline_fit")
    )
    contexts = {
        ctx: pts
        for ctx, pts in group_by(points, context_keys).items()
        if len({p.params["snr_db"] for p in pts}) >= 2
    }
    out: list[Drawn] = []
    for ctx, pts in contexts.items():
        # Only K values that were swept over SNR (at least two SNRs) get a panel.
        ks = sorted(
            k
            for k, kpts in group_by(pts, ("channel_uses",)).items()
            if len({p.params["snr_db"] for p in kpts}) >= 2
        )
        ks = [k[0] for k in ks]
        fig, axes = plt.subplots(
            1, len(ks), figsize=(4.2 * len(ks), 3.6), sharey=True, squeeze=False
        )
        series = []
        for ax, k in zip(axes[0], ks, strict=True):
            panel = [p for p in pts if p.params["channel_uses"] == k]
            labels = _strategy_lines(
                ax, panel, "snr_db", style, _several_fits(pts), _in_figure(fields, pts)
            )
            series += [(f"K={k}", label) for label in labels]
            ax.set_title(f"K = {k} (ζ = {_x(panel[0], 'zeta'):.3g} %)")
            ax.set_xlabel("SNR per receive antenna (dB)")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(ACC_LABEL)
        title, slug = _fmt_context(context_keys, ctx)
        title = f"Accuracy vs SNR ({title}; {_seeds_note(pts, style)})"
        name = "snr-accuracy-vs-snr" + ("" if len(contexts) == 1 else f"-{slug}")
        out.append((_finish(fig, axes[0], title, out_dir, name, style, formats), series))
    return out


_MAKERS = {"fig2": figure_fig2, "fig3": figure_fig3, "snr": figure_snr}


def make_figures(
    rows: list[dict[str, Any]],
    out_dir: str | Path,
    figures: Sequence[str] = FIGURES,
    formats: Sequence[str] = FORMATS,
    style: FigureStyle | None = None,
    series: list[Series] | None = None,
) -> dict[str, list[Path]]:
    """Draw the requested figures from table rows; returns the paths written per figure.

    A figure whose data is not in the rows (fewer than two x values) gets an empty list.
    ``style`` (default :class:`FigureStyle`): band, zeta axis scale, PNG resolution.
    ``series``: a list to which every line drawn is appended (:class:`Series`).

    Raises:
        UsageError: two cells agree in every configuration column (nothing is drawn).
    """
    style = style or FigureStyle()
    points = aggregate(rows)
    check_distinct(points)
    out = Path(out_dir)
    written = {}
    for name in figures:
        drawn = _MAKERS[name](points, out, formats, style) if points else []
        written[name] = [path for paths, _ in drawn for path in paths]
        for paths, lines in drawn:
            for panel, label in lines:
                log.debug("%s: panel %s: %s", paths[0].name, panel, label)
                if series is not None:
                    series.append(Series(paths[0], panel, label))
        if not written[name]:
            log.info("%s: the table has no context with two or more x values", name)
    return written


# ---------------------------------------------------------------------------- tables
def figure_sources(
    figures: Sequence[str], tables: Sequence[str] | None, results_dir: str | Path = "results"
) -> dict[str, tuple[Path, ...]]:
    """The tables each figure is drawn from.

    Tables given explicitly serve every figure. Otherwise a figure with its preset's table
    (``results/sweep-<figure>.csv``) is drawn from that table alone, so that e.g. the SNR
    sweep's few K values do not add accuracy-vs-zeta figures; any other figure is drawn from
    every ``results/sweep-*.csv``.
    """
    if tables:
        given = tuple(Path(t) for t in tables)
        return {name: given for name in figures}
    found = tuple(sorted(Path(results_dir).glob("sweep-*.csv")))
    if not found:
        raise UsageError(
            f"no table given and no {results_dir}/sweep-*.csv found; pass --table FILE"
        )
    own = {name: Path(results_dir) / f"sweep-{name}.csv" for name in figures}
    return {name: (own[name],) if own[name] in found else found for name in figures}
