"""Hostile modules: endless loops, floods of calls, huge memories and interfaces, oversized arguments.

Each ends with the IC's reject and a message that says which limit was met and how to change it, and
the emulator's other doors answer while a canister spins.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import wasmtime
from grpc_health.v1 import health_pb2, health_pb2_grpc

from icllm_emulator._proto.icllm.v1 import canisters_pb2 as cpb
from icllm_emulator._proto.icllm.v1 import canisters_pb2_grpc, control_pb2
from icllm_emulator.clock import VirtualClock
from icllm_emulator.runtime import CanisterReject, CanisterRuntime, ModuleError, Response, RuntimeUsageError
from icllm_emulator.runtime import module as modules
from icllm_emulator.runtime.errors import MAX_INSTRUCTION_LIMIT
from icllm_emulator.runtime.instance import MAX_LOG_BYTES
from icllm_emulator.runtime.system_api import MAX_CALLS_IN_FLIGHT
from pytest_icllm._canisters import CanisterIC
from tests.conftest import Stubs, user_request
from tests.waiting import until, wait_until

T = TypeVar("T")

# Prints "spinning", then loops for good: on Wasm alone, or on a cheap system call.
SPINNER = """
(module
  (import "ic0" "debug_print" (func $print (param i32 i32)))
  (import "ic0" "time" (func $time (result i64)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory (export "memory") 1)
  (data (i32.const 0) "spinning")
  (func (export "canister_update spin") (call $print (i32.const 0) (i32.const 8)) (loop $l (br $l)))
  (func (export "canister_update spin_calls")
    (call $print (i32.const 0) (i32.const 8)) (loop $l (drop (call $time)) (br $l)))
  (func (export "canister_update ok") (call $append (i32.const 0) (i32.const 0)) (call $reply))
  (func (export "canister_update chatter") (local $i i32)
    (loop $l
      (call $print (i32.const 0) (i32.const 8))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 10000))))
    (call $append (i32.const 0) (i32.const 0)) (call $reply))
)
"""

# Calls itself: `fan_out` 10,000 times in one message (replying how many calls were made); `bomb` twice
# per message, and each callback twice again (a fork bomb); `big` with a 3 MiB argument.
CALLER = """
(module
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_data_append" (func $call_append (param i32 i32)))
  (import "ic0" "call_perform" (func $perform (result i32)))
  (import "ic0" "canister_self_size" (func $self_size (result i32)))
  (import "ic0" "canister_self_copy" (func $self_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory (export "memory") 2)
  (table 2 funcref)
  (elem (i32.const 0) $ignore $again)
  (data (i32.const 100) "noopbomb")
  (func $ignore (param i32))
  (func $again (param i32) (call $bomb_twice))
  (func $new (param $method i32) (param $size i32) (param $callback i32)
    (call $self_copy (i32.const 0) (i32.const 0) (call $self_size))
    (call $call_new (i32.const 0) (call $self_size) (local.get $method) (local.get $size)
      (local.get $callback) (i32.const 0) (local.get $callback) (i32.const 0)))
  (func $bomb_twice
    (call $new (i32.const 104) (i32.const 4) (i32.const 1)) (drop (call $perform))
    (call $new (i32.const 104) (i32.const 4) (i32.const 1)) (drop (call $perform)))
  (func (export "canister_update noop") (call $append (i32.const 0) (i32.const 0)) (call $reply))
  (func (export "canister_update bomb") (call $bomb_twice))
  (func (export "canister_update fan_out") (local $i i32) (local $made i32)
    (loop $next
      (call $new (i32.const 100) (i32.const 4) (i32.const 0))
      (if (i32.eqz (call $perform)) (then (local.set $made (i32.add (local.get $made) (i32.const 1)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $next (i32.lt_u (local.get $i) (i32.const 10000))))
    (i32.store (i32.const 200) (local.get $made))
    (call $append (i32.const 200) (i32.const 4))
    (call $reply))
  (func (export "canister_update big") (local $i i32)
    (call $new (i32.const 100) (i32.const 4) (i32.const 0))
    (loop $next
      (call $call_append (i32.const 0) (i32.const 65536))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $next (i32.lt_u (local.get $i) (i32.const 48))))
    (drop (call $perform))
    (call $append (i32.const 0) (i32.const 0)) (call $reply))
)
"""


def heap_module(pages: int) -> bytes:
    """A module whose heap starts at `pages` of 64 KiB; `grow` asks for 4,000 pages of stable memory."""
    return wasm(
        f"""(module
          (import "ic0" "stable64_grow" (func $grow (param i64) (result i64)))
          (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
          (import "ic0" "msg_reply" (func $reply))
          (memory (export "memory") {pages})
          (func (export "canister_update ok") (call $append (i32.const 0) (i32.const 0)) (call $reply))
          (func (export "canister_update grow")
            (i64.store (i32.const 0) (call $grow (i64.const 4000)))
            (call $append (i32.const 0) (i32.const 8)) (call $reply)))"""
    )


def exports_module(count: int, prefix: str) -> bytes:
    functions = "\n".join(f'(func (export "{prefix}{i}"))' for i in range(count))
    return wasm(f'(module (memory (export "memory") 1) {functions})')


def wasm(text: str) -> bytes:
    return bytes(wasmtime.wat2wasm(text))


async def no_llm(method: str, arg: bytes, caller: str, cycles: int) -> Response:
    raise AssertionError("this canister does not call the LLM")


def run(main: Callable[[], Coroutine[Any, Any, T]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> T:
    monkeypatch.setenv(modules.CACHE_ENV, str(tmp_path))
    return asyncio.run(main())


# -- time -------------------------------------------------------------------------------------------


def test_other_doors_answer_while_a_canister_spins_and_removing_it_stops_it(emu: Stubs) -> None:
    canisters = canisters_pb2_grpc.CanistersStub(emu.channel)
    installed = canisters.Install(
        cpb.InstallRequest(wasm=wasm(SPINNER), instruction_limit=MAX_INSTRUCTION_LIMIT)
    )
    spinning = canisters.Call.future(
        cpb.CanisterCallRequest(canister_id=installed.canister_id, method="spin")
    )
    wait_until(
        lambda: (
            [e.text for e in canisters.GetLogs(cpb.GetLogsRequest(canister_id=installed.canister_id)).entries]
            == ["spinning"]
        ),
        "the canister to start spinning",
    )
    health = health_pb2_grpc.HealthStub(emu.channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert emu.canister.V1Chat(user_request("still there?"), timeout=30).message.content
    assert not spinning.done()  # the doors answered while the canister spun (40 billion instructions)
    canisters.Remove(cpb.RemoveRequest(canister_id=installed.canister_id), timeout=30)
    reply = spinning.result(timeout=30)
    assert reply.reject.error_code == "IC0301"
    assert "was removed" in reply.reject.message


# A start-up canister: an empty canister_init, and `ok`.
STARTUP = """
(module
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory (export "memory") 1)
  (func (export "canister_init"))
  (func (export "canister_update ok") (call $append (i32.const 0) (i32.const 0)) (call $reply)))
"""


def test_a_reset_while_a_canister_spins_installs_the_start_up_canisters_afresh(
    start_emulator: Callable[..., Stubs], tmp_path: Path
) -> None:
    startup = tmp_path / "startup.wasm"
    startup.write_bytes(wasm(STARTUP))
    emu = start_emulator(canisters=(("first", str(startup)),))
    canisters = canisters_pb2_grpc.CanistersStub(emu.channel)
    (first,) = canisters.ListCanisters(cpb.ListCanistersRequest(), timeout=30).canisters
    spinner = canisters.Install(
        cpb.InstallRequest(wasm=wasm(SPINNER), instruction_limit=MAX_INSTRUCTION_LIMIT)
    ).canister_id
    spinning = canisters.Call.future(cpb.CanisterCallRequest(canister_id=spinner, method="spin"))
    wait_until(
        lambda: bool(canisters.GetLogs(cpb.GetLogsRequest(canister_id=spinner)).entries),
        "the canister to start spinning",
    )
    emu.control.Reset(control_pb2.ResetRequest(), timeout=30)
    assert spinning.result(timeout=30).reject.code == 2  # SYS_TRANSIENT: reset before it answered
    listed = canisters.ListCanisters(cpb.ListCanistersRequest(), timeout=30).canisters
    assert [c.canister_id for c in listed] == [first.canister_id]
    answer = canisters.Call(cpb.CanisterCallRequest(canister_id=first.canister_id, method="ok"), timeout=30)
    assert answer.WhichOneof("outcome") == "reply"


def test_a_loop_of_system_calls_ends_at_the_instruction_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> CanisterReject:
        ic = CanisterRuntime(VirtualClock(), no_llm, instruction_limit=20_000_000)
        canister = await ic.install_async(wasm(SPINNER))
        with pytest.raises(CanisterReject) as caught:
            await ic.call(canister.id, "spin_calls", b"")
        assert await ic.call(canister.id, "ok", b"") == b""  # the canister goes on
        return caught.value

    reject = run(main, tmp_path, monkeypatch)
    assert reject.error_code == "IC0522"
    assert "limit of 20000000 instructions" in reject.message
    assert "charge for each system API call" in reject.message


def test_a_message_over_the_wall_clock_budget_is_stopped_naming_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> CanisterReject:
        ic = CanisterRuntime(VirtualClock(), no_llm, instruction_limit=MAX_INSTRUCTION_LIMIT, time_limit=0.2)
        canister = await ic.install_async(wasm(SPINNER))
        with pytest.raises(CanisterReject) as caught:
            await ic.call(canister.id, "spin_calls", b"")
        assert await ic.call(canister.id, "ok", b"") == b""
        return caught.value

    reject = run(main, tmp_path, monkeypatch)
    assert reject.error_code == "IC0522"
    assert "wall-clock budget of 0.2 s per message" in reject.message
    assert "canister_time_limit" in reject.message


def test_the_emulators_time_and_memory_limits_are_settings(start_emulator: Callable[..., Stubs]) -> None:
    emu = start_emulator(canister_time_limit=0.3, canister_memory_limit=256 * 2**20)
    canisters = canisters_pb2_grpc.CanistersStub(emu.channel)
    spinner = canisters.Install(
        cpb.InstallRequest(wasm=wasm(SPINNER), instruction_limit=MAX_INSTRUCTION_LIMIT)
    )
    reply = canisters.Call(
        cpb.CanisterCallRequest(canister_id=spinner.canister_id, method="spin_calls"), timeout=60
    )
    assert reply.reject.error_code == "IC0522"
    assert "wall-clock budget of 0.3 s" in reply.reject.message
    with pytest.raises(grpc.RpcError) as caught:
        canisters.Install(cpb.InstallRequest(wasm=heap_module(16384)), timeout=60)
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "out of memory" in str(caught.value.details())


def test_a_reset_stops_a_spinning_message_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        ic = CanisterRuntime(VirtualClock(), no_llm, instruction_limit=MAX_INSTRUCTION_LIMIT)
        canister = await ic.install_async(wasm(SPINNER))
        spinning = asyncio.ensure_future(ic.call(canister.id, "spin", b""))
        await until(lambda: [line.text for line in canister.logs] == ["spinning"], "the spin to start")
        ic.clear()
        with pytest.raises(CanisterReject, match="reset before the canister answered"):
            await spinning
        await until(lambda: ic._executing is None, "the spinning message to stop", timeout=30)
        again = await ic.install_async(wasm(SPINNER))
        assert await ic.call(again.id, "ok", b"") == b""

    run(main, tmp_path, monkeypatch)


def test_a_canister_removed_while_it_spins_is_freed_once_its_message_has_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its store may not be freed under the Wasm still running on the runtime's thread."""
    from wasmtime import _func

    async def main() -> None:
        ic = CanisterRuntime(VirtualClock(), no_llm, instruction_limit=MAX_INSTRUCTION_LIMIT)
        gc.collect()  # what earlier tests left is freed now, not while the counts below are taken
        start = len(_func.FUNCTIONS.handles)
        canister = await ic.install_async(wasm(SPINNER))
        spinning = asyncio.ensure_future(ic.call(canister.id, "spin_calls", b""))
        await until(lambda: [line.text for line in canister.logs] == ["spinning"], "the spin to start")
        ic.remove(canister.id)
        assert canister.closed  # gone at once for the runtime; its store goes when its message ends
        with pytest.raises(CanisterReject, match="removed before it answered"):
            await spinning
        await until(lambda: ic._executing is None, "the spinning message to stop", timeout=30)
        await until(lambda: len(_func.FUNCTIONS.handles) == start, "its host functions to be freed")
        again = await ic.install_async(wasm(SPINNER))
        assert await ic.call(again.id, "ok", b"") == b""

    run(main, tmp_path, monkeypatch)


def test_an_instruction_limit_above_the_ics_is_refused_at_every_door(
    emu: Stubs, icllm_canister: CanisterIC
) -> None:
    with pytest.raises(RuntimeUsageError, match=r"from 1 to 40000000000 \(the IC's limit for an update"):
        icllm_canister(wasm(SPINNER), instruction_limit=2**63)
    with pytest.raises(grpc.RpcError) as caught:
        canisters_pb2_grpc.CanistersStub(emu.channel).Install(
            cpb.InstallRequest(wasm=wasm(SPINNER), instruction_limit=2**64 - 1)
        )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "from 1 to 40000000000" in str(caught.value.details())
    with pytest.raises(RuntimeUsageError, match="from 1 to 40000000000"):
        CanisterRuntime(VirtualClock(), no_llm, instruction_limit=MAX_INSTRUCTION_LIMIT + 1)


def test_the_limit_met_by_a_start_function_is_named(icllm_canister: CanisterIC) -> None:
    module = wasm('(module (memory (export "memory") 1) (func $start (loop $l (br $l))) (start $start))')
    with pytest.raises(
        ModuleError, match=r"start function trapped: Canister exceeded the limit of 1000000 instr"
    ):
        icllm_canister(module, instruction_limit=1_000_000)


# -- calls ------------------------------------------------------------------------------------------


def test_a_fan_out_of_ten_thousand_self_calls_is_bounded_by_the_output_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> int:
        ic = CanisterRuntime(VirtualClock(), no_llm)
        canister = await ic.install_async(wasm(CALLER))
        made = int.from_bytes(await ic.call(canister.id, "fan_out", b""), "little")
        assert await ic.settle(30)
        assert canister.calls_in_flight == 0
        return made

    assert run(main, tmp_path, monkeypatch) == MAX_CALLS_IN_FLIGHT


def test_a_fork_bomb_is_bounded_and_removing_it_ends_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        ic = CanisterRuntime(VirtualClock(), no_llm)
        canister = await ic.install_async(wasm(CALLER))
        bomb = asyncio.ensure_future(ic.call(canister.id, "bomb", b""))
        await until(lambda: canister.calls_in_flight >= MAX_CALLS_IN_FLIGHT - 2, "the bomb to fill its queue")
        assert canister.calls_in_flight <= MAX_CALLS_IN_FLIGHT
        ic.remove(canister.id)
        with pytest.raises(CanisterReject, match="was removed"):
            await bomb
        assert await ic.settle(30)

    run(main, tmp_path, monkeypatch)


def test_an_inter_canister_argument_over_2_mib_traps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> CanisterReject:
        ic = CanisterRuntime(VirtualClock(), no_llm)
        canister = await ic.install_async(wasm(CALLER))
        with pytest.raises(CanisterReject) as caught:
            await ic.call(canister.id, "big", b"")
        return caught.value

    reject = run(main, tmp_path, monkeypatch)
    assert reject.error_code == "IC0504"
    assert "at most 2097152 bytes (2 MiB) in a call between canisters" in reject.message


# -- memory -----------------------------------------------------------------------------------------


def test_memory_over_the_runtimes_budget_is_refused_with_out_of_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        ic = CanisterRuntime(VirtualClock(), no_llm, memory_limit=256 * 2**20)
        with pytest.raises(CanisterReject) as caught:  # a 1 GiB heap, and its copy: 2 GiB
            await ic.install_async(heap_module(16384))
        assert caught.value.error_code == "IC0507"
        assert "out of memory" in caught.value.message and "canister_memory_limit" in caught.value.message
        first = await ic.install_async(heap_module(1500))  # 94 MiB, and its copy
        assert await ic.call(first.id, "ok", b"") == b""
        assert int.from_bytes(await ic.call(first.id, "grow", b""), "little") == 2**64 - 1  # stable: -1
        with pytest.raises(CanisterReject, match="out of memory"):
            await ic.install_async(heap_module(1500))
        ic.remove(first.id)
        second = await ic.install_async(heap_module(1500))  # a removed canister's memory is free again
        assert await ic.call(second.id, "ok", b"") == b""

    run(main, tmp_path, monkeypatch)


def test_a_canister_keeps_the_last_4_kib_of_its_logs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> list[str]:
        ic = CanisterRuntime(VirtualClock(), no_llm)
        canister = await ic.install_async(wasm(SPINNER))
        await ic.call(canister.id, "chatter", b"")
        return [line.text for line in canister.logs]

    logs = run(main, tmp_path, monkeypatch)
    assert logs == ["spinning"] * (MAX_LOG_BYTES // len("spinning"))


# -- interfaces -------------------------------------------------------------------------------------


def test_more_than_1000_methods_are_refused_and_many_other_exports_install(
    icllm_canister: CanisterIC,
) -> None:
    with pytest.raises(ModuleError, match=r"exports 20000 methods; the IC accepts at most 1000"):
        icllm_canister(exports_module(20_000, "canister_query m"))
    canister = icllm_canister(exports_module(20_000, "helper_"))  # looked up by name: no quadratic install
    assert canister.id


# -- the management canister's messages -------------------------------------------------------------


# A counter (`bump`, `peek`) whose upgrade hook, heartbeat, inspect_message or composite query (the one
# named) loops on a cheap system call for good.
def spinning_in(export: str) -> bytes:
    return wasm(
        f"""(module
          (import "ic0" "time" (func $time (result i64)))
          (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
          (import "ic0" "msg_reply" (func $reply))
          (memory (export "memory") 1)
          (func $spin (loop $l (drop (call $time)) (br $l)))
          (func $answer
            (call $append (i32.const 0) (i32.const 4)) (call $reply))
          (func (export "canister_update bump")
            (i32.store (i32.const 0) (i32.add (i32.load (i32.const 0)) (i32.const 1))) (call $answer))
          (func (export "canister_query peek") (call $answer))
          (func (export "{export}") (call $spin)))"""
    )


COUNTER = spinning_in("canister_update unused")


async def while_the_loop_ticks(work: Coroutine[Any, Any, T]) -> tuple[T | BaseException, int]:
    """`work`'s outcome, and how often another task on the event loop ran meanwhile (every 10 ms)."""
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.ensure_future(tick())
    try:
        outcome: T | BaseException = await work
    except BaseException as error:
        outcome = error
    ticking.cancel()
    return outcome, ticks


def limited_runtime() -> CanisterRuntime:
    return CanisterRuntime(VirtualClock(), no_llm, time_limit=0.3)


def test_an_upgrade_whose_post_upgrade_spins_is_stopped_and_rolled_back_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from icllm_emulator.runtime.ids import ANONYMOUS
    from icllm_emulator.runtime.management.lifecycle import InstallMode

    async def main() -> None:
        ic = limited_runtime()
        counter = await ic.install_async(COUNTER)
        for _ in range(2):
            await ic.call(counter.id, "bump", b"")
        upgrade = ic.lifecycle.install_code(
            ANONYMOUS, counter.principal, spinning_in("canister_post_upgrade"), b"", InstallMode.UPGRADE
        )
        refused, ticks = await while_the_loop_ticks(upgrade)
        assert isinstance(refused, CanisterReject) and refused.error_code == "IC0522"
        assert (
            "canister_post_upgrade trapped" in refused.message
            and "wall-clock budget of 0.3 s" in refused.message
        )
        assert ticks >= 10  # the event loop went on while the new module spun
        assert ic.get(counter.id) is counter and not counter.closed  # the old module, as it was
        assert await ic.call(counter.id, "peek", b"", query=True) == (2).to_bytes(4, "little")
        assert await ic.call(counter.id, "bump", b"") == (3).to_bytes(4, "little")
        assert ic.lifecycle.records[counter.principal].version == counter.version

    run(main, tmp_path, monkeypatch)


def test_a_spinning_heartbeat_inspect_message_or_composite_query_is_stopped_by_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        ic = limited_runtime()
        beating = await ic.install_async(spinning_in("canister_heartbeat"))
        _, ticks = await while_the_loop_ticks(ic.tick())
        assert ticks >= 10
        assert "[TRAP in canister_heartbeat]" in beating.logs[-1].text
        assert "wall-clock budget of 0.3 s" in beating.logs[-1].text
        ic.remove(beating.id)

        guarded = await ic.install_async(spinning_in("canister_inspect_message"))
        refused, ticks = await while_the_loop_ticks(ic.call(guarded.id, "bump", b""))
        assert isinstance(refused, CanisterReject) and "wall-clock budget of 0.3 s" in refused.message
        assert ticks >= 10
        assert await ic.call(guarded.id, "peek", b"", query=True) == bytes(4)  # bump never ran

        composite = await ic.install_async(spinning_in("canister_composite_query spin"))
        refused, ticks = await while_the_loop_ticks(ic.call(composite.id, "spin", b"", query=True))
        assert isinstance(refused, CanisterReject) and refused.error_code == "IC0522"
        assert "wall-clock budget of 0.3 s" in refused.message
        assert ticks >= 10

    run(main, tmp_path, monkeypatch)


def test_an_upgrade_over_the_memory_budget_is_refused_and_the_old_module_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from icllm_emulator.runtime.ids import ANONYMOUS
    from icllm_emulator.runtime.management.lifecycle import InstallMode

    async def main() -> None:
        ic = CanisterRuntime(VirtualClock(), no_llm, memory_limit=256 * 2**20)
        counter = await ic.install_async(COUNTER)
        await ic.call(counter.id, "bump", b"")
        with pytest.raises(CanisterReject, match="out of memory") as caught:
            await ic.lifecycle.install_code(
                ANONYMOUS, counter.principal, heap_module(4096), b"", InstallMode.UPGRADE
            )
        assert caught.value.error_code == "IC0507"
        assert ic.get(counter.id) is counter
        assert await ic.call(counter.id, "peek", b"", query=True) == (1).to_bytes(4, "little")

    run(main, tmp_path, monkeypatch)
