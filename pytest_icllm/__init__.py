"""pytest-icllm: test code that calls the Internet Computer's LLM canister against a local emulator.

The fixtures live in `pytest_icllm.plugin` (registered through the `pytest11` entry point); this root
exports what a test may name in type hints and `except` clauses. They are imported on first use, so
that a pytest run that never touches the emulator does not pay for importing gRPC.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from icllm_emulator.client import EmulatorError, LlmReject
    from icllm_emulator.grpc_api.control import Call, JobInfo
    from icllm_emulator.history import Stats
    from icllm_emulator.runtime.errors import CanisterReject
    from pytest_icllm._canisters import Canister, CanisterIC, PendingCall, Stub
    from pytest_icllm._controller import IcllmController

__version__ = version("pytest-icllm")
__all__ = [
    "Call",
    "Canister",
    "CanisterIC",
    "CanisterReject",
    "EmulatorError",
    "IcllmController",
    "JobInfo",
    "LlmReject",
    "PendingCall",
    "Stats",
    "Stub",
    "__version__",
]

_LAZY = {
    "EmulatorError": "icllm_emulator.client",
    "LlmReject": "icllm_emulator.client",
    "IcllmController": "pytest_icllm._controller",
    "Canister": "pytest_icllm._canisters",
    "CanisterIC": "pytest_icllm._canisters",
    "PendingCall": "pytest_icllm._canisters",
    "CanisterReject": "icllm_emulator.runtime.errors",
    "Call": "icllm_emulator.grpc_api.control",
    "JobInfo": "icllm_emulator.grpc_api.control",
    "Stats": "icllm_emulator.history",
    "Stub": "pytest_icllm._canisters",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pytest_icllm' has no attribute {name!r}")
