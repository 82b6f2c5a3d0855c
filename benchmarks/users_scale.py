"""Round time, bytes and peak memory of ``semalign simulate`` against the number of users L, for
the paper and the compact round protocols.

Writes a synthetic latent cache (an AP encoder and ``--encoders`` user encoders, n pilots, user
dims spread over ``--user-dims``; users' latents are noisy linear maps of the AP's), then runs
the real command line, one process per (L, protocol):

    semalign simulate --latents CACHE --ap-encoder ap --num-users L --protocol P --seeds 42 ...

(through ``semalign.cli.main`` in a child process that also records each round's CPU time:
on a shared machine the wall time of a round depends on the other jobs, its CPU time less).

``--num-users L`` cycles through the cache's encoders, so several users share an encoder's latents
(held once per encoder, whitened once) and each has its own channel. Per run: the median
seconds of an ADMM round (from the results JSON), bytes per round down and up, handshake bytes,
the CPU seconds of a round (the process, all threads), the process's peak RSS (``ru_maxrss``
of the child) and its wall time. Prints a table and the
ratios paper/compact; ``--figure`` draws round time and bytes per round against L,
``--scale-figure`` the warm round time (median of the rounds after the first, which includes
the compact users' R = Y X^H) and the peak RSS against L, both log-log.

    nice python benchmarks/users_scale.py --figure docs/figures/users-scale.png
    # 1,000 users (docs/performance.md, Benchmark 3), in one line:
    OPENBLAS_NUM_THREADS=1 nice python benchmarks/users_scale.py --test-rows 200
        --users 10,30,100,300,1000 --protocols compact --iterations 5 --task-model logistic
        --scale-figure docs/figures/users_scale_1000.png
    python benchmarks/users_scale.py --pilots 2000 --users 2,4 --iterations 2   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def write_cache(
    root: Path, *, encoders: int, n: int, ap_dim: int, dims: tuple[int, int], test: int = 1000
) -> None:
    """``<root>/<encoder>/{train,val,test}.npz`` (n, 200 and ``test`` rows) and a classifier per
    encoder (skipped if the cache is complete)."""
    from semalign.common.classifier import train_classifier
    from semalign.common.latents import CLASSIFIER_FILE

    names = ["ap"] + [f"user{i:02d}" for i in range(encoders)]
    if all((root / name / CLASSIFIER_FILE).exists() for name in names):
        return
    rng = np.random.default_rng(0)
    classes, sizes = 10, {"train": n, "val": 200, "test": test}
    centers = rng.standard_normal((classes, ap_dim)).astype(np.float32)
    splits = {}
    for split, size in sizes.items():
        labels = rng.integers(0, classes, size).astype(np.int64)
        splits[split] = (centers[labels] + rng.standard_normal((size, ap_dim), np.float32), labels)
    user_dims = np.linspace(dims[0], dims[1], encoders).astype(int) // 2 * 2
    for name, dim in zip(names, [ap_dim, *user_dims], strict=True):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        w = np.eye(ap_dim, dtype=np.float32) if name == "ap" else None
        if w is None:
            w = rng.standard_normal((ap_dim, dim)).astype(np.float32) / np.sqrt(ap_dim)
        for split, (ap_lat, labels) in splits.items():
            lat = ap_lat @ w
            if name != "ap":
                lat += 0.1 * rng.standard_normal(lat.shape, np.float32)
            np.savez(folder / f"{split}.npz", latents=lat, labels=labels)
            if split == "train":  # a quick classifier: accuracy is not what is measured here
                train_classifier(lat[:2000], labels[:2000]).save(folder / CLASSIFIER_FILE)


def run_simulate(cache: Path, users: int, protocol: str, args: argparse.Namespace) -> dict:
    """One ``semalign simulate`` process; its round times, bytes, peak RSS and wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results.json"
        cpu_log = Path(tmp) / "cpu.json"
        cmd = [
            sys.executable,
            __file__,
            "--child",
            str(cpu_log),
            "simulate",
            "--latents",
            str(cache),
            "--ap-encoder",
            "ap",
            "--num-users",
            str(users),
            "--protocol",
            protocol,
            "--precision",
            args.precision,
            "--channel-uses",
            str(args.symbols // 4),
            "--iterations",
            str(args.iterations),
            "--seeds",
            "42",
            "--out",
            str(out),
            "-q",
        ]
        if args.task_model:  # else simulate's default (the MLP: torch in the process)
            cmd += ["--task-model", args.task_model]
        start = time.perf_counter()
        proc = subprocess.Popen(cmd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({status})")
        results = json.loads(out.read_text())
        cpu = json.loads(cpu_log.read_text())
    seed = results["seeds"][0]
    rounds = seed["rounds"]
    warm = rounds[1:] or rounds  # the first round pays the compact users' R = Y X^H
    return {
        "users": users,
        "protocol": protocol,
        "round_seconds": statistics.median(r["seconds"] for r in rounds),
        "warm_round_seconds": statistics.median(r["seconds"] for r in warm),
        "warm_round_cpu_seconds": statistics.median(cpu[1:] or cpu),
        "round_seconds_all": [r["seconds"] for r in rounds],
        "round_cpu_seconds": statistics.median(cpu),
        "round_cpu_seconds_all": cpu,
        "bytes_down": rounds[0]["bytes_down"],
        "bytes_up": rounds[0]["bytes_up"],
        "handshake_bytes_down": seed["phases"]["handshake"]["bytes_down"],
        "peak_rss_gib": usage.ru_maxrss / 2**20,  # ru_maxrss is in KiB on Linux
        "wall_seconds": wall,
        "load_average": os.getloadavg()[0],
        "mean_accuracy": results["mean_accuracy"],
        "command": " ".join(["semalign", *cmd[4:]]),
    }


def child(cpu_log: str, argv: list[str]) -> int:
    """``semalign`` with ``argv``, recording the CPU seconds of every ADMM round."""
    from semalign.server.session import SessionDriver

    from semalign.cli import main as semalign_main

    cpu: list[float] = []
    admm_round = SessionDriver.admm_round

    def timed(self):
        start = time.process_time()
        record = admm_round(self)
        cpu.append(time.process_time() - start)
        return record

    SessionDriver.admm_round = timed
    code = semalign_main(argv)
    Path(cpu_log).write_text(json.dumps(cpu))
    return code


def load_text(rows: list[dict]) -> str:
    """The load averages seen at the end of the runs: 'lo-hi'."""
    loads = [r["load_average"] for r in rows]
    return f"{min(loads):.1f}-{max(loads):.1f}"


def plot_vs_users(
    rows: list[dict], path: Path, title: str, panels: list[tuple[str, Callable[[dict], float]]]
) -> None:
    """One log-log panel per (y label, value of a row) against L, one line per protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (label, value) in zip(axes[0], panels, strict=True):
        for protocol, marker in (("paper", "o"), ("compact", "s")):
            sel = [r for r in rows if r["protocol"] == protocol]
            if sel:
                ax.plot([r["users"] for r in sel], [value(r) for r in sel], marker=marker,
                        label=protocol)  # fmt: skip
        ax.set_xlabel("users L")
        ax.set_ylabel(label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"figure written to {path}")


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Round time (median of all rounds) and bytes per round against L."""
    plot_vs_users(
        rows,
        path,
        title,
        [
            ("seconds per ADMM round", lambda r: r["round_seconds"]),
            ("MB per round (down + up)", lambda r: (r["bytes_down"] + r["bytes_up"]) / 1e6),
        ],
    )


def plot_scale(rows: list[dict], path: Path, title: str) -> None:
    """Warm round time (median, first round excluded) and the child's peak RSS against L."""
    plot_vs_users(
        rows,
        path,
        title,
        [
            ("seconds per ADMM round (median, warm)", lambda r: r["warm_round_seconds"]),
            ("peak RSS of the process (GiB)", lambda r: r["peak_rss_gib"]),
        ],
    )


HEADER = (
    f"{'L':>5} {'protocol':>8} {'s/round':>9} {'warm s':>8} {'cpu-s':>7} {'MB down':>9} "
    f"{'MB up':>9} {'handshake MB':>12} {'peak RSS GiB':>12} {'wall s':>7} {'load':>5}"
)


def row_line(r: dict) -> str:
    """One printed row of the table (HEADER's columns)."""
    return (
        f"{r['users']:>5} {r['protocol']:>8} {r['round_seconds']:>9.3f} "
        f"{r['warm_round_seconds']:>8.3f} {r['round_cpu_seconds']:>7.3f} "
        f"{r['bytes_down'] / 1e6:>9.3f} {r['bytes_up'] / 1e6:>9.3f} "
        f"{r['handshake_bytes_down'] / 1e6:>12.1f} {r['peak_rss_gib']:>12.2f} "
        f"{r['wall_seconds']:>7.0f} {r['load_average']:>5.1f}"
    )


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.exit(child(sys.argv[2], sys.argv[3:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=None, help="synthetic latent cache (written if absent)")
    parser.add_argument("--pilots", type=int, default=42_500)
    parser.add_argument(
        "--test-rows", type=int, default=1000, help="test points each user evaluates"
    )
    parser.add_argument("--encoders", type=int, default=10, help="distinct user encoders")
    parser.add_argument("--ap-dim", type=int, default=384)
    parser.add_argument("--user-dims", default="384,1280", help="min,max user latent dim")
    parser.add_argument("--users", default="10,20,50,100", help="values of L")
    parser.add_argument("--protocols", default="paper,compact")
    parser.add_argument("--precision", default="double", choices=["double", "single"])
    parser.add_argument("--symbols", type=int, default=16, help="K*N_T (N_T = N_R = 4)")
    parser.add_argument("--iterations", type=int, default=3, help="ADMM rounds per run")
    parser.add_argument(
        "--task-model", choices=["logistic", "mlp"], help="default: simulate's (mlp)"
    )
    parser.add_argument("--figure", help="write the figure here (PNG)")
    parser.add_argument(
        "--scale-figure", help="write warm round time and peak RSS vs L (log-log) here (PNG)"
    )
    parser.add_argument("--json", help="write all measurements here")
    args = parser.parse_args()
    lo, hi = (int(v) for v in args.user_dims.split(","))
    name = f"semalign-scale-{args.pilots}" + (
        f"-t{args.test_rows}" if args.test_rows != 1000 else ""
    )
    cache = Path(args.cache or Path(tempfile.gettempdir()) / name)
    start = time.perf_counter()
    write_cache(
        cache,
        encoders=args.encoders,
        n=args.pilots,
        ap_dim=args.ap_dim,
        dims=(lo, hi),
        test=args.test_rows,
    )
    print(f"cache {cache} ready ({time.perf_counter() - start:.0f} s)", flush=True)
    rows = []
    print(f"{HEADER}\n# load average {os.getloadavg()[0]:.1f} at start", flush=True)
    for users in (int(u) for u in args.users.split(",")):
        for protocol in args.protocols.split(","):
            rows.append(run_simulate(cache, users, protocol, args))
            print(row_line(rows[-1]), flush=True)
    by = {(r["users"], r["protocol"]): r for r in rows}
    print("\nratios paper/compact (same L)")
    for users in sorted({r["users"] for r in rows}):
        p, c = by.get((users, "paper")), by.get((users, "compact"))
        if p and c:
            bytes_ratio = (p["bytes_down"] + p["bytes_up"]) / (c["bytes_down"] + c["bytes_up"])
            print(
                f"  L={users:>3}: time {p['round_seconds'] / c['round_seconds']:8.1f}x   "
                f"cpu {p['round_cpu_seconds'] / c['round_cpu_seconds']:8.1f}x   "
                f"bytes {bytes_ratio:8.1f}x"
            )
    title = (
        f"semalign simulate, n={args.pilots} pilots, K*N_T={args.symbols}, {args.encoders} "
        f"encoders (dims {lo}..{hi}) cycled over L users, {args.precision} precision"
    )
    if args.figure:
        plot(rows, Path(args.figure), title)
    if args.scale_figure:
        plot_scale(rows, Path(args.scale_figure), f"{title}; load average {load_text(rows)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
