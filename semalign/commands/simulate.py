"""``semalign simulate``: the AP and all users in one process (in-memory transport)."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone

from semalign.commands.options import (
    HelpFormatter,
    add_alignment_arguments,
    add_data_arguments,
    add_users_argument,
    add_verbosity_arguments,
    check_channel_users,
    check_output,
    config_from_args,
    parse_seeds,
    resolve_latents,
)
from semalign.common.errors import LatentsError, UsageError
from semalign.common.io import write_json
from semalign.common.records import RoundRecord, SeedResult
from semalign.common.strategies import get_strategy
from semalign.engine.scenario import build_session, load_scenario, user_names
from semalign.engine.simulate import record_user_snrs, simulate, user_snrs
from semalign.experiments.provenance import latents_id, provenance_block, stamp_results
from semalign.summary import print_summary


def run_simulate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    started = datetime.now(timezone.utc)
    config = config_from_args(args)
    seeds = parse_seeds(args.seeds)
    check_output(args.out)
    console = Console(stderr=True)
    try:
        latents_dir, ap, users = resolve_latents(args)
        check_channel_users(config, len(users))
        scenario = load_scenario(latents_dir, ap, users)
        # Validate the geometry once before any work (raises with a clear message).
        build_session(scenario, config)
        snrs = user_snrs(config, user_names(users))
    except (LatentsError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    origin = provenance_block(started, latents_id=latents_id(latents_dir, [ap, *users]))
    steps = config.iterations if get_strategy(config.strategy).has_rounds else 1
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        disable=args.quiet,
    ) as progress:
        task = progress.add_task(f"{config.strategy}", total=steps * len(seeds), info="")

        def on_round(seed: int, r: RoundRecord) -> None:
            progress.update(
                task,
                advance=1,
                info=(
                    f"seed {seed} round {r.round + 1}/{config.iterations} "
                    f"pilot MSE (whitened) {r.mse:.4f} primal res {r.primal_residual:.2e} "
                    f"dual res {r.dual_residual:.2e} "
                    f"down {r.bytes_down / 1e6:.2f} MB up {r.bytes_up / 1e6:.2f} MB"
                ),
            )

        def on_seed(block: SeedResult) -> None:
            if steps == 1:
                progress.update(task, advance=1)
            progress.update(
                task, info=f"seed {block.seed}: mean accuracy {block.mean_accuracy:.3f}"
            )

        run = simulate(scenario, config, seeds, on_round=on_round, on_seed=on_seed)
    results = stamp_results(record_user_snrs(run.to_dict(), snrs), origin)
    if not args.quiet:
        print_summary(results, console)
    if args.out:
        console.print(f"results written to {write_json(args.out, results)}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="run AP and users in one process (in-memory transport)",
        description="Federated latent-space alignment with the AP and all users in one "
        "process, exchanging the same serialized messages as the networked system.",
        formatter_class=HelpFormatter,
    )
    add_data_arguments(parser)
    parser.add_argument("--ap", help="AP encoder (default: the registry's default AP)")
    add_users_argument(parser)
    add_alignment_arguments(parser)
    parser.add_argument("--out", help="write the results JSON here (checked before any work)")
    add_verbosity_arguments(parser)
    parser.set_defaults(func=run_simulate)
