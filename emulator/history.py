"""Every call the canister received, what happened to it, and running totals.

A record refers to its job, so the job's lifecycle (leases, attempts, worker) is read, not copied.
What the budget counts is all that stays of a call: a finished job keeps the request as the record
stores it, and a stored reject has no traceback (whose frames would hold the whole request).
The list keeps the newest records, at most `limit` of them and about `limit_bytes` of requests; what is
stored of an oversized request (over 64 KiB) or a rejected one (over 4 KiB) is shortened, and the record
says so. The totals count every call since the last reset.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from dataclasses import dataclass, field

from icllm_emulator.billing import Receipt
from icllm_emulator.domain import Answer, Api, AssistantMessage, ChatRequest, Message, Reject
from icllm_emulator.queue import Job, JobState, PromptQueue


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
    request_truncated: bool = False
    size: int = 0
    # Whether the history holds it now (and counts its size): not once it is forgotten or cleared.
    stored: bool = field(default=False, repr=False)

    @property
    def job_state(self) -> str:
        return self.job.state.value if self.job else "NOT_QUEUED"


@dataclass(frozen=True)
class Stats:
    """Counts since the last reset (what Control.GetStats and `icllm.stats()` give)."""

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


# What is kept of one request's text: all of it up to 64 KiB, or 4 KiB of a rejected one.
KEEP_BYTES = 64 * 1024
KEEP_REJECTED_BYTES = 4 * 1024
DEFAULT_LIMIT_BYTES = 64 * 1024 * 1024


def _message_size(message: Message) -> int:
    size = len(message.content or "")
    if isinstance(message, AssistantMessage):
        size += sum(len(a.value) + len(a.name) for c in message.tool_calls for a in c.function.arguments)
    return size


def request_size(request: ChatRequest) -> int:
    """About what a stored request costs: the bytes of its texts."""
    size = sum(map(_message_size, request.messages))
    for tool in request.tools:
        size += len(tool.name) + len(tool.description or "")
        if tool.parameters is not None:
            size += sum(
                len(p.name) + len(p.description or "") + sum(map(len, p.enum))
                for p in tool.parameters.properties
            )
    return size + 200


def _cut(text: str, keep: int) -> str:
    if len(text) <= keep:
        return text
    return f"{text[:keep]}... [{len(text) - keep} characters not stored]"


def shortened(request: ChatRequest, keep: int) -> ChatRequest:
    """The request with every text cut to `keep` characters (what history stores of a large one)."""
    messages = tuple(
        dataclasses.replace(m, content=_cut(m.content, keep)) if m.content and len(m.content) > keep else m
        for m in request.messages
    )
    tools = tuple(
        dataclasses.replace(t, description=_cut(t.description, keep))
        if t.description and len(t.description) > keep
        else t
        for t in request.tools
    )
    return dataclasses.replace(request, messages=messages, tools=tools)


class History:
    def __init__(self, limit: int = 10_000, limit_bytes: int = DEFAULT_LIMIT_BYTES) -> None:
        self.records: collections.deque[CallRecord] = collections.deque()
        self.limit = limit
        self.limit_bytes = limit_bytes
        self._bytes = 0
        self._latencies: collections.deque[float] = collections.deque(maxlen=limit)
        self._open: set[CallRecord] = set()
        self._reset_totals()

    def _reset_totals(self) -> None:
        self.calls = self.answered = self.rejected = 0
        self.input_tokens = self.output_tokens = 0
        self.rejects_by_code: collections.Counter[int] = collections.Counter()

    def open(self, record: CallRecord) -> CallRecord:
        record.size = request_size(record.request)
        if record.size > KEEP_BYTES:
            self._shorten(record, KEEP_BYTES)
        self.records.append(record)
        record.stored = True
        self._bytes += record.size
        self._evict()
        self._open.add(record)
        self.calls += 1
        self.input_tokens += record.input_tokens
        return record

    def close(self, record: CallRecord, outcome: Answer | Reject) -> None:
        """What the caller received: called exactly once per call."""
        record.outcome = outcome.bare() if isinstance(outcome, Reject) else outcome
        record.latency_ms = (time.perf_counter() - record.started) * 1000
        before = record.size
        if isinstance(outcome, Reject) and record.size > KEEP_REJECTED_BYTES and not record.request_truncated:
            self._shorten(record, KEEP_REJECTED_BYTES)
        if isinstance(outcome, Answer):  # the answer is stored too, and counts
            record.size += _message_size(outcome.message)
        if record.stored:
            self._bytes += record.size - before
            self._evict()
        if record.job is not None and record.job.finished:
            self.job_finished(record)
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

    def _evict(self) -> None:
        """Forget the oldest records until the history is within its bounds."""
        while self.records and (len(self.records) > self.limit or self._bytes > self.limit_bytes):
            forgotten = self.records.popleft()
            forgotten.stored = False
            self._bytes -= forgotten.size

    def job_finished(self, record: CallRecord) -> None:
        """The record's job is over: it keeps only the request the history stores, not the whole one."""
        if record.job is not None:
            record.job.request = record.request

    def _shorten(self, record: CallRecord, keep: int) -> None:
        """Keep less of this record's request (a huge or rejected one), and say so."""
        record.request = shortened(
            record.request, keep // max(1, len(record.request.messages) + len(record.request.tools))
        )
        record.request_truncated = True
        record.size = request_size(record.request)

    def clear(self) -> None:
        for record in self.records:
            record.stored = False
        self.records.clear()
        self._bytes = 0
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
