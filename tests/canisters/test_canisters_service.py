"""The Canisters gRPC service: install and call canister modules from any language."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import wasmtime

from icllm_emulator._proto.icllm.v1 import canisters_pb2 as pb
from icllm_emulator._proto.icllm.v1 import canisters_pb2_grpc
from icllm_emulator._proto.icllm.v1 import control_pb2 as cpb
from icllm_emulator.runtime.values import Interface
from tests.conftest import Stubs
from tests.waiting import wait_until


def stub(emu: Stubs) -> canisters_pb2_grpc.CanistersStub:
    return canisters_pb2_grpc.CanistersStub(emu.channel)


def test_install_call_logs_list_and_remove(emu: Stubs, motoko_agent: Path) -> None:
    canisters = stub(emu)
    installed = canisters.Install(pb.InstallRequest(wasm=motoko_agent.read_bytes(), name="agent"))
    assert 'prompt: ("text": text) -> (text);' in installed.candid
    interface = Interface(installed.candid)
    emu.control.AddRules(
        cpb.AddRulesRequest(
            rules=[
                cpb.Rule(
                    match=cpb.RuleMatch(contains="hello"),
                    action=cpb.RuleAction(reply=cpb.ReplyAction(content="hi there")),
                )
            ]
        )
    )
    response = canisters.Call(
        pb.CanisterCallRequest(
            canister_id=installed.canister_id,
            method="prompt",
            arg=interface.encode_call("prompt", ("hello",)),
        )
    )
    assert interface.decode_reply("prompt", response.reply) == "hi there"
    count = canisters.Call(
        pb.CanisterCallRequest(
            canister_id=installed.canister_id, method="asked_count", arg=b"DIDL\0\0", query=True
        )
    )
    assert interface.decode_reply("asked_count", count.reply) == 1
    (info,) = canisters.ListCanisters(pb.ListCanistersRequest()).canisters
    assert (info.canister_id, info.name) == (installed.canister_id, "agent")
    assert "prompt" in info.update_methods and "asked_count" in info.query_methods
    trapped = canisters.Call(
        pb.CanisterCallRequest(
            canister_id=installed.canister_id,
            method="trap_after_await",
            arg=interface.encode_call("trap_after_await", ("hello",)),
        )
    )
    assert trapped.WhichOneof("outcome") == "reject"
    assert (trapped.reject.code, trapped.reject.error_code) == (5, "IC0503")
    logs = canisters.GetLogs(pb.GetLogsRequest(canister_id=installed.canister_id)).entries
    assert any("trapped after the answer: hi there" in entry.text for entry in logs)
    canisters.Remove(pb.RemoveRequest(canister_id=installed.canister_id))
    assert list(canisters.ListCanisters(pb.ListCanistersRequest()).canisters) == []


def test_reset_removes_every_canister(emu: Stubs, rust_agent: Path) -> None:
    canisters = stub(emu)
    canisters.Install(pb.InstallRequest(wasm=rust_agent.read_bytes()))
    emu.control.Reset(cpb.ResetRequest())
    assert list(canisters.ListCanisters(pb.ListCanistersRequest()).canisters) == []


def test_a_call_waiting_on_a_held_answer_blocks_no_other_call(emu: Stubs, rust_agent: Path) -> None:
    canisters = stub(emu)
    agent = canisters.Install(pb.InstallRequest(wasm=rust_agent.read_bytes())).canister_id
    interface = Interface(rust_agent.with_suffix(".did").read_text())
    emu.control.SetHold(cpb.SetHoldRequest(hold=True))
    waiting = canisters.Call.future(
        pb.CanisterCallRequest(canister_id=agent, method="ask", arg=interface.encode_call("ask", ("slow",)))
    )
    wait_until(lambda: bool(emu.control.ListJobs(cpb.ListJobsRequest(), timeout=5).jobs), "the held job")
    answers = canisters.Call(
        pb.CanisterCallRequest(canister_id=agent, method="answers", arg=b"DIDL\0\0", query=True), timeout=5
    )
    assert interface.decode_reply("answers", answers.reply) == 0
    assert not waiting.done()
    emu.control.Release(cpb.ReleaseRequest(all=True))
    assert interface.decode_reply("ask", waiting.result(timeout=10).reply)


@pytest.mark.parametrize(
    ("request_", "status", "details"),
    [
        (pb.InstallRequest(wasm=b"hello"), grpc.StatusCode.INVALID_ARGUMENT, "is not a WebAssembly module"),
        (pb.InstallRequest(wasm=b""), grpc.StatusCode.INVALID_ARGUMENT, "starts with nothing"),
        (pb.InstallRequest(wasm=b"\x1f\x8bnot gzip"), grpc.StatusCode.INVALID_ARGUMENT, "gzip that does not"),
        (
            pb.InstallRequest(wasm=b"\0" * (7 * 2**20)),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "give a larger module",
        ),
        (
            pb.InstallRequest(wasm=b"\0asm\x01\0\0\0", cycles="lots"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not a natural number of cycles",
        ),
        (
            pb.InstallRequest(wasm=b"\0asm\x01\0\0\0", cycles=" 5"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "cycles ' 5' is not a natural number of cycles (decimal digits only, no sign or spaces",
        ),
    ],
)
def test_bad_installs_get_clear_statuses(
    emu: Stubs, request_: pb.InstallRequest, status: grpc.StatusCode, details: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub(emu).Install(request_)
    assert caught.value.code() is status
    assert details in caught.value.details()


def test_a_trap_in_init_fails_the_install(emu: Stubs) -> None:
    module = wasmtime.wat2wasm(
        '(module (import "ic0" "trap" (func $t (param i32 i32))) (memory (export "memory") 1)'
        ' (data (i32.const 0) "bad init")'
        ' (func (export "canister_init") (call $t (i32.const 0) (i32.const 8))))'
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub(emu).Install(pb.InstallRequest(wasm=bytes(module)))
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "canister_init trapped" in caught.value.details() and "bad init" in caught.value.details()


def test_bad_calls_get_clear_statuses_or_rejects(emu: Stubs, motoko_agent: Path) -> None:
    canisters = stub(emu)
    agent = canisters.Install(pb.InstallRequest(wasm=motoko_agent.read_bytes())).canister_id
    with pytest.raises(grpc.RpcError) as caught:
        canisters.Call(pb.CanisterCallRequest(canister_id="aaaaa-aa-not", method="x"))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as caught:
        canisters.Call(pb.CanisterCallRequest(canister_id="ryjl3-tyaaa-aaaaa-aaaba-cai", method="x"))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert "no canister ryjl3-tyaaa-aaaaa-aaaba-cai is installed" in caught.value.details()
    unknown = canisters.Call(pb.CanisterCallRequest(canister_id=agent, method="nope", arg=b"DIDL\0\0"))
    assert (unknown.reject.code, unknown.reject.error_code) == (3, "IC0536")
    garbled = canisters.Call(pb.CanisterCallRequest(canister_id=agent, method="prompt", arg=b"not candid"))
    assert garbled.reject.code == 5 and garbled.reject.message
    with pytest.raises(grpc.RpcError) as caught:
        canisters.GetLogs(pb.GetLogsRequest(canister_id=""))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    healthy = canisters.Call(pb.CanisterCallRequest(canister_id=agent, method="asked_count", arg=b"DIDL\0\0"))
    assert healthy.WhichOneof("outcome") == "reply"


def test_serve_installs_canisters_at_start_up_and_lists_them_in_the_port_file(
    tmp_path: Path, motoko_agent: Path, rust_agent: Path
) -> None:
    port_file = tmp_path / "ports.json"
    env = {**os.environ, "ICLLM_CANISTER": f"agent={motoko_agent};rust={rust_agent}"}
    log = tmp_path / "emulator.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "icllm_emulator",
                "serve",
                "--grpc-port",
                "0",
                "--ollama-port",
                "off",
                "--port-file",
                str(port_file),
            ],
            env=env,
            stderr=stderr,
        )
    try:
        # the port file is the readiness signal
        wait_until(lambda: port_file.exists() or process.poll() is not None, "the port file", timeout=30)
        assert port_file.exists(), log.read_text()
        ports = json.loads(port_file.read_text())
        assert set(ports["canisters"]) == {"agent", "rust"}
        with grpc.insecure_channel(ports["grpc_target"]) as channel:
            listed = canisters_pb2_grpc.CanistersStub(channel).ListCanisters(pb.ListCanistersRequest())
            assert {c.name: c.canister_id for c in listed.canisters} == ports["canisters"]
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_serve_refuses_a_canister_it_cannot_install(tmp_path: Path) -> None:
    bad = tmp_path / "agent.wasm"
    bad.write_text("not wasm")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "icllm_emulator",
            "serve",
            "--grpc-port",
            "0",
            "--ollama-port",
            "off",
            "--canister",
            f"agent={bad}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"--canister agent={bad}: " in result.stderr and "is not a WebAssembly module" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "icllm_emulator", "serve", "--canister", "agent"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "'agent' is not NAME=PATH" in result.stderr


def test_calls_still_waiting_end_when_the_canister_is_removed_or_the_emulator_reset(
    emu: Stubs, rust_agent: Path
) -> None:
    canisters = stub(emu)
    interface = Interface(rust_agent.with_suffix(".did").read_text())
    for end in ("remove", "reset"):
        agent = canisters.Install(pb.InstallRequest(wasm=rust_agent.read_bytes())).canister_id
        emu.control.SetHold(cpb.SetHoldRequest(hold=True))
        waiting = canisters.Call.future(
            pb.CanisterCallRequest(canister_id=agent, method="ask", arg=interface.encode_call("ask", ("x",)))
        )
        wait_until(lambda: bool(emu.control.ListJobs(cpb.ListJobsRequest()).jobs), "the LLM call queued")
        if end == "remove":
            canisters.Remove(pb.RemoveRequest(canister_id=agent))
        else:
            emu.control.Reset(cpb.ResetRequest())
        outcome = waiting.result(timeout=10)
        assert outcome.WhichOneof("outcome") == "reject"
        assert outcome.reject.code == (3 if end == "remove" else 2)
        emu.control.Reset(cpb.ResetRequest())
