"""The in-process engine: the AP and all users in one process, exchanging serialized messages.

:func:`simulate_seed` and :func:`simulate` are what ``semalign simulate`` and the experiment
sweeps call; the same driver and state machines run over gRPC in the networked system.
:func:`user_snrs` resolves each user's SNR as its link gets it (the commands record and print
it: :meth:`~semalign.common.records.RunResult.with_user_snrs`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np

from semalign.common.config import AlignmentConfig
from semalign.common.records import RoundRecord, RunResult, SeedResult
from semalign.engine.loopback import LoopbackLink
from semalign.engine.scenario import Scenario, build_session, scenario_result
from semalign.server.results import seed_result
from semalign.server.session import SessionDriver

log = logging.getLogger(__name__)


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


def user_snrs(config: AlignmentConfig, names: Sequence[str]) -> dict[str, float]:
    """Each user's resolved SNR in dB, by name; ``names`` in session order (user ``names[i]``
    has ordinal i, as :func:`semalign.client.user.build_user` numbers them): ``snr_db`` for
    all, ``--user-snr-db``, or path loss from ``--distances``
    (:meth:`~semalign.common.channels.ChannelConfig.user_snrs`).

    Logs a warning when every user is below 0 dB (noise stronger than signal at every
    receiver): usually distances or a reference SNR given in the wrong unit.
    """
    snrs = config.channel.user_snrs(len(names), config.snr_db)
    if snrs and max(snrs) < 0:
        log.warning(
            "every user's SNR is below 0 dB (%s): the noise is stronger than the signal at "
            "every user; check --snr-db, --user-snr-db, --distances and --snr-ref-db",
            ", ".join(f"{name} {snr:.1f} dB" for name, snr in zip(names, snrs, strict=True)),
        )
    return dict(zip(names, snrs, strict=True))
