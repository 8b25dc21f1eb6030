"""The per-test controller: script answers, steer the queue and clock, inspect every call.

It speaks to the emulator through the gRPC Control service only, so it works the same with the
emulator the plugin starts in-process and with one started elsewhere (`--icllm-url`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from emulator._proto.icllm.v1 import canister_pb2 as pb
from emulator._proto.icllm.v1 import control_pb2 as cpb
from emulator._proto.icllm.v1 import control_pb2_grpc
from emulator.client import EmulatorError, LlmReject, translate_error
from emulator.domain import AssistantMessage, ChatRequest, Message, RejectCode, Role
from emulator.grpc_api import convert
from emulator.rules import Match
from pytest_icllm._options import Settings


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

    @property
    def messages(self) -> tuple[Message, ...]:
        return self.request.messages

    @property
    def prompt(self) -> str:
        """The content of the request's last message: what was just asked."""
        return (self.request.messages[-1].content or "") if self.request.messages else ""

    def describe(self) -> str:
        last = self.request.messages[-1] if self.request.messages else None
        role = last.role.value if last else "-"
        return f"{self.id} {self.method} {self.request.model!r}, last {role}: {self.prompt[:120]!r}"


@dataclass
class ScriptedAnswer:
    """A rule added by this test; `uses` asks the emulator how often it has answered."""

    id: str
    description: str
    _controller: IcllmController = field(repr=False)

    @property
    def uses(self) -> int:
        return self._controller._uses().get(self.id, 0)


@dataclass(frozen=True)
class Expectation:
    """What a scripted answer matches, and how often and how late it answers; end it with an answer."""

    _controller: IcllmController
    _match: cpb.RuleMatch
    _times: int | None = None
    _delay: float = 0.0

    def times(self, count: int) -> Expectation:
        """Answer at most `count` calls (then the next rule, or the backend, answers)."""
        if count < 1:
            raise ValueError(f"times must be 1 or more, got {count}")
        return Expectation(self._controller, self._match, count, self._delay)

    def after(self, seconds: float) -> Expectation:
        """Wait this long on the emulator's clock before answering (a slow model)."""
        if seconds < 0:
            raise ValueError(f"a delay must be 0 or more seconds, got {seconds}")
        return Expectation(self._controller, self._match, self._times, seconds)

    def reply(
        self, text: str | None = None, *, tool_calls: Iterable[Mapping[str, Any]] = ()
    ) -> ScriptedAnswer:
        """Answer with text and/or tool calls given as {"name", "id"?, "arguments"?: {name: value}}."""
        calls = []
        for index, call in enumerate(tool_calls, start=1):
            arguments = call.get("arguments", {})
            calls.append(
                pb.ToolCall(
                    id=str(call.get("id", f"call_{index}")),
                    function=pb.FunctionCall(
                        name=call["name"],
                        arguments=[
                            pb.ToolCallArgument(name=k, value=v if isinstance(v, str) else _json(v))
                            for k, v in arguments.items()
                        ],
                    ),
                )
            )
        return self._add(cpb.RuleAction(reply=cpb.ReplyAction(content=text, tool_calls=calls)))

    def call_tool(self, name: str, *, id: str = "call_1", **arguments: Any) -> ScriptedAnswer:
        """Answer with one call of tool `name`; argument values travel as text, as on the wire."""
        return self.reply(tool_calls=[{"name": name, "id": id, "arguments": arguments}])

    def replies(self, *texts: str) -> list[ScriptedAnswer]:
        """Answer successive calls with these texts, one each, in order."""
        return [self.times(1).reply(text) for text in texts]

    def reject(self, code: RejectCode | int, message: str) -> ScriptedAnswer:
        """Reject the call with an IC reject code, as the canister or the system would."""
        return self._add(cpb.RuleAction(reject=cpb.RejectAction(code=int(code), message=message)))

    def hang(self) -> ScriptedAnswer:
        """The AI worker takes the call and never answers; its lease runs out and the job is retried."""
        return self._add(cpb.RuleAction(hang=cpb.HangAction()))

    def _add(self, action: cpb.RuleAction) -> ScriptedAnswer:
        action.delay_seconds = self._delay
        rule = cpb.Rule(match=self._match, action=action, times=self._times)
        return self._controller._add_rule(rule)


def _json(value: Any) -> str:
    return json.dumps(value)


class IcllmController:
    """The test's handle on the emulated LLM canister (exposed for type hints; get it from `icllm`)."""

    def __init__(self, channel: grpc.Channel, settings: Settings) -> None:
        self._control = control_pb2_grpc.ControlStub(channel)
        self.settings = settings
        self._scripted: list[ScriptedAnswer] = []

    # -- scripting ---------------------------------------------------------------------------------

    def on(
        self,
        *,
        contains: str | None = None,
        regex: str | None = None,
        model: str | None = None,
        role: str | Role | None = None,
        tool: str | None = None,
    ) -> Expectation:
        """Start a scripted answer for calls that match every criterion given (none: every call).

        `contains` and `regex` look in every message's content (only `role` messages, when given);
        `tool` asks that the request offers that tool.
        """
        match = cpb.RuleMatch(
            contains=contains,
            regex=regex,
            model=model,
            tool=tool,
            role=None if role is None else str(Role(role).value),
        )
        return Expectation(self, match)

    def _add_rule(self, rule: cpb.Rule) -> ScriptedAnswer:
        (rule_id,) = self._rpc(self._control.AddRules, cpb.AddRulesRequest(rules=[rule])).rule_ids
        answer = ScriptedAnswer(rule_id, _describe_rule(rule), self)
        self._scripted.append(answer)
        return answer

    def _uses(self) -> dict[str, int]:
        states = self._rpc(self._control.ListRules, cpb.ListRulesRequest()).rules
        return {state.rule.id: state.uses for state in states}

    # -- inspecting --------------------------------------------------------------------------------

    @property
    def calls(self) -> list[Call]:
        """Every call received since the test started, oldest first."""
        return [_call(r) for r in self._rpc(self._control.GetHistory, cpb.GetHistoryRequest()).calls]

    @property
    def requests(self) -> list[ChatRequest]:
        return [call.request for call in self.calls]

    @property
    def prompts(self) -> list[str]:
        """The last message's content of every call: what each caller just asked."""
        return [call.prompt for call in self.calls]

    def assert_prompted(
        self,
        *,
        contains: str | None = None,
        regex: str | None = None,
        model: str | None = None,
        role: str | Role | None = None,
        tool: str | None = None,
        times: int | None = None,
    ) -> list[Call]:
        """Assert that calls matching these criteria arrived (`times` of them, if given); returns them.

        On failure the message lists every call received and why each did not match.
        """
        __tracebackhide__ = True
        match = Match(
            model=model, contains=contains, regex=regex, tool=tool, role=None if role is None else Role(role)
        )
        calls = self.calls
        matched = [call for call in calls if not match.mismatches(call.request)]
        if (times is None and matched) or (times is not None and len(matched) == times):
            return matched
        wanted = "at least one call" if times is None else f"exactly {times} call(s)"
        lines = [
            f"expected {wanted} matching {match.describe()}, got {len(matched)}; "
            f"{len(calls)} call(s) received:"
        ]
        for call in calls:
            why = match.mismatches(call.request)
            lines.append(f"  {call.describe()}" + (f": {'; '.join(why)}" if why else ": matches"))
        if not calls:
            lines.append(
                "  (none: did the code under test reach the emulator at "
                f"{self.settings.url or 'the icllm_server fixture address'}?)"
            )
        raise AssertionError("\n".join(lines))

    def assert_not_prompted(self, **criteria: Any) -> None:
        """Assert that no call matched these criteria (the keywords of `assert_prompted`)."""
        __tracebackhide__ = True
        self.assert_prompted(times=0, **criteria)

    # -- the queue, workers and clock --------------------------------------------------------------

    def hold(self, enabled: bool = True) -> None:
        """While on, finished answers wait (HELD) until released: choose the order callers see them."""
        self._rpc(self._control.SetHold, cpb.SetHoldRequest(hold=enabled))

    def held(self, count: int = 0, timeout: float = 10.0) -> list[str]:
        """Ids of held jobs, oldest first, waiting until at least `count` are held (blocking)."""
        __tracebackhide__ = True
        give_up = time.monotonic() + timeout
        while len(ids := self._held_now()) < count:
            if time.monotonic() > give_up:
                raise AssertionError(f"expected {count} held job(s) within {timeout:g} s, got {ids}")
            time.sleep(0.005)
        return ids

    async def wait_held(self, count: int, timeout: float = 10.0) -> list[str]:
        """`held` for asyncio tests: waits without blocking the test's event loop."""
        __tracebackhide__ = True
        give_up = time.monotonic() + timeout
        while len(ids := self._held_now()) < count:
            if time.monotonic() > give_up:
                raise AssertionError(f"expected {count} held job(s) within {timeout:g} s, got {ids}")
            await asyncio.sleep(0.005)
        return ids

    def _held_now(self) -> list[str]:
        return [job.id for job in self.jobs() if job.state == "HELD"]

    def release(self, *job_ids: str) -> list[str]:
        """Deliver held answers in the order given."""
        return list(self._rpc(self._control.Release, cpb.ReleaseRequest(job_ids=job_ids)).job_ids)

    def release_all(self) -> list[str]:
        return list(self._rpc(self._control.Release, cpb.ReleaseRequest(all=True)).job_ids)

    def pause(self) -> None:
        """No worker leases a job until `resume`: prompts wait in the queue."""
        self._rpc(self._control.SetPaused, cpb.SetPausedRequest(paused=True))

    def resume(self) -> None:
        self._rpc(self._control.SetPaused, cpb.SetPausedRequest(paused=False))

    def jobs(self) -> list[cpb.JobInfo]:
        """Jobs not yet finished (QUEUED, LEASED or HELD), oldest first."""
        return list(self._rpc(self._control.ListJobs, cpb.ListJobsRequest()).jobs)

    def advance(self, seconds: float) -> float:
        """Move the virtual clock (`--icllm-clock virtual`) forward; returns the new time."""
        return float(self._rpc(self._control.AdvanceClock, cpb.AdvanceClockRequest(seconds=seconds)).now)

    def stats(self) -> cpb.Stats:
        stats: cpb.Stats = self._rpc(self._control.GetStats, cpb.GetStatsRequest())
        return stats

    # -- lifecycle (the plugin calls these) --------------------------------------------------------

    def _begin(self) -> None:
        """Fresh state for a test: reset, then this test's settings."""
        self._rpc(self._control.Reset, cpb.ResetRequest())
        s = self.settings
        request = cpb.ConfigureRequest(
            profile=s.profile,
            models=list(s.models),
            seed=s.seed,
            tool_policy=s.tool_policy,
            strict_rules=s.strict,
            strict_requests=s.strict_requests,
        )
        if s.caller_deadline is None:
            request.clear_caller_deadline = True
        else:
            request.caller_deadline_seconds = s.caller_deadline
        self._rpc(self._control.Configure, request)

    def _problems(self) -> list[str]:
        """What the teardown checks find wrong, as readable paragraphs."""
        problems = []
        if self.settings.assert_all_used and self._scripted:
            uses = self._uses()
            unused = [answer for answer in self._scripted if uses.get(answer.id, 0) == 0]
            if unused:
                problems.append(
                    "scripted answers that no call used (turn this check off with "
                    "@pytest.mark.icllm(assert_all_used=False)):\n"
                    + "\n".join(f"  {a.id}: {a.description}" for a in unused)
                )
        if self.settings.strict and self.settings.assert_all_expected:
            unexpected = [call for call in self.calls if call.unexpected]
            if unexpected:
                problems.append(
                    "prompts that no scripted answer expected (strict mode; the emulator rejected them; "
                    "turn this check off with @pytest.mark.icllm(assert_all_expected=False)):\n"
                    + "\n".join(f"  {call.describe()}" for call in unexpected)
                )
        return problems

    def _rpc(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=30)
        except grpc.RpcError as error:
            raise translate_error(error) from None


def _describe_rule(rule: cpb.Rule) -> str:
    match = rule.match
    criteria = [f"{f.name}={v!r}" for f, v in match.ListFields()]
    outcome = rule.action.WhichOneof("outcome")
    if outcome == "reply":
        reply = rule.action.reply
        detail = repr(reply.content) if reply.HasField("content") else f"{len(reply.tool_calls)} tool call(s)"
    elif outcome == "reject":
        detail = f"code {rule.action.reject.code} {rule.action.reject.message!r}"
    else:
        detail = ""
    return f"on({', '.join(criteria)}) -> {outcome} {detail}".rstrip()


def _call(record: cpb.CallRecord) -> Call:
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
    )


__all__ = ["Call", "EmulatorError", "Expectation", "IcllmController", "ScriptedAnswer"]
