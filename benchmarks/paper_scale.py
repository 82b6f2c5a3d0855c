"""Paper-scale ADMM iterations side by side: paper rounds, compact rounds, the reference code and
the arithmetic floor, on the same synthetic latents, in one process.

One iteration = every user's G-step and upload plus the AP's step (and, for ours, the
serialization of every message). For each K*N_T the modes run in turn, repetition after
repetition (interleaved), and the median is kept, so that a loaded machine slows all of them
alike; only the RATIOS printed at the end are meant to be compared between runs. Every mode
runs once untimed first (warm-up); then blocks of ``--reps`` repetitions are timed until every
mode's block medians agree within ``--spread`` (5 %), at most ``--blocks`` blocks, and a mode
that did not settle is flagged. The load average before and after each K*N_T is printed.

* ``paper``: the paper protocol (section III-B) in double precision (``--precision double``);
* ``paper-single``: the same in single precision, the default (complex64 O(n) products);
* ``compact``: the compact round protocol (X once at the handshake, then F down, P_l X^H up);
* ``reference``: the authors' code (``--reference PATH``, a checkout of
  SPAICOM/multi-agent-semantic-alignment; imported from there, needs torch and scipy), with the
  same latents and channel matrices;
* ``floor`` / ``floor-single``: only the BLAS products an iteration of the paper protocol
  cannot avoid (per user Y S^H, S S^H, (G H)^H Y; at the AP F X and all P_l X^H as one
  stacked product), on arrays of the same shapes and precisions, timed in the same loop.

    nice python benchmarks/paper_scale.py --reference PATH/TO/REFERENCE \
        --json paper_scale.json --figure paper-scale.png                   # the paper's sizes
    python benchmarks/paper_scale.py --pilots 4000 --reps 2                # a quick look
    python benchmarks/paper_scale.py --replot paper_scale.json --figure paper-scale.png

The JSON carries the run's provenance (our commit and whether the tree was dirty, the
reference's commit, the machine's CPU count, the load averages, the arguments); the figure's
title repeats it, so a figure cannot be mistaken for another run's.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from measure_env import load_average
from semalign.client.user import User, UserData
from semalign.common import admm
from semalign.common.channels import rayleigh_matrix
from semalign.common.classifier import LinearClassifier
from semalign.common.config import AlignmentConfig
from semalign.common.threads import blas_threads
from semalign.server.access_point import AccessPoint
from semalign.server.session import SessionDriver

from semalign.engine.loopback import LoopbackLink
from semalign.experiments.provenance import git_commit, git_dirty

N_T = N_R = 4
SNR_DB = 20.0


def dummy_classifier(dim: int) -> LinearClassifier:
    return LinearClassifier(
        mean=np.zeros(dim),
        scale=np.ones(dim),
        weight=np.zeros((2, dim)),
        bias=np.zeros(2),
        classes=np.arange(2),
    )


def synthetic_latents(
    users: int, n: int, ap_dim: int, dims: tuple[int, int], seed: int = 0
) -> tuple[np.ndarray, list[UserData]]:
    """AP latents (n, ap_dim) and users' latents: noisy linear maps of them, dims spread over
    ``dims`` (real, even), float32 as encoders give them."""
    rng = np.random.default_rng(seed)
    user_dims = np.linspace(dims[0], dims[1], users).astype(int) // 2 * 2
    ap = rng.standard_normal((n, ap_dim)).astype(np.float32)
    data = []
    for m in user_dims:
        lat = ap @ rng.standard_normal((ap_dim, m)).astype(np.float32)
        lat += 0.1 * rng.standard_normal((n, m)).astype(np.float32)
        data.append(
            UserData(np.arange(n), lat, lat[:10], np.zeros(10, np.int64), dummy_classifier(m))
        )
    return ap, data


def channel_seed(i: int) -> tuple[int, int]:
    return (0, i)


def our_session(config: AlignmentConfig, ap_lat: np.ndarray, data: list[UserData]) -> SessionDriver:
    """AP and users (the same data objects: Y whitened once) after the handshake."""
    ap = AccessPoint(config=config, pilot_latents=ap_lat, pilot_ids=np.arange(len(ap_lat)))
    protocols = ("compact",) if config.protocol == "compact" else ()
    users = [
        User(f"user{i + 1}", "synthetic", d, N_R, N_T, SNR_DB, channel_seed(i))
        for i, d in enumerate(data)
    ]
    for u in users:
        u.round_protocols = protocols
    driver = SessionDriver(ap, [LoopbackLink(u) for u in users])
    driver.handshake()
    driver.users = users  # for the floor's arrays
    return driver


def our_iteration(driver: SessionDriver) -> Callable[[], tuple[int, int]]:
    def run() -> tuple[int, int]:
        record = driver.admm_round()
        return record.bytes_down, record.bytes_up

    return run


class Reference:
    """The authors' BaseStation and Agents (shared F, channel-aware) on the same latents."""

    def __init__(self, path: str, k: int, ap_lat: np.ndarray, data: list[UserData]) -> None:
        import torch

        if path not in sys.path:
            sys.path.insert(0, path)
        from src.linear_models import Agent, BaseStation  # the reference's own modules

        torch.manual_seed(0)
        self.torch = torch
        self.bs = BaseStation(
            model="ap", dim=ap_lat.shape[1], antennas_transmitter=N_T, channel_usage=k, rho=1.0
        )
        self.agents = {}
        for i, d in enumerate(data):
            hbar = rayleigh_matrix(N_R, N_T, np.random.default_rng(channel_seed(i)))
            h = torch.from_numpy(hbar.astype(np.complex64))
            self.agents[i] = Agent(
                id=i,
                pilots=torch.from_numpy(d.pilot_latents),
                model_name="synthetic",
                antennas_receiver=N_R,
                channel_matrix=h,
                channel_usage=k,
                snr=SNR_DB,
            )
            self.bs.handshake_step(idx=i, pilots=torch.from_numpy(ap_lat), channel_matrix=h)

    def __call__(self) -> tuple[int, int]:
        down = up = 0
        sent = self.bs.group_cast()
        for idx, agent in self.agents.items():
            msg = agent.step(sent[idx], channel_awareness=self.bs.is_channel_aware(idx))
            down += sent[idx].numel() * sent[idx].element_size()
            up += sum(v.numel() * v.element_size() for k, v in msg.items() if k != "id")
            self.bs.received_from_agent(msg=msg)
        self.bs.step()
        return down, up


class Floor:
    """The unavoidable O(n) products of one paper iteration, as plain BLAS calls."""

    def __init__(self, driver: SessionDriver, single: bool) -> None:
        rng = np.random.default_rng(1)
        dtype = np.complex64 if single else np.complex128
        ap = driver.ap
        k_nt, c, n = ap.symbols, ap.cdim, ap.n
        k_nr = k_nt // N_T * N_R

        def crandn(*shape):
            return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)

        self.x = ap.x.astype(dtype)
        self.f = crandn(k_nt, c)
        self.users = []
        for u in driver.users:
            y = u.strategy.y_work  # the session's own Y (complex64 copy in single precision)
            m = y.shape[0]
            self.users.append((y, crandn(k_nr, n), crandn(k_nt, m)))
        self.p_conj = crandn(k_nt * len(self.users), n)  # every user's conj(P_l), stacked

    def __call__(self) -> tuple[int, int]:
        self.f @ self.x
        for y, s, gh_h in self.users:
            y @ s.conj().T
            admm.hermitian_gram(s.astype(np.complex128, copy=False))
            gh_h @ y
        self.x @ self.p_conj.T
        return 0, 0


def settled(
    modes: dict[str, Callable[[], tuple[int, int]]], reps: int, spread: float, blocks: int
) -> dict[str, dict]:
    """:func:`interleaved` blocks of ``reps`` warm repetitions until every mode's block medians
    agree within ``spread`` (max - min over their median), at most ``blocks`` blocks; the
    result is the median over all blocks' repetitions, with ``spread`` and ``settled``."""
    runs: list[dict[str, dict]] = []
    for _ in range(max(blocks, 1)):
        runs.append(interleaved(modes, reps, warm_up=not runs))
        widths = {name: _spread([r[name]["seconds"] for r in runs]) for name in modes}
        if len(runs) > 1 and max(widths.values()) <= spread:
            break
    out = {}
    for name in modes:
        walls = [t for r in runs for t in r[name]["all_seconds"]]
        cpus = [t for r in runs for t in r[name]["all_cpu_seconds"]]
        out[name] = {
            **runs[-1][name],
            "seconds": statistics.median(walls),
            "all_seconds": walls,
            "cpu_seconds": statistics.median(cpus),
            "block_medians": [r[name]["seconds"] for r in runs],
            "spread": widths[name],
            "settled": len(runs) > 1 and widths[name] <= spread,
        }
    return out


def _spread(values: list[float]) -> float:
    """(max - min) / median of block medians; 0 for one block."""
    return (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else 0.0


def interleaved(
    modes: dict[str, Callable[[], tuple[int, int]]], reps: int, warm_up: bool = True
) -> dict[str, dict]:
    """Median wall and CPU seconds per call (CPU: this process, all threads), modes taking
    turns; plus the bytes of the last call. With ``warm_up`` every mode first runs once
    untimed (caches, first touch, BLAS and torch thread pools): no first repetition is in a
    median (the reference's first is several times slower than its next)."""
    times: dict[str, list[float]] = {name: [] for name in modes}
    cpu: dict[str, list[float]] = {name: [] for name in modes}
    traffic = {}
    for name, fn in modes.items():
        if warm_up:
            traffic[name] = fn()
    for _ in range(reps):
        for name, fn in modes.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            traffic[name] = fn()
            times[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {
        name: {
            "seconds": statistics.median(ts),
            "all_seconds": ts,
            "cpu_seconds": statistics.median(cpu[name]),
            "all_cpu_seconds": cpu[name],
            "bytes_down": traffic[name][0],
            "bytes_up": traffic[name][1],
        }
        for name, ts in times.items()
    }


def agreement(drivers: dict[str, SessionDriver]) -> dict[str, float]:
    """Largest relative difference from the ``paper`` session after the same rounds: the AP's
    F and Z and every user's G_l (the sessions ran in lockstep)."""

    def rel(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    ref = drivers["paper"]
    out = {}
    for name, driver in drivers.items():
        if name == "paper":
            continue
        worst = max(
            rel(getattr(driver.ap.strategy.shared, v), getattr(ref.ap.strategy.shared, v))
            for v in ("f", "z")
        )
        for u, ru in zip(driver.users, ref.users, strict=True):
            worst = max(worst, rel(u.strategy.g, ru.strategy.g))
        out[name] = worst
    return out


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:8.1f}x" if a and b else "       -"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--pilots", type=int, default=42_500)
    parser.add_argument("--ap-dim", type=int, default=384, help="AP latent dim d (real)")
    parser.add_argument("--user-dims", default="384,1280", help="min,max user latent dim")
    parser.add_argument("--symbols", default="4,16,80", help="K*N_T values (N_T = N_R = 4)")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per block")
    parser.add_argument(
        "--spread",
        type=float,
        default=0.05,
        help="repeat blocks until every mode's block medians agree within this fraction",
    )
    parser.add_argument("--blocks", type=int, default=4, help="at most this many blocks")
    parser.add_argument("--reference", help="checkout of the reference repository")
    parser.add_argument("--no-single", action="store_true", help="skip paper-single")
    parser.add_argument("--json", help="write all measurements here")
    parser.add_argument("--figure", help="plot seconds per iteration per mode here (PNG)")
    parser.add_argument(
        "--replot", metavar="JSON", help="only plot a run saved with --json (needs --figure)"
    )
    parser.add_argument(
        "--threads", type=int, help="BLAS and torch threads for every mode (default: as loaded)"
    )
    args = parser.parse_args()
    if args.replot:
        if not args.figure:
            parser.error("--replot needs --figure")
        plot(json.loads(Path(args.replot).read_text()), Path(args.figure))
        return
    if args.threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
        if args.reference:
            import torch

            torch.set_num_threads(args.threads)
    lo, hi = (int(v) for v in args.user_dims.split(","))
    t0 = time.perf_counter()
    ap_lat, data = synthetic_latents(args.users, args.pilots, args.ap_dim, (lo, hi))
    print(
        f"L={args.users} users, n={args.pilots} pilots, AP d={args.ap_dim}, user dims "
        f"{[d.pilot_latents.shape[1] for d in data]}, BLAS threads {blas_threads()}",
        flush=True,
    )
    results = {}
    for symbols in (int(s) for s in args.symbols.split(",")):
        base = AlignmentConfig(
            strategy="fed",
            antennas_tx=N_T,
            antennas_rx=N_R,
            channel_uses=symbols // N_T,
            precision="double",
        )
        start = time.perf_counter()
        drivers = {"paper": our_session(base, ap_lat, data)}
        if not args.no_single:
            single = base.model_copy(update={"precision": "single"})
            drivers["paper-single"] = our_session(single, ap_lat, data)
        compact = base.model_copy(update={"protocol": "compact"})
        drivers["compact"] = our_session(compact, ap_lat, data)
        modes: dict[str, Callable[[], tuple[int, int]]] = {
            name: our_iteration(d) for name, d in drivers.items()
        }
        if args.reference:
            modes["reference"] = Reference(args.reference, symbols // N_T, ap_lat, data)
        modes["floor"] = Floor(drivers["paper"], single=False)
        if not args.no_single:
            modes["floor-single"] = Floor(drivers["paper-single"], single=True)
        handshake = drivers["compact"].phases["handshake"]["bytes_down"]
        setup = time.perf_counter() - start
        load = load_average()
        print(
            f"K*N_T={symbols}: setup {setup:.0f} s, timing blocks of {args.reps} warm reps "
            f"(load average {load:.2f})...",
            flush=True,
        )
        res = settled(modes, args.reps, args.spread, args.blocks)
        res["loadavg"] = {"start": load, "end": load_average()}
        res["compact"]["handshake_bytes_down"] = handshake
        res["agreement"] = agreement(drivers)
        results[symbols] = res
        print(
            "  iterates after the same rounds, largest relative difference from paper: "
            + ", ".join(f"{k} {v:.1e}" for k, v in res["agreement"].items()),
            flush=True,
        )
        unsettled = f" (NOT within {args.spread:.0%})"
        for name, r in res.items():
            if name in ("agreement", "loadavg"):
                continue
            print(
                f"  {name:13s} {r['seconds']:8.3f} s/iter {r['cpu_seconds']:8.3f} cpu-s   "
                f"{(r['bytes_down'] + r['bytes_up']) / 1e6:9.3f} MB/round   "
                f"block medians {[round(t, 3) for t in r['block_medians']]} spread "
                f"{r['spread']:.1%}{'' if r['settled'] else unsettled}",
                flush=True,
            )
        print(f"  load average {load:.2f} before, {res['loadavg']['end']:.2f} after", flush=True)
        del modes, drivers
        gc.collect()
    print_ratios(results)
    print(f"total {time.perf_counter() - t0:.0f} s")
    run = {"args": vars(args), "provenance": provenance(args.reference), "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(run, indent=1))
    if args.figure:
        plot(json.loads(json.dumps(run)), Path(args.figure))  # as read back from --json


def provenance(reference: str | None) -> dict:
    """Which code ran where: our commit (and dirty flag), the reference's commit, CPUs."""
    return {
        "commit": git_commit(),
        "dirty": git_dirty(),
        "reference_commit": git_commit(reference) if reference else None,
        "cpus": os.cpu_count(),
    }


MODE_ORDER = ("reference", "paper", "paper-single", "floor", "floor-single", "compact")


def plot(run: dict, path: Path) -> None:
    """Bars of median seconds per iteration, one group per K*N_T, log scale; the title names
    the sizes, the commits and the load averages of ``run`` (a --json document)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results, args, prov = run["results"], run["args"], run.get("provenance") or {}
    groups = list(results)
    modes = [m for m in MODE_ORDER if any(m in results[g] for g in groups)]
    width = 0.8 / len(modes)
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for i, mode in enumerate(modes):
        xs = [j + (i - (len(modes) - 1) / 2) * width for j in range(len(groups))]
        ys = [results[g][mode]["seconds"] if mode in results[g] else 0 for g in groups]
        ax.bar(xs, ys, width, label=mode)
    ax.set_yscale("log")
    ax.set_xticks(range(len(groups)), [f"K N_T = {g}" for g in groups])
    ax.set_ylabel("seconds per ADMM iteration (median)")
    ax.grid(axis="y", which="both", alpha=0.3)
    loads = [v for g in groups for v in results[g].get("loadavg", {}).values()]
    commit = (prov.get("commit") or "unknown")[:7] + ("+dirty" if prov.get("dirty") else "")
    ref = (prov.get("reference_commit") or "-")[:7]
    ax.set_title(
        f"L={args['users']} users, n={args['pilots']} pilots, AP d={args['ap_dim']}, user dims "
        f"{args['user_dims']}\nsemalign {commit}, reference {ref}, load average "
        + (f"{min(loads):.1f}-{max(loads):.1f}" if loads else "not recorded"),
        fontsize=9,
    )
    ax.legend(ncol=len(modes), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_ratios(results: dict[int, dict]) -> None:
    for key in ("seconds", "cpu_seconds"):
        print_ratio_table(results, key)
    for symbols, res in results.items():
        hs = res["compact"].get("handshake_bytes_down")
        if hs:
            print(f"K*N_T={symbols}: compact handshake (X, X X^H to all users) {hs / 1e6:.1f} MB")


def print_ratio_table(results: dict[int, dict], key: str) -> None:
    def sec(res, name):
        return res[name][key] if name in res else None

    def total_bytes(res, name):
        return res[name]["bytes_down"] + res[name]["bytes_up"] if name in res else None

    what = "wall" if key == "seconds" else "CPU (all threads of this process)"
    print(f"\nratios of {what} time, medians of interleaved repetitions (> 1: first is slower)")
    head = (
        f"{'K*N_T':>6} {'ref/paper':>9} {'ref/p-single':>12} {'paper/floor':>11} "
        f"{'p-single/floor-s':>16} {'ref/compact':>11} {'bytes paper/compact':>19}"
    )
    print(head)
    for symbols, res in results.items():
        print(
            f"{symbols:>6} {ratio(sec(res, 'reference'), sec(res, 'paper')):>9} "
            f"{ratio(sec(res, 'reference'), sec(res, 'paper-single')):>12} "
            f"{ratio(sec(res, 'paper'), sec(res, 'floor')):>11} "
            f"{ratio(sec(res, 'paper-single'), sec(res, 'floor-single')):>16} "
            f"{ratio(sec(res, 'reference'), sec(res, 'compact')):>11} "
            f"{ratio(total_bytes(res, 'paper'), total_bytes(res, 'compact')):>19}"
        )


if __name__ == "__main__":
    main()
