"""A harness in another language: tests/ts/canisters.test.ts (TypeScript, Node's test runner, @grpc/grpc-js
and DFINITY's @dfinity/candid) drives an emulator process it starts itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.canisters.conftest import module_path

TS = Path(__file__).resolve().parents[1] / "ts"


def test_the_typescript_harness_passes() -> None:
    if not (TS / "node_modules" / "@dfinity" / "candid").is_dir():
        pytest.fail(f"the harness's npm packages are not installed: run `npm ci` in {TS} (make test does)")
    env = {
        **os.environ,
        "ICLLM_PYTHON": sys.executable,
        "ICLLM_AGENT_WASM": str(module_path("rust-agent")),
        "ICLLM_MOTOKO_WASM": str(module_path("motoko-agent")),
        "ICLLM_WALLET_WASM": str(module_path("motoko-wallet")),
        "ICLLM_LEDGER_WASM": str(module_path("motoko-ledger")),
    }
    result = subprocess.run(
        ["node", "--import", "tsx", "--test", "canisters.test.ts"],
        cwd=TS,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# pass 7" in result.stdout and "# fail 0" in result.stdout
