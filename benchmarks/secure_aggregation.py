"""Secure vs plain aggregation (compact rounds): bytes and time per round, in-process.

Runs the real AP and user state machines over the loopback transport on synthetic latents
(L users, n pilots, AP dimension d, user dimensions m; K N_T = channel uses x N_T) with
``--aggregation plain`` and ``secure`` side by side, and prints per configuration:

* the handshake: bytes, and seconds including the key setup (secure only: two exchanges after
  the handshake, whose bytes are printed apart);
* per round: bytes down/up per user, median seconds per round (users and AP together);
* what double masking adds to every secure round: the unmasking exchange after the uploads
  (the UnmaskRequest down, the users' shares of the self-mask keys up), its median seconds,
  and the AP's median step (rebuilding each upload's self-mask key, removing the masks);
* a round in which one user drops (secure: shares of its masking key too);
* the ratios secure / plain, and the largest relative difference of the final F.

The machine's load average is printed before and after.

    python benchmarks/secure_aggregation.py                    # L = 3 and 10
    python benchmarks/secure_aggregation.py --users 5 --rounds 5 --dim 64
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
from measure_env import print_load
from semalign.client.user import User, UserData
from semalign.common.classifier import LinearClassifier
from semalign.common.config import AlignmentConfig
from semalign.proto import semalign_pb2 as pb
from semalign.server.access_point import AccessPoint
from semalign.server.session import SessionDriver

from semalign.engine.loopback import DroppingLink, LoopbackLink

#: the messages of the unmasking exchange after each secure round's uploads
UNMASKING = {"down": ("unmask_request", pb.ApMessage), "up": ("unmask_shares", pb.UserMessage)}


def _classifier(dim: int) -> LinearClassifier:
    zeros = np.zeros((2, dim))
    return LinearClassifier(np.zeros(dim), np.ones(dim), zeros, np.zeros(2), np.arange(2))


class UnmaskingBytes:
    """A link tap (:data:`~semalign.engine.loopback.Tap`) that sums the bytes of the unmasking
    exchange, per direction."""

    def __init__(self) -> None:
        self.bytes = {"down": 0, "up": 0}

    def __call__(self, user_id: str, direction: str, data: bytes) -> None:
        kind, message = UNMASKING[direction]
        if message.FromString(data).WhichOneof("body") == kind:
            self.bytes[direction] += len(data)


class TimedDriver(SessionDriver):
    """The session driver, also timing each exchange besides the protocol's phases (phase
    ``setup``: the key setup; ``recovery``: a round's unmasking)."""

    def _extra_exchanges(self, phase: str) -> dict:
        start = time.perf_counter()
        out = super()._extra_exchanges(phase)
        self.extra_seconds.setdefault(phase, []).append(time.perf_counter() - start)
        return out


def _timed(step: Callable, seconds: list[float]) -> Callable:
    def timed():
        start = time.perf_counter()
        out = step()
        seconds.append(time.perf_counter() - start)
        return out

    return timed


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
    tap = UnmaskingBytes()
    links: list = [LoopbackLink(u, tap=tap) for u in machines]
    links[-1] = DroppingLink(links[-1], config.iterations - 1)
    driver = TimedDriver(ap, links)
    driver.extra_seconds, steps = {}, []
    ap.step = _timed(ap.step, steps)
    start = time.perf_counter()
    driver.handshake()
    setup_s = time.perf_counter() - start
    records = [driver.admm_round() for _ in range(config.iterations - 1)]
    unmasking = dict(tap.bytes)
    dropped = driver.admm_round()
    recovery = driver.extra_seconds.get("recovery", [0.0])[: len(records)]
    handshake = driver.phases["handshake"]
    setup = driver.phases.get("setup", {"bytes_down": 0, "bytes_up": 0})
    return {
        "handshake_bytes": handshake["bytes_down"] + handshake["bytes_up"],
        "setup_bytes": setup["bytes_down"] + setup["bytes_up"],
        "handshake_s": setup_s,
        "down": records[-1].bytes_down / users,
        "up": records[-1].bytes_up / users,
        "unmask_down": unmasking["down"] / len(records) / users,
        "unmask_up": unmasking["up"] / len(records) / users,
        "round_s": statistics.median(r.seconds for r in records),
        "unmask_s": statistics.median(recovery),
        "step_s": statistics.median(steps[: len(records)]),
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
    print(f"  {'':32s}{'plain':>12s}{'secure':>12s}{'ratio':>8s}")

    def row(name: str, key: str, fmt: str = "{:12.0f}") -> None:
        a, b = plain[key], secure[key]
        ratio = b / a if a else float("nan")
        print(f"  {name:32s}{fmt.format(a)}{fmt.format(b)}{ratio:8.2f}")

    row("handshake bytes (all users)", "handshake_bytes")
    row("key setup bytes (all users)", "setup_bytes")
    row("handshake (+ key setup) s", "handshake_s", "{:12.3f}")
    row("round bytes down per user", "down")
    row("round bytes up per user", "up")
    row("  of which unmasking, down", "unmask_down")
    row("  of which unmasking, up", "unmask_up")
    row("round seconds (median)", "round_s", "{:12.4f}")
    row("  of which unmasking exchange s", "unmask_s", "{:12.4f}")
    row("  AP step s (median)", "step_s", "{:12.4f}")
    row("round with a drop, seconds", "dropped_s", "{:12.4f}")
    row("round with a drop, bytes up", "dropped_up")
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
    print_load("at the start")
    for users in args.users:
        report(users, args.pilots, args.dim, args.user_dim, args.channel_uses, args.rounds)
    print_load("at the end")


if __name__ == "__main__":
    main()
