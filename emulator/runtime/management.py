"""The management canister (`aaaaa-aa`) as the canister runtime serves it.

`raw_rand` answers 32 bytes that are a pure function of the runtime's seed, the calling canister and
how many times it has asked, so a canister's randomness repeats from run to run. Every other method
is rejected with a message that names it: the runtime does not pretend to create canisters, sign or
fetch URLs.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import TYPE_CHECKING

from emulator.domain import RejectCode
from emulator.runtime.errors import EXPLICIT_REJECT
from emulator.runtime.messages import Call, Response

if TYPE_CHECKING:
    from emulator.runtime.ic import CanisterRuntime
    from emulator.runtime.instance import CanisterInstance

# `(blob)` in Candid: a type table of one `vec nat8`, one argument of that type, then the bytes.
_BLOB_PREFIX = b"DIDL\x01\x6d\x7b\x01\x00"
EMULATED = ("raw_rand",)
# The IC's published price of an HTTP outcall on a 13-node subnet (n = 13):
# (3_000_000 + 60_000 n) n + 400 n per request byte + 800 n per byte of max_response_bytes.
_SUBNET_NODES = 13
DEFAULT_MAX_RESPONSE_BYTES = 2_000_000


def http_request_cost(request_bytes: int, max_response_bytes: int | None) -> int:
    n = _SUBNET_NODES
    response = DEFAULT_MAX_RESPONSE_BYTES if max_response_bytes is None else max_response_bytes
    return (3_000_000 + 60_000 * n) * n + 400 * n * request_bytes + 800 * n * response


def blob_reply(data: bytes) -> bytes:
    size = len(data)
    leb = bytearray()
    while True:
        byte = size & 0x7F
        size >>= 7
        leb.append(byte | (0x80 if size else 0))
        if not size:
            break
    return _BLOB_PREFIX + bytes(leb) + data


class Management:
    def __init__(self, runtime: CanisterRuntime) -> None:
        self.runtime = runtime
        self._draws: Counter[bytes] = Counter()

    async def call(self, instance: CanisterInstance, call: Call) -> Response:
        if call.method == "raw_rand":
            self._draws[instance.principal] += 1
            seed = f"{self.runtime.seed}:{self._draws[instance.principal]}".encode()
            data = hashlib.sha256(b"icllm raw_rand\0" + instance.principal + b"\0" + seed).digest()
            return Response(reply=blob_reply(data), refund=call.cycles)
        return Response.rejected(
            RejectCode.CANISTER_REJECT,
            f"the management canister's method {call.method!r} is not emulated by the canister runtime of "
            f"pytest-icllm (it emulates {', '.join(EMULATED)})",
            EXPLICIT_REJECT,
            refund=call.cycles,
        )
