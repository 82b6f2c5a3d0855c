"""How many networked ``semalign user`` processes one machine runs against one ``semalign ap``
on loopback, and what stops more: memory per process, start-up time, the join timeout, file
descriptors.

For L = 10, 20, 40, 80, ... (``--users``) it starts one AP and L user processes, all on this
machine, and waits for the session to end:

    semalign ap --latents CACHE --ap ap --num-users L --listen 127.0.0.1:PORT --insecure
        --protocol compact --iterations T --channel-uses K --seeds 0 --join-timeout J ...
    semalign user --user-id user<i> --encoder user<i mod E> --ap 127.0.0.1:PORT --insecure ...

(one BLAS thread in every process, credentials as ``semalign run`` gives them). The latents are a
small synthetic cache (``users_scale.write_cache``: ``--encoders`` encoders, ``--pilots`` train
rows, AP d = ``--ap-dim``), so the session's arithmetic is negligible and what is measured is
the cost of a user *process*. While a level runs it samples every process once a second: RSS of
each user and of the AP, the sum, the AP's open file descriptors and threads, the AP's
established TCP connections (users connected) and the machine's available memory. Per level it
prints the time to start all processes, to connect them all, the AP's join time and session
time (``wire.join_s``, ``wire.session_s``), each user's peak RSS (median and max), the AP's
peak RSS and file descriptors, and the load average.

A level *breaks* when the AP fails, a user is missing or dropped, it runs past ``--timeout``, or
available memory falls under ``--reserve-gib`` (the level is stopped then, so that other jobs
on the machine keep their memory). Before a level it also refuses one whose projected memory
(the previous level's USS per user times L, its shared pages once, plus the AP) would leave
less than the reserve: that is reported as the limit, with the projection. It stops at the
first break. Every process it starts is stopped on every exit
(``deploy.serving.launcher.Processes``: SIGTERM, then SIGKILL, the whole process tree), Ctrl-C
and SIGTERM included; temporary files are removed.

    nice -n 10 .venv/bin/python benchmarks/users_networked.py --json users_networked.json
    .venv/bin/python benchmarks/users_networked.py --users 2,4 --iterations 2   # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil
from semalign.common.credentials import new_secret, user_token
from semalign.deploy.commands.user import user_argv
from semalign.deploy.serving.launcher import (
    Processes,
    child_env,
    free_port,
    semalign_command,
    sigterm_as_interrupt,
    wait_for_port,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from users_scale import write_cache  # noqa: E402 - the synthetic cache of users_scale.py

GIB = 2**30
USS_SAMPLE = 5  # user processes whose USS (unique set size) is sampled


@dataclass
class Level:
    """One level (L user processes): what it took and where it broke (``broke``: None if the
    session ended with every user). Seconds are wall clock; memory in MiB."""

    users: int
    ok: bool = False
    broke: str | None = None
    spawn_s: float = 0.0  # starting all L user processes (Popen)
    connected_s: float | None = None  # until the AP held L established connections
    join_s: float | None = None  # the AP's wire.join_s: lobby open -> all users joined
    session_s: float | None = None  # the AP's wire.session_s: handshake -> evaluation done
    wall_s: float = 0.0  # AP start -> AP exit (or the break)
    user_rss_mib: list[float] = field(default_factory=list)  # peak RSS of each user process
    user_uss_mib: list[float] = field(default_factory=list)  # peak USS of the first five users
    max_connected: int = 0
    ap_rss_mib: float = 0.0
    total_rss_gib: float = 0.0  # largest sum of RSS over all our processes at one sample
    min_available_gib: float = 0.0
    ap_fds: int = 0
    ap_threads: int = 0
    load_start: float = 0.0
    load_end: float = 0.0
    not_joined: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    mean_accuracy: float | None = None


def ap_command(cache: Path, users: int, port: int, args, out: Path, workdir: Path) -> list[str]:
    """``semalign ap`` for one session of ``users`` users on 127.0.0.1:``port``."""
    argv = [*semalign_command(), "ap", "--latents", str(cache), "--ap", "ap"]
    argv += ["--num-users", str(users), "--listen", f"127.0.0.1:{port}", "--insecure"]
    argv += ["--protocol", "compact", "--iterations", str(args.iterations), "--seeds", "0"]
    argv += ["--channel-uses", str(args.channel_uses), "--task-model", "logistic"]
    argv += ["--join-timeout", f"{args.join_timeout:g}", "--reply-timeout", "600"]
    argv += ["--max-streams-per-address", str(2 * users + 8)]  # all from 127.0.0.1
    return [*argv, "--out", str(out), "--workdir", str(workdir), "-q"]


def start_users(procs: Processes, users: int, port: int, cache: Path, args, secret: str) -> None:
    """L ``semalign user`` processes, user<i> with encoder user<(i-1) mod E>."""
    for ordinal in range(users):
        uid = f"user{ordinal + 1}"
        encoder = f"user{ordinal % args.encoders:02d}"
        argv = user_argv(
            uid,
            ordinal,
            encoder,
            ap=f"127.0.0.1:{port}",
            latents=str(cache),
            connect_timeout=args.join_timeout,
        )
        env = child_env(single_thread=True, SEMALIGN_TOKEN=user_token(secret, uid))
        procs.start(uid, argv, env)


class Sampler:
    """Once-a-second samples of the level's processes (peaks per process, sums, machine)."""

    def __init__(self, ap_pid: int, port: int) -> None:
        self.ap = psutil.Process(ap_pid)
        self.port = port
        self.peak_rss: dict[int, float] = {}
        self.peak_uss: dict[int, float] = {}
        self.total, self.fds, self.threads, self.connected = 0.0, 0, 0, 0
        self.available = psutil.virtual_memory().available

    def sample(self, user_pids: list[int]) -> None:
        """RSS of every live process, the AP's fds, threads and established connections."""
        total = 0.0
        for pid in [self.ap.pid, *user_pids]:
            with contextlib.suppress(psutil.Error):
                rss = psutil.Process(pid).memory_info().rss
                total += rss
                self.peak_rss[pid] = max(self.peak_rss.get(pid, 0.0), rss)
        self.total = max(self.total, total)
        for pid in user_pids[:USS_SAMPLE]:  # USS reads smaps: a few processes only
            with contextlib.suppress(psutil.Error):
                uss = psutil.Process(pid).memory_full_info().uss
                self.peak_uss[pid] = max(self.peak_uss.get(pid, 0.0), uss)
        self.available = min(self.available, psutil.virtual_memory().available)
        with contextlib.suppress(psutil.Error):
            self.fds = max(self.fds, self.ap.num_fds())
            self.threads = max(self.threads, self.ap.num_threads())
            conns = self.ap.net_connections(kind="tcp")
            self.connected = sum(
                1 for c in conns if c.status == "ESTABLISHED" and c.laddr.port == self.port
            )


def watch(level: Level, procs: Processes, sampler: Sampler, args, started: float) -> None:
    """Sample until the AP exits; set ``level.broke`` on a timeout or low memory."""
    ap = procs.children[0].proc
    user_pids = [c.proc.pid for c in procs.children[1:]]
    while ap.poll() is None:
        sampler.sample(user_pids)
        now = time.perf_counter() - started
        if sampler.connected > level.max_connected:
            level.max_connected = sampler.connected
            if sampler.connected >= level.users:
                level.connected_s = now
        if sampler.available < args.reserve_gib * GIB:
            level.broke = f"available memory fell under {args.reserve_gib:g} GiB: stopped"
            return
        if now > args.timeout:
            level.broke = f"the session did not end within {args.timeout:g} s"
            return
        time.sleep(1.0)


def read_results(level: Level, out: Path, code: int | None, log: Path) -> None:
    """The AP's results: join and session seconds, users missing or dropped, accuracy."""
    if code != 0 or not out.exists():
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
        level.broke = level.broke or f"semalign ap exited {code}: {tail}"
        return
    results = json.loads(out.read_text())
    seed = results["seeds"][0]
    wire = seed.get("wire", {})
    level.join_s, level.session_s = wire.get("join_s"), wire.get("session_s")
    level.not_joined = list(wire.get("not_joined") or [])
    level.dropped = sorted(seed.get("dropped") or {})
    level.mean_accuracy = results.get("mean_accuracy")
    if level.not_joined or level.dropped:
        level.broke = f"{len(level.not_joined)} not joined, {len(level.dropped)} dropped"


def run_level(users: int, cache: Path, args, tmp: Path) -> Level:
    """One AP and ``users`` user processes on loopback; all stopped on return."""
    level = Level(users, load_start=os.getloadavg()[0])
    port, secret = free_port(), new_secret()
    out, logs = tmp / f"ap-{users}.json", tmp / f"logs-{users}"
    started = time.perf_counter()
    with Processes(logs) as procs:
        ap_argv = ap_command(cache, users, port, args, out, tmp / f"ap-{users}")
        procs.start("ap", ap_argv, child_env(single_thread=True, SEMALIGN_SECRET=secret))
        wait_for_port("127.0.0.1", port, 300, procs)
        sampler = Sampler(procs.children[0].proc.pid, port)
        spawn = time.perf_counter()
        start_users(procs, users, port, cache, args, secret)
        level.spawn_s = time.perf_counter() - spawn
        watch(level, procs, sampler, args, started)
        level.wall_s = time.perf_counter() - started
        code = procs.children[0].proc.poll()
        user_pids = [c.proc.pid for c in procs.children[1:]]
    level.user_rss_mib = [sampler.peak_rss.get(pid, 0.0) / 2**20 for pid in user_pids]
    level.user_uss_mib = [v / 2**20 for v in sampler.peak_uss.values()]
    level.ap_rss_mib = sampler.peak_rss.get(sampler.ap.pid, 0.0) / 2**20
    level.total_rss_gib = sampler.total / GIB
    level.min_available_gib = sampler.available / GIB
    level.ap_fds, level.ap_threads = sampler.fds, sampler.threads
    if level.broke is None:
        read_results(level, out, code, logs / "ap.log")
    level.ok = level.broke is None
    level.load_end = os.getloadavg()[0]
    return level


def projected_gib(previous: Level, users: int) -> float:
    """Memory ``users`` processes would take: the previous level's memory per user times
    ``users``, plus its AP. Per user: its USS (memory no other process shares) plus its shared
    pages once (RSS - USS: libraries, mapped files), else its RSS (an upper bound)."""
    rss = statistics.median(previous.user_rss_mib) if previous.user_rss_mib else 0.0
    if not previous.user_uss_mib:
        return (rss * users + previous.ap_rss_mib) / 1024
    uss = statistics.median(previous.user_uss_mib)
    return (uss * users + (rss - uss) + previous.ap_rss_mib) / 1024


def print_level(lv: Level) -> None:
    rss = lv.user_rss_mib or [0.0]
    uss = statistics.median(lv.user_uss_mib) if lv.user_uss_mib else float("nan")
    fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
    print(
        f"| {lv.users} | {'yes' if lv.ok else 'no'} | {lv.spawn_s:.1f} | {fmt(lv.connected_s)} | "
        f"{fmt(lv.join_s)} | {fmt(lv.session_s)} | {lv.wall_s:.0f} | "
        f"{statistics.median(rss):.0f} / {max(rss):.0f} | {uss:.0f} | {lv.ap_rss_mib:.0f} | "
        f"{lv.total_rss_gib:.2f} | {lv.min_available_gib:.1f} | {lv.ap_fds} | {lv.ap_threads} | "
        f"{lv.load_start:.1f} / {lv.load_end:.1f} | {lv.broke or ''} |",
        flush=True,
    )


def measure(args) -> list[Level]:
    """Levels in order until one breaks (or would not fit in memory)."""
    levels: list[Level] = []
    with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="semalign-netusers-") as tmp:
        cache = Path(args.cache or Path(tmp) / "cache")
        dims = tuple(int(v) for v in args.user_dims.split(","))
        write_cache(cache, encoders=args.encoders, n=args.pilots, ap_dim=args.ap_dim, dims=dims)
        print(
            "| L | ok | spawn s | connected s | join s | session s | wall s | user RSS MiB "
            "median / max | user USS MiB | AP RSS MiB | sum RSS GiB | min avail GiB | AP fds | "
            "AP threads | load start / end | break |"
        )
        print("|" + "---|" * 16, flush=True)
        for users in (int(u) for u in args.users.split(",")):
            available = psutil.virtual_memory().available / GIB
            if levels and projected_gib(levels[-1], users) > available - args.reserve_gib:
                need = projected_gib(levels[-1], users)
                print(
                    f"L={users}: not started: projected {need:.1f} GiB (USS per user x L, "
                    f"shared pages, AP) but {available:.1f} GiB available, reserve "
                    f"{args.reserve_gib:g} GiB"
                )
                levels.append(Level(users, broke=f"projected {need:.1f} GiB > available"))
                break
            level = run_level(users, cache, args, Path(tmp))
            levels.append(level)
            print_level(level)
            if not level.ok:
                break
    return levels


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", default="10,20,40,80,160,320,640", help="values of L")
    parser.add_argument("--pilots", type=int, default=500, help="train rows n")
    parser.add_argument("--encoders", type=int, default=4, help="distinct user encoders")
    parser.add_argument("--ap-dim", type=int, default=32)
    parser.add_argument("--user-dims", default="32,64", help="min,max user latent dim")
    parser.add_argument("--iterations", type=int, default=3, help="ADMM rounds T")
    parser.add_argument("--channel-uses", type=int, default=2, help="K (N_T = N_R = 4)")
    parser.add_argument("--join-timeout", type=float, default=600, help="the AP's, seconds")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per level")
    parser.add_argument("--reserve-gib", type=float, default=4.0, help="memory left to others")
    parser.add_argument("--cache", help="synthetic latent cache (written if absent)")
    parser.add_argument("--json", help="write the levels here")
    args = parser.parse_args()
    try:
        levels = measure(args)
    except KeyboardInterrupt:
        print("users_networked: interrupted; processes stopped", file=sys.stderr)
        return 130
    print(f"# load average {os.getloadavg()[0]:.1f} at the end")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(lv) for lv in levels], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
