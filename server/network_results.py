"""What a networked run adds to the simulator's results: provenance of the figures, the
``network`` summary and the users that were lost (dropped, refused, never joined)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from semalign.common.network_records import DropTime, LostUser, MeasuredBy, NetworkSummary
from semalign.common.records import RunResult, SeedResult, UserReport


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


#: Which results figures come from what users say about themselves, which the AP measured.
#: The AP checks the users' figures for range only (accuracies in [0, 1], finite MSEs >= 0,
#: the number of test points): it cannot verify them.
MEASURED_BY = MeasuredBy(
    self_reported=[
        "users[].accuracy, native_accuracy, mse, mse_whitened (and their _std)",
        "mean_accuracy, mean_native_accuracy, mean_mse (and std_*)",
        "seeds[].users[].accuracy, native_accuracy, mse, mse_whitened",
        "seeds[].users[].self_reported (each user's evaluation report as it sent it)",
        "seeds[].mean_accuracy, mean_native_accuracy, mean_mse",
        "rounds[].mse, objective and seeds[].phases.final.mse, objective (users' loss terms)",
    ],
    ap_measured=[
        "rounds[].primal_residual, dual_residual, bytes_down, bytes_up, seconds",
        "seeds[].phases bytes, seeds[].dropped, seeds[].wire, network",
    ],
)


def label_self_reported(run: RunResult, reported: list[dict[str, UserReport]]) -> RunResult:
    """``run`` with ``measured_by`` (which figures the users reported, which the AP measured)
    and, per seed, each user's own evaluation report as it sent it (None without one: the
    JSON's ``seeds[].users[].self_reported``). The figures themselves are unchanged."""
    seeds = [
        replace(block, self_reported={u.name: reports.get(u.name) for u in block.users})
        for block, reports in zip(run.seeds, reported, strict=True)
    ]
    return replace(run, seeds=seeds, measured_by=MEASURED_BY)


def network_summary(blocks: list[SeedResult]) -> NetworkSummary:
    """Latency p50/p95 over all rounds of all seeds, mean bytes per round, drops."""
    wires = [(b, b.wire) for b in blocks if b.wire is not None]
    rounds = [r for _, wire in wires for r in wire.rounds]
    latencies = [r.latency_s for r in rounds]
    down = [sum(r.bytes_down.values()) for r in rounds]
    up = [sum(r.bytes_up.values()) for r in rounds]
    return NetworkSummary(
        transport="grpc",
        rounds=len(latencies),
        latency_p50_s=percentile(latencies, 50),
        latency_p95_s=percentile(latencies, 95),
        latency_mean_s=float(np.mean(latencies)) if latencies else None,
        bytes_down_per_round=float(np.mean(down)) if down else None,
        bytes_up_per_round=float(np.mean(up)) if up else None,
        dropped={
            str(b.seed): {
                uid: DropTime(reason, wire.dropped_at_s.get(uid))
                for uid, reason in b.dropped.items()
            }
            for b, wire in wires
            if b.dropped
        },
        not_joined={str(b.seed): list(wire.not_joined) for b, wire in wires},
    )


def lost_users(blocks: list[SeedResult]) -> list[LostUser]:
    """Every invited user that did not finish a seed, and why: dropped (with the AP's reason),
    refused at the handshake, or never joined (with the reason where it is known: its process
    or SuperNode was lost; with ``--users N`` ids that nobody named are placeholders). Empty
    when every invited user finished every seed."""
    lost = []
    for block in blocks:
        wire = block.wire
        for uid, reason in block.dropped.items():
            lost.append(LostUser(block.seed, uid, f"dropped at {reason}"))
        if wire is None:
            continue
        for uid, reason in (wire.refused or {}).items():
            lost.append(LostUser(block.seed, uid, f"refused: {reason}"))
        for uid in wire.not_joined:
            why = wire.not_joined_reasons.get(uid, "never joined")
            reason = why if why == "never joined" else f"never joined: {why}"
            lost.append(LostUser(block.seed, uid, reason))
    return lost
