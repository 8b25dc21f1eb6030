"""The Ollama-compatible HTTP API as an ASGI app: thin routes over the engine's canister core.

Every prompt goes through `engine.chat`, so an HTTP caller meets the same model catalogue,
limits, queue, scripted rules, billing and history as a gRPC caller. The routes only translate
(`convert`), describe the catalogue (`models`) and map rejects to HTTP statuses (`REJECT_STATUS`).
Build the app with `create_app(engine)`; `icllm_emulator.ollama.serve` puts uvicorn around it, and tests
can call it in-process through `httpx.ASGITransport`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import itertools
import json
import logging
import math
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from icllm_emulator import chat_json
from icllm_emulator.billing import checked_cycles
from icllm_emulator.chat_json import JSON, BadRequest, Parsed
from icllm_emulator.config import ANONYMOUS_PRINCIPAL, checked_principal
from icllm_emulator.domain import Answer, ChatRequest, Reject, RejectCode
from icllm_emulator.engine import Engine
from icllm_emulator.errors import ErrorKind, IcllmError
from icllm_emulator.ollama import models
from icllm_emulator.ollama.metrics import CLIENT_CLOSED, Metrics
from icllm_emulator.tokens import prompt_tokens, tokens

log = logging.getLogger(__name__)

# The Ollama release whose API this door follows (clients compare versions to enable features).
OLLAMA_VERSION = "0.12.0"
# The IC refuses messages above 2 MiB; so does this door, before reading such a body.
MAX_BODY_BYTES = 2 * 1024 * 1024

CALLER_HEADER = "x-icllm-caller"
CYCLES_HEADER = "x-icllm-cycles"
PROFILE_HEADER = "x-icllm-profile"
IGNORED_HEADER = "x-icllm-ignored-fields"
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"

# Each IC reject code has one HTTP status; an unknown model is 404, as in Ollama.
REJECT_STATUS: dict[RejectCode, int] = {
    RejectCode.SYS_FATAL: 502,
    RejectCode.SYS_TRANSIENT: 503,
    RejectCode.DESTINATION_INVALID: 404,
    RejectCode.CANISTER_REJECT: 400,
    RejectCode.CANISTER_ERROR: 500,
    RejectCode.SYS_UNKNOWN: 504,
}
UNKNOWN_MODEL_STATUS = 404

UNSUPPORTED_ROUTES = (
    ("/api/push", ("POST",)),
    ("/api/create", ("POST",)),
    ("/api/copy", ("POST",)),
    ("/api/delete", ("DELETE",)),
    ("/api/embed", ("POST",)),
    ("/api/embeddings", ("POST",)),
    ("/api/blobs/{digest}", ("HEAD", "POST")),
    ("/v1/completions", ("POST",)),
    ("/v1/embeddings", ("POST",)),
    ("/v1/responses", ("POST",)),
    ("/v1/messages", ("POST",)),
)


# The project's own errors (a caller's mistake) by kind.
MISUSE_STATUS = {ErrorKind.INVALID: 400, ErrorKind.NOT_FOUND: 404, ErrorKind.REFUSED: 409}


class HttpError(Exception):
    """An error response: status, message, and the reject behind it if there is one."""

    def __init__(self, status: int, message: str, reject: Reject | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reject = reject


class ClientGone(Exception):
    """The client hung up before its answer was ready; nobody is left to answer."""


def _now() -> str:
    return models.timestamp(datetime.now(UTC))


def _reject_fields(error: HttpError) -> dict[str, JSON]:
    """The reject behind an error, as both APIs' error bodies carry it (nothing without one)."""
    if error.reject is None:
        return {}
    return {
        "reject_code": int(error.reject.code),
        "reject_code_name": error.reject.code.name,
        "reject_message": error.reject.message,
    }


def _ollama_error(error: HttpError) -> JSONResponse:
    body: dict[str, JSON] = {"error": error.message, **_reject_fields(error)}
    return JSONResponse(body, status_code=error.status)


def _openai_error(error: HttpError, code: str | None = None) -> JSONResponse:
    kinds = {400: "invalid_request_error", 404: "not_found_error"}
    body: dict[str, JSON] = {
        "message": error.message,
        "type": kinds.get(error.status, "api_error"),
        "param": None,
        "code": code,
        **_reject_fields(error),
    }
    return JSONResponse({"error": body}, status_code=error.status)


Endpoint = Callable[[Any, Request], Awaitable[Response]]


def _answering(shape: Callable[[HttpError], JSONResponse]) -> Callable[[Endpoint], Endpoint]:
    """Turn a route's errors into error responses of one API's shape; a vanished client gets none."""

    def wrap(endpoint: Endpoint) -> Endpoint:
        @functools.wraps(endpoint)
        async def answered(api: Any, request: Request) -> Response:
            try:
                return await endpoint(api, request)
            except BadRequest as error:
                return shape(HttpError(error.status, error.message))
            except IcllmError as error:  # any other mistake of the caller's, by its kind
                return shape(HttpError(MISUSE_STATUS[error.kind], str(error)))
            except HttpError as error:
                return shape(error)
            except (ClientGone, ClientDisconnect):
                return Response(status_code=CLIENT_CLOSED)

        return answered

    return wrap


ollama_api = _answering(_ollama_error)
openai_api = _answering(_openai_error)


async def read_json(request: Request, timeout: float = 30.0) -> JSON:
    """The body as JSON; a body over 2 MiB is refused (413) as soon as that is known, and one that does
    not arrive within `timeout` seconds (a Content-Length that promises more than is sent) is a 408."""
    declared = (request.headers.get("content-length") or "").strip()
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BadRequest(_too_large(int(declared)), status=413)
    chunks = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise BadRequest(_too_large(size, at_least=True), status=413)
                chunks.append(chunk)
    except TimeoutError:
        raise BadRequest(
            f"the request body did not arrive within {timeout:g} s ({size} bytes came"
            + (f" of the {declared} its Content-Length promised)" if declared else ")"),
            status=408,
        ) from None
    body = b"".join(chunks)
    if not body.strip():
        raise BadRequest("missing request body: send a JSON object")
    try:
        value = json.loads(body, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise BadRequest("the request body is JSON nested too deeply") from None
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError alike
        raise BadRequest(f"the request body is not valid JSON: {error}") from None
    try:  # a lone surrogate ("\\ud800") decodes to a str that no UTF-8 encoder takes
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as error:
        raise BadRequest(
            f"the request body holds a lone UTF-16 surrogate ({error.object[error.start : error.end]!r} "
            "escaped as \\uXXXX): JSON text must be valid Unicode; escape characters above U+FFFF as a pair"
        ) from None
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (give a finite number)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is beyond the range of a JSON number (give a finite number)")
    return value


def _too_large(size: int, at_least: bool = False) -> str:
    return (
        f"the request body is {'more than ' if at_least else ''}{size} bytes; the limit is "
        f"{MAX_BODY_BYTES} bytes (2 MiB, the Internet Computer's message size limit)"
    )


def caller_of(request: Request) -> tuple[str, int]:
    """The calling principal and the cycles attached, from the `X-Icllm-*` request headers."""
    caller = checked_principal(
        request.headers.get(CALLER_HEADER, ANONYMOUS_PRINCIPAL), "header X-Icllm-Caller", BadRequest
    )
    cycles = checked_cycles(request.headers.get(CYCLES_HEADER, "0"), "header X-Icllm-Cycles", BadRequest)
    return caller, cycles


async def _until_disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def context_ids(request: ChatRequest, answer: str) -> list[JSON]:
    """Token ids of the prompt and the answer (a stable hash of each token into a 32,000-id vocabulary)."""
    text = "\n".join([*(m.content or "" for m in request.messages), answer])
    return [zlib.crc32(token.encode()) % 32_000 for token in tokens(text)]


def _stats(started_ns: int, request: ChatRequest, eval_count: int) -> dict[str, JSON]:
    """Ollama's closing figures; the durations are the emulator's own wall-clock time."""
    total = max(1, time.perf_counter_ns() - started_ns)
    return {
        "total_duration": total,
        "load_duration": 0,
        "prompt_eval_count": prompt_tokens(request),
        "prompt_eval_duration": 0,
        "eval_count": eval_count,
        "eval_duration": total,
    }


# A stream is made piece by piece as the client takes it (uvicorn waits while a client's buffer is full),
# and hands the event loop back every few pieces, so a large answer neither piles up in memory nor
# holds up the other doors; when the client leaves, Starlette stops the stream.
_PIECES_PER_TURN = 16


def _lines(objects: Iterable[dict[str, JSON]]) -> AsyncIterator[bytes]:
    async def stream() -> AsyncIterator[bytes]:
        for n, item in enumerate(objects, 1):
            yield json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
            if n % _PIECES_PER_TURN == 0:
                await asyncio.sleep(0)

    return stream()


def _events(objects: Iterable[dict[str, JSON]]) -> AsyncIterator[bytes]:
    async def stream() -> AsyncIterator[bytes]:
        for n, item in enumerate(objects, 1):
            yield b"data: " + json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
            if n % _PIECES_PER_TURN == 0:
                await asyncio.sleep(0)
        yield b"data: [DONE]\n\n"

    return stream()


def _quietly(task: asyncio.Future[Any]) -> None:
    """Retrieve a cancelled call's outcome, so that asyncio logs no "never retrieved" error for it."""
    if not task.cancelled():
        task.exception()


class OllamaApi:
    """The routes, bound to one engine."""

    def __init__(self, engine: Engine, closing: asyncio.Event | None = None) -> None:
        self.engine = engine
        # Set when the server's grace period ends: calls still waiting are answered 503.
        self.closing = asyncio.Event() if closing is None else closing
        self._completion_ids = itertools.count(1)

    # -- helpers -------------------------------------------------------------------------------------

    def _accept(self, parsed: Parsed) -> tuple[Parsed, dict[str, str]]:
        """The model in the catalogue's spelling, and the header naming ignored fields (or a 400)."""
        parsed = _with_model(parsed, models.resolve(parsed.model, self.engine.config.models))
        headers = {}
        if parsed.ignored:
            fields = ", ".join(parsed.ignored)
            if self.engine.config.strict_requests:
                raise BadRequest(
                    f"unknown fields: {fields} (strict requests: Ollama would ignore them; "
                    "leave them out, or run the emulator without --strict-requests)"
                )
            headers[IGNORED_HEADER] = fields
        return parsed, headers

    def _known_model(self, model: str) -> None:
        if model not in self.engine.config.models:
            raise HttpError(
                UNKNOWN_MODEL_STATUS,
                f"model '{model}' not found; this emulator serves {', '.join(self.engine.config.models)}",
            )

    async def _answer(self, request: Request, parsed: Parsed) -> Answer:
        """The canister's answer, or an HttpError for its reject; a client that hangs up cancels the call."""
        assert parsed.request is not None
        caller, cycles = caller_of(request)
        call = asyncio.ensure_future(
            self.engine.chat(parsed.request, caller, cycles, max_output_tokens=parsed.shaping.max_tokens)
        )
        gone = asyncio.ensure_future(_until_disconnected(request.receive))
        closing = asyncio.ensure_future(self.closing.wait())
        try:
            await asyncio.wait((call, gone, closing), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            closing.cancel()
            if not call.done():
                call.cancel()  # the canister records the call as cancelled; its job goes on
                call.add_done_callback(_quietly)
        if not call.done() or call.cancelled():
            if self.closing.is_set() and not gone.done():
                raise HttpError(
                    503,
                    "the emulator is shutting down and its grace period ended before this call was answered",
                )
            raise ClientGone()
        try:
            return call.result()
        except Reject as reject:
            raise self._rejected(reject, parsed.model) from None

    def _rejected(self, reject: Reject, model: str) -> HttpError:
        if reject.code is RejectCode.CANISTER_REJECT and model not in self.engine.config.models:
            # Ollama's words first, then the canister's reason without its own "unknown model 'x'"
            reason = reject.message.removeprefix(f"unknown model {model!r}: ")
            return HttpError(UNKNOWN_MODEL_STATUS, f"model '{model}' not found: {reason}", reject)
        return HttpError(
            REJECT_STATUS[reject.code],
            f"the LLM canister rejected the call with {reject.code.name} ({int(reject.code)}): "
            f"{reject.message}",
            reject,
        )

    # -- general -------------------------------------------------------------------------------------

    async def root(self, request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": OLLAMA_VERSION})

    async def metrics(self, request: Request) -> Response:
        metrics: Metrics = request.app.state.metrics
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # -- models --------------------------------------------------------------------------------------

    async def tags(self, request: Request) -> Response:
        return JSONResponse({"models": [models.tags_entry(name) for name in self.engine.config.models]})

    async def ps(self, request: Request) -> Response:
        now = datetime.now(UTC)
        return JSONResponse({"models": [models.ps_entry(name, now) for name in self.engine.config.models]})

    @ollama_api
    async def show(self, request: Request) -> Response:
        model = models.resolve(
            chat_json.model_named(await read_json(request, self.engine.config.body_timeout)),
            self.engine.config.models,
        )
        self._known_model(model)
        return JSONResponse(models.show(model))

    @ollama_api
    async def pull(self, request: Request) -> Response:
        """Nothing to download: a catalogue model is "pulled" at once, any other is not found."""
        body = await read_json(request, self.engine.config.body_timeout)
        self._known_model(models.resolve(chat_json.model_named(body), self.engine.config.models))
        if body.get("stream") is False:
            return JSONResponse({"status": "success"})
        return StreamingResponse(
            _lines([{"status": "pulling manifest"}, {"status": "success"}]), media_type=NDJSON
        )

    async def openai_models(self, request: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [models.openai_entry(name) for name in self.engine.config.models]}
        )

    @openai_api
    async def openai_model(self, request: Request) -> Response:
        name = models.resolve(request.path_params["model"], self.engine.config.models)
        self._known_model(name)
        return JSONResponse(models.openai_entry(name))

    # -- inference -----------------------------------------------------------------------------------

    @ollama_api
    async def chat(self, request: Request) -> Response:
        started = time.perf_counter_ns()
        parsed, headers = self._accept(
            chat_json.parse_chat(await read_json(request, self.engine.config.body_timeout))
        )
        if parsed.request is None:
            return self._load(parsed, headers, {"message": {"role": "assistant", "content": ""}})
        answer = await self._answer(request, parsed)
        reply = chat_json.reply(answer, parsed.request, parsed.shaping)
        head = {"model": parsed.model, "created_at": _now()}
        message: dict[str, JSON] = {"role": "assistant", "content": reply.content}
        if reply.tool_calls:
            message["tool_calls"] = list(reply.tool_calls)
        final = {
            "done": True,
            "done_reason": reply.done_reason,
            **_stats(started, parsed.request, reply.eval_count),
        }
        if not parsed.stream:
            return JSONResponse({**head, "message": message, **final}, headers=headers)

        def chunks() -> Iterator[dict[str, JSON]]:
            for piece in chat_json.pieces(reply.content):
                yield {**head, "message": {"role": "assistant", "content": piece}, "done": False}
            if reply.tool_calls:
                calls = list(reply.tool_calls)
                yield {
                    **head,
                    "message": {"role": "assistant", "content": "", "tool_calls": calls},
                    "done": False,
                }
            yield {**head, "message": {"role": "assistant", "content": ""}, **final}

        return StreamingResponse(_lines(chunks()), media_type=NDJSON, headers=headers)

    @ollama_api
    async def generate(self, request: Request) -> Response:
        started = time.perf_counter_ns()
        parsed, headers = self._accept(
            chat_json.parse_generate(await read_json(request, self.engine.config.body_timeout))
        )
        if parsed.request is None:
            return self._load(parsed, headers, {"response": ""})
        answer = await self._answer(request, parsed)
        reply = chat_json.reply(answer, parsed.request, parsed.shaping)
        head = {"model": parsed.model, "created_at": _now()}
        final = {
            "done": True,
            "done_reason": reply.done_reason,
            # Ollama's encoding of the conversation, to send back as `context` (ids of the prompt's and
            # the answer's tokens; the emulator keeps no memory, so sending it back changes nothing).
            "context": context_ids(parsed.request, reply.content),
            **_stats(started, parsed.request, reply.eval_count),
        }
        if not parsed.stream:
            return JSONResponse({**head, "response": reply.content, **final}, headers=headers)

        def chunks() -> Iterator[dict[str, JSON]]:
            for piece in chat_json.pieces(reply.content):
                yield {**head, "response": piece, "done": False}
            yield {**head, "response": "", **final}

        return StreamingResponse(_lines(chunks()), media_type=NDJSON, headers=headers)

    def _load(self, parsed: Parsed, headers: dict[str, str], empty: dict[str, JSON]) -> Response:
        """No prompt: Ollama loads (or, with keep_alive 0, unloads) the model and says so."""
        self._known_model(parsed.model)
        reason = "unload" if parsed.unload else "load"
        return JSONResponse(
            {"model": parsed.model, "created_at": _now(), **empty, "done_reason": reason, "done": True},
            headers=headers,
        )

    @openai_api
    async def openai_chat(self, request: Request) -> Response:
        parsed, headers = self._accept(
            chat_json.parse_openai_chat(await read_json(request, self.engine.config.body_timeout))
        )
        assert parsed.request is not None
        answer = await self._answer(request, parsed)
        reply = chat_json.reply(answer, parsed.request, parsed.shaping)
        tool_calls = chat_json.openai_tool_calls(reply.tool_calls)
        finish = "tool_calls" if tool_calls and reply.done_reason == "stop" else reply.done_reason
        prompt_size = prompt_tokens(parsed.request)
        usage = {
            "prompt_tokens": prompt_size,
            "completion_tokens": reply.eval_count,
            "total_tokens": prompt_size + reply.eval_count,
        }
        head = {
            "id": f"chatcmpl-{next(self._completion_ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": parsed.model,
            "system_fingerprint": "fp_ollama",
        }
        if not parsed.stream:
            message: dict[str, JSON] = {"role": "assistant", "content": reply.content}
            if tool_calls:
                message["tool_calls"] = tool_calls
            choice = {"index": 0, "message": message, "finish_reason": finish}
            return JSONResponse({**head, "choices": [choice], "usage": usage}, headers=headers)
        head["object"] = "chat.completion.chunk"

        def deltas() -> Iterator[dict[str, JSON]]:
            first = True
            for piece in chat_json.pieces(reply.content):
                yield {"role": "assistant", "content": piece} if first else {"content": piece}
                first = False
            if tool_calls:
                yield {"role": "assistant", "tool_calls": tool_calls} if first else {"tool_calls": tool_calls}
                first = False
            if first:
                yield {"role": "assistant", "content": ""}

        def chunks() -> Iterator[dict[str, JSON]]:
            for delta in deltas():
                yield {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            yield {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
            if parsed.include_usage:
                yield {**head, "choices": [], "usage": usage}

        return StreamingResponse(_events(chunks()), media_type=SSE, headers=headers)

    # -- the rest ------------------------------------------------------------------------------------

    async def unsupported(self, request: Request) -> Response:
        path = request.url.path
        # OpenAI's clients read OpenAI's error shape, and show its message; 404 is what OpenAI answers for
        # a route it lacks, and a status its SDK does not retry (it retries 408, 409, 429 and 5xx).
        if path.startswith("/v1/"):
            return _openai_error(
                HttpError(
                    404,
                    f"{request.method} {path} is an OpenAI route the emulator does not implement: the LLM "
                    "canister only chats (use POST /v1/chat/completions; GET /v1/models lists its models)",
                ),
                code="unsupported_route",
            )
        return _ollama_error(
            HttpError(
                501,
                f"{request.method} {path} is an Ollama route the emulator does not implement: "
                "the LLM canister only chats (see GET /api/tags for its models)",
            )
        )


def _with_model(parsed: Parsed, model: str) -> Parsed:
    if parsed.model == model:
        return parsed
    request = parsed.request
    if request is not None:
        request = dataclasses.replace(request, model=model)
    return dataclasses.replace(parsed, model=model, request=request)


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    if error.status_code == 404:
        message = (
            f"no route {request.method} {request.url.path}; the emulator serves Ollama's API "
            "(GET /api/tags, POST /api/chat, POST /api/generate, POST /v1/chat/completions, ...)"
        )
    elif error.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(error.detail)
    return JSONResponse({"error": message}, status_code=error.status_code, headers=error.headers)


async def _crash(request: Request, error: Exception) -> Response:
    """A fault of the emulator itself (never a caller's mistake): logged, and said plainly."""
    log.exception("the Ollama API failed on %s %s", request.method, request.url.path, exc_info=error)
    return JSONResponse({"error": f"the emulator failed: {type(error).__name__}: {error}"}, status_code=500)


def create_app(engine: Engine, closing: asyncio.Event | None = None) -> ASGIApp:
    """The ASGI app of the Ollama-compatible API over `engine` (which must already exist).

    `closing`, once set, answers the calls still waiting with 503 (the server's grace period ended).
    """
    api = OllamaApi(engine, closing)
    routes = [
        Route("/", api.root, methods=["GET", "HEAD"]),
        Route("/api/version", api.version, methods=["GET", "HEAD"]),
        Route("/api/tags", api.tags, methods=["GET", "HEAD"]),
        Route("/api/ps", api.ps, methods=["GET"]),
        Route("/api/show", api.show, methods=["POST"]),
        Route("/api/pull", api.pull, methods=["POST"]),
        Route("/api/chat", api.chat, methods=["POST"]),
        Route("/api/generate", api.generate, methods=["POST"]),
        Route("/v1/chat/completions", api.openai_chat, methods=["POST"]),
        Route("/v1/models", api.openai_models, methods=["GET"]),
        Route("/v1/models/{model:path}", api.openai_model, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        *(Route(path, api.unsupported, methods=list(methods)) for path, methods in UNSUPPORTED_ROUTES),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error, Exception: _crash})
    metrics = Metrics(engine, (route.path for route in routes if "{" not in route.path))
    app.state.metrics = metrics

    async def profiled(scope: Scope, receive: Receive, send: Send) -> None:
        """Every response names the limit profile in force: the caps a canister developer meets."""
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        profile = engine.config.profile.encode("latin-1")

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (PROFILE_HEADER.encode(), profile)]
            await send(message)

        await app(scope, receive, sending)

    return metrics.middleware(profiled)
