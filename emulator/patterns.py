"""Regular expressions that users give (rule matches, outcall URLs, scrub patterns), with bounded time.

A pattern like `^(a+)+$` backtracks exponentially on a near-miss and would hold the event loop for
seconds; the `regex` package stops a search at a timeout, and the caller reports the pattern as a miss
(or, for scrubbing, as a failed step) instead of freezing every door.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from icllm_emulator.errors import IcllmError

if TYPE_CHECKING:
    import regex

# Per search: far above what a sane pattern needs on a 10 KiB prompt, far below a noticeable stall.
MATCH_TIMEOUT = 0.05


class PatternError(IcllmError, ValueError):
    """A pattern that does not compile; the message says why."""


class PatternTimeout(Exception):
    """A search that ran past MATCH_TIMEOUT."""

    def __init__(self, pattern: str) -> None:
        super().__init__(
            f"the pattern /{pattern}/ took longer than {MATCH_TIMEOUT * 1000:g} ms (it backtracks: "
            "simplify it, e.g. avoid nested repeats like (a+)+)"
        )
        self.pattern = pattern


@functools.lru_cache(maxsize=512)
def compiled(pattern: str) -> regex.Pattern[str]:
    import regex  # loaded with the first pattern: a session that uses none never imports it

    try:
        return regex.compile(pattern)
    except regex.error as error:
        raise PatternError(f"{pattern!r} is not a valid regular expression: {error}") from None


def search(pattern: str, text: str) -> bool:
    try:
        return compiled(pattern).search(text, timeout=MATCH_TIMEOUT) is not None
    except TimeoutError:
        raise PatternTimeout(pattern) from None


def substitute(pattern: str, replacement: str, text: str) -> str:
    try:
        return compiled(pattern).sub(replacement, text, timeout=MATCH_TIMEOUT)
    except TimeoutError:
        raise PatternTimeout(pattern) from None
