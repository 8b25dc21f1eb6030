"""The prompt queue, as on mainnet: prompts wait until an AI worker leases them.

A job goes QUEUED -> LEASED -> DONE or FAILED. A lease that runs out puts the job back at the head of
the queue (the next lease is attempt + 1); after `max_attempts` expired leases the caller is rejected.
While hold is on, a finished outcome waits in HELD until the test releases it. Each job's outcome is
set exactly once: that is what guarantees one answer or one reject per call.
"""

from __future__ import annotations

import asyncio
import collections
import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from icllm_emulator.clock import Clock
from icllm_emulator.domain import Answer, ChatRequest, Reject, RejectCode
from icllm_emulator.errors import ErrorKind, IcllmError
from icllm_emulator.rules import Rule

Outcome = Answer | Reject


class JobState(enum.StrEnum):
    QUEUED = "QUEUED"
    LEASED = "LEASED"
    HELD = "HELD"
    DONE = "DONE"
    FAILED = "FAILED"


class LeaseLost(IcllmError):
    """A worker acted on a lease it no longer holds (it expired, or the job finished)."""

    kind = ErrorKind.REFUSED


class UnknownJob(IcllmError, KeyError):
    """No job of that id is waiting, leased or held."""

    kind = ErrorKind.NOT_FOUND


@dataclass(eq=False)
class Job:
    id: str
    request: ChatRequest
    caller: str
    max_output_tokens: int | None
    rule: Rule | None
    queued_at: float
    done: asyncio.Future[Outcome]
    state: JobState = JobState.QUEUED
    attempt: int = 0
    worker_id: str = ""
    lease_deadline: float = 0.0
    first_leased_at: float | None = None
    finished_at: float | None = None
    outcome: Outcome | None = None
    held_outcome: Outcome | None = field(default=None, repr=False)
    expiry: asyncio.Task[None] | None = field(default=None, repr=False)
    on_finish: Callable[[Outcome], None] | None = field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        return self.state in (JobState.DONE, JobState.FAILED)


class PromptQueue:
    def __init__(
        self,
        clock: Clock,
        *,
        capacity: int = 0,
        max_attempts: int = 3,
        lease_seconds: float = 60.0,
        outcome_now: Callable[[Job], Outcome | None] | None = None,
    ) -> None:
        """`outcome_now` gives a job's outcome when it can be had without waiting (else None): an idle
        built-in worker then answers at submission (the engine passes `workers.outcome_now`)."""
        self.clock = clock
        self.capacity = capacity
        self.max_attempts = max_attempts
        self.lease_seconds = lease_seconds
        self._jobs: dict[str, Job] = {}
        self._waiting: collections.deque[Job] = collections.deque()
        self._wakers: list[asyncio.Future[None]] = []
        # Built-in workers waiting for a job, by id, in the order they started waiting.
        self._idle: dict[str, None] = {}
        self.outcome_now = outcome_now
        self._hold = False
        self._paused = False

    # -- callers ---------------------------------------------------------------------------------

    def submit(
        self,
        job_id: str,
        request: ChatRequest,
        caller: str,
        max_output_tokens: int | None,
        rule: Rule | None,
        on_finish: Callable[[Outcome], None] | None = None,
    ) -> Job:
        """Queue a prompt, or reject it with SYS_TRANSIENT when the queue is full.

        `on_finish` runs once with the job's outcome, whether or not its caller still waits.
        """
        if self.capacity and len(self._jobs) >= self.capacity:
            raise Reject(
                RejectCode.SYS_TRANSIENT,
                f"the LLM canister's queue is full: {len(self._jobs)} prompts are waiting or in progress "
                f"and the capacity is {self.capacity}; try again later",
            )
        job = Job(
            id=job_id,
            request=request,
            caller=caller,
            max_output_tokens=max_output_tokens,
            rule=rule,
            queued_at=self.clock.now(),
            done=asyncio.get_running_loop().create_future(),
            on_finish=on_finish,
        )
        self._jobs[job_id] = job
        if not self._hand_over(job):
            self._waiting.append(job)
            self._notify()
        return job

    def _hand_over(self, job: Job) -> bool:
        """An idle built-in worker answers at once when that needs no waiting (see `outcome_now`).

        The worker's lease and answer are the same as through `lease`; only the trip through the
        event loop to wake the worker's task is saved. FIFO order holds: nothing is waiting ahead.
        """
        if self.outcome_now is None or self._paused or self._waiting or not self._idle:
            return False
        outcome = self.outcome_now(job)
        if outcome is None:
            return False
        worker_id = next(iter(self._idle))
        self._grant(job, worker_id, expires=False)
        self.complete(job.id, job.attempt, worker_id, outcome)
        return True

    # -- workers ---------------------------------------------------------------------------------

    async def lease(
        self,
        worker_id: str,
        *,
        wait: float | None = None,
        accept: Callable[[Job], bool] | None = None,
        expires: bool = True,
    ) -> Job | None:
        """The oldest waiting job that `accept` takes, leased to `worker_id`; None after `wait` seconds.

        `expires=False` is for the built-in workers, which live in this process and cannot vanish
        unnoticed: their leases start running out only when they `abandon` the job.
        """

        def pick() -> Job | None:
            if self._paused:
                return None
            for job in self._waiting:
                if accept is None or accept(job):
                    return job
            return None

        loop = asyncio.get_running_loop()
        give_up = None if wait is None else loop.time() + wait
        while (job := pick()) is None:
            timeout = None if give_up is None else give_up - loop.time()
            if timeout is not None and timeout <= 0:
                return None
            waker = loop.create_future()
            self._wakers.append(waker)
            if not expires:
                self._idle[worker_id] = None
            try:
                await asyncio.wait_for(waker, timeout)
            except TimeoutError:
                return None
            finally:
                self._idle.pop(worker_id, None)
                if waker in self._wakers:
                    self._wakers.remove(waker)
        self._waiting.remove(job)
        self._grant(job, worker_id, expires)
        return job

    def _grant(self, job: Job, worker_id: str, expires: bool) -> None:
        now = self.clock.now()
        job.state = JobState.LEASED
        job.attempt += 1
        job.worker_id = worker_id
        job.lease_deadline = now + self.lease_seconds
        if job.first_leased_at is None:
            job.first_leased_at = now
        if expires:
            self._start_expiry(job)

    def abandon(self, job_id: str, attempt: int, worker_id: str) -> None:
        """The worker walked away without a word: from now on its lease runs out like any other."""
        job = self._leased(job_id, attempt, worker_id)
        job.lease_deadline = self.clock.now() + self.lease_seconds
        self._start_expiry(job)

    def _start_expiry(self, job: Job) -> None:
        job.expiry = asyncio.get_running_loop().create_task(self._expire(job, job.attempt))

    def renew(self, job_id: str, attempt: int, worker_id: str) -> float:
        """Extend a held lease; returns the new deadline."""
        job = self._leased(job_id, attempt, worker_id)
        job.lease_deadline = self.clock.now() + self.lease_seconds
        return job.lease_deadline

    def complete(self, job_id: str, attempt: int, worker_id: str, outcome: Outcome) -> None:
        """A worker's answer or reject for the job it leased."""
        job = self._leased(job_id, attempt, worker_id)
        if self._hold:
            job.state = JobState.HELD
            job.held_outcome = outcome
            return
        self._finish(job, outcome)

    def retry(self, job_id: str, attempt: int, worker_id: str, reason: str) -> None:
        """A worker gave up on a job: it goes back to the queue, counting as an attempt."""
        self._requeue(self._leased(job_id, attempt, worker_id), reason)

    def _leased(self, job_id: str, attempt: int, worker_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise UnknownJob(f"no job '{job_id}' is in the queue (it may have finished already)")
        if job.state is not JobState.LEASED or job.attempt != attempt or job.worker_id != worker_id:
            raise LeaseLost(
                f"job '{job_id}' attempt {attempt} is not leased to worker '{worker_id}': the job is "
                f"{job.state.value}, attempt {job.attempt}, worker '{job.worker_id}'"
            )
        return job

    async def _expire(self, job: Job, attempt: int) -> None:
        while job.state is JobState.LEASED and job.attempt == attempt:
            if self.clock.now() >= job.lease_deadline:
                self._requeue(job, f"the lease of worker '{job.worker_id}' expired")
                return
            await self.clock.sleep_until(job.lease_deadline)

    def _requeue(self, job: Job, reason: str) -> None:
        self._stop_expiry(job)
        if job.attempt >= self.max_attempts:
            self._finish(
                job,
                Reject(
                    RejectCode.CANISTER_REJECT,
                    f"no AI worker answered the prompt after {job.attempt} attempts (last: {reason})",
                ),
            )
            return
        job.state = JobState.QUEUED
        job.worker_id = ""
        self._waiting.appendleft(job)
        self._notify()

    @staticmethod
    def _stop_expiry(job: Job) -> None:
        if job.expiry is not None and job.expiry is not asyncio.current_task():
            job.expiry.cancel()
        job.expiry = None

    def _finish(self, job: Job, outcome: Outcome) -> None:
        self._stop_expiry(job)
        job.state = JobState.DONE if isinstance(outcome, Answer) else JobState.FAILED
        job.outcome = outcome
        job.held_outcome = None
        job.finished_at = self.clock.now()
        del self._jobs[job.id]
        if job.on_finish is not None:
            job.on_finish(outcome)
        if not job.done.done():
            job.done.set_result(outcome)

    # -- test control ----------------------------------------------------------------------------

    def set_hold(self, hold: bool) -> None:
        self._hold = hold

    def release(self, job_ids: list[str]) -> list[str]:
        """Deliver held outcomes in the order given; every id must name a held job."""
        jobs = []
        for job_id in job_ids:
            job = self._jobs.get(job_id)
            if job is None or job.state is not JobState.HELD:
                held = ", ".join(j.id for j in self.held()) or "none"
                state = "unknown or finished" if job is None else job.state.value
                raise UnknownJob(f"job '{job_id}' is not held (it is {state}); held jobs: {held}")
            if job in jobs:
                raise UnknownJob(f"job '{job_id}' is named more than once; each held job is released once")
            jobs.append(job)
        for job in jobs:
            assert job.held_outcome is not None
            self._finish(job, job.held_outcome)
        return job_ids

    def held(self) -> list[Job]:
        return [job for job in self._jobs.values() if job.state is JobState.HELD]

    def set_paused(self, paused: bool) -> None:
        self._paused = paused
        self._notify()

    @property
    def hold(self) -> bool:
        return self._hold

    @property
    def paused(self) -> bool:
        return self._paused

    def jobs(self) -> list[Job]:
        """Every job not yet finished, oldest first."""
        return list(self._jobs.values())

    def count(self, state: JobState) -> int:
        return sum(1 for job in self._jobs.values() if job.state is state)

    def reset(self) -> None:
        """Reject every unfinished job and forget hold and pause."""
        for job in list(self._jobs.values()):
            self._finish(
                job, Reject(RejectCode.SYS_TRANSIENT, "the emulator was reset while the call waited")
            )
        self._waiting.clear()
        self._hold = False
        if self._paused:  # else the idle workers have nothing new to look at
            self.set_paused(False)

    def is_idle(self, worker_id: str) -> bool:
        """Whether a built-in worker waits in `lease` for a job (and holds none)."""
        return worker_id in self._idle

    def _notify(self) -> None:
        """Wake every worker waiting in `lease`; each looks at the queue again."""
        wakers, self._wakers = self._wakers, []
        for waker in wakers:
            if not waker.done():
                waker.set_result(None)
