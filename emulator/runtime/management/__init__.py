"""The management canister (`aaaaa-aa`) as the canister runtime serves it to canisters.

A canister's call arrives as Candid bytes: it is decoded with the interface specification's types
(`ic.did` beside this file), handed to `Lifecycle` (creation, installs, upgrades, stop/start, settings,
snapshots, logs) or `HttpOutcalls`, and the result encoded back. The calling canister is the sender
whose controllership is checked. `raw_rand` answers 32 bytes that are a pure function of the runtime's
seed, the calling canister and how many times it has asked, so randomness repeats from run to run.
A method the runtime does not serve (threshold signatures, Bitcoin, canister_info, ...) is rejected
with a message that names it.
"""

from __future__ import annotations

import functools
import hashlib
from collections import Counter
from collections.abc import Awaitable, Callable
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from icllm_emulator.domain import RejectCode
from icllm_emulator.runtime.errors import EXPLICIT_REJECT, CanisterReject, ModuleError, RuntimeUsageError
from icllm_emulator.runtime.ids import DEFAULT_CYCLES, principal_bytes
from icllm_emulator.runtime.management.http import HttpOutcalls, blob_reply, http_request_cost
from icllm_emulator.runtime.management.lifecycle import (
    CREATION_FEE,
    INSUFFICIENT_CYCLES,
    settings_change,
    upgrade_options,
)
from icllm_emulator.runtime.messages import Call, Response
from icllm_emulator.runtime.values import Interface

if TYPE_CHECKING:
    from icllm_emulator.runtime.ic import CanisterRuntime
    from icllm_emulator.runtime.instance import CanisterInstance

__all__ = ["EMULATED", "Management", "blob_reply", "http_request_cost", "management_interface"]


@functools.cache
def management_interface() -> Interface:
    did = files(__package__).joinpath("ic.did").read_text(encoding="utf-8")
    return Interface(did, "the management canister's interface (ic.did)")


Handler = Callable[["Management", "CanisterInstance", Call, Any], Awaitable[tuple[tuple[Any, ...], int]]]
_HANDLERS: dict[str, Handler] = {}


def _method(name: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        _HANDLERS[name] = handler
        return handler

    return register


class Management:
    """Serves a canister's calls to `aaaaa-aa`; state lives in the runtime's `Lifecycle`."""

    def __init__(self, runtime: CanisterRuntime) -> None:
        self.runtime = runtime
        self.http = HttpOutcalls(runtime)
        self._draws: Counter[bytes] = Counter()

    async def call(self, instance: CanisterInstance, call: Call) -> Response:
        if call.method == "http_request":
            return await self.http.http_request(instance, call)
        handler = _HANDLERS.get(call.method)
        if handler is None:
            return Response.rejected(
                RejectCode.CANISTER_REJECT,
                f"the management canister's method {call.method!r} is not emulated by the canister runtime "
                f"of pytest-icllm (it emulates {', '.join(EMULATED)})",
                EXPLICIT_REJECT,
                refund=call.cycles,
            )
        interface = management_interface()
        try:
            # raw_rand takes no argument and has always been served whatever bytes came with it
            decoded = () if call.method == "raw_rand" else interface.decode_call(call.method, bytes(call.arg))
            (arg,) = decoded or (None,)
        except (RuntimeUsageError, ValueError) as error:
            return Response.rejected(
                RejectCode.CANISTER_ERROR,
                f"Error decoding candid of {call.method!r} for the management canister: {error}",
                "IC0505",
                refund=call.cycles,
            )
        try:
            values, kept = await handler(self, instance, call, arg)
        except CanisterReject as reject:
            return Response.rejected(reject.code, reject.message, reject.error_code, refund=call.cycles)
        except (RuntimeUsageError, ModuleError) as error:  # a malformed principal, a module that fails
            return Response.rejected(
                RejectCode.CANISTER_ERROR, f"{call.method}: {error}", "IC0505", refund=call.cycles
            )
        return Response(reply=interface.encode_reply(call.method, values), refund=call.cycles - kept)

    @property
    def lifecycle(self) -> Any:
        return self.runtime.lifecycle


def _principal(text: str) -> bytes:
    return principal_bytes(text)


def _snapshot_value(snapshot: Any) -> dict[str, Any]:
    return {"id": snapshot.id, "taken_at_timestamp": snapshot.taken_at_ns, "total_size": snapshot.total_size}


@_method("raw_rand")
async def _raw_rand(
    m: Management, instance: CanisterInstance, call: Call, arg: Any
) -> tuple[tuple[Any, ...], int]:
    m._draws[instance.principal] += 1
    seed = f"{m.runtime.seed}:{m._draws[instance.principal]}".encode()
    return (hashlib.sha256(b"icllm raw_rand\0" + instance.principal + b"\0" + seed).digest(),), 0


@_method("create_canister")
async def _create(
    m: Management, instance: CanisterInstance, call: Call, arg: Any
) -> tuple[tuple[Any, ...], int]:
    if call.cycles < CREATION_FEE:
        raise CanisterReject(
            RejectCode.CANISTER_REJECT,
            f"Creating a canister requires a fee of {CREATION_FEE} that is deducted from the canister's "
            f"initial balance but only {call.cycles} cycles were received with the create_canister "
            "request.",
            INSUFFICIENT_CYCLES,
        )
    record = m.lifecycle.create(
        instance.principal,
        cycles=call.cycles - CREATION_FEE,
        settings=settings_change(arg.get("settings"), _principal),
    )
    return ({"canister_id": record.id},), call.cycles


@_method("provisional_create_canister_with_cycles")
async def _provisional(
    m: Management, instance: CanisterInstance, call: Call, arg: Any
) -> tuple[tuple[Any, ...], int]:
    specified = arg.get("specified_id")
    record = m.lifecycle.create(
        instance.principal,
        cycles=DEFAULT_CYCLES if arg.get("amount") is None else arg["amount"],
        settings=settings_change(arg.get("settings"), _principal),
        specified_id=None if specified is None else _principal(specified),
    )
    return ({"canister_id": record.id},), 0


@_method("provisional_top_up_canister")
async def _top_up(
    m: Management, instance: CanisterInstance, call: Call, arg: Any
) -> tuple[tuple[Any, ...], int]:
    m.lifecycle.deposit_cycles(_principal(arg["canister_id"]), arg["amount"])
    return (), 0


@_method("deposit_cycles")
async def _deposit(
    m: Management, instance: CanisterInstance, call: Call, arg: Any
) -> tuple[tuple[Any, ...], int]:
    m.lifecycle.deposit_cycles(_principal(arg["canister_id"]), call.cycles)
    return (), call.cycles


@_method("install_code")
async def _install(
    m: Management, instance: CanisterInstance, call: Call, arg: Any
) -> tuple[tuple[Any, ...], int]:
    mode, options = upgrade_options(arg["mode"])
    await m.lifecycle.install_code(
        instance.principal, _principal(arg["canister_id"]), arg["wasm_module"], arg["arg"], mode, options
    )
    return (), 0


@_method("install_chunked_code")
async def _install_chunked(
    m: Management, instance: CanisterInstance, call: Call, arg: Any
) -> tuple[tuple[Any, ...], int]:
    mode, options = upgrade_options(arg["mode"])
    store = arg.get("store_canister")
    await m.lifecycle.install_chunked_code(
        instance.principal,
        _principal(arg["target_canister"]),
        None if store is None else _principal(store),
        [c["hash"] for c in arg["chunk_hashes_list"]],
        arg["wasm_module_hash"],
        arg["arg"],
        mode,
        options,
    )
    return (), 0


@_method("upload_chunk")
async def _upload(
    m: Management, instance: CanisterInstance, call: Call, arg: Any
) -> tuple[tuple[Any, ...], int]:
    digest = m.lifecycle.upload_chunk(instance.principal, _principal(arg["canister_id"]), arg["chunk"])
    return ({"hash": digest},), 0


@_method("stored_chunks")
async def _stored(
    m: Management, instance: CanisterInstance, call: Call, arg: Any
) -> tuple[tuple[Any, ...], int]:
    hashes = m.lifecycle.stored_chunks(instance.principal, _principal(arg["canister_id"]))
    return ([{"hash": h} for h in hashes],), 0


@_method("clear_chunk_store")
async def _clear(
    m: Management, instance: CanisterInstance, call: Call, arg: Any
) -> tuple[tuple[Any, ...], int]:
    m.lifecycle.clear_chunk_store(instance.principal, _principal(arg["canister_id"]))
    return (), 0


@_method("uninstall_code")
async def _uninstall(
    m: Management, instance: CanisterInstance, call: Call, arg: Any
) -> tuple[tuple[Any, ...], int]:
    await m.lifecycle.uninstall_code(instance.principal, _principal(arg["canister_id"]))
    return (), 0


@_method("stop_canister")
async def _stop(
    m: Management, instance: CanisterInstance, call: Call, arg: Any
) -> tuple[tuple[Any, ...], int]:
    await m.lifecycle.stop(instance.principal, _principal(arg["canister_id"]))
    return (), 0


@_method("start_canister")
async def _start(
    m: Management, instance: CanisterInstance, call: Call, arg: Any
) -> tuple[tuple[Any, ...], int]:
    m.lifecycle.start(instance.principal, _principal(arg["canister_id"]))
    return (), 0


@_method("delete_canister")
async def _delete(
    m: Management, instance: CanisterInstance, call: Call, arg: Any
) -> tuple[tuple[Any, ...], int]:
    m.lifecycle.delete(instance.principal, _principal(arg["canister_id"]))
    return (), 0


@_method("canister_status")
async def _status(
    m: Management, instance: CanisterInstance, call: Call, arg: Any
) -> tuple[tuple[Any, ...], int]:
    return (m.lifecycle.status(instance.principal, _principal(arg["canister_id"])),), 0


@_method("update_settings")
async def _update(
    m: Management, instance: CanisterInstance, call: Call, arg: Any
) -> tuple[tuple[Any, ...], int]:
    change = settings_change(arg["settings"], _principal)
    m.lifecycle.update_settings(instance.principal, _principal(arg["canister_id"]), change)
    return (), 0


@_method("take_canister_snapshot")
async def _take(
    m: Management, instance: CanisterInstance, call: Call, arg: Any
) -> tuple[tuple[Any, ...], int]:
    principal = _principal(arg["canister_id"])
    snapshot = m.lifecycle.take_snapshot(instance.principal, principal, arg.get("replace_snapshot"))
    if arg.get("uninstall_code"):
        await m.lifecycle.uninstall_code(instance.principal, principal)
    return (_snapshot_value(snapshot),), 0


@_method("load_canister_snapshot")
async def _load(
    m: Management, instance: CanisterInstance, call: Call, arg: Any
) -> tuple[tuple[Any, ...], int]:
    await m.lifecycle.load_snapshot(instance.principal, _principal(arg["canister_id"]), arg["snapshot_id"])
    return (), 0


@_method("list_canister_snapshots")
async def _list(
    m: Management, instance: CanisterInstance, call: Call, arg: Any
) -> tuple[tuple[Any, ...], int]:
    snapshots = m.lifecycle.list_snapshots(instance.principal, _principal(arg["canister_id"]))
    return ([_snapshot_value(s) for s in snapshots],), 0


@_method("delete_canister_snapshot")
async def _delete_snapshot(
    m: Management, instance: CanisterInstance, call: Call, arg: Any
) -> tuple[tuple[Any, ...], int]:
    m.lifecycle.delete_snapshot(instance.principal, _principal(arg["canister_id"]), arg["snapshot_id"])
    return (), 0


@_method("fetch_canister_logs")
async def _logs(
    m: Management, instance: CanisterInstance, call: Call, arg: Any
) -> tuple[tuple[Any, ...], int]:
    records = m.lifecycle.fetch_logs(instance.principal, _principal(arg["canister_id"]))
    return ({"canister_log_records": records},), 0


EMULATED = tuple(sorted({*_HANDLERS, "http_request"}))
