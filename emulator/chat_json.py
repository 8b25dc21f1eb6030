"""The codec of Ollama's and OpenAI's chat JSON: domain values from request bodies and back.

The HTTP door (`ollama/app.py`) parses what clients send with it; the proxy backend writes what an
upstream server is sent with it. It knows nothing of either.

A body that cannot be a request raises `BadRequest` with a message naming the field, what it was
and what would be valid. Fields Ollama knows but the LLM canister has no use for (images aside) are
accepted and ignored; fields Ollama does not know are ignored too, as Ollama ignores them, and are
listed in `ignored` so the app can name them in a header (or refuse them with strict requests).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from icllm_emulator.domain import (
    Answer,
    AssistantMessage,
    ChatRequest,
    FunctionCall,
    Message,
    Parameters,
    Property,
    SystemMessage,
    Tool,
    ToolCall,
    ToolCallArgument,
    ToolMessage,
    UserMessage,
)
from icllm_emulator.errors import IcllmError

JSON: TypeAlias = Any
Format: TypeAlias = Literal["json"] | dict[str, JSON] | None


class BadRequest(IcllmError, ValueError):
    """A request body that is not a valid request: HTTP 400 (or `status`) with this message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


# -- what Ollama and OpenAI know (anything else is ignored and reported) ----------------------------

_CHAT_KEYS = frozenset(
    {"model", "messages", "stream", "format", "keep_alive", "tools", "options", "think", "truncate"}
    | {"shift", "logprobs", "top_logprobs", "_debug_render_only"}
)
_GENERATE_KEYS = frozenset(
    {"model", "prompt", "suffix", "system", "template", "context", "stream", "raw", "format", "keep_alive"}
    | {"images", "options", "think", "truncate", "shift", "logprobs", "top_logprobs", "width", "height"}
    | {"steps", "_debug_render_only"}
)
_MESSAGE_KEYS = frozenset(
    {"role", "content", "thinking", "images", "tool_calls", "tool_name", "tool_call_id"}
)
_OPENAI_CHAT_KEYS = frozenset(
    {"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "seed"}
    | {"stop", "temperature", "top_p", "frequency_penalty", "presence_penalty", "response_format"}
    | {"tools", "tool_choice", "parallel_tool_calls", "n", "user", "logprobs", "top_logprobs"}
    | {"logit_bias", "reasoning", "reasoning_effort", "metadata", "store", "service_tier"}
)
_OPENAI_IGNORED = frozenset(
    {"temperature", "top_p", "frequency_penalty", "presence_penalty", "seed", "user", "logprobs"}
    | {"top_logprobs", "logit_bias", "parallel_tool_calls", "reasoning", "reasoning_effort", "metadata"}
    | {"store", "service_tier"}
)
_OPENAI_MESSAGE_KEYS = frozenset(
    {"role", "content", "name", "tool_calls", "tool_call_id", "reasoning", "refusal"}
)
_INT_OPTIONS = frozenset(
    {"num_keep", "seed", "num_predict", "top_k", "repeat_last_n", "mirostat", "num_ctx", "num_batch"}
    | {"num_gpu", "main_gpu", "num_thread", "draft_num_predict"}
)
_FLOAT_OPTIONS = frozenset(
    {"top_p", "min_p", "tfs_z", "typical_p", "temperature", "repeat_penalty", "presence_penalty"}
    | {"frequency_penalty", "mirostat_tau", "mirostat_eta"}
)
_BOOL_OPTIONS = frozenset(
    {"numa", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mmap", "use_mlock", "embedding_only"}
    | {"penalize_newline"}
)
_ROLES = ("system", "user", "assistant", "tool")


def kind(value: JSON) -> str:
    """The JSON type of a decoded value, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _object(value: JSON, where: str) -> dict[str, JSON]:
    if not isinstance(value, dict):
        raise BadRequest(f"{where} must be an object, got {kind(value)}")
    return value


def _string(body: Mapping[str, JSON], key: str, where: str, default: str = "") -> str:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise BadRequest(f"{where}{key} must be a string, got {kind(value)}")
    return value


def _bool(body: Mapping[str, JSON], key: str, where: str, default: bool) -> bool:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"{where}{key} must be true or false, got {kind(value)}")
    return value


def _list(body: Mapping[str, JSON], key: str, where: str) -> list[JSON]:
    value = body.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest(f"{where}{key} must be an array, got {kind(value)}")
    return value


def _unknown(body: Mapping[str, JSON], known: frozenset[str], where: str, ignored: list[str]) -> None:
    ignored.extend(f"{where}{key}" for key in body if key not in known)


# -- the shape of the answer -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Shaping:
    """What a request asks of the answer beyond the canister's own limits.

    `max_tokens` lowers the token cap for this call (Ollama's `num_predict`, OpenAI's `max_tokens`);
    `stop` cuts the text before the first stop sequence; `format` makes the text a JSON object.
    """

    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    format: Format = None


@dataclass(frozen=True, slots=True)
class Parsed:
    """A decoded HTTP request. `request` is None for Ollama's load/unload calls (no prompt at all)."""

    model: str
    request: ChatRequest | None
    stream: bool
    shaping: Shaping
    unload: bool = False
    include_usage: bool = False
    ignored: tuple[str, ...] = field(default=())


def _model(body: Mapping[str, JSON]) -> str:
    model = _string(body, "model", "")
    if not model.strip():
        raise BadRequest("model is required: name one of the models GET /api/tags lists")
    return model


def _options(body: Mapping[str, JSON], ignored: list[str]) -> Shaping:
    """Ollama's `options`: type-checked like Ollama does; `num_predict` and `stop` shape the answer."""
    raw = body.get("options")
    if raw is None:
        return Shaping()
    options = _object(raw, "options")
    for key, value in options.items():
        if value is None:
            continue
        if key in _INT_OPTIONS or key in _FLOAT_OPTIONS:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise BadRequest(f"option {key!r} must be a number, got {kind(value)}")
        elif key in _BOOL_OPTIONS:
            if not isinstance(value, bool):
                raise BadRequest(f"option {key!r} must be true or false, got {kind(value)}")
        elif key == "stop":
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise BadRequest(f"option 'stop' must be an array of strings, got {kind(value)}")
        else:
            ignored.append(f"options.{key}")
    num_predict = options.get("num_predict")
    # Ollama: -1 generates without limit, -2 until the context is full; 0 and less leave the cap alone.
    max_tokens = int(num_predict) if num_predict is not None and num_predict > 0 else None
    return Shaping(max_tokens=max_tokens, stop=tuple(s for s in options.get("stop") or () if s))


def _ollama_shaping(body: Mapping[str, JSON], ignored: list[str]) -> Shaping:
    """Ollama's `options` and `format`, the two fields of its requests that shape the answer."""
    options = _options(body, ignored)
    return Shaping(options.max_tokens, options.stop, _format(body.get("format"), "format"))


def _format(value: JSON, where: str) -> Format:
    if value is None or value == "":
        return None
    if value == "json":
        return "json"
    if isinstance(value, dict):
        return value
    shown = repr(value) if isinstance(value, str) else kind(value)
    raise BadRequest(f'{where} must be "json" or a JSON schema object, got {shown}')


def _keep_alive_zero(body: Mapping[str, JSON]) -> bool:
    value = body.get("keep_alive")
    if value is None:
        return False
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadRequest(
            f'keep_alive must be a duration such as "5m" or a number of seconds, got {kind(value)}'
        )
    return value == 0 or (isinstance(value, str) and value.strip() in ("0", "0s", "0m", "0h"))


def _no_images(message: Mapping[str, JSON], where: str) -> None:
    if message.get("images"):
        raise BadRequest(f"{where}images: the LLM canister takes text only; send the message without images")


# -- tools -------------------------------------------------------------------------------------------


def _tool(raw: JSON, index: int) -> Tool:
    """An Ollama/OpenAI tool `{type: function, function: {name, description, parameters}}`."""
    where = f"tools[{index}]"
    spec = _object(raw, where)
    tool_type = _string(spec, "type", f"{where}.", "function")
    if tool_type != "function":
        raise BadRequest(f'{where}.type is {tool_type!r}; the only tool type is "function"')
    function = _object(spec.get("function"), f"{where}.function")
    name = _string(function, "name", f"{where}.function.")
    if not name.strip():
        raise BadRequest(f"{where}.function.name is required")
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise BadRequest(f"{where}.function.description must be a string, got {kind(description)}")
    schema = function.get("parameters")
    parameters = (
        None if schema is None else _parameters(_object(schema, f"{where}.function.parameters"), where)
    )
    return Tool(name=name, description=description, parameters=parameters)


def _parameters(schema: Mapping[str, JSON], where: str) -> Parameters:
    """A JSON schema's top level, as the canister's `parameters` record can hold it."""
    properties = _object(schema.get("properties") or {}, f"{where}.function.parameters.properties")
    required = _list(schema, "required", f"{where}.function.parameters.")
    if not all(isinstance(name, str) for name in required):
        raise BadRequest(f"{where}.function.parameters.required must be an array of strings")
    schema_type = schema.get("type", "object")
    return Parameters(
        type=schema_type if isinstance(schema_type, str) else "object",
        properties=tuple(
            _property(name, _object(spec, f"{where}.function.parameters.properties.{name}"))
            for name, spec in properties.items()
        ),
        required=tuple(required),
    )


def _property(name: str, spec: Mapping[str, JSON]) -> Property:
    declared = spec.get("type")
    if isinstance(declared, list):  # ["string", "null"]: the canister holds one type name
        declared = next((t for t in declared if t != "null"), None)
    description = spec.get("description")
    enum = spec.get("enum") or []
    return Property(
        name=name,
        type=declared if isinstance(declared, str) else "string",
        description=description if isinstance(description, str) else None,
        enum=tuple(value if isinstance(value, str) else json.dumps(value) for value in enum)
        if isinstance(enum, list)
        else (),
    )


def argument_text(value: JSON) -> str:
    """One argument value as the canister carries it: text stays text, anything else is JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def argument_value(text: str, declared: str | None) -> JSON:
    """One argument value back as JSON: parsed when declared non-string, or when it reads as JSON.

    An argument declared `string` stays text even if it looks like a number (`"8001"`); one of an
    undeclared tool (a scripted call) is parsed when it is a JSON number, boolean, array or object.
    """
    if declared == "string":
        return text
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if declared is None:
        return value if isinstance(value, bool | int | float | list | dict) else text
    expected: dict[str, type | tuple[type, ...]] = {
        "number": (int, float),
        "integer": int,
        "boolean": bool,
        "array": list,
        "object": dict,
    }
    wanted = expected.get(declared)
    if wanted is None or not isinstance(value, wanted) or (isinstance(value, bool) and declared != "boolean"):
        return text
    return value


def _arguments(raw: JSON, where: str) -> tuple[ToolCallArgument, ...]:
    """Ollama sends arguments as an object; OpenAI as a JSON text of an object. Both are accepted."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else {}
        except ValueError as error:
            raise BadRequest(f"{where} is not valid JSON: {error}") from None
    arguments = _object({} if raw is None else raw, where)
    return tuple(ToolCallArgument(name, argument_text(value)) for name, value in arguments.items())


class CallIds:
    """Tool-call ids across a conversation: made up where a client leaves them out, matched by tools.

    The official Ollama clients drop `id` from tool calls they send back and name the answering tool
    (`tool_name`) instead, so both sides get stable ids here and the canister sees a linked pair.
    """

    def __init__(self) -> None:
        self.open: list[tuple[str, str]] = []  # (id, tool name) called and not yet answered

    def called(self, call_id: str, name: str) -> None:
        self.open.append((call_id, name))

    def answer(self, tool_call_id: str, tool_name: str) -> str:
        if tool_call_id:
            self.open = [entry for entry in self.open if entry[0] != tool_call_id]
            return tool_call_id
        for entry in self.open:
            if not tool_name or entry[1] == tool_name:
                self.open.remove(entry)
                return entry[0]
        return ""


def _tool_calls(raw: list[JSON], where: str, ids: CallIds, position: int) -> tuple[ToolCall, ...]:
    calls = []
    for index, item in enumerate(raw):
        at = f"{where}tool_calls[{index}]"
        call = _object(item, at)
        function = _object(call.get("function"), f"{at}.function")
        name = _string(function, "name", f"{at}.function.")
        if not name:
            raise BadRequest(f"{at}.function.name is required")
        call_id = _string(call, "id", f"{at}.") or f"call_{position}_{index}"
        ids.called(call_id, name)
        calls.append(
            ToolCall(
                call_id, FunctionCall(name, _arguments(function.get("arguments"), f"{at}.function.arguments"))
            )
        )
    return tuple(calls)


# -- Ollama requests ---------------------------------------------------------------------------------


def ollama_message(raw: JSON, index: int, ids: CallIds, ignored: list[str]) -> Message:
    where = f"messages[{index}]."
    message = _object(raw, f"messages[{index}]")
    _unknown(message, _MESSAGE_KEYS, where, ignored)
    _no_images(message, where)
    role = _string(message, "role", where).lower()
    content = _string(message, "content", where)
    if role == "user":
        return UserMessage(content)
    if role == "system":
        return SystemMessage(content)
    if role == "assistant":
        calls = _tool_calls(_list(message, "tool_calls", where), where, ids, index)
        return AssistantMessage(content=None if calls and not content else content, tool_calls=calls)
    if role == "tool":
        tool_call_id = _string(message, "tool_call_id", where)
        return ToolMessage(content, ids.answer(tool_call_id, _string(message, "tool_name", where)))
    shown = f"{role!r}" if role else "missing"
    raise BadRequest(f"{where}role is {shown}; valid roles: {', '.join(_ROLES)}")


def parse_chat(body: JSON) -> Parsed:
    """`POST /api/chat`."""
    body = _object(body, "the request body")
    ignored: list[str] = []
    _unknown(body, _CHAT_KEYS, "", ignored)
    model = _model(body)
    ids = CallIds()
    messages = tuple(ollama_message(m, i, ids, ignored) for i, m in enumerate(_list(body, "messages", "")))
    tools = tuple(_tool(t, i) for i, t in enumerate(_list(body, "tools", "")))
    shaping = _ollama_shaping(body, ignored)
    return Parsed(
        model=model,
        request=ChatRequest(model=model, messages=messages, tools=tools) if messages else None,
        stream=_bool(body, "stream", "", True),
        shaping=shaping,
        unload=_keep_alive_zero(body),
        ignored=tuple(ignored),
    )


def parse_generate(body: JSON) -> Parsed:
    """`POST /api/generate`: `system` and `prompt` become a system and a user message."""
    body = _object(body, "the request body")
    ignored: list[str] = []
    _unknown(body, _GENERATE_KEYS, "", ignored)
    model = _model(body)
    _no_images(body, "")
    prompt = _string(body, "prompt", "")
    system = _string(body, "system", "")
    messages: tuple[Message, ...] = ()
    if prompt:
        messages = (SystemMessage(system), UserMessage(prompt)) if system else (UserMessage(prompt),)
    shaping = _ollama_shaping(body, ignored)
    return Parsed(
        model=model,
        request=ChatRequest(model=model, messages=messages) if messages else None,
        stream=_bool(body, "stream", "", True),
        shaping=shaping,
        unload=_keep_alive_zero(body),
        ignored=tuple(ignored),
    )


def model_named(body: JSON) -> str:
    """`POST /api/show` and `/api/pull`: the model in `model` (or `name`, Ollama's older spelling)."""
    body = _object(body, "the request body")
    return _model({"model": body.get("model") or body.get("name")})


# -- OpenAI requests ---------------------------------------------------------------------------------


def _openai_content(value: JSON, where: str) -> str:
    """`content` is a text or an array of parts; only text parts can reach the canister."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise BadRequest(f"{where}content must be a string or an array of parts, got {kind(value)}")
    texts = []
    for index, part in enumerate(value):
        part = _object(part, f"{where}content[{index}]")
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise BadRequest(
                f"{where}content[{index}] is a {part.get('type')!r} part; "
                "the LLM canister takes text parts only"
            )
        texts.append(part["text"])
    return "".join(texts)


def openai_message(raw: JSON, index: int, ids: CallIds, ignored: list[str]) -> Message:
    where = f"messages[{index}]."
    message = _object(raw, f"messages[{index}]")
    _unknown(message, _OPENAI_MESSAGE_KEYS, where, ignored)
    role = _string(message, "role", where).lower()
    content = _openai_content(message.get("content"), where)
    if role == "user":
        return UserMessage(content)
    if role in ("system", "developer"):
        return SystemMessage(content)
    if role == "assistant":
        calls = _tool_calls(_list(message, "tool_calls", where), where, ids, index)
        return AssistantMessage(content=None if calls and not content else content, tool_calls=calls)
    if role == "tool":
        tool_call_id = _string(message, "tool_call_id", where)
        return ToolMessage(content, ids.answer(tool_call_id, _string(message, "name", where)))
    shown = f"{role!r}" if role else "missing"
    raise BadRequest(f"{where}role is {shown}; valid roles: system, developer, user, assistant, tool")


def _openai_stop(value: JSON) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(item for item in value if item)
    raise BadRequest(f"stop must be a string or an array of strings, got {kind(value)}")


def _openai_format(value: JSON) -> Format:
    if value is None:
        return None
    spec = _object(value, "response_format")
    format_type = spec.get("type")
    if format_type == "text":
        return None
    if format_type == "json_object":
        return "json"
    if format_type == "json_schema":
        schema = _object(spec.get("json_schema"), "response_format.json_schema")
        return _object(schema.get("schema") or {}, "response_format.json_schema.schema")
    raise BadRequest(f"response_format.type is {format_type!r}; valid types: text, json_object, json_schema")


def _tool_choice(choice: JSON, tools: tuple[Tool, ...]) -> tuple[Tool, ...]:
    """OpenAI's `tool_choice`: "auto" (the default) offers the tools, "none" offers none (so no tool is
    called); the LLM canister cannot be made to call a tool, so "required" and a named function are
    refused with what would work instead."""
    if choice is None or choice == "auto":
        return tools
    if choice == "none":
        return ()
    shown = choice if isinstance(choice, str) else json.dumps(choice)[:80]
    raise BadRequest(
        f"tool_choice {shown} is not supported: the LLM canister decides itself whether to call a tool, so "
        'the emulator takes tool_choice "auto" (or leave it out) and "none" (no tools offered); to '
        "test a tool call, script one (Control.AddRules, icllm.on(...).call_tool(...))"
    )


def parse_openai_chat(body: JSON) -> Parsed:
    """`POST /v1/chat/completions`."""
    body = _object(body, "the request body")
    ignored: list[str] = []
    _unknown(body, _OPENAI_CHAT_KEYS, "", ignored)
    model = _model(body)
    ids = CallIds()
    messages = tuple(openai_message(m, i, ids, ignored) for i, m in enumerate(_list(body, "messages", "")))
    if not messages:
        raise BadRequest("messages must hold at least one message")
    tools = tuple(_tool(t, i) for i, t in enumerate(_list(body, "tools", "")))
    tools = _tool_choice(body.get("tool_choice"), tools)
    choices = body.get("n")
    if choices is not None and (isinstance(choices, bool) or not isinstance(choices, int) or choices < 1):
        raise BadRequest(f"n must be a whole number of choices, 1 or more, got {choices!r}")
    if choices is not None and choices > 1:
        raise BadRequest(
            f"n is {choices}, but the emulator produces one choice per request (the LLM canister answers "
            "once); send n=1 or leave it out, and ask again for another answer"
        )
    # Accepted, and without effect on the canister's answer: the client hears of them in the header.
    ignored.extend(key for key in sorted(_OPENAI_IGNORED) if body.get(key) is not None)
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)):
        raise BadRequest(f"max_tokens must be an integer, got {kind(max_tokens)}")
    for key in ("seed", "temperature", "top_p", "frequency_penalty", "presence_penalty"):
        value = body.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise BadRequest(f"{key} must be a number, got {kind(value)}")
    stream_options = body.get("stream_options")
    include_usage = False
    if stream_options is not None:
        include_usage = _bool(
            _object(stream_options, "stream_options"), "include_usage", "stream_options.", False
        )
    return Parsed(
        model=model,
        request=ChatRequest(model=model, messages=messages, tools=tools),
        stream=_bool(body, "stream", "", False),
        shaping=Shaping(
            max_tokens=max_tokens if max_tokens is not None and max_tokens > 0 else None,
            stop=_openai_stop(body.get("stop")),
            format=_openai_format(body.get("response_format")),
        ),
        include_usage=include_usage,
        ignored=tuple(ignored),
    )


# -- answers -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer as the HTTP door sends it: text after `stop` and `format`, JSON tool calls."""

    content: str
    tool_calls: tuple[dict[str, JSON], ...]
    done_reason: Literal["stop", "length"]
    eval_count: int


def _cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    cuts = [index for index in (text.find(s) for s in stop) if index >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def _formatted(text: str, wanted: Format) -> str:
    """Ollama promises a JSON object when `format` is set: an answer that is not one is wrapped."""
    if wanted is None:
        return text
    try:
        if isinstance(json.loads(text), dict):
            return text
    except ValueError:
        pass
    if wanted == "json":
        return json.dumps({"response": text}, ensure_ascii=False)
    return json.dumps(schema_instance(wanted, text), ensure_ascii=False)


def schema_instance(schema: Mapping[str, JSON], text: str) -> dict[str, JSON]:
    """An object with every property of `schema`, of its declared type, filled from `text`."""
    words = re.findall(r"\w+", text) or ["answer"]
    properties = schema.get("properties")
    result: dict[str, JSON] = {}
    for index, (name, spec) in enumerate(properties.items() if isinstance(properties, dict) else ()):
        spec = spec if isinstance(spec, dict) else {}
        declared = spec.get("type")
        if isinstance(declared, list):
            declared = next((t for t in declared if t != "null"), "string")
        word = words[index % len(words)]
        if isinstance(spec.get("enum"), list) and spec["enum"]:
            result[name] = spec["enum"][index % len(spec["enum"])]
        elif declared in ("integer", "number"):
            result[name] = len(word)
        elif declared == "boolean":
            result[name] = len(word) % 2 == 0
        elif declared == "array":
            result[name] = words[:3]
        elif declared == "object":
            result[name] = schema_instance(spec, text)
        else:
            result[name] = " ".join(words[index : index + 8]) or word
    return result


def declared_types(tools: Iterable[Tool]) -> dict[str, dict[str, str]]:
    """The parameter types each tool declares (lower case), by tool name and parameter name."""
    return {
        tool.name: {p.name: p.type.strip().lower() for p in tool.parameters.properties}
        for tool in tools
        if tool.parameters is not None
    }


def reply(answer: Answer, request: ChatRequest, shaping: Shaping) -> Reply:
    """The canister's answer shaped for an HTTP client: stop sequences, format, JSON arguments."""
    message = answer.message
    content, stopped = _cut_at_stop(message.content or "", shaping.stop)
    content = _formatted(content, shaping.format) if content or not message.tool_calls else content
    declared = declared_types(request.tools)
    calls = tuple(
        {
            "id": call.id,
            "function": {
                "index": index,
                "name": call.function.name,
                "arguments": {
                    argument.name: argument_value(
                        argument.value, declared.get(call.function.name, {}).get(argument.name)
                    )
                    for argument in call.function.arguments
                },
            },
        }
        for index, call in enumerate(message.tool_calls)
    )
    return Reply(
        content=content,
        tool_calls=calls,
        done_reason="length" if answer.truncated and not stopped else "stop",
        eval_count=answer.output_tokens,
    )


_PIECE = re.compile(r"\s*\S+\s*|\s+")


def pieces(text: str) -> list[str]:
    """The text in word-sized pieces that join back to exactly the text (how a stream is cut)."""
    return _PIECE.findall(text)


def openai_tool_calls(calls: Iterable[Mapping[str, JSON]]) -> list[dict[str, JSON]]:
    """Ollama's tool calls in OpenAI's shape: arguments as a JSON text."""
    return [
        {
            "id": call["id"],
            "index": call["function"]["index"],
            "type": "function",
            "function": {
                "name": call["function"]["name"],
                "arguments": json.dumps(call["function"]["arguments"], ensure_ascii=False),
            },
        }
        for call in calls
    ]
