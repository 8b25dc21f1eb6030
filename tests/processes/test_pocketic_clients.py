"""PocketIC's own clients against the door: pic-js (@dfinity/pic 0.23 under vitest, tests/pic) and the
PyPI `pocket-ic` package, each starting the server binary as it always does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.canisters.conftest import module_path

PIC = Path(__file__).resolve().parents[1] / "pic"
LAUNCHER = Path(sys.executable).with_name("icllm-emulator-pocket-ic")


def test_pic_js_tests_of_a_motoko_agent_pass() -> None:
    binary = PIC / "node_modules" / "@dfinity" / "pic" / "pocket-ic"
    if not binary.exists():
        pytest.fail(
            f"pic-js is not installed with the launcher at {binary}: run `make test` (it runs npm ci in "
            f"{PIC} and puts icllm-emulator-pocket-ic there)"
        )
    env = {
        **os.environ,
        "ICLLM_MOTOKO_WASM": str(module_path("motoko-agent")),
        "ICLLM_AZLE_WASM": str(module_path("azle-agent")),
    }
    env.pop("POCKET_IC_BIN", None)  # pic-js finds the server where its install script would put it
    result = subprocess.run(
        ["node_modules/.bin/vitest", "run", "--reporter=verbose"],
        cwd=PIC,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "8 passed" in result.stdout


def test_the_python_client_installs_and_calls_a_motoko_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    import ic  # the `pocket-ic` package's Candid library (ic-py)
    from ic.candid import Types
    from pocket_ic import PocketIC

    monkeypatch.setenv("POCKET_IC_BIN", str(LAUNCHER))
    monkeypatch.setenv("POCKET_IC_MUTE_SERVER", "1")
    pic = PocketIC()
    canister = pic.create_canister()
    pic.add_cycles(canister, 2_000_000_000_000)
    pic.install_code(canister, module_path("motoko-agent").read_bytes(), [])

    rules = {"rules": [{"match": {"contains": "weather"}, "action": {"reply": {"content": "Sunny."}}}]}
    scripted = httpx.post(f"{pic.server.url}/instances/{pic.instance_id}/icllm/rules", json=rules)
    assert scripted.status_code == 200, scripted.text

    reply = pic.update_call(canister, "prompt", ic.encode([{"type": Types.Text, "value": "The weather?"}]))
    assert ic.decode(bytes(reply), Types.Text)[0]["value"] == "Sunny."
    count = pic.query_call(canister, "asked_count", ic.encode([]))
    assert ic.decode(bytes(count), Types.Nat)[0]["value"] == 1
    assert pic.get_time()["nanos_since_epoch"] == 1_620_328_630_000_000_000
