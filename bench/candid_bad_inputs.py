"""How long the Candid door takes to refuse the worst inputs, against a good call in the same run.

`python -m bench candid`: one in-process emulator (fake backend); each of the Candid door's bad inputs
(truncated values, deep opt chains, a 3 MiB argument, ...) and a good `v1_chat` are sent five times
over gRPC `CallCandid`; the medians are printed in ms and as a ratio to the good call. Target: the worst
bad input is refused within 100 ms. A missed target is reported, not failed.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Sequence

import grpc

from icllm_emulator._proto.icllm.v1 import canister_pb2 as pb
from icllm_emulator._proto.icllm.v1 import canister_pb2_grpc
from icllm_emulator.config import EmulatorConfig
from icllm_emulator.server import ThreadedEmulator
from tests.doors.test_candid import GOOD, MIB, WORST_INPUTS

TARGET_MS = 100.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench candid", description=__doc__)
    parser.add_argument("--runs", type=int, default=5, help="calls per input (the median is shown)")
    args = parser.parse_args(argv)
    cases = WORST_INPUTS
    emulator = ThreadedEmulator(EmulatorConfig(grpc_port=0, ollama_port=None))
    emulator.start()
    try:
        with grpc.insecure_channel(
            emulator.ports.grpc_target, options=[("grpc.max_send_message_length", 8 * MIB)]
        ) as channel:
            stub = canister_pb2_grpc.LlmCanisterStub(channel)

            def ms(method: str, arg: bytes) -> float:
                start = time.perf_counter()
                with contextlib.suppress(grpc.RpcError):  # a reject is the expected answer
                    stub.CallCandid(pb.CallCandidRequest(method=method, arg=arg), timeout=30)
                return (time.perf_counter() - start) * 1000

            ms("v1_chat", GOOD)  # warm up the channel and the parsed .did
            good = statistics.median(ms("v1_chat", GOOD) for _ in range(args.runs))
            medians = {
                name: statistics.median(ms(*case) for _ in range(args.runs)) for name, case in cases.items()
            }
    finally:
        emulator.stop()
    print(f"{'input':<48} {'median ms':>10} {'/ good call':>12}")
    print(f"{'a good v1_chat (baseline)':<48} {good:>10.2f} {1.0:>12.2f}")
    for name, value in sorted(medians.items(), key=lambda item: -item[1]):
        print(f"{name:<48} {value:>10.2f} {value / good:>12.2f}")
    worst = max(medians, key=medians.__getitem__)
    met = "met" if medians[worst] < TARGET_MS else "MISSED"
    print(f"worst: {worst}, {medians[worst]:.1f} ms (target < {TARGET_MS:g} ms: {met})")
    return 0
