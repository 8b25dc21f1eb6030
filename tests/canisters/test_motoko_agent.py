"""A Motoko agent's own module in the test: its LLM calls are answered by the emulator."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_icllm import CanisterReject, IcllmController
from pytest_icllm._canisters import CanisterIC
from tests.pytester_support import pt, run

__all__ = ["pt"]  # a fixture

# Every call a canister makes reaches the emulator with the canister as its caller.


def test_prompt_is_answered_by_a_scripted_rule(
    icllm: IcllmController, icllm_canister: CanisterIC, any_motoko_agent: Path
) -> None:
    icllm.on(contains="capital of France").reply("Paris.")
    agent = icllm_canister(any_motoko_agent)
    assert agent.update("prompt", "What is the capital of France?") == "Paris."
    (call,) = icllm.assert_prompted(contains="capital of France", model="llama3.1:8b")
    assert call.method == "v0_chat"
    assert call.caller == agent.id


def test_unscripted_prompts_get_the_deterministic_fake_answer(
    icllm_canister: CanisterIC, any_motoko_agent: Path
) -> None:
    first = icllm_canister(any_motoko_agent).update("prompt", "Tell me a story")
    second = icllm_canister(any_motoko_agent).update("prompt", "Tell me a story")
    assert first == second
    assert first


def test_stable_state_persists_across_calls_and_queries_keep_none(
    icllm_canister: CanisterIC, any_motoko_agent: Path
) -> None:
    agent = icllm_canister(any_motoko_agent)
    assert agent.query("asked_count") == 0
    agent.update("prompt", "one")
    agent.update("prompt", "two")
    assert agent.query("asked_count") == 2
    assert agent.query("asked_count") == 2


def test_tool_round_sends_the_tool_result_back_without_tools(
    icllm: IcllmController, icllm_canister: CanisterIC, any_motoko_agent: Path
) -> None:
    icllm.on(tool="get_weather").call_tool("get_weather", city="Zurich")
    icllm.on(contains="sunny in Zurich").reply("It is sunny in Zurich today.")
    agent = icllm_canister(any_motoko_agent)
    assert agent.update("weather", "Zurich") == "It is sunny in Zurich today."
    first, second = icllm.requests
    assert [t.name for t in first.tools] == ["get_weather"]
    assert first.tools[0].parameters is not None
    assert [p.name for p in first.tools[0].parameters.properties] == ["city"]
    assert second.tools == ()  # `tools = null` on the second round, as DFINITY's libraries send it
    assert [m.role.value for m in second.messages] == ["user", "assistant", "tool"]
    assert second.messages[-1].content == "sunny in Zurich"


def test_reject_reaches_the_canisters_own_catch(
    icllm: IcllmController, icllm_canister: CanisterIC, any_motoko_agent: Path
) -> None:
    icllm.on(contains="overload").reject(2, "the queue is full, try later")
    agent = icllm_canister(any_motoko_agent)
    assert agent.update("safe_prompt", "llama3.1:8b", "overload me") == {
        "err": {"code": "system_transient", "message": "the queue is full, try later"}
    }
    outcome = agent.update("safe_prompt", "no-such-model", "hi")
    assert outcome["err"]["code"] == "canister_reject"
    assert "unknown model 'no-such-model'" in outcome["err"]["message"]


def test_trap_after_an_await_keeps_what_came_before(
    icllm: IcllmController, icllm_canister: CanisterIC, any_motoko_agent: Path
) -> None:
    icllm.on().reply("fine")
    agent = icllm_canister(any_motoko_agent)
    with pytest.raises(CanisterReject) as caught:
        agent.update("trap_after_await", "go")
    assert caught.value.code == 5
    assert caught.value.error_code == "IC0503"
    assert "trapped after the answer: fine" in caught.value.message
    assert agent.query("asked_count") == 1  # the increment before the await is committed
    assert any("trapped after the answer" in line for line in agent.logs)


def test_fan_out_answers_arrive_in_the_order_the_test_releases_them(
    icllm: IcllmController, icllm_canister: CanisterIC, motoko_agent: Path
) -> None:
    for word in ("alpha", "beta", "gamma"):
        icllm.on(contains=word).reply(f"{word}!")
    icllm.hold()
    agent = icllm_canister(motoko_agent)
    pending = agent.submit("fan_out", ["alpha", "beta", "gamma"])
    held = icllm.held(count=3)
    assert not pending.done()
    icllm.release(held[2], held[0], held[1])
    assert pending.result() == ["alpha!", "beta!", "gamma!"]
    assert [c.prompt for c in icllm.calls] == ["alpha", "beta", "gamma"]


def test_paid_model_is_charged_and_the_refund_is_read_back(
    icllm: IcllmController, icllm_canister: CanisterIC, any_motoko_agent: Path
) -> None:
    icllm.on().reply("paid answer")
    agent = icllm_canister(any_motoko_agent, cycles=10**13)
    outcome = agent.update("paid_prompt", "gemma3:27b", "hello")
    (call,) = icllm.calls
    assert call.cycles_attached == 100_000_000_000
    assert 0 < call.cycles_charged < call.cycles_attached
    assert outcome == {"answer": "paid answer", "refunded": call.cycles_refunded}
    assert call.cycles_charged + call.cycles_refunded == call.cycles_attached
    assert agent.query("balance") == 10**13 - call.cycles_charged
    assert agent.balance == 10**13 - call.cycles_charged


def test_paid_model_without_enough_cycles_in_the_canister_traps_before_the_call(
    icllm: IcllmController, icllm_canister: CanisterIC, motoko_agent: Path
) -> None:
    agent = icllm_canister(motoko_agent, cycles=1_000_000)
    with pytest.raises(CanisterReject) as caught:
        agent.update("paid_prompt", "gemma3:27b", "hello")
    assert caught.value.code == 5
    assert icllm.calls == []
    assert agent.balance == 1_000_000


def test_a_call_stuck_on_a_held_answer_fails_naming_the_job_and_how_to_release_it(
    pt: pytest.Pytester, motoko_agent: Path
) -> None:
    result = run(
        pt,
        f"""
        def test_forgot_to_release(icllm, icllm_canister):
            icllm.on().reply("never seen")
            icllm.hold()
            agent = icllm_canister({str(motoko_agent)!r})
            agent.update("prompt", "hello")

        def test_forgot_to_release_a_submitted_call(icllm, icllm_canister):
            icllm.hold()
            agent = icllm_canister({str(motoko_agent)!r})
            pending = agent.submit("prompt", "hello")
            icllm.held(count=1)
            pending.result()

        def test_nothing_pending(icllm, icllm_canister):
            icllm.pause()
            agent = icllm_canister({str(motoko_agent)!r})
            agent.update("prompt", "hello")
        """,
        "--icllm-canister-timeout",
        "1.5",
    )
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(
        [
            "*TimeoutError: the canister runtime did not finish within 1.5 s (--icllm-canister-timeout); "
            "1 LLM answer is held ('call-000001'): release it with icllm.release('call-000001') "
            "or icllm.release_all()",
            "*TimeoutError: 'prompt' on * did not finish within 1.5 s (--icllm-canister-timeout); "
            "1 LLM answer is held ('call-*'): release it with icllm.release('call-*') or icllm.release_all()",
            "*TimeoutError: the canister runtime did not finish within 1.5 s (--icllm-canister-timeout); "
            "'call-*' (llama3.1:8b) waits for a worker: are they paused (icllm.resume())?",
        ]
    )
