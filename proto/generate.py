"""Regenerate the Python code for proto/semalign.proto (run after editing the schema).

    python proto/generate.py          # writes semalign_pb2.py, semalign_pb2_grpc.py, .pyi
    python proto/generate.py --check  # exit 1 if the committed files are out of date

The schema is compiled as ``semalign/proto/semalign.proto`` so the generated gRPC module imports
``semalign.proto.semalign_pb2`` (absolute, package-correct imports). Requires grpcio-tools.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUTPUTS = ("semalign_pb2.py", "semalign_pb2_grpc.py", "semalign_pb2.pyi")


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        staged = root / "semalign" / "proto"
        staged.mkdir(parents=True)
        shutil.copy(HERE / "semalign.proto", staged / "semalign.proto")
        include = Path(protoc.__file__).parent / "_proto"
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{root}",
                f"-I{include}",
                f"--python_out={root}",
                f"--grpc_python_out={root}",
                f"--pyi_out={root}",
                "semalign/proto/semalign.proto",
            ]
        )
        if code != 0:
            raise SystemExit(f"protoc failed with exit code {code}")
        for name in OUTPUTS:
            shutil.copy(staged / name, out_dir / name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with committed code")
    args = parser.parse_args()
    if not args.check:
        generate(HERE)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = [n for n in OUTPUTS if (Path(tmp) / n).read_bytes() != (HERE / n).read_bytes()]
    if stale:
        print(f"out of date: {', '.join(stale)}; run python proto/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
