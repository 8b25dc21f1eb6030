"""`icllm.outcalls`: script the HTTP outcalls of the test's canisters, inspect them, check them."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from icllm_emulator._proto.icllm.v1 import control_pb2 as cpb
from icllm_emulator.domain import RejectCode
from icllm_emulator.outcalls import OutcallMatch, OutcallRuleError
from icllm_emulator.rules import RuleError, parse_reject_code


@dataclass(frozen=True)
class HttpResult:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass(frozen=True)
class Outcall:
    """One HTTP outcall a canister made, and how it ended."""

    id: str
    canister: str
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    rule_id: str
    # What the canister got (after its transform), and what the server sent (before it).
    response: HttpResult | None
    upstream: HttpResult | None
    reject_code: RejectCode | None
    reject_message: str
    cycles_attached: int
    cycles_charged: int
    unexpected: bool
    # Too large for one answer (over 1 MiB): its bodies, headers or reject message are shortened.
    truncated: bool = False

    def describe(self) -> str:
        ending = (
            f"{self.response.status}"
            if self.response
            else f"rejected {self.reject_code}: {self.reject_message[:80]}"
        )
        return f"{self.id} {self.method.upper()} {self.url} from {self.canister} -> {ending}"


def _result(response: cpb.OutcallResponse) -> HttpResult:
    return HttpResult(response.status, tuple((h.name, h.value) for h in response.headers), response.body)


def _outcall(record: cpb.Outcall) -> Outcall:
    return Outcall(
        id=record.id,
        canister=record.canister_id,
        method=record.method,
        url=record.url,
        headers=tuple((h.name, h.value) for h in record.headers),
        body=record.body,
        rule_id=record.rule_id,
        response=_result(record.response) if record.HasField("response") else None,
        upstream=_result(record.upstream) if record.HasField("upstream") else None,
        reject_code=RejectCode(record.reject_code) if record.reject_code else None,
        reject_message=record.reject_message,
        cycles_attached=int(record.cycles_attached or 0),
        cycles_charged=int(record.cycles_charged or 0),
        unexpected=record.unexpected,
        truncated=record.truncated,
    )


@dataclass
class ScriptedOutcall:
    id: str
    description: str
    _outcalls: OutcallsController = field(repr=False)

    @property
    def uses(self) -> int:
        return self._outcalls._uses().get(self.id, 0)


@dataclass(frozen=True)
class OutcallExpectation:
    """Which outcalls a scripted response answers; end it with `reply` or `reject`."""

    _outcalls: OutcallsController
    _match: cpb.OutcallMatch
    _times: int | None = None

    def times(self, count: int) -> OutcallExpectation:
        __tracebackhide__ = True
        if count < 1:
            raise ValueError(f"times must be 1 or more, got {count}")
        return OutcallExpectation(self._outcalls, self._match, count)

    def reply(
        self,
        status: int = 200,
        body: bytes | str = b"",
        *,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> ScriptedOutcall:
        """Answer with this status, body (bytes, text, or `json_body` serialised) and headers."""
        __tracebackhide__ = True
        given = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body)
            given.setdefault("Content-Type", "application/json")
        data = body.encode("utf-8") if isinstance(body, str) else bytes(body)
        if not 100 <= status <= 599:
            raise ValueError(f"status {status} is not an HTTP status (100-599)")
        response = cpb.OutcallResponse(
            status=status, headers=[cpb.HttpHeader(name=k, value=v) for k, v in given.items()], body=data
        )
        return self._add(cpb.OutcallRule(match=self._match, response=response, times=self._times))

    def reject(self, code: RejectCode | int, message: str) -> ScriptedOutcall:
        """The canister's http_request call is rejected with this IC code and message."""
        __tracebackhide__ = True
        try:
            checked = parse_reject_code(code)
        except RuleError as error:
            raise ValueError(str(error)) from None
        return self._add(
            cpb.OutcallRule(
                match=self._match,
                reject=cpb.RejectAction(code=int(checked), message=message),
                times=self._times,
            )
        )

    def _add(self, rule: cpb.OutcallRule) -> ScriptedOutcall:
        (rule_id,) = self._outcalls._rpc("AddOutcallRules", cpb.AddOutcallRulesRequest(rules=[rule])).rule_ids
        answer = ScriptedOutcall(rule_id, self._outcalls._describe(rule.match), self._outcalls)
        self._outcalls._scripted.append(answer)
        return answer


class OutcallsController:
    """The HTTP outcalls of this test's canisters: `icllm.outcalls.on(url=...).reply(...)`."""

    def __init__(self, rpc: Callable[[str, Any], Any]) -> None:
        self._rpc = rpc
        self._scripted: list[ScriptedOutcall] = []
        self._strict = False

    def on(
        self,
        *,
        url: str | None = None,
        url_regex: str | None = None,
        method: str | None = None,
        headers: Mapping[str, str] | None = None,
        body_contains: bytes | str | None = None,
    ) -> OutcallExpectation:
        """Script outcalls that match every criterion given (none: every outcall)."""
        __tracebackhide__ = True
        contains = body_contains.encode("utf-8") if isinstance(body_contains, str) else body_contains
        try:
            OutcallMatch(method, url, url_regex, tuple((headers or {}).items()), contains)
        except OutcallRuleError as error:
            raise ValueError(str(error)) from None
        match = cpb.OutcallMatch(
            method=None if method is None else method.lower(),
            url=url,
            url_regex=url_regex,
            headers=[cpb.HttpHeader(name=k, value=v) for k, v in (headers or {}).items()],
            body_contains=contains,
        )
        return OutcallExpectation(self, match)

    @property
    def calls(self) -> list[Outcall]:
        """Every outcall since the test started, oldest first."""
        calls: list[Outcall] = []
        token = ""
        while True:
            page = self._rpc("GetOutcalls", cpb.GetOutcallsRequest(page_token=token))
            calls += [_outcall(r) for r in page.outcalls]
            if not page.next_page_token:
                return calls
            token = page.next_page_token

    def strict(self, enabled: bool = True) -> None:
        """Fail the test at teardown for each outcall that no scripted response expected."""
        self._strict = enabled
        self._rpc("SetOutcallPolicy", cpb.SetOutcallPolicyRequest(strict=enabled))

    def allow_loopback(self, enabled: bool = True) -> None:
        """Send unscripted outcalls to 127.0.0.1, ::1 or localhost for real (never anywhere else)."""
        self._rpc("SetOutcallPolicy", cpb.SetOutcallPolicyRequest(allow_loopback=enabled))

    def _uses(self) -> dict[str, int]:
        states = self._rpc("ListOutcallRules", cpb.ListOutcallRulesRequest()).rules
        return {state.rule.id: state.uses for state in states}

    @staticmethod
    def _describe(match: cpb.OutcallMatch) -> str:
        parts = [f"{f.name}={v!r}" for f, v in match.ListFields() if f.name != "headers"]
        parts += [f"header {h.name}={h.value!r}" for h in match.headers]
        return "outcall " + (", ".join(parts) or "any")

    def _problems(self, check_unused: bool, check_unexpected: bool) -> list[str]:
        problems = []
        if check_unused and self._scripted:
            uses = self._uses()
            unused = [a for a in self._scripted if uses.get(a.id, 0) == 0]
            if unused:
                problems.append(
                    "scripted outcall responses that no outcall used (turn this check off with "
                    "@pytest.mark.icllm(assert_all_used=False)):\n"
                    + "\n".join(f"  {a.id}: {a.description}" for a in unused)
                )
        if check_unexpected:
            unexpected = [call for call in self.calls if call.unexpected]
            if unexpected:
                problems.append(
                    "HTTP outcalls that no scripted response expected (strict outcalls; the canister's call "
                    "was rejected):\n" + "\n".join(f"  {call.describe()}" for call in unexpected)
                )
        return problems


__all__ = ["Outcall", "OutcallExpectation", "OutcallsController"]
