"""Chat prompts for real models and tool calls read back from their output: pure functions, no model."""

from __future__ import annotations

import json

import pytest

from icllm_emulator.backends.llama_chat import (
    LLAMA_31_TEMPLATE,
    ChatTemplate,
    TemplateError,
    parse_tool_calls,
    tool_schema,
)
from icllm_emulator.domain import (
    AssistantMessage,
    ChatRequest,
    FunctionCall,
    Parameters,
    Property,
    SystemMessage,
    Tool,
    ToolCall,
    ToolCallArgument,
    ToolMessage,
    UserMessage,
)

WEATHER = Tool(
    "get_weather",
    "Current weather for a city",
    Parameters(
        properties=(
            Property("city", "string", "The city"),
            Property("days", "number"),
            Property("unit", "string", enum=("celsius", "fahrenheit")),
        ),
        required=("city",),
    ),
)
CALL = ToolCall(
    "call_1", FunctionCall("get_weather", (ToolCallArgument("city", "Zurich"), ToolCallArgument("days", "3")))
)
AGENT_LOOP = ChatRequest(
    "llama3.1:8b",
    (
        SystemMessage("Be brief."),
        UserMessage("Weather in Zurich?"),
        AssistantMessage(None, (CALL,)),
        ToolMessage('{"temp": 21}', "call_1"),
    ),
    tools=(WEATHER,),
)
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# A template that shows exactly what it was given.
SHOW = "{{ messages | tojson }}\n{{ tools | tojson }}"


def llama31() -> ChatTemplate:
    return ChatTemplate(LLAMA_31_TEMPLATE, "Llama 3.1 fallback", bos_token="<|begin_of_text|>")


# -- templates ---------------------------------------------------------------------------------------


def test_llama_31_format_renders_system_user_assistant_tool_call_and_tool_result() -> None:
    tool_json = json.dumps(tool_schema(WEATHER), indent=4)
    assert llama31().render(AGENT_LOOP) == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Environment: ipython\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
        "Be brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n"
        "Given the following functions, please respond with a JSON for a function call with its proper "
        "arguments that best answers the given prompt.\n\n"
        'Respond in the format {"name": function name, "parameters": dictionary of argument name and its '
        "value}.Do not use variables.\n\n"
        f"{tool_json}\n\nWeather in Zurich?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
        '{"name": "get_weather", "parameters": {"city": "Zurich", "days": 3}}<|eot_id|>'
        "<|start_header_id|>ipython<|end_header_id|>\n\n"
        '{"temp": 21}<|eot_id|>'
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_llama_31_format_without_tools_has_no_tool_preamble() -> None:
    prompt = llama31().render(ChatRequest("llama3.1:8b", (UserMessage("Hi"),)))
    assert prompt == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_a_gguf_template_with_tool_support_gets_hugging_face_shaped_messages_and_tools() -> None:
    template = ChatTemplate(SHOW, "GGUF metadata")
    assert template.native_tools
    messages_line, tools_line = template.render(AGENT_LOOP).split("\n")
    assert json.loads(messages_line) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Zurich?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    # A declared string stays text; a declared number becomes a JSON number again.
                    "function": {"name": "get_weather", "arguments": {"city": "Zurich", "days": 3}},
                }
            ],
        },
        {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "call_1", "name": "get_weather"},
    ]
    assert json.loads(tools_line) == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string", "description": "The city"},
                        "days": {"type": "number"},
                        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    },
                    "required": ["city"],
                },
            },
        }
    ]


def test_an_assistant_message_without_tool_calls_has_no_tool_calls_key() -> None:
    request = ChatRequest("m", (UserMessage("Hi"), AssistantMessage("Hello!"), UserMessage("Bye")))
    messages, tools = ChatTemplate(SHOW, "GGUF metadata").messages(request)
    assert messages[1] == {"role": "assistant", "content": "Hello!"}
    assert tools is None


def test_a_template_without_tool_support_gets_tools_in_the_system_message_and_calls_as_text() -> None:
    template = ChatTemplate(CHATML, "GGUF metadata")
    assert not template.native_tools
    prompt = template.render(AGENT_LOOP)
    system, user, assistant, tool_result, generation = prompt.split("<|im_start|>")[1:]
    assert system.startswith("system\nBe brief.\n\nYou can call functions")
    assert json.dumps(tool_schema(WEATHER)) in system
    assert user == "user\nWeather in Zurich?<|im_end|>\n"
    assert assistant == (
        'assistant\n<tool_call>{"name": "get_weather", "arguments": {"city": "Zurich", "days": 3}}'
        "</tool_call><|im_end|>\n"
    )
    # As a user turn, so templates that insist on alternating roles accept the conversation.
    assert tool_result == 'user\n<tool_response>\n{"temp": 21}\n</tool_response><|im_end|>\n'
    assert generation == "assistant\n"


def test_tools_without_a_system_message_get_one() -> None:
    request = ChatRequest("m", (UserMessage("Weather?"),), tools=(WEATHER,))
    messages, tools = ChatTemplate(CHATML, "GGUF metadata").messages(request)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "<tools>" in messages[0]["content"] and tools is None


def test_a_template_asking_for_the_date_gets_a_fixed_one() -> None:
    template = ChatTemplate("{{ strftime_now('%Y-%m-%d') }}", "GGUF metadata")
    assert template.render(ChatRequest("m", (UserMessage("Hi"),))) == "2024-07-26"


def test_a_template_that_raises_gives_a_template_error_with_its_message() -> None:
    template = ChatTemplate("{{ raise_exception('roles must alternate') }}", "GGUF metadata")
    with pytest.raises(TemplateError, match="refused the conversation: roles must alternate"):
        template.render(ChatRequest("m", (UserMessage("Hi"),)))


def test_a_template_that_fails_gives_a_template_error_naming_its_origin() -> None:
    template = ChatTemplate("{{ messages[0]['content'] + none }}", "GGUF metadata")
    with pytest.raises(TemplateError, match=r"\(GGUF metadata\) failed on this conversation: TypeError"):
        template.render(ChatRequest("m", (UserMessage("Hi"),)))


def test_a_template_that_is_not_jinja_is_refused_when_compiled() -> None:
    with pytest.raises(TemplateError, match="not valid Jinja2"):
        ChatTemplate("{% for %}", "GGUF metadata")


# -- tool calls in the output ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "output",
    [
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}</tool_call>',
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n',
        '{"name": "get_weather", "parameters": {"city": "Paris", "days": 2}}',
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "days": 2}}',
        '[{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}]',
        '```json\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n```',
        '{"type": "function", "function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\", '
        '\\"days\\": 2}"}}',
    ],
    ids=["hermes", "hermes-unclosed", "llama-json", "python-tag", "list", "fenced", "openai"],
)
def test_a_tool_call_in_any_common_format_becomes_a_canister_tool_call(output: str) -> None:
    message = parse_tool_calls(output, [WEATHER], "seed")
    assert message.content is None
    [call] = message.tool_calls
    assert call.function == FunctionCall(
        "get_weather", (ToolCallArgument("city", "Paris"), ToolCallArgument("days", "2"))
    )
    assert call.id.startswith("call_") and len(call.id) == len("call_") + 12


def test_argument_values_travel_as_text() -> None:
    arguments = '{"a": 1.5, "b": true, "c": null, "d": [1], "e": {"f": "é"}}'
    output = '{"name": "get_weather", "parameters": ' + arguments + "}"
    [call] = parse_tool_calls(output, [WEATHER]).tool_calls
    assert [(a.name, a.value) for a in call.function.arguments] == [
        ("a", "1.5"),
        ("b", "true"),
        ("c", "null"),
        ("d", "[1]"),
        ("e", '{"f": "é"}'),
    ]


def test_text_around_tool_call_blocks_is_the_content_and_several_calls_are_kept_in_order() -> None:
    output = (
        'Let me check.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Bern"}}</tool_call>\n'
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Basel"}}</tool_call>'
    )
    message = parse_tool_calls(output, [WEATHER], "seed")
    assert message.content == "Let me check."
    assert [c.function.arguments[0].value for c in message.tool_calls] == ["Bern", "Basel"]
    assert message.tool_calls[0].id != message.tool_calls[1].id


def test_llama_style_calls_separated_by_semicolons_are_all_kept() -> None:
    call = '{"name": "get_weather", "parameters": {"city": "Bern"}}'
    output = f"{call}; {call}"
    assert len(parse_tool_calls(output, [WEATHER]).tool_calls) == 2


def test_call_ids_are_stable_and_depend_on_the_request_seed() -> None:
    output = '{"name": "get_weather", "parameters": {"city": "Bern"}}'
    first = parse_tool_calls(output, [WEATHER], "request-a").tool_calls[0].id
    assert parse_tool_calls(output, [WEATHER], "request-a").tool_calls[0].id == first
    assert parse_tool_calls(output, [WEATHER], "request-b").tool_calls[0].id != first


@pytest.mark.parametrize(
    "output",
    [
        "The weather in Zurich is sunny.",
        '{"name": "get_time", "parameters": {}}',
        '{"name": "get_weather", "parameters": {"city": "Bern"',
        '<tool_call>{"name": "get_weather", "arguments": {"city": "Be',
        '{"name": "get_weather", "parameters": ["Bern"]}',
        '{"name": "get_weather", "arguments": "not json"}',
        '{"city": "Bern"}',
        '{"name": "get_weather", "parameters": {}} and then some text',
        "[]",
        "",
    ],
    ids=[
        "prose",
        "unknown-tool",
        "broken-json",
        "cut-at-the-cap",
        "arguments-not-an-object",
        "arguments-string-not-json",
        "no-name",
        "trailing-text",
        "empty-list",
        "empty",
    ],
)
def test_output_that_is_not_a_valid_tool_call_comes_back_as_text_unchanged(output: str) -> None:
    assert parse_tool_calls(output, [WEATHER], "seed") == AssistantMessage(content=output)


def test_without_tools_offered_a_call_shaped_output_is_text() -> None:
    output = '{"name": "get_weather", "parameters": {"city": "Bern"}}'
    assert parse_tool_calls(output, [], "seed") == AssistantMessage(content=output)
