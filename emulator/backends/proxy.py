"""The proxy backend: every job goes to an upstream Ollama- or OpenAI-compatible server over HTTP.

So a real model (a local Ollama, vLLM, llama.cpp's server, LM Studio, a hosted API) answers the
canister's prompts, through the emulator's queue, limits and history, and `--record-mode` can put its
answers in cassettes. Requests go out as Ollama's `POST /api/chat` with `"stream": false`, or as
OpenAI's `POST /v1/chat/completions`; the canister's tools and tool calls are translated both ways
(arguments travel as text on the canister's side, as JSON on the server's side). The answers come back
through the same parsers the emulator's own HTTP door uses (`icllm_emulator.chat_json`).

Failures reach the caller as rejects that say what happened: the server unreachable, too slow (the
timeout is bounded: `--upstream-timeout`), or answering 5xx are `SYS_TRANSIENT` (a retry may work); a
4xx (an unknown model, a refused request) or a body that is not a chat answer is `CANISTER_REJECT`.
An upstream that is itself this emulator passes its own reject code through.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import httpx

from icllm_emulator.backends import Backend
from icllm_emulator.backends.fake import canonical_request
from icllm_emulator.chat_json import (
    BadRequest,
    CallIds,
    argument_value,
    declared_types,
    ollama_message,
    openai_message,
)
from icllm_emulator.domain import (
    Answer,
    AssistantMessage,
    ChatRequest,
    Message,
    Reject,
    RejectCode,
    Tool,
    ToolCall,
    ToolMessage,
)
from icllm_emulator.tokens import count_tokens
from icllm_emulator.upstream import UpstreamApi, UpstreamSettings

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
PATHS = {UpstreamApi.OLLAMA: "/api/chat", UpstreamApi.OPENAI: "/v1/chat/completions"}
# Statuses that say "not now" rather than "not this request".
TRANSIENT_STATUSES = frozenset({408, 425, 429})
_SHOWN_BODY = 300


def _user_agent() -> str:
    try:
        return f"pytest-icllm/{version('pytest-icllm')}"
    except PackageNotFoundError:
        return "pytest-icllm"


# -- the canister's request as the upstream server's JSON ---------------------------------------------


def tool_json(tool: Tool) -> dict[str, Any]:
    """A canister tool as the function schema both APIs take."""
    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    parameters = tool.parameters
    properties: dict[str, Any] = {}
    for prop in parameters.properties if parameters is not None else ():
        schema: dict[str, Any] = {"type": prop.type}
        if prop.description is not None:
            schema["description"] = prop.description
        if prop.enum:
            schema["enum"] = list(prop.enum)
        properties[prop.name] = schema
    if parameters is not None:
        function["parameters"] = {
            "type": parameters.type,
            "properties": properties,
            "required": list(parameters.required),
        }
    return {"type": "function", "function": function}


def _arguments(call: ToolCall, declared: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    """Text arguments as JSON values: parsed where the tool declares a non-string type, or reads as JSON."""
    types = declared.get(call.function.name, {})
    return {arg.name: argument_value(arg.value, types.get(arg.name)) for arg in call.function.arguments}


def _tool_names(messages: tuple[Message, ...]) -> dict[str, str]:
    return {
        call.id: call.function.name
        for message in messages
        if isinstance(message, AssistantMessage)
        for call in message.tool_calls
    }


def ollama_body(request: ChatRequest, model: str, max_output_tokens: int | None) -> dict[str, Any]:
    """`POST /api/chat` with `"stream": false`."""
    declared = declared_types(request.tools)
    names = _tool_names(request.messages)
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        if isinstance(message, AssistantMessage):
            entry: dict[str, Any] = {"role": "assistant", "content": message.content or ""}
            if message.tool_calls:
                entry["tool_calls"] = [
                    {
                        "id": call.id,
                        "function": {"name": call.function.name, "arguments": _arguments(call, declared)},
                    }
                    for call in message.tool_calls
                ]
            messages.append(entry)
        elif isinstance(message, ToolMessage):
            entry = {"role": "tool", "content": message.content, "tool_call_id": message.tool_call_id}
            if message.tool_call_id in names:
                entry["tool_name"] = names[message.tool_call_id]
            messages.append(entry)
        else:
            messages.append({"role": message.role.value, "content": message.content})
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": False}
    if request.tools:
        body["tools"] = [tool_json(tool) for tool in request.tools]
    if max_output_tokens is not None:
        body["options"] = {"num_predict": max_output_tokens}
    return body


def openai_body(request: ChatRequest, model: str, max_output_tokens: int | None) -> dict[str, Any]:
    """`POST /v1/chat/completions`, not streamed; tool-call arguments as JSON text, as OpenAI sends them."""
    declared = declared_types(request.tools)
    messages: list[dict[str, Any]] = []
    for message in request.messages:
        if isinstance(message, AssistantMessage):
            entry: dict[str, Any] = {"role": "assistant", "content": message.content}
            if message.tool_calls:
                entry["tool_calls"] = [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {
                            "name": call.function.name,
                            "arguments": json.dumps(_arguments(call, declared), ensure_ascii=False),
                        },
                    }
                    for call in message.tool_calls
                ]
            messages.append(entry)
        elif isinstance(message, ToolMessage):
            messages.append(
                {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
            )
        else:
            messages.append({"role": message.role.value, "content": message.content})
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": False}
    if request.tools:
        body["tools"] = [tool_json(tool) for tool in request.tools]
    if max_output_tokens is not None:
        body["max_tokens"] = max_output_tokens
    return body


# -- the upstream server's JSON as the canister's answer ---------------------------------------------


def _with_ids(message: Any, request: ChatRequest) -> Any:
    """Tool calls that came without an id (Ollama's) get a stable one: `call_` + a hash of the request."""
    if not isinstance(message, dict) or not isinstance(message.get("tool_calls"), list):
        return message
    seed = hashlib.sha256(canonical_request(request).encode("utf-8")).hexdigest()
    calls = []
    for index, call in enumerate(message["tool_calls"]):
        if isinstance(call, dict) and not call.get("id"):
            digest = hashlib.sha256(f"{seed}:{index}".encode()).hexdigest()[:12]
            call = {**call, "id": f"call_{digest}"}
        calls.append(call)
    return {**message, "tool_calls": calls}


def _assistant(raw: Any, api: UpstreamApi, request: ChatRequest) -> AssistantMessage:
    if not isinstance(raw, dict):
        raise BadRequest(f"the message must be an object, got {type(raw).__name__}")
    raw = _with_ids({"role": "assistant", **raw}, request)
    parse = ollama_message if api is UpstreamApi.OLLAMA else openai_message
    message = parse(raw, 0, CallIds(), [])
    if not isinstance(message, AssistantMessage):
        raise BadRequest(f"the message's role is {raw.get('role')!r}, not 'assistant'")
    return message


def ollama_answer(body: Any, request: ChatRequest) -> Answer:
    if not isinstance(body, dict) or "message" not in body:
        raise BadRequest("it has no 'message'")
    message = _assistant(body["message"], UpstreamApi.OLLAMA, request)
    tokens = body.get("eval_count")
    return Answer(
        message,
        output_tokens=tokens
        if isinstance(tokens, int) and tokens >= 0
        else count_tokens(message.content or ""),
        truncated=body.get("done_reason") == "length",
    )


def openai_answer(body: Any, request: ChatRequest) -> Answer:
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise BadRequest("it has no 'choices'")
    choice = choices[0]
    message = _assistant(choice.get("message"), UpstreamApi.OPENAI, request)
    usage = body.get("usage")
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return Answer(
        message,
        output_tokens=tokens
        if isinstance(tokens, int) and tokens >= 0
        else count_tokens(message.content or ""),
        truncated=choice.get("finish_reason") == "length",
    )


def _error_text(response: httpx.Response) -> tuple[str, RejectCode | None]:
    """What the server said went wrong, and the reject code when the server is this emulator."""
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return (text[:_SHOWN_BODY] + ("..." if len(text) > _SHOWN_BODY else "")) or "(no body)", None
    if not isinstance(body, dict):
        return json.dumps(body)[:_SHOWN_BODY], None
    error = body.get("error")  # Ollama: {"error": text}; OpenAI: {"error": {"message": ...}}
    holder = error if isinstance(error, dict) else body
    code = holder.get("reject_code")
    described = error.get("message") if isinstance(error, dict) else error
    message = holder.get("reject_message") or described or json.dumps(body)
    known = code if isinstance(code, int) and code in {int(c) for c in RejectCode} else None
    return str(message)[: _SHOWN_BODY * 4], None if known is None else RejectCode(known)


class ProxyBackend(Backend):
    """Answers with an upstream server's answer; one `httpx.AsyncClient` (keep-alive) serves every job."""

    name: str = "proxy"

    def __init__(
        self, settings: UpstreamSettings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.settings = settings
        headers = {"User-Agent": _user_agent()}
        if settings.api_key:
            headers["Authorization"] = f"Bearer {settings.api_key}"
        self._client = httpx.AsyncClient(
            base_url=settings.url,
            headers=headers,
            timeout=httpx.Timeout(settings.timeout, connect=min(CONNECT_TIMEOUT, settings.timeout)),
            transport=transport,
            follow_redirects=False,
        )
        self._path = PATHS[settings.api]
        self._where = f"the upstream server {settings.public_url} ({settings.api.value} API)"

    @property
    def secrets(self) -> tuple[str, ...]:
        """What scrubbing must never write to a cassette."""
        return (self.settings.api_key,) if self.settings.api_key else ()

    def recording_details(self, request: ChatRequest) -> dict[str, Any]:
        return {
            "upstream": self.settings.public_url,
            "upstream_api": self.settings.api.value,
            "upstream_model": self.settings.upstream_model(request.model),
        }

    async def load(self) -> None:
        log.info("proxy backend: forwarding every job to %s%s", self.settings.public_url, self._path)

    async def generate(self, request: ChatRequest, max_output_tokens: int | None) -> Answer:
        if max_output_tokens == 0:
            return Answer(AssistantMessage(content=""), output_tokens=0, truncated=True)
        model = self.settings.upstream_model(request.model)
        api = self.settings.api
        body = (ollama_body if api is UpstreamApi.OLLAMA else openai_body)(request, model, max_output_tokens)
        call = f"POST {self._path}"
        try:
            response = await self._client.post(self._path, json=body)
        except httpx.TimeoutException:
            raise Reject(
                RejectCode.SYS_TRANSIENT,
                f"{self._where} did not answer {call} within {self.settings.timeout:g} s "
                "(--upstream-timeout); "
                "a model that is still loading can take longer: retry, or raise the timeout",
            ) from None
        except httpx.HTTPError as error:
            raise Reject(
                RejectCode.SYS_TRANSIENT,
                f"cannot reach {self._where} for {call}: {type(error).__name__}: {error or 'no detail'}; "
                "is it running, and is --upstream right?",
            ) from None
        if response.status_code >= 300:
            raise self._rejected(response, call, model)
        try:
            decoded = response.json()
        except ValueError:
            raise Reject(
                RejectCode.CANISTER_REJECT,
                f"{self._where} answered {call} with a body that is not JSON: "
                f"{response.text[:_SHOWN_BODY]!r}",
            ) from None
        try:
            return (ollama_answer if api is UpstreamApi.OLLAMA else openai_answer)(decoded, request)
        except BadRequest as error:
            shape = "Ollama chat response" if api is UpstreamApi.OLLAMA else "OpenAI chat completion"
            raise Reject(
                RejectCode.CANISTER_REJECT,
                f"{self._where} answered {call} with a body that is not an {shape}: {error.message}; "
                f"body: {response.text[:_SHOWN_BODY]}",
            ) from None

    def _rejected(self, response: httpx.Response, call: str, model: str) -> Reject:
        status = response.status_code
        text, code = _error_text(response)
        reason = f"{status} {response.reason_phrase}".strip()
        message = f"{self._where} answered {reason} to {call} (model {model!r}): {text}"
        if code is not None:
            return Reject(code, message)
        if 300 <= status < 400:
            location = response.headers.get("location", "")
            return Reject(
                RejectCode.CANISTER_REJECT,
                f"{self._where} redirects {call} to {location!r}: give --upstream the URL it points to",
            )
        if status >= 500 or status in TRANSIENT_STATUSES:
            return Reject(RejectCode.SYS_TRANSIENT, message)
        return Reject(RejectCode.CANISTER_REJECT, message)

    async def aclose(self) -> None:
        await self._client.aclose()


__all__ = ["ProxyBackend", "ollama_answer", "ollama_body", "openai_answer", "openai_body", "tool_json"]
