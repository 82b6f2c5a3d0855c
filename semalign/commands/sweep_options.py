"""``semalign sweep``'s grid and execution options: their arguments and their parsing into a
:class:`~semalign.experiments.grid.SweepGrid` (a preset's fields overridden by the options)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from semalign.common.config import STRATEGIES
from semalign.common.errors import SweepError, UsageError
from semalign.experiments.grid import PRESETS, SweepGrid, grid_from_options
from semalign.experiments.plan import (
    default_ap,
    resolve_groups,
)
from semalign.experiments.runner import EXECUTORS
from semalign.tracking import TRACKERS


# ---------------------------------------------------------------------------- options
def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _list_of(kind: type, option: str) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        values = []
        for part in _split(text):
            try:
                values.append(kind(part))
            except ValueError:
                raise UsageError(
                    f"{option}: {part!r} is not a valid {kind.__name__} (got {text!r})"
                ) from None
        return tuple(values)

    return parse


def _opt(text: str | None, kind: type, option: str) -> tuple | None:
    return None if text is None else _list_of(kind, option)(text)


def _csi_modes(text: str) -> tuple[bool, ...]:
    modes = {"on": True, "off": False, "true": True, "false": False}
    try:
        return tuple(modes[p.lower()] for p in _split(text))
    except KeyError as exc:
        raise UsageError(f"--csi-modes: {exc.args[0]!r} is not on or off (got {text!r})") from None


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Grid fields given on the command line (None: not given, the preset's or the default)."""
    return {
        "strategies": _opt(args.strategies, str, "--strategies"),
        "channel_uses": _opt(args.channel_uses, int, "--channel-uses"),
        "antennas": None if args.antennas is None else _split(args.antennas),
        "snr_db": _opt(args.snr_db, float, "--snr-db"),
        "seeds": _opt(args.seeds, int, "--seeds"),
        "groups": None if args.groups is None else _split(args.groups),
        "pilot_fractions": _opt(args.pilot_fractions, float, "--pilot-fractions"),
        "csi": _csi_modes(args.csi_modes) if isinstance(args.csi_modes, str) else args.csi_modes,
        "iterations": args.iterations,
        "rho": args.rho,
        "power": args.power,
        "baseline_fit": args.baseline_fit,
        "topk_index_cost": args.topk_index_cost,
        "ap": args.ap,
        "channel_models": _opt(args.channel_models, str, "--channel-models"),
        "correlations": _opt(args.correlations, float, "--correlations"),
        "k_factors": _opt(args.k_factors, float, "--k-factors"),
        "csi_errors": _opt(args.csi_errors, float, "--csi-errors"),
        "task_models": _opt(args.task_models, str, "--task-models"),
        "targets": _opt(args.targets, str, "--targets"),
        "pilot_selections": _opt(args.pilot_selections, str, "--pilot-selections"),
        "user_groups": _opt(args.user_groups, int, "--user-groups"),
        "equalizers": _opt(args.equalizers, str, "--equalizers"),
    }


def grid_from_args(args: argparse.Namespace) -> tuple[SweepGrid, dict[str, list[str]], list[str]]:
    """The validated grid, its groups (label -> user encoders) and every encoder it needs, the
    AP first."""
    from semalign.encoders import registry

    latents_given = bool(args.latents)
    try:
        grid = grid_from_options(args.preset, _overrides(args))
        groups, users = resolve_groups(grid.groups, latents_given)
        ap = default_ap(grid)
        if not latents_given:
            registry.get_spec(ap)
    except (SweepError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    return grid, groups, list(dict.fromkeys([ap, *users]))


# ---------------------------------------------------------------------------- parser
def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--preset", choices=tuple(PRESETS), help="the paper's grids: " + ", ".join(PRESETS))
    add("--strategies", help="comma-separated: " + ",".join(STRATEGIES) + " (default: all)")
    add("--channel-uses", help="K values, e.g. 1,2,4,6,8,10,20 (default: those)")
    add("--antennas", help="N_TxN_R configurations, e.g. 1x1,2x2,4x4 or 2x4 (default: 4x4)")
    add("--snr-db", help="SNRs in dB (default: 20)")
    add("--seeds", help="seeds (default: 27,42)")
    add(
        "--groups",
        help="user groups: paper-users, homogeneous, heterogeneous, or enc1+enc2 "
        "(default: paper-users)",
    )
    add("--pilot-fractions", help="fractions of the train split used as pilots (default: 1)")
    csi = parser.add_mutually_exclusive_group()
    csi.add_argument(
        "--csi",
        dest="csi_modes",
        action="store_const",
        const=(True,),
        help="channel-aware AP only (default)",
    )
    csi.add_argument(
        "--no-csi", dest="csi_modes", action="store_const", const=(False,), help="no CSI only"
    )
    csi.add_argument("--csi-modes", dest="csi_modes", help="e.g. on,off")
    add("--iterations", type=int, help="ADMM rounds T (default: 30)")
    add("--rho", type=float, help="ADMM penalty (default: 1)")
    add("--power", type=float, help="transmit power budget P_T (default: 1)")
    add("--baseline-fit", choices=("received", "full"), help="see `simulate --help`")
    add("--topk-index-cost", choices=("none", "channel-uses"), help="see `simulate --help`")
    add("--ap", help="AP encoder (default: the registry's default AP)")
    add(
        "--channel-models",
        help="fading models, e.g. rayleigh,kronecker,rician (default: rayleigh)",
    )
    add(
        "--correlations",
        help="kronecker: correlations rho (rho_tx = rho_rx = rho), e.g. 0,0.5,0.9",
    )
    add("--k-factors", help="rician: K-factors (linear), e.g. 1,10")
    add("--csi-errors", help="CSI error variances (linear), e.g. 0,0.1,0.3 (default: 0)")
    research = parser.add_argument_group("research options (docs/research.md; defaults: the paper)")
    research.add_argument(
        "--task-models", "--task-model", help="users' task models: mlp,logistic (default: mlp)"
    )
    research.add_argument(
        "--targets",
        "--target",
        help="what users align: latents,logits,task-subspace (default: latents)",
    )
    research.add_argument(
        "--pilot-selections",
        "--pilot-selection",
        help="which train points are pilots: first,random,k-center,herding (default: first)",
    )
    research.add_argument(
        "--user-groups",
        help="fed: numbers of user groups with one F each, e.g. 1,2 (default: 1; above 1 "
        "crosses fed cells only, and needs K at least as large)",
    )
    research.add_argument(
        "--equalizers",
        "--equalizer",
        help="ADMM F and G: linear,widely-linear (default: linear, the paper; widely-linear "
        "crosses the ADMM strategies only)",
    )


def add_execution_arguments(parser: argparse.ArgumentParser) -> None:
    scale = parser.add_argument_group("scaling out")
    scale.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="local: this process, or --workers processes; ray: every run a Ray task, on a "
        "local Ray instance of --workers CPUs or on the cluster at --ray-address "
        "(pip install 'semalign[ray]'); the table is written by this process either way",
    )
    scale.add_argument(
        "--ray-address",
        help="Ray cluster to run on (ray.init(address=...), e.g. auto or ray://head:10001); "
        "its nodes need semalign and the latents at the same path (default: a local instance)",
    )
    track = parser.add_argument_group("experiment tracking")
    track.add_argument(
        "--track",
        choices=tuple(TRACKERS),
        help="log every run (config, per-round pilot MSE, objective, residuals, bytes, round "
        "seconds, final per-user metrics) to MLflow, TensorBoard or W&B "
        "(pip install 'semalign[mlflow]', [tensorboard] or [wandb])",
    )
    track.add_argument(
        "--track-uri",
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else file:./mlruns), "
        "TensorBoard log folder (default: runs) or W&B folder (default: here; WANDB_MODE=offline "
        "for no account)",
    )
    track.add_argument(
        "--track-experiment",
        help="MLflow experiment, TensorBoard sub-folder or W&B project (default: the table's "
        "name, e.g. sweep-fig2)",
    )
