"""PocketIC's JSON, read and written exactly as its clients (pic-js, the `pocket-ic` crate and PyPI
package) parse it: principals and blobs as base64 of their raw bytes, cycles and nanoseconds as exact
integers, a reject as the crate's `RejectResponse` (reject code and error code by their enum names, as
the server's serde writes them), a caller's mistake as a 4xx `{"message": ...}`.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from icp_principal import Principal

from icllm_emulator.domain import RejectCode

# The PocketIC server version whose REST API this door speaks: what @dfinity/pic 0.23 targets, and
# what `--version` answers (the `pocket-ic` crate compares the whole line).
SERVER_VERSION = "14.0.0"

# The `pocket-ic` crate's `ErrorCode` enum: its JSON is the variant name, not "IC0503".
_ERROR_CODE_NAMES = {
    101: "SubnetOversubscribed",
    102: "MaxNumberOfCanistersReached",
    201: "CanisterQueueFull",
    202: "IngressMessageTimeout",
    203: "CanisterQueueNotEmpty",
    204: "IngressHistoryFull",
    205: "CanisterIdAlreadyExists",
    206: "StopCanisterRequestTimeout",
    207: "CanisterOutOfCycles",
    208: "CertifiedStateUnavailable",
    209: "CanisterInstallCodeRateLimited",
    210: "CanisterHeapDeltaRateLimited",
    301: "CanisterNotFound",
    305: "CanisterSnapshotNotFound",
    402: "InsufficientMemoryAllocation",
    403: "InsufficientCyclesForCreateCanister",
    404: "SubnetNotFound",
    405: "CanisterNotHostedBySubnet",
    406: "CanisterRejectedMessage",
    407: "UnknownManagementMessage",
    408: "InvalidManagementPayload",
    409: "CanisterSnapshotImmutable",
    502: "CanisterTrapped",
    503: "CanisterCalledTrap",
    504: "CanisterContractViolation",
    505: "CanisterInvalidWasm",
    506: "CanisterDidNotReply",
    507: "CanisterOutOfMemory",
    508: "CanisterStopped",
    509: "CanisterStopping",
    510: "CanisterNotStopped",
    511: "CanisterStoppingCancelled",
    512: "CanisterInvalidController",
    513: "CanisterFunctionNotFound",
    514: "CanisterNonEmpty",
    520: "InsufficientCyclesInCall",
    521: "CanisterWasmEngineError",
    522: "CanisterInstructionLimitExceeded",
    536: "CanisterMethodNotFound",
    537: "CanisterWasmModuleNotFound",
    538: "CanisterAlreadyInstalled",
    539: "CanisterWasmMemoryLimitExceeded",
    601: "DeadlineExpired",
    602: "ResponseDropped",
}
# An error code the crate's enum does not list (the runtime's own approximations) is written as the
# closest code of the same reject code, so every client can still parse the reject.
_FALLBACK_BY_REJECT = {1: 101, 2: 201, 3: 301, 4: 406, 5: 503, 6: 601}
_REJECT_CODE_NAMES = {
    RejectCode.SYS_FATAL: "SysFatal",
    RejectCode.SYS_TRANSIENT: "SysTransient",
    RejectCode.DESTINATION_INVALID: "DestinationInvalid",
    RejectCode.CANISTER_REJECT: "CanisterReject",
    RejectCode.CANISTER_ERROR: "CanisterError",
    RejectCode.SYS_UNKNOWN: "SysUnknown",
}


class BadRequest(Exception):
    """A request the door cannot serve as sent: answered with `status` and `{"message": ...}`."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def error_code_name(code: RejectCode, error_code: str | None) -> str:
    """The crate's `ErrorCode` variant for an `IC0503`-style code (or the reject code's usual one)."""
    number = None
    if error_code and error_code.startswith("IC") and error_code[2:].isdigit():
        number = int(error_code[2:])
    if number not in _ERROR_CODE_NAMES:
        number = _FALLBACK_BY_REJECT[int(code)]
    return _ERROR_CODE_NAMES[number]


def reject_json(code: RejectCode, message: str, error_code: str | None) -> dict[str, Any]:
    """A reject as `{"Err": RejectResponse}`: what `await_ingress_message` and `query` return."""
    return {
        "Err": {
            "reject_code": _REJECT_CODE_NAMES[RejectCode(code)],
            "reject_message": message,
            "error_code": error_code_name(code, error_code),
            "certified": True,
        }
    }


def reply_json(reply: bytes) -> dict[str, Any]:
    return {"Ok": b64(reply)}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def field(body: Any, name: str, kind: type | tuple[type, ...], where: str) -> Any:
    """`body[name]`, of the JSON type `kind`, or a 400 that says what was expected."""
    if not isinstance(body, dict):
        raise BadRequest(f"{where}: the body is a JSON object, got {type(body).__name__}")
    if name not in body:
        raise BadRequest(f"{where}: the field {name!r} is missing")
    value = body[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind)):
        wanted = " or ".join(k.__name__ for k in _kinds(kind))
        raise BadRequest(f"{where}: {name!r} is a {wanted}, got {type(value).__name__} {value!r:.60}")
    return value


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def blob(body: Any, name: str, where: str) -> bytes:
    """A base64 field's bytes; malformed base64 is a 400 naming the field."""
    text = field(body, name, str, where)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(
            f"{where}: {name!r} is not base64 (standard alphabet, padded): {text[:40]!r}"
        ) from None


def principal(body: Any, name: str, where: str) -> bytes:
    """A principal field (base64 of at most 29 raw bytes)."""
    raw = blob(body, name, where)
    if len(raw) > 29:
        raise BadRequest(f"{where}: {name!r} is {len(raw)} bytes; a principal has at most 29")
    return raw


def nat(body: Any, name: str, where: str, *, bits: int = 128) -> int:
    value = field(body, name, int, where)
    if not 0 <= value < 2**bits:
        raise BadRequest(f"{where}: {name!r} is a natural number below 2^{bits}, got {value}")
    return int(value)


def principal_text(raw: bytes) -> str:
    return str(Principal(bytes(raw)).to_str())


def effective_principal(value: Any, where: str) -> tuple[str, bytes | None]:
    """`"None"`, `{"SubnetId": b64}` or `{"CanisterId": b64}` as (kind, raw bytes)."""
    if value == "None" or value is None:
        return "None", None
    if isinstance(value, dict) and len(value) == 1:
        kind = next(iter(value))
        if kind in ("SubnetId", "CanisterId"):
            return kind, principal(value, kind, where)
    raise BadRequest(
        f'{where}: effective_principal is "None", {{"SubnetId": base64}} or {{"CanisterId": base64}}, '
        f"got {value!r:.80}"
    )


def effective_json(kind: str, raw: bytes | None) -> Any:
    return "None" if raw is None else {kind: b64(raw)}
