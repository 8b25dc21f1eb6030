"""How a canister in the runtime reaches the LLM canister: the engine in-process, or an emulator over gRPC.

Both give the runtime the same `LlmCall`: Candid in, a `Response` out (reply bytes or a reject with its
IC code, and the cycles refunded). In-process it is `Engine.call_candid`, the function the gRPC
`CallCandid` door runs, so the two cannot drift; against an emulator process it is that door itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from icllm_emulator.billing import Receipt
from icllm_emulator.domain import Reject, RejectCode
from icllm_emulator.runtime.errors import error_code_for
from icllm_emulator.runtime.ic import LlmCall
from icllm_emulator.runtime.messages import Response

CallCandid = Callable[..., Awaitable[bytes]]


def in_process(call_candid: CallCandid) -> LlmCall:
    """Calls go to `Engine.call_candid`; a canister's own bounded wait decides how long it waits."""

    async def llm(method: str, arg: bytes, caller: str, cycles: int) -> Response:
        receipt = Receipt(attached=cycles)
        try:
            reply = await call_candid(method, arg, caller, cycles, receipt, deadline=None)
        except Reject as reject:
            return Response.rejected(
                reject.code, reject.message, error_code_for(reject.code), receipt.refunded
            )
        return Response(reply=reply, refund=receipt.refunded)

    return llm


class OverGrpc:
    """Calls go to `LlmCanister.CallCandid` of an emulator process (the plugin's --icllm-url)."""

    def __init__(self, target: str) -> None:
        from icllm_emulator._proto.icllm.v1 import canister_pb2_grpc

        self.target = target
        self._channel = grpc.aio.insecure_channel(target)
        self._stub: Any = canister_pb2_grpc.LlmCanisterStub(self._channel)

    async def __call__(self, method: str, arg: bytes, caller: str, cycles: int) -> Response:
        from icllm_emulator._proto.icllm.v1 import canister_pb2 as pb
        from icllm_emulator.grpc_api.status import CALLER_KEY, CYCLES_KEY, REFUNDED_KEY, REJECT_CODE_KEY

        call = self._stub.CallCandid(
            pb.CallCandidRequest(method=method, arg=arg),
            metadata=((CALLER_KEY, caller), (CYCLES_KEY, str(cycles))),
        )
        try:
            response = await call
        except grpc.aio.AioRpcError as error:
            trailing = dict(error.trailing_metadata() or ())
            refund = int(str(trailing.get(REFUNDED_KEY, cycles)))
            code = trailing.get(REJECT_CODE_KEY)
            if code is not None:
                reject_code = RejectCode(int(str(code)))
                return Response.rejected(
                    reject_code, error.details() or "", error_code_for(reject_code), refund
                )
            return Response.rejected(
                RejectCode.SYS_TRANSIENT,
                f"the emulator at {self.target} answered {error.code().name}: {error.details()}",
                refund=refund,
            )
        trailing = dict(await call.trailing_metadata() or ())
        return Response(reply=bytes(response.reply), refund=int(str(trailing.get(REFUNDED_KEY, 0))))

    async def close(self) -> None:
        await self._channel.close()
