"""The official `ollama` Python client against a running emulator, as a developer would use it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import ollama
import pytest

from icllm_emulator._proto.icllm.v1 import control_pb2 as cpb
from icllm_emulator.ollama import ollama_env
from tests.conftest import Stubs

MODEL = "llama3.1:8b"


def get_weather(city: str, days: int) -> str:
    """Current weather for a city.

    Args:
      city: The city's name
      days: How many days ahead

    Returns:
      The forecast
    """
    return f"Sunny in {city} for {days} days"


@pytest.fixture
def client(emu: Stubs) -> Iterator[ollama.Client]:
    """An `ollama.Client` bound to the emulator's HTTP API."""
    url = emu.emulator.ports.http_url
    assert url is not None
    with ollama.Client(host=url, timeout=30) as client:
        yield client


def test_chat_without_streaming(client: ollama.Client) -> None:
    response = client.chat(MODEL, messages=[{"role": "user", "content": "Why is the sky blue?"}])
    assert response.message.role == "assistant" and response.message.content
    assert response.done and response.done_reason == "stop"
    assert response.eval_count and response.prompt_eval_count == 6


def test_chat_streaming_joins_to_the_same_answer(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "Why is the sky blue?"}]
    whole = client.chat(MODEL, messages=messages).message.content
    parts = list(client.chat(MODEL, messages=messages, stream=True))
    assert len(parts) > 2 and parts[-1].done and not any(part.done for part in parts[:-1])
    assert "".join(part.message.content or "" for part in parts) == whole


def test_chat_with_a_python_function_as_tool_and_the_tool_round(client: ollama.Client) -> None:
    question = {"role": "user", "content": "Weather in Zurich?"}
    first = client.chat(MODEL, messages=[question], tools=[get_weather])
    (call,) = first.message.tool_calls or []
    assert call.function.name == "get_weather"
    arguments = dict(call.function.arguments)
    assert isinstance(arguments["city"], str) and isinstance(arguments["days"], int)
    result = get_weather(**arguments)
    second = client.chat(
        MODEL,
        messages=[question, first.message, {"role": "tool", "content": result, "tool_name": "get_weather"}],
    )
    assert result in (second.message.content or "")


def test_num_predict_cuts_the_answer_with_done_reason_length(client: ollama.Client) -> None:
    parts = list(
        client.chat(
            MODEL,
            messages=[{"role": "user", "content": "Tell me a story"}],
            stream=True,
            options={"num_predict": 4},
        )
    )
    assert parts[-1].done_reason == "length" and parts[-1].eval_count == 4


def test_generate_streaming_and_not(client: ollama.Client) -> None:
    whole = client.generate(MODEL, "Why is the sky blue?")
    assert whole.response and whole.done
    parts = list(client.generate(MODEL, "Why is the sky blue?", stream=True))
    assert "".join(part.response or "" for part in parts) == whole.response


def test_list_show_and_ps(client: ollama.Client) -> None:
    assert [model.model for model in client.list().models] == [
        "llama3.1:8b",
        "qwen3:32b",
        "llama4-scout",
        "qwen2.5:0.5b",
        "gemma3:27b",
        "z-ai:glm-5.2",
    ]
    shown = client.show("qwen3:32b")
    assert shown.details is not None and shown.details.family == "qwen3"
    assert shown.capabilities is not None and "tools" in shown.capabilities
    loaded = client.ps().models
    assert [model.model for model in loaded] == [
        "llama3.1:8b",
        "qwen3:32b",
        "llama4-scout",
        "qwen2.5:0.5b",
        "gemma3:27b",
        "z-ai:glm-5.2",
    ]


def test_unknown_model_raises_the_clients_response_error_with_404(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat("gpt-5", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 404
    assert caught.value.error.startswith("model 'gpt-5' not found")
    with pytest.raises(ollama.ResponseError) as shown:
        client.show("gpt-5")
    assert shown.value.status_code == 404


def test_a_scripted_reject_reaches_the_client_with_its_code(emu: Stubs, client: ollama.Client) -> None:
    rule = cpb.Rule(
        match=cpb.RuleMatch(contains="busy"),
        action=cpb.RuleAction(reject=cpb.RejectAction(code=2, message="try again later")),
    )
    emu.control.AddRules(cpb.AddRulesRequest(rules=[rule]))
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(MODEL, messages=[{"role": "user", "content": "are you busy?"}])
    assert caught.value.status_code == 503
    assert "SYS_TRANSIENT (2): try again later" in caught.value.error


def test_a_scripted_answer_reaches_the_client(emu: Stubs, client: ollama.Client) -> None:
    rule = cpb.Rule(
        match=cpb.RuleMatch(contains="speed of light"),
        action=cpb.RuleAction(reply=cpb.ReplyAction(content="299,792,458 m/s")),
    )
    emu.control.AddRules(cpb.AddRulesRequest(rules=[rule]))
    reply = client.chat(MODEL, messages=[{"role": "user", "content": "What's the speed of light?"}])
    assert reply.message.content == "299,792,458 m/s"


def test_ollama_host_from_the_helper_is_enough_for_a_default_client(
    emu: Stubs, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = emu.emulator.ports.http_url
    assert url is not None
    for name, value in ollama_env(url).items():
        monkeypatch.setenv(name, value)
    with ollama.Client(timeout=30) as client:
        assert client.list().models[0].model == MODEL


@pytest.mark.asyncio
async def test_async_client_chats_too(start_emulator: Callable[..., Stubs]) -> None:
    url = start_emulator().emulator.ports.http_url
    assert url is not None
    async with ollama.AsyncClient(host=url, timeout=30) as client:
        response = await client.chat(MODEL, messages=[{"role": "user", "content": "hi"}])
        assert response.message.content
        stream = await client.chat(MODEL, messages=[{"role": "user", "content": "hi"}], stream=True)
        parts = [part async for part in stream]
    assert "".join(part.message.content or "" for part in parts) == response.message.content
