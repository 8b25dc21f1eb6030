"""`python -m bench pocketic`: what the PocketIC door costs a PocketIC test.

Per message: an update call to the Motoko agent's `prompt` (one LLM call inside) through the door as a
PocketIC client makes it (`submit_ingress_message` then `await_ingress_message`, JSON over HTTP on one
keep-alive connection, to an `icllm-emulator-pocket-ic` process), against the same call in the same run
through the canister runtime in-process (as the `icllm_canister` fixture makes it) and through gRPC
`Canisters.Call` to an emulator process. Every variant asks the same prompts, in interleaved rounds.

Set-up: creating an instance (a fresh IC with its own engine) and deleting it, and installing the agent
through the door (`provisional_create_canister_with_cycles` + `install_code`, as pic-js's
`setupCanister` does). Memory: the door process's resident memory with many instances, each with the
agent installed, and after they are deleted, in rounds (what `--max-instances` bounds).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
import httpx
from icp_principal import Principal

from bench.canister_runtime import built, summary, timed
from icllm_emulator._proto.icllm.v1 import canisters_pb2 as cpb
from icllm_emulator._proto.icllm.v1 import canisters_pb2_grpc
from icllm_emulator.config import EmulatorConfig
from icllm_emulator.runtime import InstallSettings
from icllm_emulator.runtime.values import Interface
from icllm_emulator.server import ThreadedEmulator

LAUNCHER = Path(sys.executable).with_name("icllm-emulator-pocket-ic")
ANONYMOUS = base64.b64encode(b"\x04").decode()
# The two management methods a PocketIC client installs with, as the IC's interface declares them.
MANAGEMENT = Interface(
    """
    type settings = record { controllers : opt vec principal };
    type upgrade = opt record { skip_pre_upgrade : opt bool };
    service : {
      provisional_create_canister_with_cycles : (record {
        amount : opt nat; settings : opt settings; specified_id : opt principal
      }) -> (record { canister_id : principal });
      install_code : (record {
        mode : variant { install; reinstall; upgrade : upgrade };
        canister_id : principal; wasm_module : blob; arg : blob
      }) -> ();
    }
    """,
    "the management canister's install methods",
)
CREATE_BODY = {"subnet_config_set": {"application": [{"state_config": "New"}]}}


class RestDoor:
    """A PocketIC door process and one keep-alive client, as pic-js talks to its server."""

    def __init__(self, directory: Path) -> None:
        port_file = directory / "pocket_ic.port"
        self.process = subprocess.Popen([str(LAUNCHER), "--port-file", str(port_file), "--ttl", "600"])
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().endswith("\n")):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("the PocketIC door did not start")
            time.sleep(0.02)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port_file.read_text().strip()}", timeout=60)

    def close(self) -> None:
        self.http.close()
        self.process.terminate()
        self.process.wait(30)

    def create(self) -> int:
        return int(self.http.post("/instances", json=CREATE_BODY).json()["Created"]["instance_id"])

    def update(self, instance: int, canister: bytes, method: str, arg: bytes) -> bytes:
        body = {
            "sender": ANONYMOUS,
            "canister_id": base64.b64encode(canister).decode(),
            "method": method,
            "payload": base64.b64encode(arg).decode(),
            "effective_principal": "None",
        }
        path = f"/instances/{instance}/update"
        submitted = self.http.post(f"{path}/submit_ingress_message", json=body).json()
        done = self.http.post(f"{path}/await_ingress_message", json=submitted["Ok"]).json()
        if "Ok" not in done:
            raise RuntimeError(f"{method} was rejected: {done}")
        return base64.b64decode(done["Ok"])

    def install(self, instance: int, wasm: bytes) -> bytes:
        created = self.update(
            instance,
            b"",
            "provisional_create_canister_with_cycles",
            MANAGEMENT.encode_call(
                "provisional_create_canister_with_cycles",
                ({"amount": 10**18, "settings": None, "specified_id": None},),
            ),
        )
        canister_id = MANAGEMENT.decode_reply("provisional_create_canister_with_cycles", created)[
            "canister_id"
        ]
        canister = bytes(Principal.from_str(canister_id).bytes)
        self.update(
            instance,
            b"",
            "install_code",
            MANAGEMENT.encode_call(
                "install_code",
                (
                    {
                        "mode": {"install": None},
                        "canister_id": canister_id,
                        "wasm_module": wasm,
                        "arg": b"DIDL\0\0",
                    },
                ),
            ),
        )
        return canister


def per_message(door: RestDoor, calls: int, rounds: int) -> None:
    wasm = built("motoko-agent").read_bytes()
    instance = door.create()
    canister = door.install(instance, wasm)
    with ThreadedEmulator(EmulatorConfig(grpc_port=0, ollama_port=None)) as emulator:
        loop = emulator.loop

        def on_loop(work: Coroutine[Any, Any, Any]) -> Any:
            return asyncio.run_coroutine_threadsafe(work, loop).result(30)

        async def install() -> Any:
            return emulator.engine.runtime.install(wasm, InstallSettings())

        agent = on_loop(install())
        interface = Interface(agent.candid or "")
        args = [interface.encode_call("prompt", (f"question {i} about canisters",)) for i in range(calls)]
        channel = grpc.insecure_channel(emulator.ports.grpc_target)
        stub = canisters_pb2_grpc.CanistersStub(channel)
        grpc_agent = stub.Install(cpb.InstallRequest(wasm=wasm), timeout=60).canister_id
        variants: dict[str, Callable[[int], Any]] = {
            "PocketIC door: submit + await (HTTP)": lambda i: door.update(
                instance, canister, "prompt", args[i]
            ),
            "icllm_canister in-process": lambda i: on_loop(
                emulator.engine.runtime.call(agent.id, "prompt", args[i])
            ),
            "gRPC Canisters.Call": lambda i: stub.Call(
                cpb.CanisterCallRequest(canister_id=grpc_agent, method="prompt", arg=args[i]), timeout=30
            ),
        }
        results: dict[str, list[float]] = {name: [] for name in variants}
        for run in variants.values():  # warm-up
            timed(min(50, calls), run)
        for _ in range(rounds):
            for name, run in variants.items():
                results[name].extend(timed(calls, run))
        channel.close()
    print(f"update call to the Motoko agent's prompt (1 LLM call), {rounds} rounds x {calls} calls:")
    medians = {}
    for name, samples in results.items():
        p50, p90 = summary(samples)
        medians[name] = p50
        print(f"  {name:<40} p50 {p50:8.0f} us   p90 {p90:8.0f} us")
    door_call, in_process, grpc_call = medians.values()
    print(
        f"  door / in-process: {door_call / in_process:.2f}x; door / gRPC Canisters.Call: "
        f"{door_call / grpc_call:.2f}x; the door's own cost {door_call - in_process:.0f} us per call"
    )


def set_up(door: RestDoor, repeat: int) -> None:
    wasm = built("motoko-agent").read_bytes()
    created, deleted, installed = [], [], []
    for _ in range(repeat):
        started = time.perf_counter()
        instance = door.create()
        created.append(time.perf_counter() - started)
        started = time.perf_counter()
        door.install(instance, wasm)
        installed.append(time.perf_counter() - started)
        started = time.perf_counter()
        door.http.delete(f"/instances/{instance}")
        deleted.append(time.perf_counter() - started)
    print(
        f"set-up (median of {repeat}): create an instance {statistics.median(created) * 1e3:.1f} ms, "
        f"install the Motoko agent ({len(wasm) // 1024} KiB) {statistics.median(installed) * 1e3:.1f} ms, "
        f"delete the instance {statistics.median(deleted) * 1e3:.1f} ms"
    )


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc (Linux only)")


def memory(door: RestDoor, instances: int, rounds: int) -> None:
    """The door process's memory with `instances` instances, each with the agent, and after deleting them."""
    wasm = built("motoko-agent").read_bytes()
    pid = door.process.pid
    print(f"memory of the door process ({instances} instances, each with the Motoko agent, {rounds} rounds):")
    base = _rss_mib(pid)
    for round_ in range(rounds):
        ids = [door.create() for _ in range(instances)]
        for instance in ids:
            door.install(instance, wasm)
        full = _rss_mib(pid)
        for instance in ids:
            door.http.delete(f"/instances/{instance}")
        print(
            f"  round {round_ + 1}: {full:.0f} MiB with them ({(full - base) / instances:.1f} MiB each), "
            f"{_rss_mib(pid):.0f} MiB after deleting them (before: {base:.0f} MiB)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench pocketic", description=__doc__)
    parser.add_argument("--calls", type=int, default=200, help="calls per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--repeat", type=int, default=10, help="instances created and installs")
    parser.add_argument(
        "--instances", type=int, default=20, help="instances held at once for the memory figure"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        door = RestDoor(Path(directory))
        try:
            per_message(door, args.calls, args.rounds)
            set_up(door, args.repeat)
            memory(door, args.instances, 3)
        finally:
            door.close()
    return 0
