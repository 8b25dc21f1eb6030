"""AI workers: lease a job, produce its outcome, hand it in.

The loop is the same for the emulator's built-in workers (which lease straight from the queue) and
for an external worker process (which leases over the AiWorker gRPC service): only the `JobSource`
differs. Built-in workers also carry out scripted rules; an external worker only runs its backend.
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


def _failed(error: Exception) -> Reject:
    """The reject a caller gets for a backend bug."""
    return Reject(RejectCode.CANISTER_REJECT, f"the AI worker failed: {type(error).__name__}: {error}")


def failure(error: Exception) -> Reject:
    """A backend bug reaches the caller as a reject; the worker goes on serving."""
    log.error("backend failed", exc_info=error)
    return _failed(error)


def instant_outcome(
    rule: Rule | None, request: ChatRequest, max_output_tokens: int | None, backend: Backend
) -> Answer | Reject | None:
    """The outcome a built-in worker would give, when it needs no waiting; None when it does.

    A scripted answer without delay, or a backend with a synchronous `answer_now`, qualify; such a
    backend's `answer_now` may also return None (this job needs waiting after all) or raise a `Reject`.
    """
    if rule is not None:
        if rule.delay or isinstance(rule.action, Hang):
            return None
        return scripted_outcome(rule, max_output_tokens)
    answer_now = getattr(backend, "answer_now", None)
    if answer_now is None:
        return None
    try:
        answer: Answer | None = answer_now(request, max_output_tokens)
    except Reject as reject:  # a backend refusing the job (a replay miss): the caller gets it as it is
        return reject
    except Exception as error:
        return failure(error)
    return answer


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
        except Reject as reject:  # a backend refusing a job it cannot serve, with the canister's words
            outcome = reject
        except Exception as error:  # a backend bug must reach the caller as a reject, not kill the worker
            log.exception("worker %s: backend failed on job %s", self.worker_id, lease.job_id)
            outcome = _failed(error)
        finally:
            if keeper is not None:
                keeper.cancel()
        try:
            await self.source.submit(lease, self.worker_id, outcome)
        except (LeaseLost, UnknownJob) as lost:
            log.info("worker %s: answer for %s discarded: %s", self.worker_id, lease.job_id, lost)

    async def respond(self, lease: Lease) -> Answer | Reject:
        if lease.rule is not None:
            if lease.rule.delay:
                await self.clock.sleep_until(self.clock.now() + lease.rule.delay)
            return scripted_outcome(lease.rule, lease.max_output_tokens)
        return await self.backend.generate(lease.request, lease.max_output_tokens)

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
