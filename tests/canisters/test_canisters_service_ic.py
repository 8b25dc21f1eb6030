"""The Canisters gRPC service's management, stand-in and fault methods: what a harness in another
language gets, and a clear status for each kind of bad input."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message

from icllm_emulator._proto.icllm.v1 import canisters_pb2 as pb
from icllm_emulator._proto.icllm.v1 import canisters_pb2_grpc
from icllm_emulator._proto.icllm.v1 import control_pb2 as cpb
from icllm_emulator.runtime.values import Interface
from tests.canisters.conftest import LEDGER_DID, LEDGER_ID
from tests.conftest import Stubs, reject_code
from tests.waiting import wait_until

OWNER = "rrkah-fqaaa-aaaaa-aaaaq-cai"
ACCOUNT = bytes(range(32))
NO_ARGS = b"DIDL\0\0"


def stub(emu: Stubs) -> canisters_pb2_grpc.CanistersStub:
    return canisters_pb2_grpc.CanistersStub(emu.channel)


def error_code(error: grpc.RpcError) -> str:
    return str(dict(error.trailing_metadata() or ()).get("icllm-error-code", ""))


def refused(call: object, status: grpc.StatusCode, match: str) -> grpc.RpcError:
    """Run `call` (a lambda): it must fail with `status` and a message matching `match`."""
    with pytest.raises(grpc.RpcError) as caught:
        call()  # type: ignore[operator]
    error = caught.value
    assert error.code() == status, error.details()
    assert re.search(match, error.details() or ""), error.details()
    return error


def asked(canisters: canisters_pb2_grpc.CanistersStub, canister_id: str, interface: Interface) -> int:
    reply = canisters.Call(
        pb.CanisterCallRequest(canister_id=canister_id, method="asked_count", arg=NO_ARGS, query=True)
    ).reply
    return int(interface.decode_reply("asked_count", reply))


def prompt(emu: Stubs, canister_id: str, interface: Interface) -> None:
    emu.control.AddRules(
        cpb.AddRulesRequest(rules=[cpb.Rule(action=cpb.RuleAction(reply=cpb.ReplyAction(content="ok")))])
    )
    stub(emu).Call(
        pb.CanisterCallRequest(
            canister_id=canister_id, method="prompt", arg=interface.encode_call("prompt", ("hi",))
        )
    )


def test_install_at_an_id_upgrade_stop_start_status_snapshots_and_delete(
    emu: Stubs, motoko_agent: Path
) -> None:
    canisters = stub(emu)
    wasm = motoko_agent.read_bytes()
    installed = canisters.Install(
        pb.InstallRequest(wasm=wasm, canister_id=LEDGER_ID, controllers=[OWNER, "2vxsx-fae"])
    )
    assert installed.canister_id == LEDGER_ID
    agent = Interface(installed.candid)
    prompt(emu, LEDGER_ID, agent)
    upgraded = canisters.Upgrade(pb.UpgradeRequest(canister_id=LEDGER_ID))  # the same module, heap kept
    assert upgraded.candid == installed.candid
    assert asked(canisters, LEDGER_ID, agent) == 1
    status = canisters.Status(pb.StatusRequest(canister_id=LEDGER_ID, caller=OWNER))
    assert (status.status, sorted(status.controllers)) == ("running", sorted([OWNER, "2vxsx-fae"]))
    assert len(status.module_hash) == 32 and int(status.cycles) > 0 and status.version == 2
    assert status.settings.log_visibility == "controllers"
    canisters.Stop(pb.StopRequest(canister_id=LEDGER_ID))
    stopped = canisters.Call(
        pb.CanisterCallRequest(canister_id=LEDGER_ID, method="asked_count", arg=NO_ARGS, query=True)
    )
    assert stopped.reject.error_code == "IC0508"
    assert canisters.Status(pb.StatusRequest(canister_id=LEDGER_ID)).status == "stopped"
    canisters.Start(pb.StartRequest(canister_id=LEDGER_ID))
    taken = canisters.TakeSnapshot(pb.TakeSnapshotRequest(canister_id=LEDGER_ID)).snapshot
    prompt(emu, LEDGER_ID, agent)
    assert asked(canisters, LEDGER_ID, agent) == 2
    canisters.LoadSnapshot(pb.LoadSnapshotRequest(canister_id=LEDGER_ID, snapshot_id=taken.id))
    assert asked(canisters, LEDGER_ID, agent) == 1
    listed = canisters.ListSnapshots(pb.ListSnapshotsRequest(canister_id=LEDGER_ID)).snapshots
    assert [s.id for s in listed] == [taken.id] and listed[0].total_size > 0
    canisters.DeleteSnapshot(pb.DeleteSnapshotRequest(canister_id=LEDGER_ID, snapshot_id=taken.id))
    assert list(canisters.ListSnapshots(pb.ListSnapshotsRequest(canister_id=LEDGER_ID)).snapshots) == []
    canisters.Reinstall(pb.ReinstallRequest(canister_id=LEDGER_ID))
    assert asked(canisters, LEDGER_ID, agent) == 0
    canisters.Stop(pb.StopRequest(canister_id=LEDGER_ID))
    assert int(canisters.Delete(pb.DeleteRequest(canister_id=LEDGER_ID)).cycles) > 0
    assert list(canisters.ListCanisters(pb.ListCanistersRequest()).canisters) == []


def test_management_methods_refuse_bad_input_with_the_ics_codes(emu: Stubs, motoko_agent: Path) -> None:
    canisters = stub(emu)
    wasm = motoko_agent.read_bytes()
    unknown = "eaonx-2aaaa-aaaaa-acoea-cai"
    error = refused(
        lambda: canisters.Status(pb.StatusRequest(canister_id=unknown)),
        grpc.StatusCode.NOT_FOUND,
        "not found",
    )
    assert (reject_code(error), error_code(error)) == (3, "IC0301")
    refused(
        lambda: canisters.Stop(pb.StopRequest(canister_id="not a principal")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "'not a principal' is not a textual principal",
    )
    refused(
        lambda: canisters.Upgrade(pb.UpgradeRequest(canister_id=unknown)),
        grpc.StatusCode.NOT_FOUND,
        f"no canister {unknown}",
    )
    installed = canisters.Install(pb.InstallRequest(wasm=wasm, controllers=[OWNER]))
    target = installed.canister_id
    refused(
        lambda: canisters.Install(pb.InstallRequest(wasm=wasm, canister_id=target)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "is already installed",
    )
    refused(
        lambda: canisters.Install(pb.InstallRequest(wasm=wasm, canister_id="ledger")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "not a textual principal",
    )
    error = refused(
        lambda: canisters.Stop(pb.StopRequest(canister_id=target)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "Only the controllers of the canister",
    )
    assert (reject_code(error), error_code(error)) == (5, "IC0512")
    refused(
        lambda: canisters.Upgrade(pb.UpgradeRequest(canister_id=target, wasm=b"not wasm", caller=OWNER)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "not a WebAssembly module",
    )
    refused(
        lambda: canisters.Upgrade(
            pb.UpgradeRequest(
                canister_id=target,
                caller=OWNER,
                wasm_memory_persistence=pb.WASM_MEMORY_PERSISTENCE_NOT_GIVEN,
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "Missing upgrade option",
    )
    refused(
        lambda: canisters.Upgrade(
            pb.UpgradeRequest(canister_id=target, caller=OWNER, wasm_memory_persistence=9)  # type: ignore[arg-type]
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "wasm_memory_persistence 9 is not a WasmMemoryPersistence",
    )
    refused(
        lambda: canisters.Delete(pb.DeleteRequest(canister_id=target, caller=OWNER)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "must be stopped before it is deleted",
    )
    error = refused(
        lambda: canisters.LoadSnapshot(
            pb.LoadSnapshotRequest(canister_id=target, caller=OWNER, snapshot_id=b"\1\2")
        ),
        grpc.StatusCode.NOT_FOUND,
        "Could not find the snapshot ID 0102",
    )
    assert reject_code(error) == 3
    refused(
        lambda: canisters.TakeSnapshot(pb.TakeSnapshotRequest(canister_id=unknown)),
        grpc.StatusCode.NOT_FOUND,
        "not found",
    )
    # the canister is as it was, and answers
    assert asked(canisters, target, Interface(installed.candid)) == 0


def test_a_stand_in_answers_from_rules_given_as_json_and_lists_its_calls(emu: Stubs) -> None:
    canisters = stub(emu)
    created = canisters.CreateStub(pb.CreateStubRequest(canister_id=LEDGER_ID, did=LEDGER_DID.read_text()))
    assert list(created.methods) == ["account_balance", "transfer"]
    ids = canisters.AddStubRules(
        pb.AddStubRulesRequest(
            canister_id=LEDGER_ID,
            rules=[
                pb.StubRule(method="account_balance", times=1, reply_json='[{"e8s": "9007199254740993"}]'),
                pb.StubRule(method="account_balance", reject=pb.ScriptedReject(code=2, message="busy")),
            ],
        )
    ).rule_ids
    assert list(ids) == ["rule-1", "rule-2"]
    ledger = Interface(LEDGER_DID.read_text())
    arg = ledger.encode_call("account_balance", ({"account": ACCOUNT},))
    call = pb.CanisterCallRequest(canister_id=LEDGER_ID, method="account_balance", arg=arg, caller=OWNER)
    replied = canisters.Call(call)
    assert ledger.decode_reply("account_balance", replied.reply) == {"e8s": 2**53 + 1}
    rejected = canisters.Call(call)
    assert (rejected.reject.code, rejected.reject.message) == (2, "busy")
    listed = canisters.ListStubCalls(pb.ListStubCallsRequest(canister_id=LEDGER_ID))
    first = listed.calls[0]
    assert (first.method, first.caller, first.rule_id, first.outcome) == (
        "account_balance",
        OWNER,
        "rule-1",
        "replied",
    )
    assert json.loads(first.arg_json) == [{"account": base64.b64encode(ACCOUNT).decode()}]
    assert [(r.id, r.uses) for r in listed.rules] == [("rule-1", 1), ("rule-2", 1)]
    # held answers wait for the harness
    canisters.AddStubRules(
        pb.AddStubRulesRequest(canister_id=LEDGER_ID, rules=[pb.StubRule(method="transfer", trap="no")])
    )
    canisters.HoldStub(pb.HoldStubRequest(canister_id=LEDGER_ID, enabled=True))
    transfer = {
        "memo": 1,
        "amount": {"e8s": 1},
        "fee": {"e8s": 1},
        "from_subaccount": None,
        "to": ACCOUNT,
        "created_at_time": None,
    }
    pending = canisters.Call.future(
        pb.CanisterCallRequest(
            canister_id=LEDGER_ID, method="transfer", arg=ledger.encode_call("transfer", (transfer,))
        )
    )

    def held() -> list[str]:
        calls = canisters.ListStubCalls(pb.ListStubCallsRequest(canister_id=LEDGER_ID)).calls
        return [c.id for c in calls if c.outcome == "held"]

    wait_until(lambda: len(held()) == 1, what="a held call")
    (held_id,) = held()
    assert not pending.done()
    assert list(canisters.ReleaseStubCalls(pb.ReleaseStubCallsRequest(canister_id=LEDGER_ID)).call_ids) == [
        held_id
    ]
    trapped = pending.result(timeout=30)
    assert (trapped.reject.code, trapped.reject.error_code) == (5, "IC0503")


def test_stand_in_methods_refuse_bad_input(emu: Stubs, motoko_agent: Path) -> None:
    canisters = stub(emu)
    did = LEDGER_DID.read_text()
    refused(
        lambda: canisters.CreateStub(pb.CreateStubRequest(canister_id=LEDGER_ID, did="service : { oops")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "the stand-in's did is not valid Candid",
    )
    refused(
        lambda: canisters.CreateStub(
            pb.CreateStubRequest(canister_id="w36hm-eqaaa-aaaal-qr76a-cai", did=did)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "is the LLM canister",
    )
    installed = canisters.Install(pb.InstallRequest(wasm=motoko_agent.read_bytes()))
    refused(
        lambda: canisters.CreateStub(pb.CreateStubRequest(canister_id=installed.canister_id, did=did)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "a canister is installed at",
    )
    refused(
        lambda: canisters.AddStubRules(pb.AddStubRulesRequest(canister_id=LEDGER_ID)),
        grpc.StatusCode.NOT_FOUND,
        f"no stand-in is at {LEDGER_ID}",
    )
    canisters.CreateStub(pb.CreateStubRequest(canister_id=LEDGER_ID, did=did))
    error = refused(
        lambda: canisters.Install(pb.InstallRequest(wasm=motoko_agent.read_bytes(), canister_id=LEDGER_ID)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "held by a stand-in",
    )
    assert reject_code(error) == 5

    def rules(*given: pb.StubRule) -> None:
        canisters.AddStubRules(pb.AddStubRulesRequest(canister_id=LEDGER_ID, rules=given))

    for rule, status, match in (
        (
            pb.StubRule(method="account_balance", reply_json='[{"e8s": -1}]'),
            grpc.StatusCode.INVALID_ARGUMENT,
            "the reply of account_balance.e8s: expected nat64, got int -1",
        ),
        (
            pb.StubRule(method="account_balance", reply_json='{"e8s": 1}'),
            grpc.StatusCode.INVALID_ARGUMENT,
            r"is a JSON array of 1 value\(s\) \(record",
        ),
        (
            pb.StubRule(method="account_balance", reply_json="[{e8s: 1"),
            grpc.StatusCode.INVALID_ARGUMENT,
            r"rules\[0\].reply_json is not JSON",
        ),
        (
            pb.StubRule(method="burn", reply_json="[]"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "has no method 'burn' in its interface; it has account_balance, transfer",
        ),
        (pb.StubRule(method="account_balance"), grpc.StatusCode.INVALID_ARGUMENT, "has no action"),
        (
            pb.StubRule(method="account_balance", times=0, hang=pb.Hang()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "times must be 1 or more",
        ),
        (
            pb.StubRule(method="account_balance", reject=pb.ScriptedReject(code=9, message="x")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "reject code 9 is not an IC reject code",
        ),
    ):
        refused(lambda rule=rule: rules(rule), status, match)
    listed = canisters.ListStubCalls(pb.ListStubCallsRequest(canister_id=LEDGER_ID))
    assert list(listed.rules) == []  # a refused rule adds none, nor the good ones beside it
    refused(
        lambda: canisters.ReleaseStubCalls(
            pb.ReleaseStubCallsRequest(canister_id=LEDGER_ID, call_ids=["call-7"])
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "no held call call-7",
    )
    # an argument the stand-in cannot decode: it traps, as a Candid canister does
    garbled = canisters.Call(
        pb.CanisterCallRequest(canister_id=LEDGER_ID, method="account_balance", arg=b"DIDL")
    )
    assert garbled.reject.code == 5 and "failed to decode the call's argument" in garbled.reject.message
    (call,) = canisters.ListStubCalls(pb.ListStubCallsRequest(canister_id=LEDGER_ID)).calls
    assert call.unexpected and call.arg_json == "null"


def test_a_fault_rejects_a_call_between_two_canisters_once(
    emu: Stubs, motoko_wallet: Path, motoko_ledger: Path
) -> None:
    canisters = stub(emu)
    ledger = canisters.Install(pb.InstallRequest(wasm=motoko_ledger.read_bytes())).canister_id
    installed = canisters.Install(pb.InstallRequest(wasm=motoko_wallet.read_bytes()))
    wallet = Interface(installed.candid)
    ids = canisters.AddFaults(
        pb.AddFaultsRequest(
            faults=[
                pb.Fault(
                    callee=ledger,
                    method="account_balance",
                    times=1,
                    reject=pb.ScriptedReject(code=2, message="subnet busy"),
                )
            ]
        )
    ).fault_ids
    assert list(ids) == ["fault-1"]

    def balance() -> str:
        reply = canisters.Call(
            pb.CanisterCallRequest(
                canister_id=installed.canister_id,
                method="balance_at",
                arg=wallet.encode_call("balance_at", (ledger, ACCOUNT)),
            )
        ).reply
        return str(wallet.decode_reply("balance_at", reply))

    assert balance() == "system_transient: subnet busy"
    assert balance() == "100000000 e8s"
    for fault, match in (
        (pb.Fault(callee="w36hm-eqaaa-aaaal-qr76a-cai", hang=pb.Hang()), "scripted with Control.AddRules"),
        (
            pb.Fault(callee="ledger", hang=pb.Hang()),
            r"faults\[0\].callee 'ledger' is not a textual principal",
        ),
        (pb.Fault(callee=ledger), "has no action"),
        (pb.Fault(delay_seconds=-1), "delay must be a finite number of seconds"),
    ):
        refused(
            lambda fault=fault: canisters.AddFaults(pb.AddFaultsRequest(faults=[fault])),
            grpc.StatusCode.INVALID_ARGUMENT,
            match,
        )


def test_the_new_methods_need_the_control_token(start_emulator: object) -> None:
    emu = start_emulator(control_token="s3cret")  # type: ignore[operator]
    canisters = stub(emu)
    for call in (
        lambda: canisters.Status(pb.StatusRequest(canister_id=LEDGER_ID)),
        lambda: canisters.CreateStub(pb.CreateStubRequest(canister_id=LEDGER_ID, did="service : {}")),
        lambda: canisters.AddFaults(pb.AddFaultsRequest()),
    ):
        refused(call, grpc.StatusCode.UNAUTHENTICATED, "needs the emulator's control token")


def test_every_management_and_stand_in_method_names_what_does_not_exist(emu: Stubs) -> None:
    canisters = stub(emu)
    unknown = "eaonx-2aaaa-aaaaa-acoea-cai"
    management: list[tuple[str, Message]] = [
        ("Upgrade", pb.UpgradeRequest(canister_id=unknown)),
        ("Reinstall", pb.ReinstallRequest(canister_id=unknown)),
        ("Stop", pb.StopRequest(canister_id=unknown)),
        ("Start", pb.StartRequest(canister_id=unknown)),
        ("Delete", pb.DeleteRequest(canister_id=unknown)),
        ("Status", pb.StatusRequest(canister_id=unknown)),
        ("TakeSnapshot", pb.TakeSnapshotRequest(canister_id=unknown)),
        ("LoadSnapshot", pb.LoadSnapshotRequest(canister_id=unknown, snapshot_id=b"\1")),
        ("ListSnapshots", pb.ListSnapshotsRequest(canister_id=unknown)),
        ("DeleteSnapshot", pb.DeleteSnapshotRequest(canister_id=unknown, snapshot_id=b"\1")),
    ]
    for name, request in management:
        refused(
            lambda: getattr(canisters, name)(request),  # noqa: B023 (called at once)
            grpc.StatusCode.NOT_FOUND,
            f"{unknown}",
        )
    standins: list[tuple[str, Message]] = [
        ("AddStubRules", pb.AddStubRulesRequest(canister_id=unknown)),
        ("HoldStub", pb.HoldStubRequest(canister_id=unknown, enabled=True)),
        ("ReleaseStubCalls", pb.ReleaseStubCallsRequest(canister_id=unknown)),
        ("ListStubCalls", pb.ListStubCallsRequest(canister_id=unknown)),
    ]
    for name, request in standins:
        refused(
            lambda: getattr(canisters, name)(request),  # noqa: B023 (called at once)
            grpc.StatusCode.NOT_FOUND,
            f"no stand-in is at {unknown} \\(stand-ins: none\\); make one with CreateStub",
        )
    canisters.CreateStub(pb.CreateStubRequest(canister_id=LEDGER_ID, did=LEDGER_DID.read_text()))
    refused(
        lambda: canisters.ListStubCalls(pb.ListStubCallsRequest(canister_id=LEDGER_ID, page_token="x")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "is not a page token",
    )
    refused(
        lambda: canisters.Reinstall(pb.ReinstallRequest(canister_id=LEDGER_ID)),
        grpc.StatusCode.NOT_FOUND,
        f"no canister {LEDGER_ID}",
    )
