"""Canisters in a test: the `icllm_canister` fixture's objects, over the engine's canister runtime.

The runtime lives on an event loop in another thread (the in-process emulator's, or a private one when
the plugin is pointed at an emulator process); every method here hands its work to that loop and waits
for the result, so a test reads like a sequence of calls on objects, and `submit` leaves a call running
while the test holds, inspects and releases the LLM answers it waits for.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from icllm_emulator.domain import Reject, RejectCode
from icllm_emulator.errors import IcllmError
from icllm_emulator.rules import Hang, RuleError, parse_reject_code
from icllm_emulator.runtime import CanisterReject, CanisterRuntime, InstallSettings, RuntimeUsageError
from icllm_emulator.runtime.errors import ModuleError
from icllm_emulator.runtime.ic import DEFAULT_CYCLES, LLM_CANISTER_ID, principal_bytes, principal_text
from icllm_emulator.runtime.instance import CanisterInstance
from icllm_emulator.runtime.standins import (
    Answer,
    Delay,
    Fault,
    FaultAction,
    ReplyWith,
    StandIn,
    StandInAction,
    StandInCall,
    StandInRule,
    Trap,
)
from icllm_emulator.runtime.values import Interface

T = TypeVar("T")
P = ParamSpec("P")
# How long a call from a test waits for its canister before the test fails (a held LLM answer that is
# never released, a canister that never replies): generous, so that only a wedged test reaches it.
# The setting canister_timeout (--icllm-canister-timeout) changes it.
DEFAULT_TIMEOUT = 60.0


def at_the_tests_line(method: Callable[P, T]) -> Callable[P, T]:
    """A test's mistake, a bad module or a canister's reject points at the test's line: the runtime's
    frames (in this thread or in the runtime's loop) are dropped, as the controller's errors drop gRPC's."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        __tracebackhide__ = True
        try:
            return method(*args, **kwargs)
        except (IcllmError, CanisterReject, TimeoutError) as error:
            raise error.with_traceback(None)  # noqa: B904 (the same error, its cause kept)

    return call


class Loop:
    """Runs coroutines on the runtime's event loop from the test's thread.

    `explain` says, when a call times out, what it may be waiting for (the LLM answers still pending).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        timeout: float = DEFAULT_TIMEOUT,
        explain: Callable[[], str] | None = None,
    ) -> None:
        self.loop = loop
        self.timeout = timeout
        self.explain = explain

    def submit(self, work: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(work, self.loop)

    def run(self, work: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """The work's result, waiting at most `timeout` s (default: the loop's)."""
        if _running_loop() is self.loop:  # waiting here would wedge the loop that has to do the work
            work.close()
            raise RuntimeUsageError(
                "the canister runtime was called from its own event loop: a stand-in's reply_with "
                "function runs there, and may only compute its reply from its argument and caller"
            )
        future = self.submit(work)
        try:
            return self.wait(future, timeout, "the canister runtime did not finish")
        except TimeoutError:
            future.cancel()
            raise

    def wait(self, future: concurrent.futures.Future[T], timeout: float | None, what: str) -> T:
        """The future's result; a TimeoutError that says what is pending when it takes too long."""
        timeout = self.timeout if timeout is None else timeout
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            why = self.explain() if self.explain is not None else ""
            raise TimeoutError(f"{what} within {timeout} s (--icllm-canister-timeout){why}") from None


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class PrivateLoop(Loop):
    """An event loop of its own in a daemon thread, for a runtime whose LLM canister is remote."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, explain: Callable[[], str] | None = None) -> None:
        super().__init__(asyncio.new_event_loop(), timeout, explain)
        self._thread = threading.Thread(target=self.loop.run_forever, name="icllm-canisters", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


def _read_wasm(wasm: bytes | str | Path) -> tuple[bytes, str]:
    if isinstance(wasm, bytes | bytearray):
        return bytes(wasm), "the module"
    path = Path(wasm)
    if not path.is_file():
        where = (
            ""
            if path.is_absolute()
            else f" (that is {path.absolute()}: a relative path starts at the "
            "working directory, not at the test's folder; Path(__file__).parent / NAME is the test's)"
        )
        raise ModuleError(
            f"no canister module at {path}{where}: give the path of a .wasm or .wasm.gz file, or its bytes"
        )
    return path.read_bytes(), str(path)


def _read_did(did: str | Path) -> tuple[str, str]:
    if isinstance(did, Path) or (isinstance(did, str) and did.endswith(".did") and "\n" not in did):
        path = Path(did)
        if not path.is_file():
            raise RuntimeUsageError(f"no Candid interface at {path}: give a .did file's path or its text")
        return path.read_text(encoding="utf-8"), str(path)
    return did, "the did text"


class PendingCall:
    """A call sent by `Canister.submit`: still running while its LLM answers are held."""

    def __init__(self, canister: Canister, method: str, future: concurrent.futures.Future[bytes]) -> None:
        self._canister = canister
        self._method = method
        self._future = future

    def done(self) -> bool:
        """Whether the call has finished (replied or been rejected)."""
        return self._future.done()

    @at_the_tests_line
    def result(self, timeout: float | None = None) -> Any:
        """The decoded reply (a `CanisterReject` if the call was rejected); waits up to `timeout` s
        (default: the canister_timeout setting)."""
        __tracebackhide__ = True
        what = f"{self._method!r} on {self._canister.id} did not finish"
        reply = self._canister._ic.loop.wait(self._future, timeout, what)
        return self._canister._decode(self._method, reply)


class Canister:
    """A canister installed in this test's IC (exposed for type hints; get one from `icllm_canister`).

    `update` and `query` take Python values, encoded from the canister's Candid interface, and return the
    decoded reply: None for no value, the value for one, a tuple for several. A reject raises
    `pytest_icllm.CanisterReject` with the IC reject code, message and error code.
    """

    def __init__(self, ic: CanisterIC, instance: CanisterInstance, interface: Interface | None) -> None:
        self._ic = ic
        self._instance = instance
        self.interface = interface

    @property
    def id(self) -> str:
        """The canister's principal, as text."""
        return self._instance.id

    def __repr__(self) -> str:
        return f"<Canister {self.id}>"

    # -- calls ----------------------------------------------------------------------------------

    @at_the_tests_line
    def update(self, method: str, *args: Any, caller: str | None = None, cycles: int = 0) -> Any:
        """Call `method` as an update (with `cycles` attached) and return its decoded reply."""
        __tracebackhide__ = True
        return self._decode(
            method, self._call(method, self._encode(method, args, query=False), caller, cycles)
        )

    @at_the_tests_line
    def query(self, method: str, *args: Any, caller: str | None = None) -> Any:
        """Call a query method; whatever it changes is discarded, as on the IC."""
        __tracebackhide__ = True
        arg = self._encode(method, args, query=True)
        return self._decode(method, self._call(method, arg, caller, 0, query=True))

    @at_the_tests_line
    def update_raw(self, method: str, arg: bytes, *, caller: str | None = None, cycles: int = 0) -> bytes:
        """Call `method` with Candid bytes as they are; returns the reply's bytes."""
        __tracebackhide__ = True
        return self._call(method, arg, caller, cycles)

    @at_the_tests_line
    def query_raw(self, method: str, arg: bytes, *, caller: str | None = None) -> bytes:
        """Call a query method with Candid bytes as they are; returns the reply's bytes."""
        __tracebackhide__ = True
        return self._call(method, arg, caller, 0, query=True)

    @at_the_tests_line
    def submit(self, method: str, *args: Any, caller: str | None = None, cycles: int = 0) -> PendingCall:
        """Send an update call and return at once: the test steers the LLM while the canister waits."""
        arg = self._encode(method, args, query=False)
        future = self._ic.loop.submit(
            self._ic.runtime.call(self.id, method, arg, caller=caller, cycles=cycles)
        )
        return PendingCall(self, method, future)

    def _call(self, method: str, arg: bytes, caller: str | None, cycles: int, query: bool = False) -> bytes:
        __tracebackhide__ = True
        if caller is not None:
            principal_bytes(caller, "caller")
        return self._ic.loop.run(
            self._ic.runtime.call(self.id, method, arg, caller=caller, cycles=cycles, query=query)
        )

    def _encode(self, method: str, args: tuple[Any, ...], *, query: bool) -> bytes:
        interface = self._needs_interface(method)
        declared = interface.method(method)
        if query and not declared.query:
            raise RuntimeUsageError(f"{method!r} is an update method of {self.id}: call it with update()")
        return interface.encode_call(method, args)

    def _decode(self, method: str, reply: bytes) -> Any:
        return self._needs_interface(method).decode_reply(method, reply)

    def _needs_interface(self, method: str) -> Interface:
        if self.interface is None:
            raise RuntimeUsageError(
                f"{self.id} has no Candid interface to encode {method!r}'s arguments: its module carries no "
                "candid:service section; pass did= (a .did path or text) to icllm_canister, "
                "or use update_raw()"
            )
        return self.interface

    # -- state --------------------------------------------------------------------------------------

    @property
    def logs(self) -> list[str]:
        """What the canister printed with `debug_print`, and its traps, oldest first."""
        return self._ic.loop.run(self._ic.read(lambda: [line.text for line in self._instance.logs]))

    @property
    def balance(self) -> int:
        """The canister's cycle balance."""
        return self._ic.loop.run(self._ic.read(lambda: self._instance.balance))


def _reject(code: RejectCode | int, message: str) -> Reject:
    __tracebackhide__ = True
    try:
        return Reject(parse_reject_code(code), message)
    except RuleError as error:
        raise ValueError(str(error)) from None


@dataclass
class StubRule:
    """A rule added to a stand-in, or a fault; `uses` says how often it has answered (or struck)."""

    id: str
    description: str
    _uses: Callable[[], dict[str, int]] = field(repr=False)

    @property
    def uses(self) -> int:
        return self._uses().get(self.id, 0)


@dataclass(frozen=True)
class StubExpectation:
    """Calls of one method of a stand-in; end it with what the stand-in answers."""

    _stub: Stub
    _method: str
    _times: int | None = None

    def times(self, count: int) -> StubExpectation:
        """Answer at most `count` calls (then the next rule for the method answers, or none)."""
        __tracebackhide__ = True
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"times must be 1 or more, got {count!r}")
        return StubExpectation(self._stub, self._method, count)

    def reply(self, value: Any = None) -> StubRule:
        """Reply with this value as `Canister.update` returns it: None, the value, or a tuple for several."""
        __tracebackhide__ = True
        return self._add(self._stub._standin.reply_values(self._method, value))

    def reply_with(self, answer: Answer) -> StubRule:
        """Reply with `answer(arg, caller)`: arg decoded as `Canister.update` takes it, caller as text."""
        __tracebackhide__ = True
        if not callable(answer):
            raise ValueError(f"reply_with takes a function (arg, caller) -> reply, got {answer!r}")
        return self._add(ReplyWith(answer))

    def reject(self, code: RejectCode | int, message: str) -> StubRule:
        """Reject the call with an IC reject code (1-6) and message, as the canister would."""
        __tracebackhide__ = True
        return self._add(_reject(code, message))

    def trap(self, message: str) -> StubRule:
        """Trap: the caller gets CANISTER_ERROR (IC0503), as from a canister that called ic0.trap."""
        return self._add(Trap(message))

    def hang(self) -> StubRule:
        """Never answer: a bounded-wait caller gets SYS_UNKNOWN at its deadline, others wait."""
        return self._add(Hang())

    def _add(self, action: StandInAction) -> StubRule:
        __tracebackhide__ = True
        rule = StandInRule(self._method, action, self._times)
        stub = self._stub
        added = stub._read(lambda standin: standin.add(rule))
        return StubRule(added.id, added.describe(), lambda: stub._read(StandIn.uses))


class Stub:
    """A stand-in canister at a principal, typed by its Candid interface (get one from `icllm_canister.stub`).

    `on(method)` scripts its answers; `calls` lists what it received; `hold` and `release` choose the order
    in which its callers see the answers. It accepts no cycles: what a call attaches comes back.
    """

    def __init__(self, ic: CanisterIC, standin: StandIn) -> None:
        self._ic = ic
        self._standin = standin

    @property
    def id(self) -> str:
        return self._standin.id

    @property
    def interface(self) -> Interface:
        return self._standin.interface

    def __repr__(self) -> str:
        return f"<Stub {self.id}>"

    def on(self, method: str) -> StubExpectation:
        """Script what the stand-in answers to calls of `method` (rules are tried in the order added)."""
        __tracebackhide__ = True
        self._standin.method(method)
        return StubExpectation(self, method)

    @property
    def calls(self) -> list[StandInCall]:
        """Every call it received, oldest first: method, arg (decoded), caller, cycles, rule_id, outcome."""
        return self._read(lambda standin: [dataclasses.replace(call) for call in standin.calls])

    def hold(self, enabled: bool = True) -> None:
        """While on, its answers wait until released: choose the order its callers see them."""
        self._read(lambda standin: standin.hold(enabled))

    def held(self, count: int = 0, timeout: float = 10.0) -> list[str]:
        """Ids of held calls, oldest first, waiting until at least `count` are held (blocking)."""
        __tracebackhide__ = True
        give_up = time.monotonic() + timeout
        while len(found := self._read(lambda standin: list(standin.held))) < count:
            if time.monotonic() > give_up:
                raise AssertionError(
                    f"{count} calls held at the stand-in {self.id} expected within {timeout} s; "
                    f"held: {', '.join(found) or 'none'}"
                )
            time.sleep(0.002)
        return found

    def release(self, *call_ids: str) -> list[str]:
        """Deliver held answers in the order given."""
        __tracebackhide__ = True
        return self._read(lambda standin: standin.release(call_ids))

    def release_all(self) -> list[str]:
        """Deliver every held answer, oldest first; returns the call ids."""
        return self._read(lambda standin: standin.release(None))

    def _read(self, get: Callable[[StandIn], T]) -> T:
        __tracebackhide__ = True
        return self._ic.loop.run(self._ic.read(lambda: get(self._standin)))


@dataclass(frozen=True)
class FaultExpectation:
    """Calls between canisters that a fault strikes; end it with what happens to them."""

    _ic: CanisterIC
    _callee: str | None
    _method: str | None
    _caller: str | None
    _times: int | None = None

    def times(self, count: int) -> FaultExpectation:
        """Strike at most `count` calls."""
        __tracebackhide__ = True
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"times must be 1 or more, got {count!r}")
        return dataclasses.replace(self, _times=count)

    def reject(self, code: RejectCode | int, message: str) -> StubRule:
        """The call is rejected with this IC code and message; the callee never sees it."""
        __tracebackhide__ = True
        return self._add(_reject(code, message))

    def hang(self) -> StubRule:
        """The call is never answered: a bounded-wait caller gets SYS_UNKNOWN at its deadline."""
        return self._add(Hang())

    def delay(self, seconds: float) -> StubRule:
        """The call reaches its callee this many seconds later, on the engine's clock."""
        __tracebackhide__ = True
        return self._add(Delay(seconds))

    def _add(self, action: FaultAction) -> StubRule:
        __tracebackhide__ = True
        try:
            fault = Fault(action, self._callee, self._method, self._caller, self._times)
        except RuleError as error:
            raise ValueError(str(error)) from None
        ic = self._ic
        added = ic.loop.run(ic.read(lambda: ic.runtime.faults.add(fault)))
        return StubRule(added.id, added.describe(), lambda: ic.loop.run(ic.read(ic.runtime.faults.uses)))


class Faults:
    """Faults on calls between this test's canisters: `icllm_canister.faults.on(callee=...).reject(...)`."""

    def __init__(self, ic: CanisterIC) -> None:
        self._ic = ic

    def on(
        self,
        *,
        callee: str | Canister | Stub | None = None,
        method: str | None = None,
        caller: str | Canister | None = None,
    ) -> FaultExpectation:
        """Strike calls that match every criterion given (none: every call between canisters)."""
        __tracebackhide__ = True
        callee_id = _principal(callee, "callee")
        if callee_id == LLM_CANISTER_ID:
            raise ValueError(
                "calls to the LLM canister are scripted with icllm.on(...).reject/hang/after, not with faults"
            )
        return FaultExpectation(self._ic, callee_id, method, _principal(caller, "caller"))


def _principal(given: str | Canister | Stub | None, what: str) -> str | None:
    __tracebackhide__ = True
    if given is None:
        return None
    if isinstance(given, Canister | Stub):
        return given.id
    return principal_text(principal_bytes(given, what))


class CanisterIC:
    """This test's IC: install canisters with `icllm_canister(...)`, wait for in-flight work with `settle`."""

    def __init__(self, runtime: CanisterRuntime, loop: Loop) -> None:
        self.runtime = runtime
        self.loop = loop
        self.canisters: list[Canister] = []
        self.stubs: list[Stub] = []
        self.faults = Faults(self)

    def stub(self, principal: str, *, did: str | Path) -> Stub:
        """A stand-in canister at `principal` (any principal where no canister is installed), typed by
        `did` (a .did path or text): script it with `.on(method).reply(...)`."""
        __tracebackhide__ = True
        interface = Interface(*_read_did(did))
        principal_bytes(principal)
        standin = self.loop.run(self.read(lambda: self.runtime.stub(principal, interface)))
        stub = Stub(self, standin)
        self.stubs.append(stub)
        return stub

    def _problems(self, check_unused: bool, check_unexpected: bool) -> list[str]:
        """What the teardown checks find wrong with this test's stand-ins and faults."""

        def gather() -> list[str]:
            found = [
                problem
                for standin in self.runtime.standins.values()
                for problem in standin.problems(check_unused, check_unexpected)
            ]
            return found + self.runtime.faults.problems(check_unused)

        return self.loop.run(self.read(gather))

    @at_the_tests_line
    def __call__(
        self,
        wasm: bytes | str | Path,
        *,
        did: str | Path | None = None,
        init: tuple[Any, ...] | bytes | None = None,
        env: Mapping[str, str] | None = None,
        cycles: int | None = None,
        instruction_limit: int | None = None,
    ) -> Canister:
        """Install a canister module (`.wasm`, `.wasm.gz` or bytes) in this test's IC.

        `did`: its Candid interface (a .did path or text; default: the module's candid:service section).
        `init`: canister_init's arguments, a tuple of values (or Candid bytes). `env`: its environment
        variables (`PUBLIC_CANISTER_ID:llm` defaults to the LLM canister's id). `cycles`: its balance
        (default 100T). `instruction_limit`: Wasm instructions per message (default 5 billion).
        """
        __tracebackhide__ = True
        data, source = _read_wasm(wasm)
        given = None if did is None else Interface(*_read_did(did))
        if env is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise RuntimeUsageError(f"env is a mapping of text to text, got {dict(env)!r}")
        if cycles is not None and (not isinstance(cycles, int) or cycles < 0):
            raise RuntimeUsageError(f"cycles is a number of cycles, 0 or more, got {cycles!r}")
        if instruction_limit is not None and (
            not isinstance(instruction_limit, int) or instruction_limit < 1
        ):
            raise RuntimeUsageError(
                f"instruction_limit is a number of instructions, 1 or more, got {instruction_limit!r}"
            )

        async def install() -> tuple[CanisterInstance, Interface | None]:
            from icllm_emulator.runtime.module import inspect, unpack

            raw = unpack(data, source)
            interface = given
            if interface is None:
                candid = inspect(raw).candid
                interface = (
                    None if candid is None else Interface(candid, f"{source}'s candid:service section")
                )
            if isinstance(init, tuple):
                if interface is None:
                    raise RuntimeUsageError(
                        "init= as Python values needs the canister's interface: "
                        "pass did= or init as Candid bytes"
                    )
                init_arg = interface.encode_init(init)
            elif init is None:
                init_arg = b"DIDL\0\0"
            elif isinstance(init, bytes | bytearray):
                init_arg = bytes(init)
            else:
                raise RuntimeUsageError(f"init is a tuple of argument values or Candid bytes, got {init!r}")
            settings = InstallSettings(
                init_arg=init_arg,
                env=tuple((env or {}).items()),
                cycles=DEFAULT_CYCLES if cycles is None else cycles,
                name=Path(source).stem if source != "the module" else "",
                instruction_limit=instruction_limit,
            )
            return await self.runtime.install_async(raw, settings), interface

        # Compiling a large module takes its time, whatever a call may take.
        instance, interface = self.loop.run(install(), max(self.loop.timeout, DEFAULT_TIMEOUT))
        canister = Canister(self, instance, interface)
        self.canisters.append(canister)
        return canister

    @at_the_tests_line
    def settle(self, timeout: float = 5.0) -> bool:
        """Wait until no call between canisters or to the LLM is in flight (False if some still are)."""
        return self.loop.run(self.runtime.settle(timeout), timeout + 5)

    async def read(self, get: Callable[[], T]) -> T:
        """Read runtime state on its own loop (never from the test's thread while a message runs)."""
        return get()


__all__ = [
    "Canister",
    "CanisterIC",
    "CanisterReject",
    "FaultExpectation",
    "Faults",
    "PendingCall",
    "Stub",
    "StubExpectation",
    "StubRule",
]
