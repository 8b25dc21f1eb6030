"""``python -m bench pytest-httpx``: a scripted LLM call in a test against a mocked HTTP call in a test.

Two generated suites of N tests (default 300) do the same work in the two ways a team might test code
that calls an LLM: the plugin's suite takes `icllm` and `icllm_client`, scripts one answer and makes one
`prompt` (over gRPC, as the code under test would, with the teardown checks on); the baseline suite takes
pytest-httpx's `httpx_mock`, adds one response and makes one `POST` with a shared `httpx.Client`
(pytest-httpx's teardown checks on). Each suite runs in a fresh pytest process with the other plugin
disabled, interleaved round by round so a slow spell of the machine hits both. A conftest hook notes when
each test finishes; the cost per further test is measured from the first test's end to the
second-to-last test's end, so start-up and shutdown are not spread over the tests.

Start-up is timed apart: a one-test session whose test takes `icllm` against the same one-test session
with the plugin disabled, and a one-test pytest-httpx session, each as the wall time of the whole process.
On a busy machine those differences move by more than the plugin costs, so the plugin's own start (its
imports, the emulator's start, a reset, a prompt, the stop) is also measured as CPU time in a fresh process.

Targets: the plugin's cost per further test at most pytest-httpx's; start-up at most 150 ms more than the
session without the plugin. A missed target is reported, never turned into a failing exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import write_figures

TARGET_STARTUP_MS = 150.0
MARKS_ENV = "ICLLM_BENCH_MARKS"

CONFTEST = f'''
import json
import os
import time

_marks = []


def pytest_runtest_logfinish(nodeid, location):
    _marks.append((time.perf_counter(), time.process_time()))


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("{MARKS_ENV}")
    if path:
        with open(path, "w") as handle:
            json.dump(_marks, handle)
'''

INI = """[pytest]
addopts = -p no:cacheprovider
asyncio_default_fixture_loop_scope = function
"""

HTTPX_HEAD = 'import httpx\n\nclient = httpx.Client()\nURL = "http://llm.test/api/chat"\n\n\n'


def icllm_test(n: int) -> str:
    return (
        f"def test_{n}(icllm, icllm_client):\n"
        f'    icllm.on(contains="question {n}?").reply("answer {n}")\n'
        f'    assert icllm_client.prompt("llama3.1:8b", "question {n}?") == "answer {n}"\n'
    )


def httpx_test(n: int) -> str:
    return (
        f"def test_{n}(httpx_mock):\n"
        f'    httpx_mock.add_response(url=URL, json={{"message": {{"content": "answer {n}"}}}})\n'
        f'    reply = client.post(URL, json={{"model": "llama3.1:8b", "prompt": "question {n}?"}})\n'
        f'    assert reply.json()["message"]["content"] == "answer {n}"\n'
    )


@dataclass(frozen=True)
class Suite:
    name: str
    label: str
    source: str
    args: tuple[str, ...]


def suites(tests: int) -> tuple[Suite, ...]:
    return (
        Suite(
            "httpx",
            "pytest-httpx: add_response + POST",
            HTTPX_HEAD + "\n\n".join(httpx_test(n) for n in range(tests)),
            NO_ICLLM,
        ),
        Suite(
            "icllm",
            "pytest-icllm: on().reply + prompt",
            "\n\n".join(icllm_test(n) for n in range(tests)),
            NO_HTTPX,
        ),
    )


# One-test sessions for start-up: the plugin disabled, the plugin with a test that takes `icllm`, and
# pytest-httpx with a test that takes `httpx_mock`.
NO_HTTPX = ("-p", "no:pytest_httpx")
NO_ICLLM = ("-p", "no:icllm")
STARTUP = (
    Suite("start_none", "one test, no plugin", "def test_0():\n    pass\n", (*NO_ICLLM, *NO_HTTPX)),
    Suite("start_icllm", "one test taking icllm", "def test_0(icllm):\n    pass\n", NO_HTTPX),
    Suite("start_httpx", "one test taking httpx_mock", "def test_0(httpx_mock):\n    pass\n", NO_ICLLM),
)


# The plugin's own share of a session's start, in one fresh process: CPU milliseconds to import the
# plugin, import what its session fixture imports, start the in-process emulator, reset it, make one
# prompt over gRPC and stop. The modules every session here loads anyway (pytest and the installed
# plugins) are imported first, outside the measure. Steadier than the difference of two whole sessions,
# which on a busy machine moves by more than the plugin costs.
OWN_STARTUP = """
import time
import pytest, pytest_asyncio, faker.contrib.pytest.plugin, httpx
start = time.process_time()
import pytest_icllm.plugin
from icllm_emulator._proto.icllm.v1 import control_pb2
from icllm_emulator.client import LlmClient
from icllm_emulator.config import EmulatorConfig
from icllm_emulator.server import ThreadedEmulator
from pytest_icllm._controller import IcllmController
from pytest_icllm._inprocess import InProcessControl
emulator = ThreadedEmulator(EmulatorConfig(grpc_port=0, ollama_port=None))
emulator.start()
InProcessControl(emulator).Reset(control_pb2.ResetRequest(), timeout=30)
client = LlmClient(emulator.ports.grpc_target)
client.prompt("llama3.1:8b", "hello")
client.close()
emulator.stop()
print((time.process_time() - start) * 1000)
"""


def own_startup_ms() -> float:
    """CPU milliseconds of the plugin's own start (`OWN_STARTUP`), in a fresh process."""
    completed = subprocess.run(
        [sys.executable, "-c", OWN_STARTUP], capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"the plugin's start-up script failed:\n{completed.stderr[-3000:]}")
    return float(completed.stdout.strip().splitlines()[-1])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench pytest-httpx", description=__doc__)
    parser.add_argument("--tests", type=int, default=300, help="tests in each generated suite (default 300)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the median counts (default 3)")
    parser.add_argument("--starts", type=int, default=7, help="one-test sessions of each kind (default 7)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH as JSON")
    args = parser.parse_args(argv)
    if args.tests < 10 or args.repeat < 1 or args.starts < 1:
        parser.error("--tests must be 10 or more, --repeat and --starts 1 or more")
    return args


def write(root: Path, suite: Suite) -> None:
    folder = root / suite.name
    folder.mkdir()
    (folder / f"test_{suite.name}.py").write_text(suite.source)


def run(root: Path, suite: Suite, marks: Path | None) -> tuple[float, float]:
    """Run one suite in a fresh process: its wall time and its CPU time (user + system), in seconds."""
    env = {**os.environ, MARKS_ENV: str(marks) if marks else ""}
    command = [sys.executable, "-m", "pytest", "-q", *suite.args, suite.name]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    completed = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode != 0:
        output = completed.stdout[-3000:] + completed.stderr[-3000:]
        raise RuntimeError(f"{' '.join(command)} failed:\n{output}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def per_test_ms(marks: Path, tests: int) -> tuple[float, float]:
    """Wall and CPU milliseconds (every thread of the process) per further test."""
    times = json.loads(marks.read_text())
    if len(times) != tests:
        raise RuntimeError(f"expected {tests} finished tests, the hook saw {len(times)}")
    (wall0, cpu0), (wall1, cpu1) = times[0], times[-2]
    return (wall1 - wall0) / (tests - 2) * 1000, (cpu1 - cpu0) / (tests - 2) * 1000


def _row(label: str, values: list[float]) -> str:
    rounds = ", ".join(f"{v:.2f}" for v in values)
    return f"{label:<40} {rounds:<30} {statistics.median(values):>7.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    measured = suites(args.tests)
    wall: dict[str, list[float]] = {s.name: [] for s in measured}
    cpu: dict[str, list[float]] = {s.name: [] for s in measured}
    start_wall: dict[str, list[float]] = {s.name: [] for s in STARTUP}
    start_cpu: dict[str, list[float]] = {s.name: [] for s in STARTUP}
    with tempfile.TemporaryDirectory(prefix="icllm-bench-") as directory:
        root = Path(directory)
        (root / "pytest.ini").write_text(INI)
        (root / "conftest.py").write_text(CONFTEST)
        for suite in (*measured, *STARTUP):
            write(root, suite)
        for round_number in range(args.repeat):
            for suite in measured:  # interleaved, so a slow spell of the machine hits both
                print(f"round {round_number + 1}: {suite.label} ...", file=sys.stderr, flush=True)
                marks = root / f"marks-{suite.name}.json"
                run(root, suite, marks)
                per_wall, per_cpu = per_test_ms(marks, args.tests)
                wall[suite.name].append(per_wall)
                cpu[suite.name].append(per_cpu)
        print("one-test sessions ...", file=sys.stderr, flush=True)
        own: list[float] = []
        for _ in range(args.starts):
            own.append(own_startup_ms())
            for suite in STARTUP:
                seconds, cpu_seconds = run(root, suite, None)
                start_wall[suite.name].append(seconds * 1000)
                start_cpu[suite.name].append(cpu_seconds * 1000)

    print()
    print(
        f"{args.tests} generated tests per suite, {args.repeat} interleaved rounds, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    header = f"{'ms per further test':<40} {'each round':<30} {'median':>7}"
    print(header)
    print("-" * len(header))
    for suite in measured:
        print(_row(f"{suite.label}, wall", wall[suite.name]))
        print(_row(f"{suite.label}, CPU", cpu[suite.name]))
    ratio = {
        kind: statistics.median(figures["icllm"]) / statistics.median(figures["httpx"])
        for kind, figures in (("wall", wall), ("CPU", cpu))
    }
    for kind, value in ratio.items():
        print(
            f"pytest-icllm / pytest-httpx per test, {kind}: {value:.2f}x; "
            f"target <= 1.00: {'met' if value <= 1.0 else 'NOT met'}"
        )
    print()
    header = f"{'one-test session, ms':<40} {'median wall':>12} {'median CPU':>11}"
    print(header)
    print("-" * len(header))
    for suite in STARTUP:
        print(
            f"{suite.label:<40} {statistics.median(start_wall[suite.name]):>12.1f} "
            f"{statistics.median(start_cpu[suite.name]):>11.1f}"
        )
    extra = statistics.median(start_wall["start_icllm"]) - statistics.median(start_wall["start_none"])
    extra_cpu = statistics.median(start_cpu["start_icllm"]) - statistics.median(start_cpu["start_none"])
    print(
        f"start-up with icllm minus without the plugin: {extra:+.1f} ms wall, {extra_cpu:+.1f} ms CPU; "
        f"target <= {TARGET_STARTUP_MS:g} ms: {'met' if extra <= TARGET_STARTUP_MS else 'NOT met'}"
    )
    print(
        f"the plugin's own start (imports, emulator start, one reset, one prompt, stop), CPU ms: "
        f"median {statistics.median(own):.1f}, best {min(own):.1f}"
    )
    if args.json:
        document = {
            "tests": args.tests,
            "per_test_ms": {"wall": wall, "cpu": cpu},
            "ratio": ratio,
            "startup_ms": {"wall": start_wall, "cpu": start_cpu},
            "startup_extra_ms": {"wall": extra, "cpu": extra_cpu},
            "own_startup_cpu_ms": own,
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        }
        write_figures(args.json, document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
