"""The Ollama-compatible HTTP door, as raw HTTP: JSON shapes, NDJSON and SSE framing, errors.

Shape tests run twice: against the app in-process (httpx's ASGI transport) and against a real
emulator serving it with uvicorn on loopback. Tests that look inside the engine use the in-process
app; tests of what crosses doors (gRPC control, history) use a real emulator.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from icllm_emulator._proto.icllm.v1 import canister_pb2 as pb
from icllm_emulator._proto.icllm.v1 import control_pb2 as cpb
from icllm_emulator.config import ConfigError, EmulatorConfig
from icllm_emulator.domain import AssistantMessage, Limits, Reject, RejectCode, ToolMessage
from icllm_emulator.engine import Engine
from icllm_emulator.ollama import ollama_env
from icllm_emulator.ollama.app import MAX_BODY_BYTES, create_app
from icllm_emulator.rules import Match, Reply, Rule, rule_from_dict
from icllm_emulator.server import ThreadedEmulator
from tests.conftest import Stubs
from tests.waiting import wait_until

MODEL = "llama3.1:8b"
FINAL_FIELDS = {
    "done",
    "done_reason",
    "total_duration",
    "load_duration",
    "prompt_eval_count",
    "prompt_eval_duration",
    "eval_count",
    "eval_duration",
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "The city"},
                "days": {"type": "integer", "description": "How many days ahead"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "days", "unit"],
        },
    },
}


def chat_body(text: str = "Why is the sky blue?", **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **fields}


@dataclass
class Door:
    client: httpx.AsyncClient
    engine: Engine | None = None


@contextlib.asynccontextmanager
async def in_process(**fields: Any) -> AsyncIterator[Door]:
    """The app over a started engine in this event loop, and an httpx client bound to it."""
    engine = Engine(EmulatorConfig(**{"ollama_port": None, **fields}))
    await engine.load()
    engine.start()
    try:
        transport = httpx.ASGITransport(app=create_app(engine))
        async with httpx.AsyncClient(transport=transport, base_url="http://emulator") as client:
            yield Door(client, engine)
    finally:
        await engine.stop()


@pytest_asyncio.fixture
async def door() -> AsyncIterator[Door]:
    """The app in-process, default configuration; `door.engine` is the engine behind it."""
    async with in_process() as opened:
        yield opened


@pytest_asyncio.fixture(params=["asgi", "uvicorn"])
async def http(request: pytest.FixtureRequest, start_emulator: Callable[..., Stubs]) -> AsyncIterator[Door]:
    """The app in-process, then the same app served by uvicorn in a real emulator."""
    if request.param == "asgi":
        async with in_process() as opened:
            yield opened
        return
    url = start_emulator().emulator.ports.http_url
    assert url is not None
    async with httpx.AsyncClient(base_url=url) as client:
        yield Door(client)


def ndjson(response: httpx.Response) -> list[dict[str, Any]]:
    """The lines of an NDJSON body, checking the framing: one object per line, each line ended."""
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.text.endswith("\n")
    return [json.loads(line) for line in response.text.split("\n")[:-1]]


def sse(response: httpx.Response) -> list[Any]:
    """The events of an SSE body: `data: {...}` blocks ended by a blank line, the last `[DONE]`."""
    assert response.headers["content-type"].startswith("text/event-stream")
    blocks = response.text.split("\n\n")
    assert blocks[-1] == "", "the stream ends with a blank line"
    assert all(block.startswith("data: ") and "\n" not in block for block in blocks[:-1])
    assert blocks[-2] == "data: [DONE]"
    return [json.loads(block.removeprefix("data: ")) for block in blocks[:-2]]


# -- general routes ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_root_and_version_answer_like_ollama(http: Door) -> None:
    root = await http.client.get("/")
    assert (root.status_code, root.text) == (200, "Ollama is running")
    assert (await http.client.head("/")).status_code == 200
    version = await http.client.get("/api/version")
    assert version.status_code == 200 and set(version.json()) == {"version"}
    assert [int(part) for part in version.json()["version"].split(".")] >= [0, 12, 0]
    assert (await http.client.head("/api/version")).status_code == 200


@pytest.mark.asyncio
async def test_every_response_names_the_limit_profile() -> None:
    async with in_process(profile="launch-2025") as door:
        for response in (await door.client.get("/"), await door.client.post("/api/chat", content=b"{")):
            assert response.headers["x-icllm-profile"] == "launch-2025"


# -- models -----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_tags_lists_the_catalogue_with_ollama_fields(http: Door) -> None:
    models = (await http.client.get("/api/tags")).json()["models"]
    assert [m["name"] for m in models] == [
        "llama3.1:8b",
        "qwen3:32b",
        "llama4-scout",
        "qwen2.5:0.5b",
        "gemma3:27b",
        "z-ai:glm-5.2",
    ]
    for model in models:
        assert set(model) == {"name", "model", "modified_at", "size", "digest", "details"}
        assert set(model["details"]) == {
            "parent_model",
            "format",
            "family",
            "families",
            "parameter_size",
            "quantization_level",
        }
        assert model["size"] > 0 and len(model["digest"]) == 64
    assert models[0]["details"]["family"] == "llama" and models[0]["details"]["parameter_size"] == "8.0B"


@pytest.mark.asyncio
async def test_ps_lists_every_model_as_loaded(http: Door) -> None:
    models = (await http.client.get("/api/ps")).json()["models"]
    assert [m["model"] for m in models] == [
        "llama3.1:8b",
        "qwen3:32b",
        "llama4-scout",
        "qwen2.5:0.5b",
        "gemma3:27b",
        "z-ai:glm-5.2",
    ]
    assert {"expires_at", "size_vram", "context_length", "details"} <= set(models[0])


@pytest.mark.asyncio
async def test_show_describes_a_model_and_404s_an_unknown_one(http: Door) -> None:
    shown = await http.client.post("/api/show", json={"model": "qwen3:32b"})
    assert shown.status_code == 200
    body = shown.json()
    assert body["details"]["family"] == "qwen3"
    assert body["model_info"]["general.architecture"] == "qwen3"
    assert "tools" in body["capabilities"]
    missing = await http.client.post("/api/show", json={"model": "gpt-5"})
    assert missing.status_code == 404 and "model 'gpt-5' not found" in missing.json()["error"]


@pytest.mark.asyncio
async def test_model_latest_tag_is_the_same_model(door: Door) -> None:
    response = await door.client.post(
        "/api/chat", json={**chat_body(stream=False), "model": "llama4-scout:latest"}
    )
    assert response.status_code == 200 and response.json()["model"] == "llama4-scout"
    assert door.engine is not None
    assert door.engine.records()[-1].request.model == "llama4-scout"


@pytest.mark.asyncio
async def test_pull_of_a_catalogue_model_succeeds_at_once(http: Door) -> None:
    pulled = await http.client.post("/api/pull", json={"model": MODEL})
    assert ndjson(pulled)[-1] == {"status": "success"}
    assert (await http.client.post("/api/pull", json={"model": MODEL, "stream": False})).json() == {
        "status": "success"
    }
    assert (await http.client.post("/api/pull", json={"model": "gpt-5"})).status_code == 404


@pytest.mark.asyncio
async def test_openai_models_list(http: Door) -> None:
    listed = (await http.client.get("/v1/models")).json()
    assert listed["object"] == "list"
    assert listed["data"][0] == {
        "id": MODEL,
        "object": "model",
        "created": listed["data"][0]["created"],
        "owned_by": "library",
    }
    assert (await http.client.get("/v1/models/qwen3:32b")).json()["id"] == "qwen3:32b"
    assert (await http.client.get("/v1/models/gpt-5")).status_code == 404


# -- chat and generate ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_chat_without_streaming_is_one_object_with_the_final_figures(http: Door) -> None:
    response = await http.client.post("/api/chat", json=chat_body(stream=False))
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"model", "created_at", "message", *FINAL_FIELDS}
    assert body["model"] == MODEL and body["created_at"].endswith("Z")
    assert body["message"]["role"] == "assistant" and body["message"]["content"]
    assert body["done"] is True and body["done_reason"] == "stop"
    assert body["prompt_eval_count"] == 6  # Why is the sky blue ? : counted as the canister counts
    assert body["eval_count"] > 0 and body["total_duration"] > 0 and body["eval_duration"] > 0


@pytest.mark.asyncio
async def test_chat_streams_ndjson_pieces_that_join_to_the_whole_answer(http: Door) -> None:
    whole = (await http.client.post("/api/chat", json=chat_body(stream=False))).json()
    lines = ndjson(await http.client.post("/api/chat", json=chat_body()))
    assert len(lines) > 2
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    assert all(set(line) == {"model", "created_at", "message", "done"} for line in lines[:-1])
    assert set(lines[-1]) == {"model", "created_at", "message", *FINAL_FIELDS}
    assert "".join(line["message"]["content"] for line in lines) == whole["message"]["content"]
    assert lines[-1]["eval_count"] == whole["eval_count"]


@pytest.mark.asyncio
async def test_generate_streaming_and_not(http: Door) -> None:
    body = {"model": MODEL, "prompt": "Why is the sky blue?", "system": "Be brief."}
    whole = (await http.client.post("/api/generate", json={**body, "stream": False})).json()
    assert set(whole) == {"model", "created_at", "response", "context", *FINAL_FIELDS}
    assert whole["context"] and all(isinstance(i, int) and 0 <= i < 32_000 for i in whole["context"])
    lines = ndjson(await http.client.post("/api/generate", json=body))
    assert lines[-1]["context"] == whole["context"]  # Ollama's final object carries it, streamed or not
    assert "".join(line["response"] for line in lines) == whole["response"] != ""
    assert lines[-1]["done"] is True and lines[-1]["prompt_eval_count"] == whole["prompt_eval_count"] == 9


@pytest.mark.asyncio
async def test_generate_sends_system_and_prompt_as_two_messages(door: Door) -> None:
    await door.client.post(
        "/api/generate", json={"model": MODEL, "prompt": "Hi", "system": "Be brief", "stream": False}
    )
    assert door.engine is not None
    messages = door.engine.records()[-1].request.messages
    assert [(m.role.value, m.content) for m in messages] == [("system", "Be brief"), ("user", "Hi")]


@pytest.mark.asyncio
async def test_no_prompt_loads_the_model_and_keep_alive_zero_unloads_it(http: Door) -> None:
    loaded = (await http.client.post("/api/chat", json={"model": MODEL, "messages": []})).json()
    assert (loaded["done"], loaded["done_reason"], loaded["message"]["content"]) == (True, "load", "")
    unloaded = (await http.client.post("/api/generate", json={"model": MODEL, "keep_alive": 0})).json()
    assert (unloaded["done_reason"], unloaded["response"]) == ("unload", "")
    assert (await http.client.post("/api/generate", json={"model": "gpt-5"})).status_code == 404


@pytest.mark.asyncio
async def test_answer_cut_at_num_predict_says_length(http: Door) -> None:
    body = (
        await http.client.post("/api/chat", json=chat_body(stream=False, options={"num_predict": 3}))
    ).json()
    assert (body["done_reason"], body["eval_count"]) == ("length", 3)


@pytest.mark.asyncio
async def test_num_predict_never_raises_the_profile_cap() -> None:
    async with in_process(custom_limits=Limits(10, 10240, 4)) as door:
        body = (
            await door.client.post("/api/chat", json=chat_body(stream=False, options={"num_predict": 500}))
        ).json()
    assert (body["done_reason"], body["eval_count"]) == ("length", 4)


@pytest.mark.asyncio
async def test_answer_cut_at_the_profile_cap_says_length() -> None:
    async with in_process(custom_limits=Limits(10, 10240, 2)) as door:
        lines = ndjson(
            await door.client.post("/api/generate", json={"model": MODEL, "prompt": "Tell me a story"})
        )
    assert lines[-1]["done_reason"] == "length"
    assert lines[-1]["eval_count"] == 2


@pytest.mark.asyncio
async def test_stop_sequence_cuts_the_text_before_it(http: Door) -> None:
    whole = (await http.client.post("/api/chat", json=chat_body(stream=False))).json()["message"]["content"]
    stop = whole.split()[3]
    cut = (
        await http.client.post(
            "/api/chat", json=chat_body(stream=False, options={"stop": [stop, "never-there"]})
        )
    ).json()
    assert cut["message"]["content"] == whole[: whole.index(stop)]
    assert cut["done_reason"] == "stop"


@pytest.mark.asyncio
async def test_format_json_gives_a_json_object(http: Door) -> None:
    body = (await http.client.post("/api/chat", json=chat_body(stream=False, format="json"))).json()
    assert isinstance(json.loads(body["message"]["content"]), dict)
    schema = {
        "type": "object",
        "properties": {
            "age": {"type": "integer"},
            "available": {"type": "boolean"},
            "name": {"type": "string"},
        },
        "required": ["age", "available", "name"],
    }
    generated = (
        await http.client.post(
            "/api/generate", json={"model": MODEL, "prompt": "Who?", "format": schema, "stream": False}
        )
    ).json()
    value = json.loads(generated["response"])
    assert (
        isinstance(value["age"], int)
        and isinstance(value["available"], bool)
        and isinstance(value["name"], str)
    )


@pytest.mark.asyncio
async def test_a_scripted_json_answer_passes_format_unchanged(door: Door) -> None:
    assert door.engine is not None
    door.engine.add_rule(Rule(Match(contains="status"), Reply(AssistantMessage(content='{"ok": true}'))))
    body = (
        await door.client.post("/api/chat", json=chat_body("status?", stream=False, format="json"))
    ).json()
    assert body["message"]["content"] == '{"ok": true}'


# -- tools ------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_tool_call_arguments_are_a_json_object_of_the_declared_types(http: Door) -> None:
    body = (
        await http.client.post(
            "/api/chat", json=chat_body("Weather in Zurich?", stream=False, tools=[WEATHER_TOOL])
        )
    ).json()
    (call,) = body["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["function"]["name"] == "get_weather"
    arguments = call["function"]["arguments"]
    assert isinstance(arguments["city"], str) and isinstance(arguments["days"], int)
    assert arguments["unit"] in ("celsius", "fahrenheit")
    assert body["message"]["content"] == "" and body["done_reason"] == "stop"


@pytest.mark.asyncio
async def test_streamed_tool_calls_arrive_before_the_final_chunk(http: Door) -> None:
    lines = ndjson(
        await http.client.post("/api/chat", json=chat_body("Weather in Zurich?", tools=[WEATHER_TOOL]))
    )
    assert [bool(line["message"].get("tool_calls")) for line in lines] == [True, False]
    assert lines[-1]["done"] is True


@pytest.mark.asyncio
async def test_tool_round_trip_links_the_result_to_the_call(door: Door) -> None:
    """Official clients drop tool-call ids and name the tool instead; the canister still sees a pair."""
    first = (
        await door.client.post(
            "/api/chat", json=chat_body("Weather in Zurich?", stream=False, tools=[WEATHER_TOOL])
        )
    ).json()
    call = first["message"]["tool_calls"][0]
    messages = [
        {"role": "user", "content": "Weather in Zurich?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": call["function"]}]},
        {"role": "tool", "content": '{"temp": 21}', "tool_name": "get_weather"},
    ]
    second = await door.client.post("/api/chat", json={"model": MODEL, "messages": messages, "stream": False})
    assert second.status_code == 200 and "21" in second.json()["message"]["content"]
    assert door.engine is not None
    record = door.engine.records()[-1]
    assert record.warnings == ()
    assistant, tool = record.request.messages[1], record.request.messages[2]
    assert isinstance(tool, ToolMessage)
    assert tool.tool_call_id == assistant.tool_calls[0].id  # type: ignore[union-attr]


@pytest.mark.asyncio
async def test_json_arguments_reach_the_canister_as_text(door: Door) -> None:
    call = {
        "id": "call_1",
        "function": {"name": "f", "arguments": {"n": 3, "ok": True, "where": {"lat": 1.5}, "s": "x"}},
    }
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "done", "tool_call_id": "call_1"},
    ]
    assert (
        await door.client.post("/api/chat", json={"model": MODEL, "messages": messages, "stream": False})
    ).status_code == 200
    assert door.engine is not None
    assistant = door.engine.records()[-1].request.messages[1]
    arguments = [(a.name, a.value) for a in assistant.tool_calls[0].function.arguments]  # type: ignore[union-attr]
    assert arguments == [("n", "3"), ("ok", "true"), ("where", '{"lat": 1.5}'), ("s", "x")]


@pytest.mark.asyncio
async def test_scripted_tool_call_arguments_come_back_as_json(door: Door) -> None:
    assert door.engine is not None
    door.engine.add_rule(
        rule_from_dict(
            {
                "match": {"contains": "plan"},
                "reply": {
                    "tool_calls": [
                        {
                            "id": "c1",
                            "name": "trip",
                            "arguments": {"city": "Zurich", "days": 3, "zip": "8001"},
                        }
                    ]
                },
            }
        )
    )
    body = (await door.client.post("/api/chat", json=chat_body("plan a trip", stream=False))).json()
    arguments = body["message"]["tool_calls"][0]["function"]["arguments"]
    assert arguments == {"city": "Zurich", "days": 3, "zip": 8001}  # undeclared: JSON-looking text is parsed


# -- errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "mentions"),
    [
        (b"", "missing request body"),
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\xfa", "not valid JSON"),
        (b"[1, 2]", "the request body must be an object, got an array"),
        (b"[" * 100_000, "nested too deeply"),
        (b'{"messages": []}', "model is required"),
        (b'{"model": 8, "messages": []}', "model must be a string, got a number"),
        (b'{"model": "llama3.1:8b", "messages": "hi"}', "messages must be an array, got a string"),
        (b'{"model": "llama3.1:8b", "messages": [{"role": "robot", "content": "hi"}]}', "valid roles"),
        (b'{"model": "llama3.1:8b", "messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
        (b'{"model": "llama3.1:8b", "stream": "yes", "messages": []}', "stream must be true or false"),
        (
            b'{"model": "llama3.1:8b", "options": {"num_predict": "ten"}, "messages": []}',
            "option 'num_predict'",
        ),
        (b'{"model": "llama3.1:8b", "options": {"stop": "x"}, "messages": []}', "option 'stop'"),
        (b'{"model": "llama3.1:8b", "format": "xml", "messages": []}', 'format must be "json"'),
        (b'{"model": "llama3.1:8b", "tools": [{"type": "retrieval"}], "messages": []}', "tools[0].type"),
        (
            b'{"model": "llama3.1:8b", "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]}',
            "text only",
        ),
    ],
    ids=[
        "empty",
        "invalid-json",
        "not-utf8",
        "array",
        "deeply-nested",
        "no-model",
        "model-number",
        "messages-string",
        "unknown-role",
        "content-number",
        "stream-string",
        "option-type",
        "stop-type",
        "format-value",
        "tool-type",
        "images",
    ],
)
@pytest.mark.asyncio
async def test_bad_bodies_get_400_with_a_clear_error(http: Door, content: bytes, mentions: str) -> None:
    response = await http.client.post("/api/chat", content=content)
    assert response.status_code == 400, response.text
    assert mentions in response.json()["error"]
    assert (await http.client.get("/api/version")).status_code == 200


@pytest.mark.asyncio
async def test_a_body_over_2_mib_is_refused_with_413_and_serving_goes_on(http: Door) -> None:
    response = await http.client.post("/api/chat", content=b" " * (3 * 1024 * 1024))
    assert response.status_code == 413
    assert f"the limit is {MAX_BODY_BYTES} bytes" in response.json()["error"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while reading
        for _ in range(48):
            yield b" " * 65536

    streamed = await http.client.post("/api/generate", content=chunks())
    assert streamed.status_code == 413 and "more than" in streamed.json()["error"]
    assert (await http.client.post("/api/chat", json=chat_body(stream=False))).status_code == 200


@pytest.mark.asyncio
async def test_unknown_routes_and_methods_get_json_errors(http: Door) -> None:
    missing = await http.client.get("/api/nothing")
    assert missing.status_code == 404 and "no route GET /api/nothing" in missing.json()["error"]
    wrong = await http.client.get("/api/chat")
    assert wrong.status_code == 405 and "GET is not allowed" in wrong.json()["error"]
    unsupported = await http.client.post("/api/embed", json={"model": MODEL, "input": "x"})
    assert unsupported.status_code == 501 and "does not implement" in unsupported.json()["error"]


@pytest.mark.asyncio
async def test_unknown_fields_are_ignored_and_named_in_a_header(http: Door) -> None:
    body = {**chat_body(stream=False, options={"warp": 9}), "colour": "blue"}
    body["messages"][0]["mood"] = "happy"
    response = await http.client.post("/api/chat", json=body)
    assert response.status_code == 200
    assert response.headers["x-icllm-ignored-fields"] == "colour, messages[0].mood, options.warp"
    assert (
        "x-icllm-ignored-fields"
        not in (await http.client.post("/api/chat", json=chat_body(stream=False))).headers
    )


@pytest.mark.asyncio
async def test_unknown_fields_are_refused_with_strict_requests() -> None:
    async with in_process(strict_requests=True) as door:
        response = await door.client.post("/api/chat", json={**chat_body(), "colour": "blue"})
    assert response.status_code == 400 and "unknown fields: colour" in response.json()["error"]


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (RejectCode.SYS_FATAL, 502),
        (RejectCode.SYS_TRANSIENT, 503),
        (RejectCode.DESTINATION_INVALID, 404),
        (RejectCode.CANISTER_REJECT, 400),
        (RejectCode.CANISTER_ERROR, 500),
        (RejectCode.SYS_UNKNOWN, 504),
    ],
)
@pytest.mark.asyncio
async def test_each_reject_code_has_one_status_and_the_body_carries_the_reject(
    door: Door, code: RejectCode, status: int
) -> None:
    assert door.engine is not None
    door.engine.add_rule(Rule(Match(contains="fail"), Reject(code, "scripted failure")))
    response = await door.client.post("/api/chat", json=chat_body("please fail"))
    assert response.status_code == status
    body = response.json()
    assert body["reject_code"] == int(code) and body["reject_code_name"] == code.name
    assert body["reject_message"] == "scripted failure"
    assert (
        body["error"]
        == f"the LLM canister rejected the call with {code.name} ({int(code)}): scripted failure"
    )


@pytest.mark.asyncio
async def test_a_limit_exceeded_is_a_400_with_the_canisters_reject(http: Door) -> None:
    messages = [{"role": "user", "content": f"message {i}"} for i in range(11)]
    response = await http.client.post("/api/chat", json={"model": MODEL, "messages": messages})
    assert response.status_code == 400
    assert response.json()["reject_code"] == 4
    assert "too many messages: the request has 11, the limit is 10" in response.json()["error"]


@pytest.mark.asyncio
async def test_unknown_model_is_404_with_the_reject(http: Door) -> None:
    response = await http.client.post("/api/chat", json={**chat_body(), "model": "gpt-5"})
    assert response.status_code == 404
    body = response.json()
    assert body["error"].startswith("model 'gpt-5' not found: this LLM canister serves llama3.1:8b, ")
    assert body["error"].count("gpt-5") == 1, "the model is named once"
    assert body["reject_code"] == 4 and body["reject_message"].startswith("unknown model 'gpt-5'")


@pytest.mark.asyncio
async def test_caller_header_names_the_principal(door: Door) -> None:
    caller = "rrkah-fqaaa-aaaaa-aaaaq-cai"
    await door.client.post("/api/chat", json=chat_body(stream=False), headers={"X-Icllm-Caller": caller})
    assert door.engine is not None
    assert door.engine.records()[-1].caller == caller
    await door.client.post("/api/chat", json=chat_body(stream=False))
    assert door.engine.records()[-1].caller == "2vxsx-fae"
    bad = await door.client.post("/api/chat", json=chat_body(), headers={"X-Icllm-Caller": "Alice"})
    assert bad.status_code == 400 and "not a textual principal" in bad.json()["error"]
    cycles = await door.client.post("/api/chat", json=chat_body(), headers={"X-Icllm-Cycles": "-5"})
    assert cycles.status_code == 400 and "natural number of cycles" in cycles.json()["error"]
    superscript = await door.client.post("/api/chat", json=chat_body(), headers={b"X-Icllm-Cycles": b"\xb2"})
    assert superscript.status_code == 400 and "natural number of cycles" in superscript.json()["error"]
    huge = await door.client.post("/api/chat", json=chat_body(), headers={"X-Icllm-Cycles": str(2**70)})
    assert huge.status_code == 400 and "at most 18446744073709551615" in huge.json()["error"]


# -- OpenAI-compatible routes -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_openai_chat_completion_shape(http: Door) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Why is the sky blue?"}],
        "max_tokens": 3,
    }
    completion = (await http.client.post("/v1/chat/completions", json=body)).json()
    assert completion["object"] == "chat.completion" and completion["id"].startswith("chatcmpl-")
    (choice,) = completion["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "length"
    assert completion["usage"] == {"prompt_tokens": 6, "completion_tokens": 3, "total_tokens": 9}


@pytest.mark.asyncio
async def test_openai_streaming_is_sse_ending_with_done(http: Door) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    whole = (await http.client.post("/v1/chat/completions", json={**body, "stream": False})).json()
    events = sse(await http.client.post("/v1/chat/completions", json=body))
    assert all(event["object"] == "chat.completion.chunk" for event in events)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert events[-2]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert events[-1]["choices"] == [] and events[-1]["usage"] == whole["usage"]


@pytest.mark.asyncio
async def test_openai_tool_calls_carry_arguments_as_json_text(http: Door) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Weather in Zurich?"}],
        "tools": [WEATHER_TOOL],
    }
    completion = (await http.client.post("/v1/chat/completions", json=body)).json()
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function" and isinstance(json.loads(call["function"]["arguments"])["days"], int)
    followup = {
        "model": MODEL,
        "messages": [
            body["messages"][0],
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "content": "21 degrees", "tool_call_id": call["id"]},
        ],
    }
    answer = (await http.client.post("/v1/chat/completions", json=followup)).json()
    assert "21 degrees" in answer["choices"][0]["message"]["content"]


@pytest.mark.asyncio
async def test_openai_errors_have_openais_shape(http: Door) -> None:
    missing = await http.client.post(
        "/v1/chat/completions", json={"model": "gpt-5", "messages": [{"role": "user", "content": "x"}]}
    )
    assert missing.status_code == 404
    error = missing.json()["error"]
    assert error["type"] == "not_found_error" and error["reject_code"] == 4 and "gpt-5" in error["message"]
    bad = await http.client.post("/v1/chat/completions", json={"model": MODEL, "messages": [], "stop": 5})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


# -- metrics ----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_metrics_count_requests_rejects_tokens_and_latency(http: Door) -> None:
    await http.client.post("/api/chat", json=chat_body(stream=False))
    await http.client.post("/api/chat", json={**chat_body(), "model": "gpt-5"})
    response = await http.client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }

    def value(metric: str, **labels: str) -> float:
        return samples[(metric, tuple(sorted(labels.items())))]

    assert value("icllm_http_requests_total", route="/api/chat", method="POST", status="200") == 1
    assert value("icllm_http_requests_total", route="/api/chat", method="POST", status="404") == 1
    assert value("icllm_calls_total") == 2 and value("icllm_calls_answered_total") == 1
    assert value("icllm_rejects_total", code="4", name="CANISTER_REJECT") == 1
    assert value("icllm_rejects_total", code="2", name="SYS_TRANSIENT") == 0
    assert value("icllm_input_tokens_total") == 12 and value("icllm_output_tokens_total") > 0
    assert value("icllm_queue_depth") == 0 and value("icllm_jobs_in_flight") == 0
    assert value("icllm_http_request_duration_seconds_count", route="/api/chat") == 2
    assert value("icllm_call_latency_seconds", quantile="0.5") > 0


# -- through a real emulator: the same canister behind every door -----------------------------------


def test_http_prompts_appear_in_grpc_history_and_obey_scripted_rules(emu: Stubs) -> None:
    rule = cpb.Rule(
        match=cpb.RuleMatch(contains="speed of light"),
        action=cpb.RuleAction(reply=cpb.ReplyAction(content="299,792,458 m/s")),
    )
    emu.control.AddRules(cpb.AddRulesRequest(rules=[rule]))
    url = emu.emulator.ports.http_url
    assert url is not None
    caller = "rrkah-fqaaa-aaaaa-aaaaq-cai"
    with httpx.Client(base_url=url) as client:
        answer = client.post(
            "/api/chat",
            json=chat_body("What's the speed of light?", stream=False),
            headers={"X-Icllm-Caller": caller},
        ).json()
    assert answer["message"]["content"] == "299,792,458 m/s"
    (record,) = emu.control.GetHistory(cpb.GetHistoryRequest()).calls
    assert (record.method, record.caller, record.rule_id) == ("v1_chat", caller, "rule-1")
    assert record.request == pb.V1ChatRequest(
        model=MODEL, messages=[pb.ChatMessageV1(user=pb.UserMessage(content="What's the speed of light?"))]
    )
    assert record.message.content == "299,792,458 m/s"


def test_http_and_grpc_get_the_same_answer_to_the_same_request(emu: Stubs) -> None:
    url = emu.emulator.ports.http_url
    assert url is not None
    with httpx.Client(base_url=url) as client:
        over_http = client.post("/api/chat", json=chat_body(stream=False)).json()["message"]["content"]
    request = pb.V1ChatRequest(
        model=MODEL, messages=[pb.ChatMessageV1(user=pb.UserMessage(content="Why is the sky blue?"))]
    )
    assert emu.canister.V1Chat(request).message.content == over_http


def test_a_full_queue_is_503_like_sys_transient(start_emulator: Callable[..., Stubs]) -> None:
    emu = start_emulator(queue_capacity=1)
    emu.control.SetPaused(cpb.SetPausedRequest(paused=True))
    url = emu.emulator.ports.http_url
    assert url is not None
    with httpx.Client(base_url=url, timeout=30) as client, ThreadPoolExecutor(max_workers=1) as pool:
        waiting = pool.submit(client.post, "/api/chat", json=chat_body("first", stream=False))
        wait_until(lambda: emu.control.GetStats(cpb.GetStatsRequest()).queue_depth == 1)
        full = client.post("/api/chat", json=chat_body("second", stream=False))
        assert full.status_code == 503 and full.json()["reject_code"] == 2
        emu.control.SetPaused(cpb.SetPausedRequest(paused=False))
        assert waiting.result(timeout=30).status_code == 200


def test_a_client_that_hangs_up_is_recorded_like_a_cancelled_caller(emu: Stubs) -> None:
    emu.control.SetPaused(cpb.SetPausedRequest(paused=True))
    url = emu.emulator.ports.http_url
    assert url is not None
    with httpx.Client(base_url=url, timeout=0.3) as client, pytest.raises(httpx.ReadTimeout):
        client.post("/api/chat", json=chat_body(stream=False))

    def recorded() -> bool:
        calls = emu.control.GetHistory(cpb.GetHistoryRequest()).calls
        return len(calls) == 1 and calls[0].WhichOneof("outcome") == "reject"

    wait_until(recorded)
    (record,) = emu.control.GetHistory(cpb.GetHistoryRequest()).calls
    assert (record.reject.code, record.reject.message) == (6, "the caller cancelled the call")
    emu.control.SetPaused(cpb.SetPausedRequest(paused=False))
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/api/chat", json=chat_body(stream=False)).status_code == 200


def test_a_client_that_disconnects_mid_stream_leaves_the_server_serving(
    start_emulator: Callable[..., Stubs],
) -> None:
    url = start_emulator(profile="unlimited").emulator.ports.http_url
    assert url is not None
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(3):
            with client.stream(
                "POST", "/api/generate", json={"model": MODEL, "prompt": "Tell me everything"}
            ) as stream:
                first = next(stream.iter_lines())
                assert json.loads(first)["done"] is False
            # leaving the block closes the connection with the rest of the stream unread
        assert client.get("/api/version").status_code == 200
        assert client.post("/api/chat", json=chat_body(stream=False)).status_code == 200


def test_stop_lets_an_http_call_in_flight_finish(emu: Stubs) -> None:
    rule = cpb.Rule(
        match=cpb.RuleMatch(contains="drain"),
        action=cpb.RuleAction(delay_seconds=0.5, reply=cpb.ReplyAction(content="drained")),
    )
    emu.control.AddRules(cpb.AddRulesRequest(rules=[rule]))
    url = emu.emulator.ports.http_url
    assert url is not None
    with httpx.Client(base_url=url, timeout=30) as client, ThreadPoolExecutor(max_workers=1) as pool:
        call = pool.submit(client.post, "/api/chat", json=chat_body("please drain", stream=False))
        wait_until(lambda: emu.control.GetStats(cpb.GetStatsRequest()).in_flight == 1)
        stopping = threading.Thread(target=emu.emulator.stop, kwargs={"grace": 10.0})
        stopping.start()
        response = call.result(timeout=30)
        stopping.join(30)
    assert response.status_code == 200 and response.json()["message"]["content"] == "drained"
    with httpx.Client(base_url=url, timeout=5) as client, pytest.raises(httpx.ConnectError):
        client.get("/api/version")


# -- the process: ports, port file, environment ------------------------------------------------------


def test_http_port_in_use_fails_with_exit_code_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "icllm_emulator", "serve", "--grpc-port", "0", "--ollama-port", str(port)],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2, result.stderr
    assert f"cannot listen for HTTP (the Ollama API) on 127.0.0.1:{port}" in result.stderr
    assert "--ollama-port 0 picks a free port" in result.stderr and "Traceback" not in result.stderr


def test_http_port_in_use_in_process_is_a_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        emulator = ThreadedEmulator(EmulatorConfig(grpc_port=0, ollama_port=taken.getsockname()[1]))
        with pytest.raises(ConfigError, match="cannot listen for HTTP"):
            emulator.start()


def test_port_file_names_the_http_url_or_null_when_off(tmp_path: Path) -> None:
    for port, expect_http in ((0, True), (None, False)):
        port_file = tmp_path / f"ports-{port}.json"
        with ThreadedEmulator(
            EmulatorConfig(grpc_port=0, ollama_port=port, port_file=str(port_file))
        ) as emulator:
            written = json.loads(port_file.read_text())
            assert written["http"] == emulator.ports.http
            assert written["http_url"] == emulator.ports.http_url
            assert (written["http_url"] is not None) is expect_http
            if expect_http:
                assert written["http_url"] == f"http://127.0.0.1:{written['http']}"


def test_bad_ollama_port_values_are_refused() -> None:
    with pytest.raises(ConfigError, match="Ollama HTTP port must be 0-65535"):
        EmulatorConfig(ollama_port=70000)
    from icllm_emulator.cli import build_parser, config_from_args

    args = build_parser({"ICLLM_OLLAMA_PORT": "off"}).parse_args(["serve"])
    assert config_from_args(args).ollama_port is None
    assert config_from_args(build_parser({}).parse_args(["serve"])).ollama_port == 11434


def test_ollama_env_points_clients_at_the_emulator() -> None:
    env = ollama_env("http://127.0.0.1:40123")
    assert env["OLLAMA_HOST"] == "127.0.0.1:40123"
    assert env["OLLAMA_BASE_URL"] == "http://127.0.0.1:40123"
    assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:40123/v1"
    assert ollama_env("http://[::1]:8080/")["OLLAMA_HOST"] == "[::1]:8080"
    with pytest.raises(ValueError, match="expected a base URL"):
        ollama_env("127.0.0.1")
