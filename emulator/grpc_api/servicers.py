"""The gRPC services: each method parses, calls the engine, and maps errors; nothing more."""

from __future__ import annotations

import dataclasses

import grpc

from icllm_emulator import candid
from icllm_emulator._proto.icllm.v1 import canister_pb2 as pb
from icllm_emulator._proto.icllm.v1 import canister_pb2_grpc, control_pb2_grpc, worker_pb2_grpc
from icllm_emulator._proto.icllm.v1 import control_pb2 as cpb
from icllm_emulator._proto.icllm.v1 import worker_pb2 as wpb
from icllm_emulator.billing import Receipt
from icllm_emulator.clock import check_advance
from icllm_emulator.config import ConfigError
from icllm_emulator.domain import Answer, ChatRequest, Reject, RejectCode
from icllm_emulator.engine import Engine
from icllm_emulator.grpc_api import convert, outcalls
from icllm_emulator.grpc_api.control import (
    cassette_spec,
    config_changes,
    config_pb,
    history_page,
    job_pb,
    rule_from_pb,
    rule_state_pb,
    stats_pb,
)
from icllm_emulator.grpc_api.pages import page
from icllm_emulator.grpc_api.status import REFUNDED_KEY, caller_of, principal_of, rpc
from icllm_emulator.queue import Job
from icllm_emulator.settings import MAX_POLL_SECONDS
from icllm_emulator.workers import lease_of


class LlmCanisterServicer(canister_pb2_grpc.LlmCanisterServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def _chat(self, request: ChatRequest, context: grpc.aio.ServicerContext) -> Answer:
        """One chat call with the caller's cycles; the refund travels back as trailing metadata."""
        caller, cycles = caller_of(context)
        receipt = Receipt()
        try:
            return await self.engine.chat(request, caller, cycles, receipt)
        finally:
            context.set_trailing_metadata(((REFUNDED_KEY, str(receipt.refunded)),))

    @rpc
    async def V0Chat(self, request: pb.V0ChatRequest, context: grpc.aio.ServicerContext) -> pb.V0ChatResponse:
        answer = await self._chat(convert.v0_request(request), context)
        return pb.V0ChatResponse(text=answer.message.content or "")

    @rpc
    async def V1Chat(self, request: pb.V1ChatRequest, context: grpc.aio.ServicerContext) -> pb.V1ChatResponse:
        answer = await self._chat(convert.v1_request(request), context)
        return pb.V1ChatResponse(message=convert.assistant_message_pb(answer.message))

    @rpc
    async def CallCandid(
        self, request: pb.CallCandidRequest, context: grpc.aio.ServicerContext
    ) -> pb.CallCandidResponse:
        caller, cycles = caller_of(context)
        receipt = Receipt()
        try:
            reply = await self.engine.call_candid(request.method, request.arg, caller, cycles, receipt)
        finally:
            context.set_trailing_metadata(((REFUNDED_KEY, str(receipt.refunded)),))
        return pb.CallCandidResponse(reply=reply)

    @rpc
    async def GetCandidInterface(
        self, request: pb.GetCandidInterfaceRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCandidInterfaceResponse:
        return pb.GetCandidInterfaceResponse(did=candid.candid_interface(self.engine.config.interface))

    @rpc
    async def V1Deposit(
        self, request: pb.V1DepositRequest, context: grpc.aio.ServicerContext
    ) -> pb.V1DepositResponse:
        caller, cycles = caller_of(context)
        candid.check_method(candid.DEPOSIT, self.engine.config.interface)
        beneficiary = (
            principal_of(request.beneficiary, "beneficiary") if request.HasField("beneficiary") else None
        )
        return pb.V1DepositResponse(balance=self.engine.deposit(caller, cycles, beneficiary))


class AiWorkerServicer(worker_pb2_grpc.AiWorkerServicer):
    """External workers lease unscripted jobs; scripted ones are for the built-in workers."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @rpc
    async def Poll(self, request: wpb.PollRequest, context: grpc.aio.ServicerContext) -> wpb.PollResponse:
        worker_id = _worker_id(request.worker_id)
        if not 0 <= request.wait_seconds <= MAX_POLL_SECONDS:
            raise convert.BadRequest(
                f"wait_seconds must be 0-{MAX_POLL_SECONDS:g}, got {request.wait_seconds}"
            )
        models = set(request.models)

        def accept(job: Job) -> bool:
            return job.rule is None and (not models or job.request.model in models)

        job = await self.engine.lease(worker_id, request.wait_seconds, accept)
        if job is None:
            return wpb.PollResponse()
        lease = lease_of(job)
        return wpb.PollResponse(
            job=wpb.Job(
                id=lease.job_id,
                attempt=lease.attempt,
                lease_deadline=lease.lease_deadline,
                request=convert.v1_request_pb(lease.request),
                max_output_tokens=lease.max_output_tokens,
                lease_seconds=self.engine.lease_seconds,
            )
        )

    @rpc
    async def Renew(self, request: wpb.RenewRequest, context: grpc.aio.ServicerContext) -> wpb.RenewResponse:
        deadline = self.engine.renew(request.job_id, request.attempt, _worker_id(request.worker_id))
        return wpb.RenewResponse(lease_deadline=deadline, lease_seconds=self.engine.lease_seconds)

    @rpc
    async def Submit(
        self, request: wpb.SubmitRequest, context: grpc.aio.ServicerContext
    ) -> wpb.SubmitResponse:
        worker_id = _worker_id(request.worker_id)
        engine = self.engine
        kind = request.WhichOneof("outcome")
        if kind == "completion":
            done = request.completion
            answer = Answer(convert.assistant_message(done.message), done.output_tokens, done.truncated)
            engine.complete(request.job_id, request.attempt, worker_id, answer)
        elif kind == "failure" and request.failure.retry:
            engine.retry(request.job_id, request.attempt, worker_id, request.failure.message)
        elif kind == "failure":
            failure = Reject(RejectCode.CANISTER_REJECT, f"the AI worker failed: {request.failure.message}")
            engine.complete(request.job_id, request.attempt, worker_id, failure)
        else:
            raise convert.BadRequest("a submission needs an outcome: set completion or failure")
        return wpb.SubmitResponse()


def _worker_id(worker_id: str) -> str:
    if not worker_id.strip():
        raise convert.BadRequest("worker_id is empty: name the worker (any text, unique per worker)")
    return worker_id


class ControlServicer(control_pb2_grpc.ControlServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @rpc
    async def Reset(self, request: cpb.ResetRequest, context: grpc.aio.ServicerContext) -> cpb.ResetResponse:
        self.engine.reset()
        return cpb.ResetResponse()

    @rpc
    async def GetConfig(
        self, request: cpb.GetConfigRequest, context: grpc.aio.ServicerContext
    ) -> cpb.EmulatorConfig:
        return config_pb(self.engine.config)

    @rpc
    async def Configure(
        self, request: cpb.ConfigureRequest, context: grpc.aio.ServicerContext
    ) -> cpb.EmulatorConfig:
        return config_pb(self.engine.configure(**config_changes(request, self.engine.config)))

    @rpc
    async def AddRules(
        self, request: cpb.AddRulesRequest, context: grpc.aio.ServicerContext
    ) -> cpb.AddRulesResponse:
        rules = [rule_from_pb(rule, index) for index, rule in enumerate(request.rules)]
        return cpb.AddRulesResponse(rule_ids=[self.engine.add_rule(rule) for rule in rules])

    @rpc
    async def ListRules(
        self, request: cpb.ListRulesRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ListRulesResponse:
        return cpb.ListRulesResponse(rules=[rule_state_pb(state) for state in self.engine.rule_states()])

    @rpc
    async def ClearRules(
        self, request: cpb.ClearRulesRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ClearRulesResponse:
        self.engine.clear_rules()
        return cpb.ClearRulesResponse()

    @rpc
    async def SetHold(
        self, request: cpb.SetHoldRequest, context: grpc.aio.ServicerContext
    ) -> cpb.SetHoldResponse:
        self.engine.set_hold(request.hold)
        return cpb.SetHoldResponse()

    @rpc
    async def Release(
        self, request: cpb.ReleaseRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ReleaseResponse:
        if request.all == bool(request.job_ids):
            raise convert.BadRequest("name the jobs to release in job_ids, or set all (not both)")
        released = self.engine.release(None if request.all else request.job_ids)
        return cpb.ReleaseResponse(job_ids=released)

    @rpc
    async def SetPaused(
        self, request: cpb.SetPausedRequest, context: grpc.aio.ServicerContext
    ) -> cpb.SetPausedResponse:
        self.engine.set_paused(request.paused)
        return cpb.SetPausedResponse()

    @rpc
    async def ListJobs(
        self, request: cpb.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ListJobsResponse:
        return cpb.ListJobsResponse(jobs=[job_pb(job) for job in self.engine.jobs()])

    @rpc
    async def GetHistory(
        self, request: cpb.GetHistoryRequest, context: grpc.aio.ServicerContext
    ) -> cpb.GetHistoryResponse:
        return history_page(self.engine.records(), request.page_token, request.page_size)

    @rpc
    async def GetStats(self, request: cpb.GetStatsRequest, context: grpc.aio.ServicerContext) -> cpb.Stats:
        return stats_pb(self.engine.stats())

    @rpc
    async def AdvanceClock(
        self, request: cpb.AdvanceClockRequest, context: grpc.aio.ServicerContext
    ) -> cpb.AdvanceClockResponse:
        if request.seconds < 0:
            raise convert.BadRequest(
                f"seconds must be 0 or more: the clock only moves forward, got {request.seconds}"
            )
        try:
            check_advance(request.seconds)
        except ValueError as error:
            raise convert.BadRequest(str(error)) from None
        try:
            now = await self.engine.advance_clock(request.seconds)
        except ConfigError as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        return cpb.AdvanceClockResponse(now=now)

    @rpc
    async def GetBalances(
        self, request: cpb.GetBalancesRequest, context: grpc.aio.ServicerContext
    ) -> cpb.GetBalancesResponse:
        return cpb.GetBalancesResponse(balances=self.engine.balances())

    @rpc
    async def SetBalance(
        self, request: cpb.SetBalanceRequest, context: grpc.aio.ServicerContext
    ) -> cpb.SetBalanceResponse:
        self.engine.set_balance(principal_of(request.principal, "principal"), request.cycles)
        return cpb.SetBalanceResponse()

    @rpc
    async def UseCassette(
        self, request: cpb.UseCassetteRequest, context: grpc.aio.ServicerContext
    ) -> cpb.UseCassetteResponse:
        cassette = self.engine.use_cassette(cassette_spec(request))
        stats = cassette.stats()
        return cpb.UseCassetteResponse(
            path=stats.path,
            exists=cassette.exists,
            interactions=stats.loaded,
            effective_mode=stats.effective_mode,
        )

    @rpc
    async def EjectCassette(
        self, request: cpb.EjectCassetteRequest, context: grpc.aio.ServicerContext
    ) -> cpb.CassetteStats:
        stats = self.engine.eject_cassette()
        return cpb.CassetteStats(**dataclasses.asdict(stats))

    @rpc
    async def AddOutcallRules(
        self, request: cpb.AddOutcallRulesRequest, context: grpc.aio.ServicerContext
    ) -> cpb.AddOutcallRulesResponse:
        rules = [outcalls.rule_from_pb(rule) for rule in request.rules]  # all checked before any is added
        return cpb.AddOutcallRulesResponse(rule_ids=[self.engine.outcalls.add(rule) for rule in rules])

    @rpc
    async def ListOutcallRules(
        self, request: cpb.ListOutcallRulesRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ListOutcallRulesResponse:
        return cpb.ListOutcallRulesResponse(
            rules=[
                cpb.OutcallRuleState(rule=outcalls.rule_pb(r), uses=r.uses)
                for r in self.engine.outcalls.rules
            ]
        )

    @rpc
    async def ClearOutcallRules(
        self, request: cpb.ClearOutcallRulesRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ClearOutcallRulesResponse:
        self.engine.outcalls.clear()
        return cpb.ClearOutcallRulesResponse()

    @rpc
    async def GetOutcalls(
        self, request: cpb.GetOutcallsRequest, context: grpc.aio.ServicerContext
    ) -> cpb.GetOutcallsResponse:
        records, token = page(
            self.engine.outcalls.records, outcalls.record_pb, request.page_token, request.page_size
        )
        return cpb.GetOutcallsResponse(outcalls=records, next_page_token=token)

    @rpc
    async def SetOutcallPolicy(
        self, request: cpb.SetOutcallPolicyRequest, context: grpc.aio.ServicerContext
    ) -> cpb.SetOutcallPolicyResponse:
        book = self.engine.outcalls
        if request.HasField("strict"):
            book.strict = request.strict
        if request.HasField("allow_loopback"):
            book.allow_loopback = request.allow_loopback
        return cpb.SetOutcallPolicyResponse(strict=book.strict, allow_loopback=book.allow_loopback)
