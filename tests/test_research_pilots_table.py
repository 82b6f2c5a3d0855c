"""``benchmarks/research_pilots.py --table``: the pilot-budget figure and table from a sweep."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from test_plot import PNG_MAGIC, fake_run

from semalign.experiments.table import ResultsTable

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "research_pilots.py"


@pytest.fixture(scope="module")
def pilots():
    spec = importlib.util.spec_from_file_location("research_pilots", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_mode_splits_strategies_and_reports_share_of_full_pilots(pilots, tmp_path):
    path = tmp_path / "sweep.csv"
    with ResultsTable(path) as table:
        for seed in (1, 2, 3):
            for selection in ("random", "herding"):
                fake_run(table, seed, pilot_fraction=0.1, pilot_selection=selection)
            fake_run(table, seed, pilot_fraction=1.0, pilot_selection="first")
            fake_run(table, seed, strategy="first-k", pilot_fraction=0.1, pilot_selection="random")
    points = pilots.table_points([str(path)])
    # fed and first-k are separate panels; the 100 % cell stands for every selection
    assert set(points) == {
        ("fed", "paper-users", "4x4", 1, "random"),
        ("fed", "paper-users", "4x4", 1, "herding"),
        ("fed", "paper-users", "4x4", 1, "all"),
        ("first-k", "paper-users", "4x4", 1, "random"),
    }
    full = points[("fed", "paper-users", "4x4", 1, "all")][1.0]
    herding = points[("fed", "paper-users", "4x4", 1, "herding")][0.1]
    assert full.seeds == herding.seeds == 3
    figure = tmp_path / "pilots.png"
    lines = pilots.plot_table([str(path)], figure)
    assert figure.read_bytes().startswith(PNG_MAGIC)
    text = "\n".join(lines)
    assert "**fed, paper-users, 4x4, K=1; 100 % pilots: " in text
    assert "**first-k, paper-users, 4x4, K=1**" in text  # no 100 % run: no share
    row = next(line for line in lines if line.startswith("| 10 % |"))  # fed's, drawn first
    share = 100 * herding.accuracy / full.accuracy
    assert f"{herding.accuracy:.3f} ± " in row and f"({share:.1f} %)" in row
    assert np.isfinite(share)


def test_table_mode_refuses_a_table_without_complete_runs(pilots, tmp_path):
    path = tmp_path / "empty.csv"
    with ResultsTable(path):
        pass
    with pytest.raises(SystemExit, match="no complete runs"):
        pilots.plot_table([str(path)], tmp_path / "f.png")
