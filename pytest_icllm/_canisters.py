"""Canisters in a test: the `icllm_canister` fixture's objects, over the engine's canister runtime.

The runtime lives on an event loop in another thread (the in-process emulator's, or a private one when
the plugin is pointed at an emulator process); every method here hands its work to that loop and waits
for the result, so a test reads like a sequence of calls on objects, and `submit` leaves a call running
while the test holds, inspects and releases the LLM answers it waits for.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

from icllm_emulator.runtime import CanisterReject, CanisterRuntime, InstallSettings, RuntimeUsageError
from icllm_emulator.runtime.errors import ModuleError
from icllm_emulator.runtime.ic import DEFAULT_CYCLES, check_instruction_limit, principal_bytes
from icllm_emulator.runtime.instance import CanisterInstance
from icllm_emulator.runtime.values import Interface

T = TypeVar("T")
# How long a call from a test waits for its canister before the test fails (a held LLM answer that is
# never released, a canister that never replies): generous, so that only a wedged test reaches it.
DEFAULT_TIMEOUT = 60.0


class Loop:
    """Runs coroutines on the runtime's event loop from the test's thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def submit(self, work: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(work, self.loop)

    def run(self, work: Coroutine[Any, Any, T], timeout: float | None = DEFAULT_TIMEOUT) -> T:
        future = self.submit(work)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"the canister runtime did not finish within {timeout} s") from None


class PrivateLoop(Loop):
    """An event loop of its own in a daemon thread, for a runtime whose LLM canister is remote."""

    def __init__(self) -> None:
        super().__init__(asyncio.new_event_loop())
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
        raise ModuleError(
            f"no canister module at {path}: give the path of a .wasm or .wasm.gz file, or its bytes"
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
        return self._future.done()

    def result(self, timeout: float | None = DEFAULT_TIMEOUT) -> Any:
        """The decoded reply (a `CanisterReject` if the call was rejected); waits up to `timeout` s."""
        __tracebackhide__ = True
        try:
            reply = self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(
                f"{self._method!r} on {self._canister.id} is still running after {timeout} s: is an LLM "
                "answer it waits for held (icllm.release) or its worker paused?"
            ) from None
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

    def update(self, method: str, *args: Any, caller: str | None = None, cycles: int = 0) -> Any:
        """Call `method` as an update (with `cycles` attached) and return its decoded reply."""
        __tracebackhide__ = True
        return self._decode(
            method, self._call(method, self._encode(method, args, query=False), caller, cycles)
        )

    def query(self, method: str, *args: Any, caller: str | None = None) -> Any:
        """Call a query method; whatever it changes is discarded, as on the IC."""
        __tracebackhide__ = True
        arg = self._encode(method, args, query=True)
        return self._decode(method, self._call(method, arg, caller, 0, query=True))

    def update_raw(self, method: str, arg: bytes, *, caller: str | None = None, cycles: int = 0) -> bytes:
        """Call `method` with Candid bytes as they are; returns the reply's bytes."""
        __tracebackhide__ = True
        return self._call(method, arg, caller, cycles)

    def query_raw(self, method: str, arg: bytes, *, caller: str | None = None) -> bytes:
        __tracebackhide__ = True
        return self._call(method, arg, caller, 0, query=True)

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


class CanisterIC:
    """This test's IC: install canisters with `icllm_canister(...)`, wait for in-flight work with `settle`."""

    def __init__(self, runtime: CanisterRuntime, loop: Loop) -> None:
        self.runtime = runtime
        self.loop = loop
        self.canisters: list[Canister] = []

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
        (default 100T). `instruction_limit`: Wasm instructions per message (default 5 billion, at most 40
        billion, the IC's limit for an update).
        """
        __tracebackhide__ = True
        data, source = _read_wasm(wasm)
        given = None if did is None else Interface(*_read_did(did))
        if env is not None and not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise RuntimeUsageError(f"env is a mapping of text to text, got {dict(env)!r}")
        if cycles is not None and (not isinstance(cycles, int) or cycles < 0):
            raise RuntimeUsageError(f"cycles is a number of cycles, 0 or more, got {cycles!r}")
        if instruction_limit is not None:
            check_instruction_limit(instruction_limit)

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

        instance, interface = self.loop.run(install())
        canister = Canister(self, instance, interface)
        self.canisters.append(canister)
        return canister

    def settle(self, timeout: float = 5.0) -> bool:
        """Wait until no call between canisters or to the LLM is in flight (False if some still are)."""
        return self.loop.run(self.runtime.settle(timeout), timeout + 5)

    async def read(self, get: Callable[[], T]) -> T:
        """Read runtime state on its own loop (never from the test's thread while a message runs)."""
        return get()


__all__ = ["Canister", "CanisterIC", "CanisterReject", "PendingCall"]
