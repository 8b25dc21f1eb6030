"""No answer over the transport's limit: long lists come in pages, and a part too long for one answer is
shortened and marked, so every method keeps working after a canister made something large."""

from __future__ import annotations

import grpc
import wasmtime

from icllm_emulator._proto.icllm.v1 import canisters_pb2 as pb
from icllm_emulator._proto.icllm.v1 import canisters_pb2_grpc
from icllm_emulator._proto.icllm.v1 import control_pb2 as cpb
from icllm_emulator.grpc_api.pages import ANSWER_BYTES
from tests.canisters.test_outcalls import RELAY, _outcall
from tests.conftest import Stubs

MIB = 1024 * 1024

# `print` prints its argument as a log line; `reject` rejects with as many bytes of memory as its
# argument's first four bytes say (little-endian).
LOUD = """
(module
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "debug_print" (func $print (param i32 i32)))
  (import "ic0" "msg_reject" (func $reject (param i32 i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory (export "memory") 1024)
  (data (i32.const 0) "DIDL\\00\\00")
  (func (export "canister_update print")
    (call $arg_copy (i32.const 16) (i32.const 0) (call $arg_size))
    (call $print (i32.const 16) (call $arg_size))
    (call $append (i32.const 0) (i32.const 6))
    (call $reply))
  (func (export "canister_update reject")
    (call $arg_copy (i32.const 16) (i32.const 0) (i32.const 4))
    (call $reject (i32.const 32) (i32.load (i32.const 16))))
)
"""


def canisters(emu: Stubs) -> canisters_pb2_grpc.CanistersStub:
    return canisters_pb2_grpc.CanistersStub(emu.channel)


def install(emu: Stubs, wasm: bytes) -> str:
    installed: pb.InstallResponse = canisters(emu).Install(pb.InstallRequest(wasm=wasm), timeout=60)
    return installed.canister_id


def call(emu: Stubs, canister_id: str, method: str, arg: bytes) -> pb.CanisterCallResponse:
    request = pb.CanisterCallRequest(canister_id=canister_id, method=method, arg=arg)
    response: pb.CanisterCallResponse = canisters(emu).Call(request, timeout=60)
    return response


def with_custom_section(wasm: bytes, name: str, data: bytes) -> bytes:
    def leb(n: int) -> bytes:
        out = bytearray()
        while True:
            byte, n = n & 0x7F, n >> 7
            out.append(byte | (0x80 if n else 0))
            if not n:
                return bytes(out)

    payload = leb(len(name.encode())) + name.encode() + data
    return wasm + b"\x00" + leb(len(payload)) + payload


def test_get_outcalls_after_a_large_outcall_shortens_it_and_says_so(emu: Stubs) -> None:
    body = b"r" * (1_900_000)
    emu.control.AddOutcallRules(
        cpb.AddOutcallRulesRequest(
            rules=[
                cpb.OutcallRule(
                    match=cpb.OutcallMatch(url_regex="/small$"), response=cpb.OutcallResponse(body=b"ok")
                ),
                cpb.OutcallRule(response=cpb.OutcallResponse(body=body)),
            ]
        )
    )
    relay = install(emu, bytes(wasmtime.wat2wasm(RELAY)))
    for _ in range(3):
        answer = call(emu, relay, "relay", _outcall("https://example.com/big", body=b"q" * 1_900_000))
        assert answer.WhichOneof("outcome") == "reply"  # a reply of 1.9 MB reaches the caller
    small = call(emu, relay, "relay", _outcall("https://example.com/small", body=b"q"))
    assert small.WhichOneof("outcome") == "reply"
    outcalls, token, pages = [], "", 0
    while True:
        page = emu.control.GetOutcalls(cpb.GetOutcallsRequest(page_token=token), timeout=60)
        assert page.ByteSize() <= 2 * ANSWER_BYTES
        outcalls += page.outcalls
        pages += 1
        if not page.next_page_token:
            break
        token = page.next_page_token
    assert pages > 1
    assert [(o.url, o.truncated) for o in outcalls] == [("https://example.com/big", True)] * 3 + [
        ("https://example.com/small", False)
    ]
    big = outcalls[0]
    assert big.body == b"q" * (ANSWER_BYTES // 8) and big.upstream.body == b"r" * (ANSWER_BYTES // 8)
    assert outcalls[-1].body == b"q" and outcalls[-1].response.body == b"ok"
    one = emu.control.GetOutcalls(cpb.GetOutcallsRequest(page_size=1), timeout=60)
    assert [o.url for o in one.outcalls] == ["https://example.com/big"] and one.next_page_token == "1"


def test_get_logs_with_long_lines_comes_in_pages_and_marks_cut_lines(emu: Stubs) -> None:
    loud = install(emu, bytes(wasmtime.wat2wasm(LOUD)))
    for letter in b"abc":
        assert call(emu, loud, "print", bytes([letter]) * 1_500_000).WhichOneof("outcome") == "reply"
    call(emu, loud, "print", b"short")
    entries, token = [], ""
    while True:
        page = canisters(emu).GetLogs(pb.GetLogsRequest(canister_id=loud, page_token=token), timeout=60)
        entries += page.entries
        if not page.next_page_token:
            break
        token = page.next_page_token
    assert [(e.text[:1], len(e.text), e.truncated) for e in entries] == [
        ("a", 64 * 1024, True),
        ("b", 64 * 1024, True),
        ("c", 64 * 1024, True),
        ("s", 5, False),
    ]
    paged = canisters(emu).GetLogs(pb.GetLogsRequest(canister_id=loud, page_size=3), timeout=60)
    assert len(paged.entries) == 3 and paged.next_page_token == "3"
    assert (
        canisters(emu)
        .GetLogs(pb.GetLogsRequest(canister_id=loud, page_token="3"), timeout=60)
        .entries[0]
        .text
        == "short"
    )


def test_list_canisters_with_long_method_names_cuts_them_and_says_so(emu: Stubs) -> None:
    # 20 names of 90,000 bytes (Wasm allows 100,000 for one name): 1.8 MB of names in all
    letters = "abcdefghijklmnopqrst"
    names = "".join(f'(func (export "canister_query {letter * 90_000}"))' for letter in letters)
    wide = install(emu, bytes(wasmtime.wat2wasm(f'(module (memory (export "memory") 1) {names})')))
    plain = install(emu, bytes(wasmtime.wat2wasm(LOUD)))
    listed = canisters(emu).ListCanisters(pb.ListCanistersRequest(), timeout=60)
    assert [c.canister_id for c in listed.canisters] == [wide, plain]
    first, second = listed.canisters
    assert first.methods_truncated and first.ByteSize() < ANSWER_BYTES
    assert [name[:1] for name in first.query_methods] == list(letters[: len(first.query_methods)])
    assert first.query_methods and all(len(name) == 4096 for name in first.query_methods)
    assert not second.methods_truncated and sorted(second.update_methods) == ["print", "reject"]
    paged = canisters(emu).ListCanisters(pb.ListCanistersRequest(page_size=1), timeout=60)
    assert [c.canister_id for c in paged.canisters] == [wide] and paged.next_page_token == "1"


def test_a_50_mib_reject_message_comes_back_shortened_and_marked(emu: Stubs) -> None:
    loud = install(emu, bytes(wasmtime.wat2wasm(LOUD)))
    for _ in range(2):  # and again: nothing stays broken
        answer = call(emu, loud, "reject", (50 * MIB).to_bytes(4, "little"))
        assert answer.reject.code == 4 and answer.reject.message_truncated
        assert len(answer.reject.message) == ANSWER_BYTES
    fine = call(emu, loud, "reject", (10).to_bytes(4, "little"))
    assert len(fine.reject.message) == 10 and not fine.reject.message_truncated


def test_a_3_mib_candid_interface_comes_back_shortened_and_marked(emu: Stubs) -> None:
    candid = "service : { ping : () -> () }\n" + "// " + "c" * (3 * MIB) + "\n"
    wasm = with_custom_section(
        bytes(wasmtime.wat2wasm('(module (memory (export "memory") 1))')),
        "icp:public candid:service",
        candid.encode(),
    )
    installed = canisters(emu).Install(pb.InstallRequest(wasm=wasm), timeout=60)
    assert installed.candid_truncated and installed.candid == candid[:ANSWER_BYTES]
    small = with_custom_section(
        bytes(wasmtime.wat2wasm('(module (memory (export "memory") 1))')),
        "icp:public candid:service",
        b"service : {}",
    )
    again = canisters(emu).Install(pb.InstallRequest(wasm=small), timeout=60)
    assert again.candid == "service : {}" and not again.candid_truncated


def test_a_bad_page_token_is_invalid_argument(emu: Stubs) -> None:
    try:
        canisters(emu).ListCanisters(pb.ListCanistersRequest(page_token="next"), timeout=60)
    except grpc.RpcError as error:
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "page_token 'next' is not a page token; pass the last next_page_token" in error.details()
    else:
        raise AssertionError("a bad page token was accepted")
