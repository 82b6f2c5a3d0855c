"""Evaluation time and memory with the per-encoder reference cache (an encoder's test latents
whitened, and its native accuracy, once for all its users) against every user computing its own.

The setting of ``benchmarks/users_scale.py`` (its synthetic cache: an AP and ``--encoders``
user encoders of dims 384..1280, ``--test-rows`` test points; L users cycle through the
encoders, compact protocol), run on the in-process engine, one fresh child process per
(mode, repeat), modes alternating:

* ``cached``: the code as it is (``UserData.evaluation_reference`` keeps what it computed);
* ``per-user``: the same code with that cache bypassed (each user whitens its test latents and
  scores its native accuracy, as before the cache).

Per child: the users' evaluation seconds (the sum of every ``User._on_evaluate``), the peak of
traced memory during the evaluation phase above what was held when it began (``tracemalloc``:
numpy's buffers included), what the phase left held (the cache), and the child's peak RSS.
Prints the medians, the ratios per-user/cached and the load average; the reports of both modes
must agree to 1e-12 (checked).

    nice python benchmarks/evaluation_cache.py --users 100
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure_env import load_average
from users_scale import write_cache  # noqa: E402 (the users_scale benchmark's cache)


def child(cache: str, users: int, mode: str, task_model: str, symbols: int, out: str) -> None:
    """One session of ``users`` users; writes its measurements to ``out``."""
    from semalign.client import user as user_module
    from semalign.common.config import AlignmentConfig
    from semalign.server.access_point import AccessPoint

    from semalign.engine.scenario import load_scenario
    from semalign.engine.simulate import simulate_seed

    if mode == "per-user":
        fresh = user_module.evaluation_reference
        user_module.UserData.evaluation_reference = lambda self, ids, whitener, rep, pilot_ids: (
            fresh(self, ids, whitener, rep)
        )
    seconds: list[float] = []
    evaluate = user_module.User._on_evaluate

    def timed(self, msg):
        start = time.perf_counter()
        reply = evaluate(self, msg)
        seconds.append(time.perf_counter() - start)
        return reply

    user_module.User._on_evaluate = timed
    held: list[int] = []
    requests = AccessPoint.evaluation_requests

    def phase_start(self, latents, sample_ids):
        out = requests(self, latents, sample_ids)
        held.append(tracemalloc.get_traced_memory()[0])
        tracemalloc.reset_peak()
        return out

    AccessPoint.evaluation_requests = phase_start
    encoders = [f"user{i % 10:02d}" for i in range(users)]
    scenario = load_scenario(cache, "ap", encoders)
    config = AlignmentConfig(
        protocol="compact",
        channel_uses=symbols // 4,
        iterations=2,
        seed=42,
        task_model=task_model,
    )
    tracemalloc.start()
    block = simulate_seed(scenario, config)
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    reports = {u.name: [u.accuracy, u.native_accuracy, u.mse, u.mse_whitened] for u in block.users}
    result = {
        "evaluation_seconds": sum(seconds),
        "evaluations": len(seconds),
        "phase_peak_mib": (peak - held[0]) / 2**20,
        "phase_left_mib": (current - held[0]) / 2**20,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10,
        "reports": reports,
    }
    Path(out).write_text(json.dumps(result))


def run_child(cache: Path, mode: str, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        cmd = [sys.executable, __file__, "--child", str(cache), str(args.users), mode]
        cmd += [args.task_model, str(args.symbols), str(out)]
        subprocess.run(cmd, check=True)
        return json.loads(out.read_text())


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        cache, users, mode, task_model, symbols, out = sys.argv[2:8]
        child(cache, int(users), mode, task_model, int(symbols), out)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=None, help="synthetic latent cache (written if absent)")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--pilots", type=int, default=2000, help="(evaluation does not use them)")
    parser.add_argument("--test-rows", type=int, default=1000)
    parser.add_argument("--symbols", type=int, default=16, help="K*N_T (N_T = N_R = 4)")
    parser.add_argument("--task-model", choices=["logistic", "mlp"], default="logistic")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    name = f"semalign-scale-{args.pilots}-t{args.test_rows}"
    cache = Path(args.cache or Path(tempfile.gettempdir()) / name)
    write_cache(
        cache, encoders=10, n=args.pilots, ap_dim=384, dims=(384, 1280), test=args.test_rows
    )
    print(
        f"L={args.users} users of 10 encoders (dims 384..1280), {args.test_rows} test rows, "
        f"{args.task_model} task model, compact, K*N_T={args.symbols}; "
        f"load average {load_average():.1f} at start",
        flush=True,
    )
    runs: dict[str, list[dict]] = {"per-user": [], "cached": []}
    for _ in range(args.repeats):
        for mode in runs:
            runs[mode].append(run_child(cache, mode, args))
    for a, b in zip(runs["per-user"], runs["cached"], strict=True):
        for user, values in a["reports"].items():
            diff = max(abs(x - y) for x, y in zip(values, b["reports"][user], strict=True))
            assert diff <= 1e-12, (user, values, b["reports"][user])
    keys = ("evaluation_seconds", "phase_peak_mib", "phase_left_mib", "peak_rss_mib")
    print(f"{'mode':>9} {'eval s':>8} {'phase peak MiB':>15} {'left MiB':>9} {'peak RSS MiB':>13}")
    med = {m: {k: statistics.median(r[k] for r in rs) for k in keys} for m, rs in runs.items()}
    for mode, values in med.items():
        print(
            f"{mode:>9} {values['evaluation_seconds']:>8.3f} {values['phase_peak_mib']:>15.1f} "
            f"{values['phase_left_mib']:>9.1f} {values['peak_rss_mib']:>13.0f}"
        )
    p, c = med["per-user"], med["cached"]
    print(
        f"per-user / cached (medians of {args.repeats}): evaluation time "
        f"{p['evaluation_seconds'] / c['evaluation_seconds']:.1f}x, phase peak "
        f"{p['phase_peak_mib'] / max(c['phase_peak_mib'], 1e-9):.2f}x; reports equal to 1e-12; "
        f"load average {load_average():.1f} at end"
    )


if __name__ == "__main__":
    main()
