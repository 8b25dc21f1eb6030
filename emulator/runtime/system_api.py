"""The IC system API (`ic0`) for one canister instance: host functions built from the module's own imports.

Each function is a method `ic0_<name>` of `SystemApi`, called with unsigned integers (wasmtime hands
over signed ones; they are masked by the declared parameter types, so a pointer above 2 GiB or a 128-bit
amount's halves arrive as the canister meant them). Motoko's wasm64 build declares most pointers and
sizes as i64 and some values as i32: the declared type decides, never a fixed table. What a function
needs of the running message (its argument, caller, reply, outgoing call) is in `Message`; a function
that the running message may not use traps with a message that names it.
"""

from __future__ import annotations

import ctypes
import logging
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import wasmtime

from icllm_emulator.runtime.errors import OUT_OF_CYCLES, WASM_TRAP, CanisterTrap, ModuleError
from icllm_emulator.runtime.messages import Call, Message, MessageKind

if TYPE_CHECKING:
    from icllm_emulator.runtime.instance import CanisterInstance

log = logging.getLogger("icllm.canister")

U32 = (1 << 32) - 1
U64 = (1 << 64) - 1
PAGE = 65536
# The stable memory limit of the IC (500 GiB) is far beyond a test machine: a test canister gets 4 GiB.
MAX_STABLE_PAGES = 65536
# Functions a canister may import that the runtime does not emulate: a call traps and names it.
NOT_EMULATED = frozenset(
    {
        "cost_sign_with_ecdsa",
        "cost_sign_with_schnorr",
        "cost_vetkd_derive_key",
        "mint_cycles",
        "mint_cycles128",
        "msg_caller_info_data_size",
        "msg_caller_info_data_copy",
        "msg_caller_info_signer_size",
        "msg_caller_info_signer_copy",
        "call_with_best_effort_response_deadline",
    }
)
# A fixed stand-in for the IC's root key and this subnet's id (certificates are not emulated).
ROOT_KEY = bytes.fromhex(
    "308182301d060d2b0601040182dc7c0503010201060c2b0601040182dc7c05030201036100"
) + bytes(96)
SUBNET_ID = bytes.fromhex("0000000000000000fe01") + bytes(19)
# What a call costs to send, as the IC charges on a 13-node subnet: a fee plus one per byte.
CALL_FEE = 260_000
CALL_BYTE_FEE = 1_000


def _u128(high: int, low: int) -> int:
    return (high << 64) | low


class SystemApi:
    """ic0 for one instance; `message` is the message running now (None between messages)."""

    def __init__(self, instance: CanisterInstance) -> None:
        self.instance = instance
        self.message: Message | None = None
        self._caller: wasmtime.Caller | None = None

    # -- binding ----------------------------------------------------------------------------------

    def bind(self, store: wasmtime.Store, module: wasmtime.Module) -> list[wasmtime.Func]:
        """One host function per import, in import order, typed as the module declares it."""
        funcs = []
        for imp in module.imports:
            if imp.module != "ic0":
                raise ModuleError(
                    f"the module imports {imp.module}.{imp.name}: a canister may import only from ic0"
                )
            if not isinstance(imp.type, wasmtime.FuncType):
                raise ModuleError(
                    f"the module imports ic0.{imp.name} as a {type(imp.type).__name__}, not a function"
                )
            name = imp.name or ""
            impl: Callable[..., Any] | None = getattr(SystemApi, f"ic0_{name}", None)
            if impl is None:
                if name not in NOT_EMULATED:
                    raise ModuleError(
                        f"the module imports ic0.{name}, which the canister runtime does not know; it "
                        "emulates the system API that moc and ic-cdk canisters use (see the documentation's "
                        "list of what is not emulated)"
                    )
                impl = _not_emulated(name)
            funcs.append(wasmtime.Func(store, imp.type, self._host(name, imp.type, impl), access_caller=True))
        return funcs

    def _host(self, name: str, functype: wasmtime.FuncType, impl: Callable[..., Any]) -> Callable[..., Any]:
        """The host function of one import: `impl(api, *args)` with the arguments masked to unsigned.

        It refers to this object weakly: wasmtime-py keeps host functions in a process-wide table until
        their store is deleted, so a strong reference would keep the canister (its store, its heap) alive
        for as long as the process runs, whatever drops it.
        """
        masks = tuple(U32 if str(p) == "i32" else U64 for p in functype.params)
        results = [32 if str(r) == "i32" else 64 for r in functype.results]
        bits = results[0] if results else 0
        api_ref = weakref.ref(self)

        def host(caller: wasmtime.Caller, *args: int) -> Any:
            api = api_ref()
            if api is None:  # the canister is gone; wasmtime cannot run it, but never dereference None
                raise CanisterTrap(f"ic0.{name}: the canister was removed")
            api._caller = caller
            try:
                value = impl(api, *[a & m for a, m in zip(args, masks, strict=True)])
            finally:
                api._caller = None
            if not bits:
                return None
            value = int(value) & ((1 << bits) - 1)
            return value - (1 << bits) if value >> (bits - 1) else value

        host.__name__ = name
        return host

    # -- memory -----------------------------------------------------------------------------------

    def _bounds(self, what: str, addr: int, size: int) -> int:
        assert self._caller is not None
        memory = self.instance.memory
        length = memory.data_len(self._caller)
        if addr + size > length:
            raise CanisterTrap(
                f"{what}: {size} bytes at address {addr} are outside the canister's memory of {length} bytes",
                WASM_TRAP,
            )
        base = ctypes.cast(memory.data_ptr(self._caller), ctypes.c_void_p).value
        assert base is not None
        return base + addr

    def read(self, what: str, addr: int, size: int) -> bytes:
        if size == 0:
            return b""
        return ctypes.string_at(self._bounds(what, addr, size), size)

    def write(self, what: str, addr: int, data: bytes) -> None:
        if data:
            ctypes.memmove(self._bounds(what, addr, len(data)), data, len(data))

    def _copy_out(self, what: str, source: bytes, dst: int, offset: int, size: int) -> None:
        """The `*_copy(dst, offset, size)` pattern: a slice of `source`, or a trap when it is out of range."""
        if offset + size > len(source):
            raise CanisterTrap(
                f"ic0.{what}: bytes {offset}..{offset + size} asked for, but there are only {len(source)}"
            )
        self.write(f"ic0.{what}", dst, source[offset : offset + size])

    def _u128_out(self, what: str, dst: int, value: int) -> None:
        self.write(f"ic0.{what}", dst, value.to_bytes(16, "little"))

    def _running(self, what: str, *allowed: MessageKind) -> Message:
        message = self.message
        if message is None:
            raise CanisterTrap(f"ic0.{what} was called outside a message")
        if allowed and message.kind not in allowed:
            raise CanisterTrap(
                f"ic0.{what} cannot be called in {message.kind.value} "
                f"(only in {', '.join(kind.value for kind in allowed)})"
            )
        return message

    # -- the message's argument, caller, reply ---------------------------------------------------

    def ic0_msg_arg_data_size(self) -> int:
        return len(self._running("msg_arg_data_size").arg)

    def ic0_msg_arg_data_copy(self, dst: int, offset: int, size: int) -> None:
        self._copy_out("msg_arg_data_copy", self._running("msg_arg_data_copy").arg, dst, offset, size)

    def ic0_msg_caller_size(self) -> int:
        return len(self._running("msg_caller_size").caller)

    def ic0_msg_caller_copy(self, dst: int, offset: int, size: int) -> None:
        self._copy_out("msg_caller_copy", self._running("msg_caller_copy").caller, dst, offset, size)

    def ic0_msg_method_name_size(self) -> int:
        return len(self._running("msg_method_name_size").method.encode())

    def ic0_msg_method_name_copy(self, dst: int, offset: int, size: int) -> None:
        name = self._running("msg_method_name_copy").method.encode()
        self._copy_out("msg_method_name_copy", name, dst, offset, size)

    def ic0_accept_message(self) -> None:
        message = self._running("accept_message", MessageKind.INSPECT)
        if message.accepted:
            raise CanisterTrap("ic0.accept_message was called twice in canister_inspect_message")
        message.accepted = True

    def ic0_msg_reject_code(self) -> int:
        return self._running("msg_reject_code").reject_code

    def ic0_msg_reject_msg_size(self) -> int:
        return len(self._reject_text("msg_reject_msg_size"))

    def ic0_msg_reject_msg_copy(self, dst: int, offset: int, size: int) -> None:
        self._copy_out("msg_reject_msg_copy", self._reject_text("msg_reject_msg_copy"), dst, offset, size)

    def _reject_text(self, what: str) -> bytes:
        return self._running(what, MessageKind.REJECT_CALLBACK).reject_message.encode()

    def ic0_msg_deadline(self) -> int:
        return self._running("msg_deadline").deadline_ns

    def _replying(self, what: str) -> Message:
        message = self._running(what, *MessageKind.replying())
        if message.context is None:
            raise CanisterTrap(f"ic0.{what}: this {message.kind.value} has no caller to reply to")
        if message.context.responded or message.replied:
            raise CanisterTrap(f"ic0.{what}: the call has already been replied to or rejected")
        return message

    def ic0_msg_reply_data_append(self, src: int, size: int) -> None:
        message = self._replying("msg_reply_data_append")
        message.reply_data += self.read("ic0.msg_reply_data_append", src, size)
        if len(message.reply_data) > self.instance.runtime.max_response_bytes:
            raise CanisterTrap(
                f"ic0.msg_reply_data_append: the reply exceeds the IC's limit of "
                f"{self.instance.runtime.max_response_bytes} bytes"
            )

    def ic0_msg_reply(self) -> None:
        message = self._replying("msg_reply")
        message.reply = bytes(message.reply_data)

    def ic0_msg_reject(self, src: int, size: int) -> None:
        message = self._replying("msg_reject")
        message.reject = self.read("ic0.msg_reject", src, size).decode("utf-8", "replace")

    # -- cycles -----------------------------------------------------------------------------------

    def ic0_msg_cycles_available128(self, dst: int) -> None:
        message = self._running("msg_cycles_available128")
        available = message.context.cycles_available if message.context else 0
        self._u128_out("msg_cycles_available128", dst, available)

    def ic0_msg_cycles_available(self) -> int:
        message = self._running("msg_cycles_available")
        return min(message.context.cycles_available if message.context else 0, U64)

    def ic0_msg_cycles_refunded128(self, dst: int) -> None:
        message = self._running("msg_cycles_refunded128", *MessageKind.callbacks())
        self._u128_out("msg_cycles_refunded128", dst, message.refunded)

    def ic0_msg_cycles_refunded(self) -> int:
        return min(self._running("msg_cycles_refunded", *MessageKind.callbacks()).refunded, U64)

    def _accept(self, what: str, most: int) -> int:
        message = self._running(what)
        context = message.context
        if context is None or context.responded:
            return 0
        amount = min(most, context.cycles_available)
        context.cycles_available -= amount
        self.instance.balance += amount
        return amount

    def ic0_msg_cycles_accept128(self, high: int, low: int, dst: int) -> None:
        self._u128_out("msg_cycles_accept128", dst, self._accept("msg_cycles_accept128", _u128(high, low)))

    def ic0_msg_cycles_accept(self, most: int) -> int:
        return self._accept("msg_cycles_accept", most)

    def ic0_canister_cycle_balance128(self, dst: int) -> None:
        self._u128_out("canister_cycle_balance128", dst, self.instance.balance)

    def ic0_canister_liquid_cycle_balance128(self, dst: int) -> None:
        self._u128_out("canister_liquid_cycle_balance128", dst, self.instance.balance)

    def ic0_canister_cycle_balance(self) -> int:
        return min(self.instance.balance, U64)

    def ic0_cycles_burn128(self, high: int, low: int, dst: int) -> None:
        amount = min(_u128(high, low), self.instance.balance)
        self.instance.balance -= amount
        self._u128_out("cycles_burn128", dst, amount)

    # -- this canister ----------------------------------------------------------------------------

    def ic0_canister_self_size(self) -> int:
        return len(self.instance.principal)

    def ic0_canister_self_copy(self, dst: int, offset: int, size: int) -> None:
        self._copy_out("canister_self_copy", self.instance.principal, dst, offset, size)

    def ic0_canister_status(self) -> int:
        return 1  # running

    def ic0_canister_version(self) -> int:
        return self.instance.version

    def ic0_subnet_self_size(self) -> int:
        return len(SUBNET_ID)

    def ic0_subnet_self_copy(self, dst: int, offset: int, size: int) -> None:
        self._copy_out("subnet_self_copy", SUBNET_ID, dst, offset, size)

    def ic0_root_key_size(self) -> int:
        return len(ROOT_KEY)

    def ic0_root_key_copy(self, dst: int, offset: int, size: int) -> None:
        self._copy_out("root_key_copy", ROOT_KEY, dst, offset, size)

    def ic0_is_controller(self, src: int, size: int) -> int:
        principal = self.read("ic0.is_controller", src, size)
        if len(principal) > 29:
            raise CanisterTrap(f"ic0.is_controller: {len(principal)} bytes are not a principal (at most 29)")
        return int(principal in self.instance.controllers)

    def ic0_in_replicated_execution(self) -> int:
        message = self._running("in_replicated_execution")
        composite = message.context is not None and message.context.composite
        return int(message.kind is not MessageKind.QUERY and not composite)

    def ic0_time(self) -> int:
        return self._running("time").time_ns

    def ic0_performance_counter(self, counter: int) -> int:
        message = self._running("performance_counter")
        return self.instance.instructions_used(message) if counter in (0, 1) else 0

    def ic0_global_timer_set(self, timestamp: int) -> int:
        message = self._running("global_timer_set")
        if message.kind is MessageKind.QUERY:
            raise CanisterTrap("ic0.global_timer_set cannot be called in a query")
        previous = self.instance.timer
        self.instance.timer = timestamp
        return previous

    def ic0_debug_print(self, src: int, size: int) -> None:
        text = self.read("ic0.debug_print", src, size).decode("utf-8", "replace")
        self.instance.log(text)

    def ic0_trap(self, src: int, size: int) -> None:
        text = self.read("ic0.trap", src, size).decode("utf-8", "replace")
        raise CanisterTrap(f"Canister called `ic0.trap` with message: '{text}'")

    def ic0_certified_data_set(self, src: int, size: int) -> None:
        if size > 32:
            raise CanisterTrap(f"ic0.certified_data_set: {size} bytes given, at most 32 may be certified")
        self.instance.certified_data = self.read("ic0.certified_data_set", src, size)

    def ic0_data_certificate_present(self) -> int:
        return 0  # certificates are not emulated: a canister sees the update-call case

    def ic0_data_certificate_size(self) -> int:
        raise CanisterTrap(
            "ic0.data_certificate_size: data certificates are not emulated by the canister runtime"
        )

    def ic0_data_certificate_copy(self, dst: int, offset: int, size: int) -> None:
        raise CanisterTrap(
            "ic0.data_certificate_copy: data certificates are not emulated by the canister runtime"
        )

    # -- environment variables --------------------------------------------------------------------

    def _env(self) -> list[tuple[bytes, bytes]]:
        return [(k.encode(), v.encode()) for k, v in sorted(self.instance.env.items())]

    def _env_name(self, what: str, src: int, size: int) -> str:
        return self.read(f"ic0.{what}", src, size).decode("utf-8", "replace")

    def ic0_env_var_count(self) -> int:
        return len(self.instance.env)

    def ic0_env_var_name_size(self, index: int) -> int:
        return len(self._env_at("env_var_name_size", index))

    def ic0_env_var_name_copy(self, index: int, dst: int, offset: int, size: int) -> None:
        self._copy_out("env_var_name_copy", self._env_at("env_var_name_copy", index), dst, offset, size)

    def _env_at(self, what: str, index: int) -> bytes:
        names = self._env()
        if index >= len(names):
            raise CanisterTrap(f"ic0.{what}: index {index} is past the {len(names)} environment variables")
        return names[index][0]

    def ic0_env_var_name_exists(self, src: int, size: int) -> int:
        return int(self._env_name("env_var_name_exists", src, size) in self.instance.env)

    def _env_value(self, what: str, src: int, size: int) -> bytes:
        name = self._env_name(what, src, size)
        if name not in self.instance.env:
            raise CanisterTrap(f"ic0.{what}: the canister has no environment variable {name!r}")
        return self.instance.env[name].encode()

    def ic0_env_var_value_size(self, src: int, size: int) -> int:
        return len(self._env_value("env_var_value_size", src, size))

    def ic0_env_var_value_copy(self, src: int, size: int, dst: int, offset: int, length: int) -> None:
        value = self._env_value("env_var_value_copy", src, size)
        self._copy_out("env_var_value_copy", value, dst, offset, length)

    # -- stable memory ----------------------------------------------------------------------------

    def ic0_stable64_size(self) -> int:
        return len(self.instance.stable) // PAGE

    def ic0_stable64_grow(self, pages: int) -> int:
        return self.instance.stable_grow(pages)

    def ic0_stable64_write(self, offset: int, src: int, size: int) -> None:
        self.instance.stable_write("ic0.stable64_write", offset, self.read("ic0.stable64_write", src, size))

    def ic0_stable64_read(self, dst: int, offset: int, size: int) -> None:
        self.write("ic0.stable64_read", dst, self.instance.stable_read("ic0.stable64_read", offset, size))

    def ic0_stable_size(self) -> int:
        return len(self.instance.stable) // PAGE

    def ic0_stable_grow(self, pages: int) -> int:
        if len(self.instance.stable) // PAGE + pages > U32 // PAGE + 1:
            return U32
        return self.instance.stable_grow(pages) & U32

    def ic0_stable_write(self, offset: int, src: int, size: int) -> None:
        self.ic0_stable64_write(offset, src, size)

    def ic0_stable_read(self, dst: int, offset: int, size: int) -> None:
        self.ic0_stable64_read(dst, offset, size)

    # -- outgoing calls ---------------------------------------------------------------------------

    def _building(self, what: str) -> Call:
        message = self._running(what)
        if message.building is None:
            raise CanisterTrap(f"ic0.{what} needs a call started by ic0.call_new first")
        return message.building

    def ic0_call_new(
        self,
        callee_src: int,
        callee_size: int,
        name_src: int,
        name_size: int,
        reply_fun: int,
        reply_env: int,
        reject_fun: int,
        reject_env: int,
    ) -> None:
        message = self._running("call_new", *MessageKind.calling())
        if message.building is not None:  # an unperformed call is discarded, its cycles returned
            self.instance.balance += message.building.cycles
        callee = self.read("ic0.call_new", callee_src, callee_size)
        method = self.read("ic0.call_new", name_src, name_size).decode("utf-8", "replace")
        message.building = Call(
            callee=callee,
            method=method,
            reply=(reply_fun, reply_env),
            reject=(reject_fun, reject_env),
            context=message.context,
            query_only=message.context is not None and message.context.composite,
        )

    def ic0_call_on_cleanup(self, fun: int, env: int) -> None:
        call = self._building("call_on_cleanup")
        if call.cleanup is not None:
            raise CanisterTrap("ic0.call_on_cleanup was called twice for one call")
        call.cleanup = (fun, env)

    def ic0_call_data_append(self, src: int, size: int) -> None:
        call = self._building("call_data_append")
        call.arg += self.read("ic0.call_data_append", src, size)

    def ic0_call_with_best_effort_response(self, timeout_seconds: int) -> None:
        call = self._building("call_with_best_effort_response")
        if call.timeout is not None:
            raise CanisterTrap("ic0.call_with_best_effort_response was called twice for one call")
        call.timeout = max(1, min(timeout_seconds, 300))  # the IC clamps it to 1..300 s

    def ic0_call_cycles_add128(self, high: int, low: int) -> None:
        self._add_cycles("call_cycles_add128", _u128(high, low))

    def ic0_call_cycles_add(self, amount: int) -> None:
        self._add_cycles("call_cycles_add", amount)

    def _add_cycles(self, what: str, amount: int) -> None:
        call = self._building(what)
        if amount > self.instance.balance:
            raise CanisterTrap(
                f"ic0.{what}: {amount} cycles asked for, the canister has {self.instance.balance}",
                OUT_OF_CYCLES,
            )
        self.instance.balance -= amount
        call.cycles += amount

    def ic0_call_perform(self) -> int:
        message = self._running("call_perform")
        call = self._building("call_perform")
        message.building = None
        message.calls.append(call)
        return 0

    def ic0_cost_call(self, method_name_size: int, payload_size: int, dst: int) -> None:
        self._u128_out("cost_call", dst, CALL_FEE + CALL_BYTE_FEE * (method_name_size + payload_size))

    def ic0_cost_create_canister(self, dst: int) -> None:
        self._u128_out("cost_create_canister", dst, 500_000_000_000)

    def ic0_cost_http_request(self, request_size: int, max_response_bytes: int, dst: int) -> None:
        from icllm_emulator.runtime.management import http_request_cost

        self._u128_out("cost_http_request", dst, http_request_cost(request_size, max_response_bytes))


def _not_emulated(name: str) -> Callable[..., Any]:
    def trap(_api: SystemApi, *_: int) -> Any:
        raise CanisterTrap(f"ic0.{name} is not emulated by the canister runtime of pytest-icllm")

    return trap
