"""The canister core through a whole Engine: limits, models, warnings, deadlines, scripts, faults, stats."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from icllm_emulator.backends import Backend
from icllm_emulator.backends.fake import FakeBackend
from icllm_emulator.billing import MIN_ATTACHED
from icllm_emulator.clock import ClockKind
from icllm_emulator.config import EmulatorConfig
from icllm_emulator.domain import (
    Answer,
    AssistantMessage,
    ChatRequest,
    FunctionCall,
    Message,
    Parameters,
    Property,
    Reject,
    RejectCode,
    SystemMessage,
    Tool,
    ToolCall,
    ToolMessage,
    UserMessage,
)
from icllm_emulator.engine import Engine
from icllm_emulator.history import CallRecord
from icllm_emulator.rules import Hang, Match, Reply, Rule
from icllm_emulator.settings import DEFAULT_MODELS, PROFILES
from icllm_emulator.tokens import count_tokens
from tests.waiting import until

MODEL = "llama3.1:8b"
CALLER = "2vxsx-fae"
KIB = 1024

MakeEngine = Callable[..., Engine]


@pytest_asyncio.fixture
async def make_engine() -> AsyncIterator[MakeEngine]:
    """Build engines with the given config fields, started unless start=False; all stop at the end."""
    engines: list[Engine] = []

    def make(*, start: bool = True, **fields: Any) -> Engine:
        engine = Engine(EmulatorConfig(**fields))
        engines.append(engine)
        if start:
            engine.start()
        return engine

    yield make
    for engine in engines:
        await engine.stop()


@pytest_asyncio.fixture
async def engine(make_engine: MakeEngine) -> Engine:
    """An engine with the default configuration: current profile, fake backend, one worker, real clock."""
    return make_engine()


@pytest_asyncio.fixture
async def virtual(make_engine: MakeEngine) -> Engine:
    """An engine on a virtual clock."""
    return make_engine(clock=ClockKind.VIRTUAL)


def profile(name: str) -> dict[str, Any]:
    return {"profile": name}


async def ask(engine: Engine, *messages: Message, model: str = MODEL, tools: tuple[Tool, ...] = ()) -> Answer:
    return await engine.chat(ChatRequest(model=model, messages=messages, tools=tools), caller=CALLER)


async def rejected(engine: Engine, *messages: Message, model: str = MODEL) -> Reject:
    with pytest.raises(Reject) as caught:
        await ask(engine, *messages, model=model)
    return caught.value


def last_record(engine: Engine) -> CallRecord:
    return engine.records()[-1]


def words(count: int) -> str:
    return " ".join(f"word{n}" for n in range(count))


def long_reply_rule(word_count: int) -> Rule:
    return Rule(Match(), Reply(AssistantMessage(content=words(word_count))))


# -- message count -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_ten_messages_are_accepted(engine: Engine) -> None:
    answer = await ask(engine, *[UserMessage(f"message {n}") for n in range(10)])

    assert answer.message.content
    assert last_record(engine).job_state == "DONE"


@pytest.mark.asyncio
async def test_eleventh_message_is_rejected(engine: Engine) -> None:
    reject = await rejected(engine, *[UserMessage(f"message {n}") for n in range(11)])

    assert reject.code is RejectCode.CANISTER_REJECT
    assert "11" in reject.message
    assert "10" in reject.message
    assert reject.message.startswith("too many messages: the request has 11, the limit is 10")
    assert last_record(engine).job_state == "NOT_QUEUED"
    assert last_record(engine).outcome == reject


@pytest.mark.asyncio
async def test_empty_message_list_is_rejected(engine: Engine) -> None:
    reject = await rejected(engine)

    assert reject.code is RejectCode.CANISTER_REJECT
    assert "no messages" in reject.message


# -- prompt size ---------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_prompt_of_exactly_10_kib_is_accepted(engine: Engine) -> None:
    answer = await ask(engine, UserMessage("a" * (10 * KIB)))

    assert isinstance(answer, Answer)


@pytest.mark.asyncio
async def test_prompt_one_byte_over_10_kib_is_rejected(engine: Engine) -> None:
    reject = await rejected(engine, UserMessage("a" * (10 * KIB + 1)))

    assert reject.code is RejectCode.CANISTER_REJECT
    assert "10241 bytes" in reject.message
    assert "10240 bytes" in reject.message


@pytest.mark.asyncio
async def test_prompt_size_is_summed_across_messages(engine: Engine) -> None:
    half = 5 * KIB
    await ask(engine, SystemMessage("s" * half), UserMessage("u" * half))

    reject = await rejected(engine, SystemMessage("s" * half), UserMessage("u" * (half + 1)))

    assert reject.code is RejectCode.CANISTER_REJECT
    assert "10241 bytes" in reject.message


@pytest.mark.asyncio
async def test_prompt_size_counts_utf8_bytes_not_characters(engine: Engine) -> None:
    accented = "é" * (5 * KIB)  # 5120 characters, 10240 bytes
    assert len(accented.encode("utf-8")) == 10 * KIB

    await ask(engine, UserMessage(accented))
    reject = await rejected(engine, UserMessage(accented + "a"))  # 5121 characters, 10241 bytes

    assert reject.code is RejectCode.CANISTER_REJECT
    assert "10241 bytes" in reject.message


@pytest.mark.asyncio
async def test_assistant_tool_calls_without_content_add_no_bytes(engine: Engine) -> None:
    call = ToolCall("c1", FunctionCall("lookup"))
    answer = await ask(
        engine,
        UserMessage("x" * (10 * KIB)),
        AssistantMessage(tool_calls=(call,)),
        ToolMessage("", tool_call_id="c1"),
    )

    assert isinstance(answer, Answer)


# -- models and profiles ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_unknown_model_is_rejected_naming_every_known_model(engine: Engine) -> None:
    reject = await rejected(engine, UserMessage("hi"), model="gpt-5")

    assert reject.code is RejectCode.CANISTER_REJECT
    assert "'gpt-5'" in reject.message
    for model in DEFAULT_MODELS:
        assert model in reject.message


@pytest.mark.asyncio
async def test_every_catalogued_model_is_served(engine: Engine) -> None:
    for model in DEFAULT_MODELS:
        request = ChatRequest(model=model, messages=(UserMessage("hi"),))
        answer = await engine.chat(request, caller=CALLER, cycles=MIN_ATTACHED)
        assert answer.message.content


@pytest.mark.asyncio
async def test_unlimited_profile_accepts_eleven_messages_and_20_kib(make_engine: MakeEngine) -> None:
    engine = make_engine(**profile("unlimited"))

    many = await ask(engine, *[UserMessage(f"message {n}") for n in range(11)])
    large = await ask(engine, UserMessage("a" * (20 * KIB)))

    assert isinstance(many, Answer)
    assert isinstance(large, Answer)


@pytest.mark.asyncio
async def test_launch_2025_profile_cuts_a_long_reply_at_200_tokens(make_engine: MakeEngine) -> None:
    engine = make_engine(**profile("launch-2025"))
    engine.add_rule(long_reply_rule(500))

    answer = await ask(engine, UserMessage("tell me a long story"))

    assert answer.message.content is not None
    assert count_tokens(answer.message.content) == 200
    assert answer.message.content == words(200)
    assert answer.truncated
    assert answer.output_tokens == 200
    recorded = last_record(engine).outcome
    assert isinstance(recorded, Answer)
    assert recorded.truncated
    assert recorded.output_tokens == 200


@pytest.mark.asyncio
async def test_current_profile_cuts_a_long_reply_at_1000_tokens(engine: Engine) -> None:
    engine.add_rule(long_reply_rule(1500))

    answer = await ask(engine, UserMessage("tell me a very long story"))

    assert answer.message.content is not None
    assert count_tokens(answer.message.content) == 1000
    assert answer.truncated


@pytest.mark.asyncio
async def test_reply_within_the_cap_is_not_marked_truncated(engine: Engine) -> None:
    engine.add_rule(long_reply_rule(500))

    answer = await ask(engine, UserMessage("tell me a story"))

    assert answer.message.content == words(500)
    assert not answer.truncated


@pytest.mark.asyncio
async def test_fake_answers_stay_within_the_launch_cap(make_engine: MakeEngine) -> None:
    engine = make_engine(**profile("launch-2025"))

    answer = await ask(engine, UserMessage("Write an essay about the Internet Computer."))

    assert count_tokens(answer.message.content or "") <= 200


# -- warnings and strict requests ------------------------------------------------------------------


def orphan_tool_result() -> tuple[Message, ...]:
    return (UserMessage("what is the weather?"), ToolMessage("sunny", tool_call_id="call_nobody_made"))


@pytest.mark.asyncio
async def test_tool_result_for_an_unknown_call_is_accepted_with_a_warning(engine: Engine) -> None:
    answer = await ask(engine, *orphan_tool_result())

    assert isinstance(answer, Answer)
    warnings = last_record(engine).warnings
    assert len(warnings) == 1
    assert "'call_nobody_made'" in warnings[0]
    assert "message 2" in warnings[0]


@pytest.mark.asyncio
async def test_tool_result_for_an_unknown_call_is_rejected_with_strict_requests(engine: Engine) -> None:
    engine.configure(strict_requests=True)

    reject = await rejected(engine, *orphan_tool_result())

    assert reject.code is RejectCode.CANISTER_REJECT
    assert reject.message.startswith("strict requests: ")
    assert "'call_nobody_made'" in reject.message


@pytest.mark.asyncio
async def test_tool_result_after_its_call_gives_no_warning(engine: Engine) -> None:
    call = ToolCall("call_1", FunctionCall("get_weather"))

    await ask(
        engine, UserMessage("weather?"), AssistantMessage(tool_calls=(call,)), ToolMessage("sunny", "call_1")
    )

    assert last_record(engine).warnings == ()


@pytest.mark.asyncio
async def test_tool_requiring_an_undeclared_parameter_is_only_a_warning(engine: Engine) -> None:
    tool = Tool(
        "get_weather",
        parameters=Parameters(properties=(Property("city", "string"),), required=("city", "station")),
    )

    answer = await ask(engine, UserMessage("weather in Paris?"), tools=(tool,))

    assert isinstance(answer, Answer)
    assert last_record(engine).warnings == (
        "tool 'get_weather' requires 'station', which is not among its properties",
    )


@pytest.mark.asyncio
async def test_assistant_calling_tools_absent_from_the_request_gives_no_warning(engine: Engine) -> None:
    call = ToolCall("c1", FunctionCall("tool_from_an_earlier_turn"))

    answer = await ask(
        engine, UserMessage("go on"), AssistantMessage(tool_calls=(call,)), ToolMessage("done", "c1")
    )

    assert isinstance(answer, Answer)
    assert last_record(engine).warnings == ()


# -- caller deadline -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_caller_deadline_gives_sys_unknown_while_the_job_still_finishes(
    make_engine: MakeEngine,
) -> None:
    engine = make_engine(clock=ClockKind.VIRTUAL, caller_deadline=300)
    engine.add_rule(Rule(Match(), Reply(AssistantMessage(content="late answer")), delay=400))
    call = asyncio.ensure_future(ask(engine, UserMessage("slow question")))
    await engine.advance_clock(0)
    record = last_record(engine)
    assert record.job_state == "LEASED"

    await engine.advance_clock(301)

    assert call.done()
    with pytest.raises(Reject) as caught:
        await call
    assert caught.value.code is RejectCode.SYS_UNKNOWN
    assert "300 s" in caught.value.message
    assert record.job_state == "LEASED", "the worker is still working when the caller gives up"

    await engine.advance_clock(100)

    assert record.job_state == "DONE"
    assert record.job is not None
    assert record.job.outcome == Answer(AssistantMessage(content="late answer"), output_tokens=2)
    assert record.outcome == caught.value, "the caller's outcome stays the reject it received"
    stats = engine.stats()
    assert (stats.calls, stats.answered, stats.rejected, stats.pending) == (1, 0, 1, 0)


@pytest.mark.asyncio
async def test_answer_before_the_caller_deadline_is_delivered(make_engine: MakeEngine) -> None:
    engine = make_engine(clock=ClockKind.VIRTUAL, caller_deadline=300)
    engine.add_rule(Rule(Match(), Reply(AssistantMessage(content="in time")), delay=200))
    call = asyncio.ensure_future(ask(engine, UserMessage("question")))
    await engine.advance_clock(0)

    await engine.advance_clock(201)

    assert call.done()
    assert (await call).message.content == "in time"


# -- scripted rules ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_strict_rules_reject_an_unscripted_prompt_explaining_each_rule(engine: Engine) -> None:
    engine.configure(strict_rules=True)
    engine.add_rule(Rule(Match(contains="weather"), Reply(AssistantMessage(content="sunny")), id="weather"))
    engine.add_rule(Rule(Match(model="qwen3:32b"), Reply(AssistantMessage(content="qwen")), id="qwen-only"))

    reject = await rejected(engine, UserMessage("What time is it?"))

    assert reject.code is RejectCode.CANISTER_REJECT
    assert "What time is it?" in reject.message
    assert "weather" in reject.message and "no message contains 'weather'" in reject.message
    assert "qwen-only" in reject.message and "model is 'llama3.1:8b', not 'qwen3:32b'" in reject.message


@pytest.mark.asyncio
async def test_strict_rules_answer_a_scripted_prompt(engine: Engine) -> None:
    engine.configure(strict_rules=True)
    engine.add_rule(Rule(Match(contains="weather"), Reply(AssistantMessage(content="sunny"))))

    answer = await ask(engine, UserMessage("the weather?"))

    assert answer.message.content == "sunny"


@pytest.mark.asyncio
async def test_scripted_reject_reaches_the_caller_with_its_code_and_message(engine: Engine) -> None:
    engine.add_rule(Rule(Match(), Reject(RejectCode.SYS_TRANSIENT, "the subnet is busy")))

    reject = await rejected(engine, UserMessage("hi"))

    assert reject == Reject(RejectCode.SYS_TRANSIENT, "the subnet is busy")
    assert last_record(engine).job_state == "FAILED"


@pytest.mark.asyncio
async def test_scripted_reply_with_tool_calls_is_returned_as_is(engine: Engine) -> None:
    call = ToolCall("call_9", FunctionCall("get_weather"))
    engine.add_rule(Rule(Match(tool="get_weather"), Reply(AssistantMessage(tool_calls=(call,)))))

    answer = await ask(engine, UserMessage("weather?"), tools=(Tool("get_weather"),))

    assert answer.message == AssistantMessage(tool_calls=(call,))
    assert not answer.truncated


@pytest.mark.asyncio
async def test_hanging_worker_ends_in_a_reject_after_max_attempts(make_engine: MakeEngine) -> None:
    engine = make_engine(clock=ClockKind.VIRTUAL, lease_seconds=10, max_attempts=2)
    engine.add_rule(Rule(Match(contains="hang"), Hang()))
    call = asyncio.ensure_future(ask(engine, UserMessage("please hang")))
    await engine.advance_clock(0)
    record = last_record(engine)
    assert record.job is not None and record.job.attempt == 1

    await engine.advance_clock(11)
    assert not call.done()
    assert record.job.attempt == 2
    await engine.advance_clock(11)

    assert call.done()
    with pytest.raises(Reject) as caught:
        await call
    assert caught.value.code is RejectCode.CANISTER_REJECT
    assert "after 2 attempts" in caught.value.message
    answer = await ask(engine, UserMessage("an ordinary question"))
    assert answer.message.content, "the worker that hung must still serve the next call"


# -- determinism -----------------------------------------------------------------------------------


QUESTION = (SystemMessage("Be brief."), UserMessage("What is a canister?"))


@pytest.mark.asyncio
async def test_same_request_gets_the_same_answer_from_separate_engines(make_engine: MakeEngine) -> None:
    first = await ask(make_engine(), *QUESTION)
    second = await ask(make_engine(), *QUESTION)

    assert first == second
    assert first.message.content


@pytest.mark.asyncio
async def test_different_seed_gives_a_different_answer(make_engine: MakeEngine) -> None:
    default = await ask(make_engine(), *QUESTION)
    reseeded = await ask(make_engine(seed=1), *QUESTION)

    assert default != reseeded


# -- backend failures ------------------------------------------------------------------------------


class FailsOnce(Backend):
    """A backend whose first call raises, then answers like the fake backend."""

    name: str = "fails-once"

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.calls = 0

    async def generate(self, request: ChatRequest, max_output_tokens: int | None) -> Answer:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("GPU on fire")
        return await self.inner.generate(request, max_output_tokens)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.asyncio
async def test_backend_error_rejects_the_call_and_the_worker_serves_the_next(make_engine: MakeEngine) -> None:
    engine = make_engine(start=False)
    backend = FailsOnce(FakeBackend())
    engine.backend = backend  # workers take the engine's backend when they start
    engine.start()

    reject = await rejected(engine, UserMessage("first"))
    answer = await ask(engine, UserMessage("second"))

    assert reject.code is RejectCode.CANISTER_REJECT
    assert reject.message == "the AI worker failed: RuntimeError: GPU on fire"
    assert backend.calls == 2
    assert answer == await FakeBackend().generate(
        ChatRequest(MODEL, (UserMessage("second"),)), PROFILES["current"].max_output_tokens
    )


# -- history and reset -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_history_counts_calls_answers_and_rejects_by_code(engine: Engine) -> None:
    engine.add_rule(Rule(Match(contains="busy"), Reject(RejectCode.SYS_TRANSIENT, "busy")))
    await ask(engine, UserMessage("one"))
    await ask(engine, UserMessage("two"))
    await rejected(engine, *[UserMessage("m")] * 11)
    await rejected(engine, UserMessage("hi"), model="nope")
    await rejected(engine, UserMessage("busy now"))

    stats = engine.stats()

    assert stats.calls == 5
    assert stats.answered == 2
    assert stats.rejected == 3
    assert stats.pending == 0
    assert stats.rejects_by_code == {int(RejectCode.CANISTER_REJECT): 2, int(RejectCode.SYS_TRANSIENT): 1}
    assert [record.caller for record in engine.records()] == [CALLER] * 5


@pytest.mark.asyncio
async def test_reset_rejects_waiting_calls_and_clears_rules_and_history(make_engine: MakeEngine) -> None:
    engine = make_engine(workers=0)
    engine.add_rule(Rule(Match(), Reply(AssistantMessage(content="scripted"))))
    calls = [asyncio.ensure_future(ask(engine, UserMessage(f"waiting {n}"))) for n in range(2)]
    await until(lambda: len(engine.jobs()) == 2, "both calls in the queue")
    assert engine.jobs(), "the calls should be waiting in the queue"

    engine.reset()
    outcomes = await asyncio.gather(*calls, return_exceptions=True)

    for outcome in outcomes:
        assert isinstance(outcome, Reject)
        assert outcome.code is RejectCode.SYS_TRANSIENT
    assert engine.rule_states() == []
    assert list(engine.records()) == []
    stats = engine.stats()
    assert (stats.calls, stats.answered, stats.rejected, stats.pending) == (0, 0, 0, 0)
    assert stats.rejects_by_code == {}


@pytest.mark.asyncio
async def test_reset_keeps_idle_workers_and_replaces_one_inside_a_delay(make_engine: MakeEngine) -> None:
    engine = make_engine(workers=2)
    started = ("builtin-1", "builtin-2")
    await until(lambda: all(engine.queue.is_idle(worker) for worker in started), "idle workers")
    engine.add_rule(Rule(Match(contains="slow"), Reply(AssistantMessage(content="late")), delay=3600))
    call = asyncio.ensure_future(ask(engine, UserMessage("slow")))
    await until(lambda: [bool(job.worker_id) for job in engine.jobs()] == [True], "the slow call leased")
    (busy,) = [job.worker_id for job in engine.jobs()]
    engine.configure(seed=7)

    engine.reset()

    assert isinstance((await asyncio.gather(call, return_exceptions=True))[0], Reject)
    (idle,) = set(started) - {busy}
    await until(lambda: engine.queue.is_idle("builtin-3"), "a fresh worker in place of the busy one")
    assert engine.queue.is_idle(idle), "an idle worker should be kept"
    assert not engine.queue.is_idle(busy), "the worker inside the delay should be gone"
    assert engine.config == engine.initial_config
    assert (await ask(engine, UserMessage("hi"))).message.content


@pytest.mark.asyncio
async def test_full_queue_rejects_with_sys_transient_and_keeps_the_rules_use(make_engine: MakeEngine) -> None:
    engine = make_engine(workers=0, queue_capacity=1)
    engine.add_rule(Rule(Match(contains="special"), Reply(AssistantMessage(content="scripted")), times=1))
    waiting = asyncio.ensure_future(ask(engine, UserMessage("ordinary")))
    await until(lambda: len(engine.jobs()) == 1, "the first call in the queue")

    reject = await rejected(engine, UserMessage("special"))

    assert reject.code is RejectCode.SYS_TRANSIENT
    assert "capacity is 1" in reject.message
    assert engine.rule_states()[0].uses == 0, "a call the queue refused must not use up a scripted rule"
    engine.configure(workers=1)
    assert (await waiting).message.content
    assert (await ask(engine, UserMessage("special"))).message.content == "scripted"
