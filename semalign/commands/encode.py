"""``semalign encode``: train/load every node's encoder and fill the latent cache.

Argument parsing and console output only; the work is ``semalign.encoders.encode``, the same
function (and defaults) ``ensure_latents`` uses.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from semalign.commands.options import (
    HelpFormatter,
    add_data_arguments,
    add_verbosity_arguments,
    add_workers_argument,
    check_folder,
    check_output,
    check_workers,
    parse_weights,
)
from semalign.common.errors import DatasetUnavailable, UsageError, WeightsUnavailable
from semalign.encoders.datasets import DATASETS
from semalign.encoders.registry import (
    ALL_GROUPS,
    DEFAULT_AP,
    DEFAULT_SET,
    ENCODERS,
    FALLBACK,
    FAMILIES,
)

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "encode",
        help="encode a dataset with every node's encoder into the latent cache",
        description=(
            "Train (or load pretrained) encoders, encode the train/val/test splits and fit each "
            "user's classifier, writing <cache-dir>/<dataset>/<encoder>/{train,val,test}.npz "
            "and classifier.npz. Valid cached entries are reused."
        ),
        formatter_class=HelpFormatter,
        # --dataset is redefined below: checked after parsing, with close names on a typo
        conflict_handler="resolve",
    )
    add_data_arguments(parser, latents=False)
    parser.add_argument(
        "--dataset",
        default="digits",
        help=" or ".join([", ".join(DATASETS[:-1]), DATASETS[-1]]) + " (default: %(default)s)",
    )
    parser.add_argument("--cache", dest="cache_alias", help=argparse.SUPPRESS)  # old name
    parser.add_argument(
        "--encoders",
        default="default",
        help="comma-separated groups ("
        + ", ".join(["default", *ALL_GROUPS])
        + ") and/or any timm model names, optionally with a pretrained tag (NAME.TAG); "
        "default: the AP plus every paper group's user",
    )
    _add_model_arguments(parser)
    add_workers_argument(parser, "building encoders (one encoder each)")
    parser.add_argument("--jobs", type=int, dest="workers", help=argparse.SUPPRESS)  # old name
    parser.add_argument("--device", help="torch device (default: cuda if present, else cpu)")
    parser.add_argument(
        "--json", type=Path, dest="json_out", help="also write the summary as JSON to this file"
    )
    parser.add_argument("--list", action="store_true", help="list encoders and groups, then exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_verbosity_arguments(parser)
    parser.set_defaults(func=run)


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """What the latents depend on (all part of the cache key)."""
    parser.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    parser.add_argument(
        "--image-size",
        type=int,
        default=32,
        help="square image size for from-scratch encoders (default: 32)",
    )
    parser.add_argument(
        "--pretrained",
        action="store_true",
        help="use timm's pretrained weights (hub cache, network or --weights)",
    )
    parser.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="local pretrained weights file for one encoder (repeatable; default: none)",
    )
    parser.add_argument(
        "--data-dir", type=Path, help="folder holding cifar-10-batches-py (cifar10 only)"
    )
    parser.add_argument("--limit", type=int, help="at most this many rows per split (quick tests)")
    parser.add_argument(
        "--epochs", type=int, help="override every recipe's epochs (quick tests; part of the key)"
    )


def _list(console) -> int:
    from rich.table import Table

    table = Table(title="encoders")
    for col in ("name", "family", "role", "epochs", "lr", "timm arguments at 32x32"):
        table.add_column(col)
    for name, spec in ENCODERS.items():
        roles = [g for g, members in ALL_GROUPS.items() if name in members]
        if name == DEFAULT_AP:
            roles.insert(0, "AP")
        table.add_row(
            name,
            spec.family,
            ", ".join(roles) or "-",
            str(spec.recipe.epochs),
            f"{spec.recipe.lr:g}",
            ", ".join(f"{k}={v}" for k, v in spec.timm_kwargs(32).items()) or "-",
        )
    console.print(table)
    families = Table(title="any other timm model: the rule of its family (by name prefix)")
    for col in ("family", "prefixes", "built as", "epochs", "lr", "augment"):
        families.add_column(col)
    for family in (*FAMILIES, FALLBACK):
        families.add_row(
            family.name,
            ", ".join(family.prefixes) or "(anything else)",
            family.kind,
            str(family.recipe.epochs),
            f"{family.recipe.lr:g}",
            family.recipe.augment,
        )
    console.print(families)
    for group, members in ALL_GROUPS.items():
        console.print(f"[bold]{group}[/bold]: {', '.join(members)}")
    console.print(f"[bold]default[/bold]: {', '.join(DEFAULT_SET)}")
    return 0


def _cache_dir(args: argparse.Namespace) -> Path:
    from semalign.encoders import default_cache_dir

    if args.cache_alias and not args.cache_dir:
        log.warning("--cache is deprecated; use --cache-dir")
        return Path(args.cache_alias)
    return Path(args.cache_dir) if args.cache_dir else default_cache_dir()


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from semalign.encoders import encode
    from semalign.encoders.datasets import check_dataset_name
    from semalign.encoders.registry import resolve_encoders

    # A pipe or a log file gets a fixed width wide enough for the summary table.
    console = Console() if sys.stdout.isatty() else Console(width=120)
    if args.list:
        return _list(console)
    try:
        check_dataset_name(args.dataset)
        names = resolve_encoders(args.encoders)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    options: dict[str, Any] = dict(
        seed=args.seed,
        image_size=args.image_size,
        pretrained=args.pretrained,
        data_dir=args.data_dir,
        weights=parse_weights(args.weights),
        limit=args.limit,
        epochs=args.epochs,
        device=args.device,
        workers=check_workers(args),
    )
    cache_dir = _cache_dir(args)
    _check_files(args, cache_dir)
    err = Console(stderr=True, quiet=args.quiet)
    started = time.perf_counter()
    try:
        if args.no_progress or args.quiet:
            results = encode(args.dataset, names, cache_dir, on_result=_noter(err), **options)
        else:
            from semalign.encoders.progress import RichReporter

            with RichReporter(err) as reporter:
                results = encode(
                    args.dataset,
                    names,
                    cache_dir,
                    reporter=reporter,
                    on_result=_noter(err),
                    **options,
                )
    except (ValueError, DatasetUnavailable, WeightsUnavailable) as exc:
        raise UsageError(str(exc)) from None
    total = time.perf_counter() - started
    if not args.quiet:
        _print_summary(console, results, args.dataset, cache_dir, total)
    if args.json_out:
        _write_json(args.json_out, results, args.dataset, cache_dir, total)
    return 0


def _check_files(args: argparse.Namespace, cache_dir: Path) -> None:
    """What the encoding needs, checked before it starts (one line, exit code 2 each)."""
    if args.seed < 0:
        raise UsageError(f"--seed must be 0 or more, got {args.seed}")
    if args.data_dir is not None and not args.data_dir.is_dir():
        raise UsageError(f"--data-dir {args.data_dir}: no such folder")
    if args.device is not None:
        import torch

        try:
            torch.device(args.device)
        except (RuntimeError, ValueError) as exc:
            raise UsageError(f"--device {args.device!r}: {str(exc).splitlines()[0]}") from None
    check_folder("--cache-dir", cache_dir)
    check_output(args.json_out, "--json")


def _noter(err):
    """One line on stderr per encoder as soon as it is ready."""

    def note(result) -> None:
        state = "cached" if result.cached else ("trained" if result.trained else "re-encoded")
        err.print(
            f"{result.encoder}: {state}, dim {result.dim}, "
            f"logistic test accuracy {result.native_accuracy:.3f}, {result.seconds:.1f}s"
        )

    return note


def _state(result) -> str:
    if result.cached:
        return "hit"
    state = "trained" if result.trained else "re-encoded"
    if result.reason != "not cached":
        state += f": {result.reason}"
    return state


def _print_summary(console, results, dataset: str, cache_dir: Path, total: float) -> None:
    from rich.table import Table

    table = Table(title=f"{dataset} latents in {cache_dir / dataset}")
    for col, justify in (
        ("encoder", "left"),
        ("role", "left"),
        ("dim", "right"),
        ("logistic test", "right"),
        ("logistic val", "right"),
        ("mlp test", "right"),
        ("time (s)", "right"),
        ("cpu (s)", "right"),
        ("cache", "left"),
    ):
        table.add_column(col, justify=justify, no_wrap=col in ("encoder", "dim"))
    for r in results:
        table.add_row(
            r.encoder,
            "AP" if r.encoder == DEFAULT_AP else "user",
            str(r.dim),
            f"{r.native_accuracy:.3f}",
            f"{r.val_accuracy:.3f}",
            f"{r.task_model_accuracy:.3f}",
            f"{r.seconds:.1f}",
            "-" if r.cached else f"{r.cpu_seconds:.1f}",
            _state(r),
        )
    console.print(table)
    mean = sum(r.native_accuracy for r in results) / len(results)
    mlp = sum(r.task_model_accuracy for r in results) / len(results)
    console.print(
        f"mean test accuracy {mean:.3f} (logistic), {mlp:.3f} (mlp, the runs' default task "
        f"model) over {len(results)} encoders; total {total:.1f}s"
    )


def _write_json(path: Path, results, dataset: str, cache_dir: Path, total: float) -> None:
    from semalign.common.io import atomic_write_text

    payload = {
        "dataset": dataset,
        "cache": str(cache_dir),
        "seconds": round(total, 2),
        "mean_test_accuracy": sum(r.native_accuracy for r in results) / len(results),
        "mean_mlp_test_accuracy": sum(r.task_model_accuracy for r in results) / len(results),
        "encoders": [
            {
                "encoder": r.encoder,
                "dim": r.dim,
                "test_accuracy": r.native_accuracy,
                "val_accuracy": r.val_accuracy,
                "mlp_test_accuracy": r.task_model_accuracy,
                "seconds": round(r.seconds, 2),
                "cpu_seconds": round(r.cpu_seconds, 2),
                "cached": r.cached,
                "trained": r.trained,
                "reason": r.reason,
            }
            for r in results
        ],
    }
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
