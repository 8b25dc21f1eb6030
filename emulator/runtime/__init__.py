"""The canister runtime: a canister developer's own module runs in-process, under an emulated `ic0`.

`CanisterRuntime` installs modules and runs their messages (on a thread of its own, one at a time, in
the order of the engine's event loop, on the engine's clock); its calls to the LLM canister go through
the same function as gRPC `CallCandid`. It knows nothing of pytest: the plugin's `icllm_canister`
fixture is one front door onto it.

The names below are imported on first use: a session that installs no canister module never loads
wasmtime (the engine imports only `runtime.errors` at start-up).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from icllm_emulator.runtime.errors import CanisterReject, ModuleError, RuntimeUsageError, UnknownCanister
    from icllm_emulator.runtime.ic import CanisterRuntime, InstallSettings
    from icllm_emulator.runtime.ids import LLM_CANISTER_ID, LLM_ENV_VAR
    from icllm_emulator.runtime.messages import Response

# Each exported name, by the module that defines it.
_HOMES = {
    "CanisterReject": "errors",
    "ModuleError": "errors",
    "RuntimeUsageError": "errors",
    "UnknownCanister": "errors",
    "LLM_CANISTER_ID": "ids",
    "LLM_ENV_VAR": "ids",
    "CanisterRuntime": "ic",
    "InstallSettings": "ic",
    "Response": "messages",
}

__all__ = [
    "LLM_CANISTER_ID",
    "LLM_ENV_VAR",
    "CanisterReject",
    "CanisterRuntime",
    "InstallSettings",
    "ModuleError",
    "Response",
    "RuntimeUsageError",
    "UnknownCanister",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
