"""Bad use and hostile modules: each is a clear error for that test, and the IC and other tests go on."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import pytest
import wasmtime

from icllm_emulator.runtime import ModuleError, RuntimeUsageError
from pytest_icllm import CanisterReject, IcllmController
from pytest_icllm._canisters import CanisterIC
from tests.canisters.wat import relay_module

REPLIER = """
(module
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (memory (export "memory") 1)
  (data (i32.const 0) "DIDL\\00\\01\\71\\02ok")
  (func (export "canister_update ok") (call $append (i32.const 0) (i32.const 10)) (call $reply))
  (func (export "canister_update twice")
    (call $append (i32.const 0) (i32.const 10)) (call $reply) (call $reply))
  (func (export "canister_update silent"))
  (func (export "canister_update spin") (loop $forever (br $forever)))
  (func (export "canister_query ok_query") (call $append (i32.const 0) (i32.const 10)) (call $reply))
)
"""

# Calls the canister named by its argument ([callee length][callee][method name]) and replies with the
# response's bytes, or with the reject code as a digit followed by the reject message.
CALLER = relay_module(
    "call",
    """
    (call $arg_copy (i32.const 0) (i32.const 0) (call $arg_size))
    (call $call_new
      (i32.const 1) (i32.load8_u (i32.const 0))
      (i32.add (i32.const 1) (i32.load8_u (i32.const 0)))
      (i32.sub (i32.sub (call $arg_size) (i32.const 1)) (i32.load8_u (i32.const 0)))
      (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 0))""",
)


def wasm(text: str) -> bytes:
    return bytes(wasmtime.wat2wasm(text))


def call_arg(callee: bytes, method: str) -> bytes:
    return bytes([len(callee)]) + callee + method.encode()


def test_a_file_that_is_not_wasm_fails_at_install_saying_what_it_is(
    icllm_canister: CanisterIC, tmp_path: Path
) -> None:
    path = tmp_path / "agent.wasm"
    path.write_text("<html>404 Not Found</html>")
    with pytest.raises(ModuleError, match=r"is not a WebAssembly module: it starts with 3c 68 74 6d"):
        icllm_canister(path)
    with pytest.raises(ModuleError, match="no canister module at"):
        icllm_canister(tmp_path / "missing.wasm")


def test_a_truncated_module_is_refused(icllm_canister: CanisterIC) -> None:
    with pytest.raises(ModuleError, match=r"truncated|does not validate"):
        icllm_canister(wasm(REPLIER)[:40])


def test_a_gzipped_module_installs(icllm_canister: CanisterIC) -> None:
    canister = icllm_canister(gzip.compress(wasm(REPLIER)))
    assert canister.update_raw("ok", b"DIDL\x00\x00") == b"DIDL\x00\x01\x71\x02ok"


def test_an_unknown_system_function_is_named_at_install(icllm_canister: CanisterIC) -> None:
    module = wasm('(module (import "ic0" "teleport" (func)) (memory (export "memory") 1))')
    with pytest.raises(ModuleError, match=r"imports ic0\.teleport, which the canister runtime does not know"):
        icllm_canister(module)
    module = wasm('(module (import "env" "abort" (func)) (memory (export "memory") 1))')
    with pytest.raises(ModuleError, match=r"imports env\.abort: a canister may import only from ic0"):
        icllm_canister(module)


def test_a_known_but_unemulated_function_traps_naming_itself(icllm_canister: CanisterIC) -> None:
    module = wasm(
        """(module
          (import "ic0" "cost_sign_with_ecdsa" (func $cost (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (func (export "canister_update sign")
            (drop (call $cost (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))))"""
    )
    canister = icllm_canister(module)
    with pytest.raises(CanisterReject, match=r"ic0\.cost_sign_with_ecdsa is not emulated"):
        canister.update_raw("sign", b"")


def test_huge_memories_and_tables_are_refused(icllm_canister: CanisterIC) -> None:
    with pytest.raises(ModuleError, match="cannot be instantiated"):
        icllm_canister(wasm('(module (memory (export "memory") 20000))'))  # 1.25 GiB
    with pytest.raises(ModuleError, match="cannot be instantiated"):
        icllm_canister(wasm('(module (memory (export "memory") 1) (table 2000000 funcref))'))


def test_an_endless_loop_ends_at_the_instruction_limit(icllm_canister: CanisterIC) -> None:
    canister = icllm_canister(wasm(REPLIER), instruction_limit=20_000_000)
    started = time.monotonic()
    with pytest.raises(CanisterReject) as caught:
        canister.update_raw("spin", b"")
    assert caught.value.code == 5 and caught.value.error_code == "IC0522"
    assert "limit of 20000000 instructions" in caught.value.message
    assert time.monotonic() - started < 30
    assert canister.update_raw("ok", b"") == b"DIDL\x00\x01\x71\x02ok"  # the canister goes on


def test_a_trap_in_canister_init_fails_the_install(icllm_canister: CanisterIC) -> None:
    module = wasm(
        """(module
          (import "ic0" "trap" (func $trap (param i32 i32)))
          (memory (export "memory") 1)
          (data (i32.const 0) "no config given")
          (func (export "canister_init") (call $trap (i32.const 0) (i32.const 15))))"""
    )
    with pytest.raises(CanisterReject, match=r"canister_init trapped: .*no config given") as caught:
        icllm_canister(module)
    assert caught.value.error_code == "IC0503"
    assert icllm_canister.canisters == []


def test_replying_twice_traps_and_the_reply_is_dropped(icllm_canister: CanisterIC) -> None:
    canister = icllm_canister(wasm(REPLIER))
    with pytest.raises(CanisterReject, match="already been replied to") as caught:
        canister.update_raw("twice", b"")
    assert caught.value.code == 5


def test_a_canister_that_never_replies_is_rejected(icllm_canister: CanisterIC) -> None:
    canister = icllm_canister(wasm(REPLIER))
    with pytest.raises(CanisterReject, match="did not produce a response") as caught:
        canister.update_raw("silent", b"")
    assert caught.value.error_code == "IC0506"


def test_unknown_methods_and_wrong_arguments(icllm_canister: CanisterIC, motoko_agent: Path) -> None:
    agent = icllm_canister(motoko_agent)
    with pytest.raises(RuntimeUsageError, match=r"has no method 'prompts'; it has .*, prompt, "):
        agent.update("prompts", "hi")
    with pytest.raises(RuntimeUsageError, match=r"argument 1 of prompt: expected text, got int 42"):
        agent.update("prompt", 42)
    with pytest.raises(RuntimeUsageError, match=r"prompt takes 1 argument\(s\) \(text\), got 2"):
        agent.update("prompt", "a", "b")
    with pytest.raises(RuntimeUsageError, match=r"argument 1 of paid_prompt: expected text, got NoneType"):
        agent.update("paid_prompt", None, "x")
    with pytest.raises(RuntimeUsageError, match=r"'prompt' is an update method .*: call it with update\(\)"):
        agent.query("prompt", "hi")
    with pytest.raises(CanisterReject, match=r"has no update or query method 'nope'") as caught:
        agent.update_raw("nope", b"DIDL\x00\x00")
    assert (caught.value.code, caught.value.error_code) == (3, "IC0536")
    with pytest.raises(RuntimeUsageError, match="no Candid interface"):
        icllm_canister(wasm(REPLIER)).update("ok")


def test_calls_to_unknown_canisters_and_unemulated_management_methods_are_rejected(
    icllm_canister: CanisterIC,
) -> None:
    caller = icllm_canister(wasm(CALLER))
    unknown = bytes.fromhex("00000000000000070101")
    answer = caller.update_raw("call", call_arg(unknown, "hello"))
    assert answer.startswith(b"3Canister ")
    assert b"not found" in answer
    answer = caller.update_raw("call", call_arg(b"", "sign_with_ecdsa"))
    assert answer.startswith(b"4the management canister's method 'sign_with_ecdsa' is not emulated")
    answer = caller.update_raw("call", call_arg(b"", "create_canister"))
    assert answer.startswith(b"5Error decoding candid of 'create_canister' for the management canister")


def test_raw_rand_repeats_for_a_seed(icllm_canister: CanisterIC) -> None:
    caller = icllm_canister(wasm(CALLER))
    first = caller.update_raw("call", call_arg(b"", "raw_rand"))
    second = caller.update_raw("call", call_arg(b"", "raw_rand"))
    assert first.startswith(b"DIDL\x01\x6d\x7b\x01\x00\x20") and len(first) == 42
    assert first != second
    again = icllm_canister(wasm(CALLER))
    assert again.update_raw("call", call_arg(b"", "raw_rand")) != first  # another canister, other bytes


def test_calls_between_canisters_and_to_itself(icllm_canister: CanisterIC) -> None:
    replier = icllm_canister(wasm(REPLIER))
    caller = icllm_canister(wasm(CALLER))
    from icllm_emulator.runtime.ids import principal_bytes

    assert caller.update_raw("call", call_arg(principal_bytes(replier.id), "ok")) == b"DIDL\x00\x01\x71\x02ok"
    rejected = caller.update_raw("call", call_arg(principal_bytes(replier.id), "silent"))
    assert rejected.startswith(b"5") and b"did not produce a response" in rejected
    nested = caller.update_raw("call", call_arg(principal_bytes(caller.id), "call"))
    assert nested.startswith(b"5")  # its own call method with no argument traps on the empty callee


def test_the_emulator_goes_on_after_all_of_that(
    icllm: IcllmController, icllm_canister: CanisterIC, motoko_agent: Path
) -> None:
    icllm.on().reply("still here")
    assert icllm_canister(motoko_agent).update("prompt", "hello?") == "still here"


# -- what a test author sees -------------------------------------------------------------------------


def test_misuse_points_at_the_tests_line_without_the_runtimes_frames(
    pytester: pytest.Pytester, motoko_agent: Path
) -> None:
    """Each mistake is two lines under the test's own: the runtime's frames are not the user's business."""
    from tests.pytester_support import INI

    pytester.makeini(INI)
    pytester.makepyfile(
        test_misuse=f"""
        AGENT = {str(motoko_agent)!r}

        def test_unknown_method(icllm_canister):
            icllm_canister(AGENT).update("nosuch", 1)

        def test_wrong_argument(icllm_canister):
            icllm_canister(AGENT).update("prompt", 1)

        def test_bytes_that_are_not_candid(icllm_canister):
            icllm_canister(AGENT).update_raw("prompt", b"not candid")

        def test_missing_module(icllm_canister):
            icllm_canister("agnt.wasm")
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=4)
    output = result.stdout.str()
    for frame in ("icllm_emulator/", "pytest_icllm/", "concurrent/futures", "asyncio/"):
        assert frame not in output, f"a frame of {frame} is shown:\n{output}"
    result.stdout.fnmatch_lines(
        [
            '>       icllm_canister("agnt.wasm")',
            f"E       *ModuleError: no canister module at agnt.wasm (that is {pytester.path}/agnt.wasm: "
            "a relative path starts at the working directory, not at the test's folder; *",
        ]
    )
