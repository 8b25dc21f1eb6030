"""The Candid door: the LLM canister's exact bytes in and out, converted to and from the domain model.

A test harness in any language that already holds the Candid argument its canister would send hands it
over unchanged; the reply is the Candid its canister would receive. Types come from the canister's
`.did` (parsed by icp-py-core); decoding applies Candid's subtyping, so a request that omits `tools`,
carries extra fields, or uses the older tool shape is read exactly as the real canister reads it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from icp_candid import DIDLoader
from icp_principal import Principal

from icllm_emulator.candid._wire import CandidError, decode_args, encode_args, intern
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

LLM_CANISTER_ID = "w36hm-eqaaa-aaaal-qr76a-cai"
# The interface versions the emulator serves (copies of fixtures/llm_canister*.did, each with its source).
INTERFACES = {"v1": "llm_canister.did", "v0.3.1": "llm_canister_v0.3.1.did"}
DEFAULT_INTERFACE = "v1"
DID_FILE = INTERFACES[DEFAULT_INTERFACE]


def candid_interface(version: str = DEFAULT_INTERFACE) -> str:
    """The canister's `.did` in this interface version, as the emulator serves it."""
    return resources.files(__package__).joinpath(INTERFACES[version]).read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class _Signature:
    args: tuple[Any, ...]
    rets: tuple[Any, ...]


@functools.cache
def _methods(version: str = DEFAULT_INTERFACE) -> dict[str, _Signature]:
    """Each method's argument and result types, parsed once from the `.did` of this version."""
    methods = DIDLoader().load_did_source(candid_interface(version))["methods"]
    return {
        name: _Signature(tuple(intern(t) for t in method.args), tuple(intern(t) for t in method.rets))
        for name, method in methods.items()
    }


def _signatures() -> dict[Api, _Signature]:
    return {api: _methods()[api.value] for api in Api}


def check_method(method: str, version: str = DEFAULT_INTERFACE) -> str:
    """The method, if the canister has it in this interface version; anything else is rejected as the
    IC rejects a method a canister does not export."""
    if method not in _methods(version):
        shown = method if len(method) <= 80 else f"{method[:80]}... ({len(method)} characters)"
        raise Reject(
            RejectCode.DESTINATION_INVALID,
            f"Canister {LLM_CANISTER_ID} has no update method {shown!r}; it has "
            f"{', '.join(_methods(version))}"
            + ("" if version == DEFAULT_INTERFACE else f" (interface {version})"),
        )
    return method


def method_api(method: str) -> Api:
    """The chat API a method name calls (v0_chat or v1_chat)."""
    check_method(method)
    try:
        return Api(method)
    except ValueError:
        raise Reject(
            RejectCode.DESTINATION_INVALID, f"{method!r} is not a chat method; use {' or '.join(Api)}"
        ) from None


# -- requests --------------------------------------------------------------------------------------


def decode_request(method: str, arg: bytes) -> ChatRequest:
    """A method's Candid argument as a domain request, or the `Reject` the canister's caller would get.

    Bytes that do not decode make the real canister trap while decoding its argument, so they are a
    CANISTER_ERROR whose message says what failed and where.
    """
    api = method_api(method)
    value = _decode_argument(api.value, arg)
    return _request_v0(value) if api is Api.V0 else _request_v1(value)


def _decode_argument(method: str, arg: bytes) -> Any:
    """A method's one argument; bytes that do not decode are the trap described at `decode_request`."""
    try:
        (value,) = decode_args(arg, _methods()[method].args)
    except CandidError as error:
        raise Reject(RejectCode.CANISTER_ERROR, f"failed to decode the {method} argument: {error}") from None
    return value


def _opt(value: list[Any]) -> Any:
    """A decoded `opt`: the library gives [] for null and [x] for a value."""
    return value[0] if value else None


_V0_ROLES: dict[str, Callable[[str], Message]] = {
    "user": UserMessage,
    "system": SystemMessage,
    "assistant": lambda content: AssistantMessage(content=content),
}


def _request_v0(value: dict[str, Any]) -> ChatRequest:
    messages = tuple(_V0_ROLES[next(iter(m["role"]))](m["content"]) for m in value["messages"])
    return ChatRequest(model=value["model"], messages=messages, api=Api.V0)


def _request_v1(value: dict[str, Any]) -> ChatRequest:
    return ChatRequest(
        model=value["model"],
        messages=tuple(_message(m) for m in value["messages"]),
        tools=tuple(_tool(t) for t in _opt(value["tools"]) or ()),
        api=Api.V1,
    )


def _message(value: dict[str, Any]) -> Message:
    ((case, body),) = value.items()
    if case == "user":
        return UserMessage(body["content"])
    if case == "system":
        return SystemMessage(body["content"])
    if case == "assistant":
        return _assistant(body)
    return ToolMessage(body["content"], body["tool_call_id"])


def _assistant(value: dict[str, Any]) -> AssistantMessage:
    return AssistantMessage(
        content=_opt(value["content"]),
        tool_calls=tuple(
            ToolCall(
                id=call["id"],
                function=FunctionCall(
                    call["function"]["name"],
                    tuple(ToolCallArgument(a["name"], a["value"]) for a in call["function"]["arguments"]),
                ),
            )
            for call in value["tool_calls"]
        ),
    )


def _tool(value: dict[str, Any]) -> Tool:
    function = value["function"]
    parameters = _opt(function["parameters"])
    return Tool(
        name=function["name"],
        description=_opt(function["description"]),
        parameters=None
        if parameters is None
        else Parameters(
            type=parameters["type"],
            properties=tuple(
                Property(
                    name=p["name"],
                    type=p["type"],
                    description=_opt(p["description"]),
                    enum=tuple(_opt(p["enum"]) or ()),
                )
                for p in _opt(parameters["properties"]) or ()
            ),
            required=tuple(_opt(parameters["required"]) or ()),
        ),
    )


def encode_chat_request(request: ChatRequest) -> bytes:
    """The Candid argument a canister sends for this request, built the way `ic-llm` builds it.

    `tools` is null when there are none; a tool's parameters keep their declaration order; `required`,
    `enum` and `properties` are null when empty. `request.api` picks `v0_chat` or `v1_chat`; a v0
    request can only hold user, system and assistant text messages.
    """
    signature = _signatures()[request.api]
    if request.api is Api.V0:
        value: dict[str, Any] = {
            "model": request.model,
            "messages": [_message_v0_value(m) for m in request.messages],
        }
    else:
        value = {
            "model": request.model,
            "tools": _some([_tool_value(t) for t in request.tools]),
            "messages": [_message_value(m) for m in request.messages],
        }
    return encode_args(signature.args, [value])


def _some(items: list[Any]) -> list[Any]:
    """An `opt vec`: null when empty (the library reads [] as null and [x] as a value)."""
    return [items] if items else []


def _text(value: str | None) -> list[str]:
    return [] if value is None else [value]


def _message_v0_value(message: Message) -> dict[str, Any]:
    if isinstance(message, ToolMessage):
        raise ValueError("v0_chat has no tool messages; use v1_chat")
    return {"content": message.content or "", "role": {message.role.value: None}}


def _message_value(message: Message) -> dict[str, Any]:
    if isinstance(message, AssistantMessage):
        return {"assistant": _assistant_value(message)}
    if isinstance(message, ToolMessage):
        return {"tool": {"content": message.content, "tool_call_id": message.tool_call_id}}
    return {message.role.value: {"content": message.content}}


def _assistant_value(message: AssistantMessage) -> dict[str, Any]:
    return {
        "content": _text(message.content),
        "tool_calls": [
            {
                "id": call.id,
                "function": {
                    "name": call.function.name,
                    "arguments": [{"name": a.name, "value": a.value} for a in call.function.arguments],
                },
            }
            for call in message.tool_calls
        ],
    }


def _tool_value(tool: Tool) -> dict[str, Any]:
    parameters = tool.parameters
    return {
        "function": {
            "name": tool.name,
            "description": _text(tool.description),
            "parameters": []
            if parameters is None
            else [
                {
                    "type": parameters.type,
                    "properties": _some(
                        [
                            {
                                "name": p.name,
                                "type": p.type,
                                "description": _text(p.description),
                                "enum": _some(list(p.enum)),
                            }
                            for p in parameters.properties
                        ]
                    ),
                    "required": _some(list(parameters.required)),
                }
            ],
        }
    }


# -- v1_deposit ------------------------------------------------------------------------------------

DEPOSIT = "v1_deposit"


def decode_deposit(arg: bytes) -> str | None:
    """v1_deposit's argument: the beneficiary's textual principal, or None for the caller itself."""
    beneficiary = _opt(_decode_argument(DEPOSIT, arg))
    return None if beneficiary is None else str(beneficiary.to_str())


def encode_deposit(beneficiary: str | None) -> bytes:
    """The argument a canister sends to v1_deposit (null: deposit for the caller itself)."""
    return encode_args(
        _methods()[DEPOSIT].args, [[] if beneficiary is None else [Principal.from_str(beneficiary)]]
    )


def encode_deposit_reply(balance: int) -> bytes:
    return encode_args(_methods()[DEPOSIT].rets, [balance])


# -- replies ---------------------------------------------------------------------------------------


def encode_reply(api: Api, message: AssistantMessage) -> bytes:
    """The reply's Candid: `(text)` for v0_chat (the content, or ""), `(record { message })` for v1_chat."""
    signature = _signatures()[api]
    if api is Api.V0:
        return encode_args(signature.rets, [message.content or ""])
    return encode_args(signature.rets, [{"message": _assistant_value(message)}])


def decode_reply(method: str, reply: bytes) -> str | AssistantMessage:
    """A method's Candid reply as the caller reads it: text for v0_chat, the assistant message for v1_chat.

    Raises `ValueError` (a `CandidError`) when the bytes are not a reply of that method.
    """
    api = method_api(method)
    (value,) = decode_args(reply, _signatures()[api].rets)
    return str(value) if api is Api.V0 else _assistant(value["message"])
