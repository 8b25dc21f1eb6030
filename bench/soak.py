"""`python -m bench soak` (`make soak`): many clients for minutes, every answer checked, memory watched.

An emulator process (fake backend) serves 64 asyncio clients for `--seconds`; each client sends unique
prompts in turn through gRPC `V1Chat`, the Ollama-compatible `/api/chat` and the Candid door, and checks
every answer against the deterministic fake answer to its own prompt: a missing answer is lost, another
prompt's answer is crossed, and the emulator's own count of calls against the clients' finds duplicates.
The emulator's resident memory is sampled every few seconds; after a warm-up it should stay flat.
Then the canister phase: the Motoko agent is installed over the gRPC `Canisters` service, called once
(its prompt goes to the LLM canister) and dropped, again and again (removed, and every tenth time by a
`Reset`); the emulator's memory after the warm-up cycles and at the end gives the growth per cycle, which
should be none. The emulator's memory before and after the whole run is printed too.
Nothing here fails on a time: the figures are printed for docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc
import httpx
from icp_candid.candid import LEB128

from bench.canister_runtime import built
from icllm_emulator._proto.icllm.v1 import canister_pb2 as pb
from icllm_emulator._proto.icllm.v1 import canister_pb2_grpc, canisters_pb2_grpc, control_pb2_grpc
from icllm_emulator._proto.icllm.v1 import canisters_pb2 as kpb
from icllm_emulator._proto.icllm.v1 import control_pb2 as cpb
from icllm_emulator.backends.fake import fake_answer
from icllm_emulator.candid import decode_reply, encode_chat_request
from icllm_emulator.domain import Api, ChatRequest, ToolPolicy, UserMessage

CAP = 1000
DOORS = ("grpc", "http", "candid")


def expected(text: str, api: Api) -> str:
    request = ChatRequest("llama3.1:8b", (UserMessage(text),), api=api)
    return (
        fake_answer(request, seed=0, max_output_tokens=CAP, tool_policy=ToolPolicy.AUTO).message.content or ""
    )


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def soak(target: str, url: str, pid: int, clients: int, seconds: float, sample: float) -> int:
    outcome: Counter[str] = Counter()
    by_door: Counter[str] = Counter()
    memory: list[tuple[float, float]] = []
    stop = time.monotonic() + seconds
    started = time.monotonic()

    async with grpc.aio.insecure_channel(target) as channel, httpx.AsyncClient(timeout=60) as http:
        stub = canister_pb2_grpc.LlmCanisterStub(channel)

        async def one(door: str, text: str) -> str:
            if door == "grpc":
                request = pb.V1ChatRequest(
                    model="llama3.1:8b", messages=[pb.ChatMessageV1(user=pb.UserMessage(content=text))]
                )
                return str((await stub.V1Chat(request, timeout=60)).message.content)
            if door == "candid":
                arg = encode_chat_request(ChatRequest("llama3.1:8b", (UserMessage(text),), api=Api.V0))
                reply = await stub.CallCandid(pb.CallCandidRequest(method="v0_chat", arg=arg), timeout=60)
                return str(decode_reply("v0_chat", reply.reply))
            body = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": text}], "stream": False}
            response = await http.post(f"{url}/api/chat", json=body)
            response.raise_for_status()
            return str(response.json()["message"]["content"])

        async def client(k: int) -> None:
            n = 0
            while time.monotonic() < stop:
                door = DOORS[(k + n) % len(DOORS)]
                text = f"soak client {k} call {n}"
                n += 1
                by_door[door] += 1
                try:
                    answer = await one(door, text)
                except (grpc.RpcError, httpx.HTTPError) as error:
                    outcome["lost"] += 1
                    if outcome["lost"] <= 3:
                        print(f"lost: {door} {text}: {error}", file=sys.stderr)
                    continue
                outcome[
                    "ok" if answer == expected(text, Api.V0 if door == "candid" else Api.V1) else "crossed"
                ] += 1

        async def sampler() -> None:
            while time.monotonic() < stop:
                memory.append((time.monotonic() - started, rss_mib(pid)))
                await asyncio.sleep(sample)

        await asyncio.gather(sampler(), *(client(k) for k in range(clients)))
        stats = await control_pb2_grpc.ControlStub(channel).GetStats(cpb.GetStatsRequest())

    sent = sum(by_door.values())
    elapsed = time.monotonic() - started
    print(
        f"soak: {clients} clients, {elapsed:.0f} s, {sent} calls ({sent / elapsed:.0f}/s): "
        + ", ".join(f"{door} {count}" for door, count in sorted(by_door.items()))
    )
    print(
        f"  answers: ok {outcome['ok']}, lost {outcome['lost']}, crossed {outcome['crossed']}; "
        f"the emulator counted {stats.calls} calls ({stats.calls - sent:+d} against the clients: duplicates)"
    )
    warm = [rss for t, rss in memory if t >= min(30.0, seconds / 4)]
    if warm:
        print(
            f"  emulator RSS after warm-up: first {warm[0]:.0f} MiB, last {warm[-1]:.0f} MiB, "
            f"max {max(warm):.0f} MiB, median {statistics.median(warm):.0f} MiB ({len(warm)} samples; "
            f"growth {warm[-1] - warm[0]:+.0f} MiB)"
        )
    return 0 if outcome["lost"] == outcome["crossed"] == 0 and stats.calls == sent else 1


def candid_text(text: str) -> bytes:
    """The Candid argument of a method that takes one `text`."""
    raw = text.encode()
    return b"DIDL\x00\x01\x71" + bytes(LEB128.encode_u(len(raw))) + raw


async def canister_cycles(target: str, pid: int, wasm: bytes, cycles: int, warm_up: int) -> int:
    """Install the Motoko agent, call it, drop it; the emulator's memory after `warm_up` and at the end."""
    failed = 0
    warm = 0.0
    async with grpc.aio.insecure_channel(target) as channel:
        canisters = canisters_pb2_grpc.CanistersStub(channel)
        control = control_pb2_grpc.ControlStub(channel)
        for n in range(cycles):
            if n == warm_up:
                warm = rss_mib(pid)
            installed = await canisters.Install(kpb.InstallRequest(wasm=wasm), timeout=60)
            call = kpb.CanisterCallRequest(
                canister_id=installed.canister_id, method="prompt", arg=candid_text(f"soak canister {n}")
            )
            reply = await canisters.Call(call, timeout=60)
            if not reply.HasField("reply"):
                failed += 1
                if failed <= 3:
                    print(f"rejected: canister cycle {n}: {reply.reject.message}", file=sys.stderr)
            if n % 10 == 9:
                await control.Reset(cpb.ResetRequest(), timeout=60)
            else:
                await canisters.Remove(kpb.RemoveRequest(canister_id=installed.canister_id), timeout=60)
    end = rss_mib(pid)
    measured = max(1, cycles - warm_up)
    print(
        f"  canisters: {cycles} cycles of install, call, drop of the Motoko agent ({cycles // 10} by Reset), "
        f"{failed} calls rejected; emulator RSS after {warm_up} cycles {warm:.0f} MiB, after {cycles} "
        f"{end:.0f} MiB ({(end - warm) * 1024 / measured:+.0f} KiB a cycle)"
    )
    return 0 if failed == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__)
    parser.add_argument("--seconds", type=float, default=180.0, help="how long the clients run")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between memory samples")
    parser.add_argument(
        "--canister-cycles", type=int, default=300, help="install-call-drop cycles of the Motoko agent"
    )
    parser.add_argument("--canister-warm-up", type=int, default=30, help="cycles before memory is measured")
    args = parser.parse_args(argv)
    wasm = built("motoko-agent").read_bytes() if args.canister_cycles else b""
    with tempfile.TemporaryDirectory() as scratch:
        port_file = Path(scratch) / "ports.json"
        command = [sys.executable, "-m", "icllm_emulator", "serve", "--grpc-port", "0", "--ollama-port", "0"]
        # A small history keeps the emulator's memory about the traffic, not about what it remembers.
        command += ["--port-file", str(port_file), "--history-bytes", str(8 * 1024 * 1024)]
        with subprocess.Popen(
            command, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        ) as process:
            try:
                for _ in range(600):
                    if port_file.exists():
                        break
                    time.sleep(0.05)
                ports = json.loads(port_file.read_text())
                start = rss_mib(process.pid)
                status = asyncio.run(
                    soak(
                        ports["grpc_target"],
                        ports["http_url"],
                        process.pid,
                        args.clients,
                        args.seconds,
                        args.sample,
                    )
                )
                if args.canister_cycles:
                    status |= asyncio.run(
                        canister_cycles(
                            ports["grpc_target"],
                            process.pid,
                            wasm,
                            args.canister_cycles,
                            min(args.canister_warm_up, args.canister_cycles - 1),
                        )
                    )
                print(f"  emulator RSS: {start:.0f} MiB at start, {rss_mib(process.pid):.0f} MiB at the end")
                return status
            finally:
                process.terminate()
                process.wait(timeout=30)
