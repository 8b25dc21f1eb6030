"""Upgrades, reinstalls, stop/start, deletion and snapshots of real modules, through the fixture."""

from __future__ import annotations

from pathlib import Path

import pytest

from icllm_emulator.runtime.ids import principal_bytes
from pytest_icllm import CanisterReject, IcllmController
from pytest_icllm._canisters import CanisterIC


def test_motoko_agent_keeps_its_conversation_across_an_upgrade(
    icllm: IcllmController, icllm_canister: CanisterIC, any_motoko_agent: Path
) -> None:
    icllm.on().reply("an answer")
    agent = icllm_canister(any_motoko_agent)
    agent.update("prompt", "one")
    agent.update("prompt", "two")
    before = agent.status()
    agent.upgrade()
    assert agent.query("asked_count") == 2
    assert agent.update("prompt", "three") == "an answer"
    assert agent.query("asked_count") == 3
    after = agent.status()
    assert after["module_hash"] == before["module_hash"]
    assert after["version"] > before["version"]


def test_enhanced_persistence_upgrade_without_the_keep_option_is_refused(
    icllm_canister: CanisterIC, motoko_agent: Path
) -> None:
    agent = icllm_canister(motoko_agent)
    agent.update("prompt", "one")
    with pytest.raises(CanisterReject) as caught:
        agent.upgrade(wasm_memory_persistence=None)
    assert "Missing upgrade option: Enhanced orthogonal persistence requires the " in caught.value.message
    assert agent.query("asked_count") == 1  # the old module goes on answering


def test_keep_is_refused_for_a_classical_module(
    icllm_canister: CanisterIC, motoko_agent_classical: Path
) -> None:
    agent = icllm_canister(motoko_agent_classical)
    with pytest.raises(CanisterReject, match="requires that the new canister module supports enhanced"):
        agent.upgrade(wasm_memory_persistence="keep")


def test_reinstall_wipes_the_state_and_keeps_the_cycles(
    icllm_canister: CanisterIC, any_motoko_agent: Path
) -> None:
    agent = icllm_canister(any_motoko_agent, cycles=10**13)
    agent.update("prompt", "one")
    runtime = icllm_canister.runtime
    icllm_canister.loop.run(
        icllm_canister.read(lambda: runtime.lifecycle.deposit_cycles(principal_bytes(agent.id), 7))
    )
    balance = agent.balance
    assert balance == 10**13 + 7
    agent.reinstall()
    assert agent.query("asked_count") == 0
    assert agent.balance == balance


def test_status_reports_every_field(icllm_canister: CanisterIC, motoko_agent: Path) -> None:
    agent = icllm_canister(motoko_agent, cycles=5 * 10**12, env={"MODE": "test"})
    status = agent.status()
    assert status["status"] == "running"
    assert status["controllers"] == ["2vxsx-fae"]
    assert status["cycles"] == 5 * 10**12
    assert len(status["module_hash"]) == 32
    assert status["memory_size"] > 0
    settings = status["settings"]
    assert {"name": "MODE", "value": "test"} in settings["environment_variables"]
    assert settings["freezing_threshold"] == 2_592_000
    assert set(status) >= {"memory_metrics", "reserved_cycles", "idle_cycles_burned_per_day", "query_stats"}


def test_only_controllers_manage_a_canister(icllm_canister: CanisterIC, motoko_agent: Path) -> None:
    owner = "rrkah-fqaaa-aaaaa-aaaaq-cai"
    agent = icllm_canister(motoko_agent, controllers=[owner])
    with pytest.raises(CanisterReject) as caught:
        agent.stop()
    assert caught.value.error_code == "IC0512"
    assert f"Canister's controllers: {owner}" in caught.value.message
    assert "Sender's ID: 2vxsx-fae" in caught.value.message
    agent.stop(caller=owner)
    assert agent.status(caller=owner)["status"] == "stopped"


def test_a_canister_can_be_installed_at_any_principal(icllm_canister: CanisterIC, motoko_agent: Path) -> None:
    ledger_id = "ryjl3-tyaaa-aaaaa-aaaba-cai"
    agent = icllm_canister(motoko_agent, id=ledger_id)
    assert agent.id == ledger_id
    assert agent.query("asked_count") == 0
    with pytest.raises(CanisterReject, match="is already installed"):
        icllm_canister(motoko_agent, id=ledger_id)
    with pytest.raises(ValueError, match="is not a textual principal"):
        icllm_canister(motoko_agent, id="not-a-principal")


def test_stopping_waits_for_the_call_in_flight_and_then_rejects_new_calls(
    icllm: IcllmController, icllm_canister: CanisterIC, motoko_agent: Path
) -> None:
    icllm.on().reply("late answer")
    icllm.hold()
    agent = icllm_canister(motoko_agent)
    pending = agent.submit("prompt", "slow")
    (held,) = icllm.held(count=1)
    agent.stop(wait=False)
    assert agent.status()["status"] == "stopping"
    with pytest.raises(CanisterReject) as caught:
        agent.update("prompt", "new")
    assert caught.value.error_code == "IC0509"
    icllm.release(held)
    assert pending.result() == "late answer"  # the call in flight finishes
    assert icllm_canister.settle()
    assert agent.status()["status"] == "stopped"
    with pytest.raises(CanisterReject) as caught:
        agent.query("asked_count")
    assert caught.value.error_code == "IC0508"
    agent.start()
    assert agent.query("asked_count") == 1


def test_delete_needs_a_stopped_canister_and_then_it_is_gone(
    icllm_canister: CanisterIC, motoko_agent: Path
) -> None:
    agent = icllm_canister(motoko_agent)
    with pytest.raises(CanisterReject, match="must be stopped before it is deleted"):
        agent.delete()
    agent.stop()
    agent.delete()
    with pytest.raises(ValueError, match="no canister"):
        agent.query("asked_count")


def test_a_snapshot_restores_module_and_state(
    icllm: IcllmController, icllm_canister: CanisterIC, any_motoko_agent: Path
) -> None:
    icllm.on().reply("ok")
    agent = icllm_canister(any_motoko_agent)
    agent.update("prompt", "one")
    snapshot = agent.snapshot()
    agent.update("prompt", "two")
    agent.update("prompt", "three")
    assert agent.query("asked_count") == 3
    agent.restore(snapshot)
    assert agent.query("asked_count") == 1
    assert agent.update("prompt", "again") == "ok"
    assert agent.query("asked_count") == 2
    agent.reinstall()
    agent.restore(snapshot)  # after a reinstall too
    assert agent.query("asked_count") == 1


def test_a_snapshot_that_does_not_exist_is_the_ics_reject(
    icllm_canister: CanisterIC, motoko_agent: Path
) -> None:
    agent = icllm_canister(motoko_agent)
    with pytest.raises(CanisterReject, match="Could not find the snapshot ID"):
        agent.restore(b"\x00" * 18)
    agent.stop()
    agent.delete()
    with pytest.raises(CanisterReject) as caught:
        agent.snapshot()
    assert caught.value.error_code == "IC0301"


def test_stable_memory_is_readable_and_assignable(icllm_canister: CanisterIC, rust_agent: Path) -> None:
    agent = icllm_canister(rust_agent)
    assert agent.stable_memory == b""
    agent.stable_memory = (41).to_bytes(8, "little")
    assert len(agent.stable_memory) == 65536
    assert int.from_bytes(agent.query_raw("answers", b"DIDL\0\0")[-8:], "little") == 41


# A classical Motoko actor that keeps a heap-only list through `preupgrade`/`postupgrade` and a stable
# variable; a second version whose `postupgrade` traps.
CLASSICAL = """
import Array "mo:core/Array";
import Runtime "mo:core/Runtime";
persistent actor Notes {
  var saved : [Text] = [];
  transient var notes : [Text] = [];
  public func add(note : Text) : async Nat { notes := Array.concat(notes, [note]); notes.size() };
  public query func count() : async Nat { notes.size() };
  system func preupgrade() { saved := notes };
  system func postupgrade() { notes := saved; saved := []; BROKEN };
};
"""


@pytest.fixture(scope="module")
def notes() -> tuple[Path, Path]:
    from tests.canisters.conftest import BUILD

    good = BUILD.built_motoko(CLASSICAL.replace("BROKEN", ""), "classical")
    broken = BUILD.built_motoko(
        CLASSICAL.replace("BROKEN", 'Runtime.trap("cannot read the notes")'), "classical"
    )
    return good, broken


def test_classical_motoko_keeps_what_preupgrade_saved(
    icllm_canister: CanisterIC, notes: tuple[Path, Path]
) -> None:
    good, _ = notes
    canister = icllm_canister(good)
    canister.update("add", "a")
    canister.update("add", "b")
    canister.upgrade()
    assert canister.query("count") == 2
    canister.upgrade(wasm_memory_persistence="replace")  # classical modules replace the heap anyway
    assert canister.query("count") == 2


# An enhanced-persistence actor whose `preupgrade` traps: only skip_pre_upgrade gets it upgraded.
WEDGED = """
import Runtime "mo:core/Runtime";
persistent actor Wedged {
  var count : Nat = 0;
  public func bump() : async Nat { count += 1; count };
  public query func get() : async Nat { count };
  system func preupgrade() { Runtime.trap("wedged for good") };
};
"""


def test_skip_pre_upgrade_upgrades_a_canister_whose_pre_upgrade_traps(icllm_canister: CanisterIC) -> None:
    from tests.canisters.conftest import BUILD

    canister = icllm_canister(BUILD.built_motoko(WEDGED))
    canister.update("bump")
    with pytest.raises(CanisterReject, match=r"canister_pre_upgrade trapped.*wedged for good"):
        canister.upgrade()
    assert canister.update("bump") == 2
    canister.upgrade(skip_pre_upgrade=True)
    assert canister.status()["version"] == 2  # installed, upgraded: the failed upgrade counts for none
    assert isinstance(canister.query("get"), int)
    assert sum("wedged for good" in line for line in canister.logs) == 1  # pre_upgrade ran only once


def test_a_trapping_post_upgrade_rolls_the_whole_upgrade_back(
    icllm_canister: CanisterIC, notes: tuple[Path, Path]
) -> None:
    good, broken = notes
    canister = icllm_canister(good)
    canister.update("add", "a")
    before = canister.status()
    with pytest.raises(CanisterReject) as caught:
        canister.upgrade(broken)
    assert caught.value.error_code == "IC0503"
    assert "canister_post_upgrade trapped" in caught.value.message
    assert "cannot read the notes" in caught.value.message
    assert canister.query("count") == 1  # the old module answers, its heap as it was
    assert canister.update("add", "b") == 2
    after = canister.status()
    assert after["module_hash"] == before["module_hash"]
    assert any("cannot read the notes" in line for line in canister.logs)


def test_rust_canister_upgrade_keeps_stable_memory_and_replaces_the_heap(
    icllm: IcllmController, icllm_canister: CanisterIC, rust_agent: Path
) -> None:
    icllm.on().reply("fine")
    agent = icllm_canister(rust_agent)
    agent.update_raw("ask", agent_arg("hi"))
    agent.update_raw("ask", agent_arg("there"))
    answers = agent.stable_memory[:8]
    assert int.from_bytes(answers, "little") == 2
    agent.upgrade()
    assert agent.stable_memory[:8] == answers
    assert int.from_bytes(agent.query_raw("answers", b"DIDL\0\0")[-8:], "little") == 2


def agent_arg(text: str) -> bytes:
    data = text.encode()
    return b"DIDL\x00\x01\x71" + bytes([len(data)]) + data


def test_a_restore_ends_the_calls_in_flight_and_drops_their_late_answers(
    icllm: IcllmController, icllm_canister: CanisterIC, motoko_agent: Path
) -> None:
    icllm.on().reply("late")
    agent = icllm_canister(motoko_agent)
    snapshot = agent.snapshot()
    icllm.hold()
    pending = agent.submit("prompt", "slow")
    (held,) = icllm.held(count=1)
    agent.restore(snapshot)
    with pytest.raises(CanisterReject, match="its snapshot was loaded"):
        pending.result()
    icllm.hold(False)
    icllm.release(held)
    assert icllm_canister.settle()
    assert agent.query("asked_count") == 0  # the snapshot's state; the late answer reached no one
    assert not [line for line in agent.logs if "TRAP" in line]  # no callback ran on the restored state
    assert agent.update("prompt", "again") == "late"
