"""What goes wrong around a canister module: its bytes, its traps, its rejects, and misuse of the runtime."""

from __future__ import annotations

from icllm_emulator.domain import RejectCode
from icllm_emulator.errors import ErrorKind, IcllmError

# The IC's error codes for the rejects the runtime produces (as the replica reports them to an
# ingress caller; a calling canister sees only the reject code and message).
EXPLICIT_REJECT = "IC0406"
CANISTER_NOT_FOUND = "IC0301"
WASM_TRAP = "IC0502"
CALLED_TRAP = "IC0503"
DID_NOT_REPLY = "IC0506"
INSTRUCTION_LIMIT = "IC0522"
# A message stopped by the wall-clock budget: on the IC such a message ends at its instruction limit.
TIME_LIMIT = INSTRUCTION_LIMIT
CONTRACT_VIOLATION = "IC0504"
OUT_OF_MEMORY = "IC0507"
METHOD_NOT_FOUND = "IC0536"
OUT_OF_CYCLES = "IC0207"
# Wasm instructions per message. The IC allows 40 billion for an update (and a callback or timer), 5 billion
# for a query and 300 billion for install or upgrade. The runtime's cap is the update limit: no single
# message the IC runs as one round of an update may exceed it, and beyond it an endless loop would run for
# minutes here (Wasm runs at 1-2 billion instructions a second). Queries keep the IC's 5 billion.
MAX_INSTRUCTION_LIMIT = 40_000_000_000
QUERY_INSTRUCTION_LIMIT = 5_000_000_000
# The error codes the LLM canister's rejects carry, by reject code.
_BY_CODE = {
    RejectCode.SYS_FATAL: "IC0101",
    RejectCode.SYS_TRANSIENT: "IC0201",
    RejectCode.DESTINATION_INVALID: CANISTER_NOT_FOUND,
    RejectCode.CANISTER_REJECT: EXPLICIT_REJECT,
    RejectCode.CANISTER_ERROR: CALLED_TRAP,
    RejectCode.SYS_UNKNOWN: "IC0604",
}


def limit_text(limit: int) -> str:
    """The IC's instruction-limit reject, and how to change the limit here."""
    return (
        f"Canister exceeded the limit of {limit} instructions for single message execution (Wasm "
        "instructions, and the IC's charge for each system API call and byte it copies; install with "
        f"instruction_limit= to change it, at most {MAX_INSTRUCTION_LIMIT})"
    )


def error_code_for(code: RejectCode) -> str:
    return _BY_CODE[RejectCode(code)]


class ModuleError(IcllmError, ValueError):
    """Bytes that cannot be installed as a canister: the message says what they are and what would do."""


class RuntimeUsageError(IcllmError, ValueError):
    """A call the runtime cannot make as asked: an unknown canister or method, arguments of the wrong type."""


class UnknownCanister(RuntimeUsageError):
    """A canister id that is not installed in this IC."""

    kind = ErrorKind.NOT_FOUND


class CanisterTrap(Exception):
    """Raised inside a host function to trap the running message, with the IC's error code."""

    def __init__(self, message: str, error_code: str = CALLED_TRAP) -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code


class CanisterReject(Exception):
    """A call to a canister that was rejected: the IC reject code (1-6), its message and error code.

    `code` is a `RejectCode` (an int); `error_code` is the replica's `IC0503`-style code where the IC has
    one, else None.
    """

    def __init__(self, code: RejectCode, message: str, error_code: str | None = None) -> None:
        self.code = RejectCode(code)
        self.message = message
        self.error_code = error_code
        suffix = f" [{error_code}]" if error_code else ""
        super().__init__(f"{self.code.name} ({int(self.code)}): {message}{suffix}")


def check_instruction_limit(limit: int) -> int:
    """A per-message instruction limit, or a `RuntimeUsageError` naming the valid range."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_INSTRUCTION_LIMIT:
        raise RuntimeUsageError(
            "instruction_limit is a number of Wasm instructions per message from 1 to "
            f"{MAX_INSTRUCTION_LIMIT} (the IC's limit for an update message), got {limit!r}"
        )
    return limit
