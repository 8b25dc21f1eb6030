"""The Canisters service: canister modules installed and called over gRPC, in the engine's runtime."""

from __future__ import annotations

import grpc

from icllm_emulator._proto.icllm.v1 import canisters_pb2 as pb
from icllm_emulator._proto.icllm.v1 import canisters_pb2_grpc
from icllm_emulator.billing import checked_cycles
from icllm_emulator.engine import Engine
from icllm_emulator.grpc_api.convert import BadRequest
from icllm_emulator.grpc_api.pages import ANSWER_BYTES, page, shortened
from icllm_emulator.grpc_api.status import TRANSPORT_MAX_BYTES, larger_messages, principal_of, rpc
from icllm_emulator.runtime import CanisterReject, InstallSettings
from icllm_emulator.runtime.ic import DEFAULT_CYCLES, principal_bytes
from icllm_emulator.runtime.instance import CanisterInstance, LogLine

# A module up to 6 MiB travels in one Install request (below the server's 8 MiB transport limit); a larger
# one can be gzipped (the IC's limit is 100 MiB decompressed) or installed at start-up with --canister.
INSTALL_MAX_BYTES = TRANSPORT_MAX_BYTES - 2 * 1024 * 1024
# A log line longer than this is cut (and marked) in GetLogs.
LOG_LINE_BYTES = 64 * 1024
# Each method name, and all of a canister's names together, in ListCanisters.
METHOD_NAME_BYTES = 4096
METHOD_NAMES_BYTES = ANSWER_BYTES // 2


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
        if request.HasField("instruction_limit") and request.instruction_limit < 1:
            raise BadRequest("instruction_limit is 1 or more Wasm instructions per message")
        try:
            instance = await self.engine.runtime.install_async(request.wasm, settings)
        except CanisterReject as reject:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, reject.message)
        candid, cut = shortened(instance.candid or "", ANSWER_BYTES)
        return pb.InstallResponse(canister_id=instance.id, candid=candid, candid_truncated=cut)

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
            message, cut = shortened(reject.message, ANSWER_BYTES)
            return pb.CanisterCallResponse(
                reject=pb.CanisterReject(
                    code=int(reject.code),
                    message=message,
                    error_code=reject.error_code or "",
                    message_truncated=cut,
                )
            )
        return pb.CanisterCallResponse(reply=reply)

    @rpc
    async def GetLogs(
        self, request: pb.GetLogsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetLogsResponse:
        instance = self.engine.runtime.get(request.canister_id)
        entries, token = page(instance.logs, log_entry_pb, request.page_token, request.page_size)
        return pb.GetLogsResponse(entries=entries, next_page_token=token)

    @rpc
    async def ListCanisters(
        self, request: pb.ListCanistersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCanistersResponse:
        canisters = list(self.engine.runtime.canisters.values())
        infos, token = page(canisters, canister_info_pb, request.page_token, request.page_size)
        return pb.ListCanistersResponse(canisters=infos, next_page_token=token)

    @rpc
    async def Remove(self, request: pb.RemoveRequest, context: grpc.aio.ServicerContext) -> pb.RemoveResponse:
        self.engine.runtime.remove(request.canister_id)
        return pb.RemoveResponse()


def log_entry_pb(line: LogLine) -> pb.LogEntry:
    text, cut = shortened(line.text, LOG_LINE_BYTES)
    return pb.LogEntry(time_ns=line.time_ns, text=text, truncated=cut)


def canister_info_pb(canister: CanisterInstance) -> pb.CanisterInfo:
    """A canister's entry; its method names cut short, or left out, past what an answer holds."""
    info = pb.CanisterInfo(
        canister_id=canister.id,
        name=shortened(canister.name, METHOD_NAME_BYTES)[0],
        cycles=str(canister.balance),
    )
    room = METHOD_NAMES_BYTES
    for names, kept in (
        (canister.update_methods, info.update_methods),
        (canister.query_methods, info.query_methods),
    ):
        for name in names:
            short, cut = shortened(name, METHOD_NAME_BYTES)
            room -= len(short.encode()) + 4
            if room < 0:
                info.methods_truncated = True
                break
            kept.append(short)
            info.methods_truncated |= cut
    return info
