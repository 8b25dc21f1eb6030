"""`python -m bench hostile`: what a hostile canister costs everyone else.

Blocking: an emulator serves gRPC on loopback; a canister spins (an endless Wasm loop, then an endless
loop of cheap system calls) while another client sends gRPC Health checks and LLM calls one after the
other. Their latency while the canister spins is compared with the same calls in the same run while no
canister runs. Aim: at most 0.1 s more for any call. The spin ends by removing the canister.

Memory: the process's resident memory before and after one call to a canister whose module declares the
largest heap the runtime allows (1 GiB), and whether a second such canister is refused (the runtime's
memory budget): the largest memory a single call can add.

Overhead: what keeping the doors free and charging system calls cost an ordinary message, in the same
run: an update making 100 system calls through the runtime's thread, against the same update run on the
event loop itself (as the runtime ran before) and without the system API's charges.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import wasmtime
from grpc_health.v1 import health_pb2, health_pb2_grpc

from icllm_emulator._proto.icllm.v1 import canister_pb2 as pb
from icllm_emulator._proto.icllm.v1 import canister_pb2_grpc, canisters_pb2_grpc
from icllm_emulator._proto.icllm.v1 import canisters_pb2 as cpb
from icllm_emulator.clock import VirtualClock
from icllm_emulator.config import EmulatorConfig
from icllm_emulator.runtime import CanisterReject, CanisterRuntime, Response
from icllm_emulator.runtime.errors import MAX_INSTRUCTION_LIMIT
from icllm_emulator.runtime.system_api import SystemApi
from icllm_emulator.server import ThreadedEmulator

AIM_SECONDS = 0.1
SPINNER = """
(module
  (import "ic0" "debug_print" (func $print (param i32 i32)))
  (import "ic0" "time" (func $time (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 0) "spinning")
  (func (export "canister_update spin") (call $print (i32.const 0) (i32.const 8)) (loop $l (br $l)))
  (func (export "canister_update spin_calls")
    (call $print (i32.const 0) (i32.const 8)) (loop $l (drop (call $time)) (br $l))))
"""
# An ordinary message: 100 system calls, then a reply.
ORDINARY = """
(module
  (import "ic0" "time" (func $time (result i64)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory (export "memory") 1)
  (func (export "canister_update work") (local $i i32)
    (loop $l
      (drop (call $time))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 100))))
    (call $append (i32.const 0) (i32.const 8)) (call $reply)))
"""
BIG_HEAP = """
(module
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory (export "memory") 16384)
  (func (export "canister_update ok") (call $append (i32.const 0) (i32.const 0)) (call $reply)))
"""


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def latencies(calls: int, call: Callable[[], object]) -> list[float]:
    out = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        out.append(time.perf_counter() - started)
    return out


def chat_request() -> pb.V1ChatRequest:
    return pb.V1ChatRequest(
        model="llama3.1:8b", messages=[pb.ChatMessageV1(user=pb.UserMessage(content="are you there?"))]
    )


def blocking(calls: int) -> int:
    emulator = ThreadedEmulator(EmulatorConfig(grpc_port=0, ollama_port=0))
    emulator.start()
    channel = grpc.insecure_channel(emulator.ports.grpc_target)
    health = health_pb2_grpc.HealthStub(channel)
    llm = canister_pb2_grpc.LlmCanisterStub(channel)
    canisters = canisters_pb2_grpc.CanistersStub(channel)
    doors: dict[str, Callable[[], object]] = {
        "Health.Check": lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=60),
        "LlmCanister.V1Chat": lambda: llm.V1Chat(chat_request(), timeout=60),
    }
    worst = 0.0
    try:
        for door in doors.values():
            latencies(20, door)  # warm-up
        idle = {name: latencies(calls, door) for name, door in doors.items()}
        print(f"{'while':<28}{'door':<22}{'median ms':>10}{'max ms':>10}{'max - idle max':>16}")
        for name, values in idle.items():
            print(f"{'nothing runs':<28}{name:<22}{ms(statistics.median(values)):>10}{ms(max(values)):>10}")
        wasm = bytes(wasmtime.wat2wasm(SPINNER))
        for method, what in (("spin", "an endless Wasm loop"), ("spin_calls", "an endless ic0.time loop")):
            installed = canisters.Install(
                cpb.InstallRequest(wasm=wasm, instruction_limit=MAX_INSTRUCTION_LIMIT)
            )
            target = installed.canister_id
            request = cpb.CanisterCallRequest(canister_id=target, method=method)
            spinning = canisters.Call.future(request, timeout=120)
            while not canisters.GetLogs(cpb.GetLogsRequest(canister_id=target)).entries:
                time.sleep(0.01)
            busy = {name: latencies(calls, door) for name, door in doors.items()}
            still_spinning = not spinning.done()
            canisters.Remove(cpb.RemoveRequest(canister_id=target), timeout=60)
            spinning.result(60)
            for name, values in busy.items():
                extra = max(values) - max(idle[name])
                worst = max(worst, max(values))
                print(
                    f"{what:<28}{name:<22}{statistics.median(values) * 1e3:>10.2f}"
                    f"{max(values) * 1e3:>10.2f}{extra * 1e3:>16.2f}"
                )
            print(f"  (the canister was still spinning when the calls were done: {still_spinning})")
    finally:
        channel.close()
        emulator.stop()
    verdict = "met" if worst <= AIM_SECONDS else "MISSED"
    print(
        f"worst latency of any call while a canister spins: {worst * 1e3:.1f} ms (aim <= 100 ms: {verdict})"
    )
    return 0


async def no_llm(method: str, arg: bytes, caller: str, cycles: int) -> Response:
    raise AssertionError("this canister does not call the LLM")


def memory() -> int:
    async def main() -> None:
        runtime = CanisterRuntime(VirtualClock(), no_llm)
        wasm = bytes(wasmtime.wat2wasm(BIG_HEAP))
        before = rss_bytes()
        canister = await runtime.install_async(wasm)
        installed = rss_bytes()
        await runtime.call(canister.id, "ok", b"")
        called = rss_bytes()
        print(f"{'step':<52}{'RSS MiB':>10}{'added MiB':>12}")
        print(f"{'before':<52}{before / 2**20:>10.1f}")
        for step, now, last in (
            ("install a module declaring a 1 GiB heap", installed, before),
            ("one call to it (the heap copied for rollback)", called, installed),
        ):
            print(f"{step:<52}{now / 2**20:>10.1f}{(now - last) / 2**20:>12.1f}")
        try:
            await runtime.install_async(wasm)
            print("a second such canister: installed (no budget met)")
        except CanisterReject as reject:
            print(f"a second such canister: refused, {reject.error_code}")
        print(
            f"largest memory one call added: {(called - installed) / 2**20:.0f} MiB (budget for all "
            f"canisters: {runtime.memory_limit / 2**30:.0f} GiB)"
        )

    asyncio.run(main())
    return 0


def overhead(calls: int, rounds: int) -> int:
    async def main() -> None:
        runtime = CanisterRuntime(VirtualClock(), no_llm)
        canister = await runtime.install_async(bytes(wasmtime.wat2wasm(ORDINARY)))
        threaded = runtime.execute

        async def inline(instance: object, work: Callable[[], object]) -> object:
            return work()  # on the event loop, as before

        async def measure() -> float:
            started = time.perf_counter()
            for _ in range(calls):
                await runtime.call(canister.id, "work", b"")
            return (time.perf_counter() - started) / calls

        charge = SystemApi.charge
        now, before = "runtime's thread, charged", "event loop, not charged"
        results: dict[str, list[float]] = {now: [], before: []}
        for _ in range(rounds):
            results[now].append(await measure())
            runtime.execute = inline  # type: ignore[method-assign, assignment]
            SystemApi.charge = lambda self, instructions: None  # type: ignore[method-assign]
            results[before].append(await measure())
            runtime.execute = threaded  # type: ignore[method-assign]
            SystemApi.charge = charge  # type: ignore[method-assign]
        print(f"an update making 100 system calls, {rounds} rounds x {calls} calls:")
        for name, values in results.items():
            print(f"  {name:<28} median {statistics.median(values) * 1e6:8.0f} us per call")
        added = statistics.median(results[now]) - statistics.median(results[before])
        print(f"  added per call: {added * 1e6:.0f} us")

    asyncio.run(main())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench hostile", description=__doc__)
    parser.add_argument("--calls", type=int, default=200, help="calls per door, idle and while spinning")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the overhead case")
    parser.add_argument(
        "--skip-memory", action="store_true", help="do not allocate the 1 GiB of the memory case"
    )
    args = parser.parse_args(argv)
    status = overhead(args.calls, args.rounds)
    print()
    status |= blocking(args.calls)
    if not args.skip_memory:
        print()
        status |= memory()
    return status
