"""How rejects and misuse travel over gRPC.

A canister reject is a gRPC error with trailing metadata `icllm-reject-code` (1-6) and the reject
message as the status details. Each IC code has one gRPC status, so a plain gRPC client can react
to it too; INTERNAL is kept for faults of the emulator itself.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import DecodeError

from icllm_emulator.billing import checked_cycles
from icllm_emulator.config import ANONYMOUS_PRINCIPAL, checked_principal
from icllm_emulator.domain import Reject, RejectCode
from icllm_emulator.errors import ErrorKind, IcllmError
from icllm_emulator.grpc_api.convert import BadRequest

REJECT_CODE_KEY = "icllm-reject-code"
CALLER_KEY = "icllm-caller"
CYCLES_KEY = "icllm-cycles"
REFUNDED_KEY = "icllm-cycles-refunded"

GRPC_STATUS: dict[RejectCode, grpc.StatusCode] = {
    RejectCode.SYS_FATAL: grpc.StatusCode.ABORTED,
    RejectCode.SYS_TRANSIENT: grpc.StatusCode.UNAVAILABLE,
    RejectCode.DESTINATION_INVALID: grpc.StatusCode.NOT_FOUND,
    RejectCode.CANISTER_REJECT: grpc.StatusCode.FAILED_PRECONDITION,
    RejectCode.CANISTER_ERROR: grpc.StatusCode.UNKNOWN,
    RejectCode.SYS_UNKNOWN: grpc.StatusCode.DEADLINE_EXCEEDED,
}

# The IC refuses ingress and inter-canister messages above 2 MiB; so does the emulator. gRPC's transport
# refuses an oversized message only after 0.1-1 s, so the server lets up to TRANSPORT_MAX_BYTES through
# and every handler refuses at once, with this status, what the IC would refuse.
MAX_MESSAGE_BYTES = 2 * 1024 * 1024
TRANSPORT_MAX_BYTES = 4 * MAX_MESSAGE_BYTES
# What the server sends at most: a gRPC client's default receive limit, room for a 2 MiB reply. Lists
# come in pages well below it and long parts are shortened (grpc_api/pages.py); an answer that is over
# it all the same is refused by the handler with a message, not by the transport with a traceback.
SEND_MAX_BYTES = 2 * MAX_MESSAGE_BYTES


async def abort_with_reject(context: grpc.aio.ServicerContext, reject: Reject) -> NoReturn:
    # Keep what the handler set already (the cycles refunded) beside the reject code.
    trailing = (*(context.trailing_metadata() or ()), (REJECT_CODE_KEY, str(int(reject.code))))
    await context.abort(GRPC_STATUS[reject.code], reject.message, trailing_metadata=trailing)
    raise AssertionError("abort returns only by raising")


def principal_of(text: str, what: str) -> str:
    """A textual principal, checked for its shape (not its checksum)."""
    return checked_principal(text, what, BadRequest)


def caller_of(context: grpc.aio.ServicerContext) -> tuple[str, int]:
    """The calling principal and the cycles attached, from request metadata."""
    metadata = dict(context.invocation_metadata() or ())
    caller = principal_of(str(metadata.get(CALLER_KEY, ANONYMOUS_PRINCIPAL)), f"metadata {CALLER_KEY}")
    cycles = checked_cycles(str(metadata.get(CYCLES_KEY, "0")), f"metadata {CYCLES_KEY}", BadRequest)
    return caller, cycles


Handler = TypeVar("Handler", bound=Callable[..., Awaitable[Any]])

# The project's own errors (a caller's mistake) by kind; anything else is a fault of the emulator.
MISUSE_STATUS: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.REFUSED: grpc.StatusCode.FAILED_PRECONDITION,
}


@dataclass(frozen=True, slots=True)
class MalformedRequest:
    """Bytes that are not the method's request message (what a failed parse hands the handler)."""

    problem: str


def tolerant(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The same handler, whose request parser returns `MalformedRequest` instead of raising."""
    parse = handler.request_deserializer

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as error:
            return MalformedRequest(str(error) or type(error).__name__)

    replaced: grpc.RpcMethodHandler = handler._replace(request_deserializer=deserialize)
    return replaced


CONTROL_TOKEN_KEY = "icllm-control-token"


def token_checked(handler: grpc.RpcMethodHandler, token: str, service: str) -> grpc.RpcMethodHandler:
    """A handler that answers only calls carrying the emulator's control token: that of every service
    through which a caller can change the emulator, install and run code, or take prompts' work."""
    inner = handler.unary_unary
    if inner is None:
        return handler

    async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        given = str(dict(context.invocation_metadata() or ()).get(CONTROL_TOKEN_KEY, ""))
        if not hmac.compare_digest(given.encode(), token.encode()):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"the {service} service needs the emulator's control token (its --control-token) as "
                f"metadata {CONTROL_TOKEN_KEY} (with pytest: --icllm-control-token; an external worker: "
                "--control-token; either: ICLLM_CONTROL_TOKEN)"
                + (": the one given is wrong" if given else ""),
            )
        return await inner(request, context)

    replaced: grpc.RpcMethodHandler = handler._replace(unary_unary=unary_unary)
    return replaced


def guarded(handler: grpc.RpcMethodHandler, service: str) -> grpc.RpcMethodHandler:
    """A handler of a service that is not the emulator's own (health): bytes that do not parse are
    INVALID_ARGUMENT, not gRPC's bare UNKNOWN with a traceback in the log."""
    tolerant_handler = tolerant(handler)

    async def refuse(request: MalformedRequest, context: grpc.aio.ServicerContext) -> NoReturn:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request is not a valid {service} message ({request.problem})",
        )
        raise AssertionError("abort returns only by raising")

    if handler.unary_unary is not None:
        unary = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, MalformedRequest):
                await refuse(request, context)
            return await unary(request, context)

        replaced: grpc.RpcMethodHandler = tolerant_handler._replace(unary_unary=unary_unary)
        return replaced
    if handler.unary_stream is not None:
        stream = handler.unary_stream

        async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, MalformedRequest):
                await refuse(request, context)
            async for item in stream(request, context):
                yield item

        replaced = tolerant_handler._replace(unary_stream=unary_stream)
        return replaced
    return handler


def larger_messages(limit: int) -> Callable[[Handler], Handler]:
    """Let a method take requests up to `limit` bytes (a canister module), not the IC's 2 MiB."""

    def mark(handler: Handler) -> Handler:
        handler.__dict__["max_message_bytes"] = limit
        return handler

    return mark


def rpc(handler: Handler) -> Handler:
    """Map a handler's rejects and misuse errors to gRPC statuses; nothing else is caught."""
    limit = int(handler.__dict__.get("max_message_bytes", MAX_MESSAGE_BYTES))

    @wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, MalformedRequest):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request is not a valid {handler.__name__} message ({request.problem}); "
                "send the protobuf message proto/icllm/v1 defines for this method",
            )
        size = request.ByteSize()
        if size > limit:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Received message larger than max ({size} vs. {limit}): "
                + (
                    "the Internet Computer refuses messages over 2 MiB"
                    if limit == MAX_MESSAGE_BYTES
                    else "give a larger module gzipped, or install it at start-up with --canister NAME=PATH"
                ),
            )
        try:
            answer = await handler(self, request, context)
        except Reject as reject:
            await abort_with_reject(context, reject)
        except IcllmError as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
            await context.abort(MISUSE_STATUS[error.kind], message)
        size = answer.ByteSize()
        if size > SEND_MAX_BYTES:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the answer to {handler.__name__} is {size} bytes, over the {SEND_MAX_BYTES} a gRPC answer "
                "of the emulator may have",
            )
        return answer

    return wrapper  # type: ignore[return-value]
