"""The Control service of the in-process emulator, called on its own event loop instead of over gRPC.

The same `ControlServicer` handles each request and its aborts arrive as the same `grpc.RpcError`
(status, details, trailing metadata) that a gRPC call raises, so the controller behaves the same
against the in-process emulator and an external one. What is saved is the trip through the network
stack: about 0.35 ms per call, several times per test (see `python -m bench plugin`). The code under
test still reaches the emulator over gRPC, as it would reach the real canister over the network.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import types
from collections.abc import Callable, Coroutine, Generator, Iterable, Sequence
from typing import Any, NoReturn

import grpc

from icllm_emulator.grpc_api.servicers import ControlServicer
from icllm_emulator.server import ThreadedEmulator


class Aborted(grpc.RpcError):  # type: ignore[misc]  # grpc ships no type hints
    """A servicer's abort, shaped like the error a gRPC client would receive."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, str], ...]) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code = code
        self._details = details
        self._trailing = trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._trailing


class _Context:
    """The parts of `grpc.aio.ServicerContext` the Control servicer uses."""

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Iterable[tuple[str, str]] = ()
    ) -> NoReturn:
        raise Aborted(code, details, tuple(trailing_metadata))

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()


class InProcessControl:
    """A stand-in for `ControlStub`: `control.Reset(request, timeout=30)` runs on the emulator's loop."""

    def __init__(self, emulator: ThreadedEmulator) -> None:
        self._servicer = ControlServicer(emulator.engine)
        self._loop = emulator.loop

    def __getattr__(self, name: str) -> Callable[..., Any]:
        handler = getattr(self._servicer, name)

        def call(request: Any, timeout: float | None = None) -> Any:
            return self._run(handler(request, _Context()), name, timeout)

        return call

    def batch(self, requests: Sequence[tuple[str, Any]], timeout: float | None = None) -> list[Any]:
        """Several requests, in order, in one trip to the loop (the teardown checks read this way)."""

        async def each() -> list[Any]:
            return [await getattr(self._servicer, name)(request, _Context()) for name, request in requests]

        answers: list[Any] = self._run(each(), ", ".join(name for name, _ in requests), timeout)
        return answers

    def _run(self, work: Coroutine[Any, Any, Any], name: str, timeout: float | None) -> Any:
        """`work`'s result, run on the emulator's loop.

        Most Control handlers finish without awaiting: their first step runs in one callback on the
        loop, without the Task and the further turns of the loop that `run_coroutine_threadsafe` takes
        (about half the cost of a trip). A handler that does await goes on in a Task.
        """
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        tasks: list[asyncio.Task[Any]] = []

        def start() -> None:
            if not done.set_running_or_notify_cancel():  # the caller gave up before the loop got here
                work.close()
                return
            try:
                awaited = work.send(None)
            except StopIteration as stop:
                done.set_result(stop.value)
                return
            except Exception as error:  # an abort (`Aborted`) or a bug, raised to the caller
                done.set_exception(error)
                return
            task = self._loop.create_task(_go_on(work, awaited))
            task.add_done_callback(lambda _: _copy_outcome(task, done))
            tasks.append(task)

        self._loop.call_soon_threadsafe(start)
        try:
            return done.result(timeout)
        except TimeoutError:
            done.cancel()
            self._loop.call_soon_threadsafe(lambda: [task.cancel() for task in tasks])
            raise Aborted(grpc.StatusCode.DEADLINE_EXCEEDED, f"{name} took over {timeout} s", ()) from None


async def _go_on(work: Coroutine[Any, Any, Any], awaited: Any) -> Any:
    """Await the rest of a coroutine whose first step already ran (see `InProcessControl._run`)."""
    return await _resume(work, awaited)


@types.coroutine
def _resume(work: Coroutine[Any, Any, Any], awaited: Any) -> Generator[Any, Any, Any]:
    """Hand what `work` awaits to the running Task, and the Task's answers (or cancellation) back."""
    while True:
        try:
            try:
                value = yield awaited
            except BaseException as error:  # the Task's cancellation reaches the handler
                awaited = work.throw(error)
            else:
                awaited = work.send(value)
        except StopIteration as stop:
            return stop.value


def _copy_outcome(task: asyncio.Task[Any], done: concurrent.futures.Future[Any]) -> None:
    if task.cancelled():
        done.cancel()
    elif (error := task.exception()) is not None:
        done.set_exception(error)
    else:
        done.set_result(task.result())
