"""``semalign plot``: the paper's figures from sweep tables (argparse and console only; the
figures are :mod:`semalign.experiments.figures`).

Standard output gets one line per line drawn: figure file, panel, legend label
(``fig2-accuracy-vs-zeta.png  panel "4x4"  Federated (shared F), iterations=5``), so what a
figure mixes or separates can be read without opening it; standard error gets the files and
warnings."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from semalign.commands.options import HelpFormatter, add_verbosity_arguments, check_folder
from semalign.common.errors import SweepError, UsageError
from semalign.experiments.figures import (
    BANDS,
    FIGURES,
    FORMATS,
    X_SCALES,
    FigureStyle,
    Series,
    figure_sources,
    load_rows,
    make_figures,
)

#: File formats matplotlib writes here.
KNOWN_FORMATS: tuple[str, ...] = ("png", "pdf", "svg")


def _names(text: str, known: tuple[str, ...], option: str, what: str) -> list[str]:
    """Comma-separated ``text`` as a list, each checked against ``known``."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise UsageError(f"{option} is empty; choose from {', '.join(known)}")
    for name in names:
        if name not in known:
            raise UsageError(f"{option}: unknown {what} {name!r}; choose from {', '.join(known)}")
    return names


def run_plot(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    figures = _names(args.figures, FIGURES, "--figures", "figure")
    formats = _names(args.formats.lower(), KNOWN_FORMATS, "--formats", "format")
    try:
        style = FigureStyle(args.band, args.confidence, args.x_scale, args.dpi)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    check_folder("--out", args.out)
    sources = figure_sources(figures, args.table)
    written: dict[str, list[Path]] = {}
    series: list[Series] = []
    for tables in dict.fromkeys(sources.values()):
        try:
            rows = load_rows(list(tables))
        except SweepError as exc:
            raise UsageError(str(exc)) from None
        if not rows:
            raise UsageError(f"no complete run in {', '.join(map(str, tables))}")
        names = [name for name in figures if sources[name] == tables]
        written.update(make_figures(rows, args.out, names, formats, style, series))
    total = 0
    for name, paths in written.items():
        if not paths:
            console.print(f"[yellow]{name}: nothing to plot (needs two or more x values)[/yellow]")
        elif not args.quiet:
            for path in paths:
                console.print(f"{name}: {path}")
        total += len(paths)
    if not args.quiet:
        for line in series:
            print(f'{line.figure.name}  panel "{line.panel}"  {line.label}')
    if not total:
        raise UsageError("the table holds no data for the requested figures")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="draw the paper's figures (fig2, fig3, snr) from sweep tables",
        description="PNG/PDF figures from `semalign sweep` tables: mean over seeds with a 95 % "
        "confidence band (t interval, n-1 degrees of freedom) or a +/- one std band; zeta in % "
        "on a log axis; the legend below the panels. fig2: accuracy vs zeta per antenna "
        "configuration, strategies side by side; fig3: network MSE and accuracy vs zeta per "
        "group and pilot fraction; snr: accuracy vs SNR per K.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--table",
        action="append",
        help="results CSV (repeatable; default: each figure from its preset's "
        "results/sweep-<figure>.csv, else from every results/sweep-*.csv)",
    )
    parser.add_argument("--out", default="figures", help="output directory")
    parser.add_argument("--figures", default=",".join(FIGURES), help="which figures")
    parser.add_argument(
        "--formats", default=",".join(FORMATS), help="any of " + ", ".join(KNOWN_FORMATS)
    )
    parser.add_argument(
        "--band",
        choices=BANDS,
        default="ci",
        help="band over seeds: ci, the t confidence interval of the mean (--confidence); std, "
        "+/- one standard deviation; none",
    )
    parser.add_argument(
        "--confidence", type=float, default=0.95, help="confidence level of --band ci"
    )
    parser.add_argument(
        "--x-scale", choices=X_SCALES, default="log", help="the compression factor's axis (in %%)"
    )
    parser.add_argument("--dpi", type=int, default=200, help="PNG resolution")
    add_verbosity_arguments(parser)
    parser.set_defaults(func=run_plot)
