"""Session wall-clock over emulated links: the AP and ten users on separate network namespaces,
paper vs compact protocol, against each session's lower bound.

    nice -n -5 .venv/bin/python benchmarks/links.py --pilots 4000 --json links.json

Needs root (network namespaces). It builds a testbed (``semalign_testing.testbed``): host ``ap``
and hosts ``u1``..``u10``, each its own namespace with one veth to a bridge. The link emulator
(``semalign_testing.link_emulator``, a relay inside ``ap`` on ap's address, in front of the AP
service on ap's loopback) is the AP's access link that all users share: per direction one
FIFO at the link rate (TCP payload bytes) followed by the one-way delay. Per (link, protocol)
it starts ``semalign ap --listen 127.0.0.1:50051`` inside ``ap`` and ``semalign user --ap
ap:50051`` inside each ``u<i>`` (one BLAS thread in every process), waits for the AP to write
its results and reads one session from them.

Per session: wall-clock (``wire.session_s``: from all users joined to the end, so process
start-up and latent loading are not in it), bytes (gRPC payloads, counted by the AP, and TCP
payload through the relay), the lower bound

    bound = (bytes down + bytes up) * 8 / rate + (T + 2) * RTT

(every byte crosses the one link, and each of the T rounds, the final broadcast and the
evaluation is a request whose reply needs the whole request: one round trip each; the
handshake's request is sent while users join, its accept travels ahead of round 1), the ratio
wall / bound, and the compact/paper speed-up. Every message is a fixed part plus matrices of
n columns, so the bytes of each step are affine in n: one in-process session (``semalign
simulate``, one round) at n/2 pilots fixes the line, which gives the bytes and bounds at
``--project`` pilots (the paper's 42,500).

Each session's time is also split in three, beside the part of the bound each should take:
the handshake with round 1 (the compact handshake's X travels until round 1's broadcast is
answered), rounds 2..T, and the final broadcast with the evaluation. ``--repeat N`` runs every
session N times (the run of median time is the one compared and plotted); ``--logs DIR`` keeps
the AP's and the users' logs, INFO records as JSON lines with their times (a user's progress
through X, the AP's rounds). On a shared machine run it with ``nice -n -5`` (the AP and the
users inherit it) and read the load average printed beside every session.

Everything it creates (namespaces, relay, AP and user processes, temporary files) is removed at
the end, on an error, on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from semalign.common.credentials import new_secret, user_token
from semalign.deploy.commands.user import user_argv
from semalign.deploy.serving.launcher import child_env, semalign_command, sigterm_as_interrupt

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the repo root: semalign_testing
from measure_env import load_average, load_average_line, print_load  # noqa: E402
from users_scale import write_cache  # noqa: E402 - the synthetic cache of users_scale.py

from semalign_testing.link_emulator import parse_delay, parse_rate  # noqa: E402
from semalign_testing.testbed import Testbed, TestbedError, remove_stale, require_testbed  # noqa: E402

PORT = 50051


def ap_argv(cache: Path, users: int, protocol: str, args, out: Path, workdir: Path) -> list[str]:
    """``semalign ap`` for one session on the AP's loopback (the relay faces the users)."""
    argv = [*semalign_command(), *log_options(args), "ap", "--latents", str(cache)]
    argv += ["--ap-encoder", "ap", "--num-users", str(users)]
    argv += ["--listen", f"127.0.0.1:{PORT}", "--insecure"]
    argv += ["--channel-uses", str(args.channel_uses), "--antennas-tx", "4", "--antennas-rx", "4"]
    argv += ["--iterations", str(args.iterations), "--protocol", protocol, "--seeds", "0"]
    argv += ["--join-timeout", "600", "--reply-timeout", "900"]
    # every stream reaches the AP from the relay (127.0.0.1): admit all users from it
    argv += ["--max-streams-per-address", str(2 * users + 8)]
    return [*argv, "--out", str(out), "--workdir", str(workdir), "-q"]


def log_options(args) -> list[str]:
    """``semalign``'s options before the command: with ``--logs``, INFO records as JSON lines
    with their times (the users' progress through X, the AP's rounds); none otherwise."""
    return ["-v", "--log-format", "json"] if args.logs else []


def simulate(cache: Path, protocol: str, args, out: Path) -> dict:
    """One in-process session (``semalign simulate``, one round) on ``cache``: its seed block
    (bytes per phase and user; the messages are those a networked session sends)."""
    return simulate_results(cache, protocol, args, out, iterations=1)["seeds"][0]


def simulate_results(cache: Path, protocol: str, args, out: Path, iterations: int) -> dict:
    """The results JSON of one in-process session of ``iterations`` ADMM rounds on ``cache``
    (the sizes and seed of the networked sessions)."""
    argv = [*semalign_command(), "simulate", "--latents", str(cache), "--ap-encoder", "ap"]
    argv += ["--num-users", str(args.users), "--protocol", protocol]
    argv += ["--iterations", str(iterations)]
    argv += ["--channel-uses", str(args.channel_uses), "--antennas-tx", "4", "--antennas-rx", "4"]
    argv += ["--seeds", "0", "--out", str(out), "-q"]
    env = child_env(single_thread=True)
    subprocess.run(argv, check=True, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def run_session(
    tb: Testbed, cache: Path, small: dict, link: dict, protocol: str, args, tmp: Path, run: int
) -> dict:
    """One (link, protocol) session: relay, AP, ten users; its wire figures."""
    name = f"{link['name']}-{protocol}-run{run}"
    secret, out = new_secret(), tmp / f"{name}.json"
    logs = Path(args.logs or tmp) / f"{name}-logs"
    logs.mkdir(parents=True)
    relay = tb.relay("ap", PORT, delay=link["delay"], rate=link["rate"], half_duplex=link["half"])
    env = child_env(single_thread=True, SEMALIGN_SECRET=secret)
    ap = tb.run(
        "ap",
        ap_argv(cache, args.users, protocol, args, out, tmp / f"{name}-ap"),
        env=env,
        stdout=(logs / "ap.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    encoders = [f"user{i:02d}" for i in range(args.users)]
    users = []
    for ordinal, encoder in enumerate(encoders):
        uid = f"user{ordinal + 1}"
        argv = user_argv(
            uid, ordinal, encoder, ap=f"ap:{PORT}", latents=str(cache), connect_timeout=600
        )
        head = len(semalign_command())
        argv = [*argv[:head], *log_options(args), *argv[head:]]
        users.append(
            tb.run(
                f"u{ordinal + 1}",
                argv,
                env=child_env(single_thread=True, SEMALIGN_TOKEN=user_token(secret, uid)),
                stdout=(logs / f"{uid}.log").open("w"),
                stderr=subprocess.STDOUT,
            )
        )
    start = time.perf_counter()
    while ap.poll() is None:
        if time.perf_counter() - start > args.timeout:
            raise TestbedError(f"{name}: the AP did not finish within {args.timeout:g} s")
        time.sleep(0.5)
    if ap.returncode != 0:
        raise TestbedError(f"{name}: semalign ap exited {ap.returncode}: see {logs}/ap.log")
    for user in users:
        user.wait(60)
    time.sleep(0.5)  # the relay's stats lag by up to 0.2 s
    tcp = relay.stop()
    return summarize(json.loads(out.read_text()), small[protocol], link, protocol, tcp, args)


def step_bytes(seed: dict, rounds: int) -> tuple[list[tuple[dict, dict]], int]:
    """Per protocol step (``rounds`` ADMM rounds, final broadcast, evaluation) the bytes per user
    down and up, and the handshake's bytes down. A seed with one round stands for ``rounds``
    equal rounds (every round's messages have the same size)."""
    records = seed["rounds"]
    steps = [
        (records[min(i, len(records) - 1)]["bytes_down_per_user"],
         records[min(i, len(records) - 1)]["bytes_up_per_user"])
        for i in range(rounds)
    ]  # fmt: skip
    for phase in ("final", "evaluation"):
        block = seed["phases"][phase]
        steps.append((block["bytes_down_per_user"], block["bytes_up_per_user"]))
    return steps, seed["phases"]["handshake"]["bytes_down"]


def project(at_n: tuple, at_small: tuple, n: int, small: int, target: int) -> tuple:
    """Bytes at ``target`` pilots from the same quantities at ``n`` and ``small`` pilots: every
    message is a fixed part plus matrices with n columns, so each count is affine in n."""

    def line(a: float, b: float) -> float:
        return a + (a - b) * (target - n) / (n - small)

    steps = [
        ({u: line(d[u], ds[u]) for u in d}, {u: line(v[u], vs[u]) for u in v})
        for (d, v), (ds, vs) in zip(at_n[0], at_small[0], strict=True)
    ]
    return steps, line(at_n[1], at_small[1])


def step_bounds(
    steps: list[tuple[dict, dict]], handshake: float, rate: float, rtt: float, serial: bool
) -> list[float]:
    """Seconds of the lower bound per step: the handshake's bytes (its accepts travel ahead of
    the first step), then each request/reply step.

    Full duplex: a step cannot end before all its requests crossed and then the smallest reply
    (D + u_min), nor before the smallest request crossed and then all replies (d_min + U), plus
    one round trip. ``serial``: every byte of both directions at the link rate, one direction
    at a time (a half-duplex medium's airtime), plus one round trip."""
    out = [handshake * 8 / rate]
    for down, up in steps:
        d, u = sum(down.values()), sum(up.values())
        crossing = d + u if serial else max(d + min(up.values()), min(down.values()) + u)
        out.append(crossing * 8 / rate + rtt)
    return out


def bounds(steps: list[tuple[dict, dict]], handshake: float, rate: float, rtt: float, half: bool):
    """(lower bound, serial bound) in seconds (:func:`step_bounds` summed); on a half-duplex
    link they are the same."""
    serial = sum(step_bounds(steps, handshake, rate, rtt, True))
    return (serial if half else sum(step_bounds(steps, handshake, rate, rtt, False))), serial


def phase_split(row: dict, per_step: list[float]) -> dict:
    """Seconds measured and their lower bound in three parts: the handshake with round 1 (X
    travels until round 1's broadcast is answered), rounds 2..T, and the final broadcast with
    the evaluation."""
    latencies, rounds = row["round_latencies_s"], len(row["round_latencies_s"])
    after = row["session_s"] - row["handshake_s"] - sum(latencies)
    return {
        "handshake_round1_s": row["handshake_s"] + latencies[0],
        "handshake_round1_bound_s": per_step[0] + per_step[1],
        "rounds_s": sum(latencies[1:]),
        "rounds_bound_s": sum(per_step[2 : rounds + 1]),
        "after_s": after,
        "after_bound_s": sum(per_step[rounds + 1 :]),
    }


def summarize(results: dict, small_seed: dict, link: dict, protocol: str, tcp: dict, args) -> dict:
    """Wall-clock, bytes, bounds of one session, and the bounds at ``--project`` pilots (from
    its bytes and those of ``small_seed``, a one-round session at half the pilots)."""
    seed = results["seeds"][0]
    wire = seed["wire"]
    if seed.get("dropped") or len(wire["users"]) != args.users:
        raise TestbedError(
            f"users dropped or missing: {seed.get('dropped')}, {list(wire['users'])}"
        )
    down = sum(u["bytes_down"] for u in wire["users"].values())
    up = sum(u["bytes_up"] for u in wire["users"].values())
    rate, rtt = parse_rate(link["rate"]), 2 * parse_delay(link["delay"])
    at_n = step_bytes(seed, args.iterations)
    strict, serial = bounds(*at_n, rate, rtt, link["half"])
    small = (step_bytes(small_seed, args.iterations), args.pilots // 2)
    steps, handshake = project(at_n, small[0], args.pilots, small[1], args.project)
    projected = handshake + sum(sum(d.values()) + sum(u.values()) for d, u in steps)
    p_strict, p_serial = bounds(steps, handshake, rate, rtt, link["half"])
    row = {
        "link": link["name"],
        "rate": link["rate"],
        "delay": link["delay"],
        "duplex": "half" if link["half"] else "full",
        "protocol": protocol,
        "pilots": args.pilots,
        "users": args.users,
        "iterations": args.iterations,
        "session_s": wire["session_s"],
        "join_s": wire["join_s"],
        "round_p50_s": wire["latency_p50_s"],
        "round_latencies_s": [r["latency_s"] for r in wire["rounds"]],
        "handshake_s": wire.get("handshake_s"),
        "round_mse": [r["mse"] for r in seed["rounds"]],
        "bytes_down": down,
        "bytes_up": up,
        "tcp_bytes_down": tcp["bytes_down"],
        "tcp_bytes_up": tcp["bytes_up"],
        "rtts_s": len(at_n[0]) * rtt,
        "bound_s": strict,
        "serial_bound_s": serial,
        "ratio": wire["session_s"] / strict,
        "serial_ratio": wire["session_s"] / serial,
        "projected_pilots": args.project,
        "projected_bytes": projected,
        "projected_bound_s": p_strict,
        "projected_serial_bound_s": p_serial,
        "mean_accuracy": results.get("mean_accuracy"),
    }
    return {**row, **phase_split(row, step_bounds(*at_n, rate, rtt, link["half"]))}


def budget_accuracies(cache: Path, protocol: str, args, tmp: Path) -> dict[int, float]:
    """Mean test accuracy of a session of T rounds for each T of ``--budgets``: one in-process
    session per T (results carry the accuracy of the last round only; in-process and networked
    sessions run the same iterates, so the networked one reaches the same accuracy)."""
    return {
        budget: simulate_results(cache, protocol, args, tmp / f"budget-{protocol}-{budget}.json",
                                 budget)["mean_accuracy"]
        for budget in budgets(args)
    }  # fmt: skip


def budgets(args) -> list[int]:
    """The round budgets T of the time-to-accuracy curve (``--budgets``, at most T)."""
    return sorted({min(int(b), args.iterations) for b in args.budgets.split(",")})


def session_seconds(row: dict, budget: int) -> float:
    """Seconds a ``budget``-round session takes over the row's link, from all users joined to
    the end of its evaluation: the handshake, the networked session's first ``budget`` rounds,
    then what followed its last round (final broadcast and evaluation, measured once)."""
    latencies = row["round_latencies_s"]
    after = row["session_s"] - row["handshake_s"] - sum(latencies)
    return row["handshake_s"] + sum(latencies[:budget]) + after


def report_time_to_accuracy(rows: list[dict]) -> None:
    """Per (link, protocol): the accuracy of each round budget and when it is reached."""
    print("\ntime to accuracy (accuracy of a T-round session; seconds over the link)")
    for r in rows:
        points = ", ".join(
            f"T={t}: {acc:.3f} @ {session_seconds(r, t):.1f} s"
            for t, acc in r["budget_accuracy"].items()
        )
        print(f"  {r['rate']}, {r['delay']}, {r['duplex']}, {r['protocol']}: {points}")
        print(
            f"    networked T={r['iterations']} accuracy {r['mean_accuracy']:.4f} "
            f"(in process {r['budget_accuracy'].get(r['iterations'], float('nan')):.4f})"
        )


def plot_time_to_accuracy(rows: list[dict], path: Path, title: str) -> None:
    """One panel per link: the mean test accuracy of a T-round session against the seconds it
    takes over the link (:func:`session_seconds`), one line per protocol, a marker per T."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    links = list(dict.fromkeys(r["link"] for r in rows))
    fig, axes = plt.subplots(1, len(links), figsize=(5.5 * len(links), 4.5), squeeze=False)
    for ax, link in zip(axes[0], links, strict=True):
        for r in (r for r in rows if r["link"] == link):
            acc = r["budget_accuracy"]
            seconds = [session_seconds(r, t) for t in acc]
            marker = "o" if r["protocol"] == "paper" else "s"
            ax.plot(seconds, list(acc.values()), marker=marker, label=r["protocol"])
            offset = (-22, 4) if r["protocol"] == "paper" else (4, -10)
            for t, x, y in zip(acc, seconds, acc.values(), strict=True):
                ax.annotate(f"T={t}", (x, y), fontsize=7, xytext=offset,
                            textcoords="offset points")  # fmt: skip
        ax.set_title(f"{r['rate']}, {r['delay']} one way, {r['duplex']} duplex", fontsize=10)
        ax.set_xlabel("seconds from all users joined to the end of the evaluation")
        ax.set_ylabel("mean test accuracy of a T-round session")
        ax.set_xlim(left=0)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"figure written to {path}")


def report(rows: list[dict], args) -> None:
    print(
        "\n| link | protocol | session s | MB down + up (gRPC) | MB on TCP | lower bound s "
        "(of it RTTs) | session / bound | serial bound s | session / serial | round p50 s "
        "(in process) | load average |"
    )
    print("|" + "---|" * 11)
    for r in rows:
        print(
            f"| {r['rate']}, {r['delay']}, {r['duplex']} | {r['protocol']} | "
            f"{r['session_s']:.1f} | "
            f"{r['bytes_down'] / 1e6:.2f} + {r['bytes_up'] / 1e6:.2f} | "
            f"{(r['tcp_bytes_down'] + r['tcp_bytes_up']) / 1e6:.2f} | {r['bound_s']:.1f} "
            f"({r['rtts_s']:.1f}) | {r['ratio']:.2f}x | {r['serial_bound_s']:.1f} | "
            f"{r['serial_ratio']:.2f}x | {r['round_p50_s']:.3f} ({r['inprocess_round_s']:.3f}) | "
            f"{r['load_before']:.1f} / {r['load_after']:.1f} |"
        )
    print(
        "\nwhere the time goes, s (lower bound): | link | protocol | handshake + round 1 | "
        "rounds 2..T | final + evaluation |"
    )
    for r in rows:
        print(
            f"| {r['rate']}, {r['delay']}, {r['duplex']} | {r['protocol']} | "
            f"{r['handshake_round1_s']:.2f} ({r['handshake_round1_bound_s']:.2f}) | "
            f"{r['rounds_s']:.2f} ({r['rounds_bound_s']:.2f}) | "
            f"{r['after_s']:.2f} ({r['after_bound_s']:.2f}) |"
        )
    chosen = median_runs(rows)
    if args.repeat > 1:
        print(f"\nsession / bound over {args.repeat} runs: median (best, worst)")
        for (link, protocol), r in chosen.items():
            ratios = sorted(
                x["ratio"] for x in rows if (x["link"], x["protocol"]) == (link, protocol)
            )
            print(
                f"  {r['rate']}, {r['delay']}, {r['duplex']}, {protocol}: {r['ratio']:.2f}x "
                f"({ratios[0]:.2f}x, {ratios[-1]:.2f}x)"
            )
    print(f"\ncompact vs paper (n = {args.pilots:,} measured; n = {args.project:,} projected)")
    for link in dict.fromkeys(r["link"] for r in rows):
        by = {protocol: r for (name, protocol), r in chosen.items() if name == link}
        if {"paper", "compact"} <= set(by):
            p, c = by["paper"], by["compact"]
            total = lambda r: r["bytes_down"] + r["bytes_up"]  # noqa: E731
            print(
                f"  {p['rate']}, {p['delay']}, {p['duplex']} duplex: session speed-up "
                f"{p['session_s'] / c['session_s']:.2f}x (lower bounds "
                f"{p['bound_s'] / c['bound_s']:.2f}x, bytes {total(p) / total(c):.2f}x); at "
                f"n = {args.project:,}: lower bounds paper {p['projected_bound_s']:.0f} s, "
                f"compact {c['projected_bound_s']:.0f} s, "
                f"{p['projected_bound_s'] / c['projected_bound_s']:.2f}x (serial bounds "
                f"{p['projected_serial_bound_s']:.0f} / {c['projected_serial_bound_s']:.0f} s; "
                f"bytes {p['projected_bytes'] / 1e6:,.0f} / {c['projected_bytes'] / 1e6:,.0f} MB)"
            )


def median_runs(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """Per (link, protocol), its run of median session time (the lower one of an even count)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["link"], r["protocol"]), []).append(r)
    return {
        key: sorted(runs, key=lambda r: r["session_s"])[(len(runs) - 1) // 2]
        for key, runs in groups.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pilots", type=int, default=4000, help="pilots n (train rows)")
    parser.add_argument("--project", type=int, default=42_500, help="n to project the bytes to")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=30, help="ADMM rounds T")
    parser.add_argument("--channel-uses", type=int, default=4, help="K (N_T = N_R = 4)")
    parser.add_argument(
        "--links",
        default="100mbit/20ms,10mbit/50ms",
        help="RATE/DELAY[/half],... (half: both directions share the rate)",
    )
    parser.add_argument("--protocols", default="paper,compact")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per session")
    parser.add_argument("--cache", help="synthetic latent cache (written if absent)")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument(
        "--time-to-accuracy",
        metavar="PNG",
        help="also run in-process sessions of each --budgets round count and draw accuracy "
        "against seconds over each link here",
    )
    parser.add_argument("--budgets", default="1,2,3,5,10,20,30", help="round budgets T")
    parser.add_argument(
        "--repeat", type=int, default=1, help="sessions per (link, protocol), one after another"
    )
    parser.add_argument(
        "--logs",
        metavar="DIR",
        help="keep every session's AP and user logs here, INFO records as JSON lines with their "
        "times (default: removed with the run's temporary folder)",
    )
    args = parser.parse_args()
    if reason := require_testbed():
        print(f"links: {reason}", file=sys.stderr)
        return 2
    links = []
    for spec in args.links.split(","):
        rate, delay, *duplex = spec.split("/")
        parse_rate(rate), parse_delay(delay)  # fail now, not after the first session
        if duplex not in ([], ["half"]):
            parser.error(f"bad link {spec!r} (RATE/DELAY or RATE/DELAY/half)")
        name = spec.replace("/", "-")
        links.append({"name": name, "rate": rate, "delay": delay, "half": bool(duplex)})
    remove_stale()  # namespaces of runs that were killed (SIGKILL) before they cleaned up
    try:
        rows = measure(links, args)
    except KeyboardInterrupt:
        print("links: interrupted; namespaces and processes removed", file=sys.stderr)
        return 130
    report(rows, args)
    load = print_load("at the end")
    if args.time_to_accuracy:
        rows = list(median_runs(rows).values())  # one session per (link, protocol)
        report_time_to_accuracy(rows)
        title = (
            f"n={args.pilots:,} pilots, L={args.users}, K={args.channel_uses}, N_T=N_R=4; "
            f"seconds from the networked session (T={args.iterations}),\naccuracy from "
            f"in-process sessions of T rounds; load average "
            f"{rows[0]['load_before']:.0f} at start, {load:.0f} at the end"
        )
        plot_time_to_accuracy(rows, Path(args.time_to_accuracy), title)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def measure(links: list[dict], args) -> list[dict]:
    """Every (link, protocol) session in one testbed; removed on return, error or Ctrl-C."""
    rows: list[dict] = []
    with sigterm_as_interrupt(), tempfile.TemporaryDirectory(prefix="semalign-links-") as tmp:
        cache = Path(args.cache or Path(tmp) / "cache")
        write_cache(cache, encoders=args.users, n=args.pilots, ap_dim=384, dims=(384, 1280))
        half = Path(tmp) / "cache-half"  # bytes at n/2 pilots, for the projection to --project
        write_cache(half, encoders=args.users, n=args.pilots // 2, ap_dim=384, dims=(384, 1280))
        protocols = args.protocols.split(",")
        small = {p: simulate(half, p, args, Path(tmp) / f"half-{p}.json") for p in protocols}
        # the same session in process (no link): what one round costs in compute, under this load
        local = {p: simulate(cache, p, args, Path(tmp) / f"local-{p}.json") for p in protocols}
        accuracy = {  # time to accuracy: the accuracy of each round budget, in process
            p: budget_accuracies(cache, p, args, Path(tmp)) if args.time_to_accuracy else {}
            for p in protocols
        }
        hosts = ["ap"] + [f"u{i + 1}" for i in range(args.users)]
        print(
            f"# n={args.pilots:,}, K={args.channel_uses}, N_T=N_R=4, T={args.iterations}, "
            f"L={args.users}; hosts: {', '.join(hosts)}; {load_average_line()}",
            flush=True,
        )
        with Testbed(hosts) as tb:
            for link, protocol, run in itertools.product(links, protocols, range(args.repeat)):
                load = load_average()
                row = run_session(tb, cache, small, link, protocol, args, Path(tmp), run)
                row["run"] = run
                row["inprocess_round_s"] = local[protocol]["rounds"][0]["seconds"]
                row["budget_accuracy"] = accuracy[protocol]
                row["load_before"], row["load_after"] = load, load_average()
                rows.append(row)
                print(
                    f"{link['name']}, {protocol}: session {row['session_s']:.1f} s, bound "
                    f"{row['bound_s']:.1f} s, ratio {row['ratio']:.2f}; handshake + round 1 "
                    f"{row['handshake_round1_s']:.2f} s ({row['handshake_round1_bound_s']:.2f}), "
                    f"rounds 2..T {row['rounds_s']:.2f} s ({row['rounds_bound_s']:.2f}), final + "
                    f"evaluation {row['after_s']:.2f} s ({row['after_bound_s']:.2f}); "
                    f"load average {row['load_before']:.1f} / {row['load_after']:.1f}",
                    flush=True,
                )
    return rows


if __name__ == "__main__":
    sys.exit(main())
