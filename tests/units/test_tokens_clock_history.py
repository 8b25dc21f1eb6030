"""Token counting, the clocks, and what history and stats record about each call."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import tracemalloc

import pytest

from icllm_emulator.clock import ClockKind, RealClock, VirtualClock
from icllm_emulator.config import EmulatorConfig
from icllm_emulator.domain import AssistantMessage, ChatRequest, Reject, RejectCode, UserMessage
from icllm_emulator.engine import Engine
from icllm_emulator.history import _percentile
from icllm_emulator.rules import Match, Reply, Rule
from icllm_emulator.tokens import count_tokens, truncate_tokens
from tests.waiting import until

# -- tokens ----------------------------------------------------------------------------------------


def test_token_rule_as_documented() -> None:
    assert count_tokens("It's 42.") == 5  # It ' s 42 .
    assert count_tokens("") == 0 and count_tokens("   \n") == 0
    assert count_tokens("naïve café") == 2  # word characters include letters with accents


def test_truncate_cuts_right_after_the_capped_token_and_says_so() -> None:
    assert truncate_tokens("one two three", 2) == ("one two", True)
    assert truncate_tokens("one two", 2) == ("one two", False)
    assert truncate_tokens("one two.  ", 2) == ("one two", True)
    assert truncate_tokens("one two", None) == ("one two", False)
    assert truncate_tokens("one", 0) == ("", True)


# -- clocks ----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_virtual_clock_wakes_sleepers_in_time_order_only_when_advanced() -> None:
    clock = VirtualClock(start=1000.0)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, when: float) -> None:
        await clock.sleep_until(when)
        woke.append((name, clock.now()))

    tasks = [asyncio.ensure_future(sleeper("late", 1300.0)), asyncio.ensure_future(sleeper("early", 1010.0))]
    await until(lambda: len(clock._sleepers) == 2, "both sleepers waiting")
    assert woke == [] and clock.now() == 1000.0
    assert await clock.advance(100) == 1100.0
    assert woke == [("early", 1010.0)]
    await clock.advance(300)
    assert woke == [("early", 1010.0), ("late", 1300.0)]
    await asyncio.gather(*tasks)
    with pytest.raises(ValueError, match="only moves forward"):
        await clock.advance(-1)


@pytest.mark.asyncio
async def test_real_clock_sleeps_until_a_time_and_not_for_a_past_one() -> None:
    clock = RealClock()
    start = clock.now()
    await clock.sleep_until(start - 10)
    await clock.sleep_until(clock.now() + 0.01)
    assert clock.now() >= start + 0.01


# -- history and stats -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_history_records_the_lifecycle_on_the_emulators_clock() -> None:
    engine = Engine(EmulatorConfig(clock=ClockKind.VIRTUAL, ollama_port=None))
    engine.add_rule(Rule(Match(), Reply(AssistantMessage("done")), delay=5))
    engine.start()
    try:
        clock = engine.clock
        assert isinstance(clock, VirtualClock)
        start = clock.now()
        call = asyncio.ensure_future(
            engine.chat(ChatRequest("llama3.1:8b", (UserMessage("hi there"),)), "2vxsx-fae")
        )
        await until(lambda: bool(clock._sleepers), "the scripted delay started")
        await clock.advance(5)
        answer = await call
        (record,) = engine.records()
        assert record.job is not None
        assert (record.received_at, record.job.first_leased_at, record.job.finished_at) == (
            start,
            start,
            start + 5,
        )
        assert (record.job.attempt, record.job_state, record.input_tokens) == (1, "DONE", 2)
        assert record.outcome == answer and answer.output_tokens == 1
    finally:
        await engine.stop()


@pytest.mark.asyncio
async def test_stats_count_answers_rejects_and_tokens() -> None:
    engine = Engine(EmulatorConfig(ollama_port=None))
    engine.add_rule(Rule(Match(contains="fail"), Reject(RejectCode.SYS_TRANSIENT, "busy")))
    engine.add_rule(Rule(Match(), Reply(AssistantMessage("three short words"))))
    engine.start()
    try:
        for text in ("ok one", "ok two", "fail now"):
            with contextlib.suppress(Reject):
                await engine.chat(ChatRequest("llama3.1:8b", (UserMessage(text),)), "2vxsx-fae")
        stats = engine.stats()
        assert (stats.calls, stats.answered, stats.rejected, stats.pending) == (3, 2, 1, 0)
        assert stats.rejects_by_code == {2: 1}
        assert (stats.input_tokens, stats.output_tokens) == (6, 6)
        latency = stats.latency_ms
        assert 0 <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    finally:
        await engine.stop()


def test_percentiles_pick_the_nearest_rank() -> None:
    values = [float(n) for n in range(1, 101)]
    assert [_percentile(values, q) for q in (0.5, 0.9, 0.99, 1.0)] == [51.0, 90.0, 99.0, 100.0]
    assert _percentile([], 0.5) == 0.0


# A call of 1 MiB and what the history may keep of it: 64 KiB of an answered request, 4 KiB of a rejected one.
BIG = 1024 * 1024
KEPT = 64 * 1024


@pytest.mark.asyncio
@pytest.mark.parametrize("outcome", ["too long", "scripted reject", "answered"])
async def test_the_history_keeps_no_more_of_a_large_call_than_its_budget(outcome: str) -> None:
    """What the history stores of a call is all that stays of it: not the request held through the
    traceback of its reject, nor through its finished job."""
    from icllm_emulator import candid
    from icllm_emulator.domain import Api

    profile = "current" if outcome == "too long" else "unlimited"
    engine = Engine(EmulatorConfig(ollama_port=None, profile=profile))
    if outcome == "scripted reject":
        engine.add_rule(Rule(Match(), Reject(RejectCode.SYS_TRANSIENT, "busy"), times=None))
    engine.start()

    async def call(n: int) -> None:
        request = ChatRequest(
            "llama3.1:8b", (UserMessage(f"{n} " + ("y" * 99 + " ") * (BIG // 100)),), api=Api.V0
        )
        with contextlib.suppress(Reject):
            await engine.call_candid("v0_chat", candid.encode_chat_request(request), "2vxsx-fae")

    calls = 8
    tracemalloc.start()
    try:
        await call(0)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for n in range(1, calls + 1):
            await call(n)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
        await engine.stop()
    assert len(engine.records()) == calls + 1
    assert grown < calls * KEPT + BIG, f"{calls} calls of 1 MiB ({outcome}) left {grown / BIG:.1f} MiB behind"
