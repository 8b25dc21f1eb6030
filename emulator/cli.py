"""`icllm-emulator`: run the emulator (`serve`) or an external AI worker (`worker`).

Every option can also come from an environment variable, `ICLLM_` + the option's name in capitals
with dashes as underscores (`--grpc-port` <- `ICLLM_GRPC_PORT`); a flag on the command line wins.
Environment variables are read here and nowhere else.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grpc

from icllm_emulator.backends import Backend, ToolPolicy
from icllm_emulator.backends.fake import FakeBackend
from icllm_emulator.backends.upstream import (
    DEFAULT_KEY_ENV,
    DEFAULT_UPSTREAM_TIMEOUT,
    UpstreamApi,
    UpstreamError,
    UpstreamSettings,
    parse_model_map,
)
from icllm_emulator.billing import Price
from icllm_emulator.cassettes.commands import add_cassette_commands, run_cassette_command
from icllm_emulator.cassettes.settings import (
    BUILTIN_MATCHERS,
    DEFAULT_CASSETTE,
    DEFAULT_MATCH_ON,
    CassetteSettings,
    CassetteSettingsError,
    RecordMode,
)
from icllm_emulator.clock import ClockKind, RealClock
from icllm_emulator.config import (
    DEFAULT_MODELS,
    BackendKind,
    ConfigError,
    EmulatorConfig,
    choice,
    parse_model_files,
    resolve_model_files,
)
from icllm_emulator.grpc_api.servicers import MAX_POLL_SECONDS
from icllm_emulator.grpc_api.worker_source import GrpcSource, Unreachable
from icllm_emulator.rules import RuleError
from icllm_emulator.server import EmulatorServer
from icllm_emulator.workers import Worker

log = logging.getLogger("icllm")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


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
    if text.strip().lower() in ("off", "none"):
        return None
    if not text.strip().isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: use 0-65535 (0: any free port) or off")
    return int(text)


def _whole(text: str) -> int:
    """A whole number (argparse alone would say only "invalid int value")."""
    try:
        return int(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number (like 0, 1 or 42)") from None


def _positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0 (like 60 or 0.5)")
    return seconds


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 or more)")
    return seconds


def _optional_seconds(text: str) -> float | None:
    if text.strip().lower() in ("", "none", "off"):
        return None
    seconds = _seconds(text)
    if seconds == 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give more than 0 seconds, or none")
    return seconds


def _poll_seconds(text: str) -> float:
    seconds = _seconds(text)
    if seconds > MAX_POLL_SECONDS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is longer than a poll may wait (0-{MAX_POLL_SECONDS:g} s)"
        )
    return seconds


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a log level; choose one of: {', '.join(LOG_LEVELS)}"
        )
    return level


def _prices(text: str) -> dict[str, Price]:
    """`gemma3:27b=2000000000/1000000,...`: cycles per call, and per token after the slash."""
    if text.strip().lower() in ("none", "off", ""):
        return {}
    prices: dict[str, Price] = {}
    for spec in text.split(","):
        model, equals, amounts = spec.strip().rpartition("=")
        per_call, _, per_token = amounts.partition("/")
        if not equals or not model or not per_call.isdigit() or not (per_token or "0").isdigit():
            raise argparse.ArgumentTypeError(
                f"{spec.strip()!r} is not MODEL=PER_CALL[/PER_TOKEN] in cycles, "
                "e.g. gemma3:27b=2000000000/1000000"
            )
        prices[model] = Price(int(per_call), int(per_token or 0))
    return prices


def _lines(text: str) -> list[str]:
    """Repeatable regular expressions: one per flag, or one per line in the env var."""
    return [line for line in text.split("\n") if line.strip()]


def _references(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _model_map(text: str) -> tuple[tuple[str, str], ...]:
    try:
        return parse_model_map(text)
    except UpstreamError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _canisters(text: str) -> list[tuple[str, str]]:
    """`NAME=PATH`, several separated by `;` (as in the env var ICLLM_CANISTER)."""
    out = []
    for spec in text.split(";"):
        if not spec.strip():
            continue
        name, equals, path = spec.strip().partition("=")
        if not equals or not name.strip() or not path.strip():
            raise argparse.ArgumentTypeError(
                f"{spec.strip()!r} is not NAME=PATH (for example agent=agent.wasm)"
            )
        out.append((name.strip(), path.strip()))
    names = [name for name, _ in out]
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"canister names must differ: {', '.join(names)}")
    return out


MODEL_HELP = (
    "GGUF file of the llama backend: NAME=PATH, or a bare PATH for the default model; "
    "repeat for several models (in the env var, separate them with ;)"
)

# (flag, type, default, help); the env var of each is derived from the flag. A list default makes a
# flag repeatable: each use adds to the list, and using it at all replaces the env var's list.
Option = tuple[str, Callable[[str], Any], Any, str]

# Options of `serve` and `worker` alike.
BACKEND_OPTION: Option = (
    "--backend",
    str,
    BackendKind.FAKE.value,
    f"answers from: {', '.join(b.value for b in BackendKind)}",
)
SEED_OPTION: Option = ("--seed", _whole, 0, "seed of the fake backend's answers")
TOOL_POLICY_OPTION: Option = (
    "--tool-policy",
    str,
    ToolPolicy.AUTO.value,
    "whether the fake backend calls offered tools: never, auto",
)
LOG_LEVEL_OPTION: Option = ("--log-level", _log_level, "INFO", "DEBUG, INFO, WARNING or ERROR")

# The proxy backend's server, for `serve --backend proxy` and `worker --backend proxy` alike.
UPSTREAM_OPTIONS: list[Option] = [
    ("--upstream", str, None, "proxy backend: base URL of an Ollama- or OpenAI-compatible server"),
    (
        "--upstream-api",
        str,
        UpstreamApi.OLLAMA.value,
        "proxy backend: the server's API, ollama (/api/chat) or openai (/v1/chat/completions)",
    ),
    (
        "--upstream-timeout",
        _seconds,
        DEFAULT_UPSTREAM_TIMEOUT,
        "proxy backend: seconds to wait for an answer",
    ),
    ("--upstream-models", _model_map, (), "proxy backend: NAME=UPSTREAM,... the server's names of models"),
    (
        "--upstream-key-env",
        str,
        DEFAULT_KEY_ENV,
        "proxy backend: the environment variable that holds the server's API key (sent as a bearer token)",
    ),
]

SERVE_OPTIONS: list[Option] = [
    ("--host", str, "127.0.0.1", "address to listen on (loopback by default)"),
    ("--grpc-port", _whole, 50051, "gRPC port; 0 picks a free one (see --port-file)"),
    (
        "--ollama-port",
        _port_or_off,
        11434,
        "Ollama-compatible HTTP port (Ollama's own); 0 picks a free one, off turns HTTP off",
    ),
    ("--port-file", str, None, "write the bound ports here as JSON once listening"),
    BACKEND_OPTION,
    ("--profile", str, "current", "limit profile: current, launch-2025, unlimited"),
    ("--models", _models, DEFAULT_MODELS, "comma-separated model catalogue; the first is the default"),
    ("--interface", str, "v1", "Candid interface version: v1 (with v1_deposit, paid models) or v0.3.1"),
    ("--unknown-models", str, "reject", "what a model outside the catalogue gets: reject, or paid"),
    (
        "--prices",
        _prices,
        None,
        "paid models: MODEL=PER_CALL[/PER_TOKEN],... in cycles, or none (all free); default gemma3:27b",
    ),
    ("--model", parse_model_files, [], MODEL_HELP),
    ("--llama-instances", _whole, 1, "llama backend: instances of each model, for callers in parallel"),
    (
        "--canister",
        _canisters,
        [],
        "install a canister module at start-up: NAME=PATH; repeatable (env var: ; between)",
    ),
    SEED_OPTION,
    TOOL_POLICY_OPTION,
    ("--rules", str, None, "YAML or JSON file of scripted rules"),
    ("--strict-rules", _bool, False, "reject prompts that no scripted rule matches"),
    ("--strict-requests", _bool, False, "reject requests the real canister only warns about"),
    ("--strict-outcalls", _bool, False, "mark canisters' unscripted HTTP outcalls as unexpected"),
    ("--outcalls-loopback", _bool, False, "send canisters' unscripted outcalls to loopback URLs for real"),
    ("--history-bytes", _whole, 64 * 1024 * 1024, "about how many bytes of requests the call history keeps"),
    ("--workers", _whole, 1, "built-in AI workers (0: only external workers answer)"),
    ("--queue-capacity", _whole, 0, "prompts waiting or in progress before SYS_TRANSIENT; 0 is unbounded"),
    ("--max-attempts", _whole, 3, "leases per prompt before the caller is rejected"),
    ("--lease-seconds", _positive_seconds, 60.0, "how long a worker's lease lasts without renewal"),
    ("--caller-deadline", _optional_seconds, None, "seconds before a caller gets SYS_UNKNOWN (ic-llm: 300)"),
    ("--clock", str, ClockKind.REAL.value, "real, or virtual (moved by the Control service)"),
    ("--grace", _seconds, 10.0, "seconds to finish calls in flight on SIGTERM/SIGINT"),
    ("--control-token", str, None, "the token Control calls must carry (needed with a non-loopback --host)"),
    ("--idle-timeout", _seconds, 120.0, "seconds before an idle HTTP or gRPC connection is closed"),
    ("--header-timeout", _seconds, 10.0, "seconds an HTTP request's headers may take to arrive"),
    ("--body-timeout", _seconds, 30.0, "seconds an HTTP request's body may take to arrive (then 408)"),
    (
        "--cassettes",
        str,
        None,
        "folder of cassettes, for recording and replay alike (the emulator uses --cassette)",
    ),
    ("--cassette-paths-anywhere", _bool, False, "let Control.UseCassette name cassettes outside --cassettes"),
    ("--allow-scrubber-imports", _bool, False, "let Control.UseCassette name scrubbers not given at start"),
    (
        "--cassette",
        str,
        DEFAULT_CASSETTE,
        "the emulator's cassette in --cassettes (Control.UseCassette loads others)",
    ),
    (
        "--record-mode",
        str,
        RecordMode.NONE.value,
        "none (replay only), once, new_episodes or all; recording wraps --backend and needs --cassettes",
    ),
    (
        "--match-on",
        _models,
        DEFAULT_MATCH_ON,
        f"comma-separated parts of a request a recording must match: {', '.join(BUILTIN_MATCHERS)}",
    ),
    (
        "--allow-playback-repeats",
        _bool,
        False,
        "replay a request's last recording again once its recordings are used up (default: a miss)",
    ),
    ("--scrub", _lines, [], "regular expression of text written to cassettes as <scrubbed>; repeatable"),
    (
        "--scrubber",
        _references,
        [],
        "MODULE:FUNCTION of a scrub step of your own, run before writing; repeatable",
    ),
    *UPSTREAM_OPTIONS,
    LOG_LEVEL_OPTION,
]

WORKER_OPTIONS: list[Option] = [
    ("--connect", str, "127.0.0.1:50051", "the emulator's gRPC address"),
    ("--worker-id", str, None, "this worker's name (default: a random one)"),
    BACKEND_OPTION,
    ("--models", _models, (), "only lease prompts for these models (comma-separated; default: all)"),
    ("--model", parse_model_files, [], MODEL_HELP + " (this worker then leases only those models' prompts)"),
    SEED_OPTION,
    TOOL_POLICY_OPTION,
    ("--poll-seconds", _poll_seconds, 10.0, "how long one long-poll waits for a job"),
    *UPSTREAM_OPTIONS,
    LOG_LEVEL_OPTION,
]


def env_name(flag: str) -> str:
    return "ICLLM_" + flag.removeprefix("--").replace("-", "_").upper()


def _add_options(
    parser: argparse.ArgumentParser,
    options: list[Option],
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
    add_cassette_commands(commands)
    return parser


def upstream_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> UpstreamSettings | None:
    """The proxy backend's server; its API key comes from the environment only (never a flag)."""
    if args.upstream is None:
        return None
    try:
        return UpstreamSettings(
            url=args.upstream,
            api=args.upstream_api,
            timeout=args.upstream_timeout,
            api_key=environ.get(args.upstream_key_env) or None,
            models=args.upstream_models,
        )
    except UpstreamError as error:
        raise ConfigError(str(error)) from None


def cassettes_from_args(args: argparse.Namespace) -> CassetteSettings:
    try:
        return CassetteSettings(
            directory=args.cassettes,
            cassette=args.cassette,
            record_mode=args.record_mode,
            match_on=args.match_on,
            allow_playback_repeats=args.allow_playback_repeats,
            scrub_patterns=tuple(args.scrub),
            scrubbers=tuple(args.scrubber),
            paths_anywhere=args.cassette_paths_anywhere,
            scrubber_imports=args.allow_scrubber_imports,
        )
    except CassetteSettingsError as error:
        raise ConfigError(str(error)) from None


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> EmulatorConfig:
    return EmulatorConfig(
        host=args.host,
        grpc_port=args.grpc_port,
        ollama_port=args.ollama_port,
        port_file=args.port_file,
        backend=choice(BackendKind, args.backend, "backend"),
        profile=args.profile,
        models=args.models,
        interface=args.interface,
        unknown_models=args.unknown_models,
        **({} if args.prices is None else {"prices": args.prices}),
        model_files=tuple(args.model),
        canisters=tuple(args.canister),
        llama_instances=args.llama_instances,
        strict_outcalls=args.strict_outcalls,
        history_bytes=args.history_bytes,
        outcalls_loopback=args.outcalls_loopback,
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
        control_token=args.control_token or None,
        idle_timeout=args.idle_timeout,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        cassettes=cassettes_from_args(args),
        upstream=upstream_from_args(args, os.environ if environ is None else environ),
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


def worker_backend(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> tuple[Backend, tuple[str, ...]]:
    """An external worker's backend, and the models whose prompts it leases (none named: all)."""
    kind = choice(BackendKind, args.backend, "backend")
    upstream = upstream_from_args(args, os.environ if environ is None else environ)
    if kind is BackendKind.REPLAY:
        raise ConfigError(
            "cassettes are replayed by the emulator process itself (icllm-emulator serve --backend replay "
            "--cassettes DIR); a worker answers with fake, llama or proxy"
        )
    if (kind is BackendKind.PROXY) != (upstream is not None):
        raise ConfigError(
            "the proxy backend needs --upstream URL"
            if upstream is None
            else f"--upstream gives the proxy backend its server, but the backend is {kind.value!r}; "
            "add --backend proxy"
        )
    if upstream is not None:
        from icllm_emulator.backends.proxy import ProxyBackend  # imports httpx

        return ProxyBackend(upstream), tuple(args.models)
    if kind is BackendKind.LLAMA:
        # Imported here: it imports llama_cpp, an optional extra (a ConfigError says how to install it).
        from icllm_emulator.backends.llama import LlamaBackend, LlamaSettings

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


async def run_worker(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> None:
    backend, models = worker_backend(args, environ)
    load = getattr(backend, "load", None)
    if load is not None:
        await load()
    worker_id = args.worker_id or f"worker-{uuid.uuid4().hex[:8]}"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with grpc.aio.insecure_channel(args.connect) as channel:
        source = GrpcSource(channel, models=models, poll_seconds=args.poll_seconds, target=args.connect)
        task = asyncio.create_task(Worker(worker_id, source, backend, RealClock()).run())
        log.info("worker %s serving %s for the emulator at %s", worker_id, backend.name, args.connect)
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait((task, stopping), return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        task.cancel()
        outcome = await asyncio.gather(task, return_exceptions=True)
    await backend.aclose()
    if isinstance(outcome[0], Unreachable):
        raise ConfigError(str(outcome[0]))


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    args = build_parser(environ).parse_args(argv)
    if args.command == "cassette":
        return run_cassette_command(args)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "serve":
            asyncio.run(serve(config_from_args(args, environ)))
        else:
            asyncio.run(run_worker(args, environ))
    except (ConfigError, RuleError) as error:
        print(f"icllm-emulator: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
