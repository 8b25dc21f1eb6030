"""Scripted rules: what a match explains, the order rules answer in, and rule files with their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from icllm_emulator.domain import (
    AssistantMessage,
    ChatRequest,
    FunctionCall,
    Message,
    Reject,
    RejectCode,
    Role,
    SystemMessage,
    Tool,
    ToolCall,
    ToolCallArgument,
    UserMessage,
)
from icllm_emulator.rules import Hang, Match, Reply, Rule, RuleBook, RuleError, load_rules

MODEL = "llama3.1:8b"


def chat(*messages: Message, model: str = MODEL, tools: tuple[Tool, ...] = ()) -> ChatRequest:
    return ChatRequest(model=model, messages=messages, tools=tools)


def reply(text: str) -> Reply:
    return Reply(AssistantMessage(content=text))


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- Match.mismatches --------------------------------------------------------------------------------


def test_match_with_no_conditions_fits_any_request() -> None:
    assert Match().mismatches(chat(UserMessage("anything"))) == []
    assert Match().describe() == "match(any request)"


def test_match_that_fits_reports_no_mismatch() -> None:
    match = Match(model=MODEL, contains="weather", regex=r"\bParis\b", role=Role.USER, tool="get_weather")
    request = chat(UserMessage("weather in Paris?"), tools=(Tool("get_weather"),))

    assert match.mismatches(request) == []


def test_model_mismatch_names_both_models() -> None:
    why = Match(model="qwen3:32b").mismatches(chat(UserMessage("hi")))

    assert why == ["model is 'llama3.1:8b', not 'qwen3:32b'"]


def test_contains_mismatch_names_the_missing_text() -> None:
    why = Match(contains="weather").mismatches(chat(UserMessage("hello")))

    assert why == ["no message contains 'weather'"]


def test_contains_is_case_sensitive() -> None:
    assert Match(contains="Weather").mismatches(chat(UserMessage("weather"))) != []


def test_contains_looks_at_every_message() -> None:
    request = chat(SystemMessage("you forecast the weather"), UserMessage("hello"))

    assert Match(contains="weather").mismatches(request) == []


def test_regex_mismatch_shows_the_pattern() -> None:
    why = Match(regex=r"\d{3}").mismatches(chat(UserMessage("no digits here")))

    assert why == [r"no message matches /\d{3}/"]


def test_regex_searches_anywhere_in_the_text() -> None:
    assert Match(regex="Par.s").mismatches(chat(UserMessage("Weather in Paris today"))) == []


def test_role_limits_contains_to_messages_of_that_role() -> None:
    request = chat(SystemMessage("talk about the weather"), UserMessage("hello"))

    why = Match(contains="weather", role=Role.USER).mismatches(request)

    assert why == ["no user message contains 'weather'"]


def test_role_absent_from_the_request_is_explained() -> None:
    why = Match(role=Role.SYSTEM).mismatches(chat(UserMessage("hello")))

    assert why == ["no system message in the request"]


def test_role_limits_regex_to_messages_of_that_role() -> None:
    request = chat(SystemMessage("code 123"), UserMessage("hello"))

    assert Match(regex=r"\d+", role=Role.USER).mismatches(request) == [r"no user message matches /\d+/"]
    assert Match(regex=r"\d+", role=Role.SYSTEM).mismatches(request) == []


def test_last_looks_at_the_last_message_only() -> None:
    """In a conversation every call repeats the earlier turns: an early prompt is not the turn that asks."""
    first_turn = chat(UserMessage("What's the weather?"))
    second_turn = chat(
        UserMessage("What's the weather?"), AssistantMessage(content="Sunny."), UserMessage("And tomorrow?")
    )
    assert Match(contains="weather").mismatches(second_turn) == []  # every message: matches again
    assert Match(contains="weather", last=True).mismatches(first_turn) == []
    assert Match(contains="weather", last=True).mismatches(second_turn) == [
        "the last message does not contain 'weather'"
    ]
    assert Match(regex="tomorrow", last=True).mismatches(second_turn) == []
    assert Match(regex="^What", last=True).mismatches(second_turn) == [
        "the last message does not match /^What/"
    ]


def test_last_with_role_asks_that_the_last_message_has_that_role() -> None:
    request = chat(UserMessage("weather?"), AssistantMessage(content="Calling a tool."))
    assert Match(role=Role.USER, last=True).mismatches(request) == [
        "the last message is an assistant message, not a user message"
    ]
    assert Match(role=Role.ASSISTANT, contains="tool", last=True).mismatches(request) == []
    assert Match(contains="weather", role=Role.USER).mismatches(request) == []


def test_last_alone_is_refused_naming_what_it_narrows() -> None:
    with pytest.raises(RuleError, match=r"^last=True narrows contains, regex or role to the last message"):
        Match(last=True)


def test_last_is_shown_in_the_description() -> None:
    assert Match(contains="x", last=True).describe() == "match(contains='x', last=True)"


def test_tool_mismatch_lists_the_offered_tools() -> None:
    request = chat(UserMessage("hi"), tools=(Tool("get_time"), Tool("search")))

    why = Match(tool="get_weather").mismatches(request)

    assert why == ["tool 'get_weather' is not offered (offered: get_time, search)"]


def test_tool_mismatch_without_tools_says_none_are_offered() -> None:
    why = Match(tool="get_weather").mismatches(chat(UserMessage("hi")))

    assert why == ["tool 'get_weather' is not offered (offered: none)"]


def test_every_failed_condition_is_explained() -> None:
    match = Match(model="qwen3:32b", contains="x", tool="t")

    why = match.mismatches(chat(UserMessage("hello")))

    assert len(why) == 3
    assert any("model" in reason for reason in why)
    assert any("contains 'x'" in reason for reason in why)
    assert any("tool 't'" in reason for reason in why)


def test_assistant_message_without_content_counts_as_empty_text() -> None:
    request = chat(
        UserMessage("call it"),
        AssistantMessage(tool_calls=(ToolCall("c1", FunctionCall("f")),)),
    )

    assert Match(contains="call", role=Role.ASSISTANT).mismatches(request) == [
        "no assistant message contains 'call'"
    ]


def test_invalid_regex_raises_rule_error_naming_the_regex() -> None:
    with pytest.raises(RuleError, match=r"regex '\(unclosed' is not a valid regular expression"):
        Match(regex="(unclosed")


def test_describe_shows_the_set_conditions() -> None:
    match = Match(contains="weather", role=Role.USER)

    assert match.describe() == "match(contains='weather', role='user')"


# -- RuleBook ----------------------------------------------------------------------------------------


def test_rules_are_tried_in_the_order_they_were_added() -> None:
    book = RuleBook()
    first = book.add(Rule(Match(contains="weather"), reply("first")))
    book.add(Rule(Match(), reply("second")))

    assert book.select(chat(UserMessage("the weather"))) == first
    assert book.select(chat(UserMessage("anything else"))) == book.states[1].rule


def test_rule_with_times_is_used_up_and_the_next_rule_answers() -> None:
    book = RuleBook()
    once = book.add(Rule(Match(), reply("once"), times=2))
    fallback = book.add(Rule(Match(), reply("fallback")))
    request = chat(UserMessage("hi"))

    chosen = [book.select(request) for _ in range(4)]

    assert chosen == [once, once, fallback, fallback]
    assert book.states[0].exhausted
    assert book.states[1].uses == 2


def test_refunded_use_lets_a_used_up_rule_answer_again() -> None:
    book = RuleBook()
    once = book.add(Rule(Match(), reply("once"), times=1))
    request = chat(UserMessage("hi"))
    assert book.select(request) == once

    book.refund(once)

    assert book.select(request) == once
    assert book.select(request) is None


def test_no_matching_rule_selects_nothing() -> None:
    book = RuleBook()
    book.add(Rule(Match(contains="weather"), reply("sunny")))

    assert book.select(chat(UserMessage("hello"))) is None
    assert book.states[0].uses == 0, "a miss must not use up the rule"


def test_rules_get_ids_in_order() -> None:
    book = RuleBook()

    ids = [book.add(Rule(Match(), reply(str(n)))).id for n in range(3)]

    assert ids == ["rule-1", "rule-2", "rule-3"]


def test_duplicate_rule_id_is_refused() -> None:
    book = RuleBook()
    book.add(Rule(Match(), reply("a"), id="greeting"))

    with pytest.raises(RuleError, match="'greeting' exists already"):
        book.add(Rule(Match(), reply("b"), id="greeting"))


def test_generated_id_never_repeats_an_id_given_by_the_user() -> None:
    book = RuleBook()
    book.add(Rule(Match(), reply("named"), id="rule-1"))

    generated = book.add(Rule(Match(), reply("unnamed")))

    assert generated.id != "rule-1"
    assert len({state.rule.id for state in book.states}) == 2


def test_clear_forgets_rules_and_restarts_ids() -> None:
    book = RuleBook()
    book.add(Rule(Match(), reply("a")))
    book.add(Rule(Match(), reply("b")))

    book.clear()

    assert book.select(chat(UserMessage("hi"))) is None
    assert book.add(Rule(Match(), reply("c"))).id == "rule-1"


def test_explain_miss_names_the_prompt_and_why_each_rule_failed() -> None:
    book = RuleBook()
    book.add(Rule(Match(contains="weather"), reply("sunny"), id="weather"))
    book.add(Rule(Match(), reply("once"), times=1, id="one-shot"))
    request = chat(UserMessage("what time is it?"))
    book.select(request)

    text = book.explain_miss(request)

    assert "'what time is it?'" in text
    assert "- weather match(contains='weather'): no message contains 'weather'" in text
    assert "- one-shot match(any request): used up (1 of 1 uses)" in text


def test_explain_miss_without_rules_says_how_to_add_one() -> None:
    assert "no rules are defined" in RuleBook().explain_miss(chat(UserMessage("hi")))


@pytest.mark.parametrize("delay", [-1.0, float("nan"), float("inf")])
def test_rule_refuses_a_delay_that_is_not_a_finite_wait(delay: float) -> None:
    with pytest.raises(RuleError, match=f"delay must be a finite number of seconds, 0 or more, got {delay}"):
        Rule(Match(), Hang(), delay=delay)


def test_rule_refuses_zero_times() -> None:
    with pytest.raises(RuleError, match="times must be 1 or more"):
        Rule(Match(), Hang(), times=0)


# -- rule files ------------------------------------------------------------------------------------


YAML_RULES = """\
rules:
  - id: greet
    match: {contains: hello, role: user}
    reply: Hello there!
  - match: {tool: get_weather}
    reply:
      content: Let me check.
      tool_calls:
        - id: call_1
          name: get_weather
          arguments: {city: Paris, days: 3, lat: 48.85, detailed: true, tags: [a, b], none: null}
  - match: {regex: "^fail"}
    reject: {code: 4, message: scripted failure}
  - match: {model: "qwen3:32b"}
    hang: true
  - reply: slow answer
    delay: 2.5
    times: 2
"""


def test_yaml_rule_file_loads_every_kind_of_rule(tmp_path: Path) -> None:
    rules = load_rules(write(tmp_path, "rules.yaml", YAML_RULES))

    assert len(rules) == 5
    greet, tool_call, reject, hang, slow = rules
    assert greet.id == "greet"
    assert greet.match == Match(contains="hello", role=Role.USER)
    assert greet.action == reply("Hello there!")
    assert tool_call.match == Match(tool="get_weather")
    assert reject.match == Match(regex="^fail")
    assert reject.action == Reject(RejectCode.CANISTER_REJECT, "scripted failure")
    assert hang.match == Match(model="qwen3:32b")
    assert isinstance(hang.action, Hang)
    assert slow.action == reply("slow answer")
    assert (slow.delay, slow.times) == (2.5, 2)
    assert (greet.delay, greet.times) == (0.0, None)


def test_reply_with_tool_calls_turns_arguments_into_text(tmp_path: Path) -> None:
    rules = load_rules(write(tmp_path, "rules.yaml", YAML_RULES))

    action = rules[1].action

    assert action == Reply(
        AssistantMessage(
            content="Let me check.",
            tool_calls=(
                ToolCall(
                    "call_1",
                    FunctionCall(
                        "get_weather",
                        (
                            ToolCallArgument("city", "Paris"),
                            ToolCallArgument("days", "3"),
                            ToolCallArgument("lat", "48.85"),
                            ToolCallArgument("detailed", "true"),
                            ToolCallArgument("tags", '["a", "b"]'),
                            ToolCallArgument("none", "null"),
                        ),
                    ),
                ),
            ),
        )
    )


def test_tool_call_without_id_gets_a_numbered_one_and_no_content(tmp_path: Path) -> None:
    path = write(tmp_path, "rules.yaml", "rules:\n  - reply: {tool_calls: [{name: a}, {name: b}]}\n")

    action = load_rules(path)[0].action

    assert isinstance(action, Reply)
    assert action.message.content is None
    assert [call.id for call in action.message.tool_calls] == ["call_1", "call_2"]
    assert [call.function.arguments for call in action.message.tool_calls] == [(), ()]


def test_json_rule_file_works_too(tmp_path: Path) -> None:
    document = {
        "rules": [
            {"match": {"contains": "hi"}, "reply": "hello", "times": 1},
            {"reject": {"code": 2, "message": "busy"}},
        ]
    }
    path = write(tmp_path, "rules.json", json.dumps(document))

    first, second = load_rules(path)

    assert first.match == Match(contains="hi")
    assert first.action == reply("hello")
    assert first.times == 1
    assert second.action == Reject(RejectCode.SYS_TRANSIENT, "busy")


def test_rule_file_match_may_ask_for_the_last_message(tmp_path: Path) -> None:
    rules = write(tmp_path, "rules.yaml", "- match: {contains: tomorrow, last: true}\n  reply: Rain.\n")
    (rule,) = load_rules(rules)
    assert rule.match == Match(contains="tomorrow", last=True)
    with pytest.raises(RuleError, match=r"match\.last must be true or false, got 'yes please'"):
        load_rules(write(tmp_path, "bad.yaml", "- match: {contains: x, last: yes please}\n  reply: y\n"))


def test_rule_file_may_be_a_bare_list(tmp_path: Path) -> None:
    rules = load_rules(write(tmp_path, "rules.yaml", "- reply: hi\n"))

    assert [rule.action for rule in rules] == [reply("hi")]


def test_loaded_rules_answer_in_file_order(tmp_path: Path) -> None:
    book = RuleBook()
    for rule in load_rules(write(tmp_path, "rules.yaml", YAML_RULES)):
        book.add(rule)

    chosen = book.select(chat(UserMessage("hello, weather?"), tools=(Tool("get_weather"),)))

    assert chosen is not None and chosen.id == "greet"


def rule_file_error(tmp_path: Path, body: str) -> str:
    path = write(tmp_path, "broken.yaml", body)
    with pytest.raises(RuleError) as caught:
        load_rules(path)
    message = str(caught.value)
    assert str(path) in message, "a rule file error must name the file"
    return message


def test_unknown_key_is_refused_listing_the_valid_keys(tmp_path: Path) -> None:
    message = rule_file_error(tmp_path, "rules:\n  - reply: ok\n  - reply: hi\n    answer: oops\n")

    assert "rule 2:" in message
    assert "unknown keys ['answer']" in message
    assert "valid keys: ['delay', 'hang', 'id', 'match', 'reject', 'reply', 'times']" in message


def test_two_outcomes_in_one_rule_are_refused(tmp_path: Path) -> None:
    message = rule_file_error(tmp_path, "rules:\n  - reply: hi\n    hang: true\n")

    assert "rule 1:" in message
    assert "exactly one of reply, reject, hang" in message
    assert "['reply', 'hang']" in message


def test_rule_without_an_outcome_is_refused(tmp_path: Path) -> None:
    message = rule_file_error(tmp_path, "rules:\n  - match: {contains: hi}\n")

    assert "rule 1:" in message
    assert "exactly one of reply, reject, hang; got none" in message


def test_bad_reject_code_is_refused_listing_the_valid_codes(tmp_path: Path) -> None:
    message = rule_file_error(tmp_path, "rules:\n  - reply: ok\n  - reject: {code: 9, message: no}\n")

    assert "rule 2:" in message
    assert "reject code 9 is not an IC reject code" in message
    assert (
        "valid: 1 SYS_FATAL, 2 SYS_TRANSIENT, 3 DESTINATION_INVALID, 4 CANISTER_REJECT, "
        "5 CANISTER_ERROR, 6 SYS_UNKNOWN"
    ) in message


def test_reject_without_a_code_is_refused(tmp_path: Path) -> None:
    message = rule_file_error(tmp_path, "rules:\n  - reject: {message: no}\n")

    assert "rule 1: reject needs {code: 1-6, message: text}" in message


def test_bad_role_is_refused_listing_the_roles(tmp_path: Path) -> None:
    message = rule_file_error(tmp_path, "rules:\n  - match: {role: boss}\n    reply: hi\n")

    assert "rule 1:" in message
    assert "role 'boss' is not one of user, system, assistant, tool" in message


def test_unknown_match_key_is_refused_listing_the_match_keys(tmp_path: Path) -> None:
    message = rule_file_error(tmp_path, "rules:\n  - match: {text: hi}\n    reply: hi\n")

    assert "rule 1:" in message
    assert "['contains', 'last', 'model', 'regex', 'role', 'tool']" in message


def test_invalid_regex_in_a_file_names_file_rule_and_regex(tmp_path: Path) -> None:
    message = rule_file_error(tmp_path, "rules:\n  - match: {regex: '[a-'}\n    reply: hi\n")

    assert "rule 1: regex '[a-' is not a valid regular expression" in message


def test_non_numeric_delay_is_a_rule_error(tmp_path: Path) -> None:
    message = rule_file_error(tmp_path, "rules:\n  - reply: hi\n    delay: soon\n")

    assert "rule 1: delay must be a number, got 'soon'" in message


def test_non_numeric_times_is_a_rule_error(tmp_path: Path) -> None:
    message = rule_file_error(tmp_path, "rules:\n  - reply: hi\n    times: many\n")

    assert "rule 1: times must be a number, got 'many'" in message


def test_zero_times_in_a_file_is_a_rule_error(tmp_path: Path) -> None:
    message = rule_file_error(tmp_path, "rules:\n  - reply: hi\n    times: 0\n")

    assert "rule 1: times must be 1 or more" in message


def test_hang_false_is_refused_rather_than_hanging(tmp_path: Path) -> None:
    message = rule_file_error(tmp_path, "rules:\n  - hang: false\n")

    assert "rule 1: hang must be true" in message


def test_tool_call_arguments_must_be_a_mapping(tmp_path: Path) -> None:
    message = rule_file_error(tmp_path, "rules:\n  - reply: {tool_calls: [{name: f, arguments: [1, 2]}]}\n")

    assert "rule 1: tool call 1: arguments must be a mapping" in message


def test_tool_call_without_a_name_is_refused(tmp_path: Path) -> None:
    message = rule_file_error(tmp_path, "rules:\n  - reply: {tool_calls: [{id: c1}]}\n")

    assert "rule 1: tool call 1 needs a name" in message


def test_file_without_a_rule_list_is_refused(tmp_path: Path) -> None:
    message = rule_file_error(tmp_path, "rules: {reply: hi}\n")

    assert "expected `rules:` holding a list of rules" in message


def test_malformed_yaml_is_a_rule_error(tmp_path: Path) -> None:
    message = rule_file_error(tmp_path, "rules: [unclosed\n")

    assert "cannot read rules from" in message


def test_missing_rule_file_is_a_rule_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"

    with pytest.raises(RuleError, match="cannot read rules from") as caught:
        load_rules(path)

    assert str(path) in str(caught.value)
