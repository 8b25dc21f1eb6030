"""The emulator process's servers around one engine, on loopback: gRPC (with health and reflection)
and the Ollama-compatible HTTP API, on one event loop.

`EmulatorServer` runs inside an event loop (the CLI's); `ThreadedEmulator` runs one in a background
thread with its own loop, for the pytest plugin and for tests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from icllm_emulator._proto.icllm.v1 import (
    canister_pb2,
    canister_pb2_grpc,
    canisters_pb2,
    canisters_pb2_grpc,
    control_pb2,
    control_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)
from icllm_emulator.addresses import bracketed, is_loopback_host
from icllm_emulator.config import ConfigError, EmulatorConfig
from icllm_emulator.engine import Engine
from icllm_emulator.grpc_api.canisters import CanistersServicer
from icllm_emulator.grpc_api.servicers import AiWorkerServicer, ControlServicer, LlmCanisterServicer
from icllm_emulator.grpc_api.status import (
    SEND_MAX_BYTES,
    TRANSPORT_MAX_BYTES,
    guarded,
    token_checked,
    tolerant,
)
from icllm_emulator.ollama.serve import OllamaHttpServer

log = logging.getLogger(__name__)

CONTROL_SERVICE = control_pb2.DESCRIPTOR.services_by_name["Control"].full_name
# The services that change the emulator, install and run code, or take prompts' work: with a control
# token, they answer only calls that carry it (the LLM canister itself and health stay open).
GUARDED_SERVICES = frozenset(
    {
        CONTROL_SERVICE,
        canisters_pb2.DESCRIPTOR.services_by_name["Canisters"].full_name,
        worker_pb2.DESCRIPTOR.services_by_name["AiWorker"].full_name,
    }
)
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
SERVICE_NAMES = (
    canister_pb2.DESCRIPTOR.services_by_name["LlmCanister"].full_name,
    worker_pb2.DESCRIPTOR.services_by_name["AiWorker"].full_name,
    control_pb2.DESCRIPTOR.services_by_name["Control"].full_name,
    canisters_pb2.DESCRIPTOR.services_by_name["Canisters"].full_name,
)


@dataclass(frozen=True)
class Ports:
    host: str
    grpc: int
    # The Ollama-compatible HTTP API's port; None when HTTP is off.
    http: int | None = None
    # The start-up canisters' ids, by name (`--canister NAME=PATH`).
    canisters: tuple[tuple[str, str], ...] = ()

    @property
    def grpc_target(self) -> str:
        return f"{bracketed(self.host)}:{self.grpc}"

    @property
    def http_url(self) -> str | None:
        return None if self.http is None else f"http://{bracketed(self.host)}:{self.http}"


class GenericHandlersOnly:
    """Hands the generated `add_*_to_server` functions a server that takes generic handlers only.

    grpc.aio keeps one pending task per *registered* method and waits on all of them for every call:
    with the emulator's 28 methods that cost more per call than the canister core itself (`make bench
    ARGS=grpc`). Generic handlers are found by name instead, at no per-method cost.


    The emulator's own services also get requests that do not parse as a `MalformedRequest` rather than
    an exception, so their handlers answer INVALID_ARGUMENT instead of gRPC's UNKNOWN.
    """

    def __init__(self, server: grpc.aio.Server, control_token: str | None = None) -> None:
        self._server = server
        self._control_token = control_token

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        """Skipped: generated code registers the same handlers through `add_registered_method_handlers`."""

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        if service in SERVICE_NAMES:
            handlers = {name: tolerant(handler) for name, handler in handlers.items()}
        if service in GUARDED_SERVICES and self._control_token:
            short = service.rsplit(".", 1)[-1]
            handlers = {
                name: token_checked(handler, self._control_token, short) for name, handler in handlers.items()
            }
        elif service == HEALTH_SERVICE:
            handlers = {name: guarded(handler, f"{service}/{name}") for name, handler in handlers.items()}
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))


class EmulatorServer:
    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.engine: Engine | None = None
        self.ports: Ports | None = None
        self._server: grpc.aio.Server | None = None
        self._http: OllamaHttpServer | None = None
        self._health = health.aio.HealthServicer()

    async def start(self) -> Ports:
        """Listen, load the backend's models, start the workers, report SERVING, write the port file."""
        if self.config.port_file:
            check_port_file(Path(self.config.port_file))  # before anything listens
        if not is_loopback_host(self.config.host):
            if not self.config.control_token:
                raise ConfigError(
                    f"--host {self.config.host} is reachable beyond this machine, and so would be the "
                    "Control, Canisters and AiWorker services (reset, rules, cassettes, canister modules, "
                    "prompts' work): give it a token with --control-token "
                    "TOKEN (or ICLLM_CONTROL_TOKEN), or listen on 127.0.0.1"
                )
            log.warning(
                "listening on %s: the emulator is reachable from other machines; "
                "Control, Canisters and AiWorker calls need the token",
                self.config.host,
            )
        engine = self.engine = Engine(self.config)
        server = self._server = grpc.aio.server(
            options=[
                # above the IC's 2 MiB: the handlers refuse those at once (see grpc_api/status.py)
                ("grpc.max_receive_message_length", TRANSPORT_MAX_BYTES),
                ("grpc.max_send_message_length", SEND_MAX_BYTES),
                ("grpc.so_reuseport", 0),
                # An idle connection is closed (clients reconnect by themselves); a handshake that does
                # not finish in time (a slowloris client) is dropped.
                ("grpc.max_connection_idle_ms", int(self.config.idle_timeout * 1000)),
                ("grpc.server_handshake_timeout_ms", int(self.config.header_timeout * 1000)),
            ]
        )
        services = GenericHandlersOnly(server, self.config.control_token)
        canister_pb2_grpc.add_LlmCanisterServicer_to_server(LlmCanisterServicer(engine), services)
        worker_pb2_grpc.add_AiWorkerServicer_to_server(AiWorkerServicer(engine), services)
        control_pb2_grpc.add_ControlServicer_to_server(ControlServicer(engine), services)
        canisters_pb2_grpc.add_CanistersServicer_to_server(CanistersServicer(engine), services)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, services)
        reflection.enable_server_reflection(
            (
                *SERVICE_NAMES,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            services,
        )
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        address = f"{bracketed(self.config.host)}:{self.config.grpc_port}"
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as error:
            raise ConfigError(f"cannot listen for gRPC on {address}: {error} (is the port in use?)") from None
        await server.start()
        http_port = None
        if self.config.ollama_port is not None:
            self._http = OllamaHttpServer(engine, self.config.host, self.config.ollama_port)
            http_port = await self._http.start()
        # Health stays NOT_SERVING while a model loads (off the event loop, so health keeps answering).
        await engine.load()
        engine.start()
        self.ports = Ports(self.config.host, port, http_port, tuple(engine.startup_canisters.items()))
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        if self.config.port_file:
            write_port_file(Path(self.config.port_file), self.ports)
        log.info("icllm emulator serving gRPC on %s", self.ports.grpc_target)
        if self.ports.http_url is not None:
            log.info("icllm emulator serving the Ollama API on %s", self.ports.http_url)
        return self.ports

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, status)

    async def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let calls in flight finish within the grace period, then stop."""
        grace = self.config.grace if grace is None else grace
        await self._health.enter_graceful_shutdown()
        stopping = []
        if self._server is not None:
            stopping.append(self._server.stop(grace))
        if self._http is not None:
            stopping.append(self._http.stop(grace))
        await asyncio.gather(*stopping)
        if self.engine is not None:
            await self.engine.stop()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


def check_port_file(path: Path) -> None:
    """A port file can be written there: its folder exists, and nothing but a regular file is replaced."""
    if not path.parent.is_dir():
        raise ConfigError(f"--port-file {path}: the folder {path.parent} does not exist; create it first")
    if path.exists() and not path.is_file():
        raise ConfigError(
            f"--port-file {path} exists and is not a regular file (a folder, FIFO or device): "
            "the emulator replaces only a regular file there; give another path"
        )


def write_port_file(path: Path, ports: Ports) -> None:
    """Write the bound ports as JSON, atomically, so a reader never sees half a file."""
    check_port_file(path)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        json.dump(
            {
                "host": ports.host,
                "grpc": ports.grpc,
                "grpc_target": ports.grpc_target,
                "http": ports.http,
                "http_url": ports.http_url,
                "canisters": dict(ports.canisters),
            },
            handle,
        )
    os.replace(handle.name, path)


class ThreadedEmulator:
    """An emulator on its own event loop in a background thread; `with` starts and stops it."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.server = EmulatorServer(config)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="icllm-emulator", daemon=True)

    @property
    def ports(self) -> Ports:
        assert self.server.ports is not None, "the emulator is not started"
        return self.server.ports

    @property
    def engine(self) -> Engine:
        assert self.server.engine is not None, "the emulator is not started"
        return self.server.engine

    def start(self) -> Ports:
        self._thread.start()
        try:
            return asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result()
        except BaseException:
            self.stop()
            raise

    def stop(self, grace: float = 0.5) -> None:
        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop).result()
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join()
        self.loop.close()

    def __enter__(self) -> ThreadedEmulator:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
