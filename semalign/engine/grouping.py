"""User grouping (``user_groups`` > 1): one shared F per group of compatible users.

1. *Probe*: a short federated session (``GROUP_PROBE_ROUNDS`` ADMM rounds, all users, the
   configured K) whose last uploads P_l = (G_l H_l)^H Y_l (K N_T, n) are what the protocol already
   sends. The AP measures the compatibility of users a and b as the linear CKA of their uploads
   over the pilots, ||P_a P_b^H||_F^2 / (||P_a P_a^H||_F ||P_b P_b^H||_F): how much of the
   pilot-space directions the two users ask for coincide. No new statistic leaves a user.
2. *Cluster*: average-linkage clustering on 1 - CKA into ``user_groups`` groups.
3. *Align*: one session per group, each with its own F, at equal total channel uses: group g
   gets K_g >= 1 channel uses, sum_g K_g = K, in proportion to its number of users;
   users keep their own channels (seeded by their position in the full user list).

The probe's pilot traffic is an overhead the single-F run does not pay (reported in the
results' ``strategy_info.grouping``).
"""

from __future__ import annotations

import time

import numpy as np

from semalign.client.user import build_user
from semalign.common.config import AlignmentConfig
from semalign.common.errors import UsageError
from semalign.common.records import SeedResult, SessionTraffic
from semalign.common.stats import nan_mean
from semalign.common.strategies import get_strategy, strategies_with
from semalign.engine.loopback import LoopbackLink
from semalign.engine.scenario import Scenario, build_session, user_names
from semalign.server.access_point import build_access_point
from semalign.server.results import seed_result
from semalign.server.session import SessionDriver

GROUP_PROBE_ROUNDS = 5


def check_groupable(strategy: str) -> None:
    """UsageError unless ``strategy`` shares one F among its users (what a group gets)."""
    if not get_strategy(strategy).shared_pre_equalizer:
        shared = ", ".join(strategies_with("shared_pre_equalizer"))
        raise UsageError(f"user_groups needs strategy {shared} (one shared F), not {strategy}")


def probe_uploads(scenario: Scenario, config: AlignmentConfig) -> list[np.ndarray]:
    """Each user's P_l (K N_T, n) after a short federated probe session (users in order):
    ``config``'s strategy, which must share one F (:func:`check_groupable`)."""
    check_groupable(config.strategy)
    probe = config.model_copy(update={"user_groups": 1})
    ap, users = build_session(scenario, probe)
    driver = SessionDriver(ap, [LoopbackLink(u) for u in users])
    driver.handshake()
    for _ in range(min(GROUP_PROBE_ROUNDS, config.iterations)):
        driver.admm_round()
    return [ap.users[u.user_id].upload[1] for u in users]


def cka_matrix(uploads: list[np.ndarray]) -> np.ndarray:
    """Linear CKA (L, L) between users' uploads P_l (K N_T, n) over the n pilots."""
    centered = [p - p.mean(axis=1, keepdims=True) for p in uploads]
    grams = [np.linalg.norm(p @ p.conj().T) for p in centered]
    size = len(uploads)
    out = np.eye(size)
    for a in range(size):
        for b in range(a + 1, size):
            cross = np.linalg.norm(centered[a] @ centered[b].conj().T) ** 2
            out[a, b] = out[b, a] = cross / max(grams[a] * grams[b], 1e-300)
    return out


def cluster(similarity: np.ndarray, groups: int) -> list[list[int]]:
    """Average-linkage groups of user positions from a similarity matrix (largest first)."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    if groups >= len(similarity):
        return [[i] for i in range(len(similarity))]
    distance = np.clip(1.0 - similarity, 0.0, None)
    np.fill_diagonal(distance, 0.0)
    tree = linkage(squareform(distance, checks=False), method="average")
    labels = fcluster(tree, t=groups, criterion="maxclust")
    found = [sorted(np.flatnonzero(labels == g).tolist()) for g in np.unique(labels)]
    return sorted(found, key=lambda g: (-len(g), g[0]))


def split_channel_uses(total: int, groups: list[list[int]]) -> list[int]:
    """K_g per group (sum = ``total``, each >= 1): proportional to the group's size, largest
    remainders first (ties: the earlier group)."""
    if total < len(groups):
        raise UsageError(f"K={total} channel uses cannot serve {len(groups)} groups")
    users = sum(len(g) for g in groups)
    spare = total - len(groups)  # one use each, the rest by size
    shares = [spare * len(g) / users for g in groups]
    uses = [1 + int(share) for share in shares]
    order = sorted(range(len(groups)), key=lambda g: (-(shares[g] - int(shares[g])), g))
    for g in order[: total - sum(uses)]:
        uses[g] += 1
    return uses


def _group_seed(scenario, config, members, channel_uses) -> SeedResult:
    """One group's session: its own F at ``channel_uses``; users keep their global channels."""
    cfg = config.model_copy(update={"channel_uses": channel_uses, "user_groups": 1})
    names = user_names(scenario.user_encoders)
    ap = build_access_point(scenario.ap_train, cfg, len(members))
    users = [
        build_user(
            names[i],
            scenario.user_encoders[i],
            scenario.data_for(scenario.user_encoders[i], cfg.pilot_fraction, cfg),
            cfg,
            i,
        )
        for i in members
    ]
    result = SessionDriver(ap, [LoopbackLink(u) for u in users]).run(
        scenario.ap_test, np.arange(len(scenario.ap_test), dtype=np.int64)
    )
    return seed_result(result, cfg.seed)


def simulate_grouped_seed(scenario: Scenario, config: AlignmentConfig) -> SeedResult:
    """Probe, cluster, one session per group; the groups' users merged into one seed result."""
    check_groupable(config.strategy)
    start = time.perf_counter()
    similarity = cka_matrix(probe_uploads(scenario, config))
    groups = cluster(similarity, config.user_groups)
    uses = split_channel_uses(config.channel_uses, groups)
    parts = [
        _group_seed(scenario, config, members, k) for members, k in zip(groups, uses, strict=True)
    ]
    order = {name: i for i, name in enumerate(user_names(scenario.user_encoders))}
    users = sorted((u for part in parts for u in part.users), key=lambda u: order[u.name])
    done = [u for u in users if u.accuracy is not None]
    return SeedResult(
        seed=config.seed,
        users=users,
        mean_accuracy=nan_mean(u.accuracy for u in done),
        mean_native_accuracy=nan_mean(u.native_accuracy for u in done),
        mean_mse=nan_mean(u.mse for u in done),
        rounds=[],
        phases={},
        dropped={k: v for part in parts for k, v in part.dropped.items()},
        seconds=time.perf_counter() - start,
        traffic=SessionTraffic.total([p.traffic for p in parts if p.traffic is not None]),
        strategy_info={
            "grouping": {
                "groups": [[scenario.user_encoders[i] for i in g] for g in groups],
                "channel_uses": uses,
                "probe_rounds": min(GROUP_PROBE_ROUNDS, config.iterations),
                "cka": similarity.round(4).tolist(),
            }
        },
    )
