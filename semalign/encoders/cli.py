"""``semalign encode``: train/load every node's encoder and fill the latent cache."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from semalign.encoders.datasets import DATASETS
from semalign.encoders.registry import DEFAULT_AP, DEFAULT_SET, ENCODERS, GROUPS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "encode",
        help="encode a dataset with every node's encoder into the latent cache",
        description=(
            "Train (or load pretrained) encoders, encode the train/val/test splits and fit each "
            "user's classifier, writing <cache>/<dataset>/<encoder>/{train,val,test}.npz and "
            "classifier.npz. Valid cached entries are reused."
        ),
    )
    parser.add_argument(
        "--dataset", default="digits", help=f"one of {', '.join(DATASETS)} (default digits)"
    )
    parser.add_argument(
        "--encoders",
        default="default",
        help="comma-separated timm names and/or groups ("
        + ", ".join(["default", *GROUPS])
        + "); default: the AP plus every grouped user",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="cache directory (default $SEMALIGN_CACHE or ./cache)",
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument(
        "--image-size",
        type=int,
        default=32,
        help="square image size for from-scratch encoders (default 32)",
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
        help="local pretrained weights file for one encoder (repeatable)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="folder holding cifar-10-batches-py (cifar10 only)",
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="at most this many rows per split (quick tests)"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="override every recipe's epochs (quick tests; part of the cache key)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="encoders built at once, one process each (default: one per core)",
    )
    parser.add_argument("--device", default=None, help="torch device (default cuda if present)")
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        dest="json_out",
        help="also write the summary as JSON to this file",
    )
    parser.add_argument("--list", action="store_true", help="list encoders and groups, then exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def _parse_weights(items: list[str]) -> dict[str, Path]:
    from semalign.common.errors import UsageError

    out: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--weights expects NAME=PATH, got {item!r}")
        out[name.strip()] = Path(path)
    return out


def _list(console) -> int:
    from rich.table import Table

    table = Table(title="encoders")
    for col in ("name", "family", "role", "epochs", "lr", "timm arguments at 32x32"):
        table.add_column(col)
    for name, spec in ENCODERS.items():
        roles = [g for g, members in GROUPS.items() if name in members]
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
    for group, members in GROUPS.items():
        console.print(f"[bold]{group}[/bold]: {', '.join(members)}")
    console.print(f"[bold]default[/bold]: {', '.join(DEFAULT_SET)}")
    return 0


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from semalign.common.errors import UsageError
    from semalign.encoders.cache import default_cache_dir, encode
    from semalign.encoders.datasets import DatasetUnavailable, check_dataset_name
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
    weights = _parse_weights(args.weights)
    cache_dir = args.cache or default_cache_dir()
    started = time.perf_counter()
    from semalign.encoders.train import WeightsUnavailable

    err = Console(stderr=True)

    def note(result) -> None:
        state = "cached" if result.cached else ("trained" if result.trained else "re-encoded")
        err.print(
            f"{result.encoder}: {state}, dim {result.dim}, "
            f"test accuracy {result.native_accuracy:.3f}, {result.seconds:.1f}s"
        )

    kwargs = dict(
        seed=args.seed,
        image_size=args.image_size,
        pretrained=args.pretrained,
        data_dir=args.data_dir,
        weights=weights,
        limit=args.limit,
        epochs=args.epochs,
        device=args.device,
        jobs=args.jobs,
        on_result=note,
    )
    try:
        if args.no_progress:
            results = encode(args.dataset, names, cache_dir, **kwargs)
        else:
            from semalign.encoders.progress import RichReporter

            with RichReporter(err) as reporter:
                results = encode(args.dataset, names, cache_dir, reporter=reporter, **kwargs)
    except (ValueError, DatasetUnavailable, WeightsUnavailable) as exc:
        raise UsageError(str(exc)) from None
    total = time.perf_counter() - started

    table = Table(title=f"{args.dataset} latents in {cache_dir / args.dataset}")
    for col, justify in (
        ("encoder", "left"),
        ("role", "left"),
        ("dim", "right"),
        ("test acc", "right"),
        ("val acc", "right"),
        ("time (s)", "right"),
        ("cpu (s)", "right"),
        ("cache", "left"),
    ):
        table.add_column(col, justify=justify, no_wrap=col in ("encoder", "dim", "test acc"))
    for r in results:
        if r.cached:
            state = "hit"
        else:
            state = "trained" if r.trained else "re-encoded"
            if r.reason != "not cached":
                state += f": {r.reason}"
        table.add_row(
            r.encoder,
            "AP" if r.encoder == DEFAULT_AP else "user",
            str(r.dim),
            f"{r.native_accuracy:.3f}",
            f"{r.val_accuracy:.3f}",
            f"{r.seconds:.1f}",
            "-" if r.cached else f"{r.cpu_seconds:.1f}",
            state,
        )
    console.print(table)
    mean = sum(r.native_accuracy for r in results) / len(results)
    console.print(f"mean test accuracy {mean:.3f} over {len(results)} encoders; total {total:.1f}s")
    if args.json_out:
        payload = {
            "dataset": args.dataset,
            "cache": str(cache_dir),
            "seconds": round(total, 2),
            "mean_test_accuracy": mean,
            "encoders": [
                {
                    "encoder": r.encoder,
                    "dim": r.dim,
                    "test_accuracy": r.native_accuracy,
                    "val_accuracy": r.val_accuracy,
                    "seconds": round(r.seconds, 2),
                    "cpu_seconds": round(r.cpu_seconds, 2),
                    "cached": r.cached,
                    "trained": r.trained,
                    "reason": r.reason,
                }
                for r in results
            ],
        }
        args.json_out.write_text(json.dumps(payload, indent=2) + "\n")
    return 0
