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


# A composite query `ask(callee, method)`: calls that method of the callee, counts in its own memory
# (state a composite query must not keep) and replies with the callee's reply after the count.
COMPOSITE = """
(module
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_perform" (func $call_perform (result i32)))
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reject_msg_size" (func $reject_size (result i32)))
  (import "ic0" "msg_reject_msg_copy" (func $reject_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory (export "memory") 1)
  (table 2 funcref)
  (elem (i32.const 0) $on_reply $on_reject)
  (func $on_reply (param i32)
    (i32.store (i32.const 0) (i32.add (i32.load (i32.const 0)) (i32.const 1)))
    (call $append (i32.const 0) (i32.const 4))
    (call $arg_copy (i32.const 4096) (i32.const 0) (call $arg_size))
    (call $append (i32.const 4096) (call $arg_size))
    (call $reply))
  (func $on_reject (param i32)
    (call $reject_copy (i32.const 4096) (i32.const 0) (call $reject_size))
    (call $append (i32.const 4096) (call $reject_size))
    (call $reply))
  (func (export "canister_composite_query ask")
    (call $arg_copy (i32.const 100) (i32.const 0) (call $arg_size))
    (i32.store (i32.const 0) (i32.add (i32.load (i32.const 0)) (i32.const 1)))
    (call $call_new
      (i32.const 101) (i32.load8_u (i32.const 100))
      (i32.add (i32.const 101) (i32.load8_u (i32.const 100)))
      (i32.sub (i32.sub (call $arg_size) (i32.const 1)) (i32.load8_u (i32.const 100)))
      (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 0))
    (drop (call $call_perform)))
  (func (export "canister_query count")
    (call $append (i32.const 0) (i32.const 4)) (call $reply))
)
"""


def test_a_composite_query_calls_queries_and_keeps_no_state(icllm_canister: CanisterIC) -> None:
    from icllm_emulator.runtime.ids import principal_bytes

    asker = icllm_canister(bytes(wasmtime.wat2wasm(COMPOSITE)))
    other = icllm_canister(bytes(wasmtime.wat2wasm(GUARDED)))
    other.update_raw("beat", b"x")
    callee = principal_bytes(other.id)
    answer = asker.query_raw("ask", bytes([len(callee)]) + callee + b"beats")
    assert int.from_bytes(answer[:4], "little") == 2  # the query and its callback, on one private state
    assert int.from_bytes(answer[4:], "little") == 1000  # the callee's query answered
    assert asker.query_raw("count", b"") == bytes(4)  # nothing of it remains
    refused = asker.query_raw("ask", bytes([len(callee)]) + callee + b"beat")
    assert b"has no query method 'beat'" in refused  # a composite query reaches queries only
