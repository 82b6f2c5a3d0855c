"""``semalign simulate``: the AP and all users in one process, exchanging serialized messages.

The library entry points (:func:`load_scenario`, :func:`simulate_seed`, :func:`simulate`) are
what the experiment sweeps call; the CLI adds progress, a summary table and the results JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import numpy as np
from pydantic import ValidationError

from semalign.client.user import User, UserData, user_data_from_cache
from semalign.common.config import AlignmentConfig
from semalign.common.latents import LatentsError, check_aligned, load_encoder_splits, pilot_count
from semalign.server.access_point import AccessPoint
from semalign.server.results import aggregate, seed_block
from semalign.server.session import LoopbackLink, RoundRecord, SessionDriver

log = logging.getLogger(__name__)


@dataclass
class Scenario:
    """Latents loaded once for many sessions: the AP's and each user's (by encoder)."""

    latents_dir: Path
    ap_encoder: str
    user_encoders: list[str]
    ap_train: np.ndarray  # (n_train, d)
    ap_test: np.ndarray  # (n_test, d)
    user_data: dict[tuple[str, float], UserData]

    def data_for(self, encoder: str, pilot_fraction: float) -> UserData:
        key = (encoder, pilot_fraction)
        if key not in self.user_data:
            self.user_data[key] = user_data_from_cache(self.latents_dir, encoder, pilot_fraction)
        return self.user_data[key]


def user_names(encoders: list[str]) -> list[str]:
    """Stable user ids: user1..userL (order of the --users list)."""
    return [f"user{i + 1}" for i in range(len(encoders))]


def load_scenario(latents_dir: str | Path, ap_encoder: str, user_encoders: list[str]) -> Scenario:
    """Load and cross-check the AP's and the users' latents (raises LatentsError)."""
    if not user_encoders:
        raise LatentsError("at least one user encoder is needed")
    latents_dir = Path(latents_dir)
    named = {enc: load_encoder_splits(latents_dir, enc) for enc in [ap_encoder, *user_encoders]}
    check_aligned(named)
    ap = named[ap_encoder]
    return Scenario(
        latents_dir=latents_dir,
        ap_encoder=ap_encoder,
        user_encoders=list(user_encoders),
        ap_train=ap["train"].latents,
        ap_test=ap["test"].latents,
        user_data={},
    )


def build_access_point(
    ap_train: np.ndarray, config: AlignmentConfig, expected_users: int | None
) -> AccessPoint:
    """The AP state machine from its own train latents (pilots: the first pilot_fraction)."""
    n = pilot_count(len(ap_train), config.pilot_fraction)
    return AccessPoint(
        config=config,
        pilot_latents=ap_train[:n],
        pilot_ids=np.arange(n, dtype=np.int64),
        expected_users=expected_users,
    )


def build_user(
    name: str, encoder: str, data: UserData, config: AlignmentConfig, ordinal: int
) -> User:
    """One user's state machine; ``ordinal`` (0-based position) seeds its channel with the seed."""
    return User(
        user_id=name,
        encoder=encoder,
        data=data,
        antennas_rx=config.antennas_rx,
        antennas_tx=config.antennas_tx,
        snr_db=config.snr_db,
        channel_seed=(config.seed, ordinal),
        share_csi=config.csi,
    )


def build_session(scenario: Scenario, config: AlignmentConfig) -> tuple[AccessPoint, list[User]]:
    """The AP and user state machines for one seed (same construction in every transport)."""
    ap = build_access_point(scenario.ap_train, config, len(scenario.user_encoders))
    users = [
        build_user(name, enc, scenario.data_for(enc, config.pilot_fraction), config, ordinal)
        for ordinal, (name, enc) in enumerate(
            zip(user_names(scenario.user_encoders), scenario.user_encoders, strict=True)
        )
    ]
    return ap, users


def baseline_info(ap: AccessPoint) -> dict[str, Any]:
    """How a result was produced, for the First-K/Top-K baselines (honest accounting)."""
    cfg = ap.config
    if cfg.strategy not in ("first-k", "top-k"):
        return {}
    return {
        "baseline": {
            "fit": cfg.baseline_fit,
            "data_channel_uses": ap.data_channel_uses,
            "index_bits_per_sample": ap.index_cost.bits_per_sample,
            "index_channel_uses": ap.index_cost.channel_uses,
            "index_cost_charged": cfg.topk_index_cost == "channel-uses",
        }
    }


def simulate_seed(
    scenario: Scenario,
    config: AlignmentConfig,
    on_round: Callable[[RoundRecord], None] | None = None,
) -> dict[str, Any]:
    """Run one in-process session for ``config.seed``; returns the seed's results block."""
    start = time.perf_counter()
    ap, users = build_session(scenario, config)
    driver = SessionDriver(ap, [LoopbackLink(u) for u in users], on_round=on_round)
    test_ids = np.arange(len(scenario.ap_test), dtype=np.int64)
    result = driver.run(scenario.ap_test, test_ids)
    extra = {
        "seconds": time.perf_counter() - start,
        "ap_whitening_condition": ap.whitener.condition,
        **baseline_info(ap),
    }
    return seed_block(result, config.seed, extra=extra)


def simulate(
    scenario: Scenario,
    config: AlignmentConfig,
    seeds: list[int],
    on_round: Callable[[int, RoundRecord], None] | None = None,
    on_seed: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run every seed and aggregate (the results JSON)."""
    blocks = []
    for seed in seeds:
        cfg = config.model_copy(update={"seed": seed})
        callback = (lambda record, s=seed: on_round(s, record)) if on_round else None
        blocks.append(simulate_seed(scenario, cfg, callback))
        if on_seed:
            on_seed(blocks[-1])
    extra = {
        "latents": str(scenario.latents_dir),
        "ap": scenario.ap_encoder,
        "users": scenario.user_encoders,
    }
    return aggregate(config, blocks, extra)


# ---------------------------------------------------------------------------- CLI
#: AlignmentConfig fields that are per-session CLI options (the seed comes from --seeds).
CLI_FIELDS: tuple[str, ...] = tuple(f for f in AlignmentConfig.model_fields if f != "seed")


def add_alignment_arguments(parser: argparse.ArgumentParser) -> None:
    """The alignment options shared by ``simulate`` and ``run`` (names of the reference code).

    Generated from :class:`AlignmentConfig`: option ``--channel-uses`` for field
    ``channel_uses``, its description as help, its default, its Literal values as choices.
    """
    for name in CLI_FIELDS:
        info = AlignmentConfig.model_fields[name]
        option = "--" + name.replace("_", "-")
        help_text = f"{info.description} (default: %(default)s)"
        if info.annotation is bool:
            parser.add_argument(
                option, action=argparse.BooleanOptionalAction, default=info.default, help=help_text
            )
        elif get_origin(info.annotation) is Literal:
            parser.add_argument(
                option, choices=get_args(info.annotation), default=info.default, help=help_text
            )
        else:
            parser.add_argument(option, type=info.annotation, default=info.default, help=help_text)
    parser.add_argument(
        "--seeds", default="27,42", help="comma-separated seeds (default: %(default)s)"
    )


def parse_seeds(text: str) -> list[int]:
    from semalign.cli import UserError

    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise UserError("--seeds is empty")
    return seeds


def config_from_args(args: argparse.Namespace) -> AlignmentConfig:
    """Validated AlignmentConfig from CLI arguments (UserError with one line on bad values)."""
    from semalign.cli import UserError

    try:
        return AlignmentConfig(**{f: getattr(args, f) for f in CLI_FIELDS})
    except ValidationError as exc:
        err = exc.errors()[0]
        option = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "config"
        raise UserError(f"{option}: {err['msg']} (got {err.get('input')!r})") from None


def resolve_latents(args: argparse.Namespace) -> tuple[Path, str, list[str]]:
    """--latents/--ap/--users, defaulting to the digits cache (encoded on first use)."""
    from semalign.cli import UserError
    from semalign.encoders import registry

    ap = args.ap or registry.DEFAULT_AP
    if args.latents and args.users not in registry.GROUPS:
        users = [u.strip() for u in args.users.split(",") if u.strip()]  # checked on load
    else:
        try:
            users = registry.resolve_encoders(args.users)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    if args.latents:
        return Path(args.latents), ap, users
    from semalign.encoders import default_cache_dir, ensure_latents

    return ensure_latents("digits", [ap, *users], default_cache_dir(), progress=True), ap, users


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write results atomically (NaN written as null)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_json_safe(payload), indent=2))
    tmp.replace(path)
    return path


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def print_summary(results: dict[str, Any], console) -> None:
    from rich.table import Table

    table = Table(
        title=f"strategy {results['strategy']} - mean over {len(results['seeds'])} seed(s)"
    )
    for col in ("user", "encoder", "native acc", "aligned acc", "MSE"):
        table.add_column(col, justify="left" if col in ("user", "encoder") else "right")

    def fmt(v, std=None, digits=3):
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        return f"{v:.{digits}f}" + (f" ± {std:.{digits}f}" if std else "")

    for u in results["users"]:
        table.add_row(
            u["name"],
            u["encoder"],
            fmt(u["native_accuracy"]),
            fmt(u["accuracy"], u.get("accuracy_std")),
            fmt(u["mse"], digits=4),
        )
    table.add_section()
    table.add_row(
        "mean",
        "",
        fmt(results["mean_native_accuracy"]),
        fmt(results["mean_accuracy"], results["std_accuracy"]),
        fmt(results["mean_mse"], digits=4),
    )
    console.print(table)
    dropped = {k: v for b in results["seeds"] for k, v in b["dropped"].items()}
    if dropped:
        console.print(f"[yellow]dropped users: {dropped}[/yellow]")


def run_simulate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from semalign.cli import UserError

    config = config_from_args(args)
    seeds = parse_seeds(args.seeds)
    console = Console(stderr=True)
    try:
        latents_dir, ap, users = resolve_latents(args)
        scenario = load_scenario(latents_dir, ap, users)
        # Validate the geometry once before any work (raises with a clear message).
        build_session(scenario, config)
    except (LatentsError, ValueError) as exc:
        raise UserError(str(exc)) from None
    steps = config.iterations if config.strategy in ("fed", "multi-link") else 1
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
                    f"seed {seed} round {r.round + 1}/{config.iterations} mse {r.mse:.4f} "
                    f"r {r.primal_residual:.2e} s {r.dual_residual:.2e} "
                    f"down {r.bytes_down / 1e6:.2f} MB up {r.bytes_up / 1e6:.2f} MB"
                ),
            )

        def on_seed(block: dict[str, Any]) -> None:
            if steps == 1:
                progress.update(task, advance=1)
            progress.update(
                task, info=f"seed {block['seed']}: mean accuracy {block['mean_accuracy']:.3f}"
            )

        results = simulate(scenario, config, seeds, on_round=on_round, on_seed=on_seed)
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
    )
    parser.add_argument(
        "--latents",
        help="latent cache directory <dir>/<encoder>/{train,val,"
        "test}.npz (default: the digits cache, encoded on first use)",
    )
    parser.add_argument("--ap", help="AP encoder (default: the registry's default AP)")
    parser.add_argument(
        "--users",
        default="paper-users",
        help="user encoders: comma-separated names or a group name (default: %(default)s)",
    )
    add_alignment_arguments(parser)
    parser.add_argument("--out", help="write the results JSON here")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress or table")
    parser.set_defaults(func=run_simulate)
