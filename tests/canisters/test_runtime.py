"""The canister runtime on its own: caches, ids, queries, cycles, and the same call over gRPC."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
import wasmtime

from icllm_emulator.clock import VirtualClock
from icllm_emulator.runtime import CanisterReject, CanisterRuntime, Response
from icllm_emulator.runtime import module as modules
from tests.conftest import Stubs
from tests.pytester_support import pt, run

__all__ = ["pt"]  # a fixture

# A query that counts in a global and in memory; an update that accepts half the cycles it is offered.
COUNTER = """
(module
  (import "ic0" "msg_reply_data_append" (func $append (param i32 i32)))
  (import "ic0" "msg_reply" (func $reply))
  (import "ic0" "msg_cycles_available128" (func $available (param i32)))
  (import "ic0" "msg_cycles_accept128" (func $accept (param i64 i64 i32)))
  (memory (export "memory") 1)
  (global $count (mut i32) (i32.const 0))
  (func $answer
    (i32.store8 (i32.const 0) (global.get $count))
    (i32.store8 (i32.const 1) (i32.add (i32.load8_u (i32.const 1)) (i32.const 1)))
    (call $append (i32.const 0) (i32.const 2))
    (call $reply))
  (func $count_one (global.set $count (i32.add (global.get $count) (i32.const 1))))
  (func (export "canister_query peek") (call $count_one) (call $answer))
  (func (export "canister_update bump") (call $count_one) (call $answer))
  (func (export "canister_update take_half")
    (call $available (i32.const 16))
    (call $accept (i64.const 0) (i64.shr_u (i64.load (i32.const 16)) (i64.const 1)) (i32.const 32))
    (call $append (i32.const 32) (i32.const 16))
    (call $reply))
)
"""


COUNTER_WASM = bytes(wasmtime.wat2wasm(COUNTER))


async def no_llm(method: str, arg: bytes, caller: str, cycles: int) -> Response:
    raise AssertionError("this canister does not call the LLM")


def runtime(tmp_path: Path) -> CanisterRuntime:
    return CanisterRuntime(VirtualClock(), no_llm)


def test_queries_keep_no_state_and_updates_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(modules.CACHE_ENV, str(tmp_path))

    async def main() -> None:
        ic = runtime(tmp_path)
        canister = ic.install(COUNTER_WASM)
        assert await ic.call(canister.id, "peek", b"", query=True) == b"\x01\x01"
        assert await ic.call(canister.id, "peek", b"", query=True) == b"\x01\x01"
        assert await ic.call(canister.id, "bump", b"") == b"\x01\x01"
        assert await ic.call(canister.id, "bump", b"") == b"\x02\x02"
        assert await ic.call(canister.id, "peek", b"", query=True) == b"\x03\x03"

    asyncio.run(main())


def test_a_canister_accepts_cycles_and_the_rest_is_refunded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(modules.CACHE_ENV, str(tmp_path))

    async def main() -> None:
        ic = runtime(tmp_path)
        canister = ic.install(COUNTER_WASM)
        before = canister.balance
        accepted = await ic.call(canister.id, "take_half", b"", cycles=1_000_000)
        assert int.from_bytes(accepted, "little") == 500_000
        assert canister.balance == before + 500_000

    asyncio.run(main())


def test_compiled_modules_are_cached_on_disk_across_runtimes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(modules.CACHE_ENV, str(tmp_path))
    raw = bytes(wasmtime.wat2wasm(COUNTER))
    prepared = modules.prepare(raw, modules.inspect(raw))
    cached = modules.compile_module(modules.make_engine(), prepared).cached
    assert not cached
    assert len(list(tmp_path.glob("*.cwasm"))) == 1
    cached = modules.compile_module(modules.make_engine(), prepared).cached
    assert cached
    (entry,) = tmp_path.glob("*.cwasm")
    entry.write_bytes(b"damaged")
    cached = modules.compile_module(modules.make_engine(), prepared).cached
    assert not cached  # a damaged entry is compiled again, not fatal


def counter_variant(n: int) -> bytes:
    """The counter canister, made distinct (its count starts at `n`): another module to compile."""
    return bytes(wasmtime.wat2wasm(COUNTER.replace("(i32.const 0))", f"(i32.const {n}))", 1)))


def test_the_disk_cache_of_compiled_modules_is_bounded_and_forgets_the_least_recently_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(modules.CACHE_ENV, str(tmp_path))
    engine = modules.make_engine()
    prepared = [modules.prepare(raw, modules.inspect(raw)) for raw in map(counter_variant, range(5))]
    size = modules.compile_module(engine, prepared[0]).size
    limit = 3 * size + size // 2  # room for three
    for wasm in prepared[1:3]:
        modules.compile_module(engine, wasm, disk_limit=limit)
    assert modules.compile_module(engine, prepared[0], disk_limit=limit).cached  # now the most recent
    for wasm in prepared[3:]:
        modules.compile_module(engine, wasm, disk_limit=limit)
        entries = list(tmp_path.glob("*.cwasm"))
        assert sum(p.stat().st_size for p in entries) <= limit and len(entries) == 3
    assert modules.compile_module(engine, prepared[0], disk_limit=limit).cached, "used lately, kept"
    assert modules.compile_module(engine, prepared[4], disk_limit=limit).cached, "the newest, kept"
    assert not modules.compile_module(engine, prepared[1], disk_limit=limit).cached, "least recent, gone"


def test_a_runtime_keeps_a_bounded_number_of_compiled_modules_in_memory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(modules.CACHE_ENV, str(tmp_path))

    def key(wasm: bytes) -> bytes:
        return hashlib.sha256(modules.prepare(wasm, modules.inspect(wasm))).digest()

    ic = runtime(tmp_path)
    first, *others = map(counter_variant, range(6))
    ic.compile(first)
    ic.compiled.limit_bytes = 2 * ic.compiled.size + ic.compiled.size // 2  # room for two
    ic.compile(others[0])
    ic.compile(first)  # used again: the most recent
    for wasm in others[1:]:
        ic.compile(wasm)
        assert ic.compiled.size <= ic.compiled.limit_bytes and len(ic.compiled) <= 2
    assert key(others[-1]) in ic.compiled and key(others[0]) not in ic.compiled
    ic.compile(others[-2])
    ic.compile(first)
    assert key(first) in ic.compiled and key(others[-1]) not in ic.compiled


# A module whose canister_init traps: its install fails after the store and host functions exist.
INIT_TRAPS = """
(module
  (import "ic0" "trap" (func $trap (param i32 i32)))
  (memory (export "memory") 1)
  (func (export "canister_init") (call $trap (i32.const 0) (i32.const 0)))
)
"""


def test_every_way_a_canister_goes_frees_its_store_and_host_functions(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """wasmtime-py keeps host functions in one table for the whole process until their store is deleted."""
    from wasmtime import _func

    monkeypatch.setenv(modules.CACHE_ENV, str(tmp_path))

    def registered() -> int:
        return len(_func.FUNCTIONS.handles)

    async def main() -> None:
        ic = runtime(tmp_path)
        start = registered()
        removed = ic.install(COUNTER_WASM)
        assert registered() > start
        ic.remove(removed.id)
        assert removed.closed and registered() == start
        cleared = [ic.install(COUNTER_WASM) for _ in range(3)]
        ic.clear()
        assert all(c.closed for c in cleared) and registered() == start
        with pytest.raises(CanisterReject, match="canister_init trapped"):
            ic.install(bytes(wasmtime.wat2wasm(INIT_TRAPS)))
        assert registered() == start and not ic.canisters

    asyncio.run(main())


# A module whose canister_post_upgrade traps: an upgrade to it is rolled back after it was instantiated.
POST_UPGRADE_TRAPS = INIT_TRAPS.replace("canister_init", "canister_post_upgrade")
EMPTY = '(module (memory (export "memory") 1))'


def test_every_module_the_management_canister_drops_is_freed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An upgrade, a reinstall, a snapshot of another module, an uninstall, a failed upgrade and a
    deletion each leave one live instance at most: the one they replaced is closed."""
    from wasmtime import _func

    from icllm_emulator.runtime.ids import ANONYMOUS
    from icllm_emulator.runtime.management.lifecycle import InstallMode

    monkeypatch.setenv(modules.CACHE_ENV, str(tmp_path))

    def registered() -> int:
        return len(_func.FUNCTIONS.handles)

    async def main() -> None:
        ic = runtime(tmp_path)
        start = registered()
        first = ic.install(COUNTER_WASM)
        one = registered()
        lifecycle, principal, arg = ic.lifecycle, first.principal, b"DIDL\0\0"
        upgraded = await lifecycle.install_code(ANONYMOUS, principal, COUNTER_WASM, arg, InstallMode.UPGRADE)
        assert first.closed and registered() == one
        snapshot = lifecycle.take_snapshot(ANONYMOUS, principal)
        other = await lifecycle.install_code(
            ANONYMOUS, principal, bytes(wasmtime.wat2wasm(EMPTY)), arg, InstallMode.REINSTALL
        )
        assert upgraded.closed
        await lifecycle.load_snapshot(ANONYMOUS, principal, snapshot.id)  # another module: a new instance
        assert other.closed and registered() == one
        with pytest.raises(CanisterReject, match="canister_post_upgrade trapped"):
            await lifecycle.install_code(
                ANONYMOUS, principal, bytes(wasmtime.wat2wasm(POST_UPGRADE_TRAPS)), arg, InstallMode.UPGRADE
            )
        assert registered() == one
        restored = ic.canisters[principal]
        await lifecycle.uninstall_code(ANONYMOUS, principal)
        assert restored.closed and registered() == start
        again = await lifecycle.install_code(ANONYMOUS, principal, COUNTER_WASM, arg, InstallMode.INSTALL)
        await lifecycle.stop(ANONYMOUS, principal)
        lifecycle.delete(ANONYMOUS, principal)
        assert again.closed and registered() == start

    asyncio.run(main())


def test_a_call_that_reaches_a_canister_removed_on_its_way_is_rejected(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(modules.CACHE_ENV, str(tmp_path))

    async def main() -> None:
        ic = runtime(tmp_path)
        canister = ic.install(COUNTER_WASM)
        ic.remove(canister.id)
        response = await ic.deliver(canister, "bump", b"", b"", 7)
        assert (response.reject_code, response.error_code, response.refund) == (3, "IC0301", 7)
        assert f"Canister {canister.id} was removed" in response.reject_message

    asyncio.run(main())


def test_ids_and_randomness_start_over_after_clear(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(modules.CACHE_ENV, str(tmp_path))

    async def main() -> None:
        ic = runtime(tmp_path)
        first = ic.install(COUNTER_WASM).id
        second = ic.install(COUNTER_WASM).id
        assert first != second
        ic.clear()
        assert ic.install(COUNTER_WASM).id == first

    asyncio.run(main())


def test_the_module_rewrite_exports_table_and_globals_only(tmp_path: Path) -> None:
    raw = bytes(wasmtime.wat2wasm("(module (table 1 funcref) (global (mut i32) (i32.const 7)) (memory 1))"))
    info = modules.inspect(raw)
    prepared = modules.prepare(raw, info)
    exports = {e.name for e in wasmtime.Module(modules.make_engine(), prepared).exports}
    assert exports == {modules.TABLE_EXPORT, f"{modules.GLOBAL_EXPORT}0"}
    assert modules.prepare(prepared, modules.inspect(prepared)) != raw


def test_the_fixture_against_an_emulator_process_calls_it_over_grpc(
    pt: pytest.Pytester, start_emulator: Callable[..., Stubs], motoko_agent: Path
) -> None:
    external = start_emulator()
    target = external.emulator.ports.grpc_target
    result = run(
        pt,
        f"""
        def test_remote(icllm, icllm_canister):
            icllm.on(contains="ping").reply("pong")
            agent = icllm_canister({str(motoko_agent)!r})
            assert agent.update("prompt", "ping") == "pong"
            assert icllm.calls[0].caller == agent.id
            outcome = agent.update("paid_prompt", "gemma3:27b", "pay")
            assert outcome["refunded"] == icllm.calls[1].cycles_refunded > 0
            rejected = agent.update("safe_prompt", "unknown:1b", "hi")
            assert rejected["err"]["code"] == "canister_reject"
        """,
        "--icllm-url",
        target,
    )
    result.assert_outcomes(passed=1)
    assert external.emulator.engine.history.calls == 3


def test_canister_calls_are_recorded_and_replayed_by_cassettes(pt: pytest.Pytester, rust_agent: Path) -> None:
    source = f"""
        import pytest

        @pytest.mark.icllm(cassette=True)
        def test_recorded(icllm, icllm_canister):
            agent = icllm_canister({str(rust_agent)!r}, did={str(rust_agent.with_suffix(".did"))!r})
            with open("answers.txt", "a") as answers:
                answers.write(repr(agent.update("ask", "tell me about cycles")) + "\\n")
        """
    run(pt, source, "--icllm-record-mode", "once", "--icllm-seed", "1").assert_outcomes(passed=1)
    assert list((pt.path / "cassettes" / "test_user").glob("*.yaml"))
    run(pt, source, "--icllm-record-mode", "none", "--icllm-seed", "2").assert_outcomes(passed=1)
    recorded, replayed = (pt.path / "answers.txt").read_text().splitlines()
    assert replayed == recorded  # from the cassette: seed 2 would give another fake answer


def test_raw_rand_is_a_function_of_the_seed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(modules.CACHE_ENV, str(tmp_path))
    from tests.canisters.test_bad_modules import CALLER, call_arg

    async def draws(seed: int) -> list[bytes]:
        ic = CanisterRuntime(VirtualClock(), no_llm, seed=seed)
        canister = ic.install(bytes(wasmtime.wat2wasm(CALLER)))
        return [await ic.call(canister.id, "call", call_arg(b"", "raw_rand")) for _ in range(2)]

    assert asyncio.run(draws(7)) == asyncio.run(draws(7))
    assert asyncio.run(draws(7)) != asyncio.run(draws(8))


GREETER = """
persistent actor class Greeter(greeting : Text, times : Nat) {
  public query func greet(name : Text) : async [Text] {
    var out : [Text] = [];
    var i = 0;
    while (i < times) { out := [greeting # ", " # name]; i += 1 };
    out;
  };
};
"""


def test_init_arguments_are_given_as_python_values(icllm_canister: object) -> None:
    from pytest_icllm._canisters import CanisterIC
    from tests.canisters.conftest import BUILD

    assert isinstance(icllm_canister, CanisterIC)
    wasm = BUILD.built_motoko(GREETER)
    greeter = icllm_canister(wasm, init=("Hello", 1))
    assert greeter.query("greet", "canister") == ["Hello, canister"]
    with pytest.raises(ValueError, match=r"argument 2 of canister_init: expected nat, got int -1"):
        icllm_canister(wasm, init=("Hello", -1))
    from pytest_icllm import CanisterReject

    with pytest.raises(CanisterReject, match="canister_init trapped"):
        icllm_canister(wasm)  # no arguments: Motoko traps decoding them
