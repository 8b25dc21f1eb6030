"""The job source of an external worker process: the AiWorker service of a running emulator."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from emulator._proto.icllm.v1 import worker_pb2 as wpb
from emulator._proto.icllm.v1 import worker_pb2_grpc
from emulator.domain import Answer, Reject
from emulator.grpc_api import convert
from emulator.queue import LeaseLost
from emulator.workers import Lease

log = logging.getLogger(__name__)

_LEASE_GONE = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)


class GrpcSource:
    """Long-polls the emulator; lease deadlines are turned into this machine's clock."""

    renews = True

    def __init__(
        self, channel: grpc.aio.Channel, *, models: tuple[str, ...] = (), poll_seconds: float = 10.0
    ):
        self.stub = worker_pb2_grpc.AiWorkerStub(channel)
        self.models = models
        self.poll_seconds = poll_seconds

    async def lease(self, worker_id: str) -> Lease | None:
        try:
            reply = await self.stub.Poll(
                wpb.PollRequest(worker_id=worker_id, wait_seconds=self.poll_seconds, models=self.models)
            )
        except grpc.aio.AioRpcError as error:
            log.warning("poll failed (%s: %s); retrying in 1 s", error.code().name, error.details())
            await asyncio.sleep(1.0)
            return None
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
                wpb.RenewRequest(job_id=lease.job_id, attempt=lease.attempt, worker_id=worker_id)
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
            await self.stub.Submit(request)
        except grpc.aio.AioRpcError as error:
            if error.code() in _LEASE_GONE:
                raise LeaseLost(error.details()) from None
            # The emulator is unreachable: the lease will run out there and the job goes to another worker.
            log.warning("submit of %s failed (%s: %s)", lease.job_id, error.code().name, error.details())
