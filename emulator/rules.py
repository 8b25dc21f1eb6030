"""Scripted answers: rules that match a request and say what the AI worker does with it.

Rules are tried in the order they were added; the first that matches and has uses left answers.
`contains` and `regex` look at the content of every message (only messages of `role` when that is
given); with `last`, they look at the request's last message only (of `role`, when given), so that in a
conversation a rule answers the turn that asks, not every later turn that repeats it; `tool` asks that
the request offers a tool of that name. A rule file (YAML or JSON) holds
`rules: [{match: {...}, reply: ... | reject: {...} | hang: true, delay: S, times: N}]`.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from icllm_emulator import patterns
from icllm_emulator.domain import (
    AssistantMessage,
    ChatRequest,
    FunctionCall,
    Reject,
    RejectCode,
    Role,
    ToolCall,
    ToolCallArgument,
)
from icllm_emulator.errors import IcllmError


class RuleError(IcllmError, ValueError):
    """A rule that cannot work: the message says what was wrong and what would be valid."""


@dataclass(frozen=True, slots=True)
class Match:
    model: str | None = None
    contains: str | None = None
    regex: str | None = None
    role: Role | None = None
    tool: str | None = None
    last: bool = False

    def __post_init__(self) -> None:
        if self.last and self.contains is None and self.regex is None and self.role is None:
            raise RuleError("last=True narrows contains, regex or role to the last message: give one of them")
        if self.regex is not None:
            try:
                patterns.compiled(self.regex)
            except patterns.PatternError as error:
                raise RuleError(f"regex {error}") from None

    def mismatches(self, request: ChatRequest) -> list[str]:
        """Why this match does not fit the request; empty when it does."""
        why = []
        if self.model is not None and request.model != self.model:
            why.append(f"model is {request.model!r}, not {self.model!r}")
        kind = f"{self.role.value} message" if self.role else "message"
        if self.last:
            final = request.messages[-1:]
            contents = [m.content or "" for m in final if self.role is None or m.role is self.role]
            if not contents:
                role = final[0].role.value if final else ""
                is_a = f"{'an' if role[:1] in 'aeiou' else 'a'} {role} message" if final else "missing"
                why.append(f"the last message is {is_a}, not a {kind}")
            contains, matches = "the last message does not contain", "the last message does not match"
        else:
            contents = [m.content or "" for m in request.messages if self.role is None or m.role is self.role]
            if self.role is not None and not contents:
                why.append(f"no {kind} in the request")
            contains, matches = f"no {kind} contains", f"no {kind} matches"
        if self.contains is not None and not any(self.contains in text for text in contents):
            why.append(f"{contains} {self.contains!r}")
        if self.regex is not None:
            try:
                if not any(patterns.search(self.regex, text) for text in contents):
                    why.append(f"{matches} /{self.regex}/")
            except patterns.PatternTimeout as timeout:
                why.append(f"{timeout}, so it counts as a miss")
        if self.tool is not None and all(t.name != self.tool for t in request.tools):
            offered = ", ".join(t.name for t in request.tools) or "none"
            why.append(f"tool {self.tool!r} is not offered (offered: {offered})")
        return why

    def describe(self) -> str:
        fields = {k: getattr(self, k) for k in ("model", "contains", "regex", "role", "tool", "last")}
        shown = ", ".join(
            f"{k}={v!r}" if k != "role" else f"role={v.value!r}" for k, v in fields.items() if v
        )
        return f"match({shown})" if shown else "match(any request)"


@dataclass(frozen=True, slots=True)
class Reply:
    message: AssistantMessage


@dataclass(frozen=True, slots=True)
class Hang:
    """The worker takes the job and never answers."""


Action = Reply | Reject | Hang


@dataclass(frozen=True, slots=True)
class Rule:
    match: Match
    action: Action
    delay: float = 0.0
    times: int | None = None
    id: str = ""

    def __post_init__(self) -> None:
        check_delay(self.delay)
        check_times(self.times)


def check_delay(delay: float) -> None:
    """A scripted answer's delay: seconds on the engine's clock (LLM rules, stand-ins, faults)."""
    if not math.isfinite(delay) or delay < 0:
        raise RuleError(f"delay must be a finite number of seconds, 0 or more, got {delay}")


def check_times(times: int | None) -> None:
    """How often a scripted answer may answer: None for any number (LLM rules, stand-ins, faults)."""
    if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 1):
        raise RuleError(f"times must be 1 or more (leave it out for any number), got {times!r}")


def used_up(uses: int, times: int | None) -> bool:
    return times is not None and uses >= times


def miss_line(rule_id: str, description: str, uses: int, times: int | None, why: list[str]) -> str:
    """A scripted answer that did not answer a call, and why (one wording for LLM rules and stand-ins)."""
    reasons = [f"used up ({uses} of {times} uses)"] if used_up(uses, times) else []
    return f"- {rule_id} {description}: {'; '.join(reasons + why)}"


@dataclass(slots=True)
class RuleState:
    rule: Rule
    uses: int = 0

    @property
    def exhausted(self) -> bool:
        return used_up(self.uses, self.rule.times)


@dataclass
class RuleBook:
    """The rules in force, with how often each has answered."""

    states: list[RuleState] = field(default_factory=list)
    _ids: Iterable[int] = field(default_factory=lambda: itertools.count(1))

    def add(self, rule: Rule) -> Rule:
        taken = {state.rule.id for state in self.states}
        if not rule.id:
            new_id = next(rule_id for rule_id in (f"rule-{n}" for n in self._ids) if rule_id not in taken)
            rule = Rule(rule.match, rule.action, rule.delay, rule.times, id=new_id)
        elif rule.id in taken:
            raise RuleError(f"a rule with id {rule.id!r} exists already; ids must be unique")
        self.states.append(RuleState(rule))
        return rule

    def clear(self) -> None:
        self.states.clear()
        self._ids = itertools.count(1)

    def select(self, request: ChatRequest) -> Rule | None:
        """The first matching rule with uses left, counting this use."""
        for state in self.states:
            if not state.exhausted and not state.rule.match.mismatches(request):
                state.uses += 1
                return state.rule
        return None

    def refund(self, rule: Rule) -> None:
        """Give back the use `select` counted, for a call that never reached a worker."""
        for state in self.states:
            if state.rule is rule and state.uses:
                state.uses -= 1
                return

    def explain_miss(self, request: ChatRequest) -> str:
        """What arrived and why each rule did not answer it (strict mode's reject message)."""
        last = request.messages[-1] if request.messages else None
        prompt = (last.content or "") if last else ""
        lines = [
            f"no scripted rule matches this request (strict mode): model {request.model!r}, "
            f"{len(request.messages)} messages, last {last.role.value if last else '-'}: {prompt[:200]!r}"
        ]
        if not self.states:
            lines.append("no rules are defined; add one with the Control service or --rules FILE")
        for state in self.states:
            rule = state.rule
            why = rule.match.mismatches(request)
            lines.append(miss_line(rule.id, rule.match.describe(), state.uses, rule.times, why))
        return "\n".join(lines)


# -- rule files ------------------------------------------------------------------------------------

_RULE_KEYS = {"id", "match", "reply", "reject", "hang", "delay", "times"}
_MATCH_KEYS = {"model", "contains", "regex", "role", "tool", "last"}


def load_rules(path: Path) -> list[Rule]:
    """Rules from a YAML or JSON file (JSON is YAML too); errors name the file and the rule."""
    try:
        with path.open(encoding="utf-8") as handle:  # read from the file, so YAML's errors name it
            document = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as error:
        raise RuleError(f"cannot read rules from {path}: {error}") from None
    if isinstance(document, Mapping):
        document = document.get("rules")
    if not isinstance(document, list):
        raise RuleError(f"{path}: expected `rules:` holding a list of rules")
    rules = []
    for index, item in enumerate(document, start=1):
        try:
            rules.append(rule_from_dict(item))
        except RuleError as error:
            raise RuleError(f"{path}: rule {index}: {error}") from None
    return rules


def rule_from_dict(item: Any) -> Rule:
    """One rule from its plain-data form (as in a rule file)."""
    if not isinstance(item, Mapping):
        raise RuleError(f"a rule is a mapping, got {type(item).__name__}")
    unknown = set(item) - _RULE_KEYS
    if unknown:
        raise RuleError(f"unknown keys {sorted(unknown)}; valid keys: {sorted(_RULE_KEYS)}")
    outcomes = [key for key in ("reply", "reject", "hang") if key in item]
    if len(outcomes) != 1:
        raise RuleError(f"a rule needs exactly one of reply, reject, hang; got {outcomes or 'none'}")
    match_data = item.get("match") or {}
    if not isinstance(match_data, Mapping) or set(match_data) - _MATCH_KEYS:
        raise RuleError(f"match must be a mapping with keys among {sorted(_MATCH_KEYS)}, got {match_data!r}")
    last = match_data.get("last", False)
    if not isinstance(last, bool):
        raise RuleError(f"match.last must be true or false, got {last!r}")
    match = Match(
        **{k: _text(v, k) for k, v in match_data.items() if k not in ("role", "last")},
        role=parse_role(match_data["role"]) if "role" in match_data else None,
        last=last,
    )
    action: Action
    if "reply" in outcomes:
        action = Reply(_reply_message(item["reply"]))
    elif "reject" in outcomes:
        reject = item["reject"]
        if not isinstance(reject, Mapping) or "code" not in reject:
            raise RuleError("reject needs {code: 1-6, message: text}")
        action = Reject(parse_reject_code(reject["code"]), str(reject.get("message", "")))
    else:
        if item["hang"] is not True:
            raise RuleError(f"hang must be true (leave it out to answer), got {item['hang']!r}")
        action = Hang()
    times = item.get("times")
    return Rule(
        match,
        action,
        delay=_number(item.get("delay", 0), "delay", float),
        times=None if times is None else _number(times, "times", int),
        id=str(item.get("id", "")),
    )


def _number(value: Any, key: str, kind: type[float] | type[int]) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RuleError(f"{key} must be a number, got {value!r}")
    try:
        return kind(value)
    except (ValueError, OverflowError):
        raise RuleError(f"{key} must be a number, got {value!r}") from None


def _reply_message(reply: Any) -> AssistantMessage:
    if isinstance(reply, str):
        return AssistantMessage(content=reply)
    if not isinstance(reply, Mapping):
        raise RuleError("reply is a text or {content: text, tool_calls: [{id, name, arguments: {...}}]}")
    calls = []
    for index, call in enumerate(reply.get("tool_calls") or [], start=1):
        if not isinstance(call, Mapping) or "name" not in call:
            raise RuleError(f"tool call {index} needs a name (and optionally id and arguments)")
        arguments = call.get("arguments") or {}
        if not isinstance(arguments, Mapping):
            raise RuleError(f"tool call {index}: arguments must be a mapping name: value, got {arguments!r}")
        calls.append(
            ToolCall(
                id=str(call.get("id") or f"call_{index}"),
                function=FunctionCall(
                    str(call["name"]),
                    tuple(
                        ToolCallArgument(str(k), v if isinstance(v, str) else json.dumps(v))
                        for k, v in arguments.items()
                    ),
                ),
            )
        )
    content = reply.get("content")
    return AssistantMessage(content=None if content is None else str(content), tool_calls=tuple(calls))


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise RuleError(f"match.{key} must be text, got {value!r}")
    return value


def parse_role(value: Any) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise RuleError(f"role {value!r} is not one of {', '.join(r.value for r in Role)}") from None


def parse_reject_code(value: Any) -> RejectCode:
    try:
        return RejectCode(int(value))
    except (TypeError, ValueError):
        valid = ", ".join(f"{int(c)} {c.name}" for c in RejectCode)
        raise RuleError(f"reject code {value!r} is not an IC reject code; valid: {valid}") from None
