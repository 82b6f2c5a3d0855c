"""The in-process engine: the AP and all users in one process, exchanging serialized messages.

:func:`simulate_seed` and :func:`simulate` are what ``semalign simulate`` and the experiment
sweeps call; the same driver and state machines run over gRPC in the networked system.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from semalign.common.config import AlignmentConfig
from semalign.common.records import RoundRecord, RunResult, SeedResult
from semalign.engine.loopback import LoopbackLink
from semalign.engine.scenario import Scenario, build_session, scenario_result
from semalign.server.results import seed_result
from semalign.server.session import SessionDriver


def simulate_seed(
    scenario: Scenario,
    config: AlignmentConfig,
    on_round: Callable[[RoundRecord], None] | None = None,
) -> SeedResult:
    """Run one in-process session for ``config.seed``; returns the seed's results.

    With ``config.user_groups`` > 1: a grouped run (:mod:`semalign.engine.grouping`: a probe,
    then one session per group; no per-round records, ``on_round`` is not called)."""
    if config.user_groups > 1:
        from semalign.engine.grouping import simulate_grouped_seed

        return simulate_grouped_seed(scenario, config)
    start = time.perf_counter()
    ap, users = build_session(scenario, config)
    driver = SessionDriver(ap, [LoopbackLink(u) for u in users], on_round=on_round)
    test_ids = np.arange(len(scenario.ap_test), dtype=np.int64)
    result = driver.run(scenario.ap_test, test_ids)
    return seed_result(
        result,
        config.seed,
        seconds=time.perf_counter() - start,
        whitening_condition=ap.whitener.condition,
        strategy_info=ap.result_info(),
    )


def simulate(
    scenario: Scenario,
    config: AlignmentConfig,
    seeds: list[int],
    on_round: Callable[[int, RoundRecord], None] | None = None,
    on_seed: Callable[[SeedResult], None] | None = None,
) -> RunResult:
    """Run every seed and aggregate (``.to_dict()`` is the results JSON)."""
    blocks = []
    for seed in seeds:
        cfg = config.model_copy(update={"seed": seed})
        callback = (lambda record, s=seed: on_round(s, record)) if on_round else None
        blocks.append(simulate_seed(scenario, cfg, callback))
        if on_seed:
            on_seed(blocks[-1])
    return scenario_result(scenario, config, blocks)
