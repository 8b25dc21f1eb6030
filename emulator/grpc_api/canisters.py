"""The Canisters service: canister modules installed and called over gRPC, in the engine's runtime.

Thin servicers: each parses its request, asks the runtime (the management canister's `Lifecycle`, the
stand-ins, the fault book) and maps what the IC refuses to a status with the IC's reject code and error
code as trailing metadata.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

import grpc

from icllm_emulator._proto.icllm.v1 import canisters_pb2 as pb
from icllm_emulator._proto.icllm.v1 import canisters_pb2_grpc
from icllm_emulator.billing import checked_cycles
from icllm_emulator.domain import Reject, RejectCode
from icllm_emulator.engine import Engine
from icllm_emulator.grpc_api.convert import BadRequest
from icllm_emulator.grpc_api.pages import ANSWER_BYTES, page, shortened
from icllm_emulator.grpc_api.status import TRANSPORT_MAX_BYTES, larger_messages, principal_of, rpc
from icllm_emulator.rules import Hang, parse_reject_code
from icllm_emulator.runtime import CanisterReject, InstallSettings
from icllm_emulator.runtime import module as modules
from icllm_emulator.runtime.errors import RuntimeUsageError, UnknownCanister
from icllm_emulator.runtime.ids import (
    ANONYMOUS,
    DEFAULT_CYCLES,
    LLM_CANISTER_ID,
    principal_bytes,
    principal_text,
)
from icllm_emulator.runtime.instance import CanisterInstance, LogLine
from icllm_emulator.runtime.management.lifecycle import (
    InstallMode,
    Snapshot,
    UpgradeOptions,
    auto_persistence,
)
from icllm_emulator.runtime.standins import (
    Delay,
    Fault,
    FaultAction,
    StandIn,
    StandInAction,
    StandInCall,
    StandInRule,
    Trap,
    as_values,
)
from icllm_emulator.runtime.values import Interface, from_json, to_json

# A module up to 6 MiB travels in one Install request (below the server's 8 MiB transport limit); a larger
# one can be gzipped (the IC's limit is 100 MiB decompressed) or installed at start-up with --canister.
INSTALL_MAX_BYTES = TRANSPORT_MAX_BYTES - 2 * 1024 * 1024
# A log line longer than this is cut (and marked) in GetLogs.
LOG_LINE_BYTES = 64 * 1024
# Each method name, and all of a canister's names together, in ListCanisters.
METHOD_NAME_BYTES = 4096
METHOD_NAMES_BYTES = ANSWER_BYTES // 2
# A stand-in call's argument as JSON, and a rule's description, are cut past this.
STUB_TEXT_BYTES = 64 * 1024
REJECT_CODE_KEY = "icllm-reject-code"
ERROR_CODE_KEY = "icllm-error-code"
PERSISTENCE = {
    pb.WASM_MEMORY_PERSISTENCE_KEEP: "keep",
    pb.WASM_MEMORY_PERSISTENCE_REPLACE: "replace",
    pb.WASM_MEMORY_PERSISTENCE_NOT_GIVEN: None,
}


async def refused(context: grpc.aio.ServicerContext, reject: CanisterReject) -> NoReturn:
    """What the IC refused, as a status: NOT_FOUND for what does not exist, else FAILED_PRECONDITION;
    the IC's reject code and error code travel as trailing metadata."""
    status = (
        grpc.StatusCode.NOT_FOUND
        if reject.code is RejectCode.DESTINATION_INVALID
        else grpc.StatusCode.FAILED_PRECONDITION
    )
    trailing = ((REJECT_CODE_KEY, str(int(reject.code))), (ERROR_CODE_KEY, reject.error_code or ""))
    await context.abort(status, shortened(reject.message, ANSWER_BYTES)[0], trailing_metadata=trailing)
    raise AssertionError("abort returns only by raising")


def sender_of(caller: str) -> bytes:
    """Who asks the management canister: the anonymous principal (the harness) unless named."""
    return principal_bytes(caller, "caller") if caller else ANONYMOUS


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
        controllers = tuple(principal_bytes(c, "controller") for c in request.controllers)
        settings = InstallSettings(
            init_arg=request.init_arg or b"DIDL\0\0",
            env=tuple(sorted(request.env.items())),
            cycles=cycles,
            name=request.name,
            instruction_limit=request.instruction_limit if request.HasField("instruction_limit") else None,
            canister_id=principal_bytes(request.canister_id) if request.HasField("canister_id") else None,
            controllers=controllers,
        )
        if request.HasField("instruction_limit") and request.instruction_limit < 1:
            raise BadRequest("instruction_limit is 1 or more Wasm instructions per message")
        try:
            instance = await self.engine.runtime.install_async(request.wasm, settings)
        except CanisterReject as reject:
            await refused(context, reject)
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

    # -- the management canister ----------------------------------------------------------------

    @rpc
    @larger_messages(INSTALL_MAX_BYTES)
    async def Upgrade(
        self, request: pb.UpgradeRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpgradeResponse:
        raw = self._module(request.canister_id, request.wasm)
        if request.wasm_memory_persistence == pb.WASM_MEMORY_PERSISTENCE_AUTO:
            persistence = auto_persistence(modules.inspect(raw))
        elif request.wasm_memory_persistence in PERSISTENCE:
            persistence = PERSISTENCE[request.wasm_memory_persistence]
        else:
            raise BadRequest(
                f"wasm_memory_persistence {request.wasm_memory_persistence} is not a WasmMemoryPersistence; "
                f"valid: {', '.join(pb.WasmMemoryPersistence.keys())}"
            )
        options = UpgradeOptions(request.skip_pre_upgrade, persistence)
        instance = await self._install(context, request, raw, request.arg, InstallMode.UPGRADE, options)
        candid, cut = shortened(instance.candid or "", ANSWER_BYTES)
        return pb.UpgradeResponse(candid=candid, candid_truncated=cut)

    @rpc
    @larger_messages(INSTALL_MAX_BYTES)
    async def Reinstall(
        self, request: pb.ReinstallRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReinstallResponse:
        raw = self._module(request.canister_id, request.wasm)
        instance = await self._install(
            context, request, raw, request.init_arg, InstallMode.REINSTALL, UpgradeOptions()
        )
        candid, cut = shortened(instance.candid or "", ANSWER_BYTES)
        return pb.ReinstallResponse(candid=candid, candid_truncated=cut)

    def _module(self, canister_id: str, wasm: bytes) -> bytes:
        """The module given (checked now, so that bytes that are not Wasm are INVALID_ARGUMENT), or
        the installed one."""
        if wasm:
            raw = modules.unpack(wasm, "the wasm")
            modules.inspect(raw)
            return raw
        installed = self.engine.runtime.record(canister_id).wasm
        if installed is None:
            raise RuntimeUsageError(f"{canister_id} has no module installed: give the wasm")
        return installed

    async def _install(
        self,
        context: grpc.aio.ServicerContext,
        request: pb.UpgradeRequest | pb.ReinstallRequest,
        raw: bytes,
        arg: bytes,
        mode: InstallMode,
        options: UpgradeOptions,
    ) -> CanisterInstance:
        lifecycle = self.engine.runtime.lifecycle
        try:
            return await lifecycle.install_code(
                sender_of(request.caller),
                principal_bytes(request.canister_id),
                raw,
                arg or b"DIDL\0\0",
                mode,
                options,
            )
        except CanisterReject as reject:
            await refused(context, reject)

    @rpc
    async def Stop(self, request: pb.StopRequest, context: grpc.aio.ServicerContext) -> pb.StopResponse:
        lifecycle = self.engine.runtime.lifecycle
        try:
            await lifecycle.stop(sender_of(request.caller), principal_bytes(request.canister_id))
        except CanisterReject as reject:
            await refused(context, reject)
        return pb.StopResponse()

    @rpc
    async def Start(self, request: pb.StartRequest, context: grpc.aio.ServicerContext) -> pb.StartResponse:
        lifecycle = self.engine.runtime.lifecycle
        try:
            lifecycle.start(sender_of(request.caller), principal_bytes(request.canister_id))
        except CanisterReject as reject:
            await refused(context, reject)
        return pb.StartResponse()

    @rpc
    async def Delete(self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext) -> pb.DeleteResponse:
        lifecycle = self.engine.runtime.lifecycle
        try:
            cycles = lifecycle.delete(sender_of(request.caller), principal_bytes(request.canister_id))
        except CanisterReject as reject:
            await refused(context, reject)
        return pb.DeleteResponse(cycles=str(cycles))

    @rpc
    async def Status(self, request: pb.StatusRequest, context: grpc.aio.ServicerContext) -> pb.StatusResponse:
        lifecycle = self.engine.runtime.lifecycle
        try:
            status = lifecycle.status(sender_of(request.caller), principal_bytes(request.canister_id))
        except CanisterReject as reject:
            await refused(context, reject)
        settings = status["settings"]
        ((visibility, viewers),) = settings["log_visibility"].items()
        return pb.StatusResponse(
            status=next(iter(status["status"])),
            module_hash=status["module_hash"] or b"",
            controllers=settings["controllers"],
            cycles=str(status["cycles"]),
            memory_size=status["memory_size"],
            version=status["version"],
            settings=pb.CanisterSettings(
                controllers=settings["controllers"],
                environment_variables={e["name"]: e["value"] for e in settings["environment_variables"]},
                compute_allocation=settings["compute_allocation"],
                memory_allocation=settings["memory_allocation"],
                freezing_threshold=settings["freezing_threshold"],
                reserved_cycles_limit=settings["reserved_cycles_limit"],
                log_visibility=visibility,
                log_viewers=viewers or [],
                wasm_memory_limit=settings["wasm_memory_limit"],
                wasm_memory_threshold=settings["wasm_memory_threshold"],
            ),
        )

    @rpc
    async def TakeSnapshot(
        self, request: pb.TakeSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> pb.TakeSnapshotResponse:
        lifecycle = self.engine.runtime.lifecycle
        try:
            taken = lifecycle.take_snapshot(
                sender_of(request.caller),
                principal_bytes(request.canister_id),
                request.replace_snapshot_id or None,
            )
        except CanisterReject as reject:
            await refused(context, reject)
        return pb.TakeSnapshotResponse(snapshot=snapshot_pb(taken))

    @rpc
    async def LoadSnapshot(
        self, request: pb.LoadSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> pb.LoadSnapshotResponse:
        lifecycle = self.engine.runtime.lifecycle
        try:
            await lifecycle.load_snapshot(
                sender_of(request.caller), principal_bytes(request.canister_id), request.snapshot_id
            )
        except CanisterReject as reject:
            await refused(context, reject)
        return pb.LoadSnapshotResponse()

    @rpc
    async def ListSnapshots(
        self, request: pb.ListSnapshotsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSnapshotsResponse:
        lifecycle = self.engine.runtime.lifecycle
        try:
            found = lifecycle.list_snapshots(sender_of(request.caller), principal_bytes(request.canister_id))
        except CanisterReject as reject:
            await refused(context, reject)
        return pb.ListSnapshotsResponse(snapshots=[snapshot_pb(s) for s in found])

    @rpc
    async def DeleteSnapshot(
        self, request: pb.DeleteSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteSnapshotResponse:
        lifecycle = self.engine.runtime.lifecycle
        try:
            lifecycle.delete_snapshot(
                sender_of(request.caller), principal_bytes(request.canister_id), request.snapshot_id
            )
        except CanisterReject as reject:
            await refused(context, reject)
        return pb.DeleteSnapshotResponse()

    # -- stand-ins and faults ---------------------------------------------------------------------

    @rpc
    async def CreateStub(
        self, request: pb.CreateStubRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateStubResponse:
        interface = Interface(request.did, "the stand-in's did")
        standin = self.engine.runtime.stub(request.canister_id, interface)
        return pb.CreateStubResponse(canister_id=standin.id, methods=sorted(interface.methods))

    @rpc
    async def AddStubRules(
        self, request: pb.AddStubRulesRequest, context: grpc.aio.ServicerContext
    ) -> pb.AddStubRulesResponse:
        standin = self._standin(request.canister_id)
        rules = [
            StandInRule(rule.method, stub_action(standin, rule, f"rules[{i}]"), _times(rule))
            for i, rule in enumerate(request.rules)
        ]  # every rule checked before any is added
        return pb.AddStubRulesResponse(rule_ids=[standin.add(rule).id for rule in rules])

    @rpc
    async def HoldStub(
        self, request: pb.HoldStubRequest, context: grpc.aio.ServicerContext
    ) -> pb.HoldStubResponse:
        self._standin(request.canister_id).hold(request.enabled)
        return pb.HoldStubResponse()

    @rpc
    async def ReleaseStubCalls(
        self, request: pb.ReleaseStubCallsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReleaseStubCallsResponse:
        standin = self._standin(request.canister_id)
        released = standin.release(tuple(request.call_ids) or None)
        return pb.ReleaseStubCallsResponse(call_ids=released)

    @rpc
    async def ListStubCalls(
        self, request: pb.ListStubCallsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListStubCallsResponse:
        standin = self._standin(request.canister_id)
        calls, token = page(
            standin.calls, lambda call: stub_call_pb(standin, call), request.page_token, request.page_size
        )
        uses = [
            pb.StubRuleUse(
                id=state.rule.id,
                description=shortened(state.rule.describe(), STUB_TEXT_BYTES)[0],
                uses=state.uses,
            )
            for state in standin.states
        ]
        return pb.ListStubCallsResponse(calls=calls, next_page_token=token, rules=uses)

    @rpc
    async def AddFaults(
        self, request: pb.AddFaultsRequest, context: grpc.aio.ServicerContext
    ) -> pb.AddFaultsResponse:
        faults = [fault_of(given, f"faults[{i}]") for i, given in enumerate(request.faults)]
        book = self.engine.runtime.faults
        return pb.AddFaultsResponse(fault_ids=[book.add(fault).id for fault in faults])

    def _standin(self, canister_id: str) -> StandIn:
        runtime = self.engine.runtime
        standin = runtime.standins.get(principal_bytes(canister_id))
        if standin is None:
            known = ", ".join(s.id for s in runtime.standins.values()) or "none"
            raise UnknownCanister(
                f"no stand-in is at {canister_id} (stand-ins: {known}); make one with CreateStub"
            )
        return standin


def _times(rule: pb.StubRule | pb.Fault) -> int | None:
    return rule.times if rule.HasField("times") else None


def _reject(given: pb.ScriptedReject) -> Reject:
    return Reject(parse_reject_code(given.code), given.message)


def stub_action(standin: StandIn, rule: pb.StubRule, where: str) -> StandInAction:
    """What a stand-in's rule does, checked against its interface (a reply that does not fit is refused)."""
    which = rule.WhichOneof("action")
    if which == "reply_json":
        declared = standin.method(rule.method)
        try:
            given = json.loads(rule.reply_json)
        except json.JSONDecodeError as error:
            raise BadRequest(f"{where}.reply_json is not JSON: {error}") from None
        values = from_json(declared.rets, given, f"{where}.reply_json (the results of {rule.method!r})")
        return standin.reply_values(rule.method, values[0] if len(values) == 1 else (values or None))
    if which == "reject":
        return _reject(rule.reject)
    if which == "trap":
        return Trap(rule.trap)
    if which == "hang":
        return Hang()
    raise BadRequest(f"{where} has no action: give reply_json, reject, trap or hang")


def fault_of(given: pb.Fault, where: str) -> Fault:
    callee = principal_text(principal_bytes(given.callee, f"{where}.callee")) if given.callee else None
    if callee == LLM_CANISTER_ID:
        raise BadRequest(
            f"{where}: calls to the LLM canister are scripted with Control.AddRules (reject, hang, delay), "
            "not with faults"
        )
    caller = principal_text(principal_bytes(given.caller, f"{where}.caller")) if given.caller else None
    which = given.WhichOneof("action")
    action: FaultAction
    if which == "reject":
        action = _reject(given.reject)
    elif which == "hang":
        action = Hang()
    elif which == "delay_seconds":
        action = Delay(given.delay_seconds)
    else:
        raise BadRequest(f"{where} has no action: give reject, hang or delay_seconds")
    return Fault(action, callee, given.method or None, caller, _times(given))


def stub_call_pb(standin: StandIn, call: StandInCall) -> pb.StubCall:
    arg: Any = None
    declared = standin.interface.methods.get(call.method)
    if declared is not None and not (call.unexpected and call.arg is None and declared.args):
        arg = to_json(as_values(declared.args, call.arg, "the argument"))
    text, cut = shortened(json.dumps(arg), STUB_TEXT_BYTES)
    return pb.StubCall(
        id=call.id,
        method=call.method,
        arg_json=text,
        caller=call.caller,
        cycles=str(call.cycles),
        rule_id=call.rule_id,
        outcome=shortened(call.outcome, STUB_TEXT_BYTES)[0],
        unexpected=call.unexpected,
        arg_truncated=cut,
    )


def snapshot_pb(snapshot: Snapshot) -> pb.SnapshotInfo:
    return pb.SnapshotInfo(id=snapshot.id, taken_at_ns=snapshot.taken_at_ns, total_size=snapshot.total_size)


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
