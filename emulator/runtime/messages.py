"""The runtime's bookkeeping of messages: incoming calls, the messages that run them, outgoing calls."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from typing import Any

from icllm_emulator.domain import RejectCode


class MessageKind(enum.StrEnum):
    INIT = "canister_init"
    UPDATE = "an update"
    QUERY = "a query"
    COMPOSITE_QUERY = "a composite query"
    REPLY_CALLBACK = "a reply callback"
    REJECT_CALLBACK = "a reject callback"
    CLEANUP = "a cleanup callback"
    TIMER = "canister_global_timer"
    HEARTBEAT = "canister_heartbeat"
    PRE_UPGRADE = "canister_pre_upgrade"
    POST_UPGRADE = "canister_post_upgrade"
    INSPECT = "canister_inspect_message"
    START = "the start function"

    @classmethod
    def replying(cls) -> tuple[MessageKind, ...]:
        """Messages that may reply to (or reject) their call context."""
        return (cls.UPDATE, cls.QUERY, cls.COMPOSITE_QUERY, cls.REPLY_CALLBACK, cls.REJECT_CALLBACK)

    @classmethod
    def callbacks(cls) -> tuple[MessageKind, ...]:
        return (cls.REPLY_CALLBACK, cls.REJECT_CALLBACK)

    @classmethod
    def calling(cls) -> tuple[MessageKind, ...]:
        """Messages that may make calls (a query may not: composite queries are not emulated)."""
        return (
            cls.INIT,
            cls.POST_UPGRADE,
            cls.UPDATE,
            cls.COMPOSITE_QUERY,
            cls.REPLY_CALLBACK,
            cls.REJECT_CALLBACK,
            cls.TIMER,
            cls.HEARTBEAT,
        )


@dataclass(frozen=True, slots=True)
class Response:
    """How a call ended: reply bytes, or a reject with its code and message; and the cycles refunded."""

    reply: bytes | None = None
    reject_code: RejectCode | None = None
    reject_message: str = ""
    error_code: str | None = None
    refund: int = 0

    @classmethod
    def rejected(
        cls, code: RejectCode, message: str, error_code: str | None = None, refund: int = 0
    ) -> Response:
        return cls(reject_code=RejectCode(code), reject_message=message, error_code=error_code, refund=refund)


@dataclass(eq=False)
class CallContext:
    """An incoming call being answered: it ends with one reply or reject, perhaps after many messages."""

    caller: bytes
    method: str
    cycles_available: int
    deadline_ns: int
    response: asyncio.Future[Response]
    outstanding: int = 0
    # A composite query's call: its calls reach queries only; `private` is its state between messages.
    composite: bool = False
    private: Any = None

    @property
    def responded(self) -> bool:
        return self.response.done()

    def respond(self, response: Response) -> None:
        """End the call; cycles it did not accept go back with the response."""
        if not self.response.done():
            refund = self.cycles_available
            self.cycles_available = 0
            self.response.set_result(
                Response(
                    response.reply,
                    response.reject_code,
                    response.reject_message,
                    response.error_code,
                    refund,
                )
            )


@dataclass(eq=False)
class Call:
    """An outgoing call, built by call_new .. call_perform and sent when its message commits."""

    callee: bytes
    method: str
    reply: tuple[int, int]
    reject: tuple[int, int]
    context: CallContext | None
    cleanup: tuple[int, int] | None = None
    arg: bytearray = field(default_factory=bytearray)
    cycles: int = 0
    timeout: int | None = None  # seconds, for a bounded-wait (best-effort) call
    query_only: bool = False  # made by a composite query: the callee runs it as a query


@dataclass(eq=False)
class Message:
    """One message executing on a canister: what ic0 reads, and what it leaves behind if it commits."""

    kind: MessageKind
    context: CallContext | None
    method: str = ""
    arg: bytes = b""
    caller: bytes = b""
    time_ns: int = 0
    deadline_ns: int = 0
    reject_code: int = 0
    reject_message: str = ""
    refunded: int = 0
    reply_data: bytearray = field(default_factory=bytearray)
    reply: bytes | None = None
    reject: str | None = None
    building: Call | None = None
    calls: list[Call] = field(default_factory=list)
    fuel: int = 0
    accepted: bool = False  # canister_inspect_message called accept_message

    @property
    def replied(self) -> bool:
        return self.reply is not None or self.reject is not None
