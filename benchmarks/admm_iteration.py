"""Per-iteration ADMM time of the in-process protocol (issue: core performance).

Runs the real AP/user state machines over the loopback transport on synthetic latents:
L users, n pilots, AP d, user dims spread over [m_min, m_max], for several K*N_T values.
Prints, per K*N_T: median seconds per ADMM round (all users' G-steps + uploads + AP step),
the split user side / AP side, bytes per round, and how many times B = X X^H was factored.

    python benchmarks/admm_iteration.py                       # the issue's sizes
    python benchmarks/admm_iteration.py --pilots 5000 --rounds 3   # quick look
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from semalign.client.user import User, UserData
from semalign.common import admm
from semalign.common.classifier import LinearClassifier
from semalign.common.config import AlignmentConfig
from semalign.server.access_point import AccessPoint
from semalign.server.session import SessionDriver

from semalign.engine.loopback import LoopbackLink


def dummy_classifier(dim: int) -> LinearClassifier:
    return LinearClassifier(
        mean=np.zeros(dim),
        scale=np.ones(dim),
        weight=np.zeros((2, dim)),
        bias=np.zeros(2),
        classes=np.arange(2),
    )


def time_rounds(ap: AccessPoint, users: list[User], count: int):
    """Seconds per round (all), on the users' side and on the AP's, and the last round's traffic."""
    driver = SessionDriver(ap, [LoopbackLink(u) for u in users])
    driver.handshake()
    rounds, user_s, ap_s = [], [], []
    for _ in range(count):
        t0 = time.perf_counter()
        replies = driver._exchange("round", ap.round_messages())
        t1 = time.perf_counter()
        for uid, data in replies.items():
            ap.receive(uid, data)
        ap.step()
        t2 = time.perf_counter()
        traffic = driver.phases.pop("round")
        rounds.append(t2 - t0)
        user_s.append(t1 - t0)
        ap_s.append(t2 - t1)
    return rounds, user_s, ap_s, traffic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--pilots", type=int, default=42_500)
    parser.add_argument("--ap-dim", type=int, default=192)
    parser.add_argument("--user-dims", default="384,1280", help="min,max user latent dim")
    parser.add_argument("--symbols", default="4,16,80", help="K*N_T values (N_T=4)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    lo, hi = (int(v) for v in args.user_dims.split(","))
    dims = np.linspace(lo, hi, args.users).astype(int) // 2 * 2
    rng = np.random.default_rng(0)
    n = args.pilots
    ap_lat = rng.standard_normal((n, args.ap_dim)).astype(np.float32)
    users_data = []
    for m in dims:
        lat = ap_lat @ rng.standard_normal((args.ap_dim, m)).astype(
            np.float32
        ) + 0.1 * rng.standard_normal((n, m)).astype(np.float32)
        users_data.append(
            UserData(np.arange(n), lat, lat[:10], np.zeros(10, np.int64), dummy_classifier(m))
        )
    factorizations = {"count": 0}
    original = admm.factor_gram

    def counting_factor(x):
        factorizations["count"] += 1
        return original(x)

    admm.factor_gram = counting_factor  # count B factorizations in the AP (strategies call it)
    user_dims = [int(m) for m in dims]
    print(f"L={args.users} users, n={n} pilots, AP d={args.ap_dim}, user dims {user_dims}")
    print(
        f"{'K*N_T':>6} {'round s (p50)':>14} {'users s':>9} {'AP s':>7} "
        f"{'MB down':>8} {'MB up':>8} {'B factored':>10}"
    )
    for symbols in (int(s) for s in args.symbols.split(",")):
        factorizations["count"] = 0
        config = AlignmentConfig(
            strategy="fed",
            antennas_tx=4,
            antennas_rx=4,
            channel_uses=symbols // 4,
            iterations=args.rounds,
        )
        ap = AccessPoint(config=config, pilot_latents=ap_lat, pilot_ids=np.arange(n))
        users = [
            User(f"user{i + 1}", "synthetic", d, 4, 4, 20.0, (0, i))
            for i, d in enumerate(users_data)
        ]
        rounds, user_s, ap_s, traffic = time_rounds(ap, users, args.rounds)
        print(
            f"{symbols:>6} {statistics.median(rounds):>14.3f} {statistics.median(user_s):>9.3f}"
            f" {statistics.median(ap_s):>7.3f} {traffic['bytes_down'] / 1e6:>8.1f}"
            f" {traffic['bytes_up'] / 1e6:>8.1f} {factorizations['count']:>10}"
        )


if __name__ == "__main__":
    main()
