"""Waiting for a state in tests: a bounded poll of a condition, never one fixed sleep as readiness."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

POLL = 0.01


def wait_until(predicate: Callable[[], bool], what: str = "the condition", timeout: float = 10.0) -> None:
    """Return once `predicate()` holds; fail naming `what` after `timeout` seconds."""
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        pause.wait(POLL)


async def until(predicate: Callable[[], bool], what: str = "the condition", timeout: float = 10.0) -> None:
    """The asyncio form: lets other tasks run (first without any delay) until `predicate()` holds."""
    deadline = time.monotonic() + timeout
    for _ in range(100):  # tasks already scheduled usually get there within a few loop iterations
        if predicate():
            return
        await asyncio.sleep(0)
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(POLL)
