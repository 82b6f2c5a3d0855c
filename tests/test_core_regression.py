"""Results of the core protocol layer are unchanged by refactoring.

``tests/data/core_reference.json`` holds the results JSON of ``simulate`` for every strategy
(and a session with a dropped user) on a synthetic cache, produced by the code *before* the
"one clean house" redesign (commit 3848999). Every number must still agree to 1e-6 relative
(the reference was written on another CPU: its BLAS kernels round differently, by ~1e-9, and a
behaviour change moves these figures by far more than 1e-6); wall-clock
timings (``seconds``) and the cache path are not compared. Regenerate only on purpose:
``python tests/test_core_regression.py --write``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
from semalign.common.config import AlignmentConfig
from semalign.common.errors import LinkError
from semalign.common.io import json_safe
from semalign.common.records import RunResult
from semalign.server.results import run_result, seed_result
from semalign.server.session import SessionDriver
from synthetic import make_latents

from semalign.engine.loopback import LoopbackLink
from semalign.engine.scenario import build_session, load_scenario
from semalign.engine.simulate import simulate

REFERENCE = Path(__file__).parent / "data" / "core_reference.json"
SEEDS = [27, 42]
#: relative tolerance: machine-independent (BLAS rounding differs between CPUs by ~1e-9)
RTOL = 1e-6
# The paper's task model is pinned: the default task model may change by design (research).
# So is the precision: double, the reference's arithmetic, whatever the default (single precision
# is compared with double in tests/test_speed.py).
BASE = {
    "antennas_tx": 2,
    "antennas_rx": 2,
    "channel_uses": 2,
    "iterations": 4,
    "task_model": "logistic",
    "precision": "double",
}
CASES = {
    "fed": {"strategy": "fed"},
    "multi-link": {"strategy": "multi-link"},
    "first-k": {"strategy": "first-k"},
    "top-k": {"strategy": "top-k"},
    "top-k-index-cost": {
        "strategy": "top-k",
        "channel_uses": 4,
        "antennas_tx": 1,
        "snr_db": 10.0,
        "topk_index_cost": "channel-uses",
    },
    "first-k-full-no-csi": {"strategy": "first-k", "baseline_fit": "full", "csi": False},
    "fed-no-csi-half-pilots": {"strategy": "fed", "csi": False, "pilot_fraction": 0.5},
    "multi-link-3-users": {"strategy": "multi-link", "snr_db": 5.0, "users": 3},
}
IGNORED = {"seconds", "latents"}


class _FailingLink(LoopbackLink):
    """Loses its user after ``after`` replies (the driver drops it mid-session)."""

    def __init__(self, user, after: int) -> None:
        super().__init__(user)
        self.left = after

    def receive(self, timeout):
        if self.left == 0:
            raise LinkError("connection reset")
        self.left -= 1
        return super().receive(timeout)


def _dropped_case(scenario, strategy: str, after: tuple[int | None, ...], base: dict) -> RunResult:
    """A session whose users vanish after ``after`` replies (``None``: never)."""
    config = AlignmentConfig(strategy=strategy, **base)
    blocks = []
    for seed in SEEDS:
        ap, users = build_session(scenario, config.model_copy(update={"seed": seed}))
        links = [
            LoopbackLink(u) if n is None else _FailingLink(u, n)
            for u, n in zip(users, after, strict=True)
        ]
        result = SessionDriver(ap, links).run(scenario.ap_test, np.arange(len(scenario.ap_test)))
        blocks.append(seed_result(result, seed))
    return run_result(config, blocks)


def run_cases(root: Path, base: dict | None = None) -> dict[str, dict]:
    """Every case's results JSON; ``base``: the settings every case starts from (:data:`BASE`)."""
    base = BASE if base is None else base
    root, ap, users = make_latents(root, user_dims=(12, 20, 10))
    out = {}
    for name, case in CASES.items():
        case = dict(case)
        encoders = users[: case.pop("users", 2)]
        scenario = load_scenario(root, ap, encoders)
        out[name] = simulate(scenario, AlignmentConfig(**{**base, **case}), SEEDS)
    scenario = load_scenario(root, ap, users[:2])
    out["fed-dropped-user"] = _dropped_case(scenario, "fed", (None, 3), base)  # in round 2
    out["top-k-dropped-user"] = _dropped_case(scenario, "top-k", (None, 1), base)  # at pilots
    out["first-k-all-dropped"] = _dropped_case(scenario, "first-k", (1, 1), base)
    return {name: json_safe(result.to_dict()) for name, result in out.items()}


#: AlignmentConfig fields added after the reference was written: a results ``config`` may hold
#: them (in addition to the reference's keys) with their paper values.
ADDED_CONFIG = {
    "task_model": "logistic",
    "target": "latents",
    "target_dim": 0,
    "pilot_selection": "first",
    "user_groups": 1,
    "equalizer": "linear",
}


def _compare(new, old, where: str) -> None:
    if isinstance(old, dict):
        assert isinstance(new, dict), where
        if where.endswith(".config"):
            added = {k: new[k] for k in new if k not in old and k in AlignmentConfig.model_fields}
            assert all(ADDED_CONFIG.get(k, v) == v for k, v in added.items()), f"{where}: {added}"
            new = {k: v for k, v in new.items() if k not in added}
        assert list(new) == list(old), f"{where}: keys {list(new)} != {list(old)}"
        for key in old:
            if key not in IGNORED:
                _compare(new[key], old[key], f"{where}.{key}")
    elif isinstance(old, list):
        assert isinstance(new, list) and len(new) == len(old), where
        for i, (a, b) in enumerate(zip(new, old, strict=True)):
            _compare(a, b, f"{where}[{i}]")
    elif isinstance(old, float) and not isinstance(new, bool):
        assert isinstance(new, (int, float)), f"{where}: {new!r} != {old!r}"
        assert math.isclose(new, old, rel_tol=RTOL, abs_tol=1e-9), f"{where}: {new!r} != {old!r}"
    else:
        assert new == old and type(new) is type(old), f"{where}: {new!r} != {old!r}"


def test_results_identical_to_the_reference(tmp_path):
    reference = json.loads(REFERENCE.read_text())
    results = json.loads(json.dumps(run_cases(tmp_path / "lat")))
    assert list(results) == list(reference)
    for name in reference:
        _compare(results[name], reference[name], name)


if __name__ == "__main__" and "--write" in sys.argv:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        REFERENCE.write_text(json.dumps(run_cases(Path(tmp) / "lat"), sort_keys=False) + "\n")
    print(f"wrote {REFERENCE} ({REFERENCE.stat().st_size} bytes)")
