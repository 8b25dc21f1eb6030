"""``python -m bench http``: Ollama's ``POST /api/chat`` against gRPC ``V1Chat``, same run, same requests.

Two emulator processes on 127.0.0.1, each with one built-in worker and the fake backend: one
answers gRPC (HTTP off), the other is driven through its Ollama-compatible HTTP API (non-streaming
``/api/chat``). The gRPC load comes from one grpc.aio client, the HTTP load from one keep-alive
HTTP/1.1 connection per caller, framed by h11; both send the same prompts in the same order, so the
fake backend does the same work. Figures are printed with the HTTP/gRPC ratios and the target; a
missed target is reported, never turned into a failing exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from multiprocessing.queues import Queue
from typing import Any

import h11

from bench import write_figures
from bench.grpc_path import (
    CALL_TIMEOUT,
    MAX_ERRORS,
    MODEL,
    Result,
    add_load_options,
    check_load_options,
    make_requests,
    run_load,
)
from bench.servers import HOST, Running, cpu_seconds, emulator_main, server_process

TARGET_THROUGHPUT_RATIO = 0.50
REQUEST_COUNT = 50_000
HTTP = "http"
GRPC = "grpc"


def http_emulator_main(report: Queue[tuple[str, Any]], profile_path: str | None = None) -> None:
    """The emulator serving its Ollama API on a free port; reports that port once it listens."""
    from icllm_emulator.config import EmulatorConfig
    from icllm_emulator.server import EmulatorServer

    async def main() -> None:
        server = EmulatorServer(EmulatorConfig(host=HOST, grpc_port=0, ollama_port=0, workers=1))
        try:
            ports = await server.start()
            report.put(("ok", ports.http))
            stop = asyncio.Event()
            for signum in (signal.SIGTERM, signal.SIGINT):
                asyncio.get_running_loop().add_signal_handler(signum, stop.set)
            await stop.wait()
        finally:
            await server.stop(1.0)

    try:
        asyncio.run(main())
    except BaseException:
        report.put(("error", traceback.format_exc()))
        raise


def http_bodies(count: int) -> list[bytes]:
    """The gRPC benchmark's prompts as Ollama `/api/chat` bodies, encoded once."""
    return [
        json.dumps(
            {"model": MODEL, "messages": [{"role": "user", "content": f"question {i}"}], "stream": False}
        ).encode()
        for i in range(count)
    ]


class _Connection:
    """One keep-alive HTTP/1.1 connection, framed by h11: a load generator as light as a C client.

    httpx's own CPU per call is above the server's, and on a 2-core machine that would measure the
    client, not the emulator; h11 (which uvicorn uses too) frames requests and responses for a few
    tens of microseconds.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader = reader
        self.writer = writer
        self.host = host
        self.connection = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, address: str) -> _Connection:
        host, port = address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        return cls(reader, writer, address)

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        connection = self.connection
        headers = [
            ("host", self.host),
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
        ]
        self.writer.write(
            connection.send(h11.Request(method="POST", target=path, headers=headers))
            + connection.send(h11.Data(data=body))
            + connection.send(h11.EndOfMessage())
        )
        status = 0
        chunks = []
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("the server closed the connection")
                connection.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                connection.start_next_cycle()
                return status, b"".join(chunks)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def run_http_load(
    server: Running, bodies: list[bytes], *, concurrency: int, seconds: float, warmup: float
) -> Result:
    """`concurrency` callers, a connection each, for `warmup` + `seconds`; measured like gRPC's."""
    latencies: list[float] = []
    errors: list[str] = []
    next_index = itertools.count()
    completed = 0
    connections = [await _Connection.open(server.address) for _ in range(concurrency)]
    try:
        server_cpu_before = cpu_seconds(server.pid)
        client_cpu_before = time.process_time()
        start = time.perf_counter()
        measure_from = start + warmup
        stop_at = measure_from + seconds

        async def caller(connection: _Connection) -> None:
            nonlocal completed
            while len(errors) < MAX_ERRORS:
                body = bodies[next(next_index) % len(bodies)]
                began = time.perf_counter()
                if began >= stop_at:
                    return
                status, answer = await asyncio.wait_for(connection.post("/api/chat", body), CALL_TIMEOUT)
                if status != 200:
                    errors.append(f"HTTP {status}: {answer[:200]!r}")
                    continue
                ended = time.perf_counter()
                completed += 1
                if began >= measure_from:
                    latencies.append(ended - began)

        await asyncio.wait_for(
            asyncio.gather(*(caller(connection) for connection in connections)),
            timeout=warmup + seconds + CALL_TIMEOUT + 5,
        )
        elapsed = max(seconds, time.perf_counter() - measure_from)
        client_cpu = time.process_time() - client_cpu_before
        server_cpu_after = cpu_seconds(server.pid)
    finally:
        for connection in connections:
            await connection.close()
    return Result.measured(
        HTTP,
        concurrency,
        elapsed,
        latencies,
        errors,
        completed,
        client_cpu,
        (server_cpu_before, server_cpu_after),
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench http", description=__doc__)
    add_load_options(parser)
    return check_load_options(parser, parser.parse_args(argv))


def _cpu(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def summarise(results: dict[int, dict[str, Result]]) -> list[dict[str, Any]]:
    rows = []
    for concurrency, by_target in results.items():
        http, grpc = by_target[HTTP], by_target[GRPC]
        throughput = (
            http.requests_per_second / grpc.requests_per_second if grpc.requests_per_second else float("nan")
        )
        p50 = http.p50_ms / grpc.p50_ms if grpc.p50_ms else float("nan")
        rows.append(
            {
                "concurrency": concurrency,
                "throughput_ratio": throughput,
                "p50_ratio": p50,
                "throughput_target_met": throughput >= TARGET_THROUGHPUT_RATIO,
            }
        )
    return rows


def print_table(results: dict[int, dict[str, Result]], summary: list[dict[str, Any]], seconds: float) -> None:
    print()
    print(
        f"/api/chat (stream false) vs V1Chat, {seconds:g} s per run, model {MODEL}, "
        "emulators in their own processes"
    )
    header = (
        f"{'C':>4}  {'target':<6} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'calls':>8} {'errors':>7}"
        f" {'server CPU us/call':>19} {'client CPU us/call':>19}"
    )
    print(header)
    print("-" * len(header))
    for concurrency, by_target in results.items():
        for name in (HTTP, GRPC):
            r = by_target[name]
            print(
                f"{concurrency:>4}  {name:<6} {r.requests_per_second:>10.1f} {r.p50_ms:>9.3f} "
                f"{r.p99_ms:>9.3f} "
                f"{r.calls:>8} {r.errors:>7} {_cpu(r.server_cpu_us_per_call):>19} "
                f"{_cpu(r.client_cpu_us_per_call):>19}"
            )
    print()
    print(f"target: HTTP throughput >= {TARGET_THROUGHPUT_RATIO:.2f}x gRPC")
    print(f"{'C':>4}  {'throughput http/grpc':>21} {'':<8} {'p50 http/grpc':>14}")
    for row in summary:
        verdict = "met" if row["throughput_target_met"] else "NOT met"
        print(
            f"{row['concurrency']:>4}  {row['throughput_ratio']:>21.2f} {verdict:<8} "
            f"{row['p50_ratio']:>14.2f}"
        )
    for by_target in results.values():
        for r in by_target.values():
            if r.first_error:
                print(f"note: {r.target} at C={r.concurrency} had {r.errors} errors, first: {r.first_error}")


async def measure(
    servers: dict[str, Running], concurrencies: Sequence[int], seconds: float, warmup: float
) -> dict[int, dict[str, Result]]:
    requests = make_requests(REQUEST_COUNT)
    bodies = http_bodies(REQUEST_COUNT)
    results: dict[int, dict[str, Result]] = {}
    for concurrency in concurrencies:
        print(f"running grpc and http at C={concurrency} ...", file=sys.stderr, flush=True)
        results[concurrency] = {
            GRPC: await run_load(
                GRPC, servers[GRPC], requests, concurrency=concurrency, seconds=seconds, warmup=warmup
            ),
            HTTP: await run_http_load(
                servers[HTTP], bodies, concurrency=concurrency, seconds=seconds, warmup=warmup
            ),
        }
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.ExitStack() as stack:
        servers = {
            GRPC: stack.enter_context(server_process(emulator_main, "emulator-grpc")),
            HTTP: stack.enter_context(server_process(http_emulator_main, "emulator-http")),
        }
        results = asyncio.run(measure(servers, args.concurrency, args.seconds, args.warmup))
    summary = summarise(results)
    print_table(results, summary, args.seconds)
    if args.json:
        document = {
            "settings": {
                "seconds": args.seconds,
                "warmup": args.warmup,
                "concurrency": list(args.concurrency),
                "model": MODEL,
            },
            "machine": {
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
            },
            "results": [r.as_dict() for by_target in results.values() for r in by_target.values()],
            "ratios": summary,
            "targets": {"throughput_ratio_min": TARGET_THROUGHPUT_RATIO},
        }
        write_figures(args.json, document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
