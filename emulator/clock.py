"""Time for the engine: the real clock, or a virtual one that tests move forward by hand.

Everything that waits in the engine (leases, caller deadlines, scripted delays) waits through a
clock, so a test can pass a 300 s deadline in no time.
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import itertools
import math
import time
from typing import Protocol


class ClockKind(enum.StrEnum):
    REAL = "real"
    VIRTUAL = "virtual"


class Clock(Protocol):
    kind: ClockKind

    def now(self) -> float:
        """Seconds since the Unix epoch."""
        ...

    async def sleep_until(self, when: float) -> None: ...


class RealClock:
    kind = ClockKind.REAL

    def now(self) -> float:
        return time.time()

    async def sleep_until(self, when: float) -> None:
        delay = when - time.time()
        if delay > 0:
            await asyncio.sleep(delay)


class VirtualClock:
    """A clock that stands still until `advance` is called; sleepers wake in time order."""

    kind = ClockKind.VIRTUAL

    def __init__(self, start: float | None = None) -> None:
        self._now = self.start = time.time() if start is None else start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep_until(self, when: float) -> None:
        if when <= self._now:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (when, next(self._order), future))
        await future

    async def advance(self, seconds: float) -> float:
        """Move time forward, waking each sleeper at its own time and letting it run before the next."""
        check_advance(seconds)
        target = self._now + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            when, _, future = heapq.heappop(self._sleepers)
            self._now = max(self._now, when)
            if not future.done():
                future.set_result(None)
            await _settle()
        self._now = target
        await _settle()
        return self._now

    def reset(self) -> None:
        """Back to the time the clock started at; whatever still sleeps on it is woken (and ends)."""
        self._now = self.start
        for _, _, future in self._sleepers:
            if not future.done():
                future.cancel()
        self._sleepers.clear()


# Far beyond any test's horizon, and well inside the range where adding seconds to a Unix time keeps
# sub-millisecond precision (the canister runtime reads the clock in nanoseconds).
MAX_ADVANCE_SECONDS = 100 * 365 * 24 * 3600


def check_advance(seconds: float) -> None:
    """The clock moves forward by a finite, sensible amount, or a `ValueError` says what is valid."""
    if not math.isfinite(seconds):
        raise ValueError(f"the clock moves by a finite number of seconds, got {seconds}")
    if seconds < 0:
        raise ValueError(f"the clock only moves forward: got {seconds} seconds")
    if seconds > MAX_ADVANCE_SECONDS:
        raise ValueError(
            f"{seconds:g} seconds is more than a hundred years; "
            f"move the clock by at most {MAX_ADVANCE_SECONDS}"
        )


async def _settle() -> None:
    """Let woken tasks run until they block again."""
    for _ in range(20):
        await asyncio.sleep(0)


def make_clock(kind: ClockKind) -> RealClock | VirtualClock:
    return VirtualClock() if kind is ClockKind.VIRTUAL else RealClock()
