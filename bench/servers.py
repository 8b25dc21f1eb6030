"""The two servers under test, each run in its own process and reporting its bound port.

Both listen on 127.0.0.1 with port 0. A child reports ``("ok", port)`` or ``("error", text)`` on a
multiprocessing queue once it is serving, and stops cleanly on SIGTERM (so an optional cProfile of
the emulator process can be written out).
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import importlib
import multiprocessing
import multiprocessing.process
import os
import queue
import signal
import traceback
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any, Protocol, TypeAlias

import grpc

from icllm_emulator._proto.icllm.v1 import canister_pb2

HOST = "127.0.0.1"
METHOD_PATH = "/icllm.v1.LlmCanister/V1Chat"
SERVICE_NAME = "icllm.v1.LlmCanister"
METHOD_NAME = "V1Chat"

ServerMain: TypeAlias = "Callable[[Queue[tuple[str, Any]], str | None], None]"

ECHO_RESPONSE = canister_pb2.V1ChatResponse(message=canister_pb2.AssistantMessage(content="ok"))


async def _until_terminated() -> None:
    """Wait for SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def _run(
    main: Callable[[], Coroutine[Any, Any, None]], report: Queue[tuple[str, Any]], profile_path: str | None
) -> None:
    profiler = cProfile.Profile() if profile_path else None
    try:
        if profiler is not None:
            profiler.enable()
        asyncio.run(main())
    except BaseException:
        report.put(("error", traceback.format_exc()))
        raise
    finally:
        if profiler is not None and profile_path:
            profiler.disable()
            profiler.dump_stats(profile_path)


class _Ports(Protocol):
    grpc: int


class _Server(Protocol):
    """The part of icllm_emulator.server.EmulatorServer that the benchmark uses."""

    async def start(self) -> _Ports: ...

    async def stop(self, grace: float | None = None) -> None: ...


def emulator_main(report: Queue[tuple[str, Any]], profile_path: str | None = None) -> None:
    """The emulator's whole path: EmulatorServer with one built-in worker and the fake backend."""
    # Loaded here, so that only the child process pays for the emulator (and Faker) import, and through
    # importlib, so that `mypy bench` checks this package without re-checking the emulator's modules.
    config_module = importlib.import_module("icllm_emulator.config")
    server_module = importlib.import_module("icllm_emulator.server")

    async def main() -> None:
        config = config_module.EmulatorConfig(host=HOST, grpc_port=0, ollama_port=None, workers=1)
        server: _Server = server_module.EmulatorServer(config)
        try:
            ports = await server.start()
            report.put(("ok", ports.grpc))
            await _until_terminated()
        finally:
            await server.stop(grace=1.0)

    _run(main, report, profile_path)


async def _echo(request: canister_pb2.V1ChatRequest, context: Any) -> canister_pb2.V1ChatResponse:
    return ECHO_RESPONSE


def echo_main(report: Queue[tuple[str, Any]], profile_path: str | None = None) -> None:
    """A grpc.aio server that answers V1Chat with a fixed small response and does nothing else."""

    async def main() -> None:
        server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(
            _echo,
            request_deserializer=canister_pb2.V1ChatRequest.FromString,
            response_serializer=canister_pb2.V1ChatResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, {METHOD_NAME: handler}),)
        )
        port = server.add_insecure_port(f"{HOST}:0")
        await server.start()
        try:
            report.put(("ok", port))
            await _until_terminated()
        finally:
            await server.stop(1.0)

    _run(main, report, profile_path)


@dataclass(frozen=True)
class Running:
    address: str
    pid: int


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time a process has used so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    # After the command name: state is field 3, utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def server_process(
    target: ServerMain, name: str, *, profile_path: str | None = None, start_timeout: float = 30.0
) -> Iterator[Running]:
    """Start `target` in a spawned process; yield its address and pid; always stop the process."""
    context = multiprocessing.get_context("spawn")
    report: Queue[tuple[str, Any]] = context.Queue()
    process = context.Process(target=target, args=(report, profile_path), name=f"bench-{name}", daemon=True)
    process.start()
    try:
        try:
            status, value = report.get(timeout=start_timeout)
        except queue.Empty:
            raise RuntimeError(
                f"the {name} server did not report a port within {start_timeout:g} s"
            ) from None
        if status != "ok":
            raise RuntimeError(f"the {name} server failed to start:\n{value}")
        assert process.pid is not None
        yield Running(f"{HOST}:{int(value)}", process.pid)
    finally:
        _stop(process)
        report.close()
        report.join_thread()


def _stop(process: multiprocessing.process.BaseProcess) -> None:
    if process.is_alive():
        process.terminate()  # SIGTERM: the child stops its server and exits
        process.join(10.0)
    if process.is_alive():
        process.kill()
        process.join(5.0)
