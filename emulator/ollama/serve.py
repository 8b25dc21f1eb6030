"""uvicorn around the Ollama app, on the event loop the gRPC server and the engine already use.

The emulator binds the listening socket itself, so a port in use is a clear `ConfigError` (not
uvicorn's `sys.exit`) and port 0 is known at once. uvicorn's own signal handling is left out: the
CLI owns SIGTERM and SIGINT and stops every door in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any, cast

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from icllm_emulator.config import ConfigError
from icllm_emulator.engine import Engine
from icllm_emulator.ollama.app import create_app

log = logging.getLogger(__name__)

_TICK = 0.1  # uvicorn refreshes its Date header every 10 ticks
# After the grace period, how long the 503s to calls still waiting may take to go out.
CLOSING_SECONDS = 1.0


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, minus the parts the emulator does itself.

    Signals are the CLI's. Stopping wakes the main loop at once instead of at its next 0.1 s poll,
    and shutdown waits for open connections by short polls rather than uvicorn's fixed pauses:
    a test suite starts and stops hundreds of emulators, and each pause would add to every one.
    """

    def __init__(self, config: uvicorn.Config, closing: asyncio.Event) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()
        self._exit = asyncio.Event()
        self.closing = closing

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.ready.set()

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864_000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit.wait(), _TICK)

    def exit(self) -> None:
        self.should_exit = True
        self._exit.set()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Stop listening, let requests in flight finish within the grace period, then cut the rest."""
        for server in self.servers:
            server.close()
        for sock in sockets or ():
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()  # idle keep-alive connections close now; busy ones after their response
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.config.timeout_graceful_shutdown or 0.0)
        while (self.server_state.connections or self.server_state.tasks) and loop.time() < deadline:
            await asyncio.sleep(0.005)
        # The grace period is over: calls still waiting for the canister are answered 503 now.
        self.closing.set()
        answered_by = loop.time() + CLOSING_SECONDS
        while self.server_state.tasks and loop.time() < answered_by:
            await asyncio.sleep(0.005)
        for task in list(self.server_state.tasks):
            task.cancel()
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.close()
        for server in self.servers:
            await server.wait_closed()


class _WritesUntilClosed:
    """A transport that drops what is written once it is closing.

    A client that hangs up mid-stream closes the transport at once, but uvicorn learns of it only a
    turn of the event loop later; the pieces a stream writes meanwhile would each make asyncio log
    "socket.send() raised exception." (22 lines for three streams closed early).
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._transport.is_closing():
            self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def guarded_protocol(header_timeout: float) -> type[HttpToolsProtocol]:
    """uvicorn's HTTP protocol, closing a connection whose request headers do not arrive in time (a
    slowloris client, or a connection opened and never used)."""

    class Guarded(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(cast(asyncio.Transport, _WritesUntilClosed(transport)))
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return Guarded


class OllamaHttpServer:
    """The HTTP door: `start` listens and serves, `stop` drains and closes."""

    def __init__(self, engine: Engine, host: str, port: int) -> None:
        self.engine = engine
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self._server: _Uvicorn | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    def _listen(self) -> socket.socket:
        """A listening TCP socket, as uvicorn would bind it.

        The protocol is named (IPPROTO_TCP): asyncio sets TCP_NODELAY only on such sockets, and
        without it every response waits ~40 ms for Nagle and delayed ACKs.
        """
        address = f"{self.host}:{self.requested_port}"
        sock = None
        try:
            family, kind, proto, _, sockaddr = socket.getaddrinfo(
                self.host, self.requested_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0]
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(2048)
        except OSError as error:
            if sock is not None:
                sock.close()
            raise ConfigError(
                f"cannot listen for HTTP (the Ollama API) on {address}: {error.strerror or error} "
                "(is Ollama or another emulator running? --ollama-port 0 picks a free port, "
                "--ollama-port off turns HTTP off)"
            ) from None
        sock.setblocking(False)
        return sock

    async def start(self) -> int:
        """Listen, and return once uvicorn accepts connections; the bound port is returned."""
        sock = self._listen()
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(self.engine, self._closing),
            lifespan="off",
            log_config=None,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=0,
            timeout_keep_alive=max(1, round(self.engine.config.idle_timeout)),
            http=guarded_protocol(self.engine.config.header_timeout),
        )
        server = self._server = _Uvicorn(config, self._closing)
        task = self._task = asyncio.ensure_future(server.serve(sockets=[sock]))
        ready = asyncio.ensure_future(server.ready.wait())
        await asyncio.wait((task, ready), return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            sock.close()
            error = task.exception() if not task.cancelled() else None
            raise ConfigError(f"the HTTP server did not start: {error!r}")
        return self.port

    async def stop(self, grace: float) -> None:
        """Refuse new connections; requests in flight have `grace` seconds to finish."""
        if self._server is None or self._task is None:
            return
        self._server.config.timeout_graceful_shutdown = max(0.0, grace)  # type: ignore[assignment]
        self._server.exit()
        try:
            await self._task
        except Exception:
            log.exception("the HTTP server failed while stopping")
