"""``semalign simulate``: the AP and all users in one process (in-memory transport).

Progress goes to stderr: a live bar in a terminal; otherwise plain lines, one per 10 % of a
seed's rounds and one per finished seed (none with ``--quiet``). ``--track`` logs each seed as a
tracked run, each round as it ends. ``--config FILE`` reads the options from a file (a results
JSON runs the same sessions again).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from semalign.commands.config_files import apply_config_file
from semalign.commands.options import (
    HelpFormatter,
    add_alignment_arguments,
    add_ap_encoder_argument,
    add_config_argument,
    add_data_arguments,
    add_users_argument,
    add_verbosity_arguments,
    check_output,
    config_from_args,
    load_checked_scenario,
    parse_seeds,
)
from semalign.commands.tracking_options import (
    add_tracking_arguments,
    check_tracking,
    end_session_tracking,
    track_session,
)
from semalign.common.config import AlignmentConfig
from semalign.common.errors import UsageError
from semalign.common.io import write_json
from semalign.common.records import Provenance, RoundRecord, SeedResult
from semalign.common.strategies import get_strategy
from semalign.engine.scenario import user_names
from semalign.engine.simulate import simulate, user_snrs
from semalign.experiments.provenance import latents_id, provenance_block
from semalign.summary import print_summary

#: The ``--config`` keys besides the config fields.
SCENARIO = ("seeds", "ap_encoder", "user_encoders", "num_users", "latents", "dataset")


def round_text(seed: int, r: RoundRecord, iterations: int) -> str:
    """One round's figures: pilot MSE, residuals, bytes."""
    return (
        f"seed {seed} round {r.round + 1}/{iterations} "
        f"pilot MSE (whitened) {r.mse:.4f} primal res {r.primal_residual:.2e} "
        f"dual res {r.dual_residual:.2e} "
        f"down {r.bytes_down / 1e6:.2f} MB up {r.bytes_up / 1e6:.2f} MB"
    )


def reported_round(r: RoundRecord, iterations: int) -> bool:
    """Whether a plain (not terminal) display prints round ``r``: one per 10 % of the rounds,
    and the last."""
    every = max(1, math.ceil(iterations / 10))
    return (r.round + 1) % every == 0 or r.round + 1 == iterations


def run_simulate(args: argparse.Namespace) -> int:
    from rich.console import Console

    started = datetime.now(timezone.utc)
    apply_config_file(args, SCENARIO)
    config = config_from_args(args)
    seeds = parse_seeds(args.seeds)
    check_output(args.out)
    check_tracking(args)
    console = Console(stderr=True)
    loaded = load_checked_scenario(args, [config])
    scenario, latents_dir, ap, users = loaded.scenario, loaded.latents_dir, loaded.ap, loaded.users
    try:
        snrs = user_snrs(config, user_names(users))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    origin = provenance_block(started, latents_id=latents_id(latents_dir, [ap, *users]))
    names = dict(zip(user_names(users), users, strict=True))
    runs = track_session(args, "simulate", config, ap, names, origin)
    try:
        run = _run_with_progress(console, args, scenario, config, seeds, runs)
    finally:
        end_session_tracking(runs, args, say)
    run = run.with_user_snrs(snrs).with_provenance(Provenance.from_dict(origin))
    if not args.quiet:
        print_summary(run, console)
    if args.out:
        console.print(f"results written to {write_json(args.out, run.to_dict())}")
    return 0


def _run_with_progress(
    console: Any,
    args: argparse.Namespace,
    scenario: Any,
    config: AlignmentConfig,
    seeds: list[int],
    runs: Any,
) -> Any:
    """Every seed, with the live display in a terminal or plain lines otherwise."""
    if args.quiet or not console.is_terminal:
        on_round, on_seed = _plain_callbacks(config, seeds, quiet=args.quiet)
        return simulate(
            scenario, config, seeds, on_round=_also(on_round, runs), on_seed=_also(on_seed, runs)
        )
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    steps = config.iterations if get_strategy(config.strategy).has_rounds else 1
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=False) as progress:
        task = progress.add_task(f"{config.strategy}", total=steps * len(seeds), info="")

        def on_round(seed: int, r: RoundRecord) -> None:
            progress.update(task, advance=1, info=round_text(seed, r, config.iterations))

        def on_seed(block: SeedResult) -> None:
            if steps == 1:
                progress.update(task, advance=1)
            info = f"seed {block.seed}: mean accuracy {block.mean_accuracy:.3f}"
            progress.update(task, info=info)

        return simulate(
            scenario, config, seeds, on_round=_also(on_round, runs), on_seed=_also(on_seed, runs)
        )


def say(line: str) -> None:
    """One plain progress line on stderr, flushed (a pipe or a log file sees it now)."""
    print(line, file=sys.stderr, flush=True)


def _plain_callbacks(
    config: AlignmentConfig, seeds: list[int], *, quiet: bool
) -> tuple[Callable, Callable]:
    """Plain progress lines on stderr (nothing when ``quiet``)."""
    done = [0]

    def on_round(seed: int, r: RoundRecord) -> None:
        if not quiet and reported_round(r, config.iterations):
            say(round_text(seed, r, config.iterations))

    def on_seed(block: SeedResult) -> None:
        done[0] += 1
        if not quiet:
            took = f", {block.seconds:.1f} s" if block.seconds is not None else ""
            say(
                f"seed {block.seed} done ({done[0]}/{len(seeds)}): mean accuracy "
                f"{block.mean_accuracy:.3f}{took}"
            )

    return on_round, on_seed


def _also(callback: Callable, runs: Any) -> Callable:
    """``callback``, then the tracker's (``on_round(seed, record)`` or ``on_seed(block)``)."""
    if runs is None:
        return callback

    def both(*values: Any) -> None:
        callback(*values)
        if len(values) == 2:
            runs.on_round(*values)
        else:
            runs.on_seed(*values)

    return both


def add_session_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the sessions ``simulate`` runs (``audit`` runs the same ones):
    ``--config``, the latents (dataset, cache), the AP's and the users' encoders and every
    session option; :data:`SCENARIO` names those a config file may set besides the fields."""
    add_config_argument(parser)
    add_data_arguments(parser)
    add_ap_encoder_argument(parser)
    add_users_argument(parser)
    add_alignment_arguments(parser)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="run AP and users in one process (in-memory transport)",
        description="Federated latent-space alignment with the AP and all users in one "
        "process, exchanging the same serialized messages as the networked system. Options "
        "can come from --config FILE (TOML, YAML, or a results JSON to run the same sessions "
        "again); options on the command line override it.",
        formatter_class=HelpFormatter,
    )
    add_session_arguments(parser)
    parser.add_argument("--out", help="write the results JSON here (checked before any work)")
    add_tracking_arguments(parser, "each seed (its rounds as they end)", "simulate")
    add_verbosity_arguments(parser)
    parser.set_defaults(func=run_simulate)
