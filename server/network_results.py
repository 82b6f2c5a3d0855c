"""What a networked run adds to the simulator's results: provenance of the figures, the
``network`` summary and the users that were lost (dropped, refused, never joined)."""

from __future__ import annotations

from typing import Any

import numpy as np
from semalign.common.records import SeedResult


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


#: Which results figures come from what users say about themselves, which the AP measured.
#: The AP checks the users' figures for range only (accuracies in [0, 1], finite MSEs >= 0,
#: the number of test points): it cannot verify them.
MEASURED_BY = {
    "self_reported": [
        "users[].accuracy, native_accuracy, mse, mse_whitened (and their _std)",
        "mean_accuracy, mean_native_accuracy, mean_mse (and std_*)",
        "seeds[].users[].accuracy, native_accuracy, mse, mse_whitened",
        "seeds[].users[].self_reported (each user's evaluation report as it sent it)",
        "seeds[].mean_accuracy, mean_native_accuracy, mean_mse",
        "rounds[].mse, objective and seeds[].phases.final.mse, objective (users' loss terms)",
    ],
    "ap_measured": [
        "rounds[].primal_residual, dual_residual, bytes_down, bytes_up, seconds",
        "seeds[].phases bytes, seeds[].dropped, seeds[].wire, network",
    ],
}


def label_self_reported(results: dict[str, Any], reported: list[dict[str, dict]]) -> dict:
    """Add ``measured_by`` (which figures the users reported, which the AP measured) and, per
    seed and user, a ``self_reported`` block (the user's own evaluation report, or None without
    one). Existing keys keep their names and values."""
    results["measured_by"] = MEASURED_BY
    for block, reports in zip(results["seeds"], reported, strict=True):
        for user in block["users"]:
            report = reports.get(user["name"])
            user["self_reported"] = dict(report) if report is not None else None
    return results


def network_summary(blocks: list[SeedResult]) -> dict[str, Any]:
    """Latency p50/p95 over all rounds of all seeds, mean bytes per round, drops."""
    latencies = [r["latency_s"] for b in blocks for r in b.wire["rounds"]]
    down = [r["bytes_down_total"] for b in blocks for r in b.wire["rounds"]]
    up = [r["bytes_up_total"] for b in blocks for r in b.wire["rounds"]]
    return {
        "transport": "grpc",
        "rounds": len(latencies),
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "latency_mean_s": float(np.mean(latencies)) if latencies else None,
        "bytes_down_per_round": float(np.mean(down)) if down else None,
        "bytes_up_per_round": float(np.mean(up)) if up else None,
        "dropped": {
            str(b.seed): {
                uid: {"reason": reason, "at_s": b.wire["dropped_at_s"].get(uid)}
                for uid, reason in b.dropped.items()
            }
            for b in blocks
            if b.dropped
        },
        "not_joined": {str(b.seed): b.wire["not_joined"] for b in blocks},
    }


def lost_users(blocks: list[SeedResult]) -> list[dict[str, Any]]:
    """Every invited user that did not finish a seed, and why: dropped (with the AP's reason),
    refused at the handshake, or never joined (with the reason where it is known: its process
    or SuperNode was lost; with ``--users N`` ids that nobody named are placeholders). Empty
    when every invited user finished every seed."""
    lost = []
    for block in blocks:
        wire = block.wire or {}
        for uid, reason in block.dropped.items():
            lost.append({"seed": block.seed, "user": uid, "reason": f"dropped at {reason}"})
        for uid, reason in wire.get("refused", {}).items():
            lost.append({"seed": block.seed, "user": uid, "reason": f"refused: {reason}"})
        reasons = wire.get("not_joined_reasons", {})
        for uid in wire.get("not_joined", []):
            why = reasons.get(uid, "never joined")
            reason = why if why == "never joined" else f"never joined: {why}"
            lost.append({"seed": block.seed, "user": uid, "reason": reason})
    return lost
