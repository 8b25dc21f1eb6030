"""A small Internet Computer in the test process: installed canister modules, their messages and calls.

Everything runs on one asyncio event loop (the emulator's): a message executes synchronously, from start
to end, and is atomic; the calls it made are sent when it commits, each on a task of its own; every
response comes back as its own callback message, in the order the responses arrive. Calls to the LLM
canister go to `llm`, the one function the gRPC `CallCandid` door uses as well; calls between installed
canisters (a canister's calls to itself included) and to the management canister are served here.
Time is the engine's clock: a canister's timer and its bounded-wait deadlines wait on it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import wasmtime

from icllm_emulator.clock import Clock
from icllm_emulator.domain import RejectCode
from icllm_emulator.outcalls import OutcallBook
from icllm_emulator.rules import Hang
from icllm_emulator.runtime import module as modules
from icllm_emulator.runtime.composite import COMPOSITE_PREFIX, composite_state
from icllm_emulator.runtime.errors import (
    CANISTER_NOT_FOUND,
    DID_NOT_REPLY,
    EXPLICIT_REJECT,
    METHOD_NOT_FOUND,
    CanisterReject,
    RuntimeUsageError,
    UnknownCanister,
    error_code_for,
)
from icllm_emulator.runtime.ids import (
    ANONYMOUS,
    DEFAULT_CYCLES,
    LLM_CANISTER_ID,
    LLM_ENV_VAR,
    MANAGEMENT,
    principal_bytes,
    principal_text,
)
from icllm_emulator.runtime.instance import CanisterInstance
from icllm_emulator.runtime.management import Management
from icllm_emulator.runtime.management.lifecycle import (
    CanisterRecord,
    InstallMode,
    Lifecycle,
    SettingsChange,
    inspect_message,
)
from icllm_emulator.runtime.messages import Call, CallContext, Message, MessageKind, Response
from icllm_emulator.runtime.standins import Delay, FaultBook, StandIn, reject_of
from icllm_emulator.runtime.values import Interface

log = logging.getLogger("icllm.canister")

# Wasm instructions per message. The IC allows 40 billion for an update; Wasm runs here at 1-2 billion
# a second, so an endless loop would take half a minute to stop: 5 billion (the IC's query limit) ends
# it in a few seconds, and is far above what a canister's LLM logic executes.
DEFAULT_INSTRUCTION_LIMIT = 5_000_000_000
# The heap a canister may have. The IC allows 4 GiB (wasm32) and more (wasm64), but every message copies
# the heap for rollback: a test canister gets 1 GiB, far above what an agent's logic uses.
DEFAULT_MAX_MEMORY = 1024**3
DEFAULT_MAX_TABLE = 1_000_000
MAX_RESPONSE_BYTES = 2 * 1024 * 1024
# The first canister id handed out, as PocketIC does (lxzze-o7777-77777-aaaaa-cai, then up).
FIRST_CANISTER_INDEX = 0xFFFFFFFFFFF00000

LlmCall = Callable[[str, bytes, str, int], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class InstallSettings:
    """What `install` was given, beside the module."""

    init_arg: bytes = b""
    env: tuple[tuple[str, str], ...] = ()
    cycles: int = DEFAULT_CYCLES
    controller: bytes = ANONYMOUS
    name: str = ""
    # Wasm instructions per message for this canister (None: the runtime's limit).
    instruction_limit: int | None = None
    # The principal to install at (None: the next free id), and every controller (None: `controller`).
    canister_id: bytes | None = None
    controllers: tuple[bytes, ...] | None = None


class CanisterRuntime:
    """The canisters of one IC, and the calls between them; use it on its event loop only."""

    def __init__(
        self,
        clock: Clock,
        llm: LlmCall,
        *,
        seed: int = 0,
        instruction_limit: int = DEFAULT_INSTRUCTION_LIMIT,
        max_memory_bytes: int = DEFAULT_MAX_MEMORY,
        max_table_elements: int = DEFAULT_MAX_TABLE,
        use_cache: bool = True,
        outcalls: OutcallBook | None = None,
    ) -> None:
        self.clock = clock
        self.outcalls = OutcallBook() if outcalls is None else outcalls
        self.llm = llm
        self.seed = seed
        self.instruction_limit = instruction_limit
        self.max_memory_bytes = max_memory_bytes
        self.max_table_elements = max_table_elements
        self.max_response_bytes = MAX_RESPONSE_BYTES
        self.use_cache = use_cache
        self.engine = modules.make_engine()
        self.canisters: dict[bytes, CanisterInstance] = {}
        self.management = Management(self)
        self.lifecycle = Lifecycle(self)
        # Canisters scripted from the test, by principal, and faults on calls between canisters.
        self.standins: dict[bytes, StandIn] = {}
        self.faults = FaultBook()
        self._next_index = FIRST_CANISTER_INDEX
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timers: dict[bytes, tuple[int, asyncio.Task[None]]] = {}
        self._last_ns = 0
        # Compiled modules by the hash of their prepared bytes: a second install skips even the disk cache.
        self.compiled = modules.CompiledCache()

    # -- time -------------------------------------------------------------------------------------

    def now_ns(self) -> int:
        """Canister time: the engine's clock in nanoseconds, never moving backwards."""
        self._last_ns = max(self._last_ns, round(self.clock.now() * 1e9))
        return self._last_ns

    # -- canisters ----------------------------------------------------------------------------------

    def compile(self, wasm: bytes) -> tuple[modules.ModuleInfo, wasmtime.Module]:
        """Check, rewrite and compile a module (cached); safe to run in another thread."""
        raw = modules.unpack(wasm)
        info = modules.inspect(raw)
        prepared = modules.prepare(raw, info)
        key = hashlib.sha256(prepared).digest()
        compiled = self.compiled.get(key)
        if compiled is None:
            entry = modules.compile_module(self.engine, prepared, use_cache=self.use_cache)
            self.compiled.put(key, entry)
            compiled = entry.module
        return info, compiled

    async def install_async(
        self, wasm: bytes, settings: InstallSettings = InstallSettings()
    ) -> CanisterInstance:
        """`install`, with the compile (seconds for a large module) off the event loop."""
        compiled = await asyncio.to_thread(self.compile, wasm)
        return self.install(wasm, settings, compiled=compiled)

    def install(
        self,
        wasm: bytes,
        settings: InstallSettings = InstallSettings(),
        *,
        compiled: tuple[modules.ModuleInfo, wasmtime.Module] | None = None,
    ) -> CanisterInstance:
        """Create a canister from a module: start function, then `canister_init` with the init arg.

        A module that is not Wasm or does not instantiate is a `ModuleError`; a trap in `canister_init`
        is a `CanisterReject` (the canister is not created), as `install_code` fails on the IC.
        """
        compiled = self.compile(wasm) if compiled is None else compiled
        env = dict(settings.env)
        env.setdefault(LLM_ENV_VAR, LLM_CANISTER_ID)
        controllers = settings.controllers or (settings.controller,)
        record = self.lifecycle.create(
            settings.controller,
            cycles=settings.cycles,
            settings=SettingsChange(controllers=controllers, environment_variables=tuple(env.items())),
            specified_id=settings.canister_id,
        )
        try:
            return self.lifecycle.install_compiled(
                record,
                modules.unpack(wasm),
                compiled,
                settings.init_arg,
                InstallMode.INSTALL,
                sender=controllers[0],
                name=settings.name,
                instruction_limit=settings.instruction_limit,
            )
        except BaseException:
            del self.lifecycle.records[record.principal]  # a failed install leaves no canister behind
            raise

    def next_id(self) -> bytes:
        """The next canister id that no canister has (a specified id may have taken one in the sequence)."""
        while True:
            principal = self._new_id()
            if principal not in self.lifecycle.records and principal not in self.standins:
                return principal

    def _new_id(self) -> bytes:
        index = self._next_index
        self._next_index += 1
        return index.to_bytes(8, "big") + b"\x01\x01"

    def stub(self, canister_id: str, interface: Interface) -> StandIn:
        """A stand-in at `canister_id`, answering calls from its rules (see `standins`)."""
        principal = principal_bytes(canister_id)
        if principal in (MANAGEMENT, principal_bytes(LLM_CANISTER_ID)):
            raise RuntimeUsageError(
                f"{canister_id} is the {'LLM' if principal else 'management'} canister, which the emulator "
                "serves itself (script the LLM with icllm.on); a stand-in takes any other principal"
            )
        if principal in self.lifecycle.records:
            raise RuntimeUsageError(
                f"a canister is installed at {canister_id}; a stand-in takes a principal where none is"
            )
        if principal in self.standins:
            raise RuntimeUsageError(
                f"a stand-in is at {canister_id} already; add rules to it instead of making another"
            )
        standin = StandIn(principal, principal_text(principal), interface)
        self.standins[principal] = standin
        return standin

    def get(self, canister_id: str) -> CanisterInstance:
        instance = self.canisters.get(principal_bytes(canister_id))
        if instance is None:
            installed = ", ".join(c.id for c in self.canisters.values()) or "none"
            raise UnknownCanister(f"no canister {canister_id} is installed (installed: {installed})")
        return instance

    def remove(self, canister_id: str) -> None:
        """Uninstall a canister: its pending calls end, their callers get SYS_... rejects as on the IC."""
        instance = self.get(canister_id)
        del self.canisters[instance.principal]
        self.lifecycle.records.pop(instance.principal, None)
        timer = self._timers.pop(instance.principal, None)
        if timer is not None:
            timer[1].cancel()
        self._end_calls(
            instance,
            Response.rejected(
                RejectCode.DESTINATION_INVALID,
                f"Canister {instance.id} was removed before it answered",
                CANISTER_NOT_FOUND,
            ),
        )
        instance.close()

    def retire(self, instance: CanisterInstance, why: str) -> None:
        """An instance replaced by another module (upgrade, reinstall, uninstall, snapshot): calls that
        wait on it end with a reject, its timer stops, its memory is freed; the new one takes its place."""
        self.set_aside(instance, why)
        instance.close()

    def set_aside(self, instance: CanisterInstance, why: str) -> None:
        """Calls that wait on the instance end with a reject and its timer stops; the instance lives on."""
        timer = self._timers.pop(instance.principal, None)
        if timer is not None:
            timer[1].cancel()
        self.end_calls(instance, why)

    def end_calls(self, instance: CanisterInstance, why: str) -> None:
        self._end_calls(
            instance,
            Response.rejected(
                RejectCode.CANISTER_ERROR,
                f"Canister {instance.id} was {why} before it answered",
                CANISTER_NOT_FOUND if why == "removed" else "IC0503",
            ),
        )

    def schedule_timer(self, instance: CanisterInstance) -> None:
        self._schedule_timer(instance)

    def after_system_message(self, instance: CanisterInstance, message: Message) -> None:
        """A committed canister_init or post_upgrade: its calls are sent, its timer set."""
        self._finish(instance, message, None)

    def record(self, canister_id: str) -> CanisterRecord:
        """A canister's record, installed or empty (an `UnknownCanister` if there is none)."""
        record = self.lifecycle.records.get(principal_bytes(canister_id))
        if record is None:
            self.get(canister_id)  # raises with the list of installed canisters
            raise UnknownCanister(f"no canister {canister_id} exists")
        return record

    @staticmethod
    def _end_calls(instance: CanisterInstance, response: Response) -> None:
        """Every call still waiting on this canister ends with `response` (none waits for good)."""
        for context in list(instance.open_contexts):
            context.respond(response)

    def clear(self) -> None:
        """Remove every canister but the session's and stop everything in flight (between tests)."""
        kept = self.lifecycle.set_aside_pinned()
        for instance in self.canisters.values():
            self._end_calls(
                instance,
                Response.rejected(
                    RejectCode.SYS_TRANSIENT,
                    "the emulator was reset before the canister answered",
                    error_code_for(RejectCode.SYS_TRANSIENT),
                ),
            )
        for task in list(self._tasks):
            task.cancel()
        self._tasks.clear()
        self._timers.clear()
        for instance in self.canisters.values():
            instance.close()
        self.canisters.clear()
        self.standins.clear()
        self.faults = FaultBook()
        self._next_index = FIRST_CANISTER_INDEX  # each test's first canister gets the same id
        self._last_ns = 0  # the clock may have been reset
        self.management = Management(self)
        self.lifecycle = Lifecycle(self)
        self.lifecycle.put_back_pinned(kept)

    # -- calls from outside (ingress) ------------------------------------------------------------

    async def call(
        self,
        canister_id: str,
        method: str,
        arg: bytes,
        *,
        caller: str | None = None,
        cycles: int = 0,
        query: bool = False,
    ) -> bytes:
        """An update (or query) call from outside: the reply bytes, or a `CanisterReject`."""
        standin = self.standins.get(principal_bytes(canister_id))
        instance = None if standin is not None else self.get(canister_id)
        caller_bytes = ANONYMOUS if caller is None else principal_bytes(caller, "caller")
        if cycles < 0:
            raise RuntimeUsageError(f"cycles attached to a call are 0 or more, got {cycles}")
        if len(arg) > MAX_RESPONSE_BYTES:
            raise RuntimeUsageError(
                f"the argument is {len(arg)} bytes; the IC accepts at most 2 MiB per message"
            )
        if standin is not None:
            response = await standin.answer(method, arg, principal_text(caller_bytes), cycles)
        else:
            assert instance is not None
            if not query and instance.entry_point(method, False) == (f"canister_update {method}", False):
                inspect_message(self, instance, method, arg, caller_bytes)
            response = await self.deliver(instance, method, arg, caller_bytes, cycles, query=query)
        if response.reply is None:
            assert response.reject_code is not None
            raise CanisterReject(response.reject_code, response.reject_message, response.error_code)
        return response.reply

    def check_method(self, canister_id: str, method: str, query: bool) -> None:
        instance = self.get(canister_id)
        if instance.entry_point(method, query) is None:
            raise RuntimeUsageError(_no_method(instance, method, query))

    # -- messages -------------------------------------------------------------------------------------

    async def deliver(
        self,
        instance: CanisterInstance,
        method: str,
        arg: bytes,
        caller: bytes,
        cycles: int,
        *,
        query: bool = False,
        deadline_ns: int = 0,
    ) -> Response:
        """Run an incoming call's first message; the response comes when its call context ends."""
        if instance.closed:  # removed while this call was on its way
            return Response.rejected(
                RejectCode.DESTINATION_INVALID,
                f"Canister {instance.id} was removed before the call reached it",
                CANISTER_NOT_FOUND,
                refund=cycles,
            )
        entry = instance.entry_point(method, query)
        if entry is None:  # the IC's CanisterMethodNotFound (IC0536) is a DESTINATION_INVALID reject
            return Response.rejected(
                RejectCode.DESTINATION_INVALID,
                _no_method(instance, method, query),
                METHOD_NOT_FOUND,
                refund=cycles,
            )
        export, as_query = entry
        refused = self.lifecycle.admit(instance.principal)
        if refused is not None:
            return Response(None, refused.reject_code, refused.reject_message, refused.error_code, cycles)
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        composite = export.startswith(COMPOSITE_PREFIX)
        context = CallContext(
            caller, method, 0 if as_query else cycles, deadline_ns, future, composite=composite
        )
        instance.open_contexts.add(context)

        def ended(_: object) -> None:
            instance.open_contexts.discard(context)
            self.lifecycle.context_ended(instance)

        future.add_done_callback(ended)
        message = Message(
            MessageKind.COMPOSITE_QUERY
            if composite
            else (MessageKind.QUERY if as_query else MessageKind.UPDATE),
            context,
            method=method,
            arg=arg,
            caller=caller,
            time_ns=self.now_ns(),
            deadline_ns=deadline_ns,
        )
        with composite_state(instance, context):
            trap = instance.run(message, export, context)
        self._finish(instance, message, trap)
        response = await future
        if as_query and cycles:
            response = Response(
                response.reply, response.reject_code, response.reject_message, response.error_code, cycles
            )
        return response

    def _finish(self, instance: CanisterInstance, message: Message, trap: Any) -> None:
        """After a message: send its calls and its reply if it committed; end its call context if done."""
        context = message.context
        if trap is None:
            if message.building is not None:  # a call begun but never performed: its cycles come back
                instance.balance += message.building.cycles
            for call in message.calls:
                if call.context is not None:
                    call.context.outstanding += 1
                self._spawn(self._send(instance, call))
            if context is not None:
                if message.reply is not None:
                    context.respond(Response(reply=message.reply))
                elif message.reject is not None:
                    context.respond(
                        Response.rejected(RejectCode.CANISTER_REJECT, message.reject, EXPLICIT_REJECT)
                    )
            self._schedule_timer(instance)
        else:
            instance.log_trap(message, trap)
        if context is not None and not context.responded and context.outstanding == 0:
            if trap is not None:
                context.respond(
                    Response.rejected(
                        RejectCode.CANISTER_ERROR,
                        f"Error from Canister {instance.id}: {trap.message}",
                        trap.error_code,
                    )
                )
            else:
                context.respond(
                    Response.rejected(
                        RejectCode.CANISTER_ERROR,
                        f"Canister {instance.id} did not produce a response to {context.method!r}: its "
                        "messages ended without replying and no calls of its are pending",
                        DID_NOT_REPLY,
                    )
                )

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("canister runtime task failed", exc_info=task.exception())

    async def _send(self, instance: CanisterInstance, call: Call) -> None:
        """Deliver one outgoing call and run the callback with its response."""
        epoch = instance.epoch
        if call.timeout is None:
            response = await self._route(instance, call, 0)
        else:
            deadline_ns = self.now_ns() + call.timeout * 1_000_000_000
            route = self._spawn(self._route(instance, call, deadline_ns))
            timer = asyncio.ensure_future(self.clock.sleep_until(deadline_ns / 1e9))
            try:
                await asyncio.wait((route, timer), return_when=asyncio.FIRST_COMPLETED)
            finally:
                timer.cancel()
            if route.done():
                response = route.result()
            else:  # the answer may still come, to nobody: a bounded-wait call's outcome is unknown
                response = Response.rejected(
                    RejectCode.SYS_UNKNOWN,
                    f"Timeout expired: the bounded-wait call to {principal_text(call.callee)} method "
                    f"{call.method!r} got no response within {call.timeout} s; its outcome is unknown",
                    error_code_for(RejectCode.SYS_UNKNOWN),
                )
        if instance.epoch == epoch:  # else a snapshot was loaded: the callback belongs to a past state
            self._callback(instance, call, response)

    async def _route(self, instance: CanisterInstance, call: Call, deadline_ns: int) -> Response:
        arg = bytes(call.arg)
        try:
            callee = principal_text(call.callee)
        except Exception:
            return Response.rejected(
                RejectCode.DESTINATION_INVALID,
                f"the callee {call.callee.hex()} is not a principal",
                CANISTER_NOT_FOUND,
                refund=call.cycles,
            )
        if callee in (LLM_CANISTER_ID, instance.env.get(LLM_ENV_VAR)):
            try:
                return await self.llm(call.method, arg, instance.id, call.cycles)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a fault of the emulator must not wedge the canister
                log.exception("the LLM canister failed on a call from %s", instance.id)
                return Response.rejected(RejectCode.SYS_FATAL, f"the emulated LLM canister failed: {error}")
        fault = self.faults.select(instance.id, callee, call.method)
        if fault is not None:  # a scripted fault strikes before the call reaches its callee
            if isinstance(fault.action, Delay):
                await self.clock.sleep_until(self.clock.now() + fault.action.seconds)
            elif isinstance(fault.action, Hang):
                await asyncio.get_running_loop().create_future()  # ends at the caller's deadline, if any
            else:
                return reject_of(fault.action.code, fault.action.message, call.cycles)
        if call.callee == MANAGEMENT:
            return await self.management.call(instance, call)
        standin = self.standins.get(call.callee)
        if standin is not None:
            await asyncio.sleep(0)  # as for a canister: the answer comes after the caller's message
            return await standin.answer(call.method, arg, instance.id, call.cycles)
        target = self.canisters.get(call.callee)
        empty = self.lifecycle.empty_reject(call.callee) if target is None else None
        if empty is not None:
            return Response(None, empty.reject_code, empty.reject_message, empty.error_code, call.cycles)
        if target is None:
            return Response.rejected(
                RejectCode.DESTINATION_INVALID,
                f"Canister {callee} not found: it is neither installed in this IC nor the LLM canister "
                f"({LLM_CANISTER_ID}, or the canister's env var {LLM_ENV_VAR})",
                CANISTER_NOT_FOUND,
                refund=call.cycles,
            )
        await asyncio.sleep(0)  # the callee's message runs after the caller's, never inside it
        return await self.deliver(
            target,
            call.method,
            arg,
            instance.principal,
            call.cycles,
            query=call.query_only,
            deadline_ns=deadline_ns,
        )

    def _callback(self, instance: CanisterInstance, call: Call, response: Response) -> None:
        if self.canisters.get(instance.principal) is not instance:
            return  # the canister was removed while its call was out
        context = call.context
        if context is not None:
            context.outstanding -= 1
        instance.balance += response.refund
        replied = response.reply is not None
        message = Message(
            MessageKind.REPLY_CALLBACK if replied else MessageKind.REJECT_CALLBACK,
            context,
            method=context.method if context else "",
            arg=response.reply or b"",
            caller=context.caller if context else b"",
            time_ns=self.now_ns(),
            deadline_ns=context.deadline_ns if context else 0,
            reject_code=0 if replied else int(response.reject_code or 0),
            reject_message="" if replied else response.reject_message,
            refunded=response.refund,
        )
        with composite_state(instance, context):
            trap = instance.run(message, call.reply if replied else call.reject, context)
            if trap is not None and call.cleanup is not None:
                cleanup = Message(MessageKind.CLEANUP, context, time_ns=message.time_ns)
                failed = instance.run(cleanup, call.cleanup, context)
                if failed is not None:
                    instance.log_trap(cleanup, failed)
        self._finish(instance, message, trap)

    # -- timers ---------------------------------------------------------------------------------------

    def _schedule_timer(self, instance: CanisterInstance) -> None:
        current = self._timers.get(instance.principal)
        if current is not None and current[0] == instance.timer:
            return
        if current is not None:
            current[1].cancel()
            del self._timers[instance.principal]
        if instance.timer and self.canisters.get(instance.principal) is instance:
            task = self._spawn(self._fire_timer(instance, instance.timer))
            self._timers[instance.principal] = (instance.timer, task)

    async def _fire_timer(self, instance: CanisterInstance, when_ns: int) -> None:
        await self.clock.sleep_until(when_ns / 1e9)
        if self.canisters.get(instance.principal) is not instance or instance.timer != when_ns:
            return
        self._timers.pop(instance.principal, None)
        if self.lifecycle.admit(instance.principal) is not None:
            return  # a stopped canister's timer waits for start_canister
        instance.timer = 0  # the IC deactivates the timer as it fires
        if "canister_global_timer" not in instance.functions:
            return
        self._last_ns = max(self._last_ns, when_ns)
        message = Message(MessageKind.TIMER, None, time_ns=self.now_ns(), caller=MANAGEMENT)
        trap = instance.run(message, "canister_global_timer")
        self._finish(instance, message, trap)

    async def tick(self) -> None:
        """One round: every running canister's heartbeat, then what is due runs until nothing is in flight."""
        for instance in list(self.canisters.values()):
            if (
                "canister_heartbeat" in instance.functions
                and self.lifecycle.admit(instance.principal) is None
            ):
                message = Message(MessageKind.HEARTBEAT, None, time_ns=self.now_ns(), caller=MANAGEMENT)
                trap = instance.run(message, "canister_heartbeat")
                self._finish(instance, message, trap)
        await asyncio.sleep(0)
        await self.settle()

    # -- waiting ------------------------------------------------------------------------------------

    def _busy(self) -> list[asyncio.Task[Any]]:
        timers = {task for _, task in self._timers.values()}
        return [t for t in self._tasks if not t.done() and t not in timers]

    async def quiesce(self, rounds: int = 500) -> None:
        """Let work in flight run on, for at most `rounds` loop iterations (after the clock moved)."""
        for _ in range(rounds):
            if not self._busy():
                return
            await asyncio.sleep(0)

    async def settle(self, timeout: float = 5.0) -> bool:
        """Wait until no call is in flight (timers waiting on the clock do not count); False on timeout."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            busy = self._busy()
            if not busy:
                for _ in range(3):
                    await asyncio.sleep(0)
                if not self._busy():
                    return True
                continue
            remaining = end - loop.time()
            if remaining <= 0:
                return False
            await asyncio.wait(busy, timeout=min(remaining, 0.05))


def _no_method(instance: CanisterInstance, method: str, query: bool) -> str:
    kind = "query" if query else "update or query"
    methods = instance.query_methods if query else sorted({*instance.update_methods, *instance.query_methods})
    return (
        f"Canister {instance.id} has no {kind} method {method!r}; it has "
        f"{', '.join(repr(m) for m in methods) or 'none'}"
    )
