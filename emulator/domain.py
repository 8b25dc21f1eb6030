"""The LLM canister's data, as plain immutable Python values.

Every front door (gRPC, Candid, HTTP) converts its wire format to these types and back; nothing in
here knows about any wire format. Names follow the canister's Candid interface.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal, TypeAlias


class ToolPolicy(enum.StrEnum):
    """Whether a backend that invents answers may call the tools a request offers."""

    NEVER = "never"
    AUTO = "auto"


class RejectCode(enum.IntEnum):
    """The Internet Computer's reject codes, as a calling canister sees them."""

    SYS_FATAL = 1
    SYS_TRANSIENT = 2
    DESTINATION_INVALID = 3
    CANISTER_REJECT = 4
    CANISTER_ERROR = 5
    SYS_UNKNOWN = 6


class Reject(Exception):
    """A call that did not produce a reply: the caller sees this code and message."""

    def __init__(self, code: RejectCode, message: str) -> None:
        super().__init__(f"{code.name} ({int(code)}): {message}")
        self.code = RejectCode(code)
        self.message = message

    def bare(self) -> Reject:
        """This reject without the traceback of where it was raised (its frames hold whole requests)."""
        return Reject(self.code, self.message)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reject) and (self.code, self.message) == (other.code, other.message)

    def __hash__(self) -> int:
        return hash((self.code, self.message))


class Role(enum.StrEnum):
    """The role of a message; `tool` exists only in v1 requests."""

    USER = "user"
    SYSTEM = "system"
    ASSISTANT = "assistant"
    TOOL = "tool"


@dataclass(frozen=True, slots=True)
class ToolCallArgument:
    """One argument of a tool call; values always travel as text, as on the wire."""

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class FunctionCall:
    name: str
    arguments: tuple[ToolCallArgument, ...] = ()


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    function: FunctionCall


@dataclass(frozen=True, slots=True)
class UserMessage:
    content: str
    role: Literal[Role.USER] = field(default=Role.USER, init=False, repr=False)


@dataclass(frozen=True, slots=True)
class SystemMessage:
    content: str
    role: Literal[Role.SYSTEM] = field(default=Role.SYSTEM, init=False, repr=False)


@dataclass(frozen=True, slots=True)
class AssistantMessage:
    """The model's turn: text, tool calls, or both (`content` is `opt text` on the wire)."""

    content: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    role: Literal[Role.ASSISTANT] = field(default=Role.ASSISTANT, init=False, repr=False)


@dataclass(frozen=True, slots=True)
class ToolMessage:
    """The result of one tool call, sent back by the caller."""

    content: str
    tool_call_id: str
    role: Literal[Role.TOOL] = field(default=Role.TOOL, init=False, repr=False)


Message: TypeAlias = UserMessage | SystemMessage | AssistantMessage | ToolMessage


@dataclass(frozen=True, slots=True)
class Property:
    """One declared tool parameter; `type` is free text on the wire (`string`, `number`, ...)."""

    name: str
    type: str
    description: str | None = None
    enum: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Parameters:
    type: str = "object"
    properties: tuple[Property, ...] = ()
    required: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Tool:
    """A function tool offered to the model (the Candid variant's only case, `function`)."""

    name: str
    description: str | None = None
    parameters: Parameters | None = None


class Api(enum.StrEnum):
    """Which canister method a request arrived through; it shapes the reply."""

    V0 = "v0_chat"
    V1 = "v1_chat"


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """One chat request, whichever method or front door it came through."""

    model: str
    messages: tuple[Message, ...]
    tools: tuple[Tool, ...] = ()
    api: Api = Api.V1


@dataclass(frozen=True, slots=True)
class Limits:
    """A limit profile: what the canister accepts and how long an answer may be."""

    max_messages: int | None
    max_prompt_bytes: int | None
    max_output_tokens: int | None


@dataclass(frozen=True, slots=True)
class Answer:
    """A worker's answer to a job, with what the history needs to know about it."""

    message: AssistantMessage
    output_tokens: int = 0
    truncated: bool = False
