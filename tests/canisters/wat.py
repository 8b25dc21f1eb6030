"""WAT text for test canisters that relay one call and reply with what came back."""

from __future__ import annotations


def relay_module(export: str, call: str, *, pages: int = 1, buffer: int = 4096, data: str = "") -> str:
    """A module whose `export` runs the WAT `call` (which sets up and performs one inter-canister call).

    The callee's reply is replied as is; a reject is replied as the reject code (an ASCII digit) followed
    by the reject message. Both are copied to `buffer`, an offset that `call` must leave free; `data`
    holds any extra data segments.
    """
    return f"""
(module
  (import "ic0" "call_new" (func $call_new (param i32 i32 i32 i32 i32 i32 i32 i32)))
  (import "ic0" "call_data_append" (func $call_data_append (param i32 i32)))
  (import "ic0" "call_cycles_add128" (func $cycles_add (param i64 i64)))
  (import "ic0" "call_perform" (func $call_perform (result i32)))
  (import "ic0" "msg_reject_code" (func $reject_code (result i32)))
  (import "ic0" "msg_reject_msg_size" (func $reject_size (result i32)))
  (import "ic0" "msg_reject_msg_copy" (func $reject_copy (param i32 i32 i32)))
  (import "ic0" "msg_arg_data_size" (func $arg_size (result i32)))
  (import "ic0" "msg_arg_data_copy" (func $arg_copy (param i32 i32 i32)))
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory (export "memory") {pages})
  (table 2 funcref)
  (elem (i32.const 0) $on_reply $on_reject)
  {data}
  (func $on_reply (param i32)
    (call $arg_copy (i32.const {buffer}) (i32.const 0) (call $arg_size))
    (call $append (i32.const {buffer}) (call $arg_size))
    (call $reply))
  (func $on_reject (param i32)
    (i32.store8 (i32.const {buffer}) (i32.add (i32.const 48) (call $reject_code)))
    (call $reject_copy (i32.const {buffer + 1}) (i32.const 0) (call $reject_size))
    (call $append (i32.const {buffer}) (i32.add (i32.const 1) (call $reject_size)))
    (call $reply))
  (func (export "canister_update {export}")
    {call}
    (drop (call $call_perform)))
)
"""
