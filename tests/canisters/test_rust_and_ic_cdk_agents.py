"""A raw-ic0 Rust canister and an ic-cdk canister (Azle's prebuilt ic-cdk 0.18 template) in the test."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_icllm import CanisterReject, IcllmController
from pytest_icllm._canisters import CanisterIC


def test_rust_canister_finds_the_llm_canister_by_its_env_var(
    icllm: IcllmController, icllm_canister: CanisterIC, rust_agent: Path
) -> None:
    icllm.on(contains="ping").reply("pong")
    agent = icllm_canister(rust_agent, did=rust_agent.with_suffix(".did"))
    assert agent.update("ask", "ping") == "pong"
    assert agent.query("answers") == 1
    assert agent.query("questions") == ["ping"]
    assert icllm.calls[0].caller == agent.id
    assert agent.logs[-1].endswith(": pong")


def test_the_llm_canister_is_whatever_principal_the_env_var_names(
    icllm: IcllmController, icllm_canister: CanisterIC, rust_agent: Path
) -> None:
    icllm.on().reply("local LLM canister here")
    agent = icllm_canister(
        rust_agent,
        did=rust_agent.with_suffix(".did"),
        env={"PUBLIC_CANISTER_ID:llm": "bkyz2-fmaaa-aaaaa-qaaaq-cai"},  # icp-cli's local id
    )
    assert agent.update("ask", "anyone?") == "local LLM canister here"
    assert icllm.calls[0].caller == agent.id


def test_a_bad_env_var_traps_the_canister_as_on_the_ic(icllm_canister: CanisterIC, rust_agent: Path) -> None:
    agent = icllm_canister(
        rust_agent, did=rust_agent.with_suffix(".did"), env={"PUBLIC_CANISTER_ID:llm": "not a principal!"}
    )
    with pytest.raises(CanisterReject, match="invalid PUBLIC_CANISTER_ID:llm"):
        agent.update("ask", "anyone?")


def test_a_trap_in_a_reply_callback_rolls_back_that_callback_only(
    icllm: IcllmController, icllm_canister: CanisterIC, rust_agent: Path
) -> None:
    icllm.on(contains="explode").reply("please TRAP now")
    agent = icllm_canister(rust_agent, did=rust_agent.with_suffix(".did"))
    with pytest.raises(CanisterReject) as caught:
        agent.update("ask", "explode")
    assert caught.value.code == 5 and caught.value.error_code == "IC0503"
    assert "the answer asked this canister to trap" in caught.value.message
    assert agent.query("answers") == 0  # the callback's stable-memory write was rolled back
    assert agent.query("questions") == ["explode"]  # the message before the call was committed


def test_rust_canister_reads_the_llm_reject_in_its_reject_callback(
    icllm: IcllmController, icllm_canister: CanisterIC, rust_agent: Path
) -> None:
    icllm.on().reject(4, "prompt refused")
    agent = icllm_canister(rust_agent, did=rust_agent.with_suffix(".did"))
    assert agent.update("ask", "hello") == "rejected (4): prompt refused"


def test_ic_cdk_canister_calls_the_llm_through_its_executor(
    icllm: IcllmController, icllm_canister: CanisterIC, azle_agent: Path
) -> None:
    icllm.on(contains="hello").reply("hi from the emulator")
    agent = icllm_canister(azle_agent, did=azle_agent.with_suffix(".did"))
    assert agent.update("prompt", "hello") == "hi from the emulator"
    assert agent.query("asked_count") == 1
    (call,) = icllm.calls
    assert call.caller == agent.id and call.method == "v0_chat"


def test_ic_cdk_canister_catches_a_reject_with_its_code(
    icllm: IcllmController, icllm_canister: CanisterIC, azle_agent: Path
) -> None:
    agent = icllm_canister(azle_agent, did=azle_agent.with_suffix(".did"))
    outcome = agent.update("safe_prompt", "mystery-model", "hi")
    assert outcome["err"]["code"] == 4
    assert "unknown model 'mystery-model'" in outcome["err"]["message"]


def test_ic_cdk_canister_pays_for_a_paid_model_and_reads_its_refund(
    icllm: IcllmController, icllm_canister: CanisterIC, azle_agent: Path
) -> None:
    icllm.on().reply("worth it")
    agent = icllm_canister(azle_agent, did=azle_agent.with_suffix(".did"))
    before = agent.balance
    assert agent.update("paid_prompt", "gemma3:27b", "hello") == "worth it"
    (call,) = icllm.calls
    assert call.cycles_attached == 100_000_000_000
    assert agent.query("last_refund") == call.cycles_refunded > 0
    assert agent.balance == before - call.cycles_charged


def test_canisters_of_one_test_share_an_ic_and_get_distinct_ids(
    icllm_canister: CanisterIC, motoko_agent: Path, rust_agent: Path
) -> None:
    first = icllm_canister(motoko_agent)
    second = icllm_canister(rust_agent, did=rust_agent.with_suffix(".did"))
    assert first.id != second.id
    assert {c.id for c in icllm_canister.canisters} == {first.id, second.id}


def test_canisters_do_not_outlive_their_test_part_one(icllm_canister: CanisterIC, motoko_agent: Path) -> None:
    agent = icllm_canister(motoko_agent)
    agent.update("prompt", "remember me")
    assert agent.query("asked_count") == 1


def test_canisters_do_not_outlive_their_test_part_two(icllm_canister: CanisterIC, motoko_agent: Path) -> None:
    agent = icllm_canister(motoko_agent)
    assert agent.query("asked_count") == 0
