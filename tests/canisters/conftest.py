"""The test canisters, built from fixtures/canisters by its build script (cached outside the repository)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "fixtures" / "canisters" / "build.py"


def _build_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("icllm_test_canisters", BUILD_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


BUILD = _build_module()


def module_path(name: str) -> Path:
    """A test canister's module, built now if the cache lacks it."""
    try:
        path: Path = BUILD.built(name)
    except BUILD.BuildError as error:
        pytest.fail(f"cannot build the test canister {name}: {error}", pytrace=False)
    return path


@pytest.fixture(scope="session")
def motoko_agent() -> Path:
    """The Motoko agent, enhanced orthogonal persistence (wasm64)."""
    return module_path("motoko-agent")


@pytest.fixture(scope="session", params=["motoko-agent", "motoko-agent-classical"])
def any_motoko_agent(request: pytest.FixtureRequest) -> Path:
    """The Motoko agent in both persistence modes: enhanced (wasm64) and classical (wasm32)."""
    return module_path(str(request.param))


@pytest.fixture(scope="session")
def rust_agent() -> Path:
    return module_path("rust-agent")


@pytest.fixture(scope="session")
def azle_agent() -> Path:
    return module_path("azle-agent")


LEDGER_ID: str = BUILD.LEDGER_ID
LEDGER_DID = Path(BUILD.HERE) / "motoko" / "ledger" / "ledger.did"


@pytest.fixture(scope="session")
def motoko_wallet() -> Path:
    """A Motoko agent that imports `canister:ledger` (the ICP ledger's id) and calls it between LLM rounds."""
    return module_path("motoko-wallet")


@pytest.fixture(scope="session")
def motoko_ledger() -> Path:
    """A small ledger with the ICP ledger's `account_balance` and `transfer`, as a real neighbour."""
    return module_path("motoko-ledger")


@pytest.fixture(scope="session")
def motoko_agent_classical() -> Path:
    """The Motoko agent, classical persistence (wasm32): stable variables survive upgrades."""
    return module_path("motoko-agent-classical")


@pytest.fixture(scope="session")
def motoko_factory() -> Path:
    """A Motoko factory whose actor class creates child agents through the management canister."""
    return module_path("motoko-factory")
