"""``semalign sweep``'s arguments: the grid's options (their help generated from
:class:`~semalign.experiments.grid.SweepGrid`'s and :class:`AlignmentConfig`'s defaults and
values) and the execution options. Their parsing into a grid is
:mod:`semalign.commands.sweep_options`.
"""

from __future__ import annotations

import argparse
from typing import Literal, get_args, get_origin

from semalign.commands.config_options import GivenStore
from semalign.commands.options import add_ap_encoder_argument, add_config_argument
from semalign.commands.tracking_options import add_tracking_arguments
from semalign.common.config import AlignmentConfig
from semalign.common.strategies import strategy_names
from semalign.experiments.grid import PRESETS, RESEARCH_AXES, SweepGrid, antennas_label
from semalign.experiments.runner import EXECUTORS


def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    """The grid's options: ``--config``, ``--preset``, the grid's axes, the one-value session
    options, ``--set``, the channel axes and the research options."""
    add = parser.add_argument
    add_config_argument(
        parser,
        ", preset, the grid options (strategies, channel_uses, antennas...; lists or "
        "comma-separated), a [set] table, any other config key as a --set axis",
    )
    add("--preset", choices=tuple(PRESETS), help="the paper's grids: " + ", ".join(PRESETS))
    add("--strategies", help="comma-separated: " + ",".join(strategy_names()) + " (default: all)")
    add("--channel-uses", help=f"K values (default: {grid_default('channel_uses')})")
    add(
        "--antennas",
        help=f"N_TxN_R configurations, e.g. 1x1,2x2,4x4 or 2x4 (default: "
        f"{grid_default('antennas')})",
    )
    add("--snr-db", help=f"SNRs in dB (default: {grid_default('snr_db')})")
    add("--seeds", help=f"seeds (default: {grid_default('seeds')})")
    add(
        "--groups",
        help="user groups: paper-users, homogeneous, heterogeneous, or enc1+enc2 "
        f"(default: {grid_default('groups')})",
    )
    add(
        "--pilot-fractions",
        help="fractions of the train split used as pilots "
        f"(default: {grid_default('pilot_fractions')})",
    )
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
    _add_session_arguments(parser)
    add(
        "--set",
        action="append",
        metavar="KEY=V1,V2",
        help="sweep a config key over these values (repeatable; the cartesian product of all), "
        "e.g. --set iterations=5,10 --set admm_penalty=0.5,1; keys with a column in the "
        "table: the config fields and channel.<field> (the grid options are shorthands)",
    )
    _add_channel_arguments(parser)
    _add_research_arguments(parser)


def _add_channel_arguments(parser: argparse.ArgumentParser) -> None:
    """The channel axes: fading models, correlations, K-factors, CSI error variances."""
    add = parser.add_argument
    add(
        "--channel-models",
        help="fading models, e.g. rayleigh,kronecker,rician "
        f"(default: {grid_default('channel_models')})",
    )
    add(
        "--correlations",
        help="kronecker: correlations rho (rho_tx = rho_rx = rho), e.g. 0,0.5,0.9",
    )
    add("--k-factors", help="rician: K-factors (linear), e.g. 1,10")
    add(
        "--csi-errors",
        help="CSI error variances (linear), e.g. 0,0.1,0.3 "
        f"(default: {grid_default('csi_errors')})",
    )


def _add_session_arguments(parser: argparse.ArgumentParser) -> None:
    """The one-value session options (their help from AlignmentConfig) and the AP encoder."""
    add = parser.add_argument
    fields = AlignmentConfig.model_fields
    for name, kind in (("iterations", int), ("power", float)):
        add(f"--{name}", type=kind, help=f"{fields[name].description} (default: "
            f"{fields[name].default:g})")  # fmt: skip
    add("--admm-penalty", "--rho", dest="rho", type=float, metavar="RHO", action=GivenStore,
        deprecated={"--rho": "--admm-penalty"},
        help=f"{fields['rho'].description} (default: {fields['rho'].default:g}; formerly "
        "--rho, deprecated)")  # fmt: skip
    for name in ("baseline_fit", "topk_index_cost"):
        option = "--" + name.replace("_", "-")
        add(option, choices=get_args(fields[name].annotation), help="see `simulate --help`")
    add_ap_encoder_argument(parser)


#: The research options (grid field -> its other spelling, its help before the values, a note
#: after the default). Their values and defaults are read from the models when the parser is
#: built: the AlignmentConfig field's Literal values, the SweepGrid field's default.
RESEARCH_OPTIONS: dict[str, tuple[str | None, str, str]] = {
    "task_models": ("--task-model", "users' task models", ""),
    "targets": ("--target", "what users align", ""),
    "pilot_selections": ("--pilot-selection", "which train points are pilots", ""),
    "user_groups": (
        None,
        "fed: numbers of user groups with one F each, e.g. 1,2",
        "; above 1 crosses fed cells only, and needs K at least as large",
    ),
    "equalizers": (
        "--equalizer",
        "ADMM F and G",
        ", the paper; widely-linear crosses the ADMM strategies only",
    ),
}


def grid_default(grid_field: str) -> str:
    """:class:`SweepGrid`'s default of ``grid_field`` as its option takes it (comma-separated,
    antennas as N_TxN_R)."""
    values = SweepGrid.model_fields[grid_field].get_default(call_default_factory=True)
    shown = []
    for value in values:
        if isinstance(value, tuple):
            shown.append(antennas_label(*value))
        else:
            shown.append(f"{value:g}" if isinstance(value, float) else str(value))
    return ",".join(shown)


def research_help(grid_field: str) -> str:
    """The help of research option ``grid_field``: its values (those of the config field's
    Literal) and the grid's default."""
    _, text, note = RESEARCH_OPTIONS[grid_field]
    annotation = AlignmentConfig.model_fields[RESEARCH_AXES[grid_field]].annotation
    if get_origin(annotation) is Literal:
        text += ": " + ",".join(get_args(annotation))
    return f"{text} (default: {grid_default(grid_field)}{note})"


def _add_research_arguments(parser: argparse.ArgumentParser) -> None:
    research = parser.add_argument_group("research options (docs/research.md; defaults: the paper)")
    for grid_field, (alias, _, _) in RESEARCH_OPTIONS.items():
        option = "--" + grid_field.replace("_", "-")
        research.add_argument(option, *([alias] if alias else []), help=research_help(grid_field))


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
    add_tracking_arguments(
        parser,
        "every run after it finishes (config, per-round pilot MSE, objective, residuals, "
        "bytes, round seconds, final per-user metrics)",
        "the table's name, e.g. sweep-fig2",
    )
