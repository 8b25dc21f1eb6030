"""The canister runtime: a canister developer's own module runs in-process, under an emulated `ic0`.

`CanisterRuntime` installs modules and runs their messages on the engine's event loop and clock; its
calls to the LLM canister go through the same function as gRPC `CallCandid`. It knows nothing of
pytest: the plugin's `icllm_canister` fixture is one front door onto it.
"""

from icllm_emulator.runtime.errors import CanisterReject, ModuleError, RuntimeUsageError, UnknownCanister
from icllm_emulator.runtime.ic import CanisterRuntime, InstallSettings
from icllm_emulator.runtime.ids import LLM_CANISTER_ID, LLM_ENV_VAR
from icllm_emulator.runtime.messages import Response

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
