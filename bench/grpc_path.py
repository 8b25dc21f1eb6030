"""The load generator: one grpc.aio client, C concurrent callers, per-call latency.

Both targets get the same client code, the same channel options and the same request sequence:
caller k sends requests[i] for the i-th call started overall, in the order the calls start.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc

from bench.servers import METHOD_PATH, Running, cpu_seconds
from icllm_emulator._proto.icllm.v1 import canister_pb2

MODEL = "llama3.1:8b"
CALL_TIMEOUT = 10.0
MAX_ERRORS = 100


def make_requests(count: int) -> list[canister_pb2.V1ChatRequest]:
    """One user message with varied text, the default model, no tools."""
    return [
        canister_pb2.V1ChatRequest(
            model=MODEL,
            messages=[canister_pb2.ChatMessageV1(user=canister_pb2.UserMessage(content=f"question {i}"))],
        )
        for i in range(count)
    ]


@dataclass(frozen=True)
class Result:
    target: str
    concurrency: int
    seconds: float
    calls: int
    errors: int
    requests_per_second: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    first_error: str | None
    # CPU time per call over the whole run, warm-up included (None where /proc is unavailable).
    server_cpu_us_per_call: float | None
    client_cpu_us_per_call: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def measured(
        cls,
        target: str,
        concurrency: int,
        elapsed: float,
        latencies: list[float],
        errors: list[str],
        completed: int,
        client_cpu: float,
        server_cpu: tuple[float | None, float | None],
    ) -> Result:
        """The figures of one load run, from its raw samples (`server_cpu` is before and after)."""
        before, after = server_cpu
        per_call = 1e6 / max(completed, 1)
        ordered = sorted(latencies)
        return cls(
            target=target,
            concurrency=concurrency,
            seconds=elapsed,
            calls=len(ordered),
            errors=len(errors),
            requests_per_second=len(ordered) / elapsed,
            p50_ms=percentile(ordered, 0.50) * 1000,
            p90_ms=percentile(ordered, 0.90) * 1000,
            p99_ms=percentile(ordered, 0.99) * 1000,
            mean_ms=(statistics.fmean(ordered) * 1000) if ordered else 0.0,
            max_ms=(ordered[-1] * 1000) if ordered else 0.0,
            first_error=errors[0] if errors else None,
            server_cpu_us_per_call=None if before is None or after is None else (after - before) * per_call,
            client_cpu_us_per_call=client_cpu * per_call,
        )


def add_load_options(parser: argparse.ArgumentParser) -> None:
    """The options every load benchmark takes: duration, warm-up, callers, a JSON file."""
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per run (default 3)")
    parser.add_argument(
        "--warmup", type=float, default=0.5, help="warm-up seconds before each run (default 0.5)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[1, 32],
        metavar="C",
        help="numbers of concurrent callers (default: 1 32)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH as JSON")


def check_load_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    if args.seconds <= 0 or args.warmup < 0:
        parser.error("--seconds must be more than 0 and --warmup 0 or more")
    if any(c < 1 for c in args.concurrency):
        parser.error("--concurrency values must be 1 or more")
    return args


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 for an empty one)."""
    if not ordered:
        return 0.0
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.5)))
    return ordered[rank - 1]


async def run_load(
    target: str,
    server: Running,
    requests: list[canister_pb2.V1ChatRequest],
    *,
    concurrency: int,
    seconds: float,
    warmup: float,
) -> Result:
    """Run `concurrency` callers for `warmup` + `seconds`; only calls started after warm-up count."""
    latencies: list[float] = []
    errors: list[str] = []
    next_index = itertools.count()
    completed = 0
    async with grpc.aio.insecure_channel(server.address) as channel:
        call = channel.unary_unary(
            METHOD_PATH,
            request_serializer=canister_pb2.V1ChatRequest.SerializeToString,
            response_deserializer=canister_pb2.V1ChatResponse.FromString,
        )
        await asyncio.wait_for(channel.channel_ready(), timeout=10.0)
        server_cpu_before = cpu_seconds(server.pid)
        client_cpu_before = time.process_time()
        start = time.perf_counter()
        measure_from = start + warmup
        stop_at = measure_from + seconds

        async def caller() -> None:
            nonlocal completed
            while len(errors) < MAX_ERRORS:
                request = requests[next(next_index) % len(requests)]
                began = time.perf_counter()
                if began >= stop_at:
                    return
                try:
                    await call(request, timeout=CALL_TIMEOUT)
                except grpc.aio.AioRpcError as error:
                    errors.append(f"{error.code().name}: {error.details()}")
                    continue
                ended = time.perf_counter()
                completed += 1
                if began >= measure_from:
                    latencies.append(ended - began)

        await asyncio.wait_for(
            asyncio.gather(*(caller() for _ in range(concurrency))),
            timeout=warmup + seconds + CALL_TIMEOUT + 5,
        )
        # Calls started in the window but finished after it still count: the window is stretched to
        # the last of them, so requests/s is calls over the time they actually took.
        elapsed = max(seconds, time.perf_counter() - measure_from)
        client_cpu = time.process_time() - client_cpu_before
        server_cpu_after = cpu_seconds(server.pid)
    return Result.measured(
        target,
        concurrency,
        elapsed,
        latencies,
        errors,
        completed,
        client_cpu,
        (server_cpu_before, server_cpu_after),
    )
