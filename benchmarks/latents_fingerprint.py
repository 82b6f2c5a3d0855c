"""Bytes read and time of the latents fingerprint (``latents_id``) for L users of E encoders:
version 1 (every listed user's files) against version 2 (each distinct file once).

Writes a synthetic cache (``--encoders`` encoders, train/test ``.npz`` and a classifier each,
files last modified an hour ago, as a cache is), then for ``--repeats`` rounds computes, side
by side in this process, the version-1 fingerprint, the version-2 fingerprint with an empty
digest memo (the first ``simulate`` of a process) and again with the memo filled. Bytes read
are the process's ``rchar`` (``/proc/self/io``: every byte read by a system call, page cache
included); seconds are wall time. Prints the medians and their ratios, with the load average.

    nice python benchmarks/latents_fingerprint.py --users 100 --encoders 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from measure_env import load_average
from semalign.common import latents


def write_cache(root: Path, encoders: int, train_rows: int, test_rows: int, dim: int) -> list:
    """``<root>/enc<i>/{train,test,classifier}.npz``, aged an hour; returns the encoder names."""
    rng = np.random.default_rng(0)
    names = [f"enc{i}" for i in range(encoders)]
    for name in names:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for split, rows in (("train", train_rows), ("test", test_rows)):
            np.savez(
                folder / f"{split}.npz",
                latents=rng.standard_normal((rows, dim), np.float32),
                labels=rng.integers(0, 10, rows),
            )
        np.savez(folder / "classifier.npz", weight=rng.standard_normal((10, dim)))
    when = time.time() - 3600
    for path in root.rglob("*.npz"):
        os.utime(path, (when, when))
    time.sleep(latents.RACY_SECONDS)  # their ctime (now) settled too: memoized
    return names


def read_bytes() -> int:
    """This process's bytes read so far (``rchar``)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def measure(compute) -> tuple[int, float, str]:
    """(bytes read, seconds, fingerprint) of one call."""
    before, start = read_bytes(), time.perf_counter()
    value = compute()
    return read_bytes() - before, time.perf_counter() - start, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100, help="L: users listed")
    parser.add_argument("--encoders", type=int, default=10, help="distinct encoders, cycled")
    parser.add_argument("--train-rows", type=int, default=5000)
    parser.add_argument("--test-rows", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = write_cache(root, args.encoders, args.train_rows, args.test_rows, args.dim)
        listed = [names[i % len(names)] for i in range(args.users + 1)]  # the AP, L users
        entry = sum(p.stat().st_size for p in (root / names[0]).iterdir())
        print(
            f"L={args.users} users of {args.encoders} encoders (+ the AP), "
            f"{entry / 1e6:.1f} MB per entry; load average {load_average():.1f} at start"
        )
        results: dict[str, list[tuple[int, float]]] = {"v1": [], "v2 cold": [], "v2 warm": []}
        for _ in range(args.repeats):
            b, s, old = measure(lambda: latents.latents_fingerprint_v1(root, listed))
            results["v1"].append((b, s))
            latents._FILE_DIGESTS.clear()
            b, s, new = measure(lambda: latents.latents_fingerprint(root, listed))
            results["v2 cold"].append((b, s))
            b, s, again = measure(lambda: latents.latents_fingerprint(root, listed))
            results["v2 warm"].append((b, s))
            assert new == again != old
        print(f"{'version':>8} {'MB read':>10} {'seconds':>9}  (median of {args.repeats})")
        medians = {}
        for mode, values in results.items():
            mb = statistics.median(b for b, _ in values) / 1e6
            sec = statistics.median(s for _, s in values)
            medians[mode] = (mb, sec)
            print(f"{mode:>8} {mb:>10.1f} {sec:>9.3f}")
        (mb1, s1), (mb2, s2) = medians["v1"], medians["v2 cold"]
        print(
            f"v1 / v2 (cold): bytes {mb1 / mb2:.1f}x, time {s1 / s2:.1f}x; "
            f"load average {load_average():.1f} at end"
        )


if __name__ == "__main__":
    main()
