"""Principals the runtime knows by heart, and principals as text and bytes.

A leaf module: the runtime's other modules (the IC, the management canister, the doors) import it, and
it imports none of them.
"""

from __future__ import annotations

from icp_principal import Principal

from icllm_emulator.runtime.errors import RuntimeUsageError

LLM_CANISTER_ID = "w36hm-eqaaa-aaaal-qr76a-cai"
# The env var by which icp-cli projects name the LLM canister to their canisters.
LLM_ENV_VAR = "PUBLIC_CANISTER_ID:llm"
ANONYMOUS = Principal.anonymous().bytes
MANAGEMENT = b""
# What a canister is given at install unless a test says otherwise (the IC's default for a new canister).
DEFAULT_CYCLES = 100_000_000_000_000


def principal_bytes(text: str, what: str = "canister id") -> bytes:
    try:
        return bytes(Principal.from_str(text).bytes)
    except Exception:
        raise RuntimeUsageError(
            f"{what} {text!r} is not a textual principal (like {LLM_CANISTER_ID})"
        ) from None


def principal_text(raw: bytes) -> str:
    return str(Principal(bytes(raw)).to_str())
