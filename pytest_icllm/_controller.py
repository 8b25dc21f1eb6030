"""The per-test controller: script answers, steer the queue and clock, inspect every call.

It speaks to the emulator through the Control service only (over gRPC to an emulator started
elsewhere with `--icllm-url`, or straight to the servicer of the in-process one), so it works the
same with both.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from icllm_emulator._proto.icllm.v1 import canister_pb2 as pb
from icllm_emulator._proto.icllm.v1 import control_pb2 as cpb
from icllm_emulator._proto.icllm.v1 import control_pb2_grpc
from icllm_emulator.client import EmulatorError, translate_error
from icllm_emulator.domain import ChatRequest, RejectCode, Role
from icllm_emulator.grpc_api.control import Call, JobInfo, call_of, job_of, stats_of
from icllm_emulator.history import Stats
from icllm_emulator.rules import Match, RuleError, parse_reject_code, parse_role
from pytest_icllm._inprocess import InProcessControl
from pytest_icllm._options import CONFIGURED, Settings
from pytest_icllm._outcalls import OutcallsController


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
        __tracebackhide__ = True
        if count < 1:
            raise ValueError(f"times must be 1 or more, got {count}")
        return Expectation(self._controller, self._match, count, self._delay)

    def after(self, seconds: float) -> Expectation:
        """Wait this long on the emulator's clock before answering (a slow model)."""
        __tracebackhide__ = True
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
        """Reject the call with an IC reject code (1-6), as the canister or the system would."""
        __tracebackhide__ = True
        try:
            checked = parse_reject_code(code)
        except RuleError as error:
            raise ValueError(str(error)) from None
        return self._add(cpb.RuleAction(reject=cpb.RejectAction(code=int(checked), message=message)))

    def hang(self) -> ScriptedAnswer:
        """The AI worker takes the call and never answers; its lease runs out and the job is retried."""
        return self._add(cpb.RuleAction(hang=cpb.HangAction()))

    def _add(self, action: cpb.RuleAction) -> ScriptedAnswer:
        action.delay_seconds = self._delay
        rule = cpb.Rule(match=self._match, action=action, times=self._times)
        return self._controller._add_rule(rule)


def _json(value: Any) -> str:
    return json.dumps(value)


@dataclass(frozen=True)
class CassetteUse:
    """The cassette a test replays and records through, and what to say when a call misses."""

    path: Path
    miss_hint: str = ""


class IcllmController:
    """The test's handle on the emulated LLM canister (exposed for type hints; get it from `icllm`)."""

    def __init__(
        self,
        control: control_pb2_grpc.ControlStub | InProcessControl,
        settings: Settings,
        cassette: CassetteUse | None = None,
    ) -> None:
        self._control = control
        # The effective settings of this test (read-only): defaults, ini, flags, config fixture, markers.
        self.settings = settings
        self._scripted: list[ScriptedAnswer] = []
        # The HTTP outcalls of this test's canisters (icllm_canister): scripted, inspected, checked.
        self.outcalls = OutcallsController(
            lambda name, request: self._rpc(getattr(self._control, name), request)
        )
        self._cassette = cassette
        self._cassette_stats: cpb.CassetteStats | None = None

    @property
    def cassette(self) -> Path | None:
        """This test's cassette file (`@pytest.mark.icllm(cassette=True)`), or None without one."""
        return None if self._cassette is None else self._cassette.path

    # -- scripting ---------------------------------------------------------------------------------

    def on(
        self,
        *,
        contains: str | None = None,
        regex: str | None = None,
        model: str | None = None,
        role: str | Role | None = None,
        tool: str | None = None,
        last: bool = False,
    ) -> Expectation:
        """Start a scripted answer for calls that match every criterion given (none: every call).

        `contains` and `regex` look in every message's content (only `role` messages, when given);
        with `last=True`, in the last message only: a conversation repeats its earlier turns in every
        later call, so a rule for one turn of a multi-turn agent needs it. `tool` asks that the request
        offers that tool.
        """
        __tracebackhide__ = True
        checked = _match(contains=contains, regex=regex, model=model, role=role, tool=tool, last=last)
        match = cpb.RuleMatch(
            contains=contains,
            regex=regex,
            model=model,
            tool=tool,
            role=None if checked.role is None else checked.role.value,
            last=last,
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
        calls: list[Call] = []
        token = ""
        while True:  # the history comes in pages
            page = self._rpc(self._control.GetHistory, cpb.GetHistoryRequest(page_token=token))
            calls.extend(call_of(r) for r in page.calls)
            if not page.next_page_token:
                return calls
            token = page.next_page_token

    @property
    def requests(self) -> list[ChatRequest]:
        """The request of every call, oldest first (`requests[-1].messages[-1].content`)."""
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
        last: bool = False,
        times: int | None = None,
    ) -> list[Call]:
        """Assert that calls matching these criteria arrived (`times` of them, if given); returns them.

        The criteria are those of `on`. On failure the message lists every call received and why each
        did not match.
        """
        __tracebackhide__ = True
        match = _match(model=model, contains=contains, regex=regex, role=role, tool=tool, last=last)
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
        return [job.id for job in self.jobs("HELD", count=count, timeout=timeout)]

    async def wait_held(self, count: int, timeout: float = 10.0) -> list[str]:
        """`held` for asyncio tests: waits without blocking the test's event loop."""
        __tracebackhide__ = True
        return [job.id for job in await self.wait_jobs("HELD", count=count, timeout=timeout)]

    def release(self, *job_ids: str) -> list[str]:
        """Deliver held answers in the order given."""
        return list(self._rpc(self._control.Release, cpb.ReleaseRequest(job_ids=job_ids)).job_ids)

    def release_all(self) -> list[str]:
        """Deliver every held answer, oldest first; returns the released job ids."""
        return list(self._rpc(self._control.Release, cpb.ReleaseRequest(all=True)).job_ids)

    def pause(self) -> None:
        """No worker leases a job until `resume`: prompts wait in the queue."""
        self._rpc(self._control.SetPaused, cpb.SetPausedRequest(paused=True))

    def resume(self) -> None:
        """Workers lease again, oldest prompt first."""
        self._rpc(self._control.SetPaused, cpb.SetPausedRequest(paused=False))

    def jobs(self, state: str | None = None, *, count: int = 0, timeout: float = 10.0) -> list[JobInfo]:
        """Unfinished jobs (QUEUED, LEASED, HELD; only `state` if given), oldest first, waiting until
        at least `count` are there (blocking): e.g. `jobs("LEASED", count=1)` before `advance`."""
        __tracebackhide__ = True
        give_up = time.monotonic() + timeout
        while len(found := self._jobs_now(state)) < count:
            if time.monotonic() > give_up:
                raise AssertionError(_not_reached(state, count, timeout, found))
            time.sleep(0.002)
        return found

    async def wait_jobs(
        self, state: str | None = None, *, count: int = 1, timeout: float = 10.0
    ) -> list[JobInfo]:
        """`jobs` for asyncio tests: waits without blocking the test's event loop."""
        __tracebackhide__ = True
        give_up = time.monotonic() + timeout
        while len(found := self._jobs_now(state)) < count:
            if time.monotonic() > give_up:
                raise AssertionError(_not_reached(state, count, timeout, found))
            await asyncio.sleep(0.002)
        return found

    def _jobs_now(self, state: str | None) -> list[JobInfo]:
        __tracebackhide__ = True
        if state is not None and state not in JOB_STATES:
            raise ValueError(f"job state {state!r} is not valid; choose one of: {', '.join(JOB_STATES)}")
        jobs = self._rpc(self._control.ListJobs, cpb.ListJobsRequest()).jobs
        return [job_of(job) for job in jobs if state is None or job.state == state]

    def advance(self, seconds: float) -> float:
        """Move the virtual clock (`--icllm-clock virtual`) forward; returns the new time."""
        __tracebackhide__ = True
        try:
            response = self._rpc(self._control.AdvanceClock, cpb.AdvanceClockRequest(seconds=seconds))
        except EmulatorError as error:
            if error.status is not grpc.StatusCode.FAILED_PRECONDITION:
                raise
            raise EmulatorError(
                error.status,
                f"{error.details}; with pytest, run with --icllm-clock virtual "
                "(or the ini key icllm_clock = virtual)",
            ) from None
        return float(response.now)

    def set_time(self, when: datetime.datetime | int) -> float:
        """Set the virtual clock to `when` (a `datetime`, or nanoseconds since the epoch); the clock never
        moves backwards. Returns the new time in seconds."""
        __tracebackhide__ = True
        if isinstance(when, datetime.datetime):
            if when.tzinfo is None:
                raise ValueError(
                    f"set_time needs an aware datetime (with a tzinfo, such as UTC), got {when!r}"
                )
            target = when.timestamp()
        elif isinstance(when, int) and not isinstance(when, bool):
            target = when / 1e9
        else:
            raise ValueError(f"set_time takes a datetime or nanoseconds (an int), got {when!r}")
        now = self.advance(0)
        if target < now:
            raise ValueError(
                f"the clock never moves backwards: it is at {now:.9f} s and set_time asked for {target:.9f} s"
            )
        return self.advance(target - now)

    def stats(self) -> Stats:
        """Counts since the test started: calls, answers, rejects by code, queue depth, tokens, latency."""
        return stats_of(self._rpc(self._control.GetStats, cpb.GetStatsRequest()))

    # -- cycles ------------------------------------------------------------------------------------

    def balances(self) -> dict[str, int]:
        """Prepaid cycle balances by principal (what `v1_deposit` fills and paid calls draw on)."""
        response = self._rpc(self._control.GetBalances, cpb.GetBalancesRequest())
        return dict(response.balances)

    def balance(self, principal: str) -> int:
        """The prepaid cycle balance of `principal` (0 when it has none)."""
        return self.balances().get(principal, 0)

    def set_prices(self, prices: Mapping[str, tuple[int, int]]) -> None:
        """Make these models paid, as {model: (cycles per call, cycles per token)}; the rest are free.

        `{}` makes every model free. A test's prices last until the next test starts.
        """
        models = [
            cpb.ModelPrice(model=model, per_call=per_call, per_token=per_token)
            for model, (per_call, per_token) in prices.items()
        ]
        self._rpc(self._control.Configure, cpb.ConfigureRequest(prices=models, clear_prices=not models))

    def set_balance(self, principal: str, cycles: int) -> None:
        """Give a caller a prepaid balance, as if it had called `v1_deposit`."""
        self._rpc(self._control.SetBalance, cpb.SetBalanceRequest(principal=principal, cycles=cycles))

    def top_up(self, principal: str, cycles: int) -> int:
        """Credit a prepaid balance as a top-up on the gateway's website would; returns the new balance."""
        __tracebackhide__ = True
        if cycles < 0:
            raise ValueError(f"a top-up is 0 or more cycles, got {cycles}")
        balance = self.balance(principal) + cycles
        self.set_balance(principal, balance)
        return balance

    # -- lifecycle (the plugin calls these) --------------------------------------------------------

    def _begin(self, configure: bool = True) -> None:
        """Fresh state for a test: reset, then this test's settings (unless the reset restored them)."""
        self._rpc(self._control.Reset, cpb.ResetRequest())
        if not configure:
            return
        # Every per-test setting that Control.Configure changes, by its field there (settings.SETTINGS).
        request = cpb.ConfigureRequest()
        for option in CONFIGURED:
            value = getattr(self.settings, option.name)
            if value is None and option.name == "caller_deadline":
                request.clear_caller_deadline = True
            elif isinstance(value, tuple):
                getattr(request, str(option.configure)).extend(value)
            else:
                setattr(request, str(option.configure), value)
        self._rpc(self._control.Configure, request)

    def _use_cassette(self) -> None:
        """Load this test's cassette into the emulator (the plugin calls it after `_begin`)."""
        __tracebackhide__ = True
        if self._cassette is None:
            return
        s = self.settings
        request = cpb.UseCassetteRequest(
            path=str(self._cassette.path),
            record_mode=s.record_mode,
            match_on=list(s.match_on),
            allow_playback_repeats=s.allow_playback_repeats,
            scrub_patterns=list(s.scrub_patterns),
            scrubbers=list(s.scrubbers),
            miss_hint=self._cassette.miss_hint,
        )
        self._rpc(self._control.UseCassette, request)

    def _eject_cassette(self) -> None:
        """Write the cassette and keep what it did, for the teardown checks."""
        if self._cassette is not None and self._cassette_stats is None:
            self._cassette_stats = self._rpc(self._control.EjectCassette, cpb.EjectCassetteRequest())

    def _cassette_problems(self) -> list[str]:
        stats = self._cassette_stats
        if stats is None:
            return []
        problems = []
        if stats.errors:
            problems.append(
                f"the cassette {stats.path} could not record everything:\n"
                + "\n".join(f"  {error}" for error in stats.errors)
            )
        if stats.misses and self.settings.assert_no_misses:
            problems.append(
                f"{len(stats.misses)} call(s) found no recorded answer in the cassette, and the emulator "
                "rejected them (turn this check off with @pytest.mark.icllm(assert_no_misses=False)):\n"
                + "\n\n".join(stats.misses)
            )
        return problems

    def _problems(self) -> list[str]:
        """What the teardown checks find wrong, as readable paragraphs."""
        problems = self._cassette_problems()
        if self.settings.assert_all_used and self._scripted:
            uses = self._uses()
            unused = [answer for answer in self._scripted if uses.get(answer.id, 0) == 0]
            if unused:
                problems.append(
                    "scripted answers that no call used (turn this check off with "
                    "@pytest.mark.icllm(assert_all_used=False)):\n" + "\n".join(self._why_unused(unused))
                )
        if self.settings.strict_rules and self.settings.assert_all_expected:
            unexpected = [call for call in self.calls if call.unexpected]
            if unexpected:
                problems.append(
                    "prompts that no scripted answer expected (strict mode; the emulator rejected them; "
                    "turn this check off with @pytest.mark.icllm(assert_all_expected=False)):\n"
                    + "\n".join(f"  {call.describe()}" for call in unexpected)
                )
        problems += self.outcalls._problems(self.settings.assert_all_used, self.settings.assert_all_expected)
        return problems

    def _why_unused(self, unused: list[ScriptedAnswer]) -> list[str]:
        """Each unused answer, and why each call of the test missed it (as strict mode explains)."""
        from icllm_emulator.grpc_api.control import rule_from_pb

        rules = {s.rule.id: s.rule for s in self._rpc(self._control.ListRules, cpb.ListRulesRequest()).rules}
        calls = self.calls
        lines = []
        for answer in unused:
            lines.append(f"  {answer.id}: {answer.description}")
            if answer.id not in rules:
                continue
            match = rule_from_pb(rules[answer.id], 0).match
            if not calls:
                lines.append("    no call reached the emulator")
            for call in calls:
                why = match.mismatches(call.request) or ["matched, but an earlier rule answered it"]
                lines.append(f"    {call.describe()}: {'; '.join(why)}")
        return lines

    def _rpc(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=30)
        except grpc.RpcError as error:
            raise translate_error(error) from None


JOB_STATES = ("QUEUED", "LEASED", "HELD")


def _not_reached(state: str | None, count: int, timeout: float, found: list[JobInfo]) -> str:
    kind = state.lower() if state else "unfinished"
    return f"expected {count} {kind} job(s) within {timeout:g} s, got {[job.id for job in found]}"


def _match(
    *,
    model: str | None,
    contains: str | None,
    regex: str | None,
    role: str | Role | None,
    tool: str | None,
    last: bool,
) -> Match:
    """The criteria of `on` and `assert_prompted`, checked here so a mistake points at the test's line."""
    __tracebackhide__ = True
    try:
        return Match(
            model=model,
            contains=contains,
            regex=regex,
            role=None if role is None else parse_role(role),
            tool=tool,
            last=last,
        )
    except RuleError as error:
        raise ValueError(str(error)) from None


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


__all__ = ["Call", "CassetteUse", "EmulatorError", "Expectation", "IcllmController", "ScriptedAnswer"]
