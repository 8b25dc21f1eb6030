"""AI workers: lease a job, produce its outcome, hand it in.

The loop is the same for the emulator's built-in workers (which lease straight from the queue) and
for an external worker process (which leases over the AiWorker gRPC service): only the `JobSource`
differs. Built-in workers also carry out scripted rules; an external worker only runs its backend.
What a job's outcome is, `outcome_now` decides for the queue's fast path and the workers alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Protocol

from icllm_emulator.backends import Backend
from icllm_emulator.clock import Clock
from icllm_emulator.domain import Answer, AssistantMessage, ChatRequest, Reject, RejectCode
from icllm_emulator.queue import Job, LeaseLost, PromptQueue, UnknownJob
from icllm_emulator.rules import Hang, Reply, Rule
from icllm_emulator.tokens import count_tokens, truncate_tokens

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Lease:
    job_id: str
    attempt: int
    request: ChatRequest
    max_output_tokens: int | None
    lease_deadline: float
    rule: Rule | None = None


class JobSource(Protocol):
    """Where a worker gets jobs and hands in outcomes."""

    # Leases from this source run out unless the worker renews them while it works.
    renews: bool

    async def lease(self, worker_id: str) -> Lease | None: ...

    async def abandon(self, lease: Lease, worker_id: str) -> None: ...

    async def renew(self, lease: Lease, worker_id: str) -> float: ...

    async def submit(self, lease: Lease, worker_id: str, outcome: Answer | Reject) -> None: ...


class QueueSource:
    """The built-in workers' source: the queue itself, in the same process.

    A built-in worker cannot vanish unnoticed, so its leases need no renewal; when it walks away
    from a job (a scripted hang, or the worker is stopped) the lease starts running out.
    """

    renews = False

    def __init__(self, queue: PromptQueue) -> None:
        self.queue = queue

    async def lease(self, worker_id: str) -> Lease | None:
        job = await self.queue.lease(worker_id, expires=False)
        return None if job is None else lease_of(job)

    async def abandon(self, lease: Lease, worker_id: str) -> None:
        self.queue.abandon(lease.job_id, lease.attempt, worker_id)

    async def renew(self, lease: Lease, worker_id: str) -> float:
        return self.queue.renew(lease.job_id, lease.attempt, worker_id)

    async def submit(self, lease: Lease, worker_id: str, outcome: Answer | Reject) -> None:
        self.queue.complete(lease.job_id, lease.attempt, worker_id, outcome)


def lease_of(job: Job) -> Lease:
    return Lease(job.id, job.attempt, job.request, job.max_output_tokens, job.lease_deadline, job.rule)


class Hung(Exception):
    """A scripted hang: the worker walks away from the job without a word."""


def scripted_outcome(rule: Rule, max_output_tokens: int | None) -> Answer | Reject:
    """What a rule's action gives, with text cut at the token cap like any answer."""
    action = rule.action
    if isinstance(action, Hang):
        raise Hung(rule.id)
    if isinstance(action, Reject):
        return action
    assert isinstance(action, Reply)
    message = action.message
    truncated = False
    if message.content is not None:
        content, truncated = truncate_tokens(message.content, max_output_tokens)
        message = AssistantMessage(content=content, tool_calls=message.tool_calls)
    return Answer(message, output_tokens=count_tokens(message.content or ""), truncated=truncated)


def backend_reject(error: Exception) -> Reject:
    """What the caller gets when the backend raised: its `Reject` as it is (a job it cannot serve, in
    the canister's words), or, for a bug, a reject that says so; the worker goes on serving."""
    if isinstance(error, Reject):
        return error
    log.error("backend failed", exc_info=error)
    return Reject(RejectCode.CANISTER_REJECT, f"the AI worker failed: {type(error).__name__}: {error}")


def outcome_now(
    rule: Rule | None, request: ChatRequest, max_output_tokens: int | None, backend: Backend, *, waited: bool
) -> Answer | Reject | None:
    """A job's outcome, when it can be had without (more) waiting; None when it needs waiting.

    The one place that decides an outcome, for both paths: the queue's fast path asks it with nothing
    `waited` for; a worker asks it first the same way, then again once a scripted delay is over (or
    awaits the backend's `generate`). A scripted hang raises `Hung` once its delay is over; a backend
    that refuses the job (a replay miss) gives its `Reject`, and a backend bug a reject that says so.
    """
    if rule is not None:
        if not waited and (rule.delay or isinstance(rule.action, Hang)):
            return None  # only a worker can wait out a delay, or walk away from a job
        return scripted_outcome(rule, max_output_tokens)
    try:
        return backend.answer_now(request, max_output_tokens)
    except Exception as error:
        return backend_reject(error)


class Worker:
    """One AI worker: lease, answer, submit, until cancelled."""

    def __init__(self, worker_id: str, source: JobSource, backend: Backend, clock: Clock) -> None:
        self.worker_id = worker_id
        self.source = source
        self.backend = backend
        self.clock = clock

    async def run(self) -> None:
        while True:
            lease = await self.source.lease(self.worker_id)
            if lease is not None:
                await self.work(lease)

    async def work(self, lease: Lease) -> None:
        keeper = asyncio.ensure_future(self._keep_lease(lease)) if self.source.renews else None
        try:
            outcome = await self.respond(lease)
        except (Hung, asyncio.CancelledError) as gone:
            await self._abandon(lease)
            if isinstance(gone, asyncio.CancelledError):
                raise
            return
        finally:
            if keeper is not None:
                keeper.cancel()
        try:
            await self.source.submit(lease, self.worker_id, outcome)
        except (LeaseLost, UnknownJob) as lost:
            log.info("worker %s: answer for %s discarded: %s", self.worker_id, lease.job_id, lost)

    async def respond(self, lease: Lease) -> Answer | Reject:
        """The job's outcome (`outcome_now` decides it), waiting where it must; raises `Hung`."""
        rule, request, cap = lease.rule, lease.request, lease.max_output_tokens
        outcome = outcome_now(rule, request, cap, self.backend, waited=False)
        if outcome is not None:
            return outcome
        if rule is not None:
            if rule.delay:
                await self.clock.sleep_until(self.clock.now() + rule.delay)
            outcome = outcome_now(rule, request, cap, self.backend, waited=True)
            assert outcome is not None
            return outcome
        try:
            return await self.backend.generate(request, cap)
        except Exception as error:  # a refusal or a bug reaches the caller; it never kills the worker
            return backend_reject(error)

    async def _abandon(self, lease: Lease) -> None:
        with contextlib.suppress(LeaseLost, UnknownJob):
            await self.source.abandon(lease, self.worker_id)

    async def _keep_lease(self, lease: Lease) -> None:
        """Renew the lease while the work goes on, as a live worker does."""
        deadline = lease.lease_deadline
        while True:
            await self.clock.sleep_until(deadline - (deadline - self.clock.now()) / 2)
            try:
                deadline = await self.source.renew(lease, self.worker_id)
            except (LeaseLost, UnknownJob):
                return
