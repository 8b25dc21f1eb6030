"""One PocketIC instance: a fresh IC of its own (canisters, time, the LLM canister's queue and history).

Each instance is an `Engine` on a virtual clock that starts at PocketIC's genesis time, so the LLM
canister at its mainnet id answers its canisters exactly as through every other door. Ingress messages
run at once, each on a task of its own; `await_ingress_message` waits for its task, `ingress_status`
looks at it. The management canister's methods reached by ingress are served by the runtime's
management canister with the sender as caller, as a canister's call would be.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from icllm_emulator.clock import ClockKind, VirtualClock
from icllm_emulator.config import EmulatorConfig
from icllm_emulator.domain import RejectCode
from icllm_emulator.engine import Engine
from icllm_emulator.pocketic.outcalls import PendingOutcallBook
from icllm_emulator.pocketic.wire import BadRequest, principal_text
from icllm_emulator.queue import JobState
from icllm_emulator.runtime import CanisterReject, RuntimeUsageError
from icllm_emulator.runtime.errors import CANISTER_NOT_FOUND, METHOD_NOT_FOUND
from icllm_emulator.runtime.ic import FIRST_CANISTER_INDEX
from icllm_emulator.runtime.ids import LLM_CANISTER_ID, principal_bytes
from icllm_emulator.runtime.messages import Call, Response

# 2021-05-06T19:17:10Z, the time every new PocketIC instance starts at.
GENESIS_NS = 1_620_328_630 * 10**9
# The longest a tick waits for the work it started (an LLM answer from real inference, say).
TICK_SECONDS = 1.0
# Completed ingress messages kept for ingress_status / await, per instance (the oldest go first).
INGRESS_HISTORY = 10_000
# Management methods only a canister may call (the IC refuses them as ingress).
_CANISTER_ONLY = frozenset({"http_request", "raw_rand", "create_canister", "deposit_cycles"})
# PocketIC's subnet kinds, by the field of the create-instance body that asks for them.
SUBNET_KINDS = {
    "nns": "NNS",
    "sns": "SNS",
    "ii": "II",
    "fiduciary": "Fiduciary",
    "bitcoin": "Bitcoin",
    "system": "System",
    "application": "Application",
    "verified_application": "VerifiedApplication",
}
_ID_RANGE_END = 0xFFFFFFFFFFFFFFFF


@dataclass(frozen=True)
class Subnet:
    kind: str
    principal: bytes
    seed: bytes
    ranges: tuple[tuple[bytes, bytes], ...]

    @property
    def id(self) -> str:
        return principal_text(self.principal)


@dataclass(frozen=True)
class _Sender:
    """The caller of a management method reached by ingress, where the runtime expects a canister."""

    principal: bytes

    @property
    def id(self) -> str:
        return principal_text(self.principal)


@dataclass(eq=False)
class Ingress:
    sender: bytes
    task: asyncio.Task[Response]


def _canister_id(index: int) -> bytes:
    return index.to_bytes(8, "big") + b"\x01\x01"


def make_subnets(kinds: list[str], instance_id: int) -> list[Subnet]:
    """The topology's subnets; every canister runs on the first application subnet (or the first one)."""
    subnets = []
    main = kinds.index("Application") if "Application" in kinds else 0
    for index, kind in enumerate(kinds):
        seed = hashlib.sha256(f"icllm pocket-ic subnet {instance_id} {index} {kind}".encode()).digest()
        ranges: tuple[tuple[bytes, bytes], ...] = ()
        if index == main:
            llm = principal_bytes(LLM_CANISTER_ID)
            ranges = ((_canister_id(FIRST_CANISTER_INDEX), _canister_id(_ID_RANGE_END)), (llm, llm))
        # a subnet id is a self-authenticating-style principal: 28 bytes of hash and the 0x02 suffix
        subnets.append(Subnet(kind, hashlib.sha224(seed).digest() + b"\x02", seed, ranges))
    return subnets


class PocketInstance:
    """A PocketIC instance; use it on the server's event loop only."""

    def __init__(self, instance_id: int, config: EmulatorConfig, subnet_kinds: list[str]) -> None:
        self.id = instance_id
        config = dataclasses.replace(config, clock=ClockKind.VIRTUAL)
        self.clock = VirtualClock(start=GENESIS_NS / 1e9)
        self.engine = Engine(config, clock=self.clock)
        self.engine.outcalls = PendingOutcallBook(
            strict=config.strict_outcalls, allow_loopback=config.outcalls_loopback
        )
        self.subnets = make_subnets(subnet_kinds, instance_id)
        self.time_ns = GENESIS_NS
        self.ingress: OrderedDict[bytes, Ingress] = OrderedDict()
        self._message_ids = itertools.count()
        self.last_used = time.monotonic()
        self.auto_progress: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.engine.load()
        self.engine.start()

    async def close(self) -> None:
        self.stop_progress()
        for message in self.ingress.values():
            message.task.cancel()
        self.engine.runtime.clear()
        await self.engine.stop()
        for _ in range(3):  # the cancelled workers and calls unwind, and let go of the engine
            await asyncio.sleep(0)

    @property
    def runtime(self) -> Any:
        return self.engine.runtime

    @property
    def outcalls(self) -> PendingOutcallBook:
        book = self.engine.outcalls
        assert isinstance(book, PendingOutcallBook)
        return book

    # -- topology ---------------------------------------------------------------------------------

    @property
    def main_subnet(self) -> Subnet:
        return next(s for s in self.subnets if s.ranges)

    def subnet_of(self, canister: bytes) -> Subnet | None:
        """The subnet a canister is on, or None when no canister (nor the LLM canister) has that id."""
        if canister == principal_bytes(LLM_CANISTER_ID) or self.exists(canister):
            return self.main_subnet
        return None

    def exists(self, canister: bytes) -> bool:
        """A canister the IC has: created (installed or empty), or a stand-in scripted at that id."""
        return canister in self.runtime.lifecycle.records or canister in self.runtime.standins

    # -- time -------------------------------------------------------------------------------------

    def now_ns(self) -> int:
        """The instance's time: what set_time set, unless the engine's clock moved on since."""
        clock_ns = round(self.clock.now() * 1e9)
        return self.time_ns if abs(clock_ns - self.time_ns) < 1_000 else clock_ns

    async def set_time(self, nanos: int) -> None:
        now = self.now_ns()
        if nanos < now:
            raise BadRequest(
                f"set_time to {nanos} ns is in the past: the instance's time is {now} ns and only moves "
                "forward"
            )
        if nanos == now:
            return
        await self.engine.advance_clock((nanos - now) / 1e9)
        self.time_ns = nanos

    async def tick(self) -> None:
        """A round: heartbeats, then what is due runs on until it is done, or waits on the test (a held
        LLM answer, a pending outcall), or for at most `TICK_SECONDS`."""
        loop = asyncio.get_running_loop()
        ticking = asyncio.ensure_future(self.runtime.tick())
        deadline = loop.time() + TICK_SECONDS
        while not ticking.done() and loop.time() < deadline and not self._waits_on_test():
            await asyncio.wait({ticking}, timeout=0.01)
        if not ticking.done():
            ticking.cancel()
            await asyncio.gather(ticking, return_exceptions=True)

    def _waits_on_test(self) -> bool:
        """Whether what is in flight waits on the test, and no LLM job is being answered."""
        jobs = self.engine.jobs()
        answering = any(job.state in (JobState.QUEUED, JobState.LEASED) for job in jobs)
        held = any(job.state is JobState.HELD for job in jobs)
        return not answering and (held or bool(self.outcalls.pending))

    def start_progress(self, delay_ms: int) -> None:
        """Auto progress: time follows the wall clock and rounds run on their own, as PocketIC's."""
        if self.auto_progress is None:
            self.auto_progress = asyncio.get_running_loop().create_task(self._progress(delay_ms))

    def stop_progress(self) -> None:
        if self.auto_progress is not None:
            self.auto_progress.cancel()
            self.auto_progress = None

    async def _progress(self, delay_ms: int) -> None:
        while True:
            wall = time.time_ns()
            if wall > self.now_ns():
                await self.set_time(wall)
            await self.tick()
            await asyncio.sleep(max(delay_ms, 10) / 1000)

    # -- calls ------------------------------------------------------------------------------------

    def submit(self, sender: bytes, canister: bytes, method: str, payload: bytes) -> bytes | Response:
        """Start an update call; its message id, or the reject that stops it at once."""
        refused = self._admission(canister, method)
        if refused is not None:
            return refused
        message_id = hashlib.sha256(f"{self.id}:{next(self._message_ids)}".encode()).digest()
        task = asyncio.get_running_loop().create_task(self.call(sender, canister, method, payload))
        self.ingress[message_id] = Ingress(sender, task)
        while len(self.ingress) > INGRESS_HISTORY:
            oldest = next(iter(self.ingress))
            if not self.ingress[oldest].task.done():
                break
            del self.ingress[oldest]
        return message_id

    def _admission(self, canister: bytes, method: str) -> Response | None:
        if canister == b"" or canister == principal_bytes(LLM_CANISTER_ID):
            return None
        if not self.exists(canister):
            return Response.rejected(
                RejectCode.DESTINATION_INVALID,
                f"Canister {principal_text(canister)} not found in PocketIC instance {self.id}",
                CANISTER_NOT_FOUND,
            )
        return None

    async def call(
        self, sender: bytes, canister: bytes, method: str, payload: bytes, *, query: bool = False
    ) -> Response:
        """One call from outside, to a canister, the LLM canister or the management canister."""
        if canister == b"":
            if query:
                return Response.rejected(
                    RejectCode.CANISTER_REJECT,
                    f"the management canister's {method!r} is not a query: call it as an update",
                    "IC0406",
                )
            return await self._management(sender, method, payload)
        target = principal_text(canister)
        if target == LLM_CANISTER_ID:
            if query:
                return Response.rejected(
                    RejectCode.DESTINATION_INVALID,
                    f"the LLM canister {LLM_CANISTER_ID} has no query method {method!r}",
                    METHOD_NOT_FOUND,
                )
            response: Response = await self.runtime.llm(method, payload, principal_text(sender), 0)
            return response
        try:
            reply = await self.runtime.call(
                target, method, payload, caller=principal_text(sender), query=query
            )
        except CanisterReject as reject:
            return Response.rejected(reject.code, reject.message, reject.error_code)
        except RuntimeUsageError as error:
            return Response.rejected(RejectCode.DESTINATION_INVALID, str(error), CANISTER_NOT_FOUND)
        return Response(reply=reply)

    async def _management(self, sender: bytes, method: str, payload: bytes) -> Response:
        if method in _CANISTER_ONLY:
            return Response.rejected(
                RejectCode.CANISTER_REJECT,
                f"the management canister's {method!r} can only be called by a canister, not by ingress",
                "IC0406",
            )
        call = Call(b"", method, (0, 0), (0, 0), None, arg=bytearray(payload))
        response: Response = await self.runtime.management.call(_Sender(sender), call)
        return response
