"""`python -m bench [NAME [OPTIONS]]`: run one benchmark, or every benchmark with its defaults.

Each benchmark compares the emulator against a baseline measured in the same run and prints ratios;
none of them fails on a missed target.
"""

from __future__ import annotations

import importlib
import sys

# name -> module with `main(argv: list[str] | None) -> int`
BENCHMARKS = {
    "grpc": "bench.grpc_vs_echo",
    "llama": "bench.llama_vs_direct",
    "plugin": "bench.plugin_overhead",
    "pytest-httpx": "bench.pytest_httpx_suite",
    "http": "bench.http_vs_grpc",
    "cassettes": "bench.cassettes",
    "canister": "bench.canister_runtime",
    "candid": "bench.candid_bad_inputs",
    "hostile": "bench.hostile",
    "pocketic": "bench.pocketic",
    "soak": "bench.soak",
}


# Run only by name (`make soak`): minutes long.
LONG = {"soak"}


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("benchmarks: " + ", ".join(BENCHMARKS))
        return 0
    if argv and not argv[0].startswith("-"):
        name, rest = argv[0], argv[1:]
        if name not in BENCHMARKS:
            print(f"unknown benchmark {name!r}; choose one of: {', '.join(BENCHMARKS)}", file=sys.stderr)
            return 2
        return int(importlib.import_module(BENCHMARKS[name]).main(rest))
    if argv:
        print("name a benchmark to pass it options: python -m bench NAME OPTIONS", file=sys.stderr)
        return 2
    status = 0
    for name, module in BENCHMARKS.items():
        if name in LONG:
            continue
        print(f"\n=== {name} ===", flush=True)
        status |= int(importlib.import_module(module).main([]))
    return status


sys.exit(main(sys.argv[1:]))
