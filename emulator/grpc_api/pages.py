"""Answers that fit the transport: pages of a long list, and shortened parts marked as such.

gRPC refuses to send an answer over the server's send limit, and the method then fails for as long as
the data stays (every call ends in RESOURCE_EXHAUSTED). Lists come in pages of at most ANSWER_BYTES, and
a part that alone could not fit (a body, a reject message, a Candid interface) is cut to its beginning
and its answer says so, as `GetHistory` does with `request_truncated`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from icllm_emulator.grpc_api.convert import BadRequest

# What one answer holds at most: well below the server's send limit and a client's default 4 MiB.
ANSWER_BYTES = 1024 * 1024


class Sized(Protocol):
    def ByteSize(self) -> int: ...


Item = TypeVar("Item")
Message = TypeVar("Message", bound=Sized)


def page(
    items: Sequence[Item], convert: Callable[[Item], Message], token: str, size: int
) -> tuple[list[Message], str]:
    """The items from `token` on (converted), as many as fit in an answer and `size` (0: no count);
    and the next page's token ("" on the last page). A token is the count of items already given."""
    start = _offset(token)
    chosen: list[Message] = []
    used = 0
    for index in range(start, len(items)):
        message = convert(items[index])
        cost = message.ByteSize() + 8
        if chosen and (used + cost > ANSWER_BYTES or (size and len(chosen) >= size)):
            return chosen, str(index)
        chosen.append(message)
        used += cost
    return chosen, ""


def _offset(token: str) -> int:
    if not token:
        return 0
    if not token.isdecimal() or len(token) > 18:
        raise BadRequest(f"page_token {token[:40]!r} is not a page token; pass the last next_page_token")
    return int(token)


def shortened(text: str, limit: int) -> tuple[str, bool]:
    """`text` cut to at most `limit` bytes of UTF-8 (on a character boundary), and whether it was cut."""
    if len(text) * 4 <= limit:
        return text, False
    data = text.encode()
    if len(data) <= limit:
        return text, False
    return data[:limit].decode(errors="ignore"), True
