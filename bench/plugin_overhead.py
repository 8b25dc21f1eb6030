"""``python -m bench plugin``: the pytest plugin's cost per test, against the same suite without it.

A suite of N generated tests (default 500) runs in a fresh pytest process (same interpreter) four
times: with the plugin disabled (`-p no:icllm`, the baseline), with it loaded but unused, with every
test taking the `icllm` fixture (reset + teardown checks), and with every test also making one
scripted chat through `icllm_client`. A conftest hook notes the time each test finishes; the time per
test is measured from the first test's end to the second-to-last test's end, so the session's start
(the in-process emulator starts during the first test) and end are not spread over the tests.
Separately, the in-process emulator's start-up (`ThreadedEmulator.start`) is timed.
A missed target is reported, never turned into a failing exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import write_figures
from icllm_emulator.config import EmulatorConfig
from icllm_emulator.server import ThreadedEmulator

TARGET_OVERHEAD_MS = 2.0
TARGET_STARTUP_S = 0.3
MARKS_ENV = "ICLLM_BENCH_MARKS"

CONFTEST = f'''
import json
import os
import time

_marks = []


def pytest_runtest_logfinish(nodeid, location):
    _marks.append(time.perf_counter())


def pytest_sessionfinish(session, exitstatus):
    with open(os.environ["{MARKS_ENV}"], "w") as handle:
        json.dump(_marks, handle)
'''

INI = """[pytest]
addopts = -p no:cacheprovider
asyncio_default_fixture_loop_scope = function
"""


def plain_test(n: int) -> str:
    return f"def test_{n}():\n    assert {n} >= 0\n"


def fixture_test(n: int) -> str:
    return f"def test_{n}(icllm):\n    assert {n} >= 0\n"


def chat_test(n: int) -> str:
    return (
        f"def test_{n}(icllm, icllm_client):\n"
        f'    icllm.on(contains="question {n}?").reply("answer {n}")\n'
        f'    assert icllm_client.prompt("llama3.1:8b", "question {n}?") == "answer {n}"\n'
    )


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    make_test: Callable[[int], str]
    args: tuple[str, ...] = ()


VARIANTS = (
    Variant("disabled", "plugin disabled (-p no:icllm)", plain_test, ("-p", "no:icllm")),
    Variant("unused", "plugin loaded, fixture unused", plain_test),
    Variant("fixture", "icllm fixture (reset + checks)", fixture_test),
    Variant("chat", "icllm + one scripted chat", chat_test),
)


@dataclass(frozen=True)
class Run:
    per_test_ms: float
    wall_s: float


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench plugin", description=__doc__)
    parser.add_argument("--tests", type=int, default=500, help="tests in the generated suite (default 500)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each variant; the median counts (3)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH as JSON")
    args = parser.parse_args(argv)
    if args.tests < 10 or args.repeat < 1:
        parser.error("--tests must be 10 or more and --repeat 1 or more")
    return args


def write_suite(root: Path, tests: int) -> None:
    (root / "pytest.ini").write_text(INI)
    (root / "conftest.py").write_text(CONFTEST)
    for variant in VARIANTS:
        folder = root / variant.name
        folder.mkdir()
        body = "\n\n".join(variant.make_test(n) for n in range(tests))
        (folder / f"test_{variant.name}.py").write_text(body)


def run_variant(root: Path, variant: Variant, tests: int) -> Run:
    marks_path = root / f"marks-{variant.name}.json"
    env = {**os.environ, MARKS_ENV: str(marks_path)}
    command = [sys.executable, "-m", "pytest", "-q", *variant.args, variant.name]
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed:\n{completed.stdout[-3000:]}{completed.stderr[-3000:]}"
        )
    marks = json.loads(marks_path.read_text())
    if len(marks) != tests:
        raise RuntimeError(f"expected {tests} finished tests, the hook saw {len(marks)}")
    return Run(per_test_ms=(marks[-2] - marks[0]) / (tests - 2) * 1000, wall_s=wall)


def time_startup(repeat: int) -> list[float]:
    """Seconds to start an in-process emulator as the plugin does (free ports, fake backend)."""
    seconds = []
    for _ in range(repeat):
        emulator = ThreadedEmulator(EmulatorConfig(grpc_port=0, ollama_port=0))
        start = time.perf_counter()
        emulator.start()
        seconds.append(time.perf_counter() - start)
        emulator.stop()
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    runs: dict[str, list[Run]] = {variant.name: [] for variant in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="icllm-bench-") as directory:
        root = Path(directory)
        write_suite(root, args.tests)
        for round_number in range(args.repeat):
            for variant in VARIANTS:  # interleaved, so a slow spell of the machine hits every variant
                print(f"round {round_number + 1}: {variant.label} ...", file=sys.stderr, flush=True)
                runs[variant.name].append(run_variant(root, variant, args.tests))
    startup = time_startup(max(5, args.repeat))

    per_test = {name: statistics.median(r.per_test_ms for r in rs) for name, rs in runs.items()}
    wall = {name: statistics.median(r.wall_s for r in rs) for name, rs in runs.items()}
    baseline = per_test["disabled"]
    print()
    print(
        f"{args.tests} generated tests per run, median of {args.repeat} runs, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    header = f"{'suite':<32} {'ms/test':>8} {'overhead ms/test':>17} {'run wall s':>11}  target"
    print(header)
    print("-" * len(header))
    overhead = {}
    for variant in VARIANTS:
        name = variant.name
        overhead[name] = per_test[name] - baseline
        shown = "-" if name == "disabled" else f"{overhead[name]:+.3f}"
        target = ""
        if name in ("fixture", "chat"):
            met = overhead[name] <= TARGET_OVERHEAD_MS
            target = f"<= {TARGET_OVERHEAD_MS:g} ms: {'met' if met else 'NOT met'}"
        print(f"{variant.label:<32} {per_test[name]:>8.3f} {shown:>17} {wall[name]:>11.2f}  {target}")
    startup_median = statistics.median(startup)
    startup_met = startup_median < TARGET_STARTUP_S
    print()
    print(
        f"in-process emulator start-up (ThreadedEmulator.start): median {startup_median * 1000:.1f} ms, "
        f"min {min(startup) * 1000:.1f} ms over {len(startup)} starts; "
        f"target < {TARGET_STARTUP_S:g} s: {'met' if startup_met else 'NOT met'}"
    )
    if args.json:
        document = {
            "tests": args.tests,
            "repeat": args.repeat,
            "per_test_ms": per_test,
            "overhead_ms": overhead,
            "wall_s": wall,
            "startup_s": startup,
            "targets": {"overhead_ms_max": TARGET_OVERHEAD_MS, "startup_s_max": TARGET_STARTUP_S},
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        }
        write_figures(args.json, document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
