"""Soak: back-to-back networked sessions with seeded faults, each compared with its undisturbed
twin.

::

    python benchmarks/soak.py --sessions 200 --seed 0 --time-limit 3600 --out soak.json

Every session is real processes on 127.0.0.1: one ``semalign ap`` and two ``semalign user``
(``user1``, ``user2``; plaintext, per-user tokens), on the synthetic latents of the tests
(``tests/synthetic.py``), N_T = N_R = K = 2 and ``--rounds`` ADMM rounds. A seeded generator
draws, per session, the session's alignment seed (one of ``--configs``), a fault kind
(``soak_session.FAULTS``) and when to strike: once the AP's checkpoint shows round ``r``
(drawn in the first three quarters of the T rounds, so that the fault lands mid-session) plus
a drawn delay of 0-50 ms. The fault is a signal or a socket from outside the processes, never
a failpoint, so it lands wherever the processes happen to be (``tests/test_chaos.py`` pins
each protocol phase with failpoints instead). ``--faults`` restricts the kinds drawn,
``--cycle`` takes them in turn.

The twin of a session is the same seed and configuration run undisturbed in one process
(``SessionDriver`` over loopback links: the networked session equals it to 1e-9,
``tests/test_chaos.py::test_undisturbed_session_equals_the_in_process_one``), computed once per
distinct (seed, lost step) and cached. *results equal*: for every user who finished, test
accuracy, MSE and whitened MSE, and every round's pilot MSE and residuals, equal the twin's to
1e-9 (relative). *survived*: the outcome the fault kind promises (``FAULTS``), with the
exit codes that go with it.

Writes ``--out``: per session the plan (seed, fault, target round, delays), the injection (when,
at which checkpoint round, the evidence that it happened), the outcome, ``survived``,
``equal``, the mismatches or the error, and a summary per fault kind. ``--time-limit`` stops
starting sessions after that many seconds. Every process started is stopped on the way out,
Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from semalign.common.config import AlignmentConfig
from semalign.common.errors import LinkError
from semalign.common.io import write_json
from semalign.deploy.serving.launcher import sigterm_as_interrupt
from semalign.server.session import SessionDriver
from soak_session import FAULTS, USERS, VICTIM, Plan, run_session

from semalign.engine.loopback import LoopbackLink
from semalign.engine.scenario import build_session, load_scenario

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from synthetic import make_latents  # noqa: E402 - the tests' synthetic latent cache

REL, ABS = 1e-9, 1e-12


def draw_plans(args: argparse.Namespace) -> list[Plan]:
    """Every session's plan, from ``--seed`` only (so two soaks with one seed run the same)."""
    rng = np.random.default_rng(args.seed)
    kinds = args.faults
    strike_by = max(1, args.rounds - args.rounds // 4)  # the last quarter: left to land in
    plans = []
    for index in range(args.sessions):
        plans.append(
            Plan(
                index=index,
                seed=int(rng.integers(args.configs)) + 100 * args.seed,
                fault=kinds[index % len(kinds)] if args.cycle else str(rng.choice(kinds)),
                target_round=int(rng.integers(strike_by)),
                delay_s=round(float(rng.uniform(0, 0.05)), 3),
                pause_s=round(float(rng.uniform(0.3, 2.0)), 3),
            )
        )
    return plans


# ---------------------------------------------------------------------------- twins
class _LostLink:
    """A loopback link whose user is gone from its ``lost_at``-th reply on (0: the handshake),
    as the AP sees a killed process: what it sends still goes out (gRPC buffers it), the
    reply never comes, and nothing is delivered after that."""

    def __init__(self, link: LoopbackLink, lost_at: int) -> None:
        self.link, self.lost_at, self.replies, self.lost = link, lost_at, 0, False

    def send(self, data: bytes) -> None:
        if self.lost:
            raise LinkError("lost")
        self.link.send(data)

    def receive(self, timeout: float | None) -> bytes:
        self.lost = self.lost or self.replies >= self.lost_at
        if self.lost:
            raise LinkError("lost")
        self.replies += 1
        return self.link.receive(timeout)


class Twins:
    """Undisturbed (or user2-lost-at-step) in-process sessions, cached per (seed, step)."""

    def __init__(self, latents: tuple[Path, str, list[str]], rounds: int) -> None:
        self.scenario = load_scenario(*latents)
        self.rounds = rounds
        self.cache: dict[tuple[int, int | None], dict] = {}

    def get(self, seed: int, lost_at: int | None = None) -> dict:
        """``{"reports": {user: {...}}, "rounds": [{mse, primal, dual}], "dropped": {...}}``."""
        key = (seed, lost_at)
        if key not in self.cache:
            config = AlignmentConfig(
                antennas_tx=2, antennas_rx=2, channel_uses=2, iterations=self.rounds, seed=seed
            )
            ap, machines = build_session(self.scenario, config)
            links = [LoopbackLink(u) for u in machines]
            if lost_at is not None:
                victim = USERS.index(VICTIM)
                links[victim] = _LostLink(links[victim], lost_at)
            ids = np.arange(len(self.scenario.ap_test), dtype=np.int64)
            result = SessionDriver(ap, links).run(self.scenario.ap_test, ids)
            rounds = [
                {
                    "mse": r.mse,
                    "primal_residual": r.primal_residual,
                    "dual_residual": r.dual_residual,
                }
                for r in result.rounds
            ]
            self.cache[key] = {
                "reports": {uid: r.to_dict() for uid, r in result.reports.items()},
                "rounds": rounds,
                "dropped": result.dropped,
            }
        return self.cache[key]

    def lost_at_step(self, seed: int, reason: str) -> dict | None:
        """The twin whose user2 is lost at the step a drop reason names (its "round R: PHASE"
        prefix), or None if no step gives that prefix."""
        prefix = reason.split(": ")[:2]
        words = prefix[0].split()
        guess = int(words[1]) + 1 if len(words) == 2 and words[1].isdigit() else 0
        for lost_at in sorted(range(self.rounds + 4), key=lambda k: abs(k - guess)):
            twin = self.get(seed, lost_at)
            if twin["dropped"].get(VICTIM, "").split(": ")[:2] == prefix:
                return twin
        return None


def mismatches(block: dict, twin: dict) -> list[str]:
    """Where a networked seed block differs from its twin (empty: equal to 1e-9)."""
    out = []
    for user in block["users"]:
        want = twin["reports"].get(user["name"])
        if user.get("dropped"):
            continue
        for key in ("accuracy", "mse", "mse_whitened"):
            if want is None or not _close(user[key], want[key]):
                out.append(f"{user['name']}.{key}: {user[key]} vs {want and want[key]}")
    if len(block["rounds"]) != len(twin["rounds"]):
        return [*out, f"rounds: {len(block['rounds'])} vs {len(twin['rounds'])}"]
    for t, (got, want) in enumerate(zip(block["rounds"], twin["rounds"], strict=True)):
        out += [
            f"round {t}.{k}: {got[k]} vs {want[k]}" for k in want if not _close(got[k], want[k])
        ]
    return out


def _close(got: float | None, want: float | None) -> bool:
    if got is None or want is None:
        return got is want
    return abs(got - want) <= max(REL * abs(want), ABS)


def judge(plan: Plan, raw: dict, twins: Twins) -> dict:
    """Outcome ("recovered", "dropped", "failed"), survived, equal, and why not."""
    results = raw["results"]
    if results is None or raw["ap_exit"] not in (0, 3):
        return {
            "outcome": "failed",
            "survived": False,
            "equal": False,
            "error": "no results",
            "mismatches": [],
        }
    (block,) = results["seeds"]
    injected = raw["injection"].get("injected", False)
    if not results["lost"] and not block["dropped"]:
        outcome, twin = "recovered", twins.get(plan.seed)
        codes_ok = raw["ap_exit"] == 0 and all(c == 0 for c in raw["user_exit"].values())
        if plan.fault == "user-kill" and injected:  # killed after its last message: not needed
            codes_ok = raw["ap_exit"] == 0 and raw["user_exit"]["user1"] == 0
    else:
        outcome = "dropped"
        reason = block["dropped"].get(VICTIM, "")
        twin = twins.lost_at_step(plan.seed, reason) if reason else None
        lost_ok = results["lost"] == [
            {"seed": plan.seed, "user": VICTIM, "reason": f"dropped at {reason}"}
        ]
        codes_ok = lost_ok and raw["ap_exit"] == 3 and raw["user_exit"]["user1"] == 0
    wrong = ["no twin loses user2 at this step"] if twin is None else mismatches(block, twin)
    expected = FAULTS[plan.fault].expected if injected else "recovered"
    survived = codes_ok and (
        outcome == expected or (plan.fault == "user-kill" and outcome == "recovered")
    )
    if plan.fault == "garbage-peer" and injected:
        survived = survived and raw["injection"]["all_refused"]
    error = None
    if not survived:  # None: still running after its limit (then stopped)
        error = f"outcome {outcome}, expected {expected}; exit codes AP {raw['ap_exit']}, "
        error += f"users {raw['user_exit']}; lost {results['lost']}"
    return {
        "outcome": outcome,
        "survived": survived,
        "equal": not wrong,
        "error": error,
        "mismatches": wrong[:10],
    }


# ---------------------------------------------------------------------------- the soak
def record(plan: Plan, raw: dict, verdict: dict) -> dict:
    """One session's line of the results JSON."""
    wire = {}
    if raw["results"] is not None:
        wire = raw["results"]["seeds"][0].get("wire", {})
    entry = {**asdict(plan), **raw["injection"], **verdict, "wall_s": raw["wall_s"]}
    entry |= {"ap_exit": raw["ap_exit"], "user_exit": raw["user_exit"]}
    entry |= {"rejoins": wire.get("rejoins", []), "stragglers": wire.get("stragglers", [])}
    if raw["results"] is not None:
        entry["lost"] = raw["results"]["lost"]
    if not (verdict["survived"] and verdict["equal"]):
        entry["logs"] = raw["logs"]
    return entry


def summarize(records: list[dict]) -> dict:
    """sessions / faults injected / survived / results equal, in all and per fault kind."""

    def count(rows: list[dict]) -> dict:
        return {
            "sessions": len(rows),
            "faults_injected": sum(1 for r in rows if r["fault"] != "none" and r["injected"]),
            "survived": sum(1 for r in rows if r["survived"]),
            "results_equal": sum(1 for r in rows if r["equal"]),
        }

    kinds = sorted({r["fault"] for r in records})
    return {
        **count(records),
        "per_fault": {k: count([r for r in records if r["fault"] == k]) for k in kinds},
    }


def progress_line(plan: Plan, entry: dict, total: int) -> str:
    where = f"round {entry.get('at_round')} +{plan.delay_s:.2f}s" if entry["injected"] else "-"
    verdict = f"{entry['outcome']:<9} {'equal' if entry['equal'] else 'DIFFERENT'}"
    flag = "" if entry["survived"] else f"  NOT SURVIVED: {entry['error']}"
    width = len(str(total))
    return (
        f"[{plan.index + 1:>{width}}/{total}] seed {plan.seed:<4} {plan.fault:<13} {where:<20} "
        f"{verdict} {entry['wall_s']:6.1f} s{flag}"
    )


def soak(args: argparse.Namespace, workdir: Path) -> dict:
    """Run the sessions (until ``--time-limit``); the results document."""
    latents = make_latents(workdir / "latents", user_dims=(12, 20), n_train=200)
    twins, plans = Twins(latents, args.rounds), draw_plans(args)
    if args.only:  # a failure again: the same plans (the timing is the machine's)
        plans = [plan for plan in plans if plan.index in args.only]
    load_start, started, records = os.getloadavg(), time.monotonic(), []
    print(f"soak: {len(plans)} sessions, seed {args.seed}, load average {_load(load_start)}")
    stopped = None
    try:
        for plan in plans:
            if time.monotonic() - started > args.time_limit:
                stopped = f"time limit of {args.time_limit:g} s reached"
                break
            raw = run_session(plan, latents, args.rounds, workdir / f"s{plan.index:04d}")
            entry = record(plan, raw, judge(plan, raw, twins))
            records.append(entry)
            print(progress_line(plan, entry, args.sessions), flush=True)
            folder = workdir / f"s{plan.index:04d}"
            if not (entry["survived"] and entry["equal"]):  # its logs: next to --out
                entry["kept"] = str(shutil.move(folder, _failed_dir(args.out) / folder.name))
            elif not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
    except KeyboardInterrupt:
        stopped = "interrupted"
    load_end = os.getloadavg()
    summary = summarize(records)
    print(f"soak: {stopped or 'done'}; {_figure(summary)}; load average {_load(load_end)}")
    return {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "sessions_planned": len(plans),
        "stopped": stopped,
        "wall_s": round(time.monotonic() - started, 1),
        "load_average": {"start": load_start, "end": load_end},
        "rounds": args.rounds,
        "faults": {k: asdict(FAULTS[k]) for k in args.faults},
        "summary": summary,
        "sessions": records,
    }


def _failed_dir(out: Path) -> Path:
    """Where the folders (logs, results) of sessions that failed are kept: OUT.failed/."""
    folder = out.with_name(out.name + ".failed")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _load(load: tuple[float, float, float]) -> str:
    return ", ".join(f"{x:.2f}" for x in load)


def _figure(summary: dict) -> str:
    return (
        f"{summary['sessions']} sessions / {summary['faults_injected']} faults injected / "
        f"{summary['survived']} survived / {summary['results_equal']} results equal"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0, help="draws every session's plan")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=3600,
        metavar="SECONDS",
        help="start no session after this many seconds",
    )
    parser.add_argument("--out", type=Path, default=Path("soak.json"))
    parser.add_argument(
        "--faults",
        default=",".join(FAULTS),
        help=f"comma-separated fault kinds to draw from ({', '.join(FAULTS)})",
    )
    parser.add_argument(
        "--cycle", action="store_true", help="take the fault kinds in turn instead of drawing them"
    )
    parser.add_argument("--rounds", type=int, default=100, help="ADMM rounds per session")
    parser.add_argument(
        "--configs", type=int, default=4, help="distinct alignment seeds (each one twin)"
    )
    parser.add_argument(
        "--only",
        type=lambda text: {int(i) - 1 for i in text.split(",")},
        help="run only these sessions of the plan (1-based numbers as printed: 23,116)",
    )
    parser.add_argument("--keep", action="store_true", help="keep every session's folder")
    parser.add_argument("--workdir", type=Path, help="keep sessions here (default: a temp dir)")
    args = parser.parse_args(argv)
    args.faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = sorted(set(args.faults) - set(FAULTS))
    if unknown or not args.faults:
        parser.error(f"--faults: unknown kind(s) {unknown} (known: {', '.join(FAULTS)})")
    if min(args.sessions, args.rounds, args.configs) < 1 or not args.time_limit > 0:
        parser.error("--sessions, --rounds, --configs and --time-limit must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the twins' drops are expected: no warnings
    temp = None
    if args.workdir is None:
        temp = args.workdir = Path(tempfile.mkdtemp(prefix="semalign-soak-"))
    try:
        with sigterm_as_interrupt():
            document = soak(args, args.workdir)
    finally:
        if temp is not None and not args.keep:
            shutil.rmtree(temp, ignore_errors=True)
    write_json(args.out, document)
    print(f"soak: results in {args.out}")
    summary = document["summary"]
    ok = summary["survived"] == summary["results_equal"] == summary["sessions"]
    return 0 if ok and document["stopped"] != "interrupted" else 1


if __name__ == "__main__":
    sys.exit(main())
