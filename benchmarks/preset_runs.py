"""What the precision benchmarks share: a sweep preset's runs, the workers' set-up, and one
run simulated once per value of one config field on the same latents, channel draws and noise.

``benchmarks/precision_presets.py`` (``precision``: double, single) and
``benchmarks/wire_precision.py`` (``wire_precision``: native, float16, bfloat16) pair
:func:`~semalign.engine.simulate.simulate_seed` calls this way in ``--workers`` spawned
processes; neither goes through the sweep's runner or writes a table.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def one_thread() -> None:
    """A worker's set-up, as the sweep's: one BLAS thread, warnings only."""
    import logging

    from semalign.experiments.runner import _worker_init

    _worker_init(1, logging.WARNING)


def preset_runs(preset: str, latents: Path, overrides: dict[str, Any]) -> list:
    """The runs of ``preset`` (cells x seeds, ``semalign sweep --preset``) on ``latents``,
    with grid ``overrides`` (a None value keeps the preset's)."""
    from semalign.experiments.grid import grid_from_options
    from semalign.experiments.plan import make_plan, resolve_groups

    grid = grid_from_options(preset, overrides)
    groups, _ = resolve_groups(grid.groups, latents_given=True)
    return make_plan(grid, latents, groups).runs


def each_value(spec: Any, config_json: str, name: str, values: Sequence[str]) -> dict[str, Any]:
    """One run (``config_json``, an AlignmentConfig) with config field ``name`` at each of
    ``values`` in turn, on this worker's scenario of ``spec`` (a run's ScenarioSpec, loaded
    once per worker by the sweep runner's own cache): value -> its seed block."""
    from semalign.common.config import AlignmentConfig

    from semalign.engine.simulate import simulate_seed
    from semalign.experiments.runner import _scenario

    scenario = _scenario(spec)
    config = AlignmentConfig.model_validate_json(config_json)
    return {
        value: simulate_seed(scenario, config.model_copy(update={name: value})) for value in values
    }
