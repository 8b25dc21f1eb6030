"""Stand-ins scripted from Python at any principal, and faults on calls between real canisters."""

from __future__ import annotations

from pathlib import Path

import pytest

from icllm_emulator.runtime import RuntimeUsageError
from pytest_icllm import IcllmController
from pytest_icllm._canisters import CanisterIC
from tests.canisters.conftest import LEDGER_DID, LEDGER_ID
from tests.pytester_support import pt, run

__all__ = ["pt"]  # a fixture

ACCOUNT = bytes(range(32))
OTHER = bytes(32)


def test_the_wallet_reads_the_ledger_stand_in_between_two_llm_rounds(
    icllm: IcllmController, icllm_canister: CanisterIC, motoko_wallet: Path
) -> None:
    icllm.on(contains="my balance").reply("Let me check the ledger.")
    icllm.on(contains="The balance is 5 e8s").reply("You have 5 e8s.")
    ledger = icllm_canister.stub(LEDGER_ID, did=LEDGER_DID)
    ledger.on("account_balance").reply({"e8s": 5})
    wallet = icllm_canister(motoko_wallet)
    assert wallet.update("balance_report", ACCOUNT, "What is my balance?") == "You have 5 e8s."
    (call,) = ledger.calls
    assert (call.method, call.arg, call.caller, call.cycles) == (
        "account_balance",
        {"account": ACCOUNT},
        wallet.id,
        0,
    )
    assert call.outcome == "replied"
    assert [c.caller for c in icllm.calls] == [wallet.id, wallet.id]


def test_reply_with_reject_trap_and_times_reach_the_callers_own_code(
    icllm_canister: CanisterIC, motoko_wallet: Path
) -> None:
    ledger = icllm_canister.stub(LEDGER_ID, did=LEDGER_DID)
    ledger.on("transfer").times(1).reply_with(lambda arg, caller: {"Ok": arg["amount"]["e8s"] + len(caller)})
    ledger.on("transfer").times(1).reply({"Err": {"InsufficientFunds": {"balance": {"e8s": 3}}}})
    ledger.on("transfer").times(1).reject(2, "the ledger is busy")
    ledger.on("transfer").trap("out of stable memory")
    wallet = icllm_canister(motoko_wallet)
    assert wallet.update("pay", OTHER, 100) == f"paid in block {100 + len(wallet.id)}"
    assert wallet.update("pay", OTHER, 100) == "insufficient funds: 3 e8s"
    assert wallet.update("pay", OTHER, 100) == "system_transient: the ledger is busy"
    trapped = wallet.update("pay", OTHER, 100)
    assert trapped.startswith(f"canister_error: Error from Canister {LEDGER_ID}: ")
    assert "out of stable memory" in trapped
    first = ledger.calls[0]
    assert first.arg["amount"] == {"e8s": 100} and first.arg["memo"] == 7 and first.rule_id == "rule-1"


@pytest.mark.icllm(assert_all_expected=False)  # the unexpected call is this test's point
def test_a_call_no_rule_answers_is_rejected_with_every_rule_and_why_it_missed(
    icllm_canister: CanisterIC, motoko_wallet: Path
) -> None:
    ledger = icllm_canister.stub(LEDGER_ID, did=LEDGER_DID)
    ledger.on("transfer").times(1).reply({"Ok": 1})
    ledger.on("account_balance").times(1).reply({"e8s": 1})
    wallet = icllm_canister(motoko_wallet)
    assert wallet.update("balance_at", LEDGER_ID, ACCOUNT) == "1 e8s"
    missed = wallet.update("balance_at", LEDGER_ID, ACCOUNT)
    assert missed.startswith(
        f"canister_reject: no rule of the stand-in at {LEDGER_ID} answers 'account_balance' from {wallet.id}"
    )
    assert (
        "- rule-1 on('transfer').times(1).reply({'Ok': 1}): method is 'account_balance', not 'transfer'"
        in missed
    )
    assert "- rule-2 on('account_balance').times(1).reply({'e8s': 1}): used up (1 of 1 uses)" in missed
    assert ledger.calls[1].unexpected
    assert wallet.update("pay", OTHER, 1) == "paid in block 1"


def test_held_answers_reach_their_callers_in_the_order_released(
    icllm_canister: CanisterIC, motoko_wallet: Path
) -> None:
    ledger = icllm_canister.stub(LEDGER_ID, did=LEDGER_DID)
    ledger.on("transfer").reply_with(lambda arg, caller: {"Ok": arg["amount"]["e8s"]})
    ledger.hold()
    wallet = icllm_canister(motoko_wallet)
    first = wallet.submit("pay", OTHER, 1)
    second = wallet.submit("pay", OTHER, 2)
    one, two = ledger.held(2)
    assert [c.outcome for c in ledger.calls] == ["held", "held"]
    ledger.release(two)
    assert second.result() == "paid in block 2"
    assert not first.done()
    assert ledger.release_all() == [one]
    assert first.result() == "paid in block 1"


def test_replies_that_do_not_fit_the_interface_are_refused_at_once(icllm_canister: CanisterIC) -> None:
    ledger = icllm_canister.stub(LEDGER_ID, did=LEDGER_DID)
    with pytest.raises(RuntimeUsageError, match="e8s"):
        ledger.on("account_balance").reply({"e8": 5})
    with pytest.raises(
        RuntimeUsageError, match="has no method 'balance' in its interface; it has account_balance, transfer"
    ):
        ledger.on("balance")
    with pytest.raises(ValueError, match="not an IC reject code"):
        ledger.on("transfer").reject(9, "no")


@pytest.mark.icllm(assert_all_expected=False)
def test_an_argument_the_stand_in_cannot_decode_traps_as_a_candid_canister_does(
    icllm_canister: CanisterIC, motoko_wallet: Path
) -> None:
    ledger = icllm_canister.stub(
        LEDGER_ID,
        did="service : { account_balance : (record { account : text }) -> (record { e8s : nat64 }) query }",
    )
    wallet = icllm_canister(motoko_wallet)
    answer = wallet.update("balance_at", LEDGER_ID, ACCOUNT)
    assert answer.startswith(f"canister_error: Error from Canister {LEDGER_ID}: ")
    assert "failed to decode the call's argument" in answer
    (call,) = ledger.calls
    assert call.unexpected and call.arg is None


def test_a_stand_in_takes_only_a_free_principal(icllm_canister: CanisterIC, motoko_ledger: Path) -> None:
    real = icllm_canister(motoko_ledger)
    with pytest.raises(RuntimeUsageError, match=f"a canister is installed at {real.id}"):
        icllm_canister.stub(real.id, did=LEDGER_DID)
    with pytest.raises(RuntimeUsageError, match="is the LLM canister"):
        icllm_canister.stub("w36hm-eqaaa-aaaal-qr76a-cai", did=LEDGER_DID)
    with pytest.raises(RuntimeUsageError, match="not a textual principal"):
        icllm_canister.stub("ledger", did=LEDGER_DID)
    icllm_canister.stub(LEDGER_ID, did=LEDGER_DID)
    with pytest.raises(RuntimeUsageError, match="a stand-in is at"):
        icllm_canister.stub(LEDGER_ID, did=LEDGER_DID)


def test_a_fault_rejects_a_call_between_two_real_canisters_then_lets_them_talk(
    icllm_canister: CanisterIC, motoko_wallet: Path, motoko_ledger: Path
) -> None:
    ledger = icllm_canister(motoko_ledger)
    wallet = icllm_canister(motoko_wallet)
    fault = (
        icllm_canister.faults.on(callee=ledger, method="account_balance").times(1).reject(2, "subnet busy")
    )
    assert wallet.update("balance_at", ledger.id, ACCOUNT) == "system_transient: subnet busy"
    assert wallet.update("balance_at", ledger.id, ACCOUNT) == "100000000 e8s"
    assert fault.uses == 1


@pytest.mark.icllm(assert_all_used=False)
def test_a_fault_that_matches_nothing_is_not_used(icllm_canister: CanisterIC, motoko_ledger: Path) -> None:
    icllm_canister(motoko_ledger)
    fault = icllm_canister.faults.on(method="transfer").hang()
    assert fault.uses == 0
    assert icllm_canister._problems(True, True) == [
        "faults that no call between canisters met (turn this check off with "
        "@pytest.mark.icllm(assert_all_used=False)):\n  fault-1 on(method='transfer').hang()"
    ]
    with pytest.raises(ValueError, match=r"icllm\.on"):
        icllm_canister.faults.on(callee="w36hm-eqaaa-aaaal-qr76a-cai")
    with pytest.raises(ValueError, match="delay must be"):
        icllm_canister.faults.on().delay(-1)


def test_a_test_calls_a_stand_in_directly(icllm_canister: CanisterIC) -> None:
    ledger = icllm_canister.stub(LEDGER_ID, did=LEDGER_DID)
    ledger.on("account_balance").reply({"e8s": 9})
    from icllm_emulator.runtime.values import Interface

    interface = Interface(LEDGER_DID.read_text())
    reply = icllm_canister.loop.run(
        icllm_canister.runtime.call(
            LEDGER_ID, "account_balance", interface.encode_call("account_balance", ({"account": ACCOUNT},))
        )
    )
    assert interface.decode_reply("account_balance", reply) == {"e8s": 9}
    assert ledger.calls[0].caller == "2vxsx-fae"


# -- as a user's suite meets them: teardown checks, the clock, one test after another ---------------


def test_the_teardown_reports_unused_rules_unexpected_calls_and_failing_functions(
    pt: pytest.Pytester, motoko_wallet: Path
) -> None:
    result = run(
        pt,
        f"""
        import pytest

        LEDGER = {LEDGER_ID!r}
        DID = {str(LEDGER_DID)!r}

        def test_unused(icllm_canister):
            icllm_canister.stub(LEDGER, did=DID).on("transfer").reply({{"Ok": 1}})

        def test_unexpected(icllm_canister):
            icllm_canister.stub(LEDGER, did=DID)
            wallet = icllm_canister({str(motoko_wallet)!r})
            assert wallet.update("pay", bytes(32), 5).startswith("canister_reject: no rule")

        def test_failing_function(icllm_canister):
            icllm_canister.stub(LEDGER, did=DID).on("transfer").reply_with(lambda arg, caller: {{"Ok": -1}})
            wallet = icllm_canister({str(motoko_wallet)!r})
            assert wallet.update("pay", bytes(32), 5).startswith("canister_error: ")

        @pytest.mark.icllm(assert_all_used=False, assert_all_expected=False)
        def test_switched_off(icllm_canister):
            icllm_canister.stub(LEDGER, did=DID).on("transfer").reply({{"Ok": 1}})

        def test_calling_the_fixture_from_reply_with(icllm_canister):
            ledger = icllm_canister.stub(LEDGER, did=DID)
            ledger.on("transfer").reply_with(lambda arg, caller: {{"Ok": len(ledger.calls)}})
            wallet = icllm_canister({str(motoko_wallet)!r})
            assert wallet.update("pay", bytes(32), 5).startswith("canister_error: ")

        @pytest.mark.icllm(assert_all_used=False, assert_all_expected=False)
        def test_leaves_calls_in_flight(icllm_canister):
            ledger = icllm_canister.stub(LEDGER, did=DID)
            ledger.on("transfer").hang()
            ledger.on("account_balance").reply({{"e8s": 1}})
            ledger.hold()
            wallet = icllm_canister({str(motoko_wallet)!r})
            wallet.submit("pay", bytes(32), 5)
            wallet.submit("balance_at", LEDGER, bytes(32))
            ledger.held(1)
            icllm_canister.faults.on(method="transfer").times(1).hang()

        def test_the_next_test_starts_afresh(icllm_canister):
            ledger = icllm_canister.stub(LEDGER, did=DID)
            assert ledger.calls == []
            ledger.on("account_balance").reply({{"e8s": 2}})
            wallet = icllm_canister({str(motoko_wallet)!r})
            assert wallet.update("balance_at", LEDGER, bytes(32)) == "2 e8s"
            assert icllm_canister.runtime.faults.states == []
        """,
    )
    result.assert_outcomes(passed=7, errors=4)  # the first four
    result.stdout.fnmatch_lines(
        [
            "*rules of the stand-in at ryjl3-tyaaa-aaaaa-aaaba-cai that no call used*",
            "*  rule-1 on('transfer').reply({'Ok': 1})",
            "*calls that no rule of the stand-in at ryjl3-tyaaa-aaaaa-aaaba-cai expected*",
            "*  call-1 transfer(*) from *: rejected (CANISTER_REJECT): no rule of the stand-in*",
            "*rule-1 on('transfer').reply_with(<lambda>) of the stand-in at ryjl3-* failed on call-1 from *: "
            "RuntimeUsageError: *nat64*",
            "*RuntimeUsageError: the canister runtime was called from its own event loop: a stand-in's "
            "reply_with function runs there*",
        ]
    )


def test_a_bounded_wait_call_to_a_hung_stand_in_ends_with_sys_unknown_at_its_deadline(
    pt: pytest.Pytester, motoko_wallet: Path
) -> None:
    result = run(
        pt,
        f"""
        from tests.waiting import wait_until

        def test_hung_ledger(icllm, icllm_canister):
            ledger = icllm_canister.stub({LEDGER_ID!r}, did={str(LEDGER_DID)!r})
            ledger.on("account_balance").hang()
            wallet = icllm_canister({str(motoko_wallet)!r})
            pending = wallet.submit("balance_within", 10, bytes(32))
            wait_until(lambda: ledger.calls, "the ledger's call")
            assert ledger.calls[0].outcome == "hanging"
            icllm.advance(9)
            assert not pending.done()
            icllm.advance(1)
            answer = pending.result(timeout=5)
            assert answer.startswith("system_unknown: "), answer
            assert "10 s" in answer
        """,
        "--icllm-clock",
        "virtual",
    )
    result.assert_outcomes(passed=1)


def test_a_delay_fault_holds_a_call_between_real_canisters_until_the_clock_passes_it(
    pt: pytest.Pytester, motoko_wallet: Path, motoko_ledger: Path
) -> None:
    result = run(
        pt,
        f"""
        from tests.waiting import wait_until

        def test_late_ledger(icllm, icllm_canister):
            ledger = icllm_canister({str(motoko_ledger)!r})
            wallet = icllm_canister({str(motoko_wallet)!r})
            late = icllm_canister.faults.on(callee=ledger, caller=wallet).times(1).delay(30)
            pending = wallet.submit("balance_at", ledger.id, bytes(32))
            wait_until(lambda: late.uses == 1, "the fault")
            icllm.advance(29)
            assert not pending.done()
            icllm.advance(1)
            assert pending.result(timeout=5) == "100000000 e8s"
            icllm_canister.faults.on(callee=ledger).hang()
            never = wallet.submit("balance_at", ledger.id, bytes(32))
            icllm.advance(3600)
            assert not never.done()
        """,
        "--icllm-clock",
        "virtual",
    )
    result.assert_outcomes(passed=1)


def test_a_fault_strikes_a_call_to_a_stand_in_before_its_rules(
    icllm_canister: CanisterIC, motoko_wallet: Path
) -> None:
    ledger = icllm_canister.stub(LEDGER_ID, did=LEDGER_DID)
    ledger.on("account_balance").reply({"e8s": 5})
    wallet = icllm_canister(motoko_wallet)
    icllm_canister.faults.on(callee=ledger, caller=wallet).times(1).reject(4, "not today")
    assert wallet.update("balance_at", LEDGER_ID, ACCOUNT) == "canister_reject: not today"
    assert wallet.update("balance_at", LEDGER_ID, ACCOUNT) == "5 e8s"
    assert len(ledger.calls) == 1  # the faulted call never reached the stand-in
