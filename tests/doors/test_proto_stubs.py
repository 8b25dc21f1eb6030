"""The committed stubs in emulator/_proto are exactly what proto/generate.py makes from the .proto files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GENERATE = REPO / "proto" / "generate.py"
COMMITTED = REPO / "emulator" / "_proto" / "icllm" / "v1"
STUB_SUFFIXES = (".py", ".pyi", ".proto")


def stubs(directory: Path) -> dict[str, bytes]:
    """The stub files directly in `directory` (no __pycache__), by name."""
    return {
        path.name: path.read_bytes()
        for path in sorted(directory.iterdir())
        if path.is_file() and path.suffix in STUB_SUFFIXES
    }


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    out_dir = tmp_path / "generated"
    # A child process: generate.py puts the interpreter's directory on PATH (for protoc-gen-mypy),
    # which must not leak into this process's environment.
    result = subprocess.run(
        [sys.executable, str(GENERATE), str(out_dir)],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"proto/generate.py failed:\n{result.stdout}\n{result.stderr}"

    fresh = stubs(out_dir / "icllm" / "v1")
    committed = stubs(COMMITTED)
    assert fresh, "proto/generate.py wrote no stubs"
    hint = "run `make proto` and commit the result"
    assert sorted(committed) == sorted(fresh), (
        f"the committed stubs are not the generated set of files: only committed "
        f"{sorted(set(committed) - set(fresh))}, only generated {sorted(set(fresh) - set(committed))}; {hint}"
    )
    differing = sorted(name for name in fresh if fresh[name] != committed[name])
    assert not differing, f"the committed stubs differ from generate.py's output: {differing}; {hint}"
