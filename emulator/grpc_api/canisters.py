"""The Canisters service: canister modules installed and called over gRPC, in the engine's runtime."""

from __future__ import annotations

import grpc

from icllm_emulator._proto.icllm.v1 import canisters_pb2 as pb
from icllm_emulator._proto.icllm.v1 import canisters_pb2_grpc
from icllm_emulator.billing import checked_cycles
from icllm_emulator.engine import Engine
from icllm_emulator.grpc_api.convert import BadRequest
from icllm_emulator.grpc_api.status import TRANSPORT_MAX_BYTES, larger_messages, principal_of, rpc
from icllm_emulator.runtime import CanisterReject, InstallSettings, RuntimeUsageError
from icllm_emulator.runtime.ic import DEFAULT_CYCLES, check_instruction_limit, principal_bytes

# A module up to 6 MiB travels in one Install request (below the server's 8 MiB transport limit); a larger
# one can be gzipped (the IC's limit is 100 MiB decompressed) or installed at start-up with --canister.
INSTALL_MAX_BYTES = TRANSPORT_MAX_BYTES - 2 * 1024 * 1024


class CanistersServicer(canisters_pb2_grpc.CanistersServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @rpc
    @larger_messages(INSTALL_MAX_BYTES)
    async def Install(
        self, request: pb.InstallRequest, context: grpc.aio.ServicerContext
    ) -> pb.InstallResponse:
        cycles = DEFAULT_CYCLES
        if request.HasField("cycles"):
            cycles = checked_cycles(request.cycles, "cycles", BadRequest)
        settings = InstallSettings(
            init_arg=request.init_arg or b"DIDL\0\0",
            env=tuple(sorted(request.env.items())),
            cycles=cycles,
            name=request.name,
            instruction_limit=request.instruction_limit if request.HasField("instruction_limit") else None,
        )
        if request.HasField("instruction_limit"):
            try:
                check_instruction_limit(request.instruction_limit)
            except RuntimeUsageError as error:
                raise BadRequest(str(error)) from None
        try:
            instance = await self.engine.runtime.install_async(request.wasm, settings)
        except CanisterReject as reject:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, reject.message)
        return pb.InstallResponse(canister_id=instance.id, candid=instance.candid or "")

    @rpc
    async def Call(
        self, request: pb.CanisterCallRequest, context: grpc.aio.ServicerContext
    ) -> pb.CanisterCallResponse:
        caller = principal_of(request.caller, "caller") if request.caller else None
        cycles = checked_cycles(request.cycles or "0", "cycles", BadRequest)
        principal_bytes(request.canister_id)
        try:
            reply = await self.engine.runtime.call(
                request.canister_id,
                request.method,
                request.arg,
                caller=caller,
                cycles=cycles,
                query=request.query,
            )
        except CanisterReject as reject:
            return pb.CanisterCallResponse(
                reject=pb.CanisterReject(
                    code=int(reject.code), message=reject.message, error_code=reject.error_code or ""
                )
            )
        return pb.CanisterCallResponse(reply=reply)

    @rpc
    async def GetLogs(
        self, request: pb.GetLogsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetLogsResponse:
        instance = self.engine.runtime.get(request.canister_id)
        return pb.GetLogsResponse(
            entries=[pb.LogEntry(time_ns=e.time_ns, text=e.text) for e in instance.logs]
        )

    @rpc
    async def ListCanisters(
        self, request: pb.ListCanistersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCanistersResponse:
        return pb.ListCanistersResponse(
            canisters=[
                pb.CanisterInfo(
                    canister_id=c.id,
                    name=c.name,
                    cycles=str(c.balance),
                    update_methods=c.update_methods,
                    query_methods=c.query_methods,
                )
                for c in self.engine.runtime.canisters.values()
            ]
        )

    @rpc
    async def Remove(self, request: pb.RemoveRequest, context: grpc.aio.ServicerContext) -> pb.RemoveResponse:
        self.engine.runtime.remove(request.canister_id)
        return pb.RemoveResponse()
