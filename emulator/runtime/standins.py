"""Stand-ins and faults: the canisters around an agent, scripted from the test.

A **stand-in** answers at a principal (the ICP ledger's, say) with no module behind it: its Candid
interface decodes each call, and its rules, tried in the order they were added, say what it answers
(values, a function of the argument and caller, a reject, a trap, or nothing ever). A **fault** changes a
call between the canisters of the IC before it is delivered: rejected, never answered, or late. Both are
scripted answers like the LLM canister's rules (`icllm_emulator.rules`): first rule with uses left wins,
`times` limits the uses, and a call to a stand-in that no rule answers is rejected with what each rule
wanted (a call that no fault matches goes through).

Everything here runs on the runtime's event loop; its errors are `RuntimeUsageError`/`RuleError` for
misuse and IC rejects for the calling canister.
"""

from __future__ import annotations

import asyncio
import itertools
import reprlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from icllm_emulator.domain import Reject, RejectCode
from icllm_emulator.rules import Hang, check_delay, check_times, miss_line, used_up
from icllm_emulator.runtime.errors import (
    CALLED_TRAP,
    EXPLICIT_REJECT,
    METHOD_NOT_FOUND,
    RuntimeUsageError,
    error_code_for,
)
from icllm_emulator.runtime.messages import Response
from icllm_emulator.runtime.values import Interface, Method, describe

# Values in messages: a 32-byte account or a long text shortened, so that a line stays readable.
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxdict = 8

# `reply_with`'s function: (the decoded argument, the caller's principal as text) -> the reply's values.
Answer = Callable[[Any, str], Any]


@dataclass(frozen=True, slots=True)
class ReplyValues:
    """Reply with these values (already checked against the interface and encoded)."""

    value: Any
    encoded: bytes


@dataclass(frozen=True, slots=True)
class ReplyWith:
    """Reply with what a function of the argument and the caller returns."""

    answer: Answer


@dataclass(frozen=True, slots=True)
class Trap:
    """The stand-in traps (`ic0.trap`): the caller gets CANISTER_ERROR, as from a real canister."""

    message: str


@dataclass(frozen=True, slots=True)
class Delay:
    """A fault that lets the call through this many seconds later, on the engine's clock."""

    seconds: float


StandInAction = ReplyValues | ReplyWith | Reject | Trap | Hang
FaultAction = Reject | Hang | Delay


def reject_of(code: RejectCode, message: str, refund: int) -> Response:
    """A scripted reject as the caller sees it, with the IC's error code for its reject code."""
    error = EXPLICIT_REJECT if code is RejectCode.CANISTER_REJECT else error_code_for(code)
    return Response.rejected(code, message, error, refund=refund)


def describe_action(action: StandInAction | FaultAction) -> str:
    if isinstance(action, ReplyValues):
        return f"reply({action.value!r})"
    if isinstance(action, ReplyWith):
        return f"reply_with({getattr(action.answer, '__name__', 'function')})"
    if isinstance(action, Reject):
        return f"reject({action.code.name}, {action.message!r})"
    if isinstance(action, Trap):
        return f"trap({action.message!r})"
    if isinstance(action, Delay):
        return f"delay({action.seconds} s)"
    return "hang()"


@dataclass(frozen=True, slots=True)
class StandInRule:
    """What a stand-in answers to calls of `method` (at most `times` of them; None: any number)."""

    method: str
    action: StandInAction
    times: int | None = None
    id: str = ""

    def __post_init__(self) -> None:
        check_times(self.times)

    def describe(self) -> str:
        times = "" if self.times is None else f".times({self.times})"
        return f"on({self.method!r}){times}.{describe_action(self.action)}"


@dataclass(slots=True)
class StandInCall:
    """One call a stand-in received: `arg` decoded as `Canister.update` takes arguments."""

    id: str
    method: str
    arg: Any
    caller: str
    cycles: int
    rule_id: str = ""
    # How it ended so far: "replied", "rejected (CODE): message", "held", "hanging", "waiting".
    outcome: str = "waiting"
    unexpected: bool = False


@dataclass(slots=True)
class _State:
    rule: StandInRule
    uses: int = 0


class StandIn:
    """A canister at `principal` that answers from scripted rules, typed by its Candid interface."""

    def __init__(self, principal: bytes, id: str, interface: Interface) -> None:
        self.principal = principal
        self.id = id
        self.interface = interface
        self.states: list[_State] = []
        self.calls: list[StandInCall] = []
        # Mistakes of the test's own rules found while answering (a reply_with that raised, say).
        self.errors: list[str] = []
        self.holding = False
        self.held: dict[str, tuple[asyncio.Future[None], StandInCall]] = {}
        self._rule_ids = itertools.count(1)
        self._call_ids = itertools.count(1)

    # -- scripting ------------------------------------------------------------------------------

    def method(self, name: str) -> Method:
        try:
            return self.interface.method(name)
        except RuntimeUsageError:
            raise RuntimeUsageError(
                f"the stand-in at {self.id} has no method {name!r} in its interface; it has "
                f"{', '.join(sorted(self.interface.methods)) or 'none'}"
            ) from None

    def reply_values(self, method: str, value: Any) -> ReplyValues:
        """Values given as `Canister.update` returns them, checked against `method`'s results."""
        declared = self.method(method)
        values = as_values(declared.rets, value, f"the reply of {method!r}")
        return ReplyValues(value, self.interface.encode_reply(method, values))

    def add(self, rule: StandInRule) -> StandInRule:
        self.method(rule.method)
        rule = StandInRule(rule.method, rule.action, rule.times, rule.id or f"rule-{next(self._rule_ids)}")
        self.states.append(_State(rule))
        return rule

    def uses(self) -> dict[str, int]:
        return {state.rule.id: state.uses for state in self.states}

    # -- holding --------------------------------------------------------------------------------

    def hold(self, enabled: bool = True) -> None:
        """While on, answers wait (held) until released; turning it off releases none."""
        self.holding = enabled

    def release(self, call_ids: tuple[str, ...] | None = None) -> list[str]:
        """Deliver held answers in the order given (None: all, oldest first); returns their ids."""
        ids = list(self.held) if call_ids is None else list(call_ids)
        unknown = [i for i in ids if i not in self.held]
        if unknown:
            raise RuntimeUsageError(
                f"no held call {', '.join(unknown)} at the stand-in {self.id}; held: "
                f"{', '.join(self.held) or 'none'}"
            )
        for call_id in ids:
            future, _ = self.held.pop(call_id)
            if not future.done():
                future.set_result(None)
        return ids

    # -- answering ------------------------------------------------------------------------------

    async def answer(self, method: str, arg: bytes, caller: str, cycles: int) -> Response:
        """Answer one call. The stand-in accepts no cycles: every cycle attached comes back."""
        call = StandInCall(f"call-{next(self._call_ids)}", method, None, caller, cycles)
        self.calls.append(call)
        response = self._respond(call, arg)
        if response is None:  # hang: the caller waits until its deadline, or for ever
            call.outcome = "hanging"
            await asyncio.get_running_loop().create_future()
            raise AssertionError("unreachable")
        if self.holding:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            outcome, call.outcome = call.outcome, "held"
            self.held[call.id] = (future, call)
            await future
            call.outcome = outcome
        return response

    def _respond(self, call: StandInCall, arg: bytes) -> Response | None:
        declared = self.interface.methods.get(call.method)
        if declared is None:  # the IC's CanisterMethodNotFound
            call.unexpected = True
            return self._ended(
                call,
                Response.rejected(
                    RejectCode.DESTINATION_INVALID,
                    f"Canister {self.id} has no update method {call.method!r} (a stand-in with the methods "
                    f"{', '.join(sorted(self.interface.methods)) or 'none'})",
                    METHOD_NOT_FOUND,
                    refund=call.cycles,
                ),
            )
        try:
            call.arg = as_argument(self.interface.decode_call(call.method, arg))
        except RuntimeUsageError as error:  # a Candid canister traps on an argument it cannot decode
            call.unexpected = True
            return self._ended(call, self._trap(f"failed to decode the call's argument: {error}", call))
        state = next(
            (s for s in self.states if s.rule.method == call.method and not used_up(s.uses, s.rule.times)),
            None,
        )
        if state is None:
            call.unexpected = True
            return self._ended(
                call,
                Response.rejected(
                    RejectCode.CANISTER_REJECT, self.explain_miss(call), EXPLICIT_REJECT, refund=call.cycles
                ),
            )
        state.uses += 1
        rule = state.rule
        call.rule_id = rule.id
        action = rule.action
        if isinstance(action, Hang):
            return None
        if isinstance(action, ReplyValues):
            return self._ended(call, Response(reply=action.encoded, refund=call.cycles))
        if isinstance(action, Reject):
            return self._ended(call, reject_of(action.code, action.message, call.cycles))
        if isinstance(action, Trap):
            return self._ended(call, self._trap(action.message, call))
        try:
            value = action.answer(call.arg, call.caller)
            reply = self.interface.encode_reply(
                call.method, as_values(declared.rets, value, f"the reply of {call.method!r}")
            )
        except Exception as error:  # the test's own function: its error fails the test, not the runtime
            problem = (
                f"{rule.id} {rule.describe()} of the stand-in at {self.id} failed on {call.id} "
                f"from {call.caller}: {type(error).__name__}: {error}"
            )
            self.errors.append(problem)
            return self._ended(call, self._trap(problem, call))
        return self._ended(call, Response(reply=reply, refund=call.cycles))

    def _trap(self, message: str, call: StandInCall) -> Response:
        return Response.rejected(
            RejectCode.CANISTER_ERROR,
            f"Error from Canister {self.id}: Canister called `ic0.trap` with message: '{message}'",
            CALLED_TRAP,
            refund=call.cycles,
        )

    @staticmethod
    def _ended(call: StandInCall, response: Response) -> Response:
        if response.reply is not None:
            call.outcome = "replied"
        else:
            assert response.reject_code is not None
            call.outcome = f"rejected ({response.reject_code.name}): {response.reject_message[:200]}"
        return response

    def explain_miss(self, call: StandInCall) -> str:
        """What arrived and why each rule did not answer it."""
        lines = [
            f"no rule of the stand-in at {self.id} answers {call.method!r} from {call.caller} "
            f"(argument {_SHORT.repr(call.arg)})"
        ]
        if not self.states:
            lines.append(f"no rules are defined; add one with .on({call.method!r})")
        for state in self.states:
            rule = state.rule
            why = [] if rule.method == call.method else [f"method is {call.method!r}, not {rule.method!r}"]
            lines.append(miss_line(rule.id, rule.describe(), state.uses, rule.times, why))
        return "\n".join(lines)

    def problems(self, check_unused: bool, check_unexpected: bool) -> list[str]:
        """What the test's teardown reports: errors always, unused rules and unexpected calls if asked."""
        found = list(self.errors)
        unused = [s.rule for s in self.states if s.uses == 0]
        if check_unused and unused:
            found.append(
                f"rules of the stand-in at {self.id} that no call used (turn this check off with "
                "@pytest.mark.icllm(assert_all_used=False)):\n"
                + "\n".join(f"  {rule.id} {rule.describe()}" for rule in unused)
            )
        unexpected = [c for c in self.calls if c.unexpected]
        if check_unexpected and unexpected:
            found.append(
                f"calls that no rule of the stand-in at {self.id} expected (the caller got a reject; turn "
                "this check off with @pytest.mark.icllm(assert_all_expected=False)):\n"
                + "\n".join(
                    f"  {c.id} {c.method}({_SHORT.repr(c.arg)}) from {c.caller}: {c.outcome}"
                    for c in unexpected
                )
            )
        return found


def as_argument(values: tuple[Any, ...]) -> Any:
    """Decoded arguments as `Canister.update` takes them: none -> None, one -> it, several -> a tuple."""
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def as_values(types: tuple[Any, ...], value: Any, what: str) -> tuple[Any, ...]:
    """A reply given as `Canister.update` returns it (None, one value, a tuple) as the tuple to encode."""
    if not types:
        if value is not None:
            raise RuntimeUsageError(f"{what} has no values; give None, got {value!r}")
        return ()
    if len(types) == 1:
        return (value,)
    if not isinstance(value, tuple) or len(value) != len(types):
        raise RuntimeUsageError(
            f"{what} has {len(types)} values ({', '.join(describe(t) for t in types)}): give a tuple of "
            f"{len(types)}, got {value!r}"
        )
    return value


# -- faults ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fault:
    """Calls that match every criterion given (None: any) are rejected, never answered, or late."""

    action: FaultAction
    callee: str | None = None
    method: str | None = None
    caller: str | None = None
    times: int | None = None
    id: str = ""

    def __post_init__(self) -> None:
        check_times(self.times)
        if isinstance(self.action, Delay):
            check_delay(self.action.seconds)

    def mismatches(self, caller: str, callee: str, method: str) -> list[str]:
        why = []
        for name, wanted, got in (("callee", self.callee, callee), ("method", self.method, method)):
            if wanted is not None and wanted != got:
                why.append(f"{name} is {got!r}, not {wanted!r}")
        if self.caller is not None and self.caller != caller:
            why.append(f"caller is {caller!r}, not {self.caller!r}")
        return why

    def describe(self) -> str:
        given = {"callee": self.callee, "method": self.method, "caller": self.caller}
        shown = ", ".join(f"{k}={v!r}" for k, v in given.items() if v is not None)
        times = "" if self.times is None else f".times({self.times})"
        return f"on({shown}){times}.{describe_action(self.action)}"


@dataclass
class FaultBook:
    """The faults in force on calls between the IC's canisters, with how often each has struck."""

    states: list[tuple[Fault, list[int]]] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def add(self, fault: Fault) -> Fault:
        fault = Fault(
            fault.action,
            fault.callee,
            fault.method,
            fault.caller,
            fault.times,
            fault.id or f"fault-{next(self._ids)}",
        )
        self.states.append((fault, [0]))
        return fault

    def select(self, caller: str, callee: str, method: str) -> Fault | None:
        """The first fault that matches with uses left, counting this use."""
        for fault, uses in self.states:
            if not used_up(uses[0], fault.times) and not fault.mismatches(caller, callee, method):
                uses[0] += 1
                return fault
        return None

    def uses(self) -> dict[str, int]:
        return {fault.id: uses[0] for fault, uses in self.states}

    def problems(self, check_unused: bool) -> list[str]:
        unused = [fault for fault, uses in self.states if uses[0] == 0]
        if not check_unused or not unused:
            return []
        return [
            "faults that no call between canisters met (turn this check off with "
            "@pytest.mark.icllm(assert_all_used=False)):\n"
            + "\n".join(f"  {fault.id} {fault.describe()}" for fault in unused)
        ]


__all__ = [
    "Delay",
    "Fault",
    "FaultBook",
    "ReplyValues",
    "ReplyWith",
    "StandIn",
    "StandInCall",
    "StandInRule",
    "Trap",
]
