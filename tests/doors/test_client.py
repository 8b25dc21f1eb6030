"""The ic-llm-shaped client against a running emulator: what a test author relies on."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import grpc
import pytest

from icllm_emulator.client import (
    AsyncLlmClient,
    EmulatorError,
    LlmClient,
    LlmReject,
    ParameterType,
    assistant,
    parameter,
    system,
    tool,
    tool_result,
    user,
)
from icllm_emulator.config import EmulatorConfig
from icllm_emulator.domain import Parameters, Property, RejectCode, Tool
from icllm_emulator.server import ThreadedEmulator
from icllm_emulator.settings import DEFAULT_MODELS

MODEL = "llama3.1:8b"
UNITS = ("celsius", "fahrenheit")

WEATHER = (
    tool("get_weather")
    .with_description("Current weather for a city.")
    .with_parameter(parameter("city", ParameterType.STRING).with_description("The city").is_required())
    .with_parameter(parameter("unit", ParameterType.STRING).with_enum_values(UNITS).is_required())
)


@pytest.fixture(scope="module")
def emulator() -> Iterator[ThreadedEmulator]:
    with ThreadedEmulator(EmulatorConfig(grpc_port=0, ollama_port=0)) as emu:
        yield emu


@pytest.fixture
def client(emulator: ThreadedEmulator) -> Iterator[LlmClient]:
    with LlmClient(emulator.ports.grpc_target, timeout=30) as llm:
        yield llm


def test_prompt_is_deterministic_text(client: LlmClient) -> None:
    first = client.prompt(MODEL, "What is the Internet Computer?")
    assert first.strip()
    assert client.prompt(MODEL, "What is the Internet Computer?") == first


def test_v0_chat_with_system_and_user(client: LlmClient) -> None:
    text = client.v0_chat(MODEL, [system("You are terse."), user("Name a colour.")])
    assert text.strip()


def test_v0_chat_refuses_tool_messages_before_sending(client: LlmClient) -> None:
    with pytest.raises(ValueError, match="v0_chat has no tool messages"):
        client.v0_chat(MODEL, [user("hi"), tool_result("42", "call_1")])


def test_unknown_model_is_a_canister_reject_naming_the_models(client: LlmClient) -> None:
    with pytest.raises(LlmReject) as caught:
        client.prompt("gpt-9", "hello")
    assert caught.value.code is RejectCode.CANISTER_REJECT
    assert "gpt-9" in caught.value.message
    assert all(model in caught.value.message for model in DEFAULT_MODELS)
    assert str(caught.value) == f"CANISTER_REJECT (4): {caught.value.message}"


def test_message_limit_is_ten(client: LlmClient) -> None:
    ten = [user(f"message {i}") for i in range(10)]
    assert client.chat(MODEL).with_messages(ten).send().content
    with pytest.raises(LlmReject, match="too many messages") as caught:
        client.chat(MODEL).with_messages([*ten, user("one too many")]).send()
    assert caught.value.code is RejectCode.CANISTER_REJECT


def test_tool_round_trip(client: LlmClient) -> None:
    question = [system("Use tools when they help."), user("What's the weather in Zurich?")]
    reply = client.chat(MODEL).with_messages(question).with_tools([WEATHER]).send()

    assert reply.tool_calls, reply
    call = reply.tool_calls[0]
    assert call.id
    assert call.function.name == "get_weather"
    arguments = {a.name: a.value for a in call.function.arguments}
    assert arguments["unit"] in UNITS
    assert arguments["city"]

    follow_up = [
        *question,
        assistant(tool_calls=reply.tool_calls),
        tool_result("12 degrees, cloudy", call.id),
    ]
    final = client.chat(MODEL).with_messages(follow_up).send()
    assert final.content
    assert not final.tool_calls


def test_tool_builder_builds_an_object_schema_in_declaration_order() -> None:
    built = (
        tool("search")
        .with_description("Search the web.")
        .with_parameter(parameter("query", ParameterType.STRING).is_required())
        .with_parameter(parameter("safe", ParameterType.BOOLEAN).with_description("Filter results"))
        .with_parameter(parameter("limit", ParameterType.NUMBER).is_required())
        .build()
    )
    assert built == Tool(
        name="search",
        description="Search the web.",
        parameters=Parameters(
            type="object",
            properties=(
                Property("query", "string"),
                Property("safe", "boolean", "Filter results"),
                Property("limit", "number"),
            ),
            required=("query", "limit"),
        ),
    )


def test_tool_builder_without_required_or_parameters() -> None:
    optional = tool("t").with_parameter(parameter("x", ParameterType.NUMBER)).build()
    assert optional.parameters is not None
    assert optional.parameters.required == ()
    assert tool("clock").build() == Tool(name="clock", description=None, parameters=None)


def test_builders_are_not_changed_by_chaining() -> None:
    base = tool("t")
    base.with_description("d").with_parameter(parameter("x", ParameterType.STRING))
    assert base.build() == Tool(name="t")


def test_caller_and_cycles_reach_the_canister(emulator: ThreadedEmulator) -> None:
    caller = "rrkah-fqaaa-aaaaa-aaaaq-cai"
    with LlmClient(emulator.ports.grpc_target, caller=caller, cycles=5, timeout=30) as llm:
        llm.prompt(MODEL, "who am I?")
    assert emulator.engine.records()[-1].caller == caller


def test_bad_caller_principal_is_an_emulator_error(emulator: ThreadedEmulator) -> None:
    with (
        LlmClient(emulator.ports.grpc_target, caller="Not A Principal", timeout=30) as llm,
        pytest.raises(EmulatorError) as caught,
    ):
        llm.prompt(MODEL, "hello")
    assert caught.value.status == grpc.StatusCode.INVALID_ARGUMENT
    assert "Not A Principal" in caught.value.details
    assert "INVALID_ARGUMENT" in str(caught.value)


def test_nothing_listening_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with LlmClient(f"127.0.0.1:{port}", timeout=2) as llm, pytest.raises(EmulatorError) as caught:
        llm.prompt(MODEL, "anyone there?")
    assert caught.value.status == grpc.StatusCode.UNAVAILABLE


@pytest.mark.asyncio
async def test_async_client_matches_sync_client(emulator: ThreadedEmulator, client: LlmClient) -> None:
    expected = client.prompt(MODEL, "Tell me about canisters.")
    async with AsyncLlmClient(emulator.ports.grpc_target, timeout=30) as llm:
        assert await llm.prompt(MODEL, "Tell me about canisters.") == expected
        reply = await llm.chat(MODEL).with_messages([user("Weather in Bern?")]).with_tools([WEATHER]).send()
        assert reply.tool_calls[0].function.name == "get_weather"
        assert await llm.v0_chat(MODEL, [user("hi")])


@pytest.mark.asyncio
async def test_async_client_translates_rejects(emulator: ThreadedEmulator) -> None:
    async with AsyncLlmClient(emulator.ports.grpc_target, timeout=30) as llm:
        with pytest.raises(LlmReject) as caught:
            await llm.prompt("gpt-9", "hello")
    assert caught.value.code is RejectCode.CANISTER_REJECT
