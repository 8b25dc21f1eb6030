"""Protobuf messages to domain values and back: the gRPC door's whole translation layer.

A proto message that cannot describe a valid request (no role, an empty `oneof`) raises
`BadRequest`, which the servicer turns into INVALID_ARGUMENT with this message.
"""

from __future__ import annotations

from collections.abc import Callable

from icllm_emulator._proto.icllm.v1 import canister_pb2 as pb
from icllm_emulator.domain import (
    Api,
    AssistantMessage,
    ChatRequest,
    FunctionCall,
    Message,
    Parameters,
    Property,
    SystemMessage,
    Tool,
    ToolCall,
    ToolCallArgument,
    ToolMessage,
    UserMessage,
)
from icllm_emulator.errors import IcllmError


class BadRequest(IcllmError, ValueError):
    """A request that is not well formed; the message says which field and what is valid."""


_V0_ROLES: dict[int, Callable[[str], Message]] = {
    pb.ChatMessageV0.USER: UserMessage,
    pb.ChatMessageV0.SYSTEM: SystemMessage,
    pb.ChatMessageV0.ASSISTANT: lambda content: AssistantMessage(content=content),
}


def v0_request(request: pb.V0ChatRequest) -> ChatRequest:
    messages: list[Message] = []
    for index, message in enumerate(request.messages):
        make = _V0_ROLES.get(message.role)
        if make is None:
            known = message.role in pb.ChatMessageV0.Role.values()
            seen = (
                pb.ChatMessageV0.Role.Name(message.role) if known else f"{message.role}, which is not a role"
            )
            raise BadRequest(f"messages[{index}].role is {seen}; valid roles: USER, ASSISTANT, SYSTEM")
        messages.append(make(message.content))
    return ChatRequest(model=request.model, messages=tuple(messages), api=Api.V0)


def v1_request(request: pb.V1ChatRequest) -> ChatRequest:
    return ChatRequest(
        model=request.model,
        messages=tuple(v1_message(m, i) for i, m in enumerate(request.messages)),
        tools=tuple(tool(t, i) for i, t in enumerate(request.tools)),
        api=Api.V1,
    )


def v1_message(message: pb.ChatMessageV1, index: int) -> Message:
    kind = message.WhichOneof("message")
    if kind == "user":
        return UserMessage(message.user.content)
    if kind == "system":
        return SystemMessage(message.system.content)
    if kind == "assistant":
        return assistant_message(message.assistant)
    if kind == "tool":
        return ToolMessage(message.tool.content, message.tool.tool_call_id)
    raise BadRequest(f"messages[{index}] is empty: set one of user, system, assistant, tool")


def assistant_message(message: pb.AssistantMessage) -> AssistantMessage:
    return AssistantMessage(
        content=message.content if message.HasField("content") else None,
        tool_calls=tuple(
            ToolCall(
                id=call.id,
                function=FunctionCall(
                    call.function.name,
                    tuple(ToolCallArgument(a.name, a.value) for a in call.function.arguments),
                ),
            )
            for call in message.tool_calls
        ),
    )


def tool(message: pb.Tool, index: int) -> Tool:
    if message.WhichOneof("tool") != "function":
        raise BadRequest(f"tools[{index}] is empty: set `function`")
    function = message.function
    parameters = None
    if function.HasField("parameters"):
        p = function.parameters
        parameters = Parameters(
            type=p.type,
            properties=tuple(
                Property(
                    name=prop.name,
                    type=prop.type,
                    description=prop.description if prop.HasField("description") else None,
                    enum=tuple(prop.enum),
                )
                for prop in p.properties
            ),
            required=tuple(p.required),
        )
    return Tool(
        name=function.name,
        description=function.description if function.HasField("description") else None,
        parameters=parameters,
    )


# -- domain to proto -------------------------------------------------------------------------------


def assistant_message_pb(message: AssistantMessage) -> pb.AssistantMessage:
    return pb.AssistantMessage(
        content=message.content,
        tool_calls=[
            pb.ToolCall(
                id=call.id,
                function=pb.FunctionCall(
                    name=call.function.name,
                    arguments=[
                        pb.ToolCallArgument(name=a.name, value=a.value) for a in call.function.arguments
                    ],
                ),
            )
            for call in message.tool_calls
        ],
    )


def message_pb(message: Message) -> pb.ChatMessageV1:
    if isinstance(message, UserMessage):
        return pb.ChatMessageV1(user=pb.UserMessage(content=message.content))
    if isinstance(message, SystemMessage):
        return pb.ChatMessageV1(system=pb.SystemMessage(content=message.content))
    if isinstance(message, AssistantMessage):
        return pb.ChatMessageV1(assistant=assistant_message_pb(message))
    return pb.ChatMessageV1(tool=pb.ToolMessage(content=message.content, tool_call_id=message.tool_call_id))


def tool_pb(tool: Tool) -> pb.Tool:
    function = pb.FunctionTool(name=tool.name, description=tool.description)
    if tool.parameters is not None:
        function.parameters.CopyFrom(
            pb.Parameters(
                type=tool.parameters.type,
                properties=[
                    pb.Property(name=p.name, type=p.type, description=p.description, enum=list(p.enum))
                    for p in tool.parameters.properties
                ],
                required=list(tool.parameters.required),
            )
        )
    return pb.Tool(function=function)


def v1_request_pb(request: ChatRequest) -> pb.V1ChatRequest:
    return pb.V1ChatRequest(
        model=request.model,
        messages=[message_pb(m) for m in request.messages],
        tools=[tool_pb(t) for t in request.tools],
    )


_V0_ROLE_PB = {
    UserMessage: pb.ChatMessageV0.USER,
    SystemMessage: pb.ChatMessageV0.SYSTEM,
    AssistantMessage: pb.ChatMessageV0.ASSISTANT,
}


def v0_request_pb(request: ChatRequest) -> pb.V0ChatRequest:
    """A v0 request; only user, system and assistant text messages exist in v0."""
    messages = []
    for message in request.messages:
        role = _V0_ROLE_PB.get(type(message))
        if role is None:
            raise BadRequest(f"v0_chat has no {message.role.value} messages; use v1_chat")
        messages.append(pb.ChatMessageV0(content=message.content or "", role=role))
    return pb.V0ChatRequest(model=request.model, messages=messages)
