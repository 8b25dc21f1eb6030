"""Chat prompts for GGUF models, and tool calls read back out of what a model wrote.

A canister request becomes one prompt string through the model's own chat template (a Jinja2 template
in the GGUF metadata, rendered the way Hugging Face's `apply_chat_template` and llama-cpp-python render
it), or through the Llama 3.1 format for Llama models that carry none. The model's text becomes an
assistant message: tool calls when it wrote a valid call to an offered tool, text otherwise.

Everything here is a pure function of its inputs (the date a template may print is fixed), so the same
request always gives the same prompt; nothing here needs llama.cpp.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
import jinja2.ext
import jinja2.meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from icllm_emulator.domain import (
    AssistantMessage,
    ChatRequest,
    FunctionCall,
    Message,
    SystemMessage,
    Tool,
    ToolCall,
    ToolCallArgument,
    ToolMessage,
)
from icllm_emulator.errors import IcllmError

__all__ = [
    "LLAMA_31_TEMPLATE",
    "TEMPLATE_DATE",
    "ChatTemplate",
    "TemplateError",
    "parse_tool_calls",
    "tool_schema",
]

# Templates that print today's date (Llama 3.x) get this one, so a prompt never depends on the day.
TEMPLATE_DATE = datetime.date(2024, 7, 26)

# The Llama 3.1 prompt format as Meta documents it, with JSON tool calling: tools are listed in the
# first user message, a call is `{"name": ..., "parameters": {...}}`, results come back as `ipython`.
LLAMA_31_TEMPLATE = r"""{{- bos_token }}
{%- if messages and messages[0].role == 'system' %}
    {%- set system_message = messages[0].content | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = '' %}
{%- endif %}
{{- '<|start_header_id|>system<|end_header_id|>\n\n' }}
{%- if tools %}
    {{- 'Environment: ipython\n' }}
{%- endif %}
{{- 'Cutting Knowledge Date: December 2023\nToday Date: ' + strftime_now('%d %b %Y') + '\n\n' }}
{{- system_message + '<|eot_id|>' }}
{%- set state = namespace(tools_shown=false) %}
{%- for message in messages %}
    {%- if message.role == 'user' and tools and not state.tools_shown %}
        {%- set state.tools_shown = true %}
        {{- '<|start_header_id|>user<|end_header_id|>\n\n' }}
        {{- 'Given the following functions, please respond with a JSON for a function call ' }}
        {{- 'with its proper arguments that best answers the given prompt.\n\n' }}
        {{- 'Respond in the format {"name": function name, "parameters": ' }}
        {{- 'dictionary of argument name and its value}.' }}
        {{- 'Do not use variables.\n\n' }}
        {%- for tool in tools %}
            {{- tool | tojson(indent=4) + '\n\n' }}
        {%- endfor %}
        {{- message.content | trim + '<|eot_id|>' }}
    {%- elif message.role == 'assistant' and message.tool_calls %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
        {%- for call in message.tool_calls %}
            {%- if not loop.first %}
                {{- '\n' }}
            {%- endif %}
            {{- '{"name": "' + call.function.name + '", "parameters": ' }}
            {{- call.function.arguments | tojson + '}' }}
        {%- endfor %}
        {{- '<|eot_id|>' }}
    {%- elif message.role == 'tool' %}
        {{- '<|start_header_id|>ipython<|end_header_id|>\n\n' + message.content + '<|eot_id|>' }}
    {%- else %}
        {{- '<|start_header_id|>' + message.role + '<|end_header_id|>\n\n' }}
        {{- message.content | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}"""

# For templates that know nothing of tools: the tools go into the system message, in the widely
# trained `<tool_call>` convention, and the conversation's calls and results are written the same way.
_TOOLS_PREAMBLE = (
    "You can call functions to answer. The available functions, as JSON Schema:\n<tools>\n{tools}\n</tools>\n"
    "To call a function, answer with only a JSON object inside tags, like this:\n"
    '<tool_call>{{"name": "function name", "arguments": {{"argument name": "value"}}}}</tool_call>'
)

_TOOL_CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
_PYTHON_TAG = "<|python_tag|>"
_CALL_SEPARATORS = " \t\r\n;,"


class TemplateError(IcllmError, ValueError):
    """A chat template that cannot render this conversation (it raised, or is not valid Jinja2)."""


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    """Hugging Face's `tojson`: non-ASCII kept as is, keys in their order."""
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise_exception(message: str) -> str:
    raise TemplateError(f"the chat template refused the conversation: {message}")


def _strftime_now(pattern: str) -> str:
    return TEMPLATE_DATE.strftime(pattern)


def _environment() -> ImmutableSandboxedEnvironment:
    """The environment chat templates are written for (Transformers' and llama-cpp-python's settings)."""
    environment = ImmutableSandboxedEnvironment(
        loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    return environment


def tool_schema(tool: Tool) -> dict[str, Any]:
    """A canister tool as the OpenAI/Hugging Face function schema that chat templates expect."""
    properties: dict[str, Any] = {}
    parameters = tool.parameters
    for prop in parameters.properties if parameters is not None else ():
        schema: dict[str, Any] = {"type": prop.type}
        if prop.description is not None:
            schema["description"] = prop.description
        if prop.enum:
            schema["enum"] = list(prop.enum)
        properties[prop.name] = schema
    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    function["parameters"] = {
        "type": parameters.type if parameters is not None else "object",
        "properties": properties,
        "required": list(parameters.required) if parameters is not None else [],
    }
    return {"type": "function", "function": function}


def _declared_types(tools: Sequence[Tool]) -> dict[tuple[str, str], str]:
    return {
        (tool.name, prop.name): prop.type.strip().lower()
        for tool in tools
        for prop in (tool.parameters.properties if tool.parameters is not None else ())
    }


def _argument_json(value: str, declared: str | None) -> Any:
    """An argument's text as the JSON value a model wrote: strings stay text, `12.5` becomes a number."""
    if declared == "string":
        return value
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    return value if isinstance(parsed, str) else parsed


def _call_json(call: ToolCall, declared: Mapping[tuple[str, str], str]) -> dict[str, Any]:
    arguments = {
        arg.name: _argument_json(arg.value, declared.get((call.function.name, arg.name)))
        for arg in call.function.arguments
    }
    return {
        "id": call.id,
        "type": "function",
        "function": {"name": call.function.name, "arguments": arguments},
    }


class ChatTemplate:
    """A model's chat template, compiled once; `render` turns a request into the prompt text."""

    def __init__(self, source: str, origin: str, *, bos_token: str = "", eos_token: str = "") -> None:
        self.source = source
        # Where it came from, for the log and for errors: "GGUF metadata" or "Llama 3.1 fallback".
        self.origin = origin
        self.bos_token = bos_token
        self.eos_token = eos_token
        environment = _environment()
        try:
            self.compiled = environment.from_string(source)
            variables = jinja2.meta.find_undeclared_variables(environment.parse(source))
        except jinja2.TemplateError as error:
            raise TemplateError(f"the chat template ({origin}) is not valid Jinja2: {error}") from None
        # Whether the template itself lays out tools, tool calls and tool results.
        self.native_tools = "tools" in variables

    def messages(self, request: ChatRequest) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
        """The request as Hugging Face chat messages and tools, in the shape this template reads."""
        declared = _declared_types(request.tools)
        tools = [tool_schema(tool) for tool in request.tools] or None
        if self.native_tools:
            return [self._native(message, request, declared) for message in request.messages], tools
        return self._with_tools_in_text(request, declared, tools), None

    def _native(
        self, message: Message, request: ChatRequest, declared: Mapping[tuple[str, str], str]
    ) -> dict[str, Any]:
        if isinstance(message, AssistantMessage):
            rendered: dict[str, Any] = {"role": "assistant", "content": message.content or ""}
            if message.tool_calls:
                # Templates test `'tool_calls' in message`: the key is present only when there are calls.
                rendered["tool_calls"] = [_call_json(call, declared) for call in message.tool_calls]
            return rendered
        if isinstance(message, ToolMessage):
            rendered = {"role": "tool", "content": message.content, "tool_call_id": message.tool_call_id}
            name = _called_tool(request, message.tool_call_id)
            if name is not None:
                rendered["name"] = name
            return rendered
        return {"role": str(message.role), "content": message.content}

    def _with_tools_in_text(
        self,
        request: ChatRequest,
        declared: Mapping[tuple[str, str], str],
        tools: list[dict[str, Any]] | None,
    ) -> list[dict[str, Any]]:
        """For a template without tool support: tools in the system message, calls and results as text."""
        rendered: list[dict[str, Any]] = []
        for message in request.messages:
            if isinstance(message, AssistantMessage):
                parts = [message.content] if message.content else []
                parts += [
                    "<tool_call>" + _tojson(_call_json(call, declared)["function"]) + "</tool_call>"
                    for call in message.tool_calls
                ]
                rendered.append({"role": "assistant", "content": "\n".join(parts)})
            elif isinstance(message, ToolMessage):
                # As a user turn, so that templates which insist on alternating roles accept it.
                content = f"<tool_response>\n{message.content}\n</tool_response>"
                rendered.append({"role": "user", "content": content})
            else:
                rendered.append({"role": str(message.role), "content": message.content})
        if tools:
            preamble = _TOOLS_PREAMBLE.format(tools="\n".join(_tojson(tool) for tool in tools))
            if rendered and isinstance(request.messages[0], SystemMessage):
                rendered[0] = {"role": "system", "content": rendered[0]["content"] + "\n\n" + preamble}
            else:
                rendered.insert(0, {"role": "system", "content": preamble})
        return rendered

    def render(self, request: ChatRequest) -> str:
        """The prompt text, ending where the assistant's answer begins."""
        messages, tools = self.messages(request)
        try:
            return self.compiled.render(
                messages=messages,
                tools=tools,
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except TemplateError:
            raise
        except Exception as error:  # a template is code from the model file: any failure is its own
            failure = f"{type(error).__name__}: {error}"
            raise TemplateError(
                f"the chat template ({self.origin}) failed on this conversation: {failure}"
            ) from None


def _called_tool(request: ChatRequest, call_id: str) -> str | None:
    for message in request.messages:
        if isinstance(message, AssistantMessage):
            for call in message.tool_calls:
                if call.id == call_id:
                    return call.function.name
    return None


def _argument_text(value: Any) -> str:
    """Arguments travel as text, as on the canister's wire: strings as they are, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _call_of(document: Any, names: set[str]) -> tuple[str, tuple[ToolCallArgument, ...]] | None:
    """A (name, arguments) pair from one decoded call object, or None if it is not a valid call."""
    if not isinstance(document, dict):
        return None
    if isinstance(document.get("function"), dict):  # the OpenAI shape {"type": "function", "function": {...}}
        document = document["function"]
    name = document.get("name")
    if not isinstance(name, str) or name not in names:
        return None
    arguments = document.get("arguments", document.get("parameters", {}))
    if isinstance(arguments, str):  # OpenAI sends the arguments as a JSON string
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except ValueError:
            return None
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return None
    return name, tuple(ToolCallArgument(str(key), _argument_text(value)) for key, value in arguments.items())


def _json_calls(text: str) -> list[Any] | None:
    """Every JSON value in `text`, which may be separated by whitespace, `;` or `,`; None if other text."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    index = 0
    while True:
        while index < len(text) and text[index] in _CALL_SEPARATORS:
            index += 1
        if index == len(text):
            return values
        try:
            value, index = decoder.raw_decode(text, index)
        except ValueError:
            return None
        values.extend(value if isinstance(value, list) else [value])


def _call_id(id_seed: str, index: int, name: str, arguments: tuple[ToolCallArgument, ...]) -> str:
    payload = json.dumps([id_seed, index, name, [[arg.name, arg.value] for arg in arguments]])
    return "call_" + hashlib.sha256(payload.encode("utf-8")).hexdigest()[:12]


def parse_tool_calls(text: str, tools: Sequence[Tool], id_seed: str = "") -> AssistantMessage:
    """The assistant message a model's output stands for.

    With tools offered, output made of calls to them becomes tool calls: `<tool_call>{...}</tool_call>`
    blocks (any text around them is the message's content), or JSON call objects, alone or in a list,
    optionally after `<|python_tag|>` or in a ```json fence. A call names an offered tool and has its
    arguments as an object under `arguments` or `parameters`. Anything else - unknown tool, broken JSON,
    a call cut off at the token cap - is returned as text, unchanged. Ids are a hash of `id_seed`, the
    call's position, name and arguments: the same output for the same request gives the same ids.
    """
    names = {tool.name for tool in tools}
    if not names:
        return AssistantMessage(content=text)
    stripped = text.strip()
    documents: list[Any] | None
    blocks = list(_TOOL_CALL_BLOCK.finditer(stripped))
    if blocks:
        content = _TOOL_CALL_BLOCK.sub("", stripped).strip() or None
        documents = []
        for block in blocks:
            decoded = _json_calls(block.group(1))
            if decoded is None:
                return AssistantMessage(content=text)
            documents.extend(decoded)
    else:
        content = None
        body = stripped.removeprefix(_PYTHON_TAG).strip()
        fenced = _FENCE.match(body)
        documents = _json_calls(fenced.group(1) if fenced else body)
    if not documents:
        return AssistantMessage(content=text)
    calls: list[ToolCall] = []
    for index, document in enumerate(documents):
        call = _call_of(document, names)
        if call is None:
            return AssistantMessage(content=text)
        name, arguments = call
        calls.append(ToolCall(_call_id(id_seed, index, name, arguments), FunctionCall(name, arguments)))
    return AssistantMessage(content=content, tool_calls=tuple(calls))
