"""Canisters calling the management canister: actor-class factories, and the IC's rejects for misuse."""

from __future__ import annotations

from pathlib import Path

import pytest
import wasmtime

from icllm_emulator.runtime.management import management_interface
from pytest_icllm import CanisterReject, IcllmController
from pytest_icllm._canisters import Canister, CanisterIC
from tests.canisters.wat import relay_module
from tests.pytester_support import pt, run

__all__ = ["pt"]  # a fixture

# Forwards a call: the argument is [callee length][callee][method length][method][Candid argument];
# replies with the callee's reply, or with the reject code (as an ASCII digit) and message.
MANAGER = relay_module(
    "call",
    """
    (local $callee i32) (local $method i32) (local $rest i32)
    (call $arg_copy (i32.const 0) (i32.const 0) (call $arg_size))
    (local.set $callee (i32.load8_u (i32.const 0)))
    (local.set $method (i32.load8_u (i32.add (i32.const 1) (local.get $callee))))
    (local.set $rest (i32.add (i32.const 2) (i32.add (local.get $callee) (local.get $method))))
    (call $call_new
      (i32.const 1) (local.get $callee)
      (i32.add (i32.const 2) (local.get $callee)) (local.get $method)
      (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 0))
    (call $call_data_append (local.get $rest) (i32.sub (call $arg_size) (local.get $rest)))""",
    pages=2,
    buffer=65536,
)


def manage(caller: Canister, method: str, *values: object, callee: bytes = b"") -> object:
    """Have `caller` call the management canister (or `callee`); the decoded reply, or a CanisterReject."""
    interface = management_interface()
    arg = interface.encode_call(method, values)
    head = bytes([len(callee)]) + callee + bytes([len(method)]) + method.encode()
    answer = caller.update_raw("call", head + arg)
    if answer.startswith(b"DIDL"):
        return interface.decode_reply(method, answer)
    raise CanisterReject(int(chr(answer[0])), answer[1:].decode())  # type: ignore[arg-type]


def manager(icllm_canister: CanisterIC) -> Canister:
    return icllm_canister(bytes(wasmtime.wat2wasm(MANAGER)))


def test_a_motoko_actor_class_creates_children_that_call_the_llm(
    icllm: IcllmController, icllm_canister: CanisterIC, motoko_factory: Path
) -> None:
    icllm.on(contains="weather: today?").reply("Sunny.")
    factory = icllm_canister(motoko_factory, cycles=10 * 10**12)
    child_id = factory.update("spawn", "weather")
    child = icllm_canister.get(child_id)
    assert child.query("about") == "weather"
    assert child.update("ask", "today?") == "Sunny."
    assert factory.update("ask_child", 0, "today?") == "Sunny."
    assert [c.caller for c in icllm.calls] == [child_id, child_id]
    status = child.status(caller=factory.id)
    assert status["controllers"] == [factory.id]
    assert 0 < status["cycles"] <= 10**12 - 500_000_000_000  # what it was sent, less the creation fee
    assert factory.balance <= 9 * 10**12  # the 1T it sent with the child
    with pytest.raises(CanisterReject) as caught:
        child.stop()  # the test is not its controller: the factory is
    assert caught.value.error_code == "IC0512"


def test_a_factory_creating_canisters_in_a_loop_runs_out_of_cycles(
    icllm_canister: CanisterIC, motoko_factory: Path
) -> None:
    factory = icllm_canister(motoko_factory, cycles=3_500_000_000_000)
    with pytest.raises(CanisterReject) as caught:
        factory.update("spawn_many", 50)
    assert caught.value.error_code == "IC0207"
    assert "1000000000000 cycles asked for, the canister has 500000000000" in caught.value.message
    children = factory.query("children_list")
    # Three children were paid for; the callback that recorded the third trapped on the fourth's
    # cycles, so its record of the third is rolled back, as on the IC (the canister itself exists).
    assert len(children) == 2
    assert len(icllm_canister.runtime.canisters) == 4
    assert factory.query("children_list") == children


def test_a_canister_manages_canisters_through_the_management_canister(icllm_canister: CanisterIC) -> None:
    boss = manager(icllm_canister)
    created = manage(
        boss,
        "provisional_create_canister_with_cycles",
        {"amount": 10**12, "settings": None, "specified_id": "ryjl3-tyaaa-aaaaa-aaaba-cai"},
    )
    assert created == {"canister_id": "ryjl3-tyaaa-aaaaa-aaaba-cai"}
    target = {"canister_id": "ryjl3-tyaaa-aaaaa-aaaba-cai"}
    status = manage(boss, "canister_status", target)
    assert isinstance(status, dict)
    assert status["module_hash"] is None and status["settings"]["controllers"] == [boss.id]
    module = bytes(wasmtime.wat2wasm(MANAGER))
    manage(boss, "install_code", {"mode": "install", "arg": b"", "wasm_module": module, **target})
    with pytest.raises(CanisterReject, match="is not empty"):
        manage(boss, "install_code", {"mode": "install", "arg": b"", "wasm_module": module, **target})
    assert icllm_canister.get("ryjl3-tyaaa-aaaaa-aaaba-cai").status(caller=boss.id)["status"] == "running"
    snapshot = manage(boss, "take_canister_snapshot", target)
    assert isinstance(snapshot, dict)
    listed = manage(boss, "list_canister_snapshots", target)
    assert listed == [snapshot]
    manage(boss, "delete_canister_snapshot", {"snapshot_id": snapshot["id"], **target})
    manage(boss, "update_settings", {"settings": {"freezing_threshold": 0}, **target})
    manage(boss, "stop_canister", target)
    manage(boss, "delete_canister", target)
    with pytest.raises(CanisterReject, match="not found"):
        manage(boss, "canister_status", target)


def test_a_canister_that_deletes_itself_gets_the_ics_reject(icllm_canister: CanisterIC) -> None:
    own = "rrkah-fqaaa-aaaaa-aaaaq-cai"
    boss = icllm_canister(bytes(wasmtime.wat2wasm(MANAGER)), id=own, controllers=[own, "2vxsx-fae"])
    with pytest.raises(CanisterReject, match="must be stopped before it is deleted"):
        manage(boss, "delete_canister", {"canister_id": boss.id})
    assert boss.status()["status"] == "running"  # and it goes on answering


def test_a_canister_that_stops_itself_waits_until_the_stop_times_out(
    pt: pytest.Pytester,
) -> None:
    result = run(
        pt,
        """
        import wasmtime
        from tests.canisters.test_management_calls import MANAGER
        from icllm_emulator.runtime.management import management_interface

        def test_self_stop(icllm, icllm_canister):
            own = "rrkah-fqaaa-aaaaa-aaaaq-cai"
            boss = icllm_canister(bytes(wasmtime.wat2wasm(MANAGER)), id=own, controllers=[own, "2vxsx-fae"])
            arg = management_interface().encode_call("stop_canister", ({"canister_id": boss.id},))
            pending = icllm_canister.loop.submit(icllm_canister.runtime.call(
                boss.id, "call", bytes([0, 13]) + b"stop_canister" + arg))
            icllm_canister.settle(0.5)
            assert boss.status()["status"] == "stopping"
            icllm.advance(299)
            assert not pending.done()
            icllm.advance(2)
            answer = pending.result(10)
            assert answer.startswith(b"2Stop canister request timed out"), answer
            icllm_canister.settle(0.5)
            assert boss.status()["status"] == "stopped"
            boss.start()
            assert icllm.set_time(int(icllm.advance(0) * 10**9) + 5 * 10**9) > 0
            try:
                icllm.set_time(0)
            except ValueError as error:
                assert "never moves backwards" in str(error)
            else:
                raise AssertionError("set_time moved the clock backwards")
            icllm_canister.tick(2)
        """,
        "--icllm-clock",
        "virtual",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=1)


def test_nothing_of_a_failed_test_leaks_into_the_next(pt: pytest.Pytester, motoko_factory: Path) -> None:
    result = run(
        pt,
        f"""
        import pytest

        def test_leaves_a_mess(icllm, icllm_canister):
            icllm.hold()
            factory = icllm_canister({str(motoko_factory)!r}, cycles=10 * 10**12,
                                     id="ryjl3-tyaaa-aaaaa-aaaba-cai")
            child = icllm_canister.get(factory.update("spawn", "x"))
            child.submit("ask", "never answered")
            icllm.held(count=1)
            factory.snapshot()
            assert False, "fails with a call in flight, a child and a snapshot"

        def test_starts_clean(icllm_canister):
            assert icllm_canister.runtime.canisters == {{}}
            assert icllm_canister.runtime.lifecycle.records == {{}}
            factory = icllm_canister({str(motoko_factory)!r}, id="ryjl3-tyaaa-aaaaa-aaaba-cai")
            assert factory.query("children_list") == []
        """,
    )
    result.assert_outcomes(passed=1, failed=1)


def test_a_module_that_cannot_be_installed_is_a_reject_to_the_calling_canister(
    icllm_canister: CanisterIC,
) -> None:
    boss = manager(icllm_canister)
    created = manage(boss, "provisional_create_canister_with_cycles", {"amount": None, "settings": None})
    assert isinstance(created, dict)
    target = {"canister_id": created["canister_id"]}
    with pytest.raises(
        CanisterReject, match="Wasm module is not valid: the wasm_module is not a WebAssembly"
    ):
        manage(boss, "install_code", {"mode": "install", "arg": b"", "wasm_module": b"junk", **target})
    module = bytes(wasmtime.wat2wasm(MANAGER))
    with pytest.raises(CanisterReject, match="has no canister_init to take it"):
        arg = b"DIDL\x00\x01\x71\x01x"
        manage(boss, "install_code", {"mode": "install", "arg": arg, "wasm_module": module, **target})
    status = manage(boss, "canister_status", target)
    assert isinstance(status, dict) and status["module_hash"] is None  # still empty, and usable


def test_no_canister_is_installed_or_created_at_a_stand_ins_principal(
    icllm_canister: CanisterIC, motoko_ledger: Path
) -> None:
    from tests.canisters.conftest import LEDGER_DID, LEDGER_ID

    icllm_canister.stub(LEDGER_ID, did=LEDGER_DID)
    with pytest.raises(CanisterReject, match=f"The canister id {LEDGER_ID} is held by a stand-in"):
        icllm_canister(motoko_ledger, id=LEDGER_ID)
    boss = manager(icllm_canister)
    with pytest.raises(CanisterReject, match="held by a stand-in scripted from the test"):
        manage(
            boss,
            "provisional_create_canister_with_cycles",
            {"amount": 10**12, "settings": None, "specified_id": LEDGER_ID},
        )
    assert [c.id for c in icllm_canister.runtime.canisters.values()] == [boss.id]
