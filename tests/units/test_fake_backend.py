"""The fake backend: reproducible, within its cap, and tool calls that satisfy the schema."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from icllm_emulator.backends import Backend
from icllm_emulator.backends.fake import FakeBackend, fake_answer
from icllm_emulator.domain import (
    Answer,
    AssistantMessage,
    ChatRequest,
    FunctionCall,
    Parameters,
    Property,
    SystemMessage,
    Tool,
    ToolCall,
    ToolMessage,
    ToolPolicy,
    UserMessage,
)
from icllm_emulator.tokens import count_tokens

ROOT = Path(__file__).resolve().parents[2]
MODEL = "llama3.1:8b"

WEATHER = Tool(
    name="get_weather",
    description="Current weather for a city.",
    parameters=Parameters(
        properties=(
            Property("city", "string", "The city"),
            Property("unit", "string", "Temperature unit", enum=("celsius", "fahrenheit")),
            Property("days", "integer"),
            Property("lat", "number"),
            Property("detailed", "boolean"),
            Property("fields", "array"),
            Property("filters", "object"),
            Property("mood", "vibe"),
            Property("owner_name", "string"),
        ),
        required=("city", "unit", "lat", "station"),
    ),
)
CLOCK = Tool(name="get_time", description="The current time.", parameters=None)


def _ask(text: str, *, tools: tuple[Tool, ...] = (), model: str = MODEL) -> ChatRequest:
    return ChatRequest(model=model, messages=(SystemMessage("Be brief."), UserMessage(text)), tools=tools)


def _text(request: ChatRequest, seed: int = 0, cap: int | None = None) -> Answer:
    return fake_answer(request, seed=seed, max_output_tokens=cap, tool_policy=ToolPolicy.AUTO)


def _after_tool(result: str) -> ChatRequest:
    call = ToolCall("call_abc", FunctionCall("get_weather", ()))
    return ChatRequest(
        model=MODEL,
        messages=(
            UserMessage("Weather in Oslo?"),
            AssistantMessage(content=None, tool_calls=(call,)),
            ToolMessage(result, "call_abc"),
        ),
        tools=(WEATHER,),
    )


def _sample_requests() -> list[ChatRequest]:
    """Requests exercised both here and in a fresh interpreter."""
    return [
        _ask("What is the capital of France?"),
        _ask("Weather in Oslo tomorrow?", tools=(WEATHER, CLOCK)),
        _after_tool('{"temperature": 4.5, "conditions": "snow"}'),
    ]


PROMPTS = [f"Question number {i}: what about topic {i * 7}?" for i in range(50)]


def test_same_request_gives_the_same_answer() -> None:
    for request in _sample_requests():
        assert _text(request, seed=3) == _text(request, seed=3)


def test_same_request_gives_the_same_answer_in_a_fresh_process() -> None:
    code = (
        "from icllm_emulator.domain import ToolPolicy\n"
        "from icllm_emulator.backends.fake import fake_answer\n"
        "from tests.units.test_fake_backend import _sample_requests\n"
        "for r in _sample_requests():\n"
        "    print(repr(fake_answer(r, seed=3, max_output_tokens=None, tool_policy=ToolPolicy.AUTO)))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # a hash seed unlike this process's
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    expected = [repr(_text(request, seed=3)) for request in _sample_requests()]
    assert result.stdout.splitlines() == expected


def test_different_seed_gives_a_different_answer() -> None:
    request = _ask("Tell me about the sea.")
    assert _text(request, seed=0) != _text(request, seed=1)


def test_different_message_gives_a_different_answer() -> None:
    assert _text(_ask("Tell me about the sea.")) != _text(_ask("Tell me about the sky."))


def test_different_model_gives_a_different_answer() -> None:
    request = _ask("Tell me about the sea.")
    assert _text(request) != _text(_ask("Tell me about the sea.", model="qwen3:32b"))


@pytest.mark.parametrize("cap", [1, 5, 50])
def test_answer_stays_within_the_cap_and_flags_truncation(cap: int) -> None:
    for prompt in PROMPTS:
        request = _ask(prompt)
        full = _text(request)
        capped = _text(request, cap=cap)
        assert capped.message.content is not None and full.message.content is not None
        assert capped.output_tokens == count_tokens(capped.message.content) <= cap
        assert capped.message.content == full.message.content[: len(capped.message.content)]
        assert capped.truncated == (full.output_tokens > cap)


def test_no_cap_never_truncates() -> None:
    for prompt in PROMPTS:
        answer = _text(_ask(prompt))
        assert not answer.truncated
        assert answer.message.content
        assert answer.output_tokens == count_tokens(answer.message.content)


def test_text_length_varies_from_a_sentence_to_paragraphs() -> None:
    lengths = [_text(_ask(prompt)).output_tokens for prompt in PROMPTS]
    assert min(lengths) >= 3
    assert max(lengths) <= 420
    assert min(lengths) < 40 < 150 < max(lengths)


def test_cap_zero_gives_empty_text_flagged_truncated() -> None:
    for request in _sample_requests():
        answer = _text(request, cap=0)
        assert answer == Answer(AssistantMessage(content=""), output_tokens=0, truncated=True)


def test_tool_call_satisfies_the_schema() -> None:
    declared = [p.name for p in WEATHER.parameters.properties] if WEATHER.parameters else []
    optional_seen: set[str] = set()
    optional_missed: set[str] = set()
    for prompt in PROMPTS:
        answer = _text(_ask(prompt, tools=(WEATHER,)))
        assert answer.message.content is None
        assert not answer.truncated
        (call,) = answer.message.tool_calls
        assert call.function.name == "get_weather"
        args = {a.name: a.value for a in call.function.arguments}
        names = [a.name for a in call.function.arguments]
        assert len(names) == len(args)
        assert all(isinstance(value, str) for value in args.values())
        assert {"city", "unit", "lat", "station"} <= set(args)
        assert names[-1] == "station"  # required but undeclared: after the declared ones
        assert names[:-1] == [n for n in declared if n in args]  # declaration order
        assert args["unit"] in ("celsius", "fahrenheit")
        float(args["lat"])
        if "days" in args:
            int(args["days"])
        if "detailed" in args:
            assert args["detailed"] in ("true", "false")
        if "fields" in args:
            assert re.fullmatch(r'\[("[^"]*"(, )?)*\]', args["fields"])
        if "filters" in args:
            assert args["filters"] == "{}"
        assert all(args[name] for name in ("city", "station"))
        expected_tokens = count_tokens("get_weather") + sum(
            count_tokens(n) + count_tokens(v) for n, v in args.items()
        )
        assert answer.output_tokens == expected_tokens
        for name in ("days", "detailed", "fields", "filters", "mood", "owner_name"):
            (optional_seen if name in args else optional_missed).add(name)
    assert optional_seen == optional_missed == {"days", "detailed", "fields", "filters", "mood", "owner_name"}


def test_tool_call_ignores_the_cap() -> None:
    request = _ask("Weather in Oslo?", tools=(WEATHER,))
    assert _text(request, cap=1) == _text(request)
    assert _text(request, cap=1).output_tokens > 1


def test_tool_is_chosen_among_those_offered() -> None:
    chosen = {
        _text(_ask(prompt, tools=(WEATHER, CLOCK))).message.tool_calls[0].function.name for prompt in PROMPTS
    }
    assert chosen == {"get_weather", "get_time"}


def test_policy_never_gives_text_even_with_tools() -> None:
    for prompt in PROMPTS[:10]:
        answer = fake_answer(
            _ask(prompt, tools=(WEATHER,)), seed=0, max_output_tokens=None, tool_policy=ToolPolicy.NEVER
        )
        assert answer.message.tool_calls == ()
        assert answer.message.content


def test_after_a_tool_message_the_answer_is_text_about_the_result() -> None:
    answer = _text(_after_tool('{"temperature": 4.5, "conditions": "snow"}'))
    assert answer.message.tool_calls == ()
    assert answer.message.content is not None
    assert answer.message.content.startswith('According to the tool result, {"temperature": 4.5')


def test_after_a_tool_message_the_answer_is_still_capped() -> None:
    answer = _text(_after_tool("It is 4.5 degrees and snowing heavily in Oslo."), cap=6)
    assert answer.message.content == "According to the tool result,"
    assert answer.output_tokens == 6
    assert answer.truncated


def test_tool_call_id_is_stable_and_starts_with_call() -> None:
    request = _ask("Weather in Oslo?", tools=(WEATHER,))
    first = _text(request).message.tool_calls[0].id
    assert re.fullmatch(r"call_[0-9a-f]{12}", first)
    assert _text(request).message.tool_calls[0].id == first
    assert _text(_ask("Weather in Rome?", tools=(WEATHER,))).message.tool_calls[0].id != first


def test_tool_without_parameters_gets_no_arguments() -> None:
    answer = _text(_ask("What time is it?", tools=(CLOCK,)))
    (call,) = answer.message.tool_calls
    assert call.function == FunctionCall("get_time", ())
    assert answer.output_tokens == count_tokens("get_time")


def test_order_of_calls_does_not_matter() -> None:
    a, b = _ask("First question?", tools=(WEATHER,)), _ask("Second question?")
    a_first = (_text(a), _text(b))
    b_first = _text(b)
    assert (_text(a), b_first) == a_first


def test_concurrent_calls_match_sequential_ones() -> None:
    requests = [_ask(prompt, tools=(WEATHER,) if i % 2 else ()) for i, prompt in enumerate(PROMPTS)]
    sequential = [_text(request) for request in requests]
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(_text, requests)) == sequential


def test_global_random_state_is_left_alone() -> None:
    random.seed(99)
    expected = random.random()
    random.seed(99)
    _text(_ask("Anything?", tools=(WEATHER,)))
    _text(_ask("Anything?"))
    assert random.random() == expected


def test_backend_generate_uses_its_seed_and_policy() -> None:
    backend = FakeBackend(seed=7)
    assert backend.name == "fake"
    _: Backend = backend
    request = _ask("Weather in Oslo?", tools=(WEATHER,))

    async def run() -> tuple[Answer, Answer]:
        first = await backend.generate(request, 10)
        backend.tool_policy = ToolPolicy.NEVER
        backend.seed = 8
        second = await backend.generate(request, 10)
        await backend.aclose()
        return first, second

    first, second = asyncio.run(run())
    assert first == fake_answer(request, seed=7, max_output_tokens=10, tool_policy=ToolPolicy.AUTO)
    assert first.message.tool_calls
    assert second == fake_answer(request, seed=8, max_output_tokens=10, tool_policy=ToolPolicy.NEVER)
    assert second.message.content and not second.message.tool_calls


def test_answers_are_pinned_bytes_across_machines_and_versions() -> None:
    """A change here means every user's recorded expectations change: only on purpose, with a release note."""
    weather = Tool(
        "get_weather",
        "w",
        Parameters(
            "object", (Property("city", "string"), Property("unit", "string", None, ("c", "f"))), ("city",)
        ),
    )
    requests = [ChatRequest("llama3.1:8b", (UserMessage(f"question {i}"),)) for i in range(20)]
    requests.append(ChatRequest("llama3.1:8b", (UserMessage("Weather?"),), (weather,)))
    digest = hashlib.sha256()
    for request in requests:
        answer = fake_answer(request, seed=0, max_output_tokens=1000, tool_policy=ToolPolicy.AUTO)
        digest.update(repr(answer).encode())
    first = fake_answer(requests[0], seed=0, max_output_tokens=1000, tool_policy=ToolPolicy.AUTO)
    assert (first.message.content or "").startswith("Specific music available wrong positive discover study.")
    assert digest.hexdigest() == "92ab42f36ab9469c8246ad4a2c060f01c6988246e3dec48f585084268ff82c6f"
