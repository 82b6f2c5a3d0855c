"""The in-process engine: the AP and all users in one process, exchanging serialized messages.

:func:`simulate_seed` and :func:`simulate` are what ``semalign simulate`` and the experiment
sweeps call; the same driver and state machines run over gRPC in the networked system.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from semalign.common.config import AlignmentConfig
from semalign.engine.loopback import LoopbackLink
from semalign.engine.scenario import Scenario, build_session
from semalign.server.results import aggregate, baseline_info, seed_block
from semalign.server.session import RoundRecord, SessionDriver


def simulate_seed(
    scenario: Scenario,
    config: AlignmentConfig,
    on_round: Callable[[RoundRecord], None] | None = None,
) -> dict[str, Any]:
    """Run one in-process session for ``config.seed``; returns the seed's results block."""
    start = time.perf_counter()
    ap, users = build_session(scenario, config)
    driver = SessionDriver(ap, [LoopbackLink(u) for u in users], on_round=on_round)
    test_ids = np.arange(len(scenario.ap_test), dtype=np.int64)
    result = driver.run(scenario.ap_test, test_ids)
    extra = {
        "seconds": time.perf_counter() - start,
        "ap_whitening_condition": ap.whitener.condition,
        **baseline_info(ap),
    }
    return seed_block(result, config.seed, extra=extra)


def simulate(
    scenario: Scenario,
    config: AlignmentConfig,
    seeds: list[int],
    on_round: Callable[[int, RoundRecord], None] | None = None,
    on_seed: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run every seed and aggregate (the results JSON)."""
    blocks = []
    for seed in seeds:
        cfg = config.model_copy(update={"seed": seed})
        callback = (lambda record, s=seed: on_round(s, record)) if on_round else None
        blocks.append(simulate_seed(scenario, cfg, callback))
        if on_seed:
            on_seed(blocks[-1])
    extra = {
        "latents": str(scenario.latents_dir),
        "ap": scenario.ap_encoder,
        "users": scenario.user_encoders,
    }
    return aggregate(config, blocks, extra)
