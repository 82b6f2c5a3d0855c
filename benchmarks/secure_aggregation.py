"""Secure vs plain aggregation (compact rounds): bytes and time per round, in-process.

Runs the real AP and user state machines over the loopback transport on synthetic latents
(L users, n pilots, AP dimension d, user dimensions m; K N_T = channel uses x N_T) with
``--aggregation plain`` and ``secure`` side by side, and prints per configuration:

* the handshake: bytes, and seconds including the key setup (secure only: two exchanges after
  the handshake, whose bytes are printed apart);
* per round: bytes down/up per user, median seconds per round (users and AP together);
* a round in which one user drops (secure: the survivors' shares and the unmasking);
* the ratios secure / plain, and the largest relative difference of the final F.

    python benchmarks/secure_aggregation.py                    # L = 3 and 10
    python benchmarks/secure_aggregation.py --users 5 --rounds 5 --dim 64
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from semalign.client.user import User, UserData
from semalign.common.classifier import LinearClassifier
from semalign.common.config import AlignmentConfig
from semalign.common.errors import LinkClosed
from semalign.server.access_point import AccessPoint
from semalign.server.session import SessionDriver

from semalign.engine.loopback import LoopbackLink


def _classifier(dim: int) -> LinearClassifier:
    zeros = np.zeros((2, dim))
    return LinearClassifier(np.zeros(dim), np.ones(dim), zeros, np.zeros(2), np.arange(2))


class _Vanishing(LoopbackLink):
    """A loopback link whose user stops answering once ``gone`` is set."""

    gone = False

    def send(self, data: bytes) -> None:
        if self.gone:
            raise LinkClosed("gone")
        super().send(data)

    def receive(self, timeout: float | None) -> bytes:
        if self.gone:
            raise LinkClosed("gone")
        return super().receive(timeout)


def build(config: AlignmentConfig, users: int, n: int, d: int, m: int):
    """The AP and ``users`` users on synthetic latents (users' latents: noisy maps of the AP's)."""
    rng = np.random.default_rng(0)
    ap_lat = rng.standard_normal((n, d))
    ap = AccessPoint(config=config, pilot_latents=ap_lat, pilot_ids=np.arange(n))
    out = []
    for i in range(users):
        lat = ap_lat @ rng.standard_normal((d, m)) + 0.05 * rng.standard_normal((n, m))
        data = UserData(np.arange(n), lat, lat[:10], np.zeros(10, dtype=int), _classifier(m))
        out.append(
            User(
                user_id=f"user{i + 1}",
                encoder="enc",
                data=data,
                antennas_rx=config.antennas_rx,
                antennas_tx=config.antennas_tx,
                snr_db=config.snr_db,
                channel_seed=(config.seed, i),
                round_protocols=("compact",),
                secure=config.aggregation == "secure",
            )
        )
    return ap, out


def measure(config: AlignmentConfig, users: int, n: int, d: int, m: int) -> dict:
    """Setup and per-round traffic and time; the last round loses one user."""
    ap, machines = build(config, users, n, d, m)
    links = [_Vanishing(u) for u in machines]
    driver = SessionDriver(ap, links)
    start = time.perf_counter()
    driver.handshake()
    setup_s = time.perf_counter() - start
    records = [driver.admm_round() for _ in range(config.iterations - 1)]
    links[-1].gone = True
    dropped = driver.admm_round()
    return {
        "handshake": driver.phases["handshake"],
        "setup": driver.phases.get("setup", {"bytes_down": 0, "bytes_up": 0}),
        "handshake_s": setup_s,
        "down": records[-1].bytes_down / users,
        "up": records[-1].bytes_up / users,
        "round_s": statistics.median(r.seconds for r in records),
        "dropped_s": dropped.seconds,
        "dropped_up": dropped.bytes_up,
        "f": ap.strategy.shared.f.copy(),
    }


def report(users: int, n: int, d: int, m: int, channel_uses: int, rounds: int) -> None:
    base = AlignmentConfig(protocol="compact", channel_uses=channel_uses, iterations=rounds, seed=1)
    plain = measure(base, users, n, d, m)
    secure = measure(base.model_copy(update={"aggregation": "secure"}), users, n, d, m)
    diff = np.linalg.norm(secure["f"] - plain["f"]) / np.linalg.norm(plain["f"])
    print(f"\nL={users} n={n} d={d} m={m} K N_T={channel_uses * base.antennas_tx} rounds={rounds}")
    print(f"  {'':28s}{'plain':>12s}{'secure':>12s}{'ratio':>8s}")

    def row(name: str, a: float, b: float, fmt: str = "{:12.0f}") -> None:
        ratio = b / a if a else float("nan")
        print(f"  {name:28s}{fmt.format(a)}{fmt.format(b)}{ratio:8.2f}")

    row(
        "handshake bytes (all users)",
        plain["handshake"]["bytes_up"] + plain["handshake"]["bytes_down"],
        secure["handshake"]["bytes_up"] + secure["handshake"]["bytes_down"],
    )
    print(
        f"  {'key setup bytes (all users)':28s}{0:12d}"
        f"{secure['setup']['bytes_down'] + secure['setup']['bytes_up']:12d}"
    )
    row("handshake (+ key setup) s", plain["handshake_s"], secure["handshake_s"], "{:12.3f}")
    row("round bytes down per user", plain["down"], secure["down"])
    row("round bytes up per user", plain["up"], secure["up"])
    row("round seconds (median)", plain["round_s"], secure["round_s"], "{:12.4f}")
    row("round with a drop, seconds", plain["dropped_s"], secure["dropped_s"], "{:12.4f}")
    row("round with a drop, bytes up", plain["dropped_up"], secure["dropped_up"])
    print(f"  final F, secure vs plain: relative difference {diff:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, nargs="+", default=[3, 10])
    parser.add_argument("--pilots", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=384, help="AP latent dimension d")
    parser.add_argument("--user-dim", type=int, default=384, help="users' latent dimension m")
    parser.add_argument("--channel-uses", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    for users in args.users:
        report(users, args.pilots, args.dim, args.user_dim, args.channel_uses, args.rounds)


if __name__ == "__main__":
    main()
