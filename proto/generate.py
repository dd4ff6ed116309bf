"""Regenerates the Python stubs from the `.proto` files (`make proto`).

The stubs are committed, so serving never needs `grpcio-tools`. protoc runs
with the proto folder mapped to the virtual path `edgerec/proto`, so the
generated code imports `from edgerec.proto import recommender_pb2` and
names its files `edgerec/proto/*.proto` wherever the checkout lives: the
output depends only on the sources and the grpcio-tools version.

protoc's Python code registers each file in protobuf's default descriptor
pool; each `_pb2.py` is then rewritten to register in `edgerec.proto.POOL`
instead (see `edgerec/proto/__init__.py` for why). The rewrite replaces two
exact lines and fails loudly if protoc's output no longer has them.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
VIRTUAL_PACKAGE = "edgerec/proto"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
# protoc's lines that register a file in the default pool -> edgerec's private pool.
POOL_REWRITES = (
    (
        "from google.protobuf import descriptor_pool as _descriptor_pool\n",
        "from edgerec.proto import POOL as _edgerec_pool  # edgerec: not the default pool (make proto)\n",
    ),
    ("DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(", "DESCRIPTOR = _edgerec_pool.AddSerializedFile("),
)


def proto_files(proto_dir: Path = PROTO_DIR) -> list[Path]:
    return sorted(proto_dir.glob("*.proto"))


def generate(proto_dir: Path = PROTO_DIR, output_dir: Path = PROTO_DIR) -> list[Path]:
    """Compile every `.proto` in `proto_dir`; return the files written to `output_dir`."""
    from grpc_tools import protoc  # a development dependency: only needed to regenerate

    sources = proto_files(proto_dir)
    if not sources:
        raise SystemExit(f"no .proto files in {proto_dir}")
    well_known = resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory(prefix="edgerec-proto-") as scratch:
        args = [
            "grpc_tools.protoc",
            f"-I{VIRTUAL_PACKAGE}={proto_dir}",
            f"-I{well_known}",
            f"--python_out={scratch}",
            f"--pyi_out={scratch}",
            f"--grpc_python_out={scratch}",
            *(f"{VIRTUAL_PACKAGE}/{source.name}" for source in sources),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed; see the messages above")
        written = []
        for generated in sorted((Path(scratch) / VIRTUAL_PACKAGE).iterdir()):
            if generated.name.endswith(GENERATED_SUFFIXES):
                target = output_dir / generated.name
                if generated.name.endswith("_pb2.py"):
                    target.write_text(into_private_pool(generated.read_text("utf-8"), generated.name), "utf-8")
                else:
                    shutil.copyfile(generated, target)
                written.append(target)
    return written


def into_private_pool(code: str, name: str) -> str:
    """protoc's `_pb2.py` text, registering its file in `edgerec.proto.POOL` instead of the default pool."""
    for old, new in POOL_REWRITES:
        if code.count(old) != 1:
            raise SystemExit(
                f"{name}: expected protoc to write {old.strip()!r} once; update POOL_REWRITES in edgerec/proto/generate.py"
            )
        code = code.replace(old, new)
    if "_descriptor_pool" in code:
        raise SystemExit(f"{name}: still uses protobuf's default pool after the rewrite; update POOL_REWRITES")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgerec.proto.generate", description=__doc__.splitlines()[0])
    parser.add_argument("--proto-dir", type=Path, default=PROTO_DIR, help="folder of .proto files (default: %(default)s)")
    parser.add_argument("--output-dir", type=Path, default=PROTO_DIR, help="where the stubs go (default: %(default)s)")
    args = parser.parse_args(argv)
    for path in generate(args.proto_dir, args.output_dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
