"""The job source of an external worker process: the AiWorker service of a running emulator."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from icllm_emulator._proto.icllm.v1 import worker_pb2 as wpb
from icllm_emulator._proto.icllm.v1 import worker_pb2_grpc
from icllm_emulator.domain import Answer, Reject
from icllm_emulator.grpc_api import convert
from icllm_emulator.grpc_api.status import CONTROL_TOKEN_KEY
from icllm_emulator.queue import LeaseLost
from icllm_emulator.workers import Lease

log = logging.getLogger(__name__)

_LEASE_GONE = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)


# Polls in a row that find no emulator (about a second apart) before the worker gives up.
MAX_FAILED_POLLS = 10


class Unreachable(RuntimeError):
    """The emulator a worker polls does not answer, or refuses it; the message says where it looked."""


class GrpcSource:
    """Long-polls the emulator; lease deadlines are turned into this machine's clock."""

    renews = True

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        models: tuple[str, ...] = (),
        poll_seconds: float = 10.0,
        give_up_after: int = MAX_FAILED_POLLS,
        target: str = "the emulator",
        control_token: str | None = None,
    ):
        self.stub = worker_pb2_grpc.AiWorkerStub(channel)
        # The emulator's control token travels with every call (an emulator given one requires it).
        self.metadata = ((CONTROL_TOKEN_KEY, control_token),) if control_token else ()
        self.models = models
        self.poll_seconds = poll_seconds
        self.give_up_after = give_up_after
        self.target = target
        self._failures = 0

    async def lease(self, worker_id: str) -> Lease | None:
        try:
            reply = await self.stub.Poll(
                wpb.PollRequest(worker_id=worker_id, wait_seconds=self.poll_seconds, models=self.models),
                metadata=self.metadata,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.UNAUTHENTICATED:
                raise Unreachable(
                    f"the emulator at {self.target} refused this worker: {error.details()}"
                ) from None
            self._failures += 1
            if error.code() is grpc.StatusCode.UNAVAILABLE and self._failures >= self.give_up_after:
                raise Unreachable(
                    f"no emulator answers at {self.target} ({self._failures} polls in a row failed: "
                    f"{error.details()}); start one there (icllm-emulator serve) or fix --connect"
                ) from None
            log.warning("poll failed (%s: %s); retrying in 1 s", error.code().name, error.details())
            await asyncio.sleep(1.0)
            return None
        self._failures = 0
        if not reply.HasField("job"):
            return None
        job = reply.job
        return Lease(
            job_id=job.id,
            attempt=job.attempt,
            request=convert.v1_request(job.request),
            max_output_tokens=job.max_output_tokens if job.HasField("max_output_tokens") else None,
            lease_deadline=time.time() + job.lease_seconds,
        )

    async def abandon(self, lease: Lease, worker_id: str) -> None:
        """Nothing to say: the emulator's lease timer is already running."""

    async def renew(self, lease: Lease, worker_id: str) -> float:
        try:
            reply = await self.stub.Renew(
                wpb.RenewRequest(job_id=lease.job_id, attempt=lease.attempt, worker_id=worker_id),
                metadata=self.metadata,
            )
        except grpc.aio.AioRpcError as error:
            raise LeaseLost(error.details()) from None
        return time.time() + float(reply.lease_seconds)

    async def submit(self, lease: Lease, worker_id: str, outcome: Answer | Reject) -> None:
        request = wpb.SubmitRequest(job_id=lease.job_id, attempt=lease.attempt, worker_id=worker_id)
        if isinstance(outcome, Answer):
            request.completion.CopyFrom(
                wpb.Completion(
                    message=convert.assistant_message_pb(outcome.message),
                    output_tokens=outcome.output_tokens,
                    truncated=outcome.truncated,
                )
            )
        else:
            request.failure.CopyFrom(wpb.Failure(message=outcome.message))
        try:
            await self.stub.Submit(request, metadata=self.metadata)
        except grpc.aio.AioRpcError as error:
            if error.code() in _LEASE_GONE:
                raise LeaseLost(error.details()) from None
            # The emulator is unreachable: the lease will run out there and the job goes to another worker.
            log.warning("submit of %s failed (%s: %s)", lease.job_id, error.code().name, error.details())
