"""Results JSON: one block per seed plus mean and std over seeds (shared by every transport)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from semalign.common.config import AlignmentConfig
from semalign.server.access_point import AccessPoint
from semalign.server.session import SessionResult

ROUND_FIELDS = (
    "mse",
    "objective",
    "primal_residual",
    "dual_residual",
    "bytes_down",
    "bytes_up",
    "seconds",
)


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _std(values: list[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.std(finite)) if finite else float("nan")


def seed_block(
    result: SessionResult,
    seed: int,
    names: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One seed's results: users, means over users, rounds, traffic per phase, drops."""
    users = []
    for user_id in result.user_order:
        report = result.reports.get(user_id)
        users.append(
            {
                "name": user_id,
                "encoder": result.encoders.get(user_id, ""),
                "accuracy": report["accuracy"] if report else None,
                "native_accuracy": report["native_accuracy"] if report else None,
                "mse": report["mse"] if report else None,
                "mse_whitened": report["mse_whitened"] if report else None,
                "dropped": result.dropped.get(user_id),
            }
        )
    done = [u for u in users if u["accuracy"] is not None]
    block = {
        "seed": seed,
        "users": users,
        "mean_accuracy": _mean([u["accuracy"] for u in done]),
        "mean_native_accuracy": _mean([u["native_accuracy"] for u in done]),
        "mean_mse": _mean([u["mse"] for u in done]),
        "rounds": [r.as_dict() for r in result.rounds],
        "phases": result.phases,
        "dropped": result.dropped,
    }
    if extra:
        block.update(extra)
    return block


def aggregate(
    config: AlignmentConfig,
    blocks: list[dict[str, Any]],
    extra_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Combine per-seed blocks: top-level users/rounds are means over seeds, with std."""
    users = []
    for i, first in enumerate(blocks[0]["users"]):
        entry = {"name": first["name"], "encoder": first["encoder"]}
        for key in ("accuracy", "native_accuracy", "mse", "mse_whitened"):
            values = [b["users"][i][key] for b in blocks if i < len(b["users"])]
            entry[key], entry[f"{key}_std"] = _mean(values), _std(values)
        users.append(entry)
    rounds = []
    for t in range(min((len(b["rounds"]) for b in blocks), default=0)):
        row = {"round": t}
        for key in ROUND_FIELDS:
            row[key] = _mean([b["rounds"][t][key] for b in blocks])
        rounds.append(row)
    cfg = config.model_dump()
    cfg.pop("seed")
    cfg["seeds"] = [b["seed"] for b in blocks]
    cfg.update(extra_config or {})
    out = {"strategy": config.strategy, "config": cfg, "users": users, "rounds": rounds}
    for key in ("mean_accuracy", "mean_native_accuracy", "mean_mse"):
        values = [b[key] for b in blocks]
        out[key], out[key.replace("mean_", "std_")] = _mean(values), _std(values)
    out["seeds"] = blocks
    return out


def baseline_info(ap: AccessPoint) -> dict[str, Any]:
    """How a result was produced, for the First-K/Top-K baselines (honest accounting)."""
    cfg = ap.config
    if cfg.strategy not in ("first-k", "top-k"):
        return {}
    return {
        "baseline": {
            "fit": cfg.baseline_fit,
            "data_channel_uses": ap.data_channel_uses,
            "index_bits_per_sample": ap.index_cost.bits_per_sample,
            "index_channel_uses": ap.index_cost.channel_uses,
            "index_cost_charged": cfg.topk_index_cost == "channel-uses",
        }
    }
