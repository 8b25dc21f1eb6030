"""`icllm-emulator`: run the emulator (`serve`) or an external AI worker (`worker`).

Every option can also come from an environment variable, `ICLLM_` + the option's name in capitals
with dashes as underscores (`--grpc-port` <- `ICLLM_GRPC_PORT`); a flag on the command line wins.
Environment variables are read here and nowhere else.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc

from emulator.backends import Backend, ToolPolicy
from emulator.backends.fake import FakeBackend
from emulator.clock import ClockKind, RealClock
from emulator.config import (
    DEFAULT_MODELS,
    BackendKind,
    ConfigError,
    EmulatorConfig,
    choice,
    parse_model_files,
    resolve_model_files,
)
from emulator.grpc_api.worker_source import GrpcSource
from emulator.rules import RuleError
from emulator.server import EmulatorServer
from emulator.workers import Worker

log = logging.getLogger("icllm")


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean; use true or false")


def _models(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _port_or_off(text: str) -> int | None:
    return None if text.strip().lower() in ("off", "none") else int(text)


def _optional_seconds(text: str) -> float | None:
    return None if text.strip().lower() in ("", "none", "off") else float(text)


MODEL_HELP = (
    "GGUF file of the llama backend: NAME=PATH, or a bare PATH for the default model; "
    "repeat for several models (in the env var, separate them with ;)"
)

# (flag, type, default, help); the env var of each is derived from the flag. A list default makes a
# flag repeatable: each use adds to the list, and using it at all replaces the env var's list.
SERVE_OPTIONS: list[tuple[str, Callable[[str], Any], Any, str]] = [
    ("--host", str, "127.0.0.1", "address to listen on (loopback by default)"),
    ("--grpc-port", int, 50051, "gRPC port; 0 picks a free one (see --port-file)"),
    (
        "--ollama-port",
        _port_or_off,
        11434,
        "Ollama-compatible HTTP port (Ollama's own); 0 picks a free one, off turns HTTP off",
    ),
    ("--port-file", str, None, "write the bound ports here as JSON once listening"),
    ("--backend", str, BackendKind.FAKE.value, f"answers from: {', '.join(b.value for b in BackendKind)}"),
    ("--profile", str, "current", "limit profile: current, launch-2025, unlimited"),
    ("--models", _models, DEFAULT_MODELS, "comma-separated model catalogue; the first is the default"),
    ("--model", parse_model_files, [], MODEL_HELP),
    ("--seed", int, 0, "seed of the fake backend's answers"),
    (
        "--tool-policy",
        str,
        ToolPolicy.AUTO.value,
        "whether the fake backend calls offered tools: never, auto",
    ),
    ("--rules", str, None, "YAML or JSON file of scripted rules"),
    ("--strict-rules", _bool, False, "reject prompts that no scripted rule matches"),
    ("--strict-requests", _bool, False, "reject requests the real canister only warns about"),
    ("--workers", int, 1, "built-in AI workers (0: only external workers answer)"),
    ("--queue-capacity", int, 0, "prompts waiting or in progress before SYS_TRANSIENT; 0 is unbounded"),
    ("--max-attempts", int, 3, "leases per prompt before the caller is rejected"),
    ("--lease-seconds", float, 60.0, "how long a worker's lease lasts without renewal"),
    ("--caller-deadline", _optional_seconds, None, "seconds before a caller gets SYS_UNKNOWN (ic-llm: 300)"),
    ("--clock", str, ClockKind.REAL.value, "real, or virtual (moved by the Control service)"),
    ("--grace", float, 10.0, "seconds to finish calls in flight on SIGTERM/SIGINT"),
    ("--log-level", str, "INFO", "DEBUG, INFO, WARNING or ERROR"),
]

WORKER_OPTIONS: list[tuple[str, Callable[[str], Any], Any, str]] = [
    ("--connect", str, "127.0.0.1:50051", "the emulator's gRPC address"),
    ("--worker-id", str, None, "this worker's name (default: a random one)"),
    ("--backend", str, BackendKind.FAKE.value, f"answers from: {', '.join(b.value for b in BackendKind)}"),
    ("--models", _models, (), "only lease prompts for these models (comma-separated; default: all)"),
    ("--model", parse_model_files, [], MODEL_HELP + " (this worker then leases only those models' prompts)"),
    ("--seed", int, 0, "seed of the fake backend's answers"),
    (
        "--tool-policy",
        str,
        ToolPolicy.AUTO.value,
        "whether the fake backend calls offered tools: never, auto",
    ),
    ("--poll-seconds", float, 10.0, "how long one long-poll waits for a job"),
    ("--log-level", str, "INFO", "DEBUG, INFO, WARNING or ERROR"),
]


def env_name(flag: str) -> str:
    return "ICLLM_" + flag.removeprefix("--").replace("-", "_").upper()


def _add_options(
    parser: argparse.ArgumentParser,
    options: list[tuple[str, Callable[[str], Any], Any, str]],
    environ: Mapping[str, str],
) -> None:
    for flag, kind, default, text in options:
        env = env_name(flag)
        if env in environ:
            try:
                default = kind(environ[env])
            except (ValueError, argparse.ArgumentTypeError) as error:
                parser.error(f"environment variable {env}={environ[env]!r} is not valid: {error}")
        if isinstance(default, list):
            parser.add_argument(
                flag, type=kind, default=default, action=_Repeatable, help=f"{text} [env {env}]"
            )
        else:
            parser.add_argument(flag, type=kind, default=default, help=f"{text} [env {env}]")


class _Repeatable(argparse.Action):
    """Collects a repeatable flag's values; the first use on the command line drops the default's."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        flag: str | None = None,
    ) -> None:
        current = getattr(namespace, self.dest)
        setattr(namespace, self.dest, [*([] if current is self.default else current), *values])


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="icllm-emulator", description="Emulator of the IC's LLM canister.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_options(commands.add_parser("serve", help="run the emulator"), SERVE_OPTIONS, environ)
    _add_options(commands.add_parser("worker", help="run an external AI worker"), WORKER_OPTIONS, environ)
    return parser


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    return EmulatorConfig(
        host=args.host,
        grpc_port=args.grpc_port,
        ollama_port=args.ollama_port,
        port_file=args.port_file,
        backend=choice(BackendKind, args.backend, "backend"),
        profile=args.profile,
        models=args.models,
        model_files=tuple(args.model),
        seed=args.seed,
        tool_policy=choice(ToolPolicy, args.tool_policy, "tool policy"),
        rules_file=args.rules,
        strict_rules=args.strict_rules,
        strict_requests=args.strict_requests,
        workers=args.workers,
        queue_capacity=args.queue_capacity,
        max_attempts=args.max_attempts,
        lease_seconds=args.lease_seconds,
        caller_deadline=args.caller_deadline,
        clock=choice(ClockKind, args.clock, "clock"),
        grace=args.grace,
    )


async def serve(config: EmulatorConfig) -> None:
    server = EmulatorServer(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await server.start()
        await stop.wait()
        log.info("stopping: finishing calls in flight (grace %g s)", config.grace)
    finally:
        await server.stop()
    log.info("stopped")


def worker_backend(args: argparse.Namespace) -> tuple[Backend, tuple[str, ...]]:
    """An external worker's backend, and the models whose prompts it leases (none named: all)."""
    kind = choice(BackendKind, args.backend, "backend")
    if kind is BackendKind.LLAMA:
        # Imported here: it imports llama_cpp, an optional extra (a ConfigError says how to install it).
        from emulator.backends.llama import LlamaBackend, LlamaSettings

        files = resolve_model_files(args.model, args.models[0] if args.models else DEFAULT_MODELS[0])
        llama = LlamaBackend(files, LlamaSettings(seed=args.seed))
        return llama, tuple(args.models) or tuple(llama.models)
    if args.model:
        raise ConfigError(
            f"--model gives GGUF files to the llama backend, but the backend is {kind.value!r}; "
            "add --backend llama"
        )
    tool_policy = choice(ToolPolicy, args.tool_policy, "tool policy")
    return FakeBackend(seed=args.seed, tool_policy=tool_policy), tuple(args.models)


async def run_worker(args: argparse.Namespace) -> None:
    backend, models = worker_backend(args)
    load = getattr(backend, "load", None)
    if load is not None:
        await load()
    worker_id = args.worker_id or f"worker-{uuid.uuid4().hex[:8]}"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with grpc.aio.insecure_channel(args.connect) as channel:
        source = GrpcSource(channel, models=models, poll_seconds=args.poll_seconds)
        task = asyncio.create_task(Worker(worker_id, source, backend, RealClock()).run())
        log.info("worker %s serving %s for the emulator at %s", worker_id, backend.name, args.connect)
        await stop.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await backend.aclose()


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    args = build_parser(environ).parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "serve":
            asyncio.run(serve(config_from_args(args)))
        else:
            asyncio.run(run_worker(args))
    except (ConfigError, RuleError) as error:
        print(f"icllm-emulator: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
