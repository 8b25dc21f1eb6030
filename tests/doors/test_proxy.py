"""The proxy backend: the wire format of both upstream APIs (respx), and a real upstream process.

respx stands in for the upstream server to pin what goes over the wire and how every kind of answer
and failure comes back; a second `icllm-emulator serve` process is a real Ollama- and OpenAI-compatible
upstream for the end-to-end tests (its fake backend's answers are known exactly).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
import yaml

from icllm_emulator._proto.icllm.v1 import control_pb2 as cpb
from icllm_emulator.backends.fake import fake_answer
from icllm_emulator.backends.proxy import ProxyBackend
from icllm_emulator.chat_json import parse_chat, parse_openai_chat
from icllm_emulator.cli import build_parser, config_from_args
from icllm_emulator.client import LlmClient, LlmReject, ParameterType, parameter, tool, tool_result, user
from icllm_emulator.domain import (
    Answer,
    AssistantMessage,
    ChatRequest,
    FunctionCall,
    Parameters,
    Property,
    Reject,
    RejectCode,
    SystemMessage,
    Tool,
    ToolCall,
    ToolCallArgument,
    ToolMessage,
    ToolPolicy,
    UserMessage,
)
from icllm_emulator.upstream import UpstreamApi, UpstreamError, UpstreamSettings
from tests.conftest import Stubs
from tests.processes.test_cli import Child, run_cli, spawn, wait_for_port_file
from tests.pytester_support import pt

__all__ = ["pt", "spawn"]  # fixtures

MODEL = "llama3.1:8b"
UPSTREAM = "http://upstream.test"

WEATHER = Tool(
    "get_weather",
    "Current weather",
    Parameters(
        properties=(
            Property("city", "string", "the city"),
            Property("days", "integer"),
            Property("unit", "string", enum=("celsius", "fahrenheit")),
        ),
        required=("city",),
    ),
)
CALL = ToolCall(
    "call_1", FunctionCall("get_weather", (ToolCallArgument("city", "Zurich"), ToolCallArgument("days", "3")))
)
CONVERSATION = ChatRequest(
    MODEL,
    (
        SystemMessage("Be brief."),
        UserMessage("Weather in Zurich?"),
        AssistantMessage(content=None, tool_calls=(CALL,)),
        ToolMessage('{"temp": 21}', "call_1"),
        UserMessage("And for 3 days?"),
    ),
    tools=(WEATHER,),
)


def proxy(api: UpstreamApi = UpstreamApi.OLLAMA, **settings: Any) -> ProxyBackend:
    return ProxyBackend(UpstreamSettings(url=UPSTREAM, api=api, **settings))


@pytest.fixture
def upstream() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=UPSTREAM, assert_all_called=False) as router:
        yield router


def sent(route: respx.Route) -> Any:
    return json.loads(route.calls.last.request.content)


# -- Ollama's /api/chat ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_ollama_request_carries_messages_tools_and_the_cap_as_ollama_reads_them(
    upstream: respx.MockRouter,
) -> None:
    route = upstream.post("/api/chat").respond(json={"message": {"role": "assistant", "content": "Sunny."}})
    backend = proxy(api_key="key-123", models=((MODEL, "llama3.1:70b"),))
    await backend.generate(CONVERSATION, 200)
    await backend.aclose()

    body = sent(route)
    assert body == {
        "model": "llama3.1:70b",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Zurich?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "function": {"name": "get_weather", "arguments": {"city": "Zurich", "days": 3}},
                    }
                ],
            },
            {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "call_1", "tool_name": "get_weather"},
            {"role": "user", "content": "And for 3 days?"},
        ],
        "stream": False,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Current weather",
                    "parameters": {
                        "type": "object",
                        "properties": {
                            "city": {"type": "string", "description": "the city"},
                            "days": {"type": "integer"},
                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                        },
                        "required": ["city"],
                    },
                },
            }
        ],
        "options": {"num_predict": 200},
    }
    headers = route.calls.last.request.headers
    assert headers["authorization"] == "Bearer key-123"
    assert headers["user-agent"].startswith("pytest-icllm/")
    # What Ollama reads (the emulator's own Ollama door, here) is the canister's request again.
    parsed = parse_chat(body).request
    assert parsed == ChatRequest("llama3.1:70b", CONVERSATION.messages, CONVERSATION.tools)


@pytest.mark.asyncio
async def test_ollama_tool_calls_come_back_as_text_arguments_with_stable_ids(
    upstream: respx.MockRouter,
) -> None:
    arguments = {"city": "Bern", "days": 2, "metric": True, "where": {"lat": 46.9}}
    upstream.post("/api/chat").respond(
        json={
            "model": MODEL,
            "message": {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": arguments}},
                    {"function": {"name": "get_weather", "arguments": {"city": "Basel"}}},
                ],
            },
            "done": True,
            "done_reason": "stop",
            "eval_count": 17,
        }
    )
    backend = proxy()
    answer = await backend.generate(ChatRequest(MODEL, (UserMessage("Weather?"),), (WEATHER,)), None)
    again = await backend.generate(ChatRequest(MODEL, (UserMessage("Weather?"),), (WEATHER,)), None)
    await backend.aclose()

    first, second = answer.message.tool_calls
    assert answer.message.content is None and (answer.output_tokens, answer.truncated) == (17, False)
    assert first.function == FunctionCall(
        "get_weather",
        (
            ToolCallArgument("city", "Bern"),
            ToolCallArgument("days", "2"),
            ToolCallArgument("metric", "true"),
            ToolCallArgument("where", '{"lat": 46.9}'),
        ),
    )
    assert first.id.startswith("call_") and len(first.id) == len("call_") + 12
    assert first.id != second.id
    assert [call.id for call in again.message.tool_calls] == [first.id, second.id]


@pytest.mark.asyncio
async def test_an_answer_cut_at_the_cap_is_marked_truncated(upstream: respx.MockRouter) -> None:
    upstream.post("/api/chat").respond(
        json={"message": {"role": "assistant", "content": "It is"}, "done_reason": "length", "eval_count": 2}
    )
    backend = proxy()
    answer = await backend.generate(ChatRequest(MODEL, (UserMessage("Weather?"),)), 2)
    await backend.aclose()
    assert answer == Answer(AssistantMessage(content="It is"), output_tokens=2, truncated=True)


@pytest.mark.asyncio
async def test_a_cap_of_zero_asks_nothing_upstream(upstream: respx.MockRouter) -> None:
    route = upstream.post("/api/chat").respond(json={})
    backend = proxy()
    answer = await backend.generate(ChatRequest(MODEL, (UserMessage("Weather?"),)), 0)
    await backend.aclose()
    assert answer == Answer(AssistantMessage(content=""), output_tokens=0, truncated=True)
    assert not route.called


# -- OpenAI's /v1/chat/completions -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_openai_request_carries_arguments_as_json_text_and_the_cap_as_max_tokens(
    upstream: respx.MockRouter,
) -> None:
    route = upstream.post("/v1/chat/completions").respond(
        json={"choices": [{"message": {"role": "assistant", "content": "Sunny."}, "finish_reason": "stop"}]}
    )
    backend = proxy(UpstreamApi.OPENAI)
    answer = await backend.generate(CONVERSATION, 200)
    await backend.aclose()

    body = sent(route)
    assert body["messages"][2:4] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Zurich", "days": 3}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    ]
    assert (body["model"], body["stream"], body["max_tokens"]) == (MODEL, False, 200)
    assert body["tools"][0]["function"]["parameters"]["required"] == ["city"]
    assert parse_openai_chat(body).request == CONVERSATION
    assert answer.message == AssistantMessage(content="Sunny.")


@pytest.mark.asyncio
async def test_openai_tool_calls_and_usage_come_back(upstream: respx.MockRouter) -> None:
    upstream.post("/v1/chat/completions").respond(
        json={
            "choices": [
                {
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "call_abc",
                                "type": "function",
                                "function": {
                                    "name": "get_weather",
                                    "arguments": '{"city": "Bern", "days": 2}',
                                },
                            }
                        ],
                    },
                    "finish_reason": "tool_calls",
                }
            ],
            "usage": {"prompt_tokens": 30, "completion_tokens": 9},
        }
    )
    backend = proxy(UpstreamApi.OPENAI)
    answer = await backend.generate(ChatRequest(MODEL, (UserMessage("Weather?"),), (WEATHER,)), None)
    await backend.aclose()
    assert answer == Answer(
        AssistantMessage(
            content=None,
            tool_calls=(
                ToolCall(
                    "call_abc",
                    FunctionCall(
                        "get_weather", (ToolCallArgument("city", "Bern"), ToolCallArgument("days", "2"))
                    ),
                ),
            ),
        ),
        output_tokens=9,
    )


# -- failures ----------------------------------------------------------------------------------------

WHERE = f"the upstream server {UPSTREAM} (ollama API)"


@pytest.mark.parametrize(
    ("response", "code", "message"),
    [
        (
            httpx.Response(404, json={"error": 'model "llama3.1:8b" not found, try pulling it first'}),
            RejectCode.CANISTER_REJECT,
            f"{WHERE} answered 404 Not Found to POST /api/chat (model 'llama3.1:8b'): "
            'model "llama3.1:8b" not found, try pulling it first',
        ),
        (
            httpx.Response(400, json={"error": {"message": "tools are not supported", "type": "invalid"}}),
            RejectCode.CANISTER_REJECT,
            f"{WHERE} answered 400 Bad Request to POST /api/chat (model 'llama3.1:8b'): tools are not "
            "supported",
        ),
        (
            httpx.Response(503, text="overloaded"),
            RejectCode.SYS_TRANSIENT,
            f"{WHERE} answered 503 Service Unavailable to POST /api/chat (model 'llama3.1:8b'): overloaded",
        ),
        (
            httpx.Response(429, json={"error": "rate limited"}),
            RejectCode.SYS_TRANSIENT,
            f"{WHERE} answered 429 Too Many Requests to POST /api/chat (model 'llama3.1:8b'): rate limited",
        ),
        (
            httpx.Response(
                503,
                json={
                    "error": "queue full",
                    "reject_code": 2,
                    "reject_message": "the queue is full; try later",
                },
            ),
            RejectCode.SYS_TRANSIENT,
            f"{WHERE} answered 503 Service Unavailable to POST /api/chat (model 'llama3.1:8b'): "
            "the queue is full; try later",
        ),
        (
            httpx.Response(502, json={"error": "trapped", "reject_code": 1, "reject_message": "fatal"}),
            RejectCode.SYS_FATAL,
            f"{WHERE} answered 502 Bad Gateway to POST /api/chat (model 'llama3.1:8b'): fatal",
        ),
        (
            httpx.Response(302, headers={"location": "https://elsewhere.test/api/chat"}),
            RejectCode.CANISTER_REJECT,
            f"{WHERE} redirects POST /api/chat to 'https://elsewhere.test/api/chat': give --upstream the URL "
            "it points to",
        ),
        (
            httpx.Response(200, text="<html>proxy login</html>"),
            RejectCode.CANISTER_REJECT,
            f"{WHERE} answered POST /api/chat with a body that is not JSON: '<html>proxy login</html>'",
        ),
        (
            httpx.Response(200, json={"done": True}),
            RejectCode.CANISTER_REJECT,
            f"{WHERE} answered POST /api/chat with a body that is not an Ollama chat response: it has no "
            "'message'; body: {\"done\":true}",
        ),
        (
            httpx.Response(200, json={"message": {"role": "assistant", "tool_calls": [{"function": {}}]}}),
            RejectCode.CANISTER_REJECT,
            f"{WHERE} answered POST /api/chat with a body that is not an Ollama chat response: "
            "messages[0].tool_calls[0].function.name is required; body: *",
        ),
    ],
    ids=[
        "404",
        "400-openai-shape",
        "503",
        "429",
        "emulator-reject",
        "emulator-fatal",
        "redirect",
        "html",
        "shape",
        "call",
    ],
)
@pytest.mark.asyncio
async def test_upstream_errors_become_rejects_that_say_what_happened(
    upstream: respx.MockRouter, response: httpx.Response, code: RejectCode, message: str
) -> None:
    upstream.post("/api/chat").mock(return_value=response)
    backend = proxy()
    with pytest.raises(Reject) as raised:
        await backend.generate(ChatRequest(MODEL, (UserMessage("Weather?"),)), None)
    await backend.aclose()
    assert raised.value.code is code
    if message.endswith("*"):
        assert raised.value.message.startswith(message[:-1])
    else:
        assert raised.value.message == message


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            httpx.ConnectError("Connection refused"),
            f"cannot reach {WHERE} for POST /api/chat: ConnectError: Connection refused; is it running, "
            "and is "
            "--upstream right?",
        ),
        (
            httpx.ReadTimeout("timed out"),
            f"{WHERE} did not answer POST /api/chat within 120 s (--upstream-timeout); a model that is still "
            "loading can take longer: retry, or raise the timeout",
        ),
        (
            httpx.RemoteProtocolError("peer closed connection"),
            f"cannot reach {WHERE} for POST /api/chat: RemoteProtocolError: peer closed connection; is it "
            "running, and is --upstream right?",
        ),
    ],
    ids=["refused", "timeout", "hung-up"],
)
@pytest.mark.asyncio
async def test_an_unreachable_or_slow_upstream_is_a_transient_reject(
    upstream: respx.MockRouter, error: Exception, message: str
) -> None:
    upstream.post("/api/chat").mock(side_effect=error)
    backend = proxy()
    with pytest.raises(Reject) as raised:
        await backend.generate(ChatRequest(MODEL, (UserMessage("Weather?"),)), None)
    await backend.aclose()
    assert (raised.value.code, raised.value.message) == (RejectCode.SYS_TRANSIENT, message)


@pytest.mark.asyncio
async def test_one_client_serves_every_job_and_is_closed_with_the_backend(upstream: respx.MockRouter) -> None:
    upstream.post("/api/chat").respond(json={"message": {"role": "assistant", "content": "ok"}})
    backend = proxy(timeout=7.5)
    client = backend._client
    for _ in range(3):
        await backend.generate(ChatRequest(MODEL, (UserMessage("hi"),)), None)
    assert backend._client is client and not client.is_closed
    assert (client.timeout.read, client.timeout.connect) == (7.5, 7.5)
    await backend.aclose()
    assert client.is_closed


def test_upstream_settings_are_checked_and_credentials_never_shown() -> None:
    settings = UpstreamSettings(url="http://ops:hunter2@gpu.internal:11434/", api_key="sk-secret-value")
    assert settings.url == "http://ops:hunter2@gpu.internal:11434"
    assert settings.public_url == "http://gpu.internal:11434"
    assert "hunter2" not in repr(settings) and "sk-secret-value" not in repr(settings)
    details = ProxyBackend(settings).recording_details(ChatRequest(MODEL, ()))
    assert details == {
        "upstream": "http://gpu.internal:11434",
        "upstream_api": "ollama",
        "upstream_model": MODEL,
    }
    cases: list[tuple[dict[str, Any], str]] = [
        (dict(url="localhost:11434"), "is not an http(s) URL; give the server's base URL"),
        (dict(url="http://h:1?x=1"), "give the base URL, without a query or fragment"),
        (dict(url="http://h:1", timeout=0), "upstream timeout must be more than 0 seconds, got 0"),
        (
            dict(url="http://h:1", api="grpc"),
            "upstream API 'grpc' is not valid; choose one of: ollama, openai",
        ),
    ]
    for bad, message in cases:
        with pytest.raises(UpstreamError) as raised:
            UpstreamSettings(**bad)
        assert message in str(raised.value)


def test_the_api_key_comes_from_an_environment_variable_only() -> None:
    args = build_parser({}).parse_args(["serve", "--backend", "proxy", "--upstream", "http://h:1"])
    assert config_from_args(args, {"ICLLM_UPSTREAM_API_KEY": "k-1"}).upstream.api_key == "k-1"  # type: ignore[union-attr]
    args = build_parser({}).parse_args(
        ["serve", "--backend", "proxy", "--upstream", "http://h:1", "--upstream-key-env", "OPENAI_API_KEY"]
    )
    assert config_from_args(args, {"OPENAI_API_KEY": "sk-2"}).upstream.api_key == "sk-2"  # type: ignore[union-attr]
    assert config_from_args(args, {}).upstream.api_key is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "proxy"], "the proxy backend needs a server to forward to: give --upstream URL"),
        (
            ["--upstream", "http://h:1"],
            "--upstream gives the proxy backend its server, but the backend is 'fake'",
        ),
        (["--backend", "proxy", "--upstream", "h:1"], "upstream 'h:1' is not an http(s) URL"),
        (
            ["--backend", "proxy", "--upstream", "http://h:1", "--upstream-api", "grpc"],
            "upstream API 'grpc' is not valid; choose one of: ollama, openai",
        ),
        (
            ["--backend", "proxy", "--upstream", "http://h:1", "--upstream-models", "llama"],
            "upstream model 'llama' is not NAME=UPSTREAM",
        ),
    ],
    ids=["no-upstream", "no-proxy", "not-a-url", "bad-api", "bad-models"],
)
def test_bad_proxy_options_stop_the_start_with_exit_code_2(args: list[str], message: str) -> None:
    result = run_cli("serve", "--grpc-port", "0", *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


# -- a real upstream: a second emulator process --------------------------------------------------------


def serve_upstream(spawn: Callable[..., Child], folder: Path, *args: str) -> tuple[Child, str]:
    """An `icllm-emulator serve` whose Ollama-compatible HTTP API is the upstream; its HTTP URL."""
    folder.mkdir(parents=True, exist_ok=True)
    port_file = folder / "ports.json"
    child = spawn("serve", "--grpc-port", "0", "--port-file", str(port_file), "--seed", "4", *args)
    wait_for_port_file(child, port_file)
    url: str = json.loads(port_file.read_text())["http_url"]
    return child, url


def fake(request: ChatRequest, seed: int = 4) -> AssistantMessage:
    return fake_answer(request, seed=seed, max_output_tokens=1000, tool_policy=ToolPolicy.AUTO).message


@pytest.mark.parametrize("api", [UpstreamApi.OLLAMA, UpstreamApi.OPENAI])
def test_a_proxied_conversation_gets_the_upstreams_answers_tools_included(
    spawn: Callable[..., Child], start_emulator: Callable[..., Stubs], tmp_path: Path, api: UpstreamApi
) -> None:
    _, url = serve_upstream(spawn, tmp_path / "upstream")
    stubs = start_emulator(backend="proxy", upstream=UpstreamSettings(url=url, api=api))
    weather = tool("get_weather").with_parameter(parameter("city", ParameterType.STRING).is_required())
    with LlmClient(stubs.emulator.ports.grpc_target) as llm:
        assert llm.prompt(MODEL, "Weather?") == fake(ChatRequest(MODEL, (UserMessage("Weather?"),))).content
        question = user("Weather in Zurich?")
        first = llm.chat(MODEL).with_messages([question]).with_tools([weather]).send()
        asked = llm.chat(MODEL).with_messages([question]).with_tools([weather]).request()
        assert first == fake(asked)
        assert first.tool_calls and first.tool_calls[0].function.name == "get_weather"
        conversation = [question, first, tool_result('{"temp": 21}', first.tool_calls[0].id)]
        final = llm.chat(MODEL).with_messages(conversation).send()
        assert final == fake(llm.chat(MODEL).with_messages(conversation).request())
        assert final.content and final.content.startswith('According to the tool result, {"temp": 21}.')


def test_an_upstream_reject_reaches_the_caller_with_its_code_and_words(
    spawn: Callable[..., Child], start_emulator: Callable[..., Stubs], tmp_path: Path
) -> None:
    _, url = serve_upstream(spawn, tmp_path / "upstream")
    stubs = start_emulator(backend="proxy", upstream=UpstreamSettings(url=url), models=(MODEL, "mistral:7b"))
    with LlmClient(stubs.emulator.ports.grpc_target) as llm, pytest.raises(LlmReject) as raised:
        llm.prompt("mistral:7b", "hi")
    assert raised.value.code is RejectCode.CANISTER_REJECT
    assert raised.value.message.startswith(
        f"the upstream server {url} (ollama API) answered 404 Not Found to POST /api/chat (model "
        "'mistral:7b'): "
        "unknown model 'mistral:7b'"
    )


def test_a_slow_upstream_is_given_up_on_at_the_timeout_and_a_gone_one_is_transient(
    spawn: Callable[..., Child], start_emulator: Callable[..., Stubs], tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - match: {contains: slow}\n    delay: 60\n    reply: late\n")
    upstream, url = serve_upstream(spawn, tmp_path / "upstream", "--rules", str(rules))
    stubs = start_emulator(backend="proxy", upstream=UpstreamSettings(url=url, timeout=0.5))
    with LlmClient(stubs.emulator.ports.grpc_target) as llm:
        with pytest.raises(LlmReject) as slow:
            llm.prompt(MODEL, "slow please")
        assert slow.value.code is RejectCode.SYS_TRANSIENT
        assert slow.value.message.startswith(
            f"the upstream server {url} (ollama API) did not answer POST /api/chat within 0.5 s"
        )
        assert upstream.stop() == 0
        with pytest.raises(LlmReject) as gone:
            llm.prompt(MODEL, "anyone there?")
        assert gone.value.code is RejectCode.SYS_TRANSIENT
        assert gone.value.message.startswith(f"cannot reach the upstream server {url} (ollama API)")


def test_record_through_the_proxy_once_then_replay_without_the_upstream(
    spawn: Callable[..., Child], start_emulator: Callable[..., Stubs], tmp_path: Path
) -> None:
    upstream, url = serve_upstream(spawn, tmp_path / "upstream")
    stubs = start_emulator(backend="proxy", upstream=UpstreamSettings(url=url))
    path = tmp_path / "cassettes" / "agent.yaml"
    stubs.control.UseCassette(cpb.UseCassetteRequest(path=str(path), record_mode="once"), timeout=30)
    with LlmClient(stubs.emulator.ports.grpc_target) as llm:
        answer = llm.prompt(MODEL, "Weather?")
        assert stubs.control.EjectCassette(cpb.EjectCassetteRequest(), timeout=30).recorded == 1
        assert upstream.stop() == 0
        stubs.control.UseCassette(cpb.UseCassetteRequest(path=str(path)), timeout=30)
        assert llm.prompt(MODEL, "Weather?") == answer
    recorded = path.read_text()
    assert (
        f"upstream: {url}" in recorded and "backend: proxy" in recorded and "upstream_api: ollama" in recorded
    )


def test_an_external_worker_forwards_its_jobs_to_an_upstream(
    spawn: Callable[..., Child], tmp_path: Path
) -> None:
    _, url = serve_upstream(spawn, tmp_path / "upstream")
    port_file = tmp_path / "main" / "ports.json"
    port_file.parent.mkdir()  # the emulator writes its port file into a folder that exists
    main = spawn("serve", "--grpc-port", "0", "--port-file", str(port_file), "--workers", "0")
    target = wait_for_port_file(main, port_file)
    spawn("worker", "--connect", target, "--backend", "proxy", "--upstream", url, "--poll-seconds", "1")
    with LlmClient(target) as llm:
        assert llm.prompt(MODEL, "Weather?") == fake(ChatRequest(MODEL, (UserMessage("Weather?"),))).content


def test_pytest_records_from_a_real_server_through_the_proxy_and_replays_offline(
    spawn: Callable[..., Child], pt: pytest.Pytester, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    upstream, url = serve_upstream(spawn, tmp_path / "upstream")
    pt.makepyfile(
        test_user="""
        import pytest

        @pytest.mark.icllm(cassette=True)
        def test_agent(icllm, icllm_client):
            assert icllm_client.prompt("llama3.1:8b", "Weather?")
        """
    )
    recording = pt.runpytest(
        "--icllm-backend", "proxy", "--icllm-upstream", url, "--icllm-record-mode", "once"
    )
    recording.assert_outcomes(passed=1)
    assert upstream.stop() == 0
    pt.runpytest().assert_outcomes(passed=1)
    data = yaml.safe_load((pt.path / "cassettes" / "test_user" / "test_agent.yaml").read_text())
    (only,) = data["interactions"]
    assert only["answer"]["content"] == fake(ChatRequest(MODEL, (UserMessage("Weather?"),))).content
    assert (only["recorded"]["backend"], only["recorded"]["upstream"]) == ("proxy", url)
