"""Generate the Python stubs (messages, gRPC services and their .pyi) from proto/icllm/v1/*.proto.

Usage: python proto/generate.py OUT_DIR   (the committed stubs live in emulator/_proto)

protoc writes imports as `from icllm.v1 import ...`; they are rewritten to the package the stubs are
committed in, so that the generated code needs no entry on sys.path.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
PACKAGE = "icllm_emulator._proto"
_IMPORT = re.compile(r"^(from|import) icllm\.v1", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    """Write every stub into `out_dir`; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # the mypy-protobuf plugins sit beside the interpreter
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "icllm" / "v1").glob("*.proto"))
    include = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # The .proto files ship beside the stubs, so a harness in another language finds the contract in
    # the installed package (importlib.resources: emulator/_proto/icllm/v1/*.proto).
    for proto in sorted((PROTO_ROOT / "icllm" / "v1").glob("*.proto")):
        (out_dir / "icllm" / "v1" / proto.name).write_text(proto.read_text())
    written = []
    for path in sorted(out_dir.rglob("*.py*")):
        text = _IMPORT.sub(rf"\1 {PACKAGE}.icllm.v1", path.read_text())
        path.write_text(text)
        written.append(path)
    for package in (out_dir / "icllm", out_dir / "icllm" / "v1"):
        (package / "__init__.py").touch()
    return written


if __name__ == "__main__":
    generate(Path(sys.argv[1]))
