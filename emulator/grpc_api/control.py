"""Control messages, converted in both directions in this one module.

The Control servicer turns its requests into domain values and the engine's state into responses
(`config_pb`, `rule_from_pb`, `job_pb`, `record_pb`, ...); the pytest plugin and Python callers read
the responses back as plain dataclasses (`call_of`, `job_of`, `stats_of`: the history's own `Stats`),
never as protobuf messages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from icllm_emulator._proto.icllm.v1 import canister_pb2 as pb
from icllm_emulator._proto.icllm.v1 import control_pb2 as cpb
from icllm_emulator.billing import Price
from icllm_emulator.cassettes.deck import CassetteSpec
from icllm_emulator.cassettes.settings import (
    CassetteSettingsError,
    RecordMode,
    check_patterns,
    check_scrubbers,
    record_mode,
)
from icllm_emulator.client import LlmReject
from icllm_emulator.config import ConfigError, EmulatorConfig, choice, profile_limits
from icllm_emulator.domain import (
    Answer,
    AssistantMessage,
    ChatRequest,
    Limits,
    Message,
    Reject,
    RejectCode,
    ToolPolicy,
)
from icllm_emulator.grpc_api import convert
from icllm_emulator.history import CallRecord, Stats
from icllm_emulator.queue import Job
from icllm_emulator.rules import Action, Hang, Match, Reply, Rule, RuleState, parse_reject_code, parse_role
from icllm_emulator.settings import SETTINGS

# -- what readers of Control responses get -----------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One call the emulated canister received, and what its caller got back."""

    id: str
    method: str
    caller: str
    request: ChatRequest
    answer: AssistantMessage | None
    reject: LlmReject | None
    warnings: tuple[str, ...]
    job_state: str
    rule_id: str
    worker_id: str
    attempts: int
    input_tokens: int
    output_tokens: int
    truncated: bool
    unexpected: bool
    cycles_attached: int = 0
    cycles_charged: int = 0
    cycles_refunded: int = 0

    @property
    def messages(self) -> tuple[Message, ...]:
        """The request's messages."""
        return self.request.messages

    @property
    def prompt(self) -> str:
        """The content of the request's last message: what was just asked."""
        return (self.request.messages[-1].content or "") if self.request.messages else ""

    def describe(self) -> str:
        """One line: id, method, model and the last message (as failure messages list calls)."""
        last = self.request.messages[-1] if self.request.messages else None
        role = last.role.value if last else "-"
        return f"{self.id} {self.method} {self.request.model!r}, last {role}: {self.prompt[:120]!r}"


@dataclass(frozen=True)
class JobInfo:
    """An unfinished job of the queue, as `icllm.jobs()` lists it."""

    id: str
    state: str  # QUEUED, LEASED or HELD (DONE and FAILED once finished)
    attempt: int
    model: str
    caller: str
    worker_id: str
    rule_id: str


# The latency percentiles a Stats carries, by name (the message has a field for each).
LATENCIES = ("p50", "p90", "p99", "max")


def job_of(job: cpb.JobInfo) -> JobInfo:
    return JobInfo(job.id, job.state, job.attempt, job.model, job.caller, job.worker_id, job.rule_id)


def stats_of(stats: cpb.Stats) -> Stats:
    latency = {name: getattr(stats, f"latency_{name}_ms") for name in LATENCIES}
    counts = {f.name: getattr(stats, f.name) for f in dataclasses.fields(Stats) if f.name != "latency_ms"}
    return Stats(**{**counts, "rejects_by_code": dict(stats.rejects_by_code)}, latency_ms=latency)


def stats_pb(stats: Stats) -> cpb.Stats:
    counts = {f.name: getattr(stats, f.name) for f in dataclasses.fields(Stats) if f.name != "latency_ms"}
    latency: dict[str, Any] = {f"latency_{name}_ms": stats.latency_ms[name] for name in LATENCIES}
    return cpb.Stats(**counts, **latency)


def call_of(record: cpb.CallRecord) -> Call:
    """A history record as the plugin and Python callers see it."""
    outcome = record.WhichOneof("outcome")
    return Call(
        id=record.id,
        method=record.method,
        caller=record.caller,
        request=convert.v1_request(record.request),
        answer=convert.assistant_message(record.message) if outcome == "message" else None,
        reject=LlmReject(RejectCode(record.reject.code), record.reject.message)
        if outcome == "reject"
        else None,
        warnings=tuple(record.warnings),
        job_state=record.job_state,
        rule_id=record.rule_id,
        worker_id=record.worker_id,
        attempts=record.attempts,
        input_tokens=record.input_tokens,
        output_tokens=record.output_tokens,
        truncated=record.truncated,
        unexpected=record.unexpected,
        cycles_attached=record.cycles_attached,
        cycles_charged=record.cycles_charged,
        cycles_refunded=record.cycles_refunded,
    )


# -- what the Control servicer reads and writes ---------------------------------------------------------


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


# The settings that Configure sets by a field of their own name and type (settings.SETTINGS); the rest
# (profile and limits, models, tool_policy, caller_deadline, prices) are converted below.
PLAIN = frozenset(
    s.name
    for s in SETTINGS
    if s.configure == s.name and s.name not in {"profile", "models", "tool_policy", "prices"}
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
    # Every setting Configure changes under its own name, as it is (EmulatorConfig checks the whole).
    changes.update({field.name: value for field, value in request.ListFields() if field.name in PLAIN})
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
            last=match.last,
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
            last=match.last,
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
