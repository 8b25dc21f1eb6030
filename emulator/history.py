"""Every call the canister received, what happened to it, and running totals.

A record refers to its job, so the job's lifecycle (leases, attempts, worker) is read, not copied.
The list keeps the newest `limit` records; the totals count every call since the last reset.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field

from emulator.billing import Receipt
from emulator.domain import Answer, Api, ChatRequest, Reject
from emulator.queue import Job, JobState, PromptQueue


@dataclass(eq=False)
class CallRecord:
    id: str
    api: Api
    caller: str
    request: ChatRequest
    received_at: float
    input_tokens: int
    warnings: tuple[str, ...] = ()
    unexpected: bool = False
    receipt: Receipt = field(default_factory=Receipt)
    job: Job | None = None
    outcome: Answer | Reject | None = None
    started: float = field(default_factory=time.perf_counter, repr=False)
    latency_ms: float | None = None

    @property
    def job_state(self) -> str:
        return self.job.state.value if self.job else "NOT_QUEUED"


@dataclass(frozen=True)
class Stats:
    calls: int
    answered: int
    rejected: int
    pending: int
    rejects_by_code: dict[int, int]
    queue_depth: int
    in_flight: int
    held: int
    input_tokens: int
    output_tokens: int
    latency_ms: dict[str, float]


class History:
    def __init__(self, limit: int = 10_000) -> None:
        self.records: collections.deque[CallRecord] = collections.deque(maxlen=limit)
        self._latencies: collections.deque[float] = collections.deque(maxlen=limit)
        self._open: set[CallRecord] = set()
        self._reset_totals()

    def _reset_totals(self) -> None:
        self.calls = self.answered = self.rejected = 0
        self.input_tokens = self.output_tokens = 0
        self.rejects_by_code: collections.Counter[int] = collections.Counter()

    def open(self, record: CallRecord) -> CallRecord:
        self.records.append(record)
        self._open.add(record)
        self.calls += 1
        self.input_tokens += record.input_tokens
        return record

    def close(self, record: CallRecord, outcome: Answer | Reject) -> None:
        """What the caller received: called exactly once per call."""
        record.outcome = outcome
        record.latency_ms = (time.perf_counter() - record.started) * 1000
        if record not in self._open:
            return  # received before the last clear: it is not among the totals
        self._open.remove(record)
        self._latencies.append(record.latency_ms)
        if isinstance(outcome, Answer):
            self.answered += 1
            self.output_tokens += outcome.output_tokens
        else:
            self.rejected += 1
            self.rejects_by_code[int(outcome.code)] += 1

    def clear(self) -> None:
        self.records.clear()
        self._latencies.clear()
        self._open.clear()
        self._reset_totals()

    def stats(self, queue: PromptQueue) -> Stats:
        ordered = sorted(self._latencies)
        return Stats(
            calls=self.calls,
            answered=self.answered,
            rejected=self.rejected,
            pending=self.calls - self.answered - self.rejected,
            rejects_by_code=dict(self.rejects_by_code),
            queue_depth=queue.count(JobState.QUEUED),
            in_flight=queue.count(JobState.LEASED),
            held=queue.count(JobState.HELD),
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            latency_ms={
                name: _percentile(ordered, q)
                for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
            },
        )


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
