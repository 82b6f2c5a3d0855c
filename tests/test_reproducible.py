"""Reproducible by construction.

The same ``semalign encode`` twice, into two empty caches with the same seed, gives the same
files byte for byte (latents, classifiers; meta.json but for its timings), whatever torch's
thread count (a lone build uses every core, a worker of a parallel build its share), and the
same ``semalign simulate`` twice gives the same results JSON (but for the wall-clock timings
and the start time). Kept small: the smallest encoder of tests/test_encoders.py, 16x16 images,
one epoch, 64 rows per split.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from synthetic import make_latents

from semalign.cli import main

ENCODER = "mobilenetv3_small_075"
TINY_ARGS = ["--image-size", "16", "--epochs", "1", "--limit", "64", "--no-progress", "-q"]
#: meta.json entries that measure the build, not what it built
BUILD_TIMES = {"seconds", "cpu_seconds", "train_seconds", "created"}


def _encode(cache_dir: Path) -> Path:
    argv = ["encode", "--dataset", "digits", "--encoders", ENCODER, "--seed", "3"]
    assert main([*argv, "--cache-dir", str(cache_dir), *TINY_ARGS]) == 0
    return cache_dir / "digits" / ENCODER


def test_encode_twice_gives_the_same_bytes(tmp_path):
    import torch

    from semalign.encoders.train import setup_torch

    threads = torch.get_num_threads()
    try:  # two thread counts (as a lone build and a worker of two would have on two cores)
        setup_torch(2)
        first = _encode(tmp_path / "a")
        setup_torch(1)
        second = _encode(tmp_path / "b")
    finally:
        setup_torch(threads)
    files = sorted(p.name for p in first.iterdir() if p.suffix == ".npz")
    assert files == sorted(p.name for p in second.iterdir() if p.suffix == ".npz")
    assert {"train.npz", "val.npz", "test.npz", "classifier.npz"} <= set(files)
    for name in files:  # the latents and the classifiers
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    metas = [json.loads((f / "meta.json").read_text()) for f in (first, second)]
    assert metas[0]["key"] == metas[1]["key"]
    assert metas[0]["files"] == metas[1]["files"]  # sha256 of every file
    for meta in metas:
        for key in BUILD_TIMES:
            meta.pop(key, None)
    assert metas[0] == metas[1]


def _without_timings(value):
    """``value`` without the wall-clock timings (``seconds``, ``latency*``)."""
    if isinstance(value, dict):
        return {
            k: _without_timings(v)
            for k, v in value.items()
            if k != "seconds" and not k.startswith("latency")
        }
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def test_simulate_twice_gives_the_same_results(tmp_path, monkeypatch):
    root, ap, users = make_latents(tmp_path / "lat", n_train=160, n_test=60)
    argv = ["simulate", "--latents", str(root), "--ap", ap, "--users", ",".join(users)]
    argv += ["--antennas-tx", "2", "--antennas-rx", "2", "--channel-uses", "2"]
    argv += ["--iterations", "3", "--seeds", "4,5", "-q", "--out", "r.json"]
    argv += ["--csi-error", "0.1", "--distances", "3,9"]  # every random draw of a session
    monkeypatch.setattr(sys, "argv", ["semalign", *argv])
    results = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)  # the same command line, another file
        assert main(argv) == 0
        results.append(json.loads((tmp_path / name / "r.json").read_text()))
    for r in results:
        assert r["provenance"].pop("started_at")
    assert results[0]["provenance"]["command_line"] == ["semalign", *argv]
    assert _without_timings(results[0]) == _without_timings(results[1])
    assert results[0]["mean_accuracy"] > 0  # a session ran
