"""Canister HTTP outcalls as PocketIC serves them: pending until the test mocks their response.

A canister's `http_request` that no outcall rule scripts waits here, listed by `get_canister_http`,
until `mock_canister_http` answers it; the answer then goes through the canister's `transform` as any
outcall does. Nothing is ever fetched from the network.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

from icllm_emulator.domain import Reject, RejectCode
from icllm_emulator.outcalls import HttpRequest, HttpResponse, OutcallBook, OutcallRecord


@dataclass(eq=False)
class PendingOutcall:
    request_id: int
    request: HttpRequest
    answer: asyncio.Future[HttpResponse]


@dataclass
class PendingOutcallBook(OutcallBook):
    """The outcall book of one PocketIC instance: scripted rules first, else pending until mocked."""

    pending: dict[int, PendingOutcall] = field(default_factory=dict)
    _request_ids: itertools.count[int] = field(default_factory=itertools.count)

    async def respond(self, request: HttpRequest, record: OutcallRecord) -> HttpResponse:
        if self.select_peek(request):
            return await super().respond(request, record)
        outcall = PendingOutcall(next(self._request_ids), request, asyncio.get_running_loop().create_future())
        self.pending[outcall.request_id] = outcall
        try:
            return await outcall.answer
        finally:
            self.pending.pop(outcall.request_id, None)

    def select_peek(self, request: HttpRequest) -> bool:
        """Whether a scripted rule would answer `request` (without using it up)."""
        return any(not rule.exhausted and not rule.match.mismatches(request) for rule in self.rules)

    def mock(self, request_id: int, response: HttpResponse | Reject) -> None:
        outcall = self.pending.get(request_id)
        if outcall is None:
            waiting = ", ".join(str(i) for i in self.pending) or "none"
            raise KeyError(
                f"no pending canister HTTP outcall has request_id {request_id} (pending: {waiting}); "
                "get_canister_http lists them"
            )
        if isinstance(response, Reject):
            outcall.answer.set_exception(response)
        else:
            outcall.answer.set_result(response)

    def reset(self, strict: bool, allow_loopback: bool) -> None:
        super().reset(strict, allow_loopback)
        for outcall in self.pending.values():
            if not outcall.answer.done():
                outcall.answer.set_exception(
                    Reject(RejectCode.SYS_TRANSIENT, "the instance was reset while the outcall was pending")
                )
        self.pending.clear()
