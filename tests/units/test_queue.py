"""The prompt queue on a virtual clock: FIFO leases, expiry, renewal, capacity, pause, hold and release."""

from __future__ import annotations

import asyncio
import functools

import pytest

from icllm_emulator.clock import VirtualClock
from icllm_emulator.domain import Answer, AssistantMessage, ChatRequest, Reject, RejectCode, UserMessage
from icllm_emulator.queue import Job, JobState, LeaseLost, Outcome, PromptQueue, UnknownJob
from tests.waiting import until

MODEL = "llama3.1:8b"
CALLER = "2vxsx-fae"


def request(text: str = "hello") -> ChatRequest:
    return ChatRequest(model=MODEL, messages=(UserMessage(text),))


def answer(text: str = "hi") -> Answer:
    return Answer(AssistantMessage(content=text), output_tokens=1)


def make_queue(**settings: float) -> tuple[VirtualClock, PromptQueue]:
    clock = VirtualClock(start=1_000.0)
    queue = PromptQueue(
        clock,
        capacity=int(settings.get("capacity", 0)),
        max_attempts=int(settings.get("max_attempts", 3)),
        lease_seconds=settings.get("lease_seconds", 60.0),
    )
    return clock, queue


def submit(queue: PromptQueue, job_id: str, text: str = "hello") -> Job:
    return queue.submit(job_id, request(text), CALLER, None, None)


def state(job: Job) -> JobState:
    """The job's state now (a call, so the type checker does not carry an earlier assert over)."""
    return job.state


def record_delivery(delivered: list[str], job_id: str, _done: asyncio.Future[Outcome]) -> None:
    delivered.append(job_id)


async def lease(queue: PromptQueue, worker_id: str = "w1") -> Job:
    job = await queue.lease(worker_id, wait=1.0)
    assert job is not None, "a waiting job should have been leased"
    return job


# -- leasing -----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_jobs_are_leased_in_the_order_they_were_submitted() -> None:
    _, queue = make_queue()
    for job_id in ("a", "b", "c"):
        submit(queue, job_id)

    leased = [(await lease(queue)).id for _ in range(3)]

    assert leased == ["a", "b", "c"]
    assert queue.count(JobState.LEASED) == 3


@pytest.mark.asyncio
async def test_leased_job_records_worker_attempt_and_deadline() -> None:
    clock, queue = make_queue(lease_seconds=30)
    submit(queue, "a")

    job = await lease(queue, "worker-7")

    assert job.state is JobState.LEASED
    assert job.attempt == 1
    assert job.worker_id == "worker-7"
    assert job.lease_deadline == clock.now() + 30
    assert job.first_leased_at == clock.now()


@pytest.mark.asyncio
async def test_expired_lease_puts_the_job_back_at_the_head_with_the_next_attempt() -> None:
    clock, queue = make_queue(lease_seconds=60)
    submit(queue, "a")
    submit(queue, "b")
    first = await lease(queue)
    assert first.id == "a"

    await clock.advance(61)

    assert first.state is JobState.QUEUED
    assert first.worker_id == ""
    again = await lease(queue, "w2")
    assert again is first, "the expired job must be leased before the younger job b"
    assert again.attempt == 2
    assert again.worker_id == "w2"
    assert not first.done.done()


@pytest.mark.asyncio
async def test_lease_still_running_before_its_deadline_is_not_requeued() -> None:
    clock, queue = make_queue(lease_seconds=60)
    submit(queue, "a")
    job = await lease(queue)

    await clock.advance(59)

    assert job.state is JobState.LEASED
    assert job.attempt == 1


@pytest.mark.asyncio
async def test_job_is_rejected_after_max_attempts_expired_leases() -> None:
    clock, queue = make_queue(lease_seconds=10, max_attempts=3)
    job = submit(queue, "a")

    for _ in range(3):
        await lease(queue)
        await clock.advance(11)

    assert job.done.done()
    outcome = job.done.result()
    assert isinstance(outcome, Reject)
    assert outcome.code is RejectCode.CANISTER_REJECT
    assert "after 3 attempts" in outcome.message
    assert job.state is JobState.FAILED
    assert queue.jobs() == []
    assert await queue.lease("w1", wait=0.01) is None, "a failed job must not be leased again"


@pytest.mark.asyncio
async def test_renewing_a_lease_keeps_the_job_leased_past_the_first_deadline() -> None:
    clock, queue = make_queue(lease_seconds=60)
    submit(queue, "a")
    job = await lease(queue)
    await clock.advance(50)

    deadline = queue.renew("a", job.attempt, "w1")

    assert deadline == clock.now() + 60
    await clock.advance(59)  # 109 s after the lease: past the first deadline, before the renewed one
    assert job.state is JobState.LEASED
    assert job.attempt == 1
    await clock.advance(2)
    assert state(job) is JobState.QUEUED, "the renewed lease still expires at its new deadline"


@pytest.mark.asyncio
async def test_renewing_an_expired_lease_raises_lease_lost() -> None:
    clock, queue = make_queue(lease_seconds=60)
    submit(queue, "a")
    job = await lease(queue)
    await clock.advance(61)

    with pytest.raises(LeaseLost, match="not leased to worker 'w1'"):
        queue.renew("a", job.attempt, "w1")


# -- completing ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_complete_sets_the_callers_outcome() -> None:
    _, queue = make_queue()
    job = submit(queue, "a")
    await lease(queue)
    reply = answer("the answer")

    queue.complete("a", 1, "w1", reply)

    assert job.done.result() == reply
    assert job.state is JobState.DONE
    assert job.outcome == reply
    assert queue.jobs() == []


@pytest.mark.asyncio
async def test_late_complete_after_expiry_raises_lease_lost_and_keeps_the_new_answer() -> None:
    clock, queue = make_queue(lease_seconds=60)
    job = submit(queue, "a")
    await lease(queue, "slow")
    await clock.advance(61)
    await lease(queue, "fast")

    with pytest.raises(LeaseLost, match="attempt 1 is not leased to worker 'slow'"):
        queue.complete("a", 1, "slow", answer("from slow"))

    assert not job.done.done(), "the lost lease's answer must not reach the caller"
    queue.complete("a", 2, "fast", answer("from fast"))
    assert job.done.result() == answer("from fast")


@pytest.mark.asyncio
async def test_late_complete_while_the_job_waits_again_raises_lease_lost() -> None:
    clock, queue = make_queue(lease_seconds=60)
    job = submit(queue, "a")
    await lease(queue, "slow")
    await clock.advance(61)

    with pytest.raises(LeaseLost, match="the job is QUEUED"):
        queue.complete("a", 1, "slow", answer("too late"))

    assert job.state is JobState.QUEUED
    assert not job.done.done(), "a lost lease must not answer the caller"
    assert (await lease(queue, "next")).attempt == 2


@pytest.mark.asyncio
async def test_late_complete_after_final_expiry_does_not_replace_the_reject() -> None:
    clock, queue = make_queue(lease_seconds=10, max_attempts=1)
    job = submit(queue, "a")
    await lease(queue, "slow")
    await clock.advance(11)
    rejected = job.done.result()

    with pytest.raises((LeaseLost, UnknownJob)):
        queue.complete("a", 1, "slow", answer("too late"))

    assert job.done.result() is rejected
    assert job.state is JobState.FAILED


@pytest.mark.asyncio
async def test_completing_a_job_twice_raises_and_keeps_the_first_answer() -> None:
    _, queue = make_queue()
    job = submit(queue, "a")
    await lease(queue)
    queue.complete("a", 1, "w1", answer("first"))

    with pytest.raises(UnknownJob, match="may have finished already"):
        queue.complete("a", 1, "w1", answer("second"))

    assert job.done.result() == answer("first")


@pytest.mark.asyncio
async def test_complete_by_another_worker_raises_lease_lost() -> None:
    _, queue = make_queue()
    job = submit(queue, "a")
    await lease(queue, "w1")

    with pytest.raises(LeaseLost, match="worker 'w1'"):
        queue.complete("a", 1, "intruder", answer())

    assert job.state is JobState.LEASED
    assert not job.done.done()


@pytest.mark.asyncio
async def test_retry_puts_the_job_back_as_a_new_attempt() -> None:
    _, queue = make_queue(max_attempts=2)
    job = submit(queue, "a")
    await lease(queue)

    queue.retry("a", 1, "w1", "backend overloaded")
    await lease(queue)
    queue.retry("a", 2, "w1", "backend overloaded")

    outcome = job.done.result()
    assert isinstance(outcome, Reject)
    assert outcome.code is RejectCode.CANISTER_REJECT
    assert "after 2 attempts" in outcome.message
    assert "backend overloaded" in outcome.message


# -- capacity --------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_full_queue_rejects_with_sys_transient_naming_the_capacity() -> None:
    _, queue = make_queue(capacity=2)
    submit(queue, "a")
    submit(queue, "b")

    with pytest.raises(Reject) as caught:
        submit(queue, "c")

    assert caught.value.code is RejectCode.SYS_TRANSIENT
    assert "capacity is 2" in caught.value.message
    assert [job.id for job in queue.jobs()] == ["a", "b"]


@pytest.mark.asyncio
async def test_full_queue_accepts_again_once_a_job_finishes() -> None:
    _, queue = make_queue(capacity=1)
    submit(queue, "a")
    with pytest.raises(Reject):
        submit(queue, "b")

    await lease(queue)
    queue.complete("a", 1, "w1", answer())

    assert submit(queue, "b").state is JobState.QUEUED


@pytest.mark.asyncio
async def test_leased_and_held_jobs_count_against_capacity() -> None:
    _, queue = make_queue(capacity=2)
    queue.set_hold(True)
    submit(queue, "a")
    submit(queue, "b")
    await lease(queue)
    queue.complete("a", 1, "w1", answer())  # held, not finished
    await lease(queue)

    with pytest.raises(Reject) as caught:
        submit(queue, "c")
    assert caught.value.code is RejectCode.SYS_TRANSIENT


# -- pause -----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_paused_queue_leases_nothing_and_resumes_with_the_waiting_job() -> None:
    _, queue = make_queue()
    submit(queue, "a")
    queue.set_paused(True)

    assert await queue.lease("w1", wait=0.05) is None
    assert queue.paused

    queue.set_paused(False)
    job = await lease(queue)
    assert job.id == "a"


@pytest.mark.asyncio
async def test_resume_wakes_a_worker_already_waiting_for_a_lease() -> None:
    _, queue = make_queue()
    submit(queue, "a")
    queue.set_paused(True)
    waiting = asyncio.ensure_future(queue.lease("w1", wait=5.0))
    await until(lambda: bool(queue._wakers), "the worker waiting for a lease")
    assert not waiting.done()

    queue.set_paused(False)

    job = await asyncio.wait_for(waiting, 1.0)
    assert job is not None and job.id == "a"


@pytest.mark.asyncio
async def test_waiting_worker_gets_a_job_submitted_later() -> None:
    _, queue = make_queue()
    waiting = asyncio.ensure_future(queue.lease("w1", wait=5.0))
    await until(lambda: bool(queue._wakers), "the worker waiting for a lease")

    submit(queue, "late")

    job = await asyncio.wait_for(waiting, 1.0)
    assert job is not None and job.id == "late"


@pytest.mark.asyncio
async def test_lease_skips_jobs_the_filter_refuses() -> None:
    _, queue = make_queue()
    submit(queue, "a", "for gpu")
    submit(queue, "b", "for cpu")

    job = await queue.lease("cpu-worker", wait=0.05, accept=lambda j: j.id == "b")

    assert job is not None and job.id == "b"
    assert [j.id for j in queue.jobs() if j.state is JobState.QUEUED] == ["a"]
    assert await queue.lease("cpu-worker", wait=0.05, accept=lambda j: j.id == "b") is None


# -- hold and release ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_held_answer_is_not_delivered_until_released() -> None:
    _, queue = make_queue()
    queue.set_hold(True)
    job = submit(queue, "a")
    await lease(queue)

    queue.complete("a", 1, "w1", answer("held"))

    assert job.state is JobState.HELD
    assert not job.done.done()
    assert [j.id for j in queue.held()] == ["a"]

    assert queue.release(["a"]) == ["a"]
    assert job.done.result() == answer("held")
    assert state(job) is JobState.DONE
    assert queue.held() == []


@pytest.mark.asyncio
async def test_held_job_does_not_expire() -> None:
    clock, queue = make_queue(lease_seconds=10)
    queue.set_hold(True)
    job = submit(queue, "a")
    await lease(queue)
    queue.complete("a", 1, "w1", answer())

    await clock.advance(100)

    assert job.state is JobState.HELD
    assert not job.done.done()


@pytest.mark.asyncio
async def test_release_delivers_outcomes_in_the_order_given() -> None:
    _, queue = make_queue()
    queue.set_hold(True)
    delivered: list[str] = []
    jobs = [submit(queue, job_id) for job_id in ("a", "b")]
    for job in jobs:
        job.done.add_done_callback(functools.partial(record_delivery, delivered, job.id))
    for job in jobs:
        await lease(queue)
        queue.complete(job.id, 1, "w1", answer(job.id))

    queue.release(["b", "a"])
    await asyncio.sleep(0)  # done-callbacks run on the next loop iteration

    assert delivered == ["b", "a"]
    assert jobs[0].done.result() == answer("a")
    assert jobs[1].done.result() == answer("b")


@pytest.mark.asyncio
async def test_release_of_a_job_that_is_not_held_raises_and_releases_nothing() -> None:
    _, queue = make_queue()
    queue.set_hold(True)
    held = submit(queue, "a")
    await lease(queue)
    queue.complete("a", 1, "w1", answer())
    waiting = submit(queue, "b")

    with pytest.raises(UnknownJob) as unknown:
        queue.release(["a", "nope"])
    with pytest.raises(UnknownJob) as not_held:
        queue.release(["a", "b"])

    assert "'nope'" in str(unknown.value)
    assert "held jobs: a" in str(unknown.value)
    assert "QUEUED" in str(not_held.value)
    assert held.state is JobState.HELD and not held.done.done()
    assert waiting.state is JobState.QUEUED


@pytest.mark.asyncio
async def test_release_naming_a_job_twice_raises_and_releases_nothing() -> None:
    _, queue = make_queue()
    queue.set_hold(True)
    job = submit(queue, "a")
    await lease(queue)
    queue.complete("a", 1, "w1", answer())

    with pytest.raises(UnknownJob, match="named more than once"):
        queue.release(["a", "a"])

    assert job.state is JobState.HELD and not job.done.done()
    queue.release(["a"])
    assert job.done.result() == answer()


@pytest.mark.asyncio
async def test_release_with_nothing_held_says_none_are_held() -> None:
    _, queue = make_queue()

    with pytest.raises(UnknownJob, match="held jobs: none"):
        queue.release(["ghost"])


@pytest.mark.asyncio
async def test_turning_hold_off_delivers_new_answers_at_once_and_keeps_held_ones() -> None:
    _, queue = make_queue()
    queue.set_hold(True)
    first = submit(queue, "a")
    second = submit(queue, "b")
    await lease(queue)
    queue.complete("a", 1, "w1", answer())

    queue.set_hold(False)
    await lease(queue)
    queue.complete("b", 1, "w1", answer())

    assert second.done.done()
    assert first.state is JobState.HELD and not first.done.done()


# -- reset -----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_reset_rejects_every_unfinished_job_with_sys_transient() -> None:
    _, queue = make_queue()
    queue.set_hold(True)
    held = submit(queue, "held")
    await lease(queue)
    queue.complete("held", 1, "w1", answer())
    leased = submit(queue, "leased")
    await lease(queue)
    waiting = submit(queue, "waiting")
    queue.set_paused(True)

    queue.reset()

    for job in (held, leased, waiting):
        outcome: Outcome = job.done.result()
        assert isinstance(outcome, Reject)
        assert outcome.code is RejectCode.SYS_TRANSIENT
        assert job.state is JobState.FAILED
    assert queue.jobs() == []
    assert not queue.hold
    assert not queue.paused
    assert await queue.lease("w1", wait=0.01) is None
