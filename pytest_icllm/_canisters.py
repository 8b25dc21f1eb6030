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
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from icllm_emulator.domain import Reject, RejectCode
from icllm_emulator.errors import IcllmError
from icllm_emulator.rules import Hang, RuleError, parse_reject_code
from icllm_emulator.runtime import CanisterReject, CanisterRuntime, InstallSettings, RuntimeUsageError
from icllm_emulator.runtime.errors import ModuleError
from icllm_emulator.runtime.ids import (
    ANONYMOUS,
    DEFAULT_CYCLES,
    LLM_CANISTER_ID,
    principal_bytes,
    principal_text,
)
from icllm_emulator.runtime.instance import CanisterInstance
from icllm_emulator.runtime.management.lifecycle import InstallMode, UpgradeOptions, auto_persistence
from icllm_emulator.runtime.module import inspect, unpack
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
from icllm_emulator.runtime.system_api import PAGE
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

    def __init__(self, ic: CanisterIC, canister_id: str, interface: Interface | None) -> None:
        self._ic = ic
        self._id = canister_id
        self._principal = principal_bytes(canister_id)
        self.interface = interface

    @property
    def id(self) -> str:
        """The canister's principal, as text."""
        return self._id

    @property
    def _instance(self) -> CanisterInstance:
        """The module running now (an upgrade or a restore puts another in its place)."""
        return self._ic.runtime.get(self._id)

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
        """What the canister printed with `debug_print`, and its traps, oldest first (across upgrades)."""
        return self._ic.loop.run(
            self._ic.read(lambda: [line.text for line in self._ic.runtime.record(self.id).logs])
        )

    @property
    def balance(self) -> int:
        """The canister's cycle balance (read by the test whoever controls the canister)."""

        def read() -> int:
            instance = self._ic.runtime.canisters.get(self._principal)
            return self._ic.runtime.record(self.id).balance if instance is None else instance.balance

        return self._ic.loop.run(self._ic.read(read))

    @property
    def stable_memory(self) -> bytes:
        """The canister's stable memory; assign bytes to replace it (padded with zeros to whole pages)."""
        return self._ic.loop.run(self._ic.read(lambda: bytes(self._instance.stable)))

    @stable_memory.setter
    def stable_memory(self, data: bytes) -> None:
        if not isinstance(data, bytes | bytearray):
            raise RuntimeUsageError(f"stable_memory is bytes, got {type(data).__name__}")
        padded = bytes(data) + bytes(-len(data) % PAGE)

        def put() -> None:
            instance = self._instance
            instance.stable[:] = padded

        self._ic.loop.run(self._ic.read(put))

    # -- lifecycle (the management canister, asked by the test as `caller`, anonymous by default) ----

    @at_the_tests_line
    def upgrade(
        self,
        wasm: bytes | str | Path | None = None,
        *,
        init: tuple[Any, ...] | bytes | None = None,
        skip_pre_upgrade: bool = False,
        wasm_memory_persistence: str | None = "auto",
        caller: str | None = None,
    ) -> None:
        """Upgrade to `wasm` (the installed module when None): pre_upgrade on the old module, post_upgrade
        with `init` on the new one, stable memory kept. `wasm_memory_persistence` "auto" keeps the heap
        of a module built for enhanced orthogonal persistence, as dfx and icp-cli ask for it; "keep",
        "replace" or None (not asked: the IC refuses such a module) pass the option as given. A trap
        anywhere raises `CanisterReject` and leaves the old module answering."""
        __tracebackhide__ = True
        self._install(InstallMode.UPGRADE, wasm, init, caller, skip_pre_upgrade, wasm_memory_persistence)

    @at_the_tests_line
    def reinstall(
        self,
        wasm: bytes | str | Path | None = None,
        *,
        init: tuple[Any, ...] | bytes | None = None,
        caller: str | None = None,
    ) -> None:
        """Replace the module and wipe its state (heap and stable memory), then run canister_init."""
        __tracebackhide__ = True
        self._install(InstallMode.REINSTALL, wasm, init, caller, False, None)

    def _install(
        self,
        mode: InstallMode,
        wasm: bytes | str | Path | None,
        init: tuple[Any, ...] | bytes | None,
        caller: str | None,
        skip_pre_upgrade: bool,
        persistence: str | None,
    ) -> None:
        __tracebackhide__ = True
        if persistence not in ("auto", "keep", "replace", None):
            raise RuntimeUsageError(
                f"wasm_memory_persistence is 'auto', 'keep', 'replace' or None, got {persistence!r}"
            )
        if wasm is None:
            raw = self._ic.loop.run(self._ic.read(lambda: self._ic.runtime.record(self.id).wasm))
            if raw is None:
                raise RuntimeUsageError(f"{self.id} has no module installed: give upgrade() a wasm")
            source = "the installed module"
        else:
            data, source = _read_wasm(wasm)
            raw = unpack(data, source)
        info = inspect(raw)
        interface = self.interface
        if wasm is not None and info.candid is not None:
            interface = Interface(info.candid, f"{source}'s candid:service section")
        arg = _init_arg(init, interface)
        if persistence == "auto":
            persistence = auto_persistence(info)
        options = UpgradeOptions(skip_pre_upgrade, persistence)
        sender = self._ic._sender(caller)
        self._ic.loop.run(
            self._ic.runtime.lifecycle.install_code(sender, self._principal, raw, arg, mode, options)
        )
        self.interface = interface

    @at_the_tests_line
    def stop(self, *, caller: str | None = None, wait: bool = True) -> None:
        """Stop the canister: calls in flight finish, new ones are rejected (IC0509, then IC0508).

        Returns once it is stopped; with `wait=False`, as soon as it is stopping, so that the test can
        watch the calls in flight finish."""
        __tracebackhide__ = True
        stopping = self._ic.loop.submit(
            self._ic.runtime.lifecycle.stop(self._ic._sender(caller), self._principal)
        )
        if wait:
            stopping.result(DEFAULT_TIMEOUT)
            return
        self._ic.loop.run(asyncio.sleep(0))  # the stop has begun: checked, and the canister stopping
        if stopping.done():
            stopping.result()

    @at_the_tests_line
    def start(self, *, caller: str | None = None) -> None:
        """Start a stopped (or stopping) canister: it takes calls again."""
        __tracebackhide__ = True
        self._manage(lambda s: self._ic.runtime.lifecycle.start(s, self._principal), caller)

    @at_the_tests_line
    def delete(self, *, caller: str | None = None) -> None:
        """Delete the canister (stop it first, as on the IC)."""
        __tracebackhide__ = True
        self._manage(lambda s: self._ic.runtime.lifecycle.delete(s, self._principal), caller)

    @at_the_tests_line
    def status(self, *, caller: str | None = None) -> dict[str, Any]:
        """canister_status as a dict: `status` ("running", "stopping" or "stopped"), `module_hash`,
        `controllers`, `cycles`, `memory_size`, `settings`, and the interface's other fields."""
        __tracebackhide__ = True
        raw = self._manage(lambda s: self._ic.runtime.lifecycle.status(s, self._principal), caller)
        result = dict(raw)
        result["status"] = next(iter(raw["status"]))
        result["controllers"] = list(raw["settings"]["controllers"])
        return result

    @at_the_tests_line
    def snapshot(self, *, caller: str | None = None) -> bytes:
        """Take a snapshot of the canister's module and state; returns its id."""
        __tracebackhide__ = True
        taken = self._manage(lambda s: self._ic.runtime.lifecycle.take_snapshot(s, self._principal), caller)
        return bytes(taken.id)

    @at_the_tests_line
    def restore(self, snapshot_id: bytes, *, caller: str | None = None) -> None:
        """Load a snapshot: the module, heap, stable memory and chunks as they were when it was taken."""
        __tracebackhide__ = True
        self._ic.loop.run(
            self._ic.runtime.lifecycle.load_snapshot(self._ic._sender(caller), self._principal, snapshot_id)
        )

    def _manage(self, work: Callable[[bytes], T], caller: str | None) -> T:
        __tracebackhide__ = True
        sender = self._ic._sender(caller)
        return self._ic.loop.run(self._ic.read(lambda: work(sender)))


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

    def __init__(self, runtime: CanisterRuntime, loop: Loop, *, session: bool = False) -> None:
        self.runtime = runtime
        self.loop = loop
        self.canisters: list[Canister] = []
        self.stubs: list[Stub] = []
        self.faults = Faults(self)
        # Canisters installed through the session fixture outlive each test's reset.
        self.session = session

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

    @staticmethod
    def _sender(caller: str | None) -> bytes:
        """Who manages a canister: the anonymous principal (the test) unless a caller is named."""
        return ANONYMOUS if caller is None else principal_bytes(caller, "caller")

    @at_the_tests_line
    def __call__(
        self,
        wasm: bytes | str | Path,
        *,
        did: str | Path | None = None,
        init: tuple[Any, ...] | bytes | None = None,
        env: Mapping[str, str] | None = None,
        cycles: int | None = None,
        id: str | None = None,
        controllers: Sequence[str] | None = None,
        instruction_limit: int | None = None,
    ) -> Canister:
        """Install a canister module (`.wasm`, `.wasm.gz` or bytes) in this test's IC.

        `did`: its Candid interface (a .did path or text; default: the module's candid:service section).
        `init`: canister_init's arguments, a tuple of values (or Candid bytes). `env`: its environment
        variables (`PUBLIC_CANISTER_ID:llm` defaults to the LLM canister's id). `cycles`: its balance
        (default 100T). `id`: the principal to install it at (any, mainnet ids included; default the
        next free one). `controllers`: its controllers (default: the anonymous principal, the test).
        `instruction_limit`: Wasm instructions per message (default 5 billion).
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

        canister_id = None if id is None else principal_bytes(id, "id")
        if isinstance(controllers, str):
            raise RuntimeUsageError(f"controllers is a list of principals, got the text {controllers!r}")
        owners = None if controllers is None else tuple(principal_bytes(c, "controller") for c in controllers)

        async def install() -> tuple[CanisterInstance, Interface | None]:
            raw = unpack(data, source)
            interface = given
            if interface is None:
                candid = inspect(raw).candid
                interface = (
                    None if candid is None else Interface(candid, f"{source}'s candid:service section")
                )
            init_arg = _init_arg(init, interface)
            settings = InstallSettings(
                canister_id=canister_id,
                controllers=owners,
                init_arg=init_arg,
                env=tuple((env or {}).items()),
                cycles=DEFAULT_CYCLES if cycles is None else cycles,
                name=Path(source).stem if source != "the module" else "",
                instruction_limit=instruction_limit,
            )
            instance = await self.runtime.install_async(raw, settings)
            if self.session:
                self.runtime.lifecycle.pinned.add(instance.principal)
            return instance, interface

        # Compiling a large module takes its time, whatever a call may take.
        instance, interface = self.loop.run(install(), max(self.loop.timeout, DEFAULT_TIMEOUT))
        canister = Canister(self, instance.id, interface)
        self.canisters.append(canister)
        return canister

    @at_the_tests_line
    def get(self, principal: str, *, did: str | Path | None = None) -> Canister:
        """A `Canister` for one installed in this IC by other means: an actor-class child, say."""
        __tracebackhide__ = True
        given = None if did is None else Interface(*_read_did(did))

        async def find() -> str | None:
            return self.runtime.get(principal).candid

        candid = self.loop.run(find())
        interface = given or (None if candid is None else Interface(candid, f"{principal}'s candid:service"))
        return Canister(self, principal, interface)

    @at_the_tests_line
    def tick(self, n: int = 1) -> None:
        """Run `n` rounds: each runs every running canister's heartbeat and what is due (timers, the
        self-calls they make), then waits until nothing is in flight, as a PocketIC tick does."""
        __tracebackhide__ = True
        if not isinstance(n, int) or n < 1:
            raise RuntimeUsageError(f"tick(n) runs n rounds, 1 or more, got {n!r}")
        for _ in range(n):
            self.loop.run(self.runtime.tick())

    @at_the_tests_line
    def settle(self, timeout: float = 5.0) -> bool:
        """Wait until no call between canisters or to the LLM is in flight (False if some still are)."""
        return self.loop.run(self.runtime.settle(timeout), timeout + 5)

    async def read(self, get: Callable[[], T]) -> T:
        """Read runtime state on its own loop (never from the test's thread while a message runs)."""
        return get()


def _init_arg(init: tuple[Any, ...] | bytes | None, interface: Interface | None) -> bytes:
    if isinstance(init, tuple):
        if interface is None:
            raise RuntimeUsageError(
                "init= as Python values needs the canister's interface: pass did= or init as Candid bytes"
            )
        return interface.encode_init(init)
    if init is None:
        return b"DIDL\0\0"
    if isinstance(init, bytes | bytearray):
        return bytes(init)
    raise RuntimeUsageError(f"init is a tuple of argument values or Candid bytes, got {init!r}")


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
