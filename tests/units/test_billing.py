"""Cycles and paid models: what each call is charged and refunded, and prepaid balances."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_asyncio

from icllm_emulator._proto.icllm.v1 import canister_pb2 as pb
from icllm_emulator._proto.icllm.v1 import control_pb2 as cpb
from icllm_emulator.billing import MAX_CYCLES, MIN_ATTACHED, Price, Receipt
from icllm_emulator.client import LlmClient, LlmReject
from icllm_emulator.config import EmulatorConfig
from icllm_emulator.domain import AssistantMessage, ChatRequest, Reject, RejectCode, UserMessage
from icllm_emulator.engine import Engine
from icllm_emulator.rules import Match, Reply, Rule
from tests.conftest import Stubs, reject_code, user_request
from tests.waiting import until

ALICE = "aaaaa-aa"
BOB = "2vxsx-fae"
PRICE = Price(per_call=1_000, per_token=10)


@pytest_asyncio.fixture
async def engine() -> AsyncIterator[Engine]:
    """An engine where gemma3:27b costs 1000 cycles a call plus 10 a token, and answers are scripted."""
    engine = Engine(EmulatorConfig(prices={"gemma3:27b": PRICE}))
    engine.add_rule(Rule(Match(), Reply(AssistantMessage("four words of answer"))))
    engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


async def call(engine: Engine, model: str, cycles: int, caller: str = ALICE) -> Receipt:
    receipt = Receipt()
    request = ChatRequest(model=model, messages=(UserMessage("two words"),))
    await engine.chat(request, caller, cycles=cycles, receipt=receipt)
    return receipt


COST = PRICE.of(2 + 4)  # "two words" and "four words of answer"
MOST = PRICE.of(2 + 1000)  # what a call reserves: its prompt tokens and the whole output cap


@pytest.mark.asyncio
async def test_free_model_refunds_everything_attached(engine: Engine) -> None:
    assert (await call(engine, "llama3.1:8b", 0)).refunded == 0
    receipt = await call(engine, "llama3.1:8b", 5 * MIN_ATTACHED)
    assert (receipt.charged, receipt.refunded) == (0, 5 * MIN_ATTACHED)


@pytest.mark.asyncio
async def test_paid_model_with_too_few_cycles_is_rejected_with_what_to_do(engine: Engine) -> None:
    receipt = Receipt()
    request = ChatRequest(model="gemma3:27b", messages=(UserMessage("two words"),))
    with pytest.raises(Reject) as caught:
        await engine.chat(request, ALICE, cycles=MIN_ATTACHED - 1, receipt=receipt)
    assert caught.value.code is RejectCode.CANISTER_REJECT
    message = caught.value.message
    assert f"attach at least {MIN_ATTACHED} cycles" in message and f"attached: {MIN_ATTACHED - 1}" in message
    assert "v1_deposit" in message and "balance: 0" in message
    assert (receipt.charged, receipt.refunded) == (0, MIN_ATTACHED - 1)


@pytest.mark.asyncio
@pytest.mark.parametrize("attached", [MIN_ATTACHED, 3 * MIN_ATTACHED])
async def test_paid_model_charges_the_price_and_refunds_the_rest(engine: Engine, attached: int) -> None:
    receipt = await call(engine, "gemma3:27b", attached)
    assert (receipt.charged, receipt.refunded) == (COST, attached - COST)
    (record,) = engine.records()
    assert record.receipt.charged == COST


@pytest.mark.asyncio
async def test_deposit_then_call_draws_on_the_balance(engine: Engine) -> None:
    assert engine.deposit(BOB, 2 * MOST, beneficiary=ALICE) == 2 * MOST
    receipt = await call(engine, "gemma3:27b", 5)
    assert (receipt.charged, receipt.refunded, receipt.from_balance) == (COST, 5, True)
    assert engine.balances().get(ALICE, 0) == 2 * MOST - COST
    assert engine.deposit(ALICE, 0) == 2 * MOST - COST  # no beneficiary: the caller's own


@pytest.mark.asyncio
async def test_balance_exhausted_midway_rejects_the_next_call(engine: Engine) -> None:
    engine.deposit(ALICE, MOST + COST)
    await call(engine, "gemma3:27b", 0)
    await call(engine, "gemma3:27b", 0)
    with pytest.raises(Reject, match=r"balance: \d+; this call may cost up to"):
        await call(engine, "gemma3:27b", 0)
    assert engine.balances().get(ALICE, 0) == MOST + COST - 2 * COST


@pytest.mark.asyncio
async def test_concurrent_callers_never_spend_one_balance_twice(engine: Engine) -> None:
    deposited = 3 * MOST
    engine.deposit(ALICE, deposited)
    engine.set_paused(True)  # every call is admitted before any is answered
    calls = [asyncio.ensure_future(call(engine, "gemma3:27b", 0)) for _ in range(10)]
    await until(lambda: len(engine.jobs()) + sum(c.done() for c in calls) == 10, "every call admitted")
    engine.set_paused(False)
    results = await asyncio.gather(*calls, return_exceptions=True)
    charged = sum(r.charged for r in results if isinstance(r, Receipt))
    assert sum(isinstance(r, Receipt) for r in results) == 3
    assert all(isinstance(r, Reject) for r in results if not isinstance(r, Receipt))
    assert charged <= deposited
    assert engine.balances().get(ALICE, 0) == deposited - charged


@pytest.mark.asyncio
async def test_a_rejected_paid_call_is_charged_nothing(engine: Engine) -> None:
    engine.clear_rules()
    engine.add_rule(Rule(Match(), Reject(RejectCode.SYS_TRANSIENT, "busy")))
    engine.deposit(ALICE, MOST)
    with pytest.raises(Reject, match="busy"):
        await call(engine, "gemma3:27b", 0)
    assert engine.balances().get(ALICE, 0) == MOST


@pytest.mark.asyncio
async def test_launch_profile_predates_paid_models(engine: Engine) -> None:
    engine.configure(profile="launch-2025")
    receipt = await call(engine, "gemma3:27b", 7)
    assert (receipt.charged, receipt.refunded) == (0, 7)


# -- over gRPC -------------------------------------------------------------------------------------


def refunded(call: Any) -> int:
    return int(dict(call.trailing_metadata())["icllm-cycles-refunded"])


def test_grpc_refund_travels_as_trailing_metadata(emu: Stubs) -> None:
    emu.control.Configure(cpb.ConfigureRequest(prices=[cpb.ModelPrice(model="gemma3:27b", per_call=1_000)]))
    _, free = emu.canister.V1Chat.with_call(
        user_request(model="llama3.1:8b"), metadata=(("icllm-cycles", "500"),)
    )
    assert refunded(free) == 500
    _, paid = emu.canister.V1Chat.with_call(
        user_request(model="gemma3:27b"), metadata=(("icllm-cycles", str(MIN_ATTACHED)),)
    )
    assert refunded(paid) == MIN_ATTACHED - 1_000
    (_, record) = emu.control.GetHistory(cpb.GetHistoryRequest()).calls
    assert (record.cycles_attached, record.cycles_charged, record.cycles_refunded) == (
        MIN_ATTACHED,
        1_000,
        MIN_ATTACHED - 1_000,
    )


def test_grpc_reject_for_too_few_cycles_refunds_them(emu: Stubs) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        emu.canister.V1Chat(user_request(model="gemma3:27b"), metadata=(("icllm-cycles", "7"),))
    assert reject_code(caught.value) == 4 and refunded(caught.value) == 7
    assert "attached: 7" in caught.value.details()


def test_grpc_deposit_for_a_beneficiary_and_balances_in_control(emu: Stubs) -> None:
    deposit = emu.canister.V1Deposit(
        pb.V1DepositRequest(beneficiary=ALICE), metadata=(("icllm-cycles", "5000"),)
    )
    assert deposit.balance == 5000
    assert emu.canister.V1Deposit(pb.V1DepositRequest(), metadata=(("icllm-cycles", "1"),)).balance == 1
    assert dict(emu.control.GetBalances(cpb.GetBalancesRequest()).balances) == {ALICE: 5000, BOB: 1}
    emu.control.SetBalance(cpb.SetBalanceRequest(principal=ALICE, cycles=9))
    assert emu.control.GetBalances(cpb.GetBalancesRequest()).balances[ALICE] == 9
    with pytest.raises(grpc.RpcError) as caught:
        emu.canister.V1Deposit(pb.V1DepositRequest(beneficiary="Not A Principal"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "beneficiary 'Not A Principal' is not a textual principal" in caught.value.details()


def test_grpc_billing_can_be_switched_off(emu: Stubs) -> None:
    config = emu.control.Configure(cpb.ConfigureRequest(billing=False))
    assert not config.billing and [p.model for p in config.prices] == ["gemma3:27b", "z-ai:glm-5.2"]
    _, call = emu.canister.V1Chat.with_call(
        user_request(model="gemma3:27b"), metadata=(("icllm-cycles", "3"),)
    )
    assert refunded(call) == 3
    assert emu.control.Configure(cpb.ConfigureRequest(clear_prices=True)).prices == []


def test_client_deposits_and_pays_for_a_paid_model(emu: Stubs) -> None:
    target = emu.emulator.ports.grpc_target
    with LlmClient(target, caller=ALICE, cycles=10 * MIN_ATTACHED) as funder:
        assert funder.v1_deposit() == 10 * MIN_ATTACHED
    with LlmClient(target, caller=ALICE) as llm:
        assert llm.prompt("gemma3:27b", "Hi")  # no cycles attached: paid from the balance
    with LlmClient(target, caller=BOB) as stranger, pytest.raises(LlmReject) as caught:
        stranger.prompt("gemma3:27b", "Hi")
    assert caught.value.code is RejectCode.CANISTER_REJECT and "v1_deposit" in caught.value.message
    assert emu.control.GetBalances(cpb.GetBalancesRequest()).balances[ALICE] < 10 * MIN_ATTACHED


def test_pytest_controller_sets_balances_and_shows_charges(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(
        """
        from icllm_emulator.client import LlmClient

        def test_paid_call_draws_on_a_balance_set_by_the_test(icllm, icllm_server):
            icllm.set_balance("aaaaa-aa", 10**12)
            with LlmClient(icllm_server.grpc_target, caller="aaaaa-aa", cycles=5) as llm:
                llm.prompt("gemma3:27b", "How much?")
            (call,) = icllm.calls
            assert call.cycles_attached == 5 and call.cycles_refunded == 5 and call.cycles_charged > 0
            assert icllm.balance("aaaaa-aa") == 10**12 - call.cycles_charged
            assert icllm.balances() == {"aaaaa-aa": 10**12 - call.cycles_charged}

        def test_a_test_sets_its_own_prices(icllm, icllm_server):
            icllm.set_prices({"qwen3:32b": (1_000, 10)})
            with LlmClient(icllm_server.grpc_target, caller="aaaaa-aa", cycles=10**11) as llm:
                llm.prompt("qwen3:32b", "Priced now?")
                llm.prompt("gemma3:27b", "Free now?")
            paid, free = icllm.calls
            assert paid.cycles_charged > 1_000 and free.cycles_charged == 0
            icllm.set_prices({})
            with LlmClient(icllm_server.grpc_target, cycles=5) as llm:
                llm.prompt("qwen3:32b", "Free again?")
            assert icllm.calls[-1].cycles_refunded == 5
        """
    )
    pytester.runpytest().assert_outcomes(passed=2)


PRICE_3 = Price(per_call=3 * MIN_ATTACHED)


@pytest.mark.asyncio
async def test_attached_cycles_below_the_most_a_call_may_cost_are_rejected(engine: Engine) -> None:
    engine.configure(prices={"gemma3:27b": PRICE_3})
    with pytest.raises(
        Reject, match=f"may cost up to {PRICE_3.of(2 + 1000)} cycles, more than the {MIN_ATTACHED}"
    ):
        await call(engine, "gemma3:27b", MIN_ATTACHED)


@pytest.mark.asyncio
async def test_a_deposit_past_the_emulators_range_is_rejected(engine: Engine) -> None:
    engine.deposit(ALICE, MAX_CYCLES)
    with pytest.raises(Reject, match="the balance stays"):
        engine.deposit(ALICE, 1)
    assert engine.balances().get(ALICE, 0) == MAX_CYCLES


def test_grpc_cycles_beyond_64_bits_are_invalid_argument(emu: Stubs) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        emu.canister.V1Chat(user_request(), metadata=(("icllm-cycles", str(2**70)),))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 18446744073709551615" in caught.value.details()
    assert emu.control.GetHistory(cpb.GetHistoryRequest()).calls == []
