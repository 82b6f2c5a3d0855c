"""Crash and come back: checkpoints, resume after the AP dies, rejoin, stragglers, lost users.

Driver-level tests run the AP and users in this process (the crash is an exception raised
right after a checkpoint was written, which is what kill -9 leaves behind); the networked ones
run the gRPC service with users in threads, and real `semalign ap` / `semalign user` processes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from semalign.common.config import AlignmentConfig
from semalign.common.errors import CheckpointError
from semalign.server.checkpoint import Checkpoint, capture, load, restore, run_key, save
from semalign.server.results import seed_result
from semalign.server.session import SessionDriver
from synthetic import make_latents

from semalign.engine.loopback import LoopbackLink
from semalign.engine.scenario import build_session, load_scenario

CONFIG = AlignmentConfig(antennas_tx=2, antennas_rx=2, channel_uses=2, iterations=5)
#: keys whose values are timings or wire counters (not compared)
UNCOMPARED = {"seconds", "wire", "network", "join_s", "session_s", "total_s"}


class Crash(Exception):
    """The AP process dies here (after its checkpoint is on disk)."""


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    root, ap, users = make_latents(
        tmp_path_factory.mktemp("lat"), user_dims=(12, 20, 14), n_train=240
    )
    return load_scenario(root, ap, users)


def assert_same_numbers(got, want, path="results"):
    """Every number equal to 1e-9 (relative), timings and wire counters aside."""
    if isinstance(want, dict):
        assert set(got) == set(want), path
        for key in want:
            if key not in UNCOMPARED:
                assert_same_numbers(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same_numbers(g, w, f"{path}[{i}]")
    elif isinstance(want, float) and not math.isnan(want):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), path
    elif isinstance(want, float):
        assert math.isnan(got), path
    else:
        assert got == want, path


def _session(scenario, config, **driver_options):
    ap, users = build_session(scenario, config)
    return ap, SessionDriver(ap, [LoopbackLink(u) for u in users], **driver_options)


def _evaluate(driver, scenario):
    return driver.run(scenario.ap_test, np.arange(len(scenario.ap_test), dtype=np.int64))


def _comparable(result, seed):
    return seed_result(result, seed).to_dict()


@pytest.mark.parametrize("strategy", ["fed", "multi-link"])
@pytest.mark.parametrize("crash_round", [1, 4])
def test_driver_resume_after_crash_equals_undisturbed(scenario, tmp_path, strategy, crash_round):
    config = CONFIG.model_copy(update={"strategy": strategy, "seed": 3})
    _, driver = _session(scenario, config)
    want = _comparable(_evaluate(driver, scenario), 3)

    path, key = tmp_path / "ap.checkpoint", run_key(config, [3], 3)
    ap, driver = _session(scenario, config)

    def checkpoint(driver):
        save(path, Checkpoint(key, {}, [3], current=capture(ap, driver, 0)))
        if ap.round == crash_round:
            raise Crash

    driver.checkpoint = checkpoint
    with pytest.raises(Crash):
        _evaluate(driver, scenario)

    state = load(path, key).current
    assert state.round == crash_round and len(state.records) == crash_round
    ap2, users2 = build_session(scenario, config)  # a new process: fresh state machines
    restored = restore(ap2, state)
    links = [LoopbackLink(u) for u in users2]
    driver2 = SessionDriver(ap2, links, resumed=True, restored=restored)
    got = _comparable(_evaluate(driver2, scenario), 3)
    assert_same_numbers(got, want)
    assert all(u["accuracy"] is not None for u in got["users"])


def test_checkpoint_refuses_damage_and_other_runs(scenario, tmp_path):
    config = CONFIG.model_copy(update={"seed": 3})
    ap, driver = _session(scenario, config)
    path, key = tmp_path / "ap.checkpoint", run_key(config, [3], 3)
    driver.checkpoint = lambda d: save(path, Checkpoint(key, {}, [3], current=capture(ap, d, 0)))
    _evaluate(driver, scenario)
    data = path.read_bytes()
    assert load(path, key).current.round == CONFIG.iterations
    cases = {
        "truncated": data[: len(data) // 2],
        "flipped": data[:-10] + bytes([data[-10] ^ 1]) + data[-9:],
        "version": data.replace(b"CHECKPOINT 1", b"CHECKPOINT 9", 1),
        "not ours": b"hello\n",
        "empty": b"",
    }
    for name, content in cases.items():
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match="checkpoint"):
            load(path, key)
        assert name
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="another run"):
        load(path, run_key(config, [3, 4], 3))
    other = build_session(scenario, config.model_copy(update={"pilot_fraction": 0.5}))[0]
    with pytest.raises(CheckpointError, match="pilot latents differ"):
        restore(other, load(path, key).current)
