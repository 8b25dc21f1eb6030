"""``python -m bench grpc``: V1Chat through the emulator's whole path against a bare grpc.aio echo.

Each server runs in its own process on 127.0.0.1; the load comes from one grpc.aio client in this
process. The figures are printed as a table with the emulator/echo ratios and the targets; a missed
target is reported, never turned into a failing exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from bench import write_figures
from bench.grpc_path import MODEL, Result, add_load_options, check_load_options, make_requests, run_load
from bench.servers import Running, echo_main, emulator_main, server_process

TARGET_THROUGHPUT_RATIO = 0.70
TARGET_P50_RATIO = 1.50
REQUEST_COUNT = 50_000
EMULATOR = "emulator"
ECHO = "echo"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench grpc", description=__doc__)
    add_load_options(parser)
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="PATH",
        help="run the emulator process under cProfile and write its stats to PATH "
        "(the emulator's figures then include the profiler's overhead)",
    )
    return check_load_options(parser, parser.parse_args(argv))


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def cpu(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def summarise(results: dict[int, dict[str, Result]]) -> list[dict[str, Any]]:
    rows = []
    for concurrency, by_target in results.items():
        emulator, echo = by_target[EMULATOR], by_target[ECHO]
        throughput = ratio(emulator.requests_per_second, echo.requests_per_second)
        p50 = ratio(emulator.p50_ms, echo.p50_ms)
        rows.append(
            {
                "concurrency": concurrency,
                "throughput_ratio": throughput,
                "p50_ratio": p50,
                "throughput_target_met": throughput >= TARGET_THROUGHPUT_RATIO,
                "p50_target_met": p50 <= TARGET_P50_RATIO,
            }
        )
    return rows


def print_table(results: dict[int, dict[str, Result]], summary: list[dict[str, Any]], seconds: float) -> None:
    print()
    print(
        f"V1Chat, {seconds:g} s per run, model {MODEL}, one grpc.aio client, servers in their own processes"
    )
    header = (
        f"{'C':>4}  {'target':<9} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'calls':>8} {'errors':>7}"
        f" {'server CPU us/call':>19} {'client CPU us/call':>19}"
    )
    print(header)
    print("-" * len(header))
    for concurrency, by_target in results.items():
        for name in (EMULATOR, ECHO):
            r = by_target[name]
            print(
                f"{concurrency:>4}  {name:<9} {r.requests_per_second:>10.1f} {r.p50_ms:>9.3f} "
                f"{r.p99_ms:>9.3f} {r.calls:>8} {r.errors:>7} {cpu(r.server_cpu_us_per_call):>19} "
                f"{cpu(r.client_cpu_us_per_call):>19}"
            )
    print()
    print(f"target: throughput ratio >= {TARGET_THROUGHPUT_RATIO:.2f}, p50 ratio <= {TARGET_P50_RATIO:.2f}")
    print(f"{'C':>4}  {'throughput emulator/echo':>25} {'':<8} {'p50 emulator/echo':>18}")
    for row in summary:
        print(
            f"{row['concurrency']:>4}  {row['throughput_ratio']:>25.2f} "
            f"{verdict(row['throughput_target_met']):<8} "
            f"{row['p50_ratio']:>18.2f} {verdict(row['p50_target_met'])}"
        )
    for by_target in results.values():
        for r in by_target.values():
            if r.first_error:
                print(f"note: {r.target} at C={r.concurrency} had {r.errors} errors, first: {r.first_error}")


async def measure(
    servers: dict[str, Running], concurrencies: Sequence[int], seconds: float, warmup: float
) -> dict[int, dict[str, Result]]:
    requests = make_requests(REQUEST_COUNT)
    results: dict[int, dict[str, Result]] = {}
    for concurrency in concurrencies:
        results[concurrency] = {}
        for name in (ECHO, EMULATOR):
            print(f"running {name} at C={concurrency} ...", file=sys.stderr, flush=True)
            results[concurrency][name] = await run_load(
                name, servers[name], requests, concurrency=concurrency, seconds=seconds, warmup=warmup
            )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    profile = str(args.profile.resolve()) if args.profile else None
    with contextlib.ExitStack() as stack:
        servers = {
            ECHO: stack.enter_context(server_process(echo_main, ECHO)),
            EMULATOR: stack.enter_context(server_process(emulator_main, EMULATOR, profile_path=profile)),
        }
        results = asyncio.run(measure(servers, args.concurrency, args.seconds, args.warmup))
    summary = summarise(results)
    print_table(results, summary, args.seconds)
    if args.profile:
        print(f"\nemulator profile written to {args.profile} (figures include cProfile overhead)")
    if args.json:
        document = {
            "settings": {
                "seconds": args.seconds,
                "warmup": args.warmup,
                "concurrency": list(args.concurrency),
                "model": MODEL,
                "profiled": bool(args.profile),
            },
            "machine": {
                "python": platform.python_version(),
                "grpcio": grpc.__version__,
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
            },
            "results": [r.as_dict() for by_target in results.values() for r in by_target.values()],
            "ratios": summary,
            "targets": {"throughput_ratio_min": TARGET_THROUGHPUT_RATIO, "p50_ratio_max": TARGET_P50_RATIO},
        }
        write_figures(args.json, document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
