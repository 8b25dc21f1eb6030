"""One path from queue to answer: the queue's fast path and a worker give the same outcome and history."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from icllm_emulator.backends import Backend
from icllm_emulator.config import EmulatorConfig
from icllm_emulator.domain import (
    Answer,
    AssistantMessage,
    ChatRequest,
    Reject,
    RejectCode,
    ToolPolicy,
    UserMessage,
)
from icllm_emulator.engine import Engine
from icllm_emulator.rules import Match, Reply, Rule
from tests.waiting import until

CALLER = "2vxsx-fae"
MODEL = "llama3.1:8b"


class Refuses(Backend):
    """A backend that refuses one prompt and fails on another, answering the rest at once."""

    name = "refuses"

    def __init__(self) -> None:
        self.seeds: list[int] = []

    def answer_now(self, request: ChatRequest, max_output_tokens: int | None) -> Answer | None:
        text = request.messages[-1].content or ""
        if "refuse" in text:
            raise Reject(RejectCode.CANISTER_REJECT, "this backend refuses it")
        if "bug" in text:
            raise RuntimeError("a backend bug")
        return Answer(AssistantMessage(content=f"echo: {text}"), output_tokens=2)

    async def generate(self, request: ChatRequest, max_output_tokens: int | None) -> Answer:
        answer = self.answer_now(request, max_output_tokens)
        assert answer is not None
        return answer

    def reconfigure(self, seed: int, tool_policy: ToolPolicy) -> None:
        self.seeds.append(seed)


@pytest_asyncio.fixture
async def engine() -> AsyncIterator[Engine]:
    engine = Engine(EmulatorConfig(ollama_port=None))
    engine.start()
    yield engine
    await engine.stop()


async def outcome(engine: Engine, text: str, *, through_a_worker: bool) -> tuple[Any, Any]:
    """The caller's outcome and its history record's, by the fast path or by a worker's lease."""
    request = ChatRequest(model=MODEL, messages=(UserMessage(text),))
    if through_a_worker:
        engine.set_paused(True)  # nothing is handed over at submission: a worker must lease it
    call = asyncio.ensure_future(engine.chat(request, CALLER))
    if through_a_worker:
        await until(lambda: len(engine.jobs()) == 1, "the job in the queue")
        assert not call.done()
        engine.set_paused(False)
    try:
        result: Any = (await call).message
    except Reject as reject:
        result = (reject.code, reject.message)
    record = engine.records()[-1]
    kept = record.outcome.message if isinstance(record.outcome, Answer) else record.outcome
    return result, (record.job_state, kept, record.input_tokens, record.unexpected)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "text",
    ["scripted", "scripted reject", "unscripted fake", "refuse", "bug"],
)
async def test_the_fast_path_and_a_worker_give_the_same_outcome_and_history(
    engine: Engine, text: str
) -> None:
    engine.add_rule(Rule(Match(contains="scripted reject"), Reject(RejectCode.SYS_TRANSIENT, "busy")))
    engine.add_rule(Rule(Match(contains="scripted"), Reply(AssistantMessage(content="a scripted answer"))))
    if text in ("refuse", "bug"):
        engine.cassettes.inner = Refuses()
    fast = await outcome(engine, text, through_a_worker=False)
    slow = await outcome(engine, text, through_a_worker=True)
    assert fast == slow
    if text == "bug":
        assert fast[0] == (RejectCode.CANISTER_REJECT, "the AI worker failed: RuntimeError: a backend bug")


@pytest.mark.asyncio
async def test_a_seed_change_reaches_the_backend_behind_the_cassette_deck(engine: Engine) -> None:
    backend = Refuses()
    engine.cassettes.inner = backend
    engine.configure(seed=7)
    engine.reset()
    assert backend.seeds == [7, 0]
