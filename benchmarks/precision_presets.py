"""``--precision single`` (the default) against ``--precision double`` on the sweep presets: every
ADMM run of each preset (the cells of ``semalign sweep --preset P`` of its ADMM strategies: fed
and multi-link in fig2 and snr, fed in fig3; every seed) run twice on the same latents, channel
draws and noise, once per precision; per preset the largest difference over cells, seeds and
users of each user's accuracy, and the largest relative difference of its test MSE (and of its
whitened MSE), against the paper's reporting precision (accuracy to 1e-3, MSE to 1e-4 relative).

The baselines (First-K, Top-K) do not read ``precision`` (``plan.FAMILY_FIELDS``): their runs
are the same in both and are left out. Each run's two precisions are paired
:func:`~semalign.engine.simulate.simulate_seed` calls in one of ``--workers`` spawned processes
(one BLAS thread each, each loading a preset's latents once: ``benchmarks/preset_runs.py``),
not the sweep's runner: no table is written, ``--json`` keeps every run's figures.

    OPENBLAS_NUM_THREADS=1 nice python benchmarks/precision_presets.py --latents cache/digits \\
        --presets fig2,fig3,snr --workers 2 --json precision.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from measure_env import load_average
from preset_runs import each_value, one_thread, preset_runs

PRECISIONS = ("double", "single")


def pair(spec: Any, config_json: str) -> dict:
    """One run in both precisions: per user (accuracy, mse, mse_whitened) of each, and the
    run's network MSE (the final broadcast's whitened pilot MSE, Fig. 3's) of each."""
    from semalign.experiments.table import read_seed

    blocks = each_value(spec, config_json, "precision", PRECISIONS)
    out: dict = {
        precision: {
            u.name: [u.accuracy, u.mse, u.mse_whitened] for u in block.users if u.dropped is None
        }
        for precision, block in blocks.items()
    }
    out["network_mse"] = {p: read_seed(block)["network_mse"] for p, block in blocks.items()}
    return out


def network_difference(result: dict) -> float:
    """The relative network-MSE difference of one run."""
    double, single = (result["network_mse"][p] for p in PRECISIONS)
    return abs(single - double) / abs(double)


def admm_strategies(preset: str) -> tuple[str, ...]:
    """The strategies of ``preset`` that read ``precision`` (the ADMM family)."""
    from semalign.common.strategies import strategy_family

    from semalign.experiments.grid import preset_fields

    return tuple(s for s in preset_fields(preset)["strategies"] if strategy_family(s) == "admm")


def differences(result: dict) -> tuple[float, float, float]:
    """(max |accuracy difference|, max relative MSE difference, max relative whitened-MSE
    difference) over the users of one run."""
    acc = mse = white = 0.0
    for user, (a_d, m_d, w_d) in result["double"].items():
        a_s, m_s, w_s = result["single"][user]
        acc = max(acc, abs(a_s - a_d))
        mse = max(mse, abs(m_s - m_d) / abs(m_d))
        white = max(white, abs(w_s - w_d) / abs(w_d))
    return acc, mse, white


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latents", required=True, help="latent cache folder (cache/digits)")
    parser.add_argument("--presets", default="fig2,fig3,snr")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", help="write every run's per-user figures here")
    args = parser.parse_args()
    from semalign.common.io import SpawnPool

    latents = Path(args.latents).resolve()
    print(f"load average {load_average():.1f} at start", flush=True)
    record: dict = {}
    rows = []
    with SpawnPool(args.workers, initializer=one_thread) as pool:
        for preset in args.presets.split(","):
            runs = preset_runs(preset, latents, {"strategies": admm_strategies(preset)})
            start = time.perf_counter()
            futures = [
                (run, pool.submit(pair, run.spec, run.config.model_dump_json()))
                for run in runs
            ]  # fmt: skip
            results = [(run, future.result()) for run, future in futures]
            worst = [max(d) for d in zip(*(differences(r) for _, r in results), strict=True)]
            network = max(network_difference(r) for _, r in results)
            users = sum(len(r["double"]) for _, r in results)
            rows.append((preset, len(results), users, *worst, time.perf_counter() - start))
            record[preset] = [
                {"run_key": run.key, "strategy": run.config.strategy, **result}
                for run, result in results
            ]
            print(
                f"{preset}: {len(results)} runs ({users} user results), max |d accuracy| "
                f"{worst[0]:.2e}, max rel. d MSE {worst[1]:.2e}, max rel. d whitened MSE "
                f"{worst[2]:.2e}, max rel. d network MSE {network:.2e}; {rows[-1][-1]:.0f} s; "
                f"load average {load_average():.1f}",
                flush=True,
            )
    print(
        "\n| preset | ADMM runs (cells x seeds) | user results | max abs. accuracy difference "
        "| max rel. MSE difference | max rel. whitened-MSE difference | meets 1e-3 / 1e-4 |"
    )
    print("|---|---|---|---|---|---|---|")
    for preset, count, users, acc, mse, white, _ in rows:
        meets = "yes" if acc <= 1e-3 and mse <= 1e-4 else "**no**"
        print(f"| {preset} | {count} | {users} | {acc:.1e} | {mse:.1e} | {white:.1e} | {meets} |")
    if args.json:
        Path(args.json).write_text(json.dumps(record))


if __name__ == "__main__":
    main()
