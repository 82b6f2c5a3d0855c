"""``semalign sweep``: the experiment grid of the paper's section IV, resumable, in parallel.

Progress goes to stderr: a live bar in a terminal, otherwise one plain line per finished run
(none with ``--quiet``). Argparse and console only: the grid is
:mod:`semalign.experiments.grid`, the plan :mod:`semalign.experiments.plan`, the table
:mod:`semalign.experiments.table` and the runs :mod:`semalign.experiments.runner`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from semalign.commands.options import (
    HelpFormatter,
    add_data_arguments,
    add_verbosity_arguments,
    add_workers_argument,
    check_workers,
    prepare_latents,
)
from semalign.commands.sweep_arguments import add_execution_arguments, add_grid_arguments
from semalign.commands.sweep_options import grid_from_args
from semalign.commands.tracking_options import check_tracking, open_tracker_from_args
from semalign.common.errors import LatentsError, SweepError, UsageError
from semalign.common.packing import complex_dim
from semalign.common.stats import nan_mean
from semalign.experiments.grid import SweepGrid
from semalign.experiments.plan import (
    Plan,
    Run,
    default_ap,
    describe,
    make_plan,
    outline,
)
from semalign.experiments.runner import SweepSummary, check_executor, run_sweep
from semalign.experiments.table import read_table


def _table_path(args: argparse.Namespace) -> Path:
    """``--table``, checked before any work: a foreign table is refused, and (unless a dry run)
    its folder must be writable."""
    from semalign.common.io import check_writable

    default = Path("results") / f"sweep-{args.preset or 'custom'}.csv"
    path = Path(args.table) if args.table else default
    try:
        if path.exists():
            read_table(path)
        elif not args.dry_run:
            check_writable(path)
    except SweepError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"--table {path}: cannot write there ({exc.strerror or exc})") from None
    return path


def _cache_dir(args: argparse.Namespace) -> Path:
    from semalign.encoders import default_cache_dir

    return Path(args.cache_dir) if args.cache_dir else default_cache_dir()


def _uncached(
    dataset: str, encoders: list[str], cache_dir: Path, args: argparse.Namespace | None = None
) -> dict[str, str]:
    """Encoders whose cache entry ``prepare_latents`` would (re)build, with the reason; reads
    the cache only (no lock, no folder is created)."""
    from semalign.commands.options import parse_weights
    from semalign.encoders.cache import cache_key, cache_key_material, check_entry

    pretrained = bool(getattr(args, "pretrained", False))
    weights = parse_weights(getattr(args, "weights", None) or []) if pretrained else {}
    missing = {}
    for name in encoders:
        # the settings prepare_latents encodes with (ensure_latents' defaults)
        material = cache_key_material(
            dataset,
            name,
            seed=0,
            image_size=32,
            pretrained=pretrained,
            weights_file=weights.get(name),
        )
        reason = check_entry(cache_dir / dataset / name, cache_key(material))
        if reason:
            missing[name] = reason
    return missing


def _check_execution(args: argparse.Namespace) -> None:
    """``--executor``, ``--ray-address`` and ``--track*`` checked before any work: a backend
    that is not installed is one line and exit 2."""
    if args.ray_address and args.executor != "ray":
        raise UsageError("--ray-address needs --executor ray")
    if args.track_uri and not args.track:
        raise UsageError("--track-uri needs --track")  # before the executor, as ever
    try:
        check_executor(args.executor)
    except SweepError as exc:
        raise UsageError(f"--executor {args.executor}: {exc}") from None
    check_tracking(args)


def describe_run(run: Run, axes: tuple[str, ...]) -> str:
    """A run's cell in words, with the value of every ``--set`` axis (``iterations=5``)."""
    text = describe(run.group, run.config)
    for key in axes:
        channel = key.startswith("channel.")
        value = getattr(run.config.channel, key[8:]) if channel else getattr(run.config, key)
        text += f" {key}={value}"
    return text


# ---------------------------------------------------------------------------- command
def run_sweep_command(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(stderr=True)
    workers = check_workers(args) or os.cpu_count() or 1
    grid, groups, encoders = grid_from_args(args)
    table_path = _table_path(args)
    _check_execution(args)
    if args.dry_run and not args.latents:
        missing = _uncached(args.dataset, encoders, _cache_dir(args), args)
        if missing:
            return _dry_run_cold(console, args, grid, missing, table_path)
        latents_dir = _cache_dir(args) / args.dataset  # all cached: read, never encode
    else:
        latents_dir = _latents(args, encoders)
    try:
        plan = make_plan(grid, latents_dir, groups)
    except SweepError as exc:
        raise UsageError(str(exc)) from None
    if args.dry_run or not args.quiet:
        _print_plan(console, args, plan, table_path)
    if args.dry_run:
        return 0
    # the experiment defaults to the table's name (sweep-fig2 for results/sweep-fig2.csv)
    tracker = open_tracker_from_args(args, table_path.stem)
    try:
        summary = _run_with_progress(console, plan, table_path, args, workers, tracker)
    finally:
        if tracker is not None:
            tracker.close()
    return _report(console, summary, plan, table_path, args)


def _latents(args: argparse.Namespace, encoders: list[str]) -> Path:
    """``--latents``, else the cache's latents with every missing entry encoded now."""
    try:
        return prepare_latents(args, encoders)
    except (ValueError, OSError) as exc:
        raise UsageError(f"cannot prepare the {args.dataset} latents: {exc}") from None


def _dry_run_cold(
    console: Any, args: argparse.Namespace, grid: SweepGrid, missing: dict[str, str], table: Path
) -> int:
    """A dry run before the latents exist: what can be known, and what would be encoded."""
    from semalign.common.latents import load_split

    latents_dir = _cache_dir(args) / args.dataset
    ap = default_ap(grid)
    try:
        ap_train = None if ap in missing else load_split(latents_dir, ap, "train").latents
        known = outline(grid, ap, ap_train)
    except (LatentsError, SweepError) as exc:
        raise UsageError(str(exc)) from None
    _print_header(console, args, known.cells, grid, known.runs, ap, known.d_ap, table)
    if known.d_ap is None:
        console.print(
            "[yellow]note: the AP's latents are not encoded yet; which cells fit its latent "
            "dimension is unknown until they are (every cell is counted above)[/yellow]"
        )
    _print_skipped(console, known.skipped)
    console.print(f"would encode {len(missing)} encoder(s) into {latents_dir} first:")
    for name, reason in missing.items():
        console.print(f"  {name} ({reason})")
    return 0


def _report(
    console: Any, summary: SweepSummary, plan: Plan, table_path: Path, args: argparse.Namespace
) -> int:
    console.print(
        f"{summary.done} run(s) done, {summary.already_done} already in the table, "
        f"{len(summary.failed)} failed, {len(plan.skipped)} cell(s) skipped; "
        f"{_duration(summary.seconds)} wall"
    )
    console.print(f"table: {table_path}")
    if summary.rekeyed:
        console.print(
            f"{summary.rekeyed} run(s) of an older table found under their former keys (an "
            "older key schema or latents fingerprint) and re-keyed"
        )
    if args.track:
        where = f" ({args.track_uri})" if args.track_uri else ""
        console.print(f"tracked: {summary.tracked} run(s) in {args.track}{where}")
    if summary.tracking_error:
        console.print(
            f"[yellow]tracking stopped after a failure (the table has every run): "
            f"{summary.tracking_error}[/yellow]"
        )
    if not summary.failed:
        return 0
    for key, error in summary.failed[:10]:
        console.print(f"[red]failed {key}: {error}[/red]")
    console.print("[yellow]re-run the same command to retry the failed runs[/yellow]")
    return 1


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def _print_header(
    console: Any,
    args: argparse.Namespace,
    cells: int,
    grid: SweepGrid,
    runs: int,
    ap: str,
    d_ap: int | None,
    table_path: Path,
) -> None:
    ap_text = (
        f"AP {ap} d={d_ap} (d/2 = {complex_dim(d_ap)} complex features)"
        if d_ap is not None
        else f"AP {ap} (not encoded yet)"
    )
    console.print(
        f"sweep{f' {args.preset}' if args.preset else ''}: {cells} cell(s) x "
        f"{len(grid.seeds)} seed(s) = {runs} run(s); {ap_text}; table {table_path}"
    )


def _print_skipped(console: Any, skipped: list[tuple[str, str]]) -> None:
    if not skipped:
        return
    by_reason: dict[str, list[str]] = {}
    for cell, reason in skipped:
        by_reason.setdefault(reason, []).append(cell)
    console.print(
        f"[yellow]note: {len(skipped)} cell(s) skipped, their geometry does not fit:[/yellow]"
    )
    for reason, cells in by_reason.items():
        shown = ", ".join(cells[:4]) + (f", ... ({len(cells)} in all)" if len(cells) > 4 else "")
        console.print(f"  [yellow]{shown}: {reason}[/yellow]")


def _print_plan(console: Any, args: argparse.Namespace, plan: Plan, table_path: Path) -> None:
    grid = plan.grid
    _print_header(console, args, plan.cells, grid, len(plan.runs), plan.ap, plan.d_ap, table_path)
    _print_skipped(console, plan.skipped)


def _progress_columns() -> tuple:
    """The sweep's progress bar: description, bar, done/total, elapsed, eta, last run."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return (
        TextColumn("{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )


def _run_with_progress(
    console: Any,
    plan: Plan,
    table_path: Path,
    args: argparse.Namespace,
    workers: int,
    tracker: Any = None,
) -> SweepSummary:
    from rich.progress import Progress

    plain = not args.quiet and not console.is_terminal
    count = [0]
    with Progress(*_progress_columns(), console=console, disable=args.quiet or plain) as progress:
        task = progress.add_task("sweep", total=len(plan.runs), info="")

        def on_start(summary: SweepSummary) -> None:
            progress.update(task, completed=summary.already_done)
            count[0] = summary.already_done
            if summary.already_done:
                progress.console.print(
                    f"resuming: {summary.already_done} run(s) already in {table_path}"
                )

        def on_run(run: Run, rows: list[dict[str, Any]] | None, error: str | None) -> None:
            cell = describe_run(run, plan.grid.axes_keys)
            count[0] += 1
            if rows is not None:
                mean = nan_mean(r["accuracy"] for r in rows)
                info = f"{cell} seed {run.config.seed}: acc {mean:.3f}"
            else:
                info = f"{cell} seed {run.config.seed} failed: {error}"
            if plain:  # a pipe or a log file: one flushed line per finished run
                print(f"run {count[0]}/{len(plan.runs)} {info}", file=sys.stderr, flush=True)
            progress.update(task, advance=1, info=info if rows is not None else f"[red]{info}")

        try:
            return run_sweep(
                plan,
                table_path,
                workers=workers,
                on_run=on_run,
                on_start=on_start,
                tracker=tracker,
                executor=args.executor,
                ray_address=args.ray_address,
            )
        except SweepError as exc:
            raise UsageError(str(exc)) from None


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="run an experiment grid (paper section IV), resumable, into one CSV table",
        description="Run the cartesian grid of strategies x channel uses x antennas x SNR x "
        "groups x pilot fractions x CSI modes x channels (fading models, with their "
        "correlations or K-factors, x CSI errors) x research options (task models, targets, "
        "pilot selections, user groups), for every seed, on the in-process simulator. "
        "Rows (one per cell, seed and user) are appended to --table as each run finishes; "
        "re-running the same command skips finished runs. Options override the --preset's "
        "fields. Negative SNRs need '=': --snr-db=-20,-10,0.",
        formatter_class=HelpFormatter,
    )
    add_grid_arguments(parser)
    add_data_arguments(parser)
    parser.add_argument("--table", help="results CSV (default: results/sweep-<preset>.csv)")
    add_workers_argument(parser, "the runs, one BLAS thread each")
    add_execution_arguments(parser)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate and print the plan, run nothing (and encode nothing: on a cold cache, "
        "print what would be encoded)",
    )
    add_verbosity_arguments(parser)
    parser.set_defaults(func=run_sweep_command)
