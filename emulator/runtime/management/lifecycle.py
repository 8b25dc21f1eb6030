"""The life of a canister as the management canister runs it: create, install, upgrade, stop, snapshot.

Each operation is a plain async method of `Lifecycle` that takes the sender (the principal asking, which
must be a controller of the canister) and raises `CanisterReject` with the IC's reject code, message and
error code when the IC would refuse. The management canister's Candid door (`management.Management`),
the pytest fixture and a gRPC door call the same methods, so a test, a canister and a harness in another
language meet the same rules.

A canister's record (`CanisterRecord`) lives from its creation to its deletion; its module, when one is
installed, is a `CanisterInstance` in `runtime.canisters`. An upgrade runs `canister_pre_upgrade` on the
old instance, builds a new one with the stable memory (and, with `wasm_memory_persistence = keep`, the
heap), and runs `canister_post_upgrade`: a trap anywhere puts the old instance back as it was.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import wasmtime

from icllm_emulator.domain import RejectCode
from icllm_emulator.runtime import module as modules
from icllm_emulator.runtime.errors import (
    CANISTER_NOT_FOUND,
    CanisterReject,
    ModuleError,
    error_code_for,
)
from icllm_emulator.runtime.ids import principal_text
from icllm_emulator.runtime.instance import CanisterInstance, Image, LogLine
from icllm_emulator.runtime.messages import Message, MessageKind, Response

if TYPE_CHECKING:
    from icllm_emulator.runtime.ic import CanisterRuntime

# The IC's error codes for the management canister's refusals (from the replica's ErrorCode; the ones
# marked * are written from memory, unverified against a replica).
CANISTER_STOPPED = "IC0508"
CANISTER_STOPPING = "IC0509"
CANISTER_NOT_STOPPED = "IC0510"  # *
INVALID_CONTROLLER = "IC0512"
CANISTER_NON_EMPTY = "IC0538"  # *
CANISTER_CONTRACT_VIOLATION = "IC0504"  # *
CANISTER_WASM_MODULE_NOT_FOUND = "IC0537"
INSUFFICIENT_CYCLES = "IC0207"
CANISTER_ALREADY_INSTALLED = "IC0302"  # * a specified_id that is taken
SNAPSHOT_NOT_FOUND = "IC0412"  # *
SNAPSHOT_LIMIT = "IC0413"  # *
INVALID_ARGUMENT = "IC0505"  # *
STOP_TIMED_OUT = "IC0513"  # *

# What creating a canister costs on a 13-node subnet, taken from the cycles sent with create_canister.
CREATION_FEE = 500_000_000_000
# The IC's defaults for a new canister's settings.
DEFAULT_FREEZING_THRESHOLD = 2_592_000
DEFAULT_RESERVED_CYCLES_LIMIT = 5_000_000_000_000
DEFAULT_WASM_MEMORY_LIMIT = 3 * 1024**3
MAX_CONTROLLERS = 10
MAX_CHUNK_BYTES = 1024 * 1024
MAX_CHUNKS = 100
MAX_SNAPSHOTS = 10
# A stop_canister that waits this long (the IC's five minutes, on the engine's clock) is rejected.
STOP_TIMEOUT_S = 300.0
# Canisters one runtime holds: a factory that creates canisters in a loop meets this limit by name.
MAX_CANISTERS = 1000
# The custom section by which moc marks a module that needs its heap kept across upgrades.
EOP_SECTION = "enhanced-orthogonal-persistence"


class Status(enum.StrEnum):
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class InstallMode(enum.StrEnum):
    INSTALL = "install"
    REINSTALL = "reinstall"
    UPGRADE = "upgrade"


@dataclass(frozen=True, slots=True)
class Settings:
    """A canister's settings beside its controllers and environment variables (kept on the record)."""

    compute_allocation: int = 0
    memory_allocation: int = 0
    freezing_threshold: int = DEFAULT_FREEZING_THRESHOLD
    reserved_cycles_limit: int = DEFAULT_RESERVED_CYCLES_LIMIT
    log_visibility: str | tuple[bytes, ...] = "controllers"  # "controllers", "public" or viewers
    wasm_memory_limit: int = DEFAULT_WASM_MEMORY_LIMIT
    wasm_memory_threshold: int = 0


@dataclass(frozen=True, slots=True)
class SettingsChange:
    """What `update_settings` (or a creation) asks to change; None leaves a setting as it is."""

    controllers: tuple[bytes, ...] | None = None
    environment_variables: tuple[tuple[str, str], ...] | None = None
    compute_allocation: int | None = None
    memory_allocation: int | None = None
    freezing_threshold: int | None = None
    reserved_cycles_limit: int | None = None
    log_visibility: str | tuple[bytes, ...] | None = None
    wasm_memory_limit: int | None = None
    wasm_memory_threshold: int | None = None


@dataclass(frozen=True, slots=True)
class UpgradeOptions:
    skip_pre_upgrade: bool = False
    wasm_memory_persistence: str | None = None  # None, "keep" or "replace"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A canister snapshot: its module and the state beside it, at a time."""

    id: bytes
    taken_at_ns: int
    wasm: bytes
    image: Image
    chunks: tuple[tuple[bytes, bytes], ...]

    @property
    def total_size(self) -> int:
        image = self.image
        return len(self.wasm) + len(image.heap) + len(image.stable) + sum(len(c) for _, c in self.chunks)


@dataclass(eq=False)
class CanisterRecord:
    """What the IC keeps of a canister whether or not a module is installed."""

    principal: bytes
    id: str
    controllers: frozenset[bytes]
    balance: int
    env: dict[str, str]
    settings: Settings = Settings()
    status: Status = Status.RUNNING
    wasm: bytes | None = None  # the installed module's raw bytes
    module_hash: bytes | None = None
    version: int = 0
    chunks: dict[bytes, bytes] = field(default_factory=dict)
    snapshots: dict[bytes, Snapshot] = field(default_factory=dict)
    logs: list[LogLine] = field(default_factory=list)
    stop_waiters: list[asyncio.Future[None]] = field(default_factory=list)
    snapshot_counter: int = 0


def reject(code: RejectCode, message: str, error_code: str | None = None) -> CanisterReject:
    return CanisterReject(code, message, error_code or error_code_for(code))


class Lifecycle:
    """The records of one runtime's canisters and the management operations on them."""

    def __init__(self, runtime: CanisterRuntime) -> None:
        self.runtime = runtime
        self.records: dict[bytes, CanisterRecord] = {}
        # Canisters installed for a whole test session: a reset between tests keeps them.
        self.pinned: set[bytes] = set()

    def set_aside_pinned(self) -> list[tuple[CanisterRecord, CanisterInstance | None]]:
        """Take the session's canisters out of the runtime before a reset; their calls in flight end."""
        kept = []
        for principal in sorted(self.pinned):
            record = self.records.get(principal)
            if record is None:
                continue
            instance = self.runtime.canisters.pop(principal, None)
            if instance is not None:
                self.runtime.set_aside(instance, "reset between tests")
            kept.append((record, instance))
        return kept

    def put_back_pinned(self, kept: list[tuple[CanisterRecord, CanisterInstance | None]]) -> None:
        """After a reset: the session's canisters, running again, their state as the last test left it."""
        for record, instance in kept:
            for waiter in record.stop_waiters:
                waiter.cancel()
            record.stop_waiters.clear()
            record.status = Status.RUNNING
            self.records[record.principal] = record
            self.pinned.add(record.principal)
            if instance is not None:
                self.runtime.canisters[record.principal] = instance

    # -- looking up ---------------------------------------------------------------------------------

    def record(self, principal: bytes) -> CanisterRecord:
        found = self.records.get(principal)
        if found is None:
            raise reject(
                RejectCode.DESTINATION_INVALID,
                f"Canister {principal_text(principal)} not found",
                CANISTER_NOT_FOUND,
            )
        return found

    def controlled(self, principal: bytes, sender: bytes) -> CanisterRecord:
        """The canister's record, if `sender` controls it (else the IC's IC0512 reject)."""
        record = self.record(principal)
        if sender not in self._controllers(record):
            controllers = " ".join(sorted(principal_text(c) for c in self._controllers(record)))
            raise reject(
                RejectCode.CANISTER_ERROR,
                f"Only the controllers of the canister {record.id} can control it.\n"
                f"Canister's controllers: {controllers or '(none)'}\n"
                f"Sender's ID: {principal_text(sender)}",
                INVALID_CONTROLLER,
            )
        return record

    def _controllers(self, record: CanisterRecord) -> frozenset[bytes]:
        return record.controllers

    def instance(self, record: CanisterRecord) -> CanisterInstance | None:
        return self.runtime.canisters.get(record.principal)

    def admit(self, principal: bytes) -> Response | None:
        """None if the canister takes new calls, else the IC's reject for a stopping or stopped one."""
        record = self.records.get(principal)
        if record is None or record.status is Status.RUNNING:
            return None
        if record.status is Status.STOPPING:
            return Response.rejected(
                RejectCode.CANISTER_ERROR, f"Canister {record.id} is stopping", CANISTER_STOPPING
            )
        return Response.rejected(
            RejectCode.CANISTER_ERROR, f"Canister {record.id} is stopped", CANISTER_STOPPED
        )

    def empty_reject(self, principal: bytes) -> Response | None:
        """The IC's reject for a call to a canister that exists without a module (None if none such)."""
        record = self.records.get(principal)
        if record is None or principal in self.runtime.canisters:
            return None
        return Response.rejected(
            RejectCode.DESTINATION_INVALID,
            f"Error from Canister {record.id}: Attempted to execute a message, but the canister contains "
            "no Wasm module.",
            CANISTER_WASM_MODULE_NOT_FOUND,
        )

    def context_ended(self, instance: CanisterInstance) -> None:
        """A call to the canister ended: a stopping canister with none left open becomes stopped."""
        record = self.records.get(instance.principal)
        if record is not None and record.status is Status.STOPPING and not instance.open_contexts:
            self._stopped(record)

    # -- creation -------------------------------------------------------------------------------------

    def create(
        self,
        sender: bytes,
        *,
        cycles: int,
        settings: SettingsChange = SettingsChange(),
        specified_id: bytes | None = None,
    ) -> CanisterRecord:
        """A new empty canister; its controllers are the sender unless the settings say otherwise."""
        if len(self.records) >= MAX_CANISTERS:
            raise reject(
                RejectCode.SYS_TRANSIENT,
                f"the canister runtime holds at most {MAX_CANISTERS} canisters, and this IC has "
                f"{len(self.records)}: a canister that creates canisters in a loop stops here",
                "IC0201",
            )
        if specified_id is not None:
            principal = specified_id
            if principal in self.runtime.standins:
                raise reject(
                    RejectCode.CANISTER_ERROR,
                    f"The canister id {principal_text(principal)} is held by a stand-in scripted from the "
                    "test; give another specified_id, or make the stand-in at another principal",
                    CANISTER_ALREADY_INSTALLED,
                )
            if principal in self.records:
                raise reject(
                    RejectCode.CANISTER_ERROR,
                    f"The canister {principal_text(principal)} is already installed (give another "
                    "specified_id, or none for the next free id)",
                    CANISTER_ALREADY_INSTALLED,
                )
        else:
            principal = self.runtime.next_id()
        record = CanisterRecord(
            principal=principal,
            id=principal_text(principal),
            controllers=frozenset({sender}),
            balance=cycles,
            env={},
        )
        self._apply(record, settings)
        self.records[principal] = record
        return record

    # -- installing -----------------------------------------------------------------------------------

    async def install_code(
        self,
        sender: bytes,
        principal: bytes,
        wasm: bytes,
        arg: bytes,
        mode: InstallMode,
        options: UpgradeOptions = UpgradeOptions(),
        *,
        name: str = "",
        instruction_limit: int | None = None,
    ) -> CanisterInstance:
        """Install, reinstall or upgrade a canister's module; a trap leaves the canister as it was."""
        record = self.controlled(principal, sender)
        try:
            raw = modules.unpack(wasm, "the wasm_module")
            # an upgrade that keeps the heap runs the start function itself, on the kept heap
            keep = mode is InstallMode.UPGRADE and options.wasm_memory_persistence == "keep"
            compiled = await asyncio.to_thread(
                self.runtime.compile, modules.defer_start(raw) if keep else raw
            )
        except ModuleError as error:
            raise reject(
                RejectCode.CANISTER_ERROR,
                f"Error from Canister {record.id}: Canister's Wasm module is not valid: {error}",
                "IC0505",
            ) from None
        return self.install_compiled(
            record,
            raw,
            compiled,
            arg,
            mode,
            options,
            sender=sender,
            name=name,
            instruction_limit=instruction_limit,
        )

    def install_compiled(
        self,
        record: CanisterRecord,
        raw: bytes,
        compiled: tuple[modules.ModuleInfo, wasmtime.Module],
        arg: bytes,
        mode: InstallMode,
        options: UpgradeOptions = UpgradeOptions(),
        *,
        sender: bytes,
        name: str = "",
        instruction_limit: int | None = None,
    ) -> CanisterInstance:
        old = self.instance(record)
        if mode is InstallMode.INSTALL and old is not None:
            raise reject(
                RejectCode.CANISTER_ERROR,
                f"Canister {record.id} cannot be installed because the canister is not empty. Try "
                "installing with mode='reinstall' instead.",
                CANISTER_NON_EMPTY,
            )
        if mode is InstallMode.UPGRADE:
            if old is None:
                raise reject(
                    RejectCode.CANISTER_ERROR,
                    f"Error from Canister {record.id}: Attempted to execute a message, but the canister "
                    "contains no Wasm module.",
                    CANISTER_WASM_MODULE_NOT_FOUND,
                )
            return self._upgrade(record, old, raw, compiled, arg, options, sender)
        info, module = compiled
        instance = self._instantiate(
            record,
            info,
            module,
            name=name or (old.name if old else ""),
            instruction_limit=instruction_limit or (old.instruction_limit if old else None),
            balance=old.balance if old else None,  # a reinstall keeps the cycles
        )
        try:
            self._run_entry(record, instance, "canister_init", MessageKind.INIT, arg, sender)
        except BaseException:
            instance.close()  # not installed: what it took is freed at once
            raise
        if old is not None:
            self.runtime.retire(old, "reinstalled")
        self._commit(record, instance, raw)
        return instance

    def _upgrade(
        self,
        record: CanisterRecord,
        old: CanisterInstance,
        raw: bytes,
        compiled: tuple[modules.ModuleInfo, wasmtime.Module],
        arg: bytes,
        options: UpgradeOptions,
        sender: bytes,
    ) -> CanisterInstance:
        keep = options.wasm_memory_persistence == "keep"
        needs_keep = _has_eop(compiled[0])
        if needs_keep and options.wasm_memory_persistence is None:
            raise reject(
                RejectCode.CANISTER_ERROR,
                f"Error from Canister {record.id}: Missing upgrade option: Enhanced orthogonal persistence "
                "requires the `wasm_memory_persistence` upgrade option.",
                CANISTER_CONTRACT_VIOLATION,
            )
        if keep and not needs_keep:
            raise reject(
                RejectCode.CANISTER_ERROR,
                f"Error from Canister {record.id}: Invalid upgrade option: The `wasm_memory_persistence: "
                "opt Keep` upgrade option requires that the new canister module supports enhanced "
                "orthogonal persistence.",
                CANISTER_CONTRACT_VIOLATION,
            )
        info, module = compiled
        before = old.image()
        balance = old.balance
        instance: CanisterInstance | None = None
        try:
            if not options.skip_pre_upgrade:
                self._run_entry(record, old, "canister_pre_upgrade", MessageKind.PRE_UPGRADE, b"", sender)
            kept = old.image()
            instance = self._instantiate(
                record,
                info,
                module,
                name=old.name,
                instruction_limit=old.instruction_limit,
                balance=old.balance,
            )
            instance.load_image(replace(kept, timer=0), heap=False)  # stable memory, certified data
            if keep:  # the heap as the old module left it; the globals are the new module's own
                instance.load_heap(kept.heap)
                if modules.START_EXPORT in instance.functions:
                    self._run_entry(record, instance, modules.START_EXPORT, MessageKind.START, b"", sender)
            self._run_entry(record, instance, "canister_post_upgrade", MessageKind.POST_UPGRADE, arg, sender)
        except BaseException:
            if instance is not None:
                instance.close()  # the new module is dropped: what it took is freed at once
            old.load_image(before)
            old.balance = balance
            raise
        self.runtime.retire(old, "upgraded")
        self._commit(record, instance, raw)
        return instance

    def _instantiate(
        self,
        record: CanisterRecord,
        info: modules.ModuleInfo,
        module: wasmtime.Module,
        *,
        name: str,
        instruction_limit: int | None,
        balance: int | None = None,
    ) -> CanisterInstance:
        runtime = self.runtime
        instance = CanisterInstance(
            runtime,
            record.principal,
            record.id,
            module,
            info,
            env=record.env,
            cycles=record.balance if balance is None else balance,
            controllers=record.controllers,
            candid=info.candid,
            name=name or record.id,
            instruction_limit=instruction_limit or runtime.instruction_limit,
        )
        instance.env = record.env  # one dict: update_settings reaches the running module
        instance.logs = record.logs  # the canister's log outlives its modules, as on the IC
        instance.version = record.version + 1
        return instance

    def _run_entry(
        self,
        record: CanisterRecord,
        instance: CanisterInstance,
        export: str,
        kind: MessageKind,
        arg: bytes,
        sender: bytes,
    ) -> None:
        if export not in instance.functions:
            if kind is MessageKind.INIT and arg and arg != b"DIDL\0\0":
                raise ModuleError(
                    "an init argument was given, but the module has no canister_init to take it"
                )
            return
        message = Message(kind, None, arg=arg, caller=sender, time_ns=self.runtime.now_ns())
        trap = instance.run(message, export)
        if trap is not None:
            instance.log_trap(message, trap)
            raise reject(
                RejectCode.CANISTER_ERROR,
                f"Error from Canister {record.id}: {export} trapped: {trap.message}",
                trap.error_code,
            )
        self.runtime.after_system_message(instance, message)

    def _commit(self, record: CanisterRecord, instance: CanisterInstance, raw: bytes) -> None:
        record.wasm = raw
        record.module_hash = hashlib.sha256(raw).digest()
        record.version = instance.version
        self.runtime.canisters[record.principal] = instance
        self.runtime.schedule_timer(instance)

    async def uninstall_code(self, sender: bytes, principal: bytes) -> None:
        record = self.controlled(principal, sender)
        self._uninstall(record, "uninstalled")

    def _uninstall(self, record: CanisterRecord, why: str) -> None:
        instance = self.instance(record)
        if instance is None:
            return
        record.balance = instance.balance
        self.runtime.retire(instance, why)
        del self.runtime.canisters[record.principal]
        record.wasm = record.module_hash = None
        record.version += 1

    # -- chunks ---------------------------------------------------------------------------------------

    def upload_chunk(self, sender: bytes, principal: bytes, chunk: bytes) -> bytes:
        record = self.controlled(principal, sender)
        if len(chunk) > MAX_CHUNK_BYTES:
            raise reject(
                RejectCode.CANISTER_ERROR,
                f"upload_chunk: a chunk is at most {MAX_CHUNK_BYTES} bytes, this one is {len(chunk)}",
                INVALID_ARGUMENT,
            )
        digest = hashlib.sha256(chunk).digest()
        if digest not in record.chunks and len(record.chunks) >= MAX_CHUNKS:
            raise reject(
                RejectCode.CANISTER_ERROR,
                f"upload_chunk: the chunk store of {record.id} is full ({MAX_CHUNKS} chunks); "
                "clear_chunk_store first",
                INVALID_ARGUMENT,
            )
        record.chunks[digest] = bytes(chunk)
        return digest

    def stored_chunks(self, sender: bytes, principal: bytes) -> list[bytes]:
        return list(self.controlled(principal, sender).chunks)

    def clear_chunk_store(self, sender: bytes, principal: bytes) -> None:
        self.controlled(principal, sender).chunks.clear()

    async def install_chunked_code(
        self,
        sender: bytes,
        target: bytes,
        store: bytes | None,
        hashes: list[bytes],
        wasm_hash: bytes,
        arg: bytes,
        mode: InstallMode,
        options: UpgradeOptions = UpgradeOptions(),
    ) -> CanisterInstance:
        self.controlled(target, sender)
        chunks = self.controlled(target if store is None else store, sender).chunks
        missing = [h.hex() for h in hashes if h not in chunks]
        if missing:
            raise reject(
                RejectCode.CANISTER_ERROR,
                f"install_chunked_code: chunk(s) {', '.join(missing)} are not in the chunk store "
                "(upload_chunk them first)",
                INVALID_ARGUMENT,
            )
        wasm = b"".join(chunks[h] for h in hashes)
        if hashlib.sha256(wasm).digest() != wasm_hash:
            raise reject(
                RejectCode.CANISTER_ERROR,
                f"install_chunked_code: the chunks assemble into a module of hash "
                f"{hashlib.sha256(wasm).hexdigest()}, not the wasm_module_hash {wasm_hash.hex()}",
                INVALID_ARGUMENT,
            )
        return await self.install_code(sender, target, wasm, arg, mode, options)

    # -- running, stopping, deleting ------------------------------------------------------------------

    async def stop(self, sender: bytes, principal: bytes) -> None:
        """Stop taking calls; returns once the calls in flight have ended (or rejects after 5 minutes)."""
        record = self.controlled(principal, sender)
        if record.status is Status.STOPPED:
            return
        instance = self.instance(record)
        record.status = Status.STOPPING
        if instance is None or not instance.open_contexts:
            self._stopped(record)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        record.stop_waiters.append(waiter)
        timeout = asyncio.ensure_future(
            self.runtime.clock.sleep_until(self.runtime.clock.now() + STOP_TIMEOUT_S)
        )
        try:
            await asyncio.wait((waiter, timeout), return_when=asyncio.FIRST_COMPLETED)
        finally:
            timeout.cancel()
        if not waiter.done():
            record.stop_waiters.remove(waiter)
            raise reject(
                RejectCode.SYS_TRANSIENT,
                f"Stop canister request timed out: {record.id} still has "
                f"{len(instance.open_contexts)} call(s) open after {STOP_TIMEOUT_S:.0f} s (a canister "
                "that waits on its own stop, or on its caller's, never finishes stopping)",
                STOP_TIMED_OUT,
            )
        waiter.result()

    def _stopped(self, record: CanisterRecord) -> None:
        record.status = Status.STOPPED
        for waiter in record.stop_waiters:
            if not waiter.done():
                waiter.set_result(None)
        record.stop_waiters.clear()

    def start(self, sender: bytes, principal: bytes) -> None:
        record = self.controlled(principal, sender)
        for waiter in record.stop_waiters:
            if not waiter.done():
                waiter.set_exception(
                    reject(
                        RejectCode.CANISTER_ERROR,
                        f"Canister {record.id}'s stop request was cancelled by start_canister",
                        CANISTER_STOPPING,
                    )
                )
        record.stop_waiters.clear()
        record.status = Status.RUNNING
        instance = self.instance(record)
        if instance is not None:
            self.runtime.schedule_timer(instance)

    def delete(self, sender: bytes, principal: bytes) -> int:
        """Delete a stopped canister; returns the cycles it held (the IC gives them to no one)."""
        record = self.controlled(principal, sender)
        if record.status is not Status.STOPPED:
            raise reject(
                RejectCode.CANISTER_ERROR,
                f"Canister {record.id} must be stopped before it is deleted.",
                CANISTER_NOT_STOPPED,
            )
        instance = self.instance(record)
        balance = record.balance if instance is None else instance.balance
        if instance is not None:
            self.runtime.remove(record.id)  # drops the record too
        self.records.pop(principal, None)
        return balance

    def deposit_cycles(self, principal: bytes, cycles: int) -> None:
        record = self.record(principal)
        instance = self.instance(record)
        if instance is None:
            record.balance += cycles
        else:
            instance.balance += cycles

    # -- status and settings --------------------------------------------------------------------------

    def status(self, sender: bytes, principal: bytes) -> dict[str, Any]:
        """canister_status's result, as the interface's Python values."""
        record = self.controlled(principal, sender)
        instance = self.instance(record)
        heap = stable = 0
        if instance is not None:
            heap = instance.memory.data_len(instance.store)
            stable = len(instance.stable)
        chunk_bytes = sum(len(c) for c in record.chunks.values())
        snapshot_bytes = sum(s.total_size for s in record.snapshots.values())
        wasm_bytes = len(record.wasm or b"")
        metrics = {
            "wasm_memory_size": heap,
            "stable_memory_size": stable,
            "global_memory_size": 8 * (len(instance.globals) if instance else 0),
            "wasm_binary_size": wasm_bytes,
            "custom_sections_size": sum(len(v) for v in instance.info.custom.values()) if instance else 0,
            "canister_history_size": 0,
            "wasm_chunk_store_size": chunk_bytes,
            "snapshots_size": snapshot_bytes,
        }
        return {
            "status": {record.status.value: None},
            "ready_for_migration": False,
            "version": record.version,
            "settings": self.definite_settings(record),
            "module_hash": record.module_hash,
            "memory_size": heap + stable + wasm_bytes + chunk_bytes + snapshot_bytes,
            "memory_metrics": metrics,
            "cycles": record.balance if instance is None else instance.balance,
            "reserved_cycles": 0,
            "idle_cycles_burned_per_day": 0,
            "query_stats": {
                "num_calls_total": 0,
                "num_instructions_total": 0,
                "request_payload_bytes_total": 0,
                "response_payload_bytes_total": 0,
            },
        }

    def definite_settings(self, record: CanisterRecord) -> dict[str, Any]:
        s = record.settings
        visibility: Any = (
            {s.log_visibility: None}
            if isinstance(s.log_visibility, str)
            else {"allowed_viewers": [principal_text(p) for p in s.log_visibility]}
        )
        return {
            "controllers": sorted(principal_text(c) for c in record.controllers),
            "compute_allocation": s.compute_allocation,
            "memory_allocation": s.memory_allocation,
            "freezing_threshold": s.freezing_threshold,
            "reserved_cycles_limit": s.reserved_cycles_limit,
            "log_visibility": visibility,
            "wasm_memory_limit": s.wasm_memory_limit,
            "wasm_memory_threshold": s.wasm_memory_threshold,
            "environment_variables": [{"name": k, "value": v} for k, v in sorted(record.env.items())],
        }

    def update_settings(self, sender: bytes, principal: bytes, change: SettingsChange) -> None:
        record = self.controlled(principal, sender)
        self._apply(record, change)

    def _apply(self, record: CanisterRecord, change: SettingsChange) -> None:
        if change.controllers is not None:
            if len(change.controllers) > MAX_CONTROLLERS:
                raise reject(
                    RejectCode.CANISTER_ERROR,
                    f"Invalid settings: {len(change.controllers)} controllers given; a canister has at "
                    f"most {MAX_CONTROLLERS}",
                    INVALID_ARGUMENT,
                )
            record.controllers = frozenset(change.controllers)
            instance = self.instance(record)
            if instance is not None:
                instance.controllers = record.controllers
        if change.environment_variables is not None:
            record.env.clear()
            record.env.update(change.environment_variables)
        if change.compute_allocation is not None and not 0 <= change.compute_allocation <= 100:
            raise reject(
                RejectCode.CANISTER_ERROR,
                f"Invalid settings: compute_allocation is a percentage 0..100, got "
                f"{change.compute_allocation}",
                INVALID_ARGUMENT,
            )
        updates = {
            name: getattr(change, name)
            for name in (
                "compute_allocation",
                "memory_allocation",
                "freezing_threshold",
                "reserved_cycles_limit",
                "log_visibility",
                "wasm_memory_limit",
                "wasm_memory_threshold",
            )
            if getattr(change, name) is not None
        }
        if updates:
            record.settings = replace(record.settings, **updates)

    # -- snapshots ------------------------------------------------------------------------------------

    def take_snapshot(self, sender: bytes, principal: bytes, replace_id: bytes | None = None) -> Snapshot:
        record = self.controlled(principal, sender)
        instance = self.instance(record)
        if instance is None or record.wasm is None:
            raise reject(
                RejectCode.CANISTER_ERROR,
                f"Canister {record.id} has no module to take a snapshot of (install code first)",
                CANISTER_WASM_MODULE_NOT_FOUND,
            )
        if replace_id is not None:
            self._snapshot(record, replace_id)
        elif len(record.snapshots) >= MAX_SNAPSHOTS:
            raise reject(
                RejectCode.CANISTER_ERROR,
                f"Canister {record.id} has reached the limit of {MAX_SNAPSHOTS} snapshots: delete one, "
                "or give replace_snapshot",
                SNAPSHOT_LIMIT,
            )
        record.snapshot_counter += 1
        snapshot_id = record.principal + record.snapshot_counter.to_bytes(8, "big")
        snapshot = Snapshot(
            id=snapshot_id,
            taken_at_ns=self.runtime.now_ns(),
            wasm=record.wasm,
            image=instance.image(),
            chunks=tuple(record.chunks.items()),
        )
        if replace_id is not None:
            del record.snapshots[replace_id]
        record.snapshots[snapshot_id] = snapshot
        return snapshot

    def _snapshot(self, record: CanisterRecord, snapshot_id: bytes) -> Snapshot:
        found = record.snapshots.get(bytes(snapshot_id))
        if found is None:
            raise reject(
                RejectCode.DESTINATION_INVALID,
                f"Could not find the snapshot ID {bytes(snapshot_id).hex()} for canister {record.id} "
                f"(it has {', '.join(s.hex() for s in record.snapshots) or 'none'})",
                SNAPSHOT_NOT_FOUND,
            )
        return found

    async def load_snapshot(self, sender: bytes, principal: bytes, snapshot_id: bytes) -> None:
        """Put the canister back to a snapshot: its module, heap, globals, stable memory, chunks.

        When the installed module is the snapshot's, the state is written into the instance in place
        (the fast path a per-test restore takes); otherwise the snapshot's module is instantiated anew.
        """
        record = self.controlled(principal, sender)
        snapshot = self._snapshot(record, snapshot_id)
        instance = self.instance(record)
        if instance is not None:
            self.runtime.end_calls(instance, "its snapshot was loaded")
        if instance is not None and record.wasm == snapshot.wasm and record.wasm is not None:
            instance.load_image(snapshot.image)
            instance.version += 1
            instance.epoch += 1
        else:
            compiled = await asyncio.to_thread(self.runtime.compile, snapshot.wasm)
            info, module = compiled
            old = instance
            instance = self._instantiate(
                record,
                info,
                module,
                name=old.name if old else "",
                instruction_limit=old.instruction_limit if old else None,
                balance=old.balance if old else None,
            )
            try:
                instance.load_image(snapshot.image)
            except BaseException:
                instance.close()
                raise
            if old is not None:
                self.runtime.retire(old, "replaced by a snapshot")
            record.wasm = snapshot.wasm
            record.module_hash = hashlib.sha256(snapshot.wasm).digest()
            self.runtime.canisters[record.principal] = instance
        record.chunks = dict(snapshot.chunks)
        record.version = instance.version
        self.runtime.schedule_timer(instance)

    def list_snapshots(self, sender: bytes, principal: bytes) -> list[Snapshot]:
        return list(self.controlled(principal, sender).snapshots.values())

    def delete_snapshot(self, sender: bytes, principal: bytes, snapshot_id: bytes) -> None:
        record = self.controlled(principal, sender)
        self._snapshot(record, snapshot_id)
        del record.snapshots[bytes(snapshot_id)]

    # -- logs -----------------------------------------------------------------------------------------

    def fetch_logs(self, sender: bytes, principal: bytes) -> list[dict[str, Any]]:
        record = self.record(principal)
        visibility = record.settings.log_visibility
        if visibility != "public" and not (
            sender in record.controllers or (not isinstance(visibility, str) and sender in visibility)
        ):
            self.controlled(principal, sender)  # the IC's reject, naming the controllers
        return [
            {"idx": i, "timestamp_nanos": line.time_ns, "content": line.text.encode()}
            for i, line in enumerate(record.logs)
        ]


def inspect_message(
    runtime: CanisterRuntime, instance: CanisterInstance, method: str, arg: bytes, caller: bytes
) -> None:
    """An update call from outside (ingress) passes the canister's `canister_inspect_message` first:
    a trap or a message it does not accept is rejected before the call runs, as on the IC."""
    if "canister_inspect_message" not in instance.functions or runtime.lifecycle.admit(instance.principal):
        return
    message = Message(
        MessageKind.INSPECT, None, method=method, arg=arg, caller=caller, time_ns=runtime.now_ns()
    )
    trap = instance.run(message, "canister_inspect_message")
    if trap is not None:
        raise reject(
            RejectCode.CANISTER_ERROR,
            f"Error from Canister {instance.id}: canister_inspect_message trapped: {trap.message}",
            trap.error_code,
        )
    if not message.accepted:
        raise reject(
            RejectCode.CANISTER_REJECT,
            f"Canister {instance.id} rejected the message: its canister_inspect_message did not call "
            f"ic0.accept_message for {method!r}",
            "IC0406",
        )


def _has_eop(info: modules.ModuleInfo) -> bool:
    return any(name.endswith(EOP_SECTION) for name in info.custom)


def auto_persistence(info: modules.ModuleInfo) -> str | None:
    """The upgrade option dfx and icp-cli give: keep the heap of a module built for Motoko's enhanced
    orthogonal persistence, and ask nothing for another."""
    return "keep" if _has_eop(info) else None


def settings_change(value: Mapping[str, Any] | None, principal_bytes: Any) -> SettingsChange:
    """`canister_settings` as decoded from Candid, as a `SettingsChange`."""
    if not value:
        return SettingsChange()
    visibility = value.get("log_visibility")
    log_visibility: str | tuple[bytes, ...] | None = None
    if visibility is not None:
        ((case, inner),) = visibility.items()
        log_visibility = tuple(principal_bytes(p) for p in inner) if case == "allowed_viewers" else str(case)
    controllers = value.get("controllers")
    env = value.get("environment_variables")
    return SettingsChange(
        controllers=None if controllers is None else tuple(principal_bytes(p) for p in controllers),
        environment_variables=None if env is None else tuple((e["name"], e["value"]) for e in env),
        compute_allocation=value.get("compute_allocation"),
        memory_allocation=value.get("memory_allocation"),
        freezing_threshold=value.get("freezing_threshold"),
        reserved_cycles_limit=value.get("reserved_cycles_limit"),
        log_visibility=log_visibility,
        wasm_memory_limit=value.get("wasm_memory_limit"),
        wasm_memory_threshold=value.get("wasm_memory_threshold"),
    )


def upgrade_options(mode: Mapping[str, Any]) -> tuple[InstallMode, UpgradeOptions]:
    """`canister_install_mode` as decoded from Candid."""
    ((case, inner),) = mode.items()
    if case != "upgrade" or not inner:
        return InstallMode(case), UpgradeOptions()
    persistence = inner.get("wasm_memory_persistence")
    return InstallMode.UPGRADE, UpgradeOptions(
        skip_pre_upgrade=bool(inner.get("skip_pre_upgrade")),
        wasm_memory_persistence=None if persistence is None else next(iter(persistence)),
    )
