"""``--wire-precision float16`` and ``bfloat16`` against ``native`` on the sweep presets: what
the 16-bit wire costs in accuracy and test MSE, and what it saves in bytes.

Every run of each preset (the cells of ``semalign sweep --preset P``, for the seeds and
strategies given) is run three times on the same latents, channel draws and noise, once per
wire precision (``--protocols paper,compact`` runs the ADMM cells in both round protocols).
Per preset, strategy, round protocol and precision it prints: the runs, the mean over runs of
the users' mean accuracy and test MSE, the largest |accuracy difference| and relative test-MSE
difference from native over runs and users, and the mean bytes per ADMM round and per session
(down + up, the seeds' ``traffic``) with their ratio to native. Runs go to ``--workers``
spawned processes, one BLAS thread each, each loading a preset's latents once. The load
average is printed at the start and after each preset; the command line is printed first.

    OPENBLAS_NUM_THREADS=1 nice python benchmarks/wire_precision.py --latents cache/digits \\
        --presets fig2 --seeds 27 --protocols paper,compact --workers 2 --json wire.json

``--sizes 1000,42500`` prints instead the bytes of one paper round per user (down, up) at each
precision for n pilots (K = 2, N_T = N_R = 4, d = 32, two users; synthetic latents): the
formula (4 or 2 bytes a real number: down 2 K N_R n, up 2 K N_T n + (K N_T)^2 reals, A_l
Hermitian-packed) and the protobuf framing beside it (docs/network.md, "Wire size").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from measure_env import load_average_line, print_load
from preset_runs import each_value, one_thread, preset_runs

PRECISIONS = ("native", "float16", "bfloat16")


def triple(spec: Any, config_json: str) -> dict:
    """One run at each wire precision: per precision, each user's [accuracy, mse] and the
    session's traffic (bytes per round down + up, bytes per session down + up)."""
    out = {}
    for precision, block in each_value(spec, config_json, "wire_precision", PRECISIONS).items():
        traffic = block.traffic
        per_round = None
        if traffic.bytes_down_per_round is not None:
            per_round = traffic.bytes_down_per_round + traffic.bytes_up_per_round
        out[precision] = {
            "users": {u.name: [u.accuracy, u.mse] for u in block.users if u.dropped is None},
            "round_bytes": per_round,
            "session_bytes": traffic.bytes_down + traffic.bytes_up,
        }
    return out


def round_bytes(n: int, precision: str) -> tuple[int, int]:
    """User 1's bytes (down, up) of the second paper round for ``n`` pilots at ``precision``
    (K = 2, N_T = N_R = 4, d = 32, two users of 24 and 28 reals; synthetic latents)."""
    import numpy as np
    from semalign.client.user import User, UserData
    from semalign.common.classifier import train_classifier
    from semalign.common.config import AlignmentConfig
    from semalign.server.access_point import AccessPoint
    from semalign.server.session import SessionDriver

    from semalign.engine.loopback import LoopbackLink

    config = AlignmentConfig(iterations=2, wire_precision=precision, task_model="logistic")
    rng = np.random.default_rng(0)
    ap_latents = rng.standard_normal((n + 50, 32))
    labels = rng.integers(0, 3, n + 50)
    ap = AccessPoint(config=config, pilot_latents=ap_latents[:n], pilot_ids=np.arange(n))
    users = []
    for i, dim in enumerate((24, 28)):
        latents = ap_latents @ rng.standard_normal((32, dim))
        data = UserData(
            pilot_ids=np.arange(n),
            pilot_latents=latents[:n],
            test_latents=latents[n:],
            test_labels=labels[n:],
            classifier=train_classifier(latents[:n], labels[:n]),
        )
        users.append(User(f"user{i + 1}", "enc", data, 4, 4, 20.0, (config.seed, i)))
    driver = SessionDriver(ap, [LoopbackLink(u) for u in users])
    driver.handshake()
    driver.admm_round()
    record = driver.admm_round()
    return record.bytes_down_per_user["user1"], record.bytes_up_per_user["user1"]


def print_sizes(ns: list[int]) -> None:
    """The bytes of one round per user at each precision, formula + framing."""
    print("| n | precision | down, formula + framing | up, formula + framing |")
    print("|---|---|---|---|")
    for n in ns:
        for precision in PRECISIONS:
            size = 4 if precision == "native" else 2
            down, up = round_bytes(n, precision)
            f_down, f_up = size * 2 * 8 * n, size * (2 * 8 * n + 64)
            print(
                f"| {n:,} | {precision} | {down:,} = {f_down:,} + {down - f_down} B "
                f"| {up:,} = {f_up:,} + {up - f_up} B |"
            )


def summarize(results: list[dict]) -> dict[str, dict]:
    """Per precision: mean accuracy and MSE (of the runs' user means), largest |accuracy
    difference| and relative MSE difference from native, mean bytes per round and session."""
    out = {}
    for precision in PRECISIONS:
        acc, mse, d_acc, d_mse, rounds, sessions = [], [], [0.0], [0.0], [], []
        for result in results:
            got, native = result[precision], result["native"]
            acc.append(statistics.fmean(a for a, _ in got["users"].values()))
            mse.append(statistics.fmean(m for _, m in got["users"].values()))
            for user, (a, m) in got["users"].items():
                a0, m0 = native["users"][user]
                d_acc.append(abs(a - a0))
                d_mse.append(abs(m - m0) / abs(m0))
            if got["round_bytes"] is not None:
                rounds.append(got["round_bytes"])
            sessions.append(got["session_bytes"])
        out[precision] = {
            "accuracy": statistics.fmean(acc),
            "mse": statistics.fmean(mse),
            "max_d_accuracy": max(d_acc),
            "max_rel_d_mse": max(d_mse),
            "round_bytes": statistics.fmean(rounds) if rounds else None,
            "session_bytes": statistics.fmean(sessions),
        }
    return out


def _bytes(value: float | None, native: float | None) -> str:
    if value is None or native is None:
        return "-"
    return f"{value:,.0f} ({value / native:.2f})"


def print_table(rows: list[tuple[str, str, str, int, dict]]) -> None:
    print(
        "\n| preset | strategy | rounds | precision | runs | accuracy | test MSE "
        "| max abs. accuracy diff. | max rel. MSE diff. | bytes per round (x native) "
        "| bytes per session (x native) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for preset, strategy, protocol, count, summary in rows:
        native = summary["native"]
        for precision in PRECISIONS:
            s = summary[precision]
            print(
                f"| {preset} | {strategy} | {protocol} | {precision} | {count} "
                f"| {s['accuracy']:.4f} | {s['mse']:.4g} | {s['max_d_accuracy']:.1e} "
                f"| {s['max_rel_d_mse']:.1e} | {_bytes(s['round_bytes'], native['round_bytes'])} "
                f"| {_bytes(s['session_bytes'], native['session_bytes'])} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latents", help="latent cache folder (cache/digits)")
    parser.add_argument("--presets", default="fig2", help="comma-separated sweep presets")
    parser.add_argument(
        "--seeds", default=None, help="comma-separated seeds (default: the preset's)"
    )
    parser.add_argument(
        "--strategies", default=None, help="comma-separated (default: the preset's)"
    )
    parser.add_argument("--protocols", default="paper", help="ADMM round protocols: paper,compact")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", help="write every run's figures here")
    parser.add_argument("--sizes", help="comma-separated n: print one round's bytes instead")
    args = parser.parse_args()
    if args.sizes:
        print_sizes([int(n) for n in args.sizes.split(",")])
        return
    if not args.latents:
        parser.error("--latents is required (or --sizes)")
    from semalign.common.io import SpawnPool
    from semalign.common.strategies import get_strategy

    print("$ " + " ".join(["python", *sys.argv]), flush=True)
    latents = Path(args.latents).resolve()
    overrides = {
        "seeds": tuple(int(s) for s in args.seeds.split(",")) if args.seeds else None,
        "strategies": tuple(args.strategies.split(",")) if args.strategies else None,
    }
    protocols = args.protocols.split(",")
    print_load("at start")
    record: dict = defaultdict(list)
    rows = []
    with SpawnPool(args.workers, initializer=one_thread) as pool:
        for preset in args.presets.split(","):
            start = time.perf_counter()
            jobs = []
            for run in preset_runs(preset, latents, overrides):
                has_rounds = get_strategy(run.config.strategy).has_rounds
                for protocol in protocols if has_rounds else ["-"]:
                    config = run.config
                    if protocol != "-":
                        config = config.model_copy(update={"protocol": protocol})
                    key = (run.config.strategy, protocol)
                    job = pool.submit(triple, run.spec, config.model_dump_json())
                    jobs.append((run, key, job))
            results: dict[tuple[str, str], list[dict]] = defaultdict(list)
            for run, key, future in jobs:
                result = future.result()
                results[key].append(result)
                record[preset].append(
                    {"run_key": run.key, "strategy": key[0], "protocol": key[1], **result}
                )
            for (strategy, protocol), found in results.items():
                rows.append((preset, strategy, protocol, len(found), summarize(found)))
            seconds = time.perf_counter() - start
            print(f"{preset}: {len(jobs)} runs x 3 precisions, {seconds:.0f} s", flush=True)
            print_load(f"after {preset}")
    print_table(rows)
    print(f"\n({load_average_line()} at the end)")
    if args.json:
        Path(args.json).write_text(json.dumps(record))


if __name__ == "__main__":
    main()
