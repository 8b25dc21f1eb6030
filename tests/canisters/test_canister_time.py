"""Canister time is the emulator's clock: advancing the virtual clock fires timers and ends bounded waits."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pytester_support import pt, run

__all__ = ["pt"]  # a fixture


def test_a_motoko_timer_calls_the_llm_when_the_clock_reaches_it(
    pt: pytest.Pytester, motoko_agent: Path
) -> None:
    result = run(
        pt,
        f"""
        def test_reminder(icllm, icllm_canister):
            icllm.on(contains="water the plants").reply("Done: plants watered.")
            agent = icllm_canister({str(motoko_agent)!r})
            agent.update("remind_in", 3600, "water the plants")
            icllm.advance(3599)
            assert icllm.calls == [] and agent.query("timer_answer") is None
            icllm.advance(1)
            assert agent.query("timer_answer") == "Done: plants watered."
            assert agent.logs == ["timer answered: Done: plants watered."]
            assert icllm.calls[0].caller == agent.id
        """,
        "--icllm-clock",
        "virtual",
    )
    result.assert_outcomes(passed=1)


def test_an_ic_cdk_timer_runs_through_its_self_call(pt: pytest.Pytester, azle_agent: Path) -> None:
    did = azle_agent.with_suffix(".did")
    result = run(
        pt,
        f"""
        def test_reminder(icllm, icllm_canister):
            icllm.on(contains="later").reply("now")
            agent = icllm_canister({str(azle_agent)!r}, did={str(did)!r})
            agent.update("remind_in", 60, "later")
            icllm.advance(59)
            assert agent.query("timer_answer") is None
            icllm.advance(1)
            assert icllm_canister.settle()
            assert agent.query("timer_answer") == "now"
            assert agent.query("asked_count") == 1
        """,
        "--icllm-clock",
        "virtual",
    )
    result.assert_outcomes(passed=1)


def test_a_bounded_wait_call_gives_up_at_its_deadline_while_the_job_goes_on(
    pt: pytest.Pytester, motoko_agent: Path
) -> None:
    result = run(
        pt,
        f"""
        def test_give_up(icllm, icllm_canister):
            icllm.on(contains="slow").after(30).reply("too late")
            agent = icllm_canister({str(motoko_agent)!r})
            pending = agent.submit("prompt_within", 10, "slow question")
            icllm.jobs("LEASED", count=1)
            icllm.advance(9)
            assert not pending.done()
            icllm.advance(1)
            answer = pending.result(timeout=5)
            assert answer.startswith("gave up: ")
            assert "10 s" in answer
            icllm.advance(20)
            assert icllm.calls[0].job_state == "DONE"  # the LLM canister still answered, to nobody
        """,
        "--icllm-clock",
        "virtual",
    )
    result.assert_outcomes(passed=1)


def test_a_rust_canister_reads_the_clock_and_gives_up_with_sys_unknown(
    pt: pytest.Pytester, rust_agent: Path
) -> None:
    result = run(
        pt,
        f"""
        def test_rust_bounded(icllm, icllm_canister):
            icllm.hold()
            agent = icllm_canister({str(rust_agent)!r}, did={str(rust_agent.with_suffix(".did"))!r})
            pending = agent.submit("ask_within", 5, "are you there?")
            icllm.held(count=1)
            icllm.advance(5)
            assert pending.result(timeout=5).startswith("gave up (6): Timeout expired")
            assert agent.query("answers") == 0
        """,
        "--icllm-clock",
        "virtual",
    )
    result.assert_outcomes(passed=1)
