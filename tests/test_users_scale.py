"""benchmarks/users_scale.py: the scale benchmark's core (one ``semalign simulate`` child per
L) reports a warm round time, the child's peak memory and the traffic of the L users."""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import users_scale  # noqa: E402


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scale-cache")
    users_scale.write_cache(root, encoders=2, n=300, ap_dim=16, dims=(16, 24))
    return root


@pytest.fixture(scope="module")
def records(cache) -> dict[int, dict]:
    args = argparse.Namespace(precision="double", symbols=8, iterations=3, task_model="logistic")
    return {users: users_scale.run_simulate(cache, users, "compact", args) for users in (1, 3)}


def test_record_of_three_users(records):
    three = records[3]
    assert three["users"] == 3 and three["protocol"] == "compact"
    rounds = three["round_seconds_all"]
    assert len(rounds) == 3 and all(s > 0 for s in rounds)
    # warm: the median of the rounds after the first, not of all of them
    assert three["warm_round_seconds"] == statistics.median(rounds[1:])
    assert three["warm_round_cpu_seconds"] == statistics.median(three["round_cpu_seconds_all"][1:])
    # the child's own peak (an interpreter with numpy and the session), not zero or the parent's
    assert 0.03 < three["peak_rss_gib"] < 2
    assert three["wall_seconds"] > 0 and three["load_average"] >= 0


def test_traffic_grows_with_users(records):
    """Compact rounds send every user the same F and get the same (K N_T, d/2) uploads: three
    users carry three times one user's bytes (a few bytes of user ids aside)."""
    one, three = records[1], records[3]
    for key in ("bytes_down", "bytes_up", "handshake_bytes_down"):
        assert three[key] == pytest.approx(3 * one[key], rel=0.01), key
    assert three["peak_rss_gib"] > 0 and one["peak_rss_gib"] > 0


def test_scale_figure(records, tmp_path):
    path = tmp_path / "scale.png"
    users_scale.plot_scale(list(records.values()), path, "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
