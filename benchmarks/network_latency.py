# ruff: noqa: E402 - BLAS thread settings must precede the numpy import
"""Round latency and bytes per round: networked (gRPC, one process per user) vs in-process.

    .venv/bin/python benchmarks/network_latency.py         # L in {2,10,20}, n in {1000,42500}
    .venv/bin/python benchmarks/network_latency.py --users 10 --pilots 1000 --rounds 20

For each pilot count n a synthetic latent cache is written (AP d=192 like vit_tiny; users of
dims 192..384). For each user count L the AP's alignment service runs in this process and L
``semalign user --ap`` processes join it (one BLAS thread each, as ``semalign run`` starts them).
After one untimed networked warm-up session (every user process started, loaded its latents and
joined), sessions alternate: one in-process session (``simulate_seed``: the same AP and users
over loopback links), then one networked session, ``--reps`` times, so both see the same load.

Reported per (L, n): round latency p50/p95 in-process and networked (networked round 0 also
includes the users' whitening of their pilots, which they do on the HandshakeAccept, a message
without reply; in-process that work falls into the handshake), the target
(2 x in-process p50 + 50 ms), bytes per user per round measured at the gRPC boundary, the
DESIGN.md formula (complex64: down K N_R n, up K N_T (K N_T + n) numbers) and the difference
(protobuf framing of the messages).
"""

from __future__ import annotations

import os

# One BLAS thread in every process (this one, which runs the AP and the in-process sessions, and
# the user processes). On a shared 2-core machine under load, two-thread OpenBLAS made in-process
# rounds about 10x slower (L=2, n=1,000: 150-280 ms instead of 10-30 ms). Override from the
# environment to measure other settings.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from measure_env import load_average_line, print_load
from semalign.common.config import AlignmentConfig
from semalign.common.contract import SessionOffer
from semalign.common.credentials import new_secret, user_token
from semalign.common.latents import load_encoder_splits
from semalign.deploy.commands.user import user_argv
from semalign.deploy.serving.launcher import Processes, child_env
from semalign.server.access_point import build_access_point
from semalign.server.network import serve_session
from semalign.server.service import AlignmentService, start_server
from semalign.server.session import WaitPolicy

from semalign.engine.scenario import load_scenario, user_names
from semalign.engine.simulate import simulate_seed

USER_DIMS = (192, 384, 256, 320, 192, 384, 256, 320, 192, 384)


def write_latents(root: Path, n_train: int, n_test: int, users: int, seed: int = 0) -> list[str]:
    """Synthetic cache: users' latents are noisy linear maps of the AP's (10 classes)."""
    rng = np.random.default_rng(seed)
    ap_dim, classes = 192, 10
    centers = rng.standard_normal((classes, ap_dim)) * 2.0
    data = {}
    for split, n in (("train", n_train), ("val", n_test), ("test", n_test)):
        labels = rng.integers(0, classes, n).astype(np.int64)
        data[split] = (centers[labels] + rng.standard_normal((n, ap_dim)), labels)
    names = ["ap"] + [f"u{i}" for i in range(users)]
    for i, name in enumerate(names):
        dim = ap_dim if i == 0 else USER_DIMS[(i - 1) % len(USER_DIMS)]
        w = np.eye(ap_dim) if i == 0 else rng.standard_normal((ap_dim, dim)) / np.sqrt(ap_dim)
        (root / name).mkdir(parents=True, exist_ok=True)
        for split, (s, labels) in data.items():
            lat = s @ w + (0.05 * rng.standard_normal((len(s), dim)) if i else 0)
            np.savez(root / name / f"{split}.npz", latents=lat.astype(np.float32), labels=labels)
    return names[1:]


class CountingProxy:
    """A TCP relay in front of the alignment service counting the bytes on the wire (TCP
    payload: gRPC and HTTP/2 framing, headers, window updates and pings included)."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.up = self.down = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pipe, args=(a, b, up), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while data := src.recv(1 << 20):
                with self._lock:
                    if up:
                        self.up += len(data)
                    else:
                        self.down += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()


def tcp_check(root: Path, encoders: list[str], config: AlignmentConfig, workdir: Path):
    """One networked session through a counting proxy: TCP bytes vs gRPC payload bytes."""
    ids = user_names(encoders)
    ap_splits = load_encoder_splits(root, "ap")
    ap_test = ap_splits["test"].latents
    secret = new_secret()
    service = AlignmentService(secret)
    server = start_server(service, "127.0.0.1:0")
    proxy = CountingProxy(server.address)
    with Processes(workdir / "logs") as procs:
        for ordinal, (uid, enc) in enumerate(zip(ids, encoders, strict=True)):
            argv = user_argv(uid, ordinal, enc, ap=proxy.address, latents=str(root))
            token = user_token(secret, uid)
            procs.start(uid, argv, child_env(single_thread=True, SEMALIGN_TOKEN=token))
        cfg = config.model_copy(update={"seed": 0})
        ap = build_access_point(ap_splits["train"].latents, cfg, len(ids))
        offer = SessionOffer(ap.session_id, 0, 1, cfg.model_dump())
        _, wire = serve_session(
            service,
            ap,
            offer,
            ids,
            ap_test,
            np.arange(len(ap_test), dtype=np.int64),
            join_timeout=600,
            policy=WaitPolicy(reply_timeout=600),
        )
        time.sleep(0.5)  # let the streams close
    server.stop()
    proxy.close()
    grpc_down = sum(u.bytes_down for u in wire.users.values())
    grpc_up = sum(u.bytes_up for u in wire.users.values())
    messages = sum(u.messages_down + u.messages_up for u in wire.users.values())
    return {
        "grpc_payload_down": grpc_down,
        "grpc_payload_up": grpc_up,
        "tcp_down": proxy.down,
        "tcp_up": proxy.up,
        "messages": messages,
    }


def command_check(root: Path, users: int, rounds: int, reps: int, workdir: Path) -> dict:
    """`semalign run` itself, with Flower supervising the users and with plain processes,
    alternating: round latency over all rounds, startup (until all users joined) and total."""
    from semalign.deploy.serving.launcher import semalign_command

    out: dict[str, dict[str, list[float]]] = {}
    for rep in range(reps):
        for mode in ("--flower", "--no-flower"):
            target = workdir / f"{mode}-{rep}.json"
            argv = [*semalign_command(), "run", "--latents", str(root), "--ap-encoder", "ap"]
            argv += ["--num-users", str(users), "--iterations", str(rounds), "--seeds", str(rep)]
            argv += [mode, "--out", str(target), "--workdir", str(workdir / f"{mode}-{rep}"), "-q"]
            subprocess.run(argv, check=True, timeout=1800, stdin=subprocess.DEVNULL)
            res = json.loads(target.read_text())
            entry = out.setdefault(mode.strip("-"), {"rounds": [], "startup": [], "total": []})
            entry["rounds"] += [r["latency_s"] for r in res["seeds"][0]["wire"]["rounds"]]
            entry["startup"].append(res["network"]["deployment"]["startup_s"])
            entry["total"].append(res["network"]["deployment"]["total_s"])
    return out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def measure(root: Path, encoders: list[str], config: AlignmentConfig, reps: int, workdir: Path):
    ids = user_names(encoders)
    ap_splits = load_encoder_splits(root, "ap")
    ap_train, ap_test = ap_splits["train"].latents, ap_splits["test"].latents
    test_ids = np.arange(len(ap_test), dtype=np.int64)
    scenario = load_scenario(root, "ap", encoders)
    secret = new_secret()
    service = AlignmentService(secret, lobby_wait=3600)
    server = start_server(service, "127.0.0.1:0")
    inproc, networked, down, up, later = [], [], [], [], []
    startup = time.perf_counter()
    with Processes(workdir / "logs") as procs:
        for ordinal, (uid, enc) in enumerate(zip(ids, encoders, strict=True)):
            argv = user_argv(uid, ordinal, enc, ap=server.address, latents=str(root))
            token = user_token(secret, uid)
            procs.start(uid, argv, child_env(single_thread=True, SEMALIGN_TOKEN=token))
        # Warm-up: every user process has started, loaded its latents and joined once before
        # anything is timed (startup of ten processes on two cores would swamp the rounds).
        sessions = reps + 1
        for index in range(sessions):
            cfg = config.model_copy(update={"seed": index})
            if index:
                block = simulate_seed(scenario, cfg)
                inproc += [r.seconds for r in block.rounds]
            ap = build_access_point(ap_train, cfg, len(ids))
            offer = SessionOffer(ap.session_id, index, sessions, cfg.model_dump())
            result, wire = serve_session(
                service,
                ap,
                offer,
                ids,
                ap_test,
                test_ids,
                join_timeout=600,
                policy=WaitPolicy(reply_timeout=600),
                poll=lambda _ids: procs.check(),
            )
            assert not result.dropped, result.dropped
            if not index:
                joined_s = time.perf_counter() - startup
                continue
            networked += [w.latency_s for w in wire.rounds]
            later += [w.latency_s for w in wire.rounds[1:]]
            for w in wire.rounds:
                down += list(w.bytes_down.values())
                up += list(w.bytes_up.values())
            if os.environ.get("BENCH_DEBUG"):
                print("inproc", [round(r.seconds * 1e3) for r in block.rounds])
                print("net", [round(w.latency_s * 1e3) for w in wire.rounds], flush=True)
    server.stop()
    return inproc, networked, down, up, joined_s, later


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", default="2,10,20", help="user counts L")
    parser.add_argument("--pilots", default="1000,42500", help="pilot counts n")
    parser.add_argument("--rounds", type=int, default=10, help="ADMM rounds per session")
    parser.add_argument("--reps", type=int, default=2, help="sessions per transport")
    parser.add_argument("--test", type=int, default=200, help="test samples (evaluation)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument(
        "--no-tcp-check", action="store_true", help="skip the TCP byte count through a proxy"
    )
    parser.add_argument(
        "--command-users",
        type=int,
        default=10,
        help="users for the `semalign run` Flower vs direct check at the smallest n (0: skip)",
    )
    args = parser.parse_args()
    users = [int(x) for x in args.users.split(",")]
    pilots = [int(x) for x in args.pilots.split(",")]
    config = AlignmentConfig(iterations=args.rounds)
    k, nt, nr = config.channel_uses, config.antennas_tx, config.antennas_rx
    rows, tcp_checks, command_checks = [], [], []
    print(
        f"# {os.cpu_count()} CPUs, {load_average_line()} at start; K={k}, "
        f"N_T={nt}, N_R={nr}, {args.rounds} rounds x {args.reps} sessions per transport",
        flush=True,
    )
    header = (
        "| L | n | in-process p50 / p95 (ms) | networked p50 / p95 (p95 w/o round 0) (ms) | "
        "target p50 (ms) | "
        "down B/user/round (formula + framing) | up B/user/round (formula + framing) | "
        "first session (s) |"
    )
    print(header)
    print("|" + "---|" * 8, flush=True)
    with tempfile.TemporaryDirectory(prefix="semalign-bench-") as tmp:
        for n in pilots:
            root = Path(tmp) / f"n{n}"
            names = write_latents(root, n, args.test, max(users))
            for count in users:
                inproc, net, down, up, joined, later = measure(
                    root, names[:count], config, args.reps, Path(tmp) / f"w{n}-{count}"
                )
                # A_l Hermitian-packed: (K N_T)^2 reals of 4 bytes
                f_down, f_up = 8 * k * nr * n, 8 * k * nt * n + 4 * (k * nt) ** 2
                row = {
                    "users": count,
                    "pilots": n,
                    "inproc_p50_s": pct(inproc, 50),
                    "inproc_p95_s": pct(inproc, 95),
                    "net_p50_s": pct(net, 50),
                    "net_p95_s": pct(net, 95),
                    "net_p95_after_round0_s": pct(later, 95),
                    "target_p50_s": 2 * pct(inproc, 50) + 0.05,
                    "bytes_down_user_round": sorted(set(down)),
                    "bytes_up_user_round": sorted(set(up)),
                    "formula_down": f_down,
                    "formula_up": f_up,
                    "joined_s": joined,
                    "rounds": len(net),
                }
                rows.append(row)
                ms = lambda v: f"{v * 1e3:.0f}"  # noqa: E731
                d, u = max(down), max(up)
                print(
                    f"| {count} | {n:,} | {ms(row['inproc_p50_s'])} / {ms(row['inproc_p95_s'])} | "
                    f"{ms(row['net_p50_s'])} / {ms(row['net_p95_s'])} "
                    f"({ms(row['net_p95_after_round0_s'])}) | "
                    f"{ms(row['target_p50_s'])} "
                    f"({'met' if row['net_p50_s'] <= row['target_p50_s'] else 'MISSED'}) | "
                    f"{d:,} ({f_down:,} + {d - f_down}) | {u:,} ({f_up:,} + {u - f_up}) | "
                    f"{joined:.1f} |",
                    flush=True,
                )
            if args.command_users and n == min(pilots):
                cmd = command_check(
                    root, args.command_users, args.rounds, args.reps, Path(tmp) / f"cmd{n}"
                )
                rows.append({"pilots": n, "users": args.command_users, "command": cmd})
                command_checks.append((n, cmd))
            if not args.no_tcp_check:
                tcp = tcp_check(root, names[:2], config, Path(tmp) / f"tcp{n}")
                rows.append({"pilots": n, "users": 2, "tcp": tcp})
                tcp_checks.append((n, tcp))
    for n, cmd in command_checks:
        for mode, e in cmd.items():
            print(
                f"# `semalign run --{mode}`, L={args.command_users}, n={n:,}, {args.rounds} rounds "
                f"x {args.reps} runs: round p50 {pct(e['rounds'], 50) * 1e3:.0f} ms, p95 "
                f"{pct(e['rounds'], 95) * 1e3:.0f} ms; startup (until all users joined) "
                f"{np.median(e['startup']):.1f} s, whole command {np.median(e['total']):.1f} s "
                "(medians)"
            )
    for n, tcp in tcp_checks:
        print(
            f"# TCP bytes, one session, L=2, n={n:,} ({args.rounds} rounds + handshake, final, "
            f"evaluation; {tcp['messages']} messages): down {tcp['tcp_down']:,} on the wire vs "
            f"{tcp['grpc_payload_down']:,} gRPC payload "
            f"(+{tcp['tcp_down'] - tcp['grpc_payload_down']:,} B, "
            f"{100 * (tcp['tcp_down'] / tcp['grpc_payload_down'] - 1):.2f}%); up "
            f"{tcp['tcp_up']:,} vs {tcp['grpc_payload_up']:,} "
            f"(+{tcp['tcp_up'] - tcp['grpc_payload_up']:,} B, "
            f"{100 * (tcp['tcp_up'] / tcp['grpc_payload_up'] - 1):.2f}%)"
        )
    print_load("at end")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
