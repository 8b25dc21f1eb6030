"""`python -m bench canister`: what running a canister's own module in the test costs.

Per message: an update call to the Motoko agent's `prompt` (decode the argument, build the v0_chat
request, call the LLM canister, run the reply callback, reply) through the canister runtime, against
the same LLM call in the same run made directly: the Candid argument the canister sends, through gRPC
`LlmCanister.CallCandid` on loopback (how a harness without the runtime would test), and through
`Engine.call_candid` in-process (the bare cost of the LLM call itself). Every call is made from the
test's thread, as the `icllm_canister` fixture makes it, and every variant asks the same prompts.
Aim: the runtime's call at most 2x the bare CallCandid call.

Neighbours: the Motoko wallet's `balance_at` calls a ledger's `account_balance`, once a stand-in scripted
from Python at the ICP ledger's id, once a real ledger module installed beside it; same run, same calls.

Install: a canister from the compiled-module disk cache (a fresh runtime), from the runtime's memory
(a second install), and the cold compile that the cache saves. The Rust and ic-cdk (Azle) agents too.

Lifecycle: for the Motoko agent with a conversation in it, restoring a snapshot (what a per-test
restore does) against installing it afresh, and an upgrade (enhanced orthogonal persistence, the
heap kept). Aim: a restore at most a fifth of a fresh install.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc

from icllm_emulator._proto.icllm.v1 import canister_pb2 as pb
from icllm_emulator._proto.icllm.v1 import canister_pb2_grpc
from icllm_emulator.candid import encode_chat_request
from icllm_emulator.config import EmulatorConfig
from icllm_emulator.domain import Api, ChatRequest, UserMessage
from icllm_emulator.runtime import CanisterRuntime, InstallSettings
from icllm_emulator.runtime import module as modules
from icllm_emulator.runtime.values import Interface
from icllm_emulator.server import ThreadedEmulator

TARGET_RATIO = 2.0
LEDGER_ID = "ryjl3-tyaaa-aaaaa-aaaba-cai"
RESTORE_TARGET = 0.2
BUILD_SCRIPT = Path(__file__).resolve().parents[1] / "fixtures" / "canisters" / "build.py"


def built(name: str) -> Path:
    spec = importlib.util.spec_from_file_location("icllm_test_canisters", BUILD_SCRIPT)
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = build
    spec.loader.exec_module(build)
    path: Path = build.built(name)
    return path


def timed(calls: int, run: Callable[[int], Any]) -> list[float]:
    """Seconds per call, for calls 0..calls-1."""
    out = []
    for i in range(calls):
        started = time.perf_counter()
        run(i)
        out.append(time.perf_counter() - started)
    return out


def summary(samples: list[float]) -> tuple[float, float]:
    """Median and 90th percentile, in microseconds."""
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e6, ordered[int(len(ordered) * 0.9)] * 1e6


def per_message(calls: int, rounds: int) -> int:
    motoko = built("motoko-agent")
    with ThreadedEmulator(EmulatorConfig(grpc_port=0, ollama_port=None)) as emulator:
        loop = emulator.loop
        engine = emulator.engine

        def on_loop(work: Coroutine[Any, Any, Any]) -> Any:
            return asyncio.run_coroutine_threadsafe(work, loop).result(30)

        async def install() -> Any:
            return engine.runtime.install(motoko.read_bytes(), InstallSettings())

        agent = on_loop(install())
        interface = Interface(agent.candid or "")
        prompts = [f"question {i} about canisters" for i in range(calls)]
        args = [interface.encode_call("prompt", (p,)) for p in prompts]
        llm_args = [
            encode_chat_request(ChatRequest("llama3.1:8b", (UserMessage(p),), api=Api.V0)) for p in prompts
        ]
        channel = grpc.insecure_channel(emulator.ports.grpc_target)
        stub = canister_pb2_grpc.LlmCanisterStub(channel)
        metadata = (("icllm-caller", agent.id),)

        variants: dict[str, Callable[[int], Any]] = {
            "runtime: update prompt (1 LLM call)": lambda i: on_loop(
                engine.runtime.call(agent.id, "prompt", args[i])
            ),
            "CallCandid over gRPC (same LLM call)": lambda i: stub.CallCandid(
                pb.CallCandidRequest(method="v0_chat", arg=llm_args[i]), metadata=metadata, timeout=30
            ),
            "Engine.call_candid in-process": lambda i: on_loop(
                engine.call_candid("v0_chat", llm_args[i], agent.id, 0)
            ),
        }
        results: dict[str, list[float]] = {name: [] for name in variants}
        for run in variants.values():  # warm-up
            timed(min(50, calls), run)
        for _ in range(rounds):  # interleaved rounds: the machine's noise falls on every variant alike
            for name, run in variants.items():
                results[name].extend(timed(calls, run))
        heap = agent.memory.data_len(agent.store)
        channel.close()
    print(f"per message, {rounds} rounds x {calls} calls, Motoko agent heap {heap / 2**20:.1f} MiB:")
    medians = {}
    for name, samples in results.items():
        p50, p90 = summary(samples)
        medians[name] = p50
        print(f"  {name:<40} p50 {p50:8.0f} us   p90 {p90:8.0f} us")
    runtime, grpc_call, bare = medians.values()
    ratio = runtime / grpc_call
    print(
        f"  runtime / CallCandid over gRPC: {ratio:.2f}x (aim <= {TARGET_RATIO}x: "
        f"{'met' if ratio <= TARGET_RATIO else 'NOT met'}); runtime / in-process call_candid: "
        f"{runtime / bare:.2f}x, the runtime's own cost {runtime - bare:.0f} us per message"
    )
    return 0


def neighbours(calls: int, rounds: int) -> int:
    from icllm_emulator.runtime.standins import StandInRule

    wallet_wasm, ledger_wasm = built("motoko-wallet"), built("motoko-ledger")
    ledger_did = BUILD_SCRIPT.parent / "motoko" / "ledger" / "ledger.did"
    with ThreadedEmulator(EmulatorConfig(grpc_port=0, ollama_port=None)) as emulator:
        runtime = emulator.engine.runtime

        def on_loop(work: Coroutine[Any, Any, Any]) -> Any:
            return asyncio.run_coroutine_threadsafe(work, emulator.loop).result(30)

        async def set_up() -> tuple[Any, Any, Any]:
            wallet = runtime.install(wallet_wasm.read_bytes(), InstallSettings())
            ledger = runtime.install(ledger_wasm.read_bytes(), InstallSettings())
            standin = runtime.stub(LEDGER_ID, Interface(ledger_did.read_text(encoding="utf-8")))
            standin.add(StandInRule("account_balance", standin.reply_values("account_balance", {"e8s": 1})))
            return wallet, ledger, standin

        wallet, ledger, standin = on_loop(set_up())
        interface = Interface(wallet.candid or "")
        account = bytes(32)
        to_standin = interface.encode_call("balance_at", (LEDGER_ID, account))
        to_ledger = interface.encode_call("balance_at", (ledger.id, account))
        variants: dict[str, Callable[[int], Any]] = {
            "wallet -> stand-in ledger (Python)": lambda _: on_loop(
                runtime.call(wallet.id, "balance_at", to_standin)
            ),
            "wallet -> real ledger (Motoko)": lambda _: on_loop(
                runtime.call(wallet.id, "balance_at", to_ledger)
            ),
        }
        results: dict[str, list[float]] = {name: [] for name in variants}
        for run in variants.values():
            timed(min(50, calls), run)
        for _ in range(rounds):
            for name, run in variants.items():
                results[name].extend(timed(calls, run))

        async def forget_calls() -> int:
            count = len(standin.calls)
            standin.calls.clear()
            return count

        answered = on_loop(forget_calls())
    print(f"a call to a neighbour, {rounds} rounds x {calls} calls ({answered} stand-in calls answered):")
    medians = []
    for name, samples in results.items():
        p50, p90 = summary(samples)
        medians.append(p50)
        print(f"  {name:<40} p50 {p50:8.0f} us   p90 {p90:8.0f} us")
    print(f"  stand-in / real canister: {medians[0] / medians[1]:.2f}x")
    return 0


def installs(repeat: int) -> int:
    print(f"install (median of {repeat}):")

    async def measure(name: str) -> None:
        path = built(name)
        raw = modules.unpack(path.read_bytes())
        prepared = modules.prepare(raw, modules.inspect(raw))

        async def none(*_: Any) -> Any:
            raise AssertionError("no LLM calls during install")

        from icllm_emulator.clock import RealClock

        cold, disk, memory = [], [], []
        for _ in range(repeat):
            started = time.perf_counter()
            modules.compile_module(modules.make_engine(), prepared, use_cache=False)
            cold.append(time.perf_counter() - started)
            modules.compile_module(modules.make_engine(), prepared)  # make sure the disk cache has it
            runtime = CanisterRuntime(RealClock(), none)
            started = time.perf_counter()
            runtime.install(path.read_bytes())
            disk.append(time.perf_counter() - started)
            started = time.perf_counter()
            runtime.install(path.read_bytes())
            memory.append(time.perf_counter() - started)
        print(
            f"  {name:<24} {len(raw) / 1024:7.0f} KiB  "
            f"cold compile {statistics.median(cold) * 1e3:7.1f} ms   "
            f"install from disk cache {statistics.median(disk) * 1e3:6.1f} ms   "
            f"from memory {statistics.median(memory) * 1e3:6.1f} ms"
        )

    for name in ("motoko-agent", "motoko-agent-classical", "rust-agent", "azle-agent"):
        asyncio.run(measure(name))
    return 0


def lifecycle(repeat: int) -> int:
    """Restore a snapshot vs install afresh vs upgrade, the Motoko agent, in one runtime."""
    from icllm_emulator.clock import RealClock
    from icllm_emulator.runtime.ids import ANONYMOUS
    from icllm_emulator.runtime.management.lifecycle import InstallMode, UpgradeOptions
    from icllm_emulator.runtime.messages import Response

    path = built("motoko-agent")
    wasm = modules.unpack(path.read_bytes())
    answer = Interface("service : { a : () -> (text) }").encode_reply("a", ("an answer",))

    async def llm(*_: Any) -> Response:
        return Response(reply=answer)

    async def measure() -> dict[str, list[float]]:
        runtime = CanisterRuntime(RealClock(), llm)
        runtime.install(wasm)  # compiled into the runtime's memory
        agent = runtime.install(wasm)
        prompt = Interface(agent.candid or "").encode_call("prompt", ("hello",))
        for _ in range(5):
            await runtime.call(agent.id, "prompt", prompt)
        snapshot = runtime.lifecycle.take_snapshot(ANONYMOUS, agent.principal)
        out: dict[str, list[float]] = {"install afresh": [], "restore a snapshot": [], "upgrade": []}
        keep = UpgradeOptions(wasm_memory_persistence="keep")
        for _ in range(repeat):
            started = time.perf_counter()
            fresh = runtime.install(wasm)
            out["install afresh"].append(time.perf_counter() - started)
            runtime.remove(fresh.id)
            await runtime.call(agent.id, "prompt", prompt)  # the test changed the state
            started = time.perf_counter()
            await runtime.lifecycle.load_snapshot(ANONYMOUS, agent.principal, snapshot.id)
            out["restore a snapshot"].append(time.perf_counter() - started)
            started = time.perf_counter()
            await runtime.lifecycle.install_code(
                ANONYMOUS, agent.principal, wasm, b"DIDL\0\0", InstallMode.UPGRADE, keep
            )
            out["upgrade"].append(time.perf_counter() - started)
        return out

    results = asyncio.run(measure())
    print(f"lifecycle of the Motoko agent (median of {repeat}):")
    medians = {name: statistics.median(samples) * 1e3 for name, samples in results.items()}
    for name, median in medians.items():
        print(f"  {name:<24} {median:7.2f} ms")
    ratio = medians["restore a snapshot"] / medians["install afresh"]
    print(
        f"  restore / fresh install: {ratio:.2f} (aim <= {RESTORE_TARGET}: "
        f"{'met' if ratio <= RESTORE_TARGET else 'NOT met'})"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench canister", description=__doc__)
    parser.add_argument("--calls", type=int, default=300, help="calls per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--repeat", type=int, default=3, help="installs and compiles per module")
    parser.add_argument(
        "--only", choices=["messages", "neighbours", "installs", "lifecycle"], help="one part only"
    )
    args = parser.parse_args(argv)
    parts: dict[str, Callable[[], int]] = {
        "messages": lambda: per_message(args.calls, args.rounds),
        "neighbours": lambda: neighbours(args.calls, args.rounds),
        "installs": lambda: installs(args.repeat),
        "lifecycle": lambda: lifecycle(max(args.repeat, 20)),
    }
    status = 0
    for name, part in parts.items():
        if args.only in (None, name):
            status |= part()
    return status
