"""One installed canister: its wasmtime instance, its memories, and atomic execution of one message.

A message either commits or leaves no trace: before it runs, the heap, the mutable globals, the timer,
the cycle balance and the certified data are snapshotted, and stable memory keeps an undo log of the
message's writes; a trap restores all of them. A query always restores them (a query keeps no state).
Execution is bounded by fuel (one unit per Wasm instruction), so an endless loop traps as the IC's
instruction limit does.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import wasmtime
from wasmtime import _ffi as ffi

from icllm_emulator.runtime.errors import INSTRUCTION_LIMIT, WASM_TRAP, CanisterTrap, ModuleError
from icllm_emulator.runtime.messages import CallContext, Message, MessageKind
from icllm_emulator.runtime.module import GLOBAL_EXPORT, ModuleInfo, explain
from icllm_emulator.runtime.system_api import MAX_STABLE_PAGES, PAGE, U64, SystemApi

if TYPE_CHECKING:
    from icllm_emulator.runtime.ic import CanisterRuntime

log = logging.getLogger("icllm.canister")

UPDATE_PREFIX = "canister_update "
QUERY_PREFIXES = ("canister_query ", "canister_composite_query ")


@dataclass(frozen=True, slots=True)
class LogLine:
    """One `debug_print` line and the canister time (ns) of the message that printed it."""

    time_ns: int
    text: str


@dataclass(frozen=True, slots=True)
class Image:
    """A canister's whole state beside its module: what a canister snapshot keeps and an upgrade restores."""

    heap: bytes
    globals: tuple[Any, ...]
    stable: bytes
    certified_data: bytes
    timer: int


@dataclass(slots=True)
class _Snapshot:
    heap_size: int
    stable_size: int
    journal_start: int
    balance: int
    timer: int
    certified_data: bytes
    cycles_available: int | None


class CanisterInstance:
    """A canister module instantiated in its own wasmtime store, with the state the IC keeps for it."""

    def __init__(
        self,
        runtime: CanisterRuntime,
        principal: bytes,
        text_id: str,
        module: wasmtime.Module,
        info: ModuleInfo,
        *,
        env: dict[str, str],
        cycles: int,
        controllers: frozenset[bytes],
        candid: str | None,
        name: str,
        instruction_limit: int,
    ) -> None:
        self.runtime = runtime
        self.principal = principal
        self.id = text_id
        self.name = name
        self.instruction_limit = instruction_limit
        self.info = info
        self.env = dict(env)
        self.balance = cycles
        self.controllers = controllers
        self.candid = candid
        self.version = 1
        # Bumped when a snapshot is loaded in place: responses to calls made before it are dropped.
        self.epoch = 0
        self.timer = 0
        self.certified_data = b""
        self.stable = bytearray()
        self._journal: list[tuple[int, bytes]] = []
        self.logs: list[LogLine] = []
        # Calls made to this canister that have not ended yet (a removal or a reset ends them).
        self.open_contexts: set[CallContext] = set()
        self._message_time = 0
        # The heap as it was before the running message: one buffer, reused (a fresh 8 MB copy per
        # message would also pay a page fault per 4 KiB page; `make bench ARGS=canister`).
        self._shadow = bytearray()
        self._shadow_view: Any = None
        self.closed = False
        self.store = wasmtime.Store(runtime.engine)
        self.store.set_limits(
            memory_size=runtime.max_memory_bytes,
            table_elements=runtime.max_table_elements,
            instances=1,
            tables=4,
            memories=1,
        )
        self.api = SystemApi(self)
        try:
            self._instantiate(module, info)
        except BaseException:
            self.close()  # a module that fails to install frees what it took at once
            raise

    def _instantiate(self, module: wasmtime.Module, info: ModuleInfo) -> None:
        funcs = self.api.bind(self.store, module)
        start = Message(MessageKind.START, None, time_ns=self.runtime.now_ns())
        self._begin(start)
        try:
            self.instance = wasmtime.Instance(self.store, module, list(funcs))
        except CanisterTrap as trap:
            raise ModuleError(f"the module's start function trapped: {trap.message}") from None
        except wasmtime.Trap as trap:
            raise ModuleError(f"the module's start function trapped: {_trap_text(trap)}") from None
        except wasmtime.WasmtimeError as error:
            raise ModuleError(
                f"the module cannot be instantiated: {explain(error)} (the canister runtime allows "
                f"{self.runtime.max_memory_bytes // 2**20} MiB of heap and "
                f"{self.runtime.max_table_elements} table elements per canister)"
            ) from None
        finally:
            self.api.message = None
        exports = self.instance.exports(self.store)
        memory = next(
            (m for name in _export_names(exports) if isinstance(m := exports[name], wasmtime.Memory)), None
        )
        if memory is None:
            raise ModuleError("the module exports no memory, so the system API cannot reach its data")
        self.memory: wasmtime.Memory = memory
        table = exports.get(info.table_export) if info.table_export else None
        self.table: wasmtime.Table | None = table if isinstance(table, wasmtime.Table) else None
        self.globals: list[wasmtime.Global] = [
            g
            for i in info.mutable_globals
            if isinstance(g := exports[f"{GLOBAL_EXPORT}{i}"], wasmtime.Global)
        ]
        self._globals = _GlobalValues(self.store, self.globals)
        self.functions: dict[str, wasmtime.Func] = {
            name: f for name in _export_names(exports) if isinstance(f := exports[name], wasmtime.Func)
        }

    # -- the end ------------------------------------------------------------------------------------

    def close(self) -> None:
        """Free the canister's heap, host functions, stable memory and snapshot now (idempotent).

        Every way a canister goes (removed, its IC reset, its test ended) ends here. wasmtime frees a
        store's memories and host functions only when the store is deleted, and a canister's objects
        refer to one another, so without this they would wait for Python's cycle collector.
        The logs stay readable; the canister can run no message any more.
        """
        self.closed = True
        self.api.message = None
        self.store.close()
        self._shadow_view = None
        self._shadow = bytearray()
        self.stable = bytearray()
        self._journal.clear()

    # -- the interface --------------------------------------------------------------------------

    @property
    def update_methods(self) -> list[str]:
        return sorted(n[len(UPDATE_PREFIX) :] for n in self.functions if n.startswith(UPDATE_PREFIX))

    @property
    def query_methods(self) -> list[str]:
        return sorted(n.split(" ", 1)[1] for n in self.functions if n.startswith(QUERY_PREFIXES))

    def entry_point(self, method: str, query: bool) -> tuple[str, bool] | None:
        """The export that serves `method`, and whether it runs as a query (keeping no state)."""
        for prefix in QUERY_PREFIXES:
            if prefix + method in self.functions:
                return prefix + method, True
        if not query and UPDATE_PREFIX + method in self.functions:
            return UPDATE_PREFIX + method, False
        return None

    def log_trap(self, message: Message, trap: CanisterTrap) -> None:
        """A trap is logged as the replica logs it, so `Canister.logs` shows why a message left no trace."""
        self.logs.append(LogLine(message.time_ns, f"[TRAP in {message.kind.value}]: {trap.message}"))
        log.debug("[%s] trap in %s: %s", self.name, message.kind.value, trap.message)

    def log(self, text: str) -> None:
        self.logs.append(LogLine(self._message_time, text))
        log.debug("[%s] %s", self.name, text)

    # -- execution --------------------------------------------------------------------------------

    def _begin(self, message: Message) -> None:
        message.fuel = self.instruction_limit
        self.store.set_fuel(message.fuel)
        self._message_time = message.time_ns
        self.api.message = message

    def instructions_used(self, message: Message) -> int:
        return message.fuel - self.store.get_fuel()

    def run(
        self, message: Message, entry: str | tuple[int, int], context: CallContext | None = None
    ) -> CanisterTrap | None:
        """Run one message to its end: None if it committed, else the trap (and nothing of it remains)."""
        snapshot = self._snapshot(context)
        self._begin(message)
        error: CanisterTrap | None = None
        try:
            self._call(entry)
        except CanisterTrap as trap:
            error = trap
        except wasmtime.Trap as trap:
            error = self._wasm_trap(trap, message)
        except wasmtime.WasmtimeError as failure:
            error = CanisterTrap(f"Canister trapped: {_first_line(failure)}", WASM_TRAP)
        finally:
            self.api.message = None
        if error is not None or message.kind in (MessageKind.QUERY, MessageKind.INSPECT):
            self._restore(snapshot, context)
        else:
            del self._journal[snapshot.journal_start :]
        return error

    def _call(self, entry: str | tuple[int, int]) -> None:
        if isinstance(entry, str):
            self.functions[entry](self.store)
            return
        fun, env = entry
        if self.table is None:
            raise CanisterTrap(
                "the callback's function index points into a table the module does not have", WASM_TRAP
            )
        try:
            func = self.table.get(self.store, fun)
        except (wasmtime.WasmtimeError, IndexError):
            func = None
        if not isinstance(func, wasmtime.Func):
            raise CanisterTrap(f"Canister trapped: callback {fun} is not a function in table 0", WASM_TRAP)
        func(self.store, env)

    def _wasm_trap(self, trap: wasmtime.Trap, message: Message) -> CanisterTrap:
        if trap.trap_code is wasmtime.TrapCode.OUT_OF_FUEL:
            return CanisterTrap(
                f"Canister exceeded the limit of {message.fuel} instructions for single message execution "
                "(Wasm instructions, counted as fuel; install with instruction_limit= to change it)",
                INSTRUCTION_LIMIT,
            )
        return CanisterTrap(f"Canister trapped: {_trap_text(trap)}", WASM_TRAP)

    # -- snapshots --------------------------------------------------------------------------------

    def _heap(self) -> tuple[int, int]:
        base = ctypes.cast(self.memory.data_ptr(self.store), ctypes.c_void_p).value or 0
        return base, self.memory.data_len(self.store)

    def _snapshot(self, context: CallContext | None) -> _Snapshot:
        base, length = self._heap()
        self._globals.save(self.store)
        if len(self._shadow) != length:
            self._shadow = bytearray(length)
            self._shadow_view = (ctypes.c_char * length).from_buffer(self._shadow)
        ctypes.memmove(self._shadow_view, base, length)
        return _Snapshot(
            heap_size=length,
            stable_size=len(self.stable),
            journal_start=len(self._journal),
            balance=self.balance,
            timer=self.timer,
            certified_data=self.certified_data,
            cycles_available=None if context is None else context.cycles_available,
        )

    def _restore(self, snapshot: _Snapshot, context: CallContext | None) -> None:
        base, length = self._heap()
        saved = snapshot.heap_size
        ctypes.memmove(base, self._shadow_view, saved)
        if length > saved:  # memory cannot shrink: what the message grew reads as zeros
            ctypes.memset(base + saved, 0, length - saved)
        self._globals.restore(self.store)
        while len(self._journal) > snapshot.journal_start:
            offset, old = self._journal.pop()
            self.stable[offset : offset + len(old)] = old
        del self.stable[snapshot.stable_size :]
        self.balance = snapshot.balance
        self.timer = snapshot.timer
        self.certified_data = snapshot.certified_data
        if context is not None and snapshot.cycles_available is not None:
            context.cycles_available = snapshot.cycles_available

    def image(self) -> Image:
        """The heap, globals, stable memory, certified data and timer as they are between messages."""
        base, length = self._heap()
        return Image(
            heap=ctypes.string_at(base, length) if length else b"",
            globals=tuple(g.value(self.store) for g in self.globals),
            stable=bytes(self.stable),
            certified_data=self.certified_data,
            timer=self.timer,
        )

    def load_image(self, image: Image, *, heap: bool = True) -> None:
        """Put an `image` back (the heap too unless `heap` is False, as an upgrade that keeps only stable
        memory); a heap smaller than the image's grows to its size, a larger one is zeroed past it."""
        if heap:
            self.load_heap(image.heap)
            for g, value in zip(self.globals, image.globals, strict=True):
                g.set_value(self.store, value)
        self.stable[:] = image.stable
        self._journal.clear()
        self.certified_data = image.certified_data
        self.timer = image.timer

    def load_heap(self, data: bytes) -> None:
        """Write `data` over the heap from address 0, growing the memory to hold it."""
        _, length = self._heap()
        if len(data) > length:
            self.memory.grow(self.store, (len(data) - length + PAGE - 1) // PAGE)
        base, length = self._heap()
        ctypes.memmove(base, data, len(data))
        if length > len(data):
            ctypes.memset(base + len(data), 0, length - len(data))

    # -- stable memory ----------------------------------------------------------------------------

    def stable_grow(self, pages: int) -> int:
        old = len(self.stable) // PAGE
        if old + pages > MAX_STABLE_PAGES:
            return U64  # -1: the IC's answer when stable memory cannot grow
        self.stable.extend(bytes(pages * PAGE))
        return old

    def _stable_range(self, what: str, offset: int, size: int) -> None:
        if offset + size > len(self.stable):
            raise CanisterTrap(
                f"{what}: bytes {offset}..{offset + size} are outside stable memory "
                f"of {len(self.stable)} bytes",
                WASM_TRAP,
            )

    def stable_write(self, what: str, offset: int, data: bytes) -> None:
        self._stable_range(what, offset, len(data))
        self._journal.append((offset, bytes(self.stable[offset : offset + len(data)])))
        self.stable[offset : offset + len(data)] = data

    def stable_read(self, what: str, offset: int, size: int) -> bytes:
        self._stable_range(what, offset, size)
        return bytes(self.stable[offset : offset + size])


class _GlobalValues:
    """The mutable globals' values before a message, read and written as raw values.

    Motoko modules have about 30 mutable globals; through `Global.value` each read costs several
    microseconds of wrapping, twice per message. The raw C API of wasmtime-py (pinned) does it in one.
    Globals of reference type, which canisters do not use, take the wrapped path.
    """

    def __init__(self, store: wasmtime.Store, globals_: list[wasmtime.Global]) -> None:
        numeric = {"i32", "i64", "f32", "f64"}
        kinds = [str(g.type(store).content) for g in globals_]
        self._raw = [g for g, kind in zip(globals_, kinds, strict=True) if kind in numeric]
        self._wrapped = [g for g, kind in zip(globals_, kinds, strict=True) if kind not in numeric]
        self._values = [ffi.wasmtime_val_t() for _ in self._raw]
        self._pairs = [
            (ctypes.byref(g._global), ctypes.byref(v)) for g, v in zip(self._raw, self._values, strict=True)
        ]
        self._wrapped_values: list[Any] = []

    def save(self, store: wasmtime.Store) -> None:
        context = store._context()
        for global_, value in self._pairs:
            ffi.wasmtime_global_get(context, global_, value)
        self._wrapped_values = [g.value(store) for g in self._wrapped]

    def restore(self, store: wasmtime.Store) -> None:
        context = store._context()
        for global_, value in self._pairs:
            error = ffi.wasmtime_global_set(context, global_, value)
            if error:
                raise wasmtime.WasmtimeError._from_ptr(error)
        for g, value in zip(self._wrapped, self._wrapped_values, strict=True):
            g.set_value(store, value)


def _export_names(exports: Any) -> list[str]:
    return [name for name, _ in exports.items()] if hasattr(exports, "items") else list(exports)


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def _trap_text(trap: wasmtime.Trap) -> str:
    code = trap.trap_code
    if code is not None:
        return code.name.lower().replace("_", " ")
    return _first_line(trap)
