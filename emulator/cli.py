"""`icllm-emulator`: run the emulator (`serve`), an external AI worker (`worker`), or the emulator as a
PocketIC server (`pocket-ic`).

The flags are derived from the settings table (`settings.SETTINGS`): a setting `x_y` is the flag
`--x-y`, and the environment variable `ICLLM_X_Y` is its default; a flag on the command line wins.
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

from icllm_emulator import motoko, settings
from icllm_emulator.backends import Backend
from icllm_emulator.backends.fake import FakeBackend
from icllm_emulator.cassettes.commands import add_cassette_commands, run_cassette_command
from icllm_emulator.clock import RealClock
from icllm_emulator.config import (
    ConfigError,
    EmulatorConfig,
    choice,
    config_from_settings,
    resolve_model_files,
    upstream_settings,
)
from icllm_emulator.domain import ToolPolicy
from icllm_emulator.grpc_api.worker_source import GrpcSource, Unreachable
from icllm_emulator.pocketic import serve as pocketic_serve
from icllm_emulator.rules import RuleError
from icllm_emulator.server import EmulatorServer
from icllm_emulator.settings import DEFAULT_MODELS, BackendKind, Door, Setting, SettingError
from icllm_emulator.workers import Worker

log = logging.getLogger("icllm")


def _argument_type(setting: Setting) -> Callable[[str], Any]:
    """The setting's parser, with its error in argparse's terms."""

    def parse(text: str) -> Any:
        try:
            return setting.parse(text)
        except SettingError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    parse.__name__ = setting.name  # argparse names the type in some messages
    return parse


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
        setattr(namespace, self.dest, (*(() if current is self.default else current), *values))


def _add_settings(parser: argparse.ArgumentParser, door: Door, environ: Mapping[str, str]) -> None:
    """One flag per setting of `door`; its env var, when set, is the flag's default."""
    for setting in settings.at(door):
        own = setting.worker if door is Door.WORKER else None
        default, text = own or (setting.default, setting.flag_help)
        if setting.env in environ:
            given = environ[setting.env]
            try:
                default = setting.parse(given)
            except SettingError as error:
                parser.error(f"environment variable {setting.env}={given!r} is not valid: {error}")
        parser.add_argument(
            setting.flag,
            dest=setting.name,
            type=_argument_type(setting),
            default=default,
            action=_Repeatable if setting.repeatable else "store",
            help=f"{text} [env {setting.env}]",
            nargs="?" if setting.switch else None,  # a boolean's flag alone means true
            const="true" if setting.switch else None,
        )


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="icllm-emulator", description="Emulator of the IC's LLM canister.")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_settings(commands.add_parser("serve", help="run the emulator"), Door.SERVE, environ)
    _add_settings(commands.add_parser("worker", help="run an external AI worker"), Door.WORKER, environ)
    pocket_ic = commands.add_parser("pocket-ic", help="serve PocketIC's REST API, the LLM canister inside")
    _add_settings(pocket_ic, Door.SERVE, environ)
    pocketic_serve.add_arguments(pocket_ic)
    add_cassette_commands(commands)
    motoko.add_command(commands)
    return parser


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> EmulatorConfig:
    values = {setting.name: getattr(args, setting.name) for setting in settings.at(Door.SERVE)}
    return config_from_settings(values, os.environ if environ is None else environ)


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
    upstream = upstream_settings(vars(args), os.environ if environ is None else environ)
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
    await backend.load()
    worker_id = args.worker_id or f"worker-{uuid.uuid4().hex[:8]}"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with grpc.aio.insecure_channel(args.connect) as channel:
        source = GrpcSource(
            channel,
            models=models,
            poll_seconds=args.poll_seconds,
            target=args.connect,
            control_token=args.control_token,
        )
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
    if args.command == "build-motoko":
        return motoko.run_command(args)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "serve":
            asyncio.run(serve(config_from_args(args, environ)))
        elif args.command == "pocket-ic":
            return pocketic_serve.serve(args, config_from_args(args, environ))
        else:
            asyncio.run(run_worker(args, environ))
    except (ConfigError, RuleError) as error:
        print(f"icllm-emulator: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
