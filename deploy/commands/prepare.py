"""The compose ``encode`` service: every cache volume prepared once, before anything else runs.

::

    python -m semalign.deploy.commands.prepare --caches /caches \\
        ap=vit_tiny_patch16_224 user1=rexnet_100

For each ``NAME=ENCODER`` the encoder is trained (or its valid cache entry reused) into
``CACHES/NAME`` (``semalign encode`` into that volume alone: users' latents stay in their own
volumes), one encoder after another, so ten users never train at once. With ``--latents SRC``
the encoder's folder is copied from SRC into ``CACHES/NAME/latents`` instead (precomputed or
synthetic latents; tests). With ``--from HOSTCACHE`` (a cache made on the host by ``semalign
encode --cache-dir HOSTCACHE``, mounted read-only) each entry found there is copied first
(latents, classifiers and meta.json; never the encoder weights), then checked like any cache
entry: an image without torch runs the deployment from such a cache, and only an entry that is
missing or stale is trained (which needs torch: ``TORCH=cpu``). Then it writes ``READY_FILE``
(the service's healthcheck; AP and users wait for it) and, with ``--stay``, waits for SIGTERM:
a one-shot container that exited would end ``docker-compose up --abort-on-container-exit`` at once.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import time
from pathlib import Path

READY_FILE = Path("/tmp/semalign-ready")


def parse_pairs(pairs: list[str]) -> list[tuple[str, str]]:
    out = []
    for pair in pairs:
        name, sep, encoder = pair.partition("=")
        if not sep or not name or not encoder or "/" in name:
            raise SystemExit(f"prepare: expected NAME=ENCODER, got {pair!r}")
        out.append((name, encoder))
    return out


def copy_entry(source: Path, dest: Path) -> bool:
    """Copy one cache entry's files (``store.META``, ``store.ENTRY_FILES`` and the MLP task
    model where the host has one; not the weights) from ``source`` to ``dest`` unless ``dest``
    has one already; whether it copied."""
    from semalign.common.latents import MLP_CLASSIFIER_FILE

    from semalign.encoders.store import ENTRY_FILES, META

    if (dest / META).exists() or not (source / META).is_file():
        return False
    dest.mkdir(parents=True, exist_ok=True)
    optional = [MLP_CLASSIFIER_FILE] if (source / MLP_CLASSIFIER_FILE).is_file() else []
    # meta.json last: the entry is trusted only once whole
    for file in (*ENTRY_FILES, *optional, META):
        shutil.copyfile(source / file, dest / file)
    return True


def prepare(
    caches: Path,
    pairs: list[tuple[str, str]],
    dataset: str,
    latents: Path | None,
    host_cache: Path | None = None,
) -> None:
    for name, encoder in pairs:
        t0 = time.perf_counter()
        target = caches / name
        if latents is not None:
            dest = target / "latents" / encoder
            if not dest.exists():
                shutil.copytree(latents / encoder, dest)
            how = "copied"
        else:
            from semalign.encoders import ensure_latents

            copied = host_cache is not None and copy_entry(
                host_cache / dataset / encoder, target / dataset / encoder
            )
            try:
                ensure_latents(dataset, [encoder], target, progress=False, workers=1)
            except ImportError as exc:  # an image without torch, and nothing valid to reuse
                raise SystemExit(
                    f"prepare: {name}: no valid cache entry for {encoder} (latents and its "
                    f"task model classifier-mlp.npz) and no torch to train it ({exc}); run "
                    "`semalign encode --cache-dir DIR` on the host and mount DIR "
                    "(SEMALIGN_HOST_CACHE), or build the image with TORCH=cpu"
                ) from None
            how = "copied from the host cache" if copied else "ready"
        print(f"{name}: {encoder} {how} in {time.perf_counter() - t0:.1f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m semalign.deploy.commands.prepare")
    parser.add_argument("pairs", nargs="+", metavar="NAME=ENCODER")
    parser.add_argument("--caches", default="/caches", help="one sub-folder (volume) per NAME")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--latents", help="copy encoders' latents from here instead of encoding")
    parser.add_argument(
        "--from",
        dest="host_cache",
        help="a cache made by `semalign encode` on the host: its entries are copied first",
    )
    parser.add_argument("--stay", action="store_true", help="then wait for SIGTERM")
    args = parser.parse_args(argv)
    READY_FILE.unlink(missing_ok=True)
    t0 = time.perf_counter()
    prepare(
        Path(args.caches),
        parse_pairs(args.pairs),
        args.dataset,
        Path(args.latents) if args.latents else None,
        Path(args.host_cache) if args.host_cache else None,
    )
    READY_FILE.write_text(f"{time.perf_counter() - t0:.1f}\n")
    print(f"all caches ready in {time.perf_counter() - t0:.1f} s", flush=True)
    if args.stay:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
