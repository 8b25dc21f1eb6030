"""`icllm-emulator pocket-ic`: the door started as PocketIC's server binary is.

PocketIC's clients spawn `<bin> --port-file PATH [--ttl SECONDS]`, wait until PATH holds `"<port>\\n"`,
and share one server among the tests of one test driver (the port file is named after its process id):
so the port is written only once the server listens, atomically, and a second server started on a port
file whose server is alive leaves at once. The server exits on SIGTERM, and by itself once it has had
no request and no instance for `--ttl` seconds, as PocketIC's does (the Python client never stops it).
`--version` answers the line the `pocket-ic` crate compares.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import uvicorn

from icllm_emulator.addresses import is_loopback_host
from icllm_emulator.config import ConfigError, EmulatorConfig
from icllm_emulator.ollama.serve import _Uvicorn, guarded_protocol
from icllm_emulator.pocketic.app import create_app
from icllm_emulator.pocketic.server import DEFAULT_MAX_INSTANCES, DEFAULT_TTL_SECONDS, PocketIcServer
from icllm_emulator.pocketic.wire import SERVER_VERSION

log = logging.getLogger("icllm.pocketic")

VERSION_LINE = f"pocket-ic-server {SERVER_VERSION}"
_SWEEP_SECONDS = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags PocketIC's binary takes, beside the emulator's settings."""
    parser.add_argument("--port", type=int, default=0, help="the port to listen on (0: a free one)")
    parser.add_argument(
        "--ttl",
        type=_seconds,
        default=DEFAULT_TTL_SECONDS,
        help=f"free an instance unused this many seconds, and exit when idle this long "
        f"(default {DEFAULT_TTL_SECONDS}, as PocketIC)",
    )
    parser.add_argument(
        "--max-instances",
        type=int,
        default=DEFAULT_MAX_INSTANCES,
        help=f"instances held at once; more are refused with a reason (default {DEFAULT_MAX_INSTANCES})",
    )
    parser.add_argument("--version", action="version", version=VERSION_LINE)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--ttl is a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"--ttl is more than 0 seconds, got {text!r}")
    return value


def _alive(port_file: Path) -> bool:
    """Whether the port file names a server that accepts connections (then this one is not needed)."""
    try:
        port = int(port_file.read_text().strip())
    except (OSError, ValueError):
        return False
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def _write_port(port_file: Path, port: int) -> None:
    handle, temporary = tempfile.mkstemp(dir=port_file.parent, prefix=f".{port_file.name}.")
    with os.fdopen(handle, "w") as out:
        out.write(f"{port}\n")
    os.replace(temporary, port_file)


async def run(
    config: EmulatorConfig,
    *,
    host: str,
    port: int,
    port_file: Path | None,
    ttl: float,
    max_instances: int,
) -> None:
    server = PocketIcServer(config, max_instances=max_instances, ttl_seconds=ttl)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    sock.listen(2048)
    sock.setblocking(False)
    bound = sock.getsockname()[1]
    uvicorn_config = uvicorn.Config(
        create_app(server),
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=0,
        http=guarded_protocol(config.header_timeout),
    )
    http = _Uvicorn(uvicorn_config, asyncio.Event())
    serving = asyncio.ensure_future(http.serve(sockets=[sock]))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        ready = asyncio.ensure_future(http.ready.wait())
        await asyncio.wait((serving, ready), return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            raise ConfigError("the PocketIC door's HTTP server did not start")
        if port_file is not None:
            _write_port(port_file, bound)
        log.info("PocketIC server %s (pytest-icllm) listening on http://%s:%d", SERVER_VERSION, host, bound)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _SWEEP_SECONDS)
            await server.sweep()
            if not server.instances and time.monotonic() - server.last_request > ttl:
                log.info("no request for %g s and no instance: exiting", ttl)
                break
    finally:
        http.exit()
        with contextlib.suppress(Exception):
            await serving
        await server.close()
        if port_file is not None:
            with contextlib.suppress(OSError):
                if port_file.read_text().strip() == str(bound):
                    port_file.unlink()


def serve(args: argparse.Namespace, config: EmulatorConfig) -> int:
    if not is_loopback_host(args.host):
        raise ConfigError(
            f"--host {args.host}: the PocketIC door installs and runs any canister module it is sent and has "
            "no authentication, so it listens on loopback only (127.0.0.1, as PocketIC)"
        )
    port_file = Path(args.port_file) if args.port_file else None
    if port_file is not None and _alive(port_file):
        return 0  # another server of this test driver serves already
    asyncio.run(
        run(
            config,
            host=args.host,
            port=args.port,
            port_file=port_file,
            ttl=args.ttl,
            max_instances=args.max_instances,
        )
    )
    return 0


def launcher() -> None:
    """`icllm-emulator-pocket-ic`: stands where PocketIC's clients look for the binary."""
    from icllm_emulator.cli import main

    sys.exit(main(["pocket-ic", *sys.argv[1:]]))
