"""A stand-in's values in and out, as the runtime (and any door onto it) drives it, without a canister."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from icllm_emulator.domain import Reject, RejectCode
from icllm_emulator.rules import Hang, RuleError
from icllm_emulator.runtime import RuntimeUsageError
from icllm_emulator.runtime.messages import Response
from icllm_emulator.runtime.standins import Fault, FaultBook, ReplyWith, StandIn, StandInRule
from icllm_emulator.runtime.values import Interface, from_json, to_json

DID = """
service : {
  pair : (nat, text) -> (nat, text);
  ping : () -> ();
  one : (nat) -> (nat);
}
"""
CALLER = "2vxsx-fae"


def make() -> StandIn:
    return StandIn(b"\x01", "aaaaa-aa-like", Interface(DID))


def ask(standin: StandIn, method: str, *args: Any, cycles: int = 0) -> Response:
    arg = standin.interface.encode_call(method, args) if method in standin.interface.methods else b"DIDL\0\0"
    return asyncio.run(standin.answer(method, arg, CALLER, cycles))


def test_several_results_are_a_tuple_and_several_arguments_arrive_as_one() -> None:
    standin = make()
    standin.add(StandInRule("pair", ReplyWith(lambda arg, caller: (arg[0] + 1, f"{arg[1]} from {caller}"))))
    standin.add(StandInRule("ping", ReplyWith(lambda arg, caller: arg)))
    response = ask(standin, "pair", 1, "hi")
    assert response.reply is not None
    assert standin.interface.decode_reply("pair", response.reply) == (2, f"hi from {CALLER}")
    assert ask(standin, "ping").reply is not None
    assert [c.arg for c in standin.calls] == [(1, "hi"), None]


def test_reply_values_are_checked_against_the_results_when_the_rule_is_made() -> None:
    standin = make()
    with pytest.raises(
        RuntimeUsageError, match=r"the reply of 'pair' has 2 values \(nat, text\): give a tuple"
    ):
        standin.reply_values("pair", 5)
    with pytest.raises(RuntimeUsageError, match="has no values; give None, got 5"):
        standin.reply_values("ping", 5)
    with pytest.raises(RuntimeUsageError, match="expected nat"):
        standin.reply_values("one", "five")
    assert standin.interface.decode_reply("one", standin.reply_values("one", 5).encoded) == 5


def test_cycles_attached_come_back_with_every_answer() -> None:
    standin = make()
    standin.add(StandInRule("one", standin.reply_values("one", 1), times=1))
    standin.add(StandInRule("one", Reject(RejectCode.SYS_TRANSIENT, "busy")))
    replied = ask(standin, "one", 0, cycles=500)
    rejected = ask(standin, "one", 0, cycles=700)
    missing = ask(standin, "nope", cycles=900)
    assert (replied.refund, rejected.refund, missing.refund) == (500, 700, 900)
    assert (rejected.reject_code, rejected.error_code) == (RejectCode.SYS_TRANSIENT, "IC0201")
    assert (missing.reject_code, missing.error_code) == (RejectCode.DESTINATION_INVALID, "IC0536")
    assert [c.cycles for c in standin.calls] == [500, 700, 900]


def test_a_rule_for_a_method_the_interface_lacks_is_refused() -> None:
    with pytest.raises(RuntimeUsageError, match="no method 'two' in its interface; it has one, pair, ping"):
        make().add(StandInRule("two", Hang()))
    with pytest.raises(RuleError, match="times must be 1 or more"):
        StandInRule("one", Hang(), times=0)


def test_faults_are_taken_in_order_until_used_up() -> None:
    book = FaultBook()
    first = book.add(Fault(Hang(), callee="b", times=1))
    second = book.add(Fault(Reject(RejectCode.CANISTER_REJECT, "no"), method="m"))
    assert book.select("a", "b", "m") == first
    assert book.select("a", "b", "m") == second
    assert book.select("a", "c", "x") is None
    assert book.uses() == {first.id: 1, second.id: 1}
    assert first.mismatches("a", "c", "m") == ["callee is 'c', not 'b'"]


# -- values as JSON (the gRPC door's form) ---------------------------------------------------------

JSON_DID = """
type Result = variant { Ok : nat64; Err : record { code : int; why : opt text } };
service : {
  many : (record { nat8; blob }, vec principal, Result, opt bool, float64) -> ();
}
"""


def test_json_values_take_the_candid_types_shape_and_come_back_the_same() -> None:
    interface = Interface(JSON_DID)
    types = interface.method("many").args
    given = [
        [255, "AAEC"],
        ["2vxsx-fae"],
        {"Err": {"code": "-170141183460469231731687303715884105728"}},
        None,
        1.5,
    ]
    values = from_json(types, given, "the arguments")
    assert values == ((255, b"\0\1\2"), ["2vxsx-fae"], {"Err": {"code": -(2**127)}}, None, 1.5)
    decoded = interface.decode_call("many", interface.encode_call("many", values))
    assert to_json(list(decoded)) == [
        [255, "AAEC"],
        ["2vxsx-fae"],
        {"Err": {"code": str(-(2**127)), "why": None}},
        None,
        1.5,
    ]
    assert from_json(interface.method("many").rets, [], "the results") == ()


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ({"a": 1}, r"the arguments is a JSON array of 5 value\(s\) \(record \{ nat8; blob \}"),
        ([[1, "not base64!"], [], "Ok", None, 1.0], r"\[0\]\.1: expected blob, got .*a blob is base64 text"),
        ([[1, ""], [], {"Ok": "12x"}, None, 1.0], r"\[2\]\.Ok: expected nat64.*a decimal string"),
    ],
)
def test_json_that_does_not_fit_says_where_and_what_was_expected(given: Any, problem: str) -> None:
    with pytest.raises(RuntimeUsageError, match=problem):
        from_json(Interface(JSON_DID).method("many").args, given, "the arguments")
