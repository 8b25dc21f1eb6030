"""How the PocketIC door's handlers are called: the body read within its bound and parsed, and every
outcome, a caller's mistake included, written as the JSON PocketIC's clients parse."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from icllm_emulator.errors import ErrorKind, IcllmError
from icllm_emulator.pocketic.server import PocketIcServer
from icllm_emulator.pocketic.wire import BadRequest

log = logging.getLogger("icllm.pocketic")

# A JSON request carries at most one ingress message (2 MiB on the IC) in base64, and a little more.
MAX_JSON_BYTES = 4 * 1024 * 1024

Handler = Callable[[PocketIcServer, Request], Awaitable[Any]]


def endpoint(handler: Handler, server: PocketIcServer) -> Callable[[Request], Awaitable[Response]]:
    async def serve(request: Request) -> Response:
        server.last_request = time.monotonic()
        try:
            result = await handler(server, request)
        except BadRequest as error:
            return JSONResponse({"message": error.message}, status_code=error.status)
        except IcllmError as error:
            status = 404 if error.kind is ErrorKind.NOT_FOUND else 400
            message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
            return JSONResponse({"message": message}, status_code=status)
        except Exception as error:  # a fault of the door: still JSON, so the client shows it
            log.exception("the PocketIC door failed on %s %s", request.method, request.url.path)
            return JSONResponse(
                {"message": f"the PocketIC door failed on {request.url.path}: {error!r}"}, status_code=500
            )
        if isinstance(result, Response):
            return result
        return JSONResponse(result)

    return serve


async def read_json(request: Request) -> Any:
    body = await read_body(request, MAX_JSON_BYTES)
    if not body:
        return None
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadRequest(f"the body of {request.url.path} is not JSON: {error}") from None


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(f"the body is {declared} bytes; {request.url.path} takes at most {limit}", 413)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(f"the body is over {limit} bytes; {request.url.path} takes at most {limit}", 413)
        chunks.append(chunk)
    return b"".join(chunks)
