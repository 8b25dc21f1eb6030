"""canister_inspect_message for calls from the test, canister_heartbeat on a tick."""

from __future__ import annotations

import pytest
import wasmtime

from pytest_icllm import CanisterReject
from pytest_icllm._canisters import CanisterIC

# Accepts an update only when it carries an argument; counts heartbeats in memory.
GUARDED = """
(module
  (import "ic0" "accept_message" (func $accept))
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "trap" (func $trap (param i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "no trust")
  (func (export "canister_inspect_message")
    (if (i32.eq (call $arg_size) (i32.const 3)) (then (call $trap (i32.const 100) (i32.const 8))))
    (if (i32.gt_u (call $arg_size) (i32.const 0)) (then (call $accept))))
  (func (export "canister_heartbeat")
    (i32.store (i32.const 0) (i32.add (i32.load (i32.const 0)) (i32.const 1))))
  (func (export "canister_update beat")
    (i32.store (i32.const 0) (i32.add (i32.load (i32.const 0)) (i32.const 1000)))
    (call $append (i32.const 0) (i32.const 4)) (call $reply))
  (func (export "canister_query beats")
    (call $append (i32.const 0) (i32.const 4)) (call $reply))
)
"""


def beats(canister: object) -> int:
    return int.from_bytes(canister.query_raw("beats", b""), "little")  # type: ignore[attr-defined]


def test_inspect_message_refuses_what_it_does_not_accept(icllm_canister: CanisterIC) -> None:
    canister = icllm_canister(bytes(wasmtime.wat2wasm(GUARDED)))
    with pytest.raises(CanisterReject) as caught:
        canister.update_raw("beat", b"")
    assert caught.value.error_code == "IC0406"
    assert "did not call ic0.accept_message for 'beat'" in caught.value.message
    with pytest.raises(CanisterReject, match=r"canister_inspect_message trapped.*no trust"):
        canister.update_raw("beat", b"abc")
    assert beats(canister) == 0  # neither call ran
    assert int.from_bytes(canister.update_raw("beat", b"x"), "little") == 1000
    assert beats(canister) == 1000  # a query is not inspected


def test_a_tick_runs_the_heartbeat_once_per_round(icllm_canister: CanisterIC) -> None:
    canister = icllm_canister(bytes(wasmtime.wat2wasm(GUARDED)))
    icllm_canister.tick()
    assert beats(canister) == 1
    icllm_canister.tick(3)
    assert beats(canister) == 4
    canister.stop()
    icllm_canister.tick()
    canister.start()
    assert beats(canister) == 4  # a stopped canister has no heartbeat


COMPOSITE = """
(module
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (memory (export "memory") 1)
  (func (export "canister_composite_query ask_around")
    (call $call_new (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 3)
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))
)
"""


def test_a_composite_query_calling_out_fails_by_name(icllm_canister: CanisterIC) -> None:
    canister = icllm_canister(bytes(wasmtime.wat2wasm(COMPOSITE)))
    with pytest.raises(CanisterReject, match=r"composite query 'ask_around'.* are not emulated"):
        canister.query_raw("ask_around", b"DIDL\0\0")
