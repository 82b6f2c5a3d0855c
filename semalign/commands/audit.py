"""``semalign audit``: what an honest-but-curious AP learns of each user's pilots.

Runs the session ``simulate`` would run (same options) once per round protocol, target and
seed, records every message the AP receives, and attacks each user's uploads
(:mod:`semalign.engine.audit`): a table, ``--json`` with per-user figures and ``--figure``
(leakage vs rounds per protocol). ``docs/privacy.md`` explains the threat model and the attacks.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from typing import Any, get_args

from semalign.commands.config_files import apply_config_file
from semalign.commands.options import (
    HelpFormatter,
    add_verbosity_arguments,
    check_output,
    config_from_args,
    load_checked_scenario,
    parse_seeds,
)
from semalign.commands.simulate import SCENARIO, add_session_arguments
from semalign.common.config import Aggregation, AlignmentConfig, RoundProtocol, Target
from semalign.common.errors import UsageError
from semalign.common.io import write_json
from semalign.engine.audit import UserLeakage, audit_seed, summarize
from semalign.experiments.provenance import latents_id, provenance_block

#: table columns: (title, JSON keys shown as a/b/c): the best attack (a lower bound on
#: leakage), the attacks tried, the row-combination oracle, chance, the ceiling X gives
COLUMNS = (
    ("attack R2", ("attack_r2",)),
    ("whitened/map", ("procrustes_r2", "known_map_r2")),
    ("subspace", ("subspace_r2",)),
    ("chance", ("chance_r2",)),
    ("own", ("own_r2",)),
    ("probe rec/Y/X", ("probe_accuracy", "probe_truth_accuracy", "probe_ap_accuracy")),
    ("CKA rec/Y", ("cka", "cka_truth")),
)


def parse_list(text: str, option: str, allowed: tuple[str, ...]) -> list[str]:
    """A comma-separated list of ``allowed`` values, in order, without repeats (UsageError)."""
    values = list(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    if not values:
        raise UsageError(f"{option} is empty")
    bad = [v for v in values if v not in allowed]
    if bad:
        raise UsageError(f"{option}: unknown {bad[0]!r} (choose from {', '.join(allowed)})")
    return values


def audit_configs(args: argparse.Namespace) -> list[AlignmentConfig]:
    """One validated config per target, protocol and aggregation of ``--targets`` x
    ``--protocols`` x ``--aggregations`` that the session accepts (secure aggregation needs
    compact rounds and fed: other pairs are left out); UsageError if none is left."""
    base = config_from_args(args)
    protocols = parse_list(args.protocols, "--protocols", get_args(RoundProtocol))
    targets = parse_list(args.targets, "--targets", get_args(Target))
    aggregations = parse_list(args.aggregations, "--aggregations", get_args(Aggregation))
    if base.user_groups > 1:
        raise UsageError("--user-groups: audit runs one session per seed (1 group)")
    configs, refused = [], []
    for target in targets:
        for protocol in protocols:
            for aggregation in aggregations:
                change = {"protocol": protocol, "target": target, "aggregation": aggregation}
                try:
                    configs.append(AlignmentConfig(**(base.model_dump() | change)))
                except ValueError as exc:
                    refused.append(f"{protocol}/{aggregation}: {_first_error(exc)}")
    if not configs:
        raise UsageError(f"no session to audit ({'; '.join(dict.fromkeys(refused))})")
    return configs


def drop_round(text: str, config: AlignmentConfig, users: int) -> int | None:
    """The round of ``--drop-round`` (``auto``: the middle round, with 3 users or more; ``none``:
    no drop case); UsageError for a round the session does not have, or too few users."""
    if text == "none":
        return None
    if text == "auto":
        return config.iterations // 2 if users >= 3 else None
    try:
        round_ = int(text)
    except ValueError:
        raise UsageError(f"--drop-round: {text!r} is not a round, auto or none") from None
    if not 0 <= round_ < config.iterations:
        raise UsageError(f"--drop-round {round_}: rounds are 0..{config.iterations - 1}")
    if users < 3:
        raise UsageError(
            "--drop-round: a drop needs 3 users or more (secure aggregation's threshold is 2)"
        )
    return round_


def audit_cases(
    configs: list[AlignmentConfig], drop: int | None
) -> list[tuple[AlignmentConfig, int | None]]:
    """(config, drop round) of every session to run: each config without a drop, and each
    secure one again with the last user dropped at ``drop`` (when not ``None``)."""
    out: list[tuple[AlignmentConfig, int | None]] = []
    for config in configs:
        out.append((config, None))
        if drop is not None and config.aggregation == "secure":
            out.append((config, drop))
    return out


def _first_error(exc: ValueError) -> str:
    """The first line of a validation error's message (pydantic's or a plain one)."""
    errors = getattr(exc, "errors", None)
    text = str(errors()[0]["msg"]) if callable(errors) else str(exc)
    return text.removeprefix("Value error, ").splitlines()[0]


def print_table(records: list[UserLeakage], console) -> None:
    """One table per protocol and target: per user, the means over seeds of :data:`COLUMNS`."""
    from rich.table import Table

    rows = summarize(records, by_user=True)
    sessions = dict.fromkeys(
        (r["protocol"], r["aggregation"], r["target"], r["drop_round"]) for r in rows
    )
    for session in sessions:
        protocol, aggregation, target, drop = session
        title = f"{protocol} rounds, {aggregation} aggregation, target {target}"
        title += "" if drop is None else f", last user dropped at round {drop}"
        table = Table(title=f"{title}: what the AP reconstructs")
        for title in ("user", "encoder", "rank/m", *(c[0] for c in COLUMNS)):
            table.add_column(title, justify="left" if title in ("user", "encoder") else "right")
        for row in rows:
            if (row["protocol"], row["aggregation"], row["target"], row["drop_round"]) != session:
                continue
            cells = ["/".join(_fmt(row[key]) for key in keys) for _, keys in COLUMNS]
            table.add_row(row["user"], row["encoder"], f"{row['rank']:.0f}/{row['m']}", *cells)
        console.print(table)


def _fmt(value: float | None) -> str:
    return "-" if value is None or value != value else f"{round(value, 2) + 0.0:.2f}"


def run_audit(args: argparse.Namespace) -> int:
    from rich.console import Console

    started = datetime.now(timezone.utc)
    apply_config_file(args, SCENARIO)
    configs = audit_configs(args)
    seeds = parse_seeds(args.seeds)
    check_output(args.json, "--json")
    check_output(args.figure, "--figure")
    # the table is wide: a file or pipe gets 140 columns instead of rich's 80
    console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)
    loaded = load_checked_scenario(args, configs)  # every session's geometry, before any work
    scenario, latents_dir, ap, users = loaded.scenario, loaded.latents_dir, loaded.ap, loaded.users
    drop = drop_round(args.drop_round, configs[0], len(users))
    records: list[UserLeakage] = []
    memo: dict = {}  # figures that do not depend on the protocol or seed
    for config, dropped in audit_cases(configs, drop):
        for seed in seeds:
            if not args.quiet:
                what = f"{config.protocol} rounds, {config.aggregation} aggregation"
                what += "" if dropped is None else f", last user dropped at round {dropped}"
                console.print(f"audit: {what}, target {config.target}, seed {seed}")
            session = config.model_copy(update={"seed": seed})
            records += audit_seed(scenario, session, memo, dropped)
    if not args.quiet:
        print_table(records, console)
    origin = provenance_block(started, latents_id=latents_id(latents_dir, [ap, *users]))
    if args.json:
        payload = audit_json(configs[0], seeds, records, origin, latents_dir, ap)
        console.print(f"audit written to {write_json(args.json, payload)}")
    if args.figure:
        from semalign.experiments.leakage_figure import draw_leakage

        console.print(f"figure written to {draw_leakage(records, args.figure)}")
    return 0


def audit_json(
    config: AlignmentConfig,
    seeds: list[int],
    records: list[UserLeakage],
    origin: dict[str, Any],
    latents_dir,
    ap: str,
) -> dict[str, Any]:
    """The ``--json`` document: the session config (its protocol and target vary), the
    per-user records and their means per protocol and target."""
    params = config.params()
    for varied in ("protocol", "target", "aggregation", "seed"):
        params.pop(varied, None)
    return {
        "config": params,
        "seeds": seeds,
        "latents": str(latents_dir),
        "ap": ap,
        "users": [r.to_dict() for r in records],
        "summary": summarize(records, by_user=False),
        "provenance": origin,
    }


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="measure what an honest-but-curious AP learns of each user's pilots",
        description="Run the simulate session once per round protocol and target, record every "
        "message the AP receives, and reconstruct each user's whitened pilot latents from its "
        "uploads (R^2, a probe of the user's task, CKA). See docs/privacy.md.",
        formatter_class=HelpFormatter,
    )
    add_session_arguments(parser)
    parser.add_argument(
        "--protocols",
        default="paper,compact",
        help="round protocols to audit, comma-separated (replaces --protocol)",
    )
    parser.add_argument(
        "--targets",
        default="latents,logits",
        help="what users align, comma-separated: latents, logits, task-subspace "
        "(replaces --target)",
    )
    parser.add_argument(
        "--aggregations",
        default="plain,secure",
        help="aggregations to audit, comma-separated (replaces --aggregation; secure runs only "
        "with compact rounds and fed)",
    )
    parser.add_argument(
        "--drop-round",
        default="auto",
        help="audit each secure session again with the last user dropped when this round's "
        "broadcast reaches it (the AP rebuilds its masking key of that round): a round "
        "number, auto (the middle round, with 3 users or more) or none",
    )
    parser.add_argument("--json", help="write per-user figures here (checked before any work)")
    parser.add_argument("--figure", help="draw leakage vs rounds per protocol here (.png, .pdf)")
    add_verbosity_arguments(parser)
    parser.set_defaults(func=run_audit)
