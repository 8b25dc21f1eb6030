"""The in-process Control stand-in: a handler that needs no waiting runs in one callback on the loop,
one that awaits goes on in a Task, and aborts and deadlines reach the caller as gRPC errors do."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from icllm_emulator._proto.icllm.v1 import control_pb2 as cpb
from icllm_emulator.config import EmulatorConfig
from icllm_emulator.server import ThreadedEmulator
from pytest_icllm._inprocess import Aborted, InProcessControl


class Handlers:
    """Control handlers that note whether they ran inside a Task."""

    def __init__(self) -> None:
        self.tasks: list[bool] = []
        self.cancelled = asyncio.Event()

    async def Quick(self, request: Any, context: Any) -> str:
        self.tasks.append(asyncio.current_task() is not None)
        return f"quick {request}"

    async def Slow(self, request: Any, context: Any) -> str:
        await asyncio.sleep(0.01)
        await asyncio.sleep(0)
        self.tasks.append(asyncio.current_task() is not None)
        return f"slow {request}"

    async def Refuse(self, request: Any, context: Any) -> None:
        await asyncio.sleep(0)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no", (("k", "v"),))

    async def Hang(self, request: Any, context: Any) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            self.cancelled.set()


Pair = tuple[InProcessControl, "Handlers"]


@pytest.fixture(scope="module")
def emulator() -> Iterator[ThreadedEmulator]:
    emulator = ThreadedEmulator(EmulatorConfig(grpc_port=0, ollama_port=None))
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture
def control(emulator: ThreadedEmulator) -> Pair:
    control = InProcessControl(emulator)
    handlers = Handlers()
    control._servicer = handlers  # type: ignore[assignment]
    return control, handlers


def test_a_handler_that_needs_no_waiting_runs_without_a_task(
    control: Pair,
) -> None:
    stand_in, handlers = control

    assert stand_in.Quick(1, timeout=10) == "quick 1"
    assert handlers.tasks == [False]


def test_a_handler_that_awaits_goes_on_in_a_task(control: Pair) -> None:
    stand_in, handlers = control

    assert stand_in.Slow(2, timeout=10) == "slow 2"
    assert stand_in.batch([("Quick", 3), ("Slow", 4)], timeout=10) == ["quick 3", "slow 4"]
    assert handlers.tasks == [True, False, True]  # the batch's first read came before any waiting


def test_an_abort_after_awaiting_arrives_as_the_grpc_error(
    control: Pair,
) -> None:
    stand_in, _ = control

    with pytest.raises(Aborted) as raised:
        stand_in.Refuse(None, timeout=10)

    assert (raised.value.code(), raised.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "no")
    assert raised.value.trailing_metadata() == (("k", "v"),)


def test_a_deadline_cancels_the_handler(control: Pair, emulator: ThreadedEmulator) -> None:
    stand_in, handlers = control

    with pytest.raises(Aborted, match=r"Hang took over 0\.05 s") as raised:
        stand_in.Hang(None, timeout=0.05)

    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    asyncio.run_coroutine_threadsafe(asyncio.wait_for(handlers.cancelled.wait(), 10), emulator.loop).result()


def test_the_real_servicer_answers(emulator: ThreadedEmulator) -> None:
    stand_in = InProcessControl(emulator)

    stand_in.Reset(cpb.ResetRequest(), timeout=10)

    assert list(stand_in.ListRules(cpb.ListRulesRequest(), timeout=10).rules) == []
