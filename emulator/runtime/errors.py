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
METHOD_NOT_FOUND = "IC0536"
OUT_OF_CYCLES = "IC0207"
# The error codes the LLM canister's rejects carry, by reject code.
_BY_CODE = {
    RejectCode.SYS_FATAL: "IC0101",
    RejectCode.SYS_TRANSIENT: "IC0201",
    RejectCode.DESTINATION_INVALID: CANISTER_NOT_FOUND,
    RejectCode.CANISTER_REJECT: EXPLICIT_REJECT,
    RejectCode.CANISTER_ERROR: CALLED_TRAP,
    RejectCode.SYS_UNKNOWN: "IC0604",
}


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
