"""A Python client for the emulated LLM canister, shaped like DFINITY's Rust `ic-llm` crate.

Code written against `ic-llm` (`prompt`, `chat(model).with_messages(..).with_tools(..).send()`, the
`tool`/`parameter` builders) reads the same here, so a test can drive the emulator the way a canister
drives the real LLM canister. `LlmClient` is synchronous, `AsyncLlmClient` uses asyncio; both build
requests and translate errors with the same code, and differ only in how the gRPC call is made.

A canister reject arrives as `LlmReject` (the IC reject code and message); any other gRPC failure
(a malformed request, no server listening, a deadline) arrives as `EmulatorError`, because it is a
problem with the test setup rather than something a canister would see.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar

import grpc
import grpc.aio
from google.protobuf.message import Message as ProtoMessage

from icllm_emulator._proto.icllm.v1 import canister_pb2 as pb
from icllm_emulator._proto.icllm.v1 import canister_pb2_grpc
from icllm_emulator.candid import decode_reply, encode_chat_request
from icllm_emulator.domain import (
    Api,
    AssistantMessage,
    ChatRequest,
    FunctionCall,
    Message,
    Parameters,
    Property,
    RejectCode,
    SystemMessage,
    Tool,
    ToolCall,
    ToolCallArgument,
    ToolMessage,
    UserMessage,
)
from icllm_emulator.grpc_api import convert
from icllm_emulator.grpc_api.status import CALLER_KEY, CYCLES_KEY, REJECT_CODE_KEY

__all__ = [
    "CLIENT_MAX_MESSAGE_BYTES",
    "AssistantMessage",
    "AsyncLlmClient",
    "ChatBuilder",
    "EmulatorError",
    "FunctionCall",
    "LlmClient",
    "LlmReject",
    "Message",
    "ParameterBuilder",
    "ParameterType",
    "RejectCode",
    "SystemMessage",
    "Tool",
    "ToolBuilder",
    "ToolCall",
    "ToolCallArgument",
    "ToolMessage",
    "UserMessage",
    "assistant",
    "decode_reply",
    "encode_chat_request",
    "parameter",
    "system",
    "tool",
    "tool_result",
    "user",
]

# Above the emulator's 2 MiB limit, so that an oversized request reaches the server and is refused
# there, as the IC would refuse it, instead of failing inside the client.
CLIENT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
_CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", CLIENT_MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", CLIENT_MAX_MESSAGE_BYTES),
)

R = TypeVar("R")
T = TypeVar("T")
U = TypeVar("U")
Resp = TypeVar("Resp", bound=ProtoMessage)


# -- errors ----------------------------------------------------------------------------------------


class LlmReject(Exception):
    """The LLM canister rejected the call: what a calling canister would see as a reject."""

    def __init__(self, code: RejectCode, message: str) -> None:
        super().__init__(f"{code.name} ({int(code)}): {message}")
        self.code = RejectCode(code)
        self.message = message


class EmulatorError(Exception):
    """A gRPC failure that is no canister reject: a malformed request, no server, a deadline."""

    def __init__(self, status: grpc.StatusCode, details: str) -> None:
        super().__init__(f"gRPC call failed with {status.name}: {details}")
        self.status = status
        self.details = details


def translate_error(error: grpc.RpcError) -> LlmReject | EmulatorError:
    """The exception a caller should see for a failed gRPC call (sync and asyncio alike)."""
    status: grpc.StatusCode = error.code()
    details: str = error.details() or ""
    for key, value in error.trailing_metadata() or ():
        if key != REJECT_CODE_KEY:
            continue
        text = value.decode() if isinstance(value, bytes) else str(value)
        try:
            return LlmReject(RejectCode(int(text)), details)
        except ValueError:
            return EmulatorError(status, f"{details} (unreadable {REJECT_CODE_KEY} {text!r})")
    return EmulatorError(status, details)


# -- message helpers -------------------------------------------------------------------------------


def user(text: str) -> Message:
    """Typed as `Message`, like ic-llm's `ChatMessage`, so a list of mixed helpers is a `list[Message]`."""
    return UserMessage(text)


def system(text: str) -> Message:
    return SystemMessage(text)


def assistant(text: str | None = None, tool_calls: Iterable[ToolCall] = ()) -> Message:
    """An assistant turn to replay in a conversation, e.g. the tool calls the model made."""
    return AssistantMessage(content=text, tool_calls=tuple(tool_calls))


def tool_result(content: str, tool_call_id: str) -> Message:
    """The result of running one tool call, answering the call with that id."""
    return ToolMessage(content=content, tool_call_id=tool_call_id)


# -- tool builders ---------------------------------------------------------------------------------


class ParameterType(enum.StrEnum):
    """The parameter types `ic-llm`'s builder offers; they travel as free text on the wire."""

    STRING = "string"
    BOOLEAN = "boolean"
    NUMBER = "number"


@dataclass(frozen=True, slots=True)
class ParameterBuilder:
    """One tool parameter; each `with_*` returns a new builder, so a builder can be reused."""

    name: str
    type: ParameterType
    description: str | None = None
    required: bool = False
    enum_values: tuple[str, ...] = ()

    def with_description(self, description: str) -> ParameterBuilder:
        return dataclasses.replace(self, description=description)

    def is_required(self) -> ParameterBuilder:
        return dataclasses.replace(self, required=True)

    def with_enum_values(self, values: Iterable[str]) -> ParameterBuilder:
        return dataclasses.replace(self, enum_values=tuple(values))

    def build(self) -> Property:
        return Property(
            name=self.name,
            type=ParameterType(self.type).value,
            description=self.description,
            enum=self.enum_values,
        )


def parameter(name: str, type: ParameterType) -> ParameterBuilder:
    return ParameterBuilder(name, type)


@dataclass(frozen=True, slots=True)
class ToolBuilder:
    """A function tool; `build()` gives the domain `Tool` the canister receives."""

    name: str
    description: str | None = None
    parameters: tuple[ParameterBuilder, ...] = ()

    def with_description(self, description: str) -> ToolBuilder:
        return dataclasses.replace(self, description=description)

    def with_parameter(self, parameter: ParameterBuilder) -> ToolBuilder:
        return dataclasses.replace(self, parameters=(*self.parameters, parameter))

    def build(self) -> Tool:
        """As `ic-llm` does: an object schema in declaration order, or no schema without parameters."""
        if not self.parameters:
            return Tool(name=self.name, description=self.description, parameters=None)
        return Tool(
            name=self.name,
            description=self.description,
            parameters=Parameters(
                type="object",
                properties=tuple(p.build() for p in self.parameters),
                required=tuple(p.name for p in self.parameters if p.required),
            ),
        )


def tool(name: str) -> ToolBuilder:
    return ToolBuilder(name)


def _as_tool(value: Tool | ToolBuilder) -> Tool:
    return value.build() if isinstance(value, ToolBuilder) else value


@dataclass(frozen=True, slots=True)
class ChatBuilder(Generic[R]):
    """`chat(model).with_messages(..).with_tools(..).send()`.

    Generic in what `send()` returns, so the sync client's builder returns the message and the async
    client's returns an awaitable of it, from one implementation.
    """

    model: str
    _send: Callable[[ChatRequest], R] = dataclasses.field(repr=False)
    messages: tuple[Message, ...] = ()
    tools: tuple[Tool, ...] = ()

    def with_messages(self, messages: Iterable[Message]) -> ChatBuilder[R]:
        """The conversation so far (`user(...)`, `system(...)`, `assistant(...)`, `tool_result(...)`)."""
        return dataclasses.replace(self, messages=tuple(messages))

    def with_tools(self, tools: Iterable[Tool | ToolBuilder]) -> ChatBuilder[R]:
        """The tools the model may call (`tool(name).with_parameter(...)`)."""
        return dataclasses.replace(self, tools=tuple(_as_tool(t) for t in tools))

    def request(self) -> ChatRequest:
        """The request `send` would send."""
        return ChatRequest(model=self.model, messages=self.messages, tools=self.tools, api=Api.V1)

    def send(self) -> R:
        """Send it as `v1_chat`: the assistant message (awaitable, from the async client)."""
        return self._send(self.request())


# -- calls: what to send and how to read the reply, independent of the transport -------------------


@dataclass(frozen=True, slots=True)
class _Call(Generic[Resp, T]):
    """One unary call described without doing it: the sync and async clients only transport it."""

    method: Literal["V0Chat", "V1Chat", "CallCandid", "V1Deposit"]
    request: ProtoMessage
    decode: Callable[[Resp], T]

    def then(self, after: Callable[[T], U]) -> _Call[Resp, U]:
        decode = self.decode
        return _Call(self.method, self.request, lambda response: after(decode(response)))


def _v1_call(request: ChatRequest) -> _Call[pb.V1ChatResponse, AssistantMessage]:
    return _Call("V1Chat", convert.v1_request_pb(request), lambda r: convert.assistant_message(r.message))


def _prompt_call(model: str, text: str) -> _Call[pb.V1ChatResponse, str]:
    """As `ic-llm`'s `prompt`: one user message, the reply's content or "" when it has none."""
    request = ChatRequest(model=model, messages=(UserMessage(text),), api=Api.V1)
    return _v1_call(request).then(lambda message: message.content or "")


def _v0_call(model: str, messages: Sequence[Message]) -> _Call[pb.V0ChatResponse, str]:
    """A `v0_chat` call; raises `convert.BadRequest` (a ValueError) for tool messages, which v0 lacks."""
    request = convert.v0_request_pb(ChatRequest(model=model, messages=tuple(messages), api=Api.V0))
    return _Call("V0Chat", request, lambda r: r.text)


def _candid_call(method: str, arg: bytes) -> _Call[pb.CallCandidResponse, bytes]:
    """A method called with its Candid argument bytes; the reply is the Candid reply bytes."""
    return _Call("CallCandid", pb.CallCandidRequest(method=method, arg=arg), lambda r: r.reply)


def _deposit_call(beneficiary: str | None) -> _Call[pb.V1DepositResponse, int]:
    """v1_deposit: the client's attached cycles join the beneficiary's (else the caller's) balance."""
    return _Call("V1Deposit", pb.V1DepositRequest(beneficiary=beneficiary), lambda r: int(r.balance))


class _ClientSettings:
    """What both clients share: the target, the per-call metadata and the deadline."""

    def __init__(
        self,
        target: str,
        *,
        caller: str | None = None,
        cycles: int | None = None,
        timeout: float | None = None,
    ) -> None:
        self.target = target
        self.caller = caller
        self.cycles = cycles
        self.timeout = timeout
        metadata: list[tuple[str, str]] = []
        if caller is not None:
            metadata.append((CALLER_KEY, caller))
        if cycles is not None:
            metadata.append((CYCLES_KEY, str(cycles)))
        self._metadata = tuple(metadata)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target!r}, caller={self.caller!r}, cycles={self.cycles!r})"


# -- the two flavours ------------------------------------------------------------------------------


class LlmClient(_ClientSettings):
    """A blocking client for the LLM canister's gRPC door; close it, or use it as a context manager."""

    def __init__(
        self,
        target: str,
        *,
        caller: str | None = None,
        cycles: int | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(target, caller=caller, cycles=cycles, timeout=timeout)
        self._channel = grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
        self._stub = canister_pb2_grpc.LlmCanisterStub(self._channel)

    def _invoke(self, call: _Call[Any, T]) -> T:
        method = getattr(self._stub, call.method)
        try:
            response = method(call.request, metadata=self._metadata, timeout=self.timeout)
        except grpc.RpcError as error:
            raise translate_error(error) from None
        return call.decode(response)

    def prompt(self, model: str, text: str) -> str:
        """One user message to `model`; returns the answer's text (ic-llm's `prompt`)."""
        return self._invoke(_prompt_call(model, text))

    def chat(self, model: str) -> ChatBuilder[AssistantMessage]:
        """A chat with `model`, built as in ic-llm: `.with_messages([...]).with_tools([...]).send()`."""
        return ChatBuilder(model, self.v1_chat)

    def v0_chat(self, model: str, messages: Sequence[Message]) -> str:
        """The canister's `v0_chat`: messages without tools; returns the answer's text."""
        return self._invoke(_v0_call(model, messages))

    def v1_chat(self, request: ChatRequest) -> AssistantMessage:
        """The canister's `v1_chat`: a whole request (messages, tools); returns the assistant message."""
        return self._invoke(_v1_call(request))

    def call_candid(self, method: str, arg: bytes) -> bytes:
        """Call `method` with a Candid argument, as a canister would; returns the Candid reply bytes."""
        return self._invoke(_candid_call(method, arg))

    def v1_deposit(self, beneficiary: str | None = None) -> int:
        """Deposit the client's `cycles` for `beneficiary` (default: the caller); returns the new balance."""
        return self._invoke(_deposit_call(beneficiary))

    def close(self) -> None:
        """Close the connection (leaving a `with` block does it)."""
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncLlmClient(_ClientSettings):
    """The asyncio client; create it inside a running event loop and `await close()` it (or `async with`)."""

    def __init__(
        self,
        target: str,
        *,
        caller: str | None = None,
        cycles: int | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(target, caller=caller, cycles=cycles, timeout=timeout)
        self._channel = grpc.aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        self._stub = canister_pb2_grpc.LlmCanisterStub(self._channel)

    async def _invoke(self, call: _Call[Any, T]) -> T:
        method = getattr(self._stub, call.method)
        try:
            response = await method(call.request, metadata=self._metadata, timeout=self.timeout)
        except grpc.RpcError as error:
            raise translate_error(error) from None
        return call.decode(response)

    async def prompt(self, model: str, text: str) -> str:
        """One user message to `model`; returns the answer's text (ic-llm's `prompt`)."""
        return await self._invoke(_prompt_call(model, text))

    def chat(self, model: str) -> ChatBuilder[Awaitable[AssistantMessage]]:
        """A chat with `model`: `await client.chat(model).with_messages([...]).send()`."""
        return ChatBuilder(model, self.v1_chat)

    async def v0_chat(self, model: str, messages: Sequence[Message]) -> str:
        """The canister's `v0_chat`: messages without tools; returns the answer's text."""
        return await self._invoke(_v0_call(model, messages))

    async def v1_chat(self, request: ChatRequest) -> AssistantMessage:
        """The canister's `v1_chat`: a whole request (messages, tools); returns the assistant message."""
        return await self._invoke(_v1_call(request))

    async def call_candid(self, method: str, arg: bytes) -> bytes:
        """Call `method` with a Candid argument, as a canister would; returns the Candid reply bytes."""
        return await self._invoke(_candid_call(method, arg))

    async def v1_deposit(self, beneficiary: str | None = None) -> int:
        """Deposit the client's `cycles` for `beneficiary` (default: the caller); returns the new balance."""
        return await self._invoke(_deposit_call(beneficiary))

    async def close(self) -> None:
        """Close the connection (leaving an `async with` block does it)."""
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
