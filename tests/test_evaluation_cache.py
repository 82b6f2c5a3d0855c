"""Evaluation's reference (an encoder's test latents whitened, and the native accuracy) computed
once per encoder for the users sharing its data, with the numbers of every user computing its
own."""

from __future__ import annotations

import numpy as np
import pytest
from semalign.client import user as user_module
from semalign.common.config import AlignmentConfig
from synthetic import make_latents

from semalign.engine.scenario import load_scenario
from semalign.engine.simulate import simulate

METRICS = ("accuracy", "native_accuracy", "mse", "mse_whitened")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_latents(tmp_path_factory.mktemp("lat"), n_train=200, n_test=50)


def _run(cache, config: AlignmentConfig, monkeypatch, *, shared: bool) -> tuple[dict, int]:
    """Two seeds of six users of two encoders; per-user metrics by (seed, user) and how often
    the reference was computed. ``shared=False``: every user computes its own (no cache)."""
    root, ap, users = cache
    computed = []
    fresh = user_module.evaluation_reference

    def counted(data, ids, whitener, representation):
        computed.append(data)
        return fresh(data, ids, whitener, representation)

    monkeypatch.setattr(user_module, "evaluation_reference", counted)
    if not shared:
        monkeypatch.setattr(
            user_module.UserData,
            "evaluation_reference",
            lambda self, ids, whitener, rep, pilot_ids: counted(self, ids, whitener, rep),
        )
    scenario = load_scenario(root, ap, users * 3)
    result = simulate(scenario, config, seeds=[1, 2])
    metrics = {
        (block.seed, u.name): [getattr(u, m) for m in METRICS]
        for block in result.seeds
        for u in block.users
    }
    return metrics, len(computed)


@pytest.mark.parametrize(
    "settings",
    [
        {"strategy": "fed", "protocol": "compact"},
        {"strategy": "multi-link", "pilot_fraction": 0.5, "task_model": "logistic"},
        {"strategy": "first-k", "task_model": "logistic"},
        {"strategy": "fed", "equalizer": "widely-linear"},
    ],
    ids=["fed-compact", "multi-link-half-pilots", "first-k", "fed-widely-linear"],
)
def test_one_reference_per_encoder_and_the_same_numbers(cache, monkeypatch, settings):
    config = AlignmentConfig(antennas_tx=2, antennas_rx=2, channel_uses=2, iterations=2, **settings)
    with monkeypatch.context() as patch:
        alone, per_user = _run(cache, config, patch, shared=False)
    with monkeypatch.context() as patch:
        shared, once = _run(cache, config, patch, shared=True)
    assert per_user == 2 * 6  # two seeds of six users
    assert once == 2  # two encoders, both seeds
    assert alone.keys() == shared.keys()
    for key, values in alone.items():
        np.testing.assert_allclose(shared[key], values, rtol=1e-12, atol=1e-12, err_msg=str(key))


def test_the_shared_reference_is_read_only(cache):
    root, ap, users = cache
    scenario = load_scenario(root, ap, users)
    config = AlignmentConfig(antennas_tx=2, antennas_rx=2, channel_uses=2, iterations=1)
    simulate(scenario, config, seeds=[0])
    data = scenario.data_for(users[0], config.pilot_fraction, config)
    stored = [v for k, v in data.memo.items() if k[0] == "evaluation"]
    assert len(stored) == 1
    whitened, native_accuracy = stored[0]
    assert not whitened.flags.writeable and 0.0 <= native_accuracy <= 1.0
