"""Results of sessions: one :class:`SeedResult` per seed, one :class:`RunResult` over seeds.

Shared by every transport: the in-process engine and the networked AP build their results
here, from the driver's :class:`~semalign.server.session.SessionResult`. Means and stds over
users and seeds skip missing values (a dropped user, a failed seed): ``common.stats``.
"""

from __future__ import annotations

from typing import Any

from semalign.common.config import AlignmentConfig
from semalign.common.network_records import WireBlock
from semalign.common.records import (
    ROUND_FIELDS,
    USER_METRICS,
    RoundSummary,
    RunResult,
    SeedResult,
    SessionTraffic,
    UserResult,
    UserSummary,
)
from semalign.common.stats import nan_mean, nan_std
from semalign.server.session import SessionResult


def seed_result(
    result: SessionResult,
    seed: int,
    *,
    seconds: float | None = None,
    whitening_condition: float | None = None,
    strategy_info: dict[str, Any] | None = None,
    wire: WireBlock | None = None,
) -> SeedResult:
    """One seed's results: users (in handshake order), means over users, rounds, traffic."""
    users = []
    for user_id in result.user_order:
        report = result.reports.get(user_id)
        users.append(
            UserResult(
                name=user_id,
                encoder=result.encoders.get(user_id, ""),
                **{key: getattr(report, key) if report else None for key in USER_METRICS},
                dropped=result.dropped.get(user_id),
            )
        )
    done = [u for u in users if u.accuracy is not None]
    return SeedResult(
        seed=seed,
        users=users,
        mean_accuracy=nan_mean(u.accuracy for u in done),
        mean_native_accuracy=nan_mean(u.native_accuracy for u in done),
        mean_mse=nan_mean(u.mse for u in done),
        rounds=list(result.rounds),
        phases=dict(result.phases),
        dropped=dict(result.dropped),
        seconds=seconds,
        ap_whitening_condition=whitening_condition,
        strategy_info=dict(strategy_info or {}),
        wire=wire,
        traffic=SessionTraffic.of(result.rounds, result.phases),
    )


def run_result(
    config: AlignmentConfig,
    seeds: list[SeedResult],
    extra_config: dict[str, Any] | None = None,
) -> RunResult:
    """Combine seeds: per-user and per-round means over seeds (users of the first seed, rounds
    that every seed reached), and mean and std of the seeds' means."""
    users = []
    for i, first in enumerate(seeds[0].users):
        stats: dict[str, float] = {}
        for key in USER_METRICS:
            values = [getattr(s.users[i], key) for s in seeds if i < len(s.users)]
            stats[key], stats[f"{key}_std"] = nan_mean(values), nan_std(values)
        users.append(UserSummary(name=first.name, encoder=first.encoder, **stats))
    rounds = [
        RoundSummary(
            round=t,
            **{key: nan_mean(getattr(s.rounds[t], key) for s in seeds) for key in ROUND_FIELDS},
        )
        for t in range(min((len(s.rounds) for s in seeds), default=0))
    ]
    means: dict[str, float] = {}
    for key in ("accuracy", "native_accuracy", "mse"):
        values = [getattr(s, f"mean_{key}") for s in seeds]
        means[f"mean_{key}"], means[f"std_{key}"] = nan_mean(values), nan_std(values)
    return RunResult(
        config=config,
        users=users,
        rounds=rounds,
        **means,
        seeds=seeds,
        extra_config=dict(extra_config or {}),
    )
