"""The Candid door: golden bytes from DFINITY's encoder, CallCandid over gRPC, subtyping, bad input."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable
from functools import cache, partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from icp_candid import DIDLoader
from icp_candid.candid import LEB128, idl_hash
from icp_candid.candid import decode as reference_decode

from icllm_emulator import candid
from icllm_emulator._proto.icllm.v1 import canister_pb2 as pb
from icllm_emulator._proto.icllm.v1 import control_pb2 as cpb
from icllm_emulator.client import (
    AsyncLlmClient,
    LlmClient,
    LlmReject,
    ParameterType,
    decode_reply,
    encode_chat_request,
    parameter,
    tool,
)
from icllm_emulator.domain import (
    Api,
    AssistantMessage,
    ChatRequest,
    FunctionCall,
    Message,
    Parameters,
    Property,
    Reject,
    RejectCode,
    SystemMessage,
    Tool,
    ToolCall,
    ToolCallArgument,
    ToolMessage,
    UserMessage,
)
from tests.conftest import Stubs, reject_code

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
VECTORS: list[dict[str, str]] = json.loads((FIXTURES / "candid-vectors.json").read_text())["vectors"]
VECTOR = {v["title"]: v for v in VECTORS}

WEATHER = Tool(
    name="get_weather",
    description="Current weather for a city",
    parameters=Parameters(
        type="object",
        properties=(
            Property(name="city", type="string", description="City name"),
            Property(name="unit", type="string", enum=("celsius", "fahrenheit")),
        ),
        required=("city",),
    ),
)
CALL_0 = ToolCall("call_0", FunctionCall("get_weather", (ToolCallArgument("city", "Zurich"),)))

# What each golden vector holds, read off the values DFINITY's encoder was given.
EXPECTED: dict[str, ChatRequest | AssistantMessage | str] = {
    "v0_chat request, one user message": ChatRequest(
        "llama3.1:8b", (UserMessage("What's the speed of light?"),), api=Api.V0
    ),
    "v0_chat request, system + user + assistant": ChatRequest(
        "llama3.1:8b",
        (
            SystemMessage("You are a helpful assistant"),
            UserMessage("How big is the sun?"),
            AssistantMessage(content="About 1.39 million km across."),
        ),
        api=Api.V0,
    ),
    "v0_chat reply": "The speed of light is 299,792,458 m/s.",
    "v1_chat request, tools null (ic-llm with no tools)": ChatRequest(
        "llama3.1:8b", (SystemMessage("You are a helpful assistant"), UserMessage("How big is the sun?"))
    ),
    "v1_chat request, tools field omitted": ChatRequest("qwen3:32b", (UserMessage("Hi"),)),
    "v1_chat request, one tool with two parameters": ChatRequest(
        "qwen3:32b", (UserMessage("Weather in Zurich?"),), tools=(WEATHER,)
    ),
    "v1_chat request, full tool round": ChatRequest(
        "llama3.1:8b",
        (
            UserMessage("Weather in Zurich?"),
            AssistantMessage(tool_calls=(CALL_0,)),
            ToolMessage("12 degrees, cloudy", "call_0"),
        ),
    ),
    "v1_chat reply, text": AssistantMessage(content="It is 12 degrees and cloudy in Zurich."),
    "v1_chat reply, tool call": AssistantMessage(
        tool_calls=(
            ToolCall(
                "call_0",
                FunctionCall(
                    "get_weather", (ToolCallArgument("city", "Zurich"), ToolCallArgument("unit", "celsius"))
                ),
            ),
        )
    ),
    "v1_chat request, older tool shape (opt vec parameter, no property name)": ChatRequest(
        "llama3.1:8b", (UserMessage("Look it up"),), tools=(Tool(name="lookup"),)
    ),
}
REQUESTS = [v for v in VECTORS if v["direction"] == "arg"]
REPLIES = [v for v in VECTORS if v["direction"] == "reply"]
# Vectors in the current interface's shape, which the request helper must reproduce byte for byte.
CURRENT_SHAPE = [v for v in REQUESTS if "omitted" not in v["title"] and "older tool shape" not in v["title"]]


def data(vector: dict[str, str]) -> bytes:
    return bytes.fromhex(vector["hex"])


def titles(vectors: list[dict[str, str]]) -> list[str]:
    return [v["title"] for v in vectors]


@cache
def reference_methods() -> dict[str, Any]:
    """The fixture .did parsed by icp-py-core, with nothing of the emulator in between."""
    methods: dict[str, Any] = DIDLoader().load_did_source((FIXTURES / "llm_canister.did").read_text())[
        "methods"
    ]
    return methods


# -- golden vectors --------------------------------------------------------------------------------


def test_every_golden_vector_has_its_expected_value() -> None:
    assert set(VECTOR) == set(EXPECTED)
    assert json.loads((FIXTURES / "candid-vectors.json").read_text())["encoder"] == "@dfinity/candid 3.4.3"


@pytest.mark.parametrize("vector", REQUESTS, ids=titles(REQUESTS))
def test_golden_request_decodes_to_the_request_dfinity_encoded(vector: dict[str, str]) -> None:
    assert candid.decode_request(vector["method"], data(vector)) == EXPECTED[vector["title"]]


@pytest.mark.parametrize("vector", REPLIES, ids=titles(REPLIES))
def test_golden_reply_decodes_to_what_the_caller_reads(vector: dict[str, str]) -> None:
    assert decode_reply(vector["method"], data(vector)) == EXPECTED[vector["title"]]


@pytest.mark.parametrize("vector", REPLIES, ids=titles(REPLIES))
def test_reply_encoding_equals_dfinity_bytes(vector: dict[str, str]) -> None:
    expected = EXPECTED[vector["title"]]
    message = AssistantMessage(content=expected) if isinstance(expected, str) else expected
    assert isinstance(message, AssistantMessage)
    assert candid.encode_reply(Api(vector["method"]), message) == data(vector)


@pytest.mark.parametrize("vector", CURRENT_SHAPE, ids=titles(CURRENT_SHAPE))
def test_request_helper_equals_dfinity_bytes(vector: dict[str, str]) -> None:
    request = EXPECTED[vector["title"]]
    assert isinstance(request, ChatRequest)
    assert encode_chat_request(request) == data(vector)


def test_request_helper_builds_tools_as_ic_llm_does() -> None:
    """Parameters in declaration order, `required` only for required ones: the golden tool vector."""
    weather = (
        tool("get_weather")
        .with_description("Current weather for a city")
        .with_parameter(parameter("city", ParameterType.STRING).with_description("City name").is_required())
        .with_parameter(parameter("unit", ParameterType.STRING).with_enum_values(["celsius", "fahrenheit"]))
        .build()
    )
    request = ChatRequest("qwen3:32b", (UserMessage("Weather in Zurich?"),), tools=(weather,))
    assert encode_chat_request(request) == data(VECTOR["v1_chat request, one tool with two parameters"])


def test_request_without_tools_sends_tools_null() -> None:
    encoded = encode_chat_request(ChatRequest("llama3.1:8b", (UserMessage("hi"),)))
    (value,) = reference_decode(encoded, reference_methods()["v1_chat"].args)
    assert value["value"]["tools"] == []  # the library's null


def test_omitted_tools_and_older_tool_shape_decode_as_the_canister_sees_them() -> None:
    omitted = candid.decode_request("v1_chat", data(VECTOR["v1_chat request, tools field omitted"]))
    older = candid.decode_request(
        "v1_chat",
        data(VECTOR["v1_chat request, older tool shape (opt vec parameter, no property name)"]),
    )
    assert omitted.tools == ()
    assert older.tools == (Tool(name="lookup", description=None, parameters=None),)


def test_v0_helper_refuses_tool_messages() -> None:
    request = ChatRequest("llama3.1:8b", (ToolMessage("42", "call_1"),), api=Api.V0)
    with pytest.raises(ValueError, match="v0_chat has no tool messages"):
        encode_chat_request(request)


# -- a hand-built argument: extra fields, wire names, wrong types -----------------------------------


def u(value: int) -> bytes:
    encoded: bytes = LEB128.encode_u(value)
    return encoded


def i(value: int) -> bytes:
    encoded: bytes = LEB128.encode_i(value)
    return encoded


def text(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return u(len(raw)) + raw


TEXT, NAT, NULL, OPT, VEC, RECORD, VARIANT = -15, -3, -1, -18, -19, -20, -21
LAST_FIELD = 2**32 - 1  # a field id after every real one


def record(*fields: tuple[int, int]) -> bytes:
    """A record type-table entry; fields as (id, type), sorted as the wire demands."""
    return i(RECORD) + u(len(fields)) + b"".join(u(f) + i(t) for f, t in sorted(fields))


def v1_argument(
    content: bytes = b"Hi",
    *,
    model_type: int = TEXT,
    model: bytes | None = None,
    case: str = "user",
    extra_types: tuple[bytes, ...] = (),
    extra_value: bytes | None = None,
) -> bytes:
    """A v1_chat argument built by hand: one message, no `tools` field, optionally one extra field.

    Types 0-3 are the message body, the message variant, the vec and the request; extra types start
    at index 4 and the extra field (id 2**32-1, so last) has type 4.
    """
    request_fields = [(idl_hash("model"), model_type), (idl_hash("messages"), 2)]
    if extra_value is not None:
        request_fields.append((LAST_FIELD, 4))
    types = [
        record((idl_hash("content"), TEXT)),
        i(VARIANT) + u(1) + u(idl_hash(case)) + i(0),
        i(VEC) + i(1),
        record(*request_fields),
        *extra_types,
    ]
    value = (model if model is not None else text("llama3.1:8b")) + u(1) + u(0) + text(content)
    return b"DIDL" + u(len(types)) + b"".join(types) + u(1) + i(3) + value + (extra_value or b"")


def test_hand_built_argument_decodes() -> None:
    assert candid.decode_request("v1_chat", v1_argument()) == ChatRequest("llama3.1:8b", (UserMessage("Hi"),))


def test_extra_fields_are_ignored() -> None:
    extra = v1_argument(extra_types=(record((1, TEXT), (2, NAT)),), extra_value=text("x") + u(300))
    assert candid.decode_request("v1_chat", extra) == candid.decode_request("v1_chat", v1_argument())


def test_an_extra_argument_is_ignored() -> None:
    single = data(VECTOR["v1_chat request, tools field omitted"])
    types_end = single.rindex(bytes.fromhex("010b"))  # one argument, of type 11; the values follow
    doubled = single[:types_end] + u(2) + i(11) + i(TEXT) + single[types_end + 2 :] + text("extra")
    assert candid.decode_request("v1_chat", doubled) == EXPECTED["v1_chat request, tools field omitted"]


def test_wire_names_are_type_enum_and_system() -> None:
    did = candid.candid_interface()
    assert '"type" : text' in did and "enum : opt vec text" in did and "system :" in did
    request = candid.decode_request("v1_chat", data(VECTOR["v1_chat request, one tool with two parameters"]))
    assert request.tools[0].parameters == WEATHER.parameters


def in_wire_order(fields: dict[str, bytes]) -> bytes:
    """A record's field values, in the order of their ids, as on the wire."""
    return b"".join(fields[name] for name in sorted(fields, key=idl_hash))


def test_an_opt_whose_value_does_not_fit_decodes_as_null() -> None:
    """`parameters : opt parameters` sent as `opt text`: skipped, and the tool has no parameters."""
    types = [
        record((idl_hash("content"), TEXT)),
        i(VARIANT) + u(1) + u(idl_hash("user")) + i(0),
        i(VEC) + i(1),
        record((idl_hash("model"), TEXT), (idl_hash("messages"), 2), (idl_hash("tools"), 7)),
        record((idl_hash("name"), TEXT), (idl_hash("parameters"), 6)),  # the function
        i(VARIANT) + u(1) + u(idl_hash("function")) + i(4),  # the tool
        i(OPT) + i(TEXT),
        i(OPT) + i(8),
        i(VEC) + i(5),
    ]
    function = in_wire_order({"name": text("lookup"), "parameters": b"\x01" + text("not a schema")})
    request = in_wire_order(
        {
            "model": text("llama3.1:8b"),
            "messages": u(1) + u(0) + text("Hi"),
            "tools": b"\x01" + u(1) + u(0) + function,
        }
    )
    arg = b"DIDL" + u(len(types)) + b"".join(types) + u(1) + i(3) + request
    assert candid.decode_request("v1_chat", arg).tools == (Tool(name="lookup"),)


# -- CallCandid over gRPC --------------------------------------------------------------------------


def call(emu: Stubs, method: str, arg: bytes, **kw: Any) -> bytes:
    reply: bytes = emu.canister.CallCandid(pb.CallCandidRequest(method=method, arg=arg), **kw).reply
    return reply


def rpc_error(run: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        run()
    return caught.value


def add_rules(emu: Stubs) -> None:
    """Known answers for the three requests whose reply DFINITY also encoded."""
    weather_call = pb.ToolCall(
        id="call_0",
        function=pb.FunctionCall(
            name="get_weather",
            arguments=[
                pb.ToolCallArgument(name="city", value="Zurich"),
                pb.ToolCallArgument(name="unit", value="celsius"),
            ],
        ),
    )
    rules = [
        (
            cpb.RuleMatch(contains="speed of light"),
            cpb.ReplyAction(content="The speed of light is 299,792,458 m/s."),
        ),
        (
            cpb.RuleMatch(contains="12 degrees, cloudy"),
            cpb.ReplyAction(content="It is 12 degrees and cloudy in Zurich."),
        ),
        (cpb.RuleMatch(tool="get_weather"), cpb.ReplyAction(tool_calls=[weather_call])),
    ]
    emu.control.AddRules(
        cpb.AddRulesRequest(rules=[cpb.Rule(match=m, action=cpb.RuleAction(reply=r)) for m, r in rules])
    )


REPLY_OF = {
    "v0_chat request, one user message": "v0_chat reply",
    "v1_chat request, full tool round": "v1_chat reply, text",
    "v1_chat request, one tool with two parameters": "v1_chat reply, tool call",
}


def test_every_golden_request_is_answered_through_call_candid(emu: Stubs) -> None:
    add_rules(emu)
    for vector in REQUESTS:
        reply = call(emu, vector["method"], data(vector))
        method = reference_methods()[vector["method"]]
        (decoded,) = reference_decode(reply, method.rets)  # the .did's types, no emulator code
        if vector["method"] == "v0_chat":
            assert isinstance(decoded["value"], str) and decoded["value"]
        else:
            assert set(decoded["value"]["message"]) == {"content", "tool_calls"}
        if vector["title"] in REPLY_OF:
            assert reply == data(VECTOR[REPLY_OF[vector["title"]]]), vector["title"]


def test_call_candid_runs_the_same_canister_core(emu: Stubs) -> None:
    """History holds the decoded request; the answer equals V1Chat's for the same request."""
    vector = VECTOR["v1_chat request, older tool shape (opt vec parameter, no property name)"]
    reply = decode_reply("v1_chat", call(emu, "v1_chat", data(vector)))
    (record_,) = emu.control.GetHistory(cpb.GetHistoryRequest()).calls
    assert record_.method == "v1_chat"
    assert [t.function.name for t in record_.request.tools] == ["lookup"]
    assert not record_.request.tools[0].function.HasField("parameters")
    same = emu.canister.V1Chat(
        pb.V1ChatRequest(
            model="llama3.1:8b",
            messages=[pb.ChatMessageV1(user=pb.UserMessage(content="Look it up"))],
            tools=[pb.Tool(function=pb.FunctionTool(name="lookup"))],
        )
    )
    assert isinstance(reply, AssistantMessage)
    assert reply.content == (same.message.content if same.message.HasField("content") else None)
    assert [c.function.name for c in reply.tool_calls] == [c.function.name for c in same.message.tool_calls]


def test_canister_rejects_travel_as_for_v1_chat(emu: Stubs) -> None:
    arg = encode_chat_request(ChatRequest("gpt-5", (UserMessage("hi"),)))
    error = rpc_error(lambda: call(emu, "v1_chat", arg))
    proto_error = rpc_error(lambda: emu.canister.V1Chat(pb.V1ChatRequest(model="gpt-5")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and reject_code(error) == 4
    assert "unknown model 'gpt-5'" in (error.details() or "")
    assert reject_code(proto_error) == 4


def test_unknown_method_is_destination_invalid(emu: Stubs) -> None:
    error = rpc_error(lambda: call(emu, "v2_chat", encode_chat_request(ChatRequest("m", ()))))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert reject_code(error) == RejectCode.DESTINATION_INVALID
    assert error.details() == (
        "Canister w36hm-eqaaa-aaaal-qr76a-cai has no update method 'v2_chat'; "
        "it has v0_chat, v1_chat, v1_deposit"
    )


def test_v1_deposit_through_the_candid_door(emu: Stubs) -> None:
    cycles = (("icllm-cycles", "700"),)
    reply = emu.canister.CallCandid(
        pb.CallCandidRequest(method="v1_deposit", arg=candid.encode_deposit("aaaaa-aa")), metadata=cycles
    ).reply
    assert reply == bytes.fromhex("4449444c00017d") + bytes([0xBC, 0x05])  # (700 : nat)
    own = emu.canister.CallCandid(pb.CallCandidRequest(method="v1_deposit", arg=candid.encode_deposit(None)))
    assert own.reply == bytes.fromhex("4449444c00017d00")  # the anonymous caller's balance: 0
    error = rpc_error(lambda: call(emu, "v1_deposit", b"DIDL\x00\x01"))  # one argument, no bytes
    assert reject_code(error) == RejectCode.CANISTER_ERROR
    assert "failed to decode the v1_deposit argument" in (error.details() or "")


def test_a_reject_before_the_canister_core_refunds_the_attached_cycles(emu: Stubs) -> None:
    error = rpc_error(lambda: call(emu, "v1_chat", b"nope", metadata=(("icllm-cycles", "1000"),)))
    assert reject_code(error) == RejectCode.CANISTER_ERROR
    assert ("icllm-cycles-refunded", "1000") in [(m.key, m.value) for m in error.trailing_metadata()]


def test_bad_caller_metadata_is_invalid_argument(emu: Stubs) -> None:
    error = rpc_error(lambda: call(emu, "v1_chat", v1_argument(), metadata=(("icllm-caller", "Bob"),)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and reject_code(error) is None


def test_get_candid_interface_serves_the_fixture_did(emu: Stubs) -> None:
    did = emu.canister.GetCandidInterface(pb.GetCandidInterfaceRequest()).did
    assert did == (FIXTURES / "llm_canister.did").read_text()
    assert set(reference_methods()) == {"v0_chat", "v1_chat", "v1_deposit"}


# -- the Python client -----------------------------------------------------------------------------


def test_client_call_candid_gives_the_same_answer_as_v1_chat(emu: Stubs) -> None:
    request = ChatRequest("llama3.1:8b", (UserMessage("What's the speed of light?"),))
    with LlmClient(emu.emulator.ports.grpc_target) as llm:
        reply = llm.call_candid("v1_chat", encode_chat_request(request))
        assert decode_reply("v1_chat", reply) == llm.v1_chat(request)
        with pytest.raises(LlmReject) as caught:
            llm.call_candid("v1_chatt", reply)
    assert caught.value.code is RejectCode.DESTINATION_INVALID


@pytest.mark.asyncio
async def test_async_client_call_candid(emu: Stubs) -> None:
    request = ChatRequest("qwen3:32b", (UserMessage("Hi"),), api=Api.V0)
    async with AsyncLlmClient(emu.emulator.ports.grpc_target) as llm:
        reply = await llm.call_candid("v0_chat", encode_chat_request(request))
        assert decode_reply("v0_chat", reply) == await llm.v0_chat("qwen3:32b", [UserMessage("Hi")])


# -- bad input -------------------------------------------------------------------------------------

GOOD = data(VECTOR["v1_chat request, tools null (ic-llm with no tools)"])
MIB = 1024 * 1024


def deep_opt_chain(depth: int) -> tuple[bytes, ...]:
    """Types 4.. as `opt opt ... text`, `depth` deep."""
    return (*(i(OPT) + i(5 + k) for k in range(depth - 1)), i(OPT) + i(TEXT))


BAD_INPUTS: dict[str, tuple[str, bytes, RejectCode, str]] = {
    "unknown method": ("v2_chat", GOOD, RejectCode.DESTINATION_INVALID, "has no update method 'v2_chat'"),
    "method name in the wrong case": ("V1_chat", GOOD, RejectCode.DESTINATION_INVALID, "no update method"),
    "truncated value": ("v1_chat", GOOD[:-3], RejectCode.CANISTER_ERROR, "ends in the middle of a value"),
    "truncated type table": ("v1_chat", GOOD[:30], RejectCode.CANISTER_ERROR, "ends in the middle"),
    "empty": ("v1_chat", b"", RejectCode.CANISTER_ERROR, "magic bytes 'DIDL'"),
    "wrong magic": ("v1_chat", b"DIDX" + GOOD[4:], RejectCode.CANISTER_ERROR, "start with 44 49 44 58"),
    "trailing bytes": ("v1_chat", GOOD + b"\x00\x00", RejectCode.CANISTER_ERROR, "2 bytes follow the last"),
    "huge type table": (
        "v1_chat",
        b"DIDL" + u(2**62),
        RejectCode.CANISTER_ERROR,
        "declares 4611686018427387904 types",
    ),
    "type table of 2000 records": (
        "v1_chat",
        b"DIDL" + u(2000) + record() * 2000 + u(1) + i(0),
        RejectCode.CANISTER_ERROR,
        "at most 1000",
    ),
    "record of 6000 fields": (
        "v1_chat",
        b"DIDL" + u(1) + record(*((f, NULL) for f in range(6000))) + u(1) + i(0),
        RejectCode.CANISTER_ERROR,
        "more than 5000 record and variant fields",
    ),
    "type index out of range": (
        "v1_chat",
        b"DIDL" + u(1) + record((1, 99)) + u(1) + i(0),
        RejectCode.CANISTER_ERROR,
        "refers to type 99, but it has only 1",
    ),
    "no constructed type": ("v1_chat", b"DIDL" + u(1) + i(-30), RejectCode.CANISTER_ERROR, "type code -30"),
    "LEB128 of 2 MiB": (
        "v1_chat",
        b"DIDL" + b"\x80" * (2 * MIB - 100) + b"\x00",
        RejectCode.CANISTER_ERROR,
        "LEB128",
    ),
    "deep type nesting": (
        "v1_chat",
        v1_argument(extra_types=deep_opt_chain(900), extra_value=b"\x01" * 900 + text("x")),
        RejectCode.CANISTER_ERROR,
        "nest deeper than 64 levels",
    ),
    "recursive opt nested 1 MiB deep": (
        "v1_chat",
        v1_argument(extra_types=(i(OPT) + i(4),), extra_value=b"\x01" * MIB + b"\x00"),
        RejectCode.CANISTER_ERROR,
        "nest deeper than 64 levels",
    ),
    "record containing itself": (
        "v1_chat",
        v1_argument(extra_types=(record((1, 4)),), extra_value=b""),
        RejectCode.CANISTER_ERROR,
        "nest deeper than 64 levels",
    ),
    "vec null of 2**62 elements": (
        "v1_chat",
        v1_argument(extra_types=(i(VEC) + i(NULL),), extra_value=u(2**62)),
        RejectCode.CANISTER_ERROR,
        "too costly to decode",
    ),
    "vec text of 2**40 elements": (
        "v1_chat",
        v1_argument(extra_types=(i(VEC) + i(TEXT),), extra_value=u(2**40)),
        RejectCode.CANISTER_ERROR,
        "declares 1099511627776 elements, but only 0 bytes",
    ),
    "2 MiB of one-byte values": (
        "v1_chat",
        v1_argument(extra_types=(i(VEC) + i(-2),), extra_value=u(2 * MIB - 200) + b"\x01" * (2 * MIB - 200)),
        RejectCode.CANISTER_ERROR,
        "too costly to decode",
    ),
    "text longer than the message": (
        "v1_chat",
        v1_argument()[:-3] + u(2**30),
        RejectCode.CANISTER_ERROR,
        "truncated",
    ),
    "text not UTF-8": ("v1_chat", v1_argument(b"\xff\xfe"), RejectCode.CANISTER_ERROR, "not valid UTF-8"),
    "model is a nat": (
        "v1_chat",
        v1_argument(model_type=NAT, model=u(42)),
        RejectCode.CANISTER_ERROR,
        "at model: expected text, the argument has nat",
    ),
    "unknown message kind": (
        "v1_chat",
        v1_argument(case="robot"),
        RejectCode.CANISTER_ERROR,
        "unknown variant case",
    ),
    "argument is text": (
        "v1_chat",
        b"DIDL\x00\x01" + i(TEXT) + text("hi"),
        RejectCode.CANISTER_ERROR,
        "expected record, the argument has text",
    ),
    "no argument": ("v1_chat", b"DIDL\x00\x00", RejectCode.CANISTER_ERROR, "argument 1 is required"),
    "v1 argument to v0_chat": (
        "v0_chat",
        GOOD,
        RejectCode.CANISTER_ERROR,
        "at messages[0]: expected record, the argument has variant",
    ),
    "opt flag 2": (
        "v1_chat",
        v1_argument(extra_types=(i(OPT) + i(TEXT),), extra_value=b"\x02"),
        RejectCode.CANISTER_ERROR,
        "an opt value starts with 0 (null) or 1",
    ),
}
BAD_IDS = list(BAD_INPUTS)
# Every bad input, and arguments beyond and just within the IC's 2 MiB (`make bench ARGS=candid` times them).
WORST_INPUTS: dict[str, tuple[str, bytes]] = {
    **{name: (method, arg) for name, (method, arg, _, _) in BAD_INPUTS.items()},
    "3 MiB": ("v1_chat", v1_argument(b"x" * (3 * MIB))),
    "just under 2 MiB": ("v1_chat", v1_argument(b"x" * (2 * MIB - 1000))),
}


@pytest.mark.parametrize("name", BAD_IDS)
def test_bad_input_is_a_reject_that_says_what_failed(emu: Stubs, name: str) -> None:
    method, arg, code, phrase = BAD_INPUTS[name]
    error = rpc_error(lambda: call(emu, method, arg))
    assert reject_code(error) == code
    assert phrase in (error.details() or "")
    if code is RejectCode.CANISTER_ERROR:
        assert (error.details() or "").startswith(f"failed to decode the {method} argument: ")


def test_three_mib_is_refused_by_the_transport(emu: Stubs) -> None:
    error = rpc_error(lambda: call(emu, "v1_chat", v1_argument(b"x" * (3 * MIB))))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (error.details() or "")


def test_a_message_beyond_the_transport_cap_is_still_refused(emu: Stubs) -> None:
    error = rpc_error(lambda: call(emu, "v1_chat", b"DIDL" + b"\x00" * (9 * MIB)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert decode_reply("v1_chat", call(emu, "v1_chat", GOOD))


def test_an_argument_just_under_2_mib_decodes_and_meets_the_prompt_limit(emu: Stubs) -> None:
    error = rpc_error(lambda: call(emu, "v1_chat", v1_argument(b"x" * (2 * MIB - 1000))))
    assert reject_code(error) == RejectCode.CANISTER_REJECT
    assert "prompt too large" in (error.details() or "")


def test_the_worst_bad_inputs_are_refused_and_the_server_keeps_serving(emu: Stubs) -> None:
    """Each refused with a reject, none wedging the server (their timing: `make bench ARGS=candid`)."""
    for method, arg in WORST_INPUTS.values():
        error = rpc_error(partial(call, emu, method, arg))
        # over 2 MiB, gRPC itself refuses the message, saying so
        assert reject_code(error) in set(RejectCode) or error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert decode_reply("v1_chat", call(emu, "v1_chat", GOOD))


@pytest.mark.parametrize("name", BAD_IDS)
def test_bad_input_is_decoded_in_bounded_memory(name: str) -> None:
    method, arg, _, _ = BAD_INPUTS[name]
    tracemalloc.start()
    try:
        with pytest.raises(Reject):
            candid.decode_request(method, arg)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * MIB, f"{peak} bytes"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VECTORS), st.data())
def test_mangled_vectors_decode_or_are_canister_errors(vector: dict[str, str], draw: st.DataObject) -> None:
    """Flip, cut and insert bytes of real messages: the door answers a request or a clear trap."""
    raw = bytearray(data(vector))
    for _ in range(draw.draw(st.integers(1, 4))):
        position = draw.draw(st.integers(0, len(raw) - 1))
        action = draw.draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            raw[position] = draw.draw(st.integers(0, 255))
        elif action == "cut":
            del raw[position:]
        else:
            raw[position:position] = draw.draw(st.binary(min_size=1, max_size=8))
        if not raw:
            break
    method = vector["method"]
    try:
        result = candid.decode_request(method, bytes(raw))
    except Reject as reject:
        assert reject.code is RejectCode.CANISTER_ERROR
        assert reject.message.startswith(f"failed to decode the {method} argument: ")
    else:
        assert isinstance(result, ChatRequest)


# -- round trips over the whole type ---------------------------------------------------------------

texts = st.text(max_size=12)
optional_texts = st.none() | texts
arguments = st.builds(ToolCallArgument, texts, texts)
tool_calls = st.builds(
    ToolCall, texts, st.builds(FunctionCall, texts, st.lists(arguments, max_size=3).map(tuple))
)
assistants = st.builds(AssistantMessage, optional_texts, st.lists(tool_calls, max_size=3).map(tuple))
messages_v1: st.SearchStrategy[Message] = st.one_of(
    st.builds(UserMessage, texts),
    st.builds(SystemMessage, texts),
    assistants,
    st.builds(ToolMessage, texts, texts),
)
properties = st.builds(Property, texts, texts, optional_texts, st.lists(texts, max_size=3).map(tuple))
parameters = st.builds(
    Parameters,
    texts,
    st.lists(properties, max_size=3).map(tuple),
    st.lists(texts, max_size=3).map(tuple),
)
tools = st.builds(Tool, texts, optional_texts, st.none() | parameters)
requests_v1 = st.builds(
    ChatRequest,
    texts,
    st.lists(messages_v1, max_size=4).map(tuple),
    st.lists(tools, max_size=3).map(tuple),
    st.just(Api.V1),
)
messages_v0: st.SearchStrategy[Message] = st.one_of(
    st.builds(UserMessage, texts),
    st.builds(SystemMessage, texts),
    st.builds(AssistantMessage, texts),
)
requests_v0 = st.builds(
    ChatRequest, texts, st.lists(messages_v0, max_size=4).map(tuple), st.just(()), st.just(Api.V0)
)


@settings(max_examples=200, deadline=None)
@given(requests_v1 | requests_v0)
def test_request_round_trip(request: ChatRequest) -> None:
    encoded = encode_chat_request(request)
    assert candid.decode_request(request.api.value, encoded) == request
    reference_decode(encoded, reference_methods()[request.api.value].args)  # valid for the .did


@settings(max_examples=100, deadline=None)
@given(assistants)
def test_reply_round_trip(message: AssistantMessage) -> None:
    assert decode_reply("v1_chat", candid.encode_reply(Api.V1, message)) == message
    assert decode_reply("v0_chat", candid.encode_reply(Api.V0, message)) == (message.content or "")


def test_packaged_did_is_the_fixture() -> None:
    assert candid.candid_interface() == (FIXTURES / "llm_canister.did").read_text()
