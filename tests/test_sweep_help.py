"""``semalign sweep --help`` states the grid's defaults as the models hold them: the help is
generated from :class:`SweepGrid` (whose research defaults are :class:`AlignmentConfig`'s),
never written out a second time."""

from __future__ import annotations

import argparse
from typing import get_args

from semalign.common.config import AlignmentConfig

from semalign.commands.sweep_arguments import add_grid_arguments
from semalign.experiments.grid import RESEARCH_AXES, SweepGrid


def _helps() -> dict[str, str]:
    """Every grid option of a freshly built sweep parser -> its help text."""
    parser = argparse.ArgumentParser()
    add_grid_arguments(parser)
    return {o: a.help for a in parser._actions for o in a.option_strings if a.help}


def test_research_options_show_the_config_defaults_and_values():
    helps = _helps()
    for grid_field, config_field in RESEARCH_AXES.items():
        info = AlignmentConfig.model_fields[config_field]
        text = helps["--" + grid_field.replace("_", "-")]
        assert f"(default: {info.default}" in text, grid_field
        for value in get_args(info.annotation):  # a Literal's values; none for a number
            assert value in text, (grid_field, value)
    assert "(default: 27,42)" in helps["--seeds"] and "(default: 4x4)" in helps["--antennas"]
    assert "(default: 1,2,4,6,8,10,20)" in helps["--channel-uses"]


def test_changing_a_model_default_changes_the_help(monkeypatch):
    fields = SweepGrid.model_fields
    monkeypatch.setattr(fields["task_models"], "default", ("logistic",))
    monkeypatch.setattr(fields["equalizers"], "default", ("widely-linear", "linear"))
    monkeypatch.setattr(fields["seeds"], "default", (1, 2, 3))
    monkeypatch.setattr(fields["snr_db"], "default", (-5.0, 12.5))
    monkeypatch.setattr(fields["antennas"], "default", ((2, 4),))
    helps = _helps()
    assert "(default: logistic)" in helps["--task-models"]
    assert "(default: widely-linear,linear, the paper;" in helps["--equalizers"]
    assert "(default: 1,2,3)" in helps["--seeds"]
    assert "(default: -5,12.5)" in helps["--snr-db"]
    assert "(default: 2x4)" in helps["--antennas"]
