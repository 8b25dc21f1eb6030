"""The gRPC services: each method parses, calls the engine, and maps errors; nothing more."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import grpc

from icllm_emulator import candid
from icllm_emulator._proto.icllm.v1 import canister_pb2 as pb
from icllm_emulator._proto.icllm.v1 import canister_pb2_grpc, control_pb2_grpc, worker_pb2_grpc
from icllm_emulator._proto.icllm.v1 import control_pb2 as cpb
from icllm_emulator._proto.icllm.v1 import worker_pb2 as wpb
from icllm_emulator.billing import Price, Receipt
from icllm_emulator.cassettes.deck import CassetteSpec
from icllm_emulator.cassettes.settings import (
    CassetteSettingsError,
    RecordMode,
    check_patterns,
    check_scrubbers,
    record_mode,
)
from icllm_emulator.clock import check_advance
from icllm_emulator.config import ConfigError, EmulatorConfig, choice, profile_limits
from icllm_emulator.domain import Answer, ChatRequest, Limits, Reject, RejectCode, ToolPolicy
from icllm_emulator.engine import Engine
from icllm_emulator.grpc_api import convert, outcalls
from icllm_emulator.grpc_api.status import REFUNDED_KEY, caller_of, principal_of, rpc
from icllm_emulator.history import CallRecord
from icllm_emulator.queue import Job
from icllm_emulator.rules import Action, Hang, Match, Reply, Rule, RuleState, parse_reject_code, parse_role
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
            return await self.engine.canister.chat(request, caller, cycles, receipt)
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
        return pb.V1DepositResponse(balance=self.engine.canister.deposit(caller, cycles, beneficiary))


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

        job = await self.engine.queue.lease(worker_id, wait=request.wait_seconds, accept=accept)
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
                lease_seconds=self.engine.queue.lease_seconds,
            )
        )

    @rpc
    async def Renew(self, request: wpb.RenewRequest, context: grpc.aio.ServicerContext) -> wpb.RenewResponse:
        deadline = self.engine.queue.renew(request.job_id, request.attempt, _worker_id(request.worker_id))
        return wpb.RenewResponse(lease_deadline=deadline, lease_seconds=self.engine.queue.lease_seconds)

    @rpc
    async def Submit(
        self, request: wpb.SubmitRequest, context: grpc.aio.ServicerContext
    ) -> wpb.SubmitResponse:
        worker_id = _worker_id(request.worker_id)
        queue = self.engine.queue
        kind = request.WhichOneof("outcome")
        if kind == "completion":
            done = request.completion
            answer = Answer(convert.assistant_message(done.message), done.output_tokens, done.truncated)
            queue.complete(request.job_id, request.attempt, worker_id, answer)
        elif kind == "failure" and request.failure.retry:
            queue.retry(request.job_id, request.attempt, worker_id, request.failure.message)
        elif kind == "failure":
            failure = Reject(RejectCode.CANISTER_REJECT, f"the AI worker failed: {request.failure.message}")
            queue.complete(request.job_id, request.attempt, worker_id, failure)
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
        return cpb.AddRulesResponse(rule_ids=[self.engine.rules.add(rule).id for rule in rules])

    @rpc
    async def ListRules(
        self, request: cpb.ListRulesRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ListRulesResponse:
        return cpb.ListRulesResponse(rules=[rule_state_pb(state) for state in self.engine.rules.states])

    @rpc
    async def ClearRules(
        self, request: cpb.ClearRulesRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ClearRulesResponse:
        self.engine.rules.clear()
        return cpb.ClearRulesResponse()

    @rpc
    async def SetHold(
        self, request: cpb.SetHoldRequest, context: grpc.aio.ServicerContext
    ) -> cpb.SetHoldResponse:
        self.engine.queue.set_hold(request.hold)
        return cpb.SetHoldResponse()

    @rpc
    async def Release(
        self, request: cpb.ReleaseRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ReleaseResponse:
        queue = self.engine.queue
        if request.all == bool(request.job_ids):
            raise convert.BadRequest("name the jobs to release in job_ids, or set all (not both)")
        ids = [job.id for job in queue.held()] if request.all else list(request.job_ids)
        return cpb.ReleaseResponse(job_ids=queue.release(ids))

    @rpc
    async def SetPaused(
        self, request: cpb.SetPausedRequest, context: grpc.aio.ServicerContext
    ) -> cpb.SetPausedResponse:
        self.engine.queue.set_paused(request.paused)
        return cpb.SetPausedResponse()

    @rpc
    async def ListJobs(
        self, request: cpb.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> cpb.ListJobsResponse:
        return cpb.ListJobsResponse(jobs=[job_pb(job) for job in self.engine.queue.jobs()])

    @rpc
    async def GetHistory(
        self, request: cpb.GetHistoryRequest, context: grpc.aio.ServicerContext
    ) -> cpb.GetHistoryResponse:
        return history_page(self.engine.history.records, request.page_token, request.page_size)

    @rpc
    async def GetStats(self, request: cpb.GetStatsRequest, context: grpc.aio.ServicerContext) -> cpb.Stats:
        stats = self.engine.history.stats(self.engine.queue)
        return cpb.Stats(
            calls=stats.calls,
            answered=stats.answered,
            rejected=stats.rejected,
            pending=stats.pending,
            rejects_by_code=stats.rejects_by_code,
            queue_depth=stats.queue_depth,
            in_flight=stats.in_flight,
            held=stats.held,
            input_tokens=stats.input_tokens,
            output_tokens=stats.output_tokens,
            latency_p50_ms=stats.latency_ms["p50"],
            latency_p90_ms=stats.latency_ms["p90"],
            latency_p99_ms=stats.latency_ms["p99"],
            latency_max_ms=stats.latency_ms["max"],
        )

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
        return cpb.GetBalancesResponse(balances=self.engine.canister.ledger.balances)

    @rpc
    async def SetBalance(
        self, request: cpb.SetBalanceRequest, context: grpc.aio.ServicerContext
    ) -> cpb.SetBalanceResponse:
        self.engine.canister.ledger.set_balance(principal_of(request.principal, "principal"), request.cycles)
        return cpb.SetBalanceResponse()

    @rpc
    async def UseCassette(
        self, request: cpb.UseCassetteRequest, context: grpc.aio.ServicerContext
    ) -> cpb.UseCassetteResponse:
        cassette = self.engine.cassettes.use(cassette_spec(request), confined=True)
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
        stats = self.engine.cassettes.eject()
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
        return cpb.GetOutcallsResponse(outcalls=[outcalls.record_pb(r) for r in self.engine.outcalls.records])

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


# -- control-plane conversions ---------------------------------------------------------------------


def cassette_spec(request: cpb.UseCassetteRequest) -> CassetteSpec:
    try:
        return CassetteSpec(
            path=request.path,
            record_mode=record_mode(request.record_mode or RecordMode.NONE.value),
            match_on=tuple(request.match_on),
            allow_playback_repeats=request.allow_playback_repeats,
            scrub_patterns=check_patterns(tuple(request.scrub_patterns)),
            scrubbers=check_scrubbers(tuple(request.scrubbers)),
            miss_hint=request.miss_hint,
        )
    except CassetteSettingsError as error:
        raise ConfigError(str(error)) from None


def limits_pb(limits: Limits) -> cpb.Limits:
    return cpb.Limits(
        max_messages=limits.max_messages,
        max_prompt_bytes=limits.max_prompt_bytes,
        max_output_tokens=limits.max_output_tokens,
    )


def config_pb(config: EmulatorConfig) -> cpb.EmulatorConfig:
    return cpb.EmulatorConfig(
        profile=config.profile,
        limits=limits_pb(config.limits),
        models=list(config.models),
        default_model=config.default_model,
        seed=config.seed,
        workers=config.workers,
        tool_policy=config.tool_policy.value,
        strict_requests=config.strict_requests,
        strict_rules=config.strict_rules,
        max_attempts=config.max_attempts,
        lease_seconds=config.lease_seconds,
        queue_capacity=config.queue_capacity,
        caller_deadline_seconds=config.caller_deadline,
        backend=config.backend.value,
        clock=config.clock.value,
        billing=config.charges,
        prices=[
            cpb.ModelPrice(model=model, per_call=price.per_call, per_token=price.per_token)
            for model, price in config.prices.items()
        ],
    )


def config_changes(request: cpb.ConfigureRequest, current: EmulatorConfig) -> dict[str, Any]:
    """The settings a Configure request changes, as EmulatorConfig field values."""
    changes: dict[str, Any] = {}
    if request.HasField("profile"):
        changes["profile"] = request.profile
        changes["custom_limits"] = None
    if request.HasField("limits"):
        base = profile_limits(request.profile) if request.HasField("profile") else current.limits
        given = {field.name: value for field, value in request.limits.ListFields()}
        changes["custom_limits"] = dataclasses.replace(base, **given)
    if request.models:
        changes["models"] = tuple(request.models)
    if request.HasField("tool_policy"):
        changes["tool_policy"] = choice(ToolPolicy, request.tool_policy, "tool policy")
    simple = (
        "seed",
        "workers",
        "strict_requests",
        "strict_rules",
        "max_attempts",
        "lease_seconds",
        "queue_capacity",
    )
    changes.update({field.name: value for field, value in request.ListFields() if field.name in simple})
    if request.HasField("caller_deadline_seconds") and request.clear_caller_deadline:
        raise ConfigError("set caller_deadline_seconds or clear_caller_deadline, not both")
    if request.HasField("caller_deadline_seconds"):
        changes["caller_deadline"] = request.caller_deadline_seconds
    if request.clear_caller_deadline:
        changes["caller_deadline"] = None
    if request.HasField("billing"):
        changes["billing"] = request.billing
    if request.prices and request.clear_prices:
        raise ConfigError("give prices or set clear_prices, not both")
    if request.prices or request.clear_prices:
        changes["prices"] = {p.model: Price(p.per_call, p.per_token) for p in request.prices}
    return changes


def rule_from_pb(rule: cpb.Rule, index: int) -> Rule:
    match = rule.match
    action: Action
    kind = rule.action.WhichOneof("outcome")
    if kind == "reply":
        action = Reply(
            convert.assistant_message(
                pb.AssistantMessage(
                    content=rule.action.reply.content if rule.action.reply.HasField("content") else None,
                    tool_calls=rule.action.reply.tool_calls,
                )
            )
        )
    elif kind == "reject":
        action = Reject(parse_reject_code(rule.action.reject.code), rule.action.reject.message)
    elif kind == "hang":
        action = Hang()
    else:
        raise convert.BadRequest(f"rules[{index}].action needs an outcome: reply, reject or hang")
    return Rule(
        Match(
            model=match.model if match.HasField("model") else None,
            contains=match.contains if match.HasField("contains") else None,
            regex=match.regex if match.HasField("regex") else None,
            role=parse_role(match.role) if match.HasField("role") else None,
            tool=match.tool if match.HasField("tool") else None,
        ),
        action,
        delay=rule.action.delay_seconds,
        times=rule.times if rule.HasField("times") else None,
        id=rule.id,
    )


def rule_pb(rule: Rule) -> cpb.Rule:
    match = rule.match
    action = cpb.RuleAction(delay_seconds=rule.delay)
    if isinstance(rule.action, Reply):
        message = convert.assistant_message_pb(rule.action.message)
        action.reply.CopyFrom(
            cpb.ReplyAction(
                content=message.content if message.HasField("content") else None,
                tool_calls=message.tool_calls,
            )
        )
    elif isinstance(rule.action, Reject):
        action.reject.CopyFrom(cpb.RejectAction(code=int(rule.action.code), message=rule.action.message))
    else:
        action.hang.SetInParent()
    return cpb.Rule(
        id=rule.id,
        match=cpb.RuleMatch(
            model=match.model,
            contains=match.contains,
            regex=match.regex,
            role=match.role.value if match.role else None,
            tool=match.tool,
        ),
        action=action,
        times=rule.times,
    )


def rule_state_pb(state: RuleState) -> cpb.RuleState:
    return cpb.RuleState(rule=rule_pb(state.rule), uses=state.uses)


def job_pb(job: Job) -> cpb.JobInfo:
    return cpb.JobInfo(
        id=job.id,
        state=job.state.value,
        attempt=job.attempt,
        model=job.request.model,
        caller=job.caller,
        worker_id=job.worker_id,
        rule_id=job.rule.id if job.rule else "",
    )


# A history page stays well below the 4 MiB a client takes by default (and the server's 2 MiB send limit).
HISTORY_PAGE_BYTES = 1024 * 1024


def history_page(records: Iterable[CallRecord], token: str, size: int) -> cpb.GetHistoryResponse:
    """The records after `token` (a call id), as many as fit in a page; the next page's token."""
    after = _sequence(token) if token else 0
    page = cpb.GetHistoryResponse()
    used = 0
    for record in records:
        if _sequence(record.id) <= after:
            continue
        entry = record_pb(record)
        cost = entry.ByteSize() + 8
        if page.calls and (used + cost > HISTORY_PAGE_BYTES or (size and len(page.calls) >= size)):
            page.next_page_token = page.calls[-1].id
            break
        page.calls.append(entry)
        used += cost
    return page


def _sequence(call_id: str) -> int:
    _, _, digits = call_id.rpartition("-")
    if not digits.isdigit():
        raise convert.BadRequest(
            f"page_token {call_id[:40]!r} is not a call id; pass the last next_page_token"
        )
    return int(digits)


def record_pb(record: CallRecord) -> cpb.CallRecord:
    job = record.job
    message = cpb.CallRecord(
        id=record.id,
        method=record.api.value,
        caller=record.caller,
        request=convert.v1_request_pb(record.request),
        warnings=list(record.warnings),
        received_at=record.received_at,
        first_leased_at=job.first_leased_at if job else None,
        finished_at=job.finished_at if job else None,
        attempts=job.attempt if job else 0,
        job_state=record.job_state,
        rule_id=job.rule.id if job and job.rule else "",
        worker_id=job.worker_id if job else "",
        input_tokens=record.input_tokens,
        unexpected=record.unexpected,
        cycles_attached=record.receipt.attached,
        cycles_charged=record.receipt.charged,
        cycles_refunded=record.receipt.refunded,
        request_truncated=record.request_truncated,
    )
    outcome = record.outcome
    if isinstance(outcome, Answer):
        message.message.CopyFrom(convert.assistant_message_pb(outcome.message))
        message.output_tokens = outcome.output_tokens
        message.truncated = outcome.truncated
    elif isinstance(outcome, Reject):
        message.reject.CopyFrom(cpb.RejectInfo(code=int(outcome.code), message=outcome.message))
    return message
