"""Cassettes: the file format, record modes, matching, misses, scrubbing, crash safety, `cassette` commands.

Most tests drive the cassette deck (`CassetteDeck`) directly, in front of a small backend that
echoes the prompt; the record modes and misses are also driven through a running emulator's gRPC
`Control.UseCassette`, and the process-level options through real `icllm-emulator` processes.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from icllm_emulator._proto.icllm.v1 import control_pb2 as cpb
from icllm_emulator.backends import Backend
from icllm_emulator.backends.fake import FakeBackend
from icllm_emulator.cassettes import format as cassette_format
from icllm_emulator.cassettes.deck import CassetteDeck, CassetteSpec
from icllm_emulator.cassettes.format import CassetteError, load_cassette
from icllm_emulator.cassettes.matching import MATCHERS, register_matcher
from icllm_emulator.cassettes.scrub import is_principal
from icllm_emulator.cassettes.settings import CassetteSettings, RecordMode
from icllm_emulator.cli import main
from icllm_emulator.client import LlmClient, LlmReject, ParameterType, parameter, tool, user
from icllm_emulator.config import ConfigError
from icllm_emulator.domain import (
    Answer,
    AssistantMessage,
    ChatRequest,
    FunctionCall,
    Parameters,
    Property,
    Reject,
    RejectCode,
    SystemMessage,
    Tool,
    ToolCall,
    ToolCallArgument,
    ToolMessage,
    UserMessage,
)
from tests.conftest import Stubs
from tests.processes.test_cli import Child, run_cli, spawn, start_serve
from tests.waiting import wait_until

__all__ = ["spawn"]  # a fixture

MODEL = "llama3.1:8b"
CAP = 1000


class Echo(Backend):
    """A backend that answers with its prompt: what a test needs to see scrubbing and replay at work."""

    name = "echo"

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        self.secrets = secrets
        self.calls = 0

    def answer_now(self, request: ChatRequest, max_output_tokens: int | None) -> Answer:
        self.calls += 1
        text = request.messages[-1].content or ""
        if text.startswith("reject:"):
            raise Reject(RejectCode.CANISTER_REJECT, text.removeprefix("reject:"))
        if text.startswith("busy:"):
            raise Reject(RejectCode.SYS_TRANSIENT, "the model is busy, try again")
        return Answer(AssistantMessage(content=f"echo: {text}"), output_tokens=len(text.split()) + 1)

    async def generate(self, request: ChatRequest, max_output_tokens: int | None) -> Answer:
        return self.answer_now(request, max_output_tokens)

    async def aclose(self) -> None:
        """Nothing to release."""


def ask(text: str, model: str = MODEL) -> ChatRequest:
    return ChatRequest(model, (UserMessage(text),))


def deck_with(
    path: Path, mode: RecordMode = RecordMode.NONE, inner: Any = None, **spec: Any
) -> tuple[CassetteDeck, Any]:
    backend = Echo() if inner is None else inner
    deck = CassetteDeck(backend, CassetteSettings())
    deck.use(CassetteSpec(path=str(path), record_mode=mode, **spec))
    return deck, backend


def reply_of(deck: CassetteDeck, request: ChatRequest, cap: int | None = CAP) -> Answer:
    answer = deck.answer_now(request, cap)
    assert answer is not None
    return answer


def recorded(path: Path, requests: list[ChatRequest], inner: Any = None) -> list[Answer]:
    """Record these requests into a new cassette; the answers the backend gave."""
    deck, _ = deck_with(path, RecordMode.ONCE, inner)
    answers = [reply_of(deck, request) for request in requests]
    deck.eject()
    return answers


def write_yaml(path: Path, interactions: list[dict[str, Any]], version: Any = 1) -> Path:
    """A cassette as a person would write it (unsigned, so the safe loader reads it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"version": version, "interactions": interactions}, sort_keys=False))
    return path


def interaction(text: str, answer: str, model: str = MODEL) -> dict[str, Any]:
    return {
        "request": {"method": "v1_chat", "model": model, "messages": [{"role": "user", "content": text}]},
        "answer": {"content": answer, "output_tokens": 2, "truncated": False},
    }


# -- the file format ---------------------------------------------------------------------------------


def test_a_recording_is_yaml_with_the_request_the_answer_and_when_and_from_what(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    (answer,) = recorded(path, [ask("Weather in Zurich?")], FakeBackend(seed=3))

    text = path.read_text()
    data = yaml.safe_load(text)
    assert data["version"] == 1
    (only,) = data["interactions"]
    assert only["request"] == {
        "method": "v1_chat",
        "model": MODEL,
        "messages": [{"role": "user", "content": "Weather in Zurich?"}],
        "max_output_tokens": CAP,
    }
    assert only["answer"] == {
        "content": answer.message.content,
        "output_tokens": answer.output_tokens,
        "truncated": False,
    }
    assert only["recorded"]["backend"] == "fake" and only["recorded"]["model"] == MODEL
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", only["recorded"]["at"])


def rich_request() -> ChatRequest:
    weather = Tool(
        "get_weather",
        "Current weather",
        Parameters(
            properties=(
                Property("city", "string", "a city"),
                Property("unit", "string", enum=("celsius", "fahrenheit")),
                Property("days", "integer"),
            ),
            required=("city",),
        ),
    )
    call = ToolCall("call_1", FunctionCall("get_weather", (ToolCallArgument("city", "Zurich"),)))
    return ChatRequest(
        MODEL,
        (
            SystemMessage("You are terse.\nAnswer in one line."),
            UserMessage("Weather in Zurich?"),
            AssistantMessage(content=None, tool_calls=(call,)),
            ToolMessage('{"temp": 21}', "call_1"),
            UserMessage("And tomorrow?"),
        ),
        tools=(weather, Tool("no_parameters")),
    )


class Scripted(Backend):
    """A backend that gives one chosen outcome."""

    name = "scripted"

    def __init__(self, outcome: Answer | Reject) -> None:
        self.outcome = outcome

    def answer_now(self, request: ChatRequest, max_output_tokens: int | None) -> Answer:
        if isinstance(self.outcome, Reject):
            raise self.outcome
        return self.outcome

    async def generate(self, request: ChatRequest, max_output_tokens: int | None) -> Answer:
        return self.answer_now(request, max_output_tokens)

    async def aclose(self) -> None:
        """Nothing to release."""


@pytest.mark.parametrize(
    "outcome",
    [
        Answer(
            AssistantMessage(
                content="Sunny.\nWarm: 21 degrees.",
                tool_calls=(
                    ToolCall(
                        "call_2",
                        FunctionCall(
                            "get_weather", (ToolCallArgument("city", "Bern"), ToolCallArgument("days", "3"))
                        ),
                    ),
                    ToolCall(
                        "call_3",
                        FunctionCall("log", (ToolCallArgument("x", "1"), ToolCallArgument("x", "true"))),
                    ),
                ),
            ),
            output_tokens=9,
            truncated=True,
        ),
        Reject(RejectCode.CANISTER_ERROR, "the model trapped"),
    ],
    ids=["answer", "reject"],
)
def test_every_part_of_a_conversation_survives_writing_and_reading(
    tmp_path: Path, outcome: Answer | Reject
) -> None:
    path = tmp_path / "c.yaml"
    deck, _ = deck_with(path, RecordMode.ONCE, Scripted(outcome))
    if isinstance(outcome, Reject):
        with pytest.raises(Reject):
            deck.answer_now(rich_request(), CAP)
    else:
        reply_of(deck, rich_request())
    deck.eject()

    (read,) = load_cassette(path).interactions
    assert read.request == rich_request()
    assert read.max_output_tokens == CAP
    assert read.outcome == outcome


def test_text_of_several_lines_is_written_as_a_literal_block_so_diffs_show_lines(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    recorded(path, [ask("first line\nsecond line")])
    text = path.read_text()
    assert "    - role: user\n      content: |-\n        first line\n        second line\n" in text
    assert "  answer:\n    content: |-\n      echo: first line\n      second line\n" in text


def test_a_cassette_edited_by_hand_is_read_by_the_safe_loader_and_replays_the_edit(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    recorded(path, [ask("Weather?")])
    text = path.read_text()
    assert text.startswith("# pytest-icllm cassette; sha256 of the rest: ")
    path.write_text(text.replace("content: 'echo: Weather?'", "content: Rain, all day."))

    deck, backend = deck_with(path)
    assert reply_of(deck, ask("Weather?")).message.content == "Rain, all day."
    assert backend.calls == 0


def test_the_fast_reader_reads_exactly_what_the_safe_loader_reads(tmp_path: Path) -> None:
    tricky = ["1e3", "-.5", "inf", ".NaN", "0o17", "yes", "~", "null", "'quoted'", "a: b", "# not a comment"]
    tricky += ["tab\there", "trailing ", " leading", "é😀", "x\r\ny", "bell\x07", "line\u2028separator"]
    tricky += ["next\x85line", "  \n  indented\n", "\ufeffmark", "1_000", "0x1F", "12:30", "- item"]
    path = tmp_path / "c.yaml"
    recorded(path, [ask(text) for text in tricky])
    text = path.read_text()
    assert text.startswith("# pytest-icllm cassette; sha256 of the rest: ")  # the fast reader reads it
    fast = cassette_format.parse_text(text, "fast")
    safe = cassette_format.parse_text(text + "\n", "safe")  # a changed byte: the signature no longer holds
    assert fast == safe
    assert [i.request.messages[0].content for i in load_cassette(path).interactions] == tricky


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (
            2,
            "cassette format version 2 is not supported: it was written by a newer pytest-icllm; upgrade "
            "pytest-icllm (this one reads version 1), or re-record the cassette with this one (record mode "
            "all)",
        ),
        (
            0,
            "cassette format version 0 is not supported: re-record it with record mode all (this "
            "pytest-icllm reads and writes version 1)",
        ),
        (
            "one",
            "cassette format version 'one' is not supported: re-record it with record mode all (this "
            "pytest-icllm reads and writes version 1)",
        ),
    ],
)
def test_a_file_of_another_version_fails_saying_what_to_do(
    tmp_path: Path, version: Any, message: str
) -> None:
    path = write_yaml(tmp_path / "c.yaml", [], version=version)
    with pytest.raises(CassetteError) as raised:
        load_cassette(path)
    assert str(raised.value) == f"{path}: {message}"


def test_a_file_without_a_version_is_not_taken_for_a_cassette(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("interactions: []\n")
    with pytest.raises(CassetteError, match="has no 'version' field, so it is not a pytest-icllm cassette"):
        load_cassette(path)


def test_loading_never_runs_code_even_from_a_signed_file(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    body = f"version: 1\ninteractions: !!python/object/apply:os.system ['touch {marker}']\n"
    plain = tmp_path / "plain.yaml"
    plain.write_text(body)
    with pytest.raises(CassetteError, match=r"not valid YAML at line 2, column 15: .*python/object/apply"):
        load_cassette(plain)
    signed = tmp_path / "signed.yaml"
    digest = hashlib.sha256(body.encode()).hexdigest()
    signed.write_text(f"# pytest-icllm cassette; sha256 of the rest: {digest}\n{body}")
    with pytest.raises(CassetteError, match=r"interactions\[0\]: must be a mapping, got text"):
        load_cassette(signed)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda i: i["request"]["messages"][0].update(role="bot"),
            "interactions[0].request.messages[0].role: 'bot' is not a role; "
            "valid roles: user, system, assistant, tool",
        ),
        (
            lambda i: i.update(reject={"code": 4, "message": "no"}),
            "interactions[0]: needs exactly one of 'answer' (what the backend answered) or 'reject'",
        ),
        (
            lambda i: i.update(reject={"code": 9, "message": "no"}) or i.pop("answer"),
            "interactions[0].reject.code: 9 is not an IC reject code; valid codes: 1 SYS_FATAL, 2 "
            "SYS_TRANSIENT, "
            "3 DESTINATION_INVALID, 4 CANISTER_REJECT, 5 CANISTER_ERROR, 6 SYS_UNKNOWN",
        ),
        (
            lambda i: i.update(anwser=i.pop("answer")),
            "interactions[0]: unknown field 'anwser'; valid fields: answer, recorded, reject, request",
        ),
        (
            lambda i: i["request"].update(method="v2_chat"),
            "interactions[0].request.method: 'v2_chat' is not a method; valid methods: v0_chat, v1_chat",
        ),
        (
            lambda i: i["answer"].update(output_tokens=-1),
            "interactions[0].answer.output_tokens: must be a whole number of 0 or more, got a number (-1)",
        ),
    ],
    ids=["role", "answer-and-reject", "reject-code", "typo", "method", "tokens"],
)
def test_a_schema_error_names_the_file_the_place_and_what_is_valid(
    tmp_path: Path, change: Callable[[dict[str, Any]], Any], message: str
) -> None:
    item = interaction("Hi", "Hello")
    change(item)
    path = write_yaml(tmp_path / "c.yaml", [item])
    with pytest.raises(CassetteError) as raised:
        load_cassette(path)
    assert str(raised.value) == f"{path}: {message}"


def test_a_syntax_error_gives_the_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("version: 1\ninteractions:\n- request: {model: [\n")
    with pytest.raises(
        CassetteError, match=r"c\.yaml: not valid YAML at line 4, column 1: .*delete the file"
    ):
        load_cassette(path)


# -- record modes ------------------------------------------------------------------------------------


def use(stubs: Stubs, path: Path, mode: str = "none", **fields: Any) -> cpb.UseCassetteResponse:
    response: cpb.UseCassetteResponse = stubs.control.UseCassette(
        cpb.UseCassetteRequest(path=str(path), record_mode=mode, **fields), timeout=30
    )
    return response


def eject(stubs: Stubs) -> cpb.CassetteStats:
    stats: cpb.CassetteStats = stubs.control.EjectCassette(cpb.EjectCassetteRequest(), timeout=30)
    return stats


@pytest.fixture
def llm(emu: Stubs) -> Iterator[LlmClient]:
    with LlmClient(emu.emulator.ports.grpc_target) as client:
        yield client


def configure_seed(stubs: Stubs, seed: int) -> None:
    stubs.control.Configure(cpb.ConfigureRequest(seed=seed), timeout=30)


def test_none_replays_the_recording_not_the_backend(emu: Stubs, llm: LlmClient, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    use(emu, path, "once")
    recorded_answer = llm.prompt(MODEL, "Weather?")
    eject(emu)
    configure_seed(emu, 7)
    live = llm.prompt(MODEL, "Weather?")

    response = use(emu, path)
    assert (response.exists, response.interactions, response.effective_mode) == (True, 1, "none")
    assert llm.prompt(MODEL, "Weather?") == recorded_answer != live
    stats = eject(emu)
    assert (stats.loaded, stats.replayed, stats.recorded, stats.written) == (1, 1, 0, False)


def test_once_records_a_new_cassette_and_only_replays_an_existing_one(
    emu: Stubs, llm: LlmClient, tmp_path: Path
) -> None:
    path = tmp_path / "deep" / "c.yaml"
    response = use(emu, path, "once")
    assert (response.exists, response.effective_mode, response.path) == (False, "once", str(path))
    first, second = llm.prompt(MODEL, "one"), llm.prompt(MODEL, "two")
    stats = eject(emu)
    assert (stats.recorded, stats.written) == (2, True)

    assert use(emu, path, "once").effective_mode == "none"
    assert [llm.prompt(MODEL, "two"), llm.prompt(MODEL, "one")] == [second, first]
    with pytest.raises(LlmReject) as raised:
        llm.prompt(MODEL, "three")
    assert raised.value.code is RejectCode.CANISTER_REJECT
    assert raised.value.message.endswith(
        "record mode once records only into a cassette that does not exist yet, and this one does: delete it "
        "to record it again, or use record mode new_episodes to add to it"
    )
    stats = eject(emu)
    assert (stats.replayed, stats.recorded, len(stats.misses), stats.written) == (2, 0, 1, False)


def test_new_episodes_replays_what_matches_and_records_the_rest(
    emu: Stubs, llm: LlmClient, tmp_path: Path
) -> None:
    path = tmp_path / "c.yaml"
    use(emu, path, "once")
    old = llm.prompt(MODEL, "old")
    eject(emu)
    configure_seed(emu, 7)

    use(emu, path, "new_episodes")
    assert llm.prompt(MODEL, "old") == old
    new = llm.prompt(MODEL, "new")
    stats = eject(emu)
    assert (stats.replayed, stats.recorded) == (1, 1)

    read = load_cassette(path).interactions
    assert [i.request.messages[0].content for i in read] == ["old", "new"]
    assert [i.outcome.message.content for i in read if isinstance(i.outcome, Answer)] == [old, new]


def test_all_records_anew_without_replaying(emu: Stubs, llm: LlmClient, tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    use(emu, path, "once")
    old = llm.prompt(MODEL, "question")
    llm.prompt(MODEL, "gone after re-recording")
    eject(emu)
    configure_seed(emu, 7)

    use(emu, path, "all")
    new = llm.prompt(MODEL, "question")
    assert new != old
    assert eject(emu).recorded == 1
    (only,) = load_cassette(path).interactions
    assert isinstance(only.outcome, Answer) and only.outcome.message.content == new


def test_record_modes_and_paths_are_checked_when_a_cassette_is_loaded(emu: Stubs, tmp_path: Path) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        (
            dict(path=str(tmp_path / "c.yaml"), record_mode="sometimes"),
            "record mode 'sometimes' is not valid; ",
        ),
        (
            dict(path=str(tmp_path / "c.json")),
            "a cassette is a YAML file; give a path ending in .yaml or .yml",
        ),
        (dict(path=str(tmp_path / "c.yaml"), match_on=["mesages"]), "match_on: unknown matcher 'mesages'; "),
        (
            dict(path=str(tmp_path / "c.yaml"), scrub_patterns=["(unclosed"]),
            "is not a valid regular expression",
        ),
        (
            dict(path=str(tmp_path / "c.yaml"), scrubbers=["nosuchmodule:step"]),
            "cannot import 'nosuchmodule'",
        ),
    ]
    for fields, message in cases:
        with pytest.raises(grpc.RpcError) as raised:
            emu.control.UseCassette(cpb.UseCassetteRequest(**fields), timeout=30)
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert message in raised.value.details()


def test_a_broken_cassette_is_refused_when_loaded_with_what_is_wrong(emu: Stubs, tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "c.yaml", [], version=3)
    with pytest.raises(grpc.RpcError) as raised:
        use(emu, path)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith(f"{path}: cassette format version 3 is not supported")


def test_scripted_answers_are_neither_recorded_nor_replayed(
    emu: Stubs, llm: LlmClient, tmp_path: Path
) -> None:
    path = tmp_path / "c.yaml"
    emu.control.AddRules(
        cpb.AddRulesRequest(
            rules=[
                cpb.Rule(
                    match=cpb.RuleMatch(contains="scripted"),
                    action=cpb.RuleAction(reply=cpb.ReplyAction(content="from the script")),
                )
            ]
        ),
        timeout=30,
    )
    use(emu, path, "once")
    assert llm.prompt(MODEL, "scripted question") == "from the script"
    llm.prompt(MODEL, "free question")
    eject(emu)
    assert [i.request.messages[0].content for i in load_cassette(path).interactions] == ["free question"]


def test_the_replay_backend_without_a_cassette_says_how_to_load_one(
    start_emulator: Callable[..., Stubs],
) -> None:
    stubs = start_emulator(backend="replay")
    with LlmClient(stubs.emulator.ports.grpc_target) as client, pytest.raises(LlmReject) as raised:
        client.prompt(MODEL, "hi")
    assert raised.value.code is RejectCode.CANISTER_REJECT
    assert raised.value.message.startswith(
        "the replay backend answers from cassettes only, and no cassette is in use: start the emulator with "
        "--cassettes DIR (it then replays DIR/default.yaml), or load one with Control.UseCassette"
    )


def test_the_replay_backend_cannot_record(start_emulator: Callable[..., Stubs], tmp_path: Path) -> None:
    stubs = start_emulator(backend="replay")
    with pytest.raises(grpc.RpcError) as raised:
        use(stubs, tmp_path / "c.yaml", "once")
    assert "record mode once needs a backend to record from, and the replay backend only replays" in (
        raised.value.details()
    )


# -- matching ----------------------------------------------------------------------------------------


def test_identical_requests_replay_their_recordings_in_order_then_miss(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "c.yaml", [interaction("Roll a die", "4"), interaction("Roll a die", "2")])
    deck, backend = deck_with(path)
    assert [reply_of(deck, ask("Roll a die")).message.content for _ in range(2)] == ["4", "2"]
    with pytest.raises(Reject) as raised:
        deck.answer_now(ask("Roll a die"), CAP)
    assert (
        "this request was recorded 2 time(s), and each recording was replayed already: a call made more "
        "often "
        "than when it was recorded is a miss (allow_playback_repeats=True replays the last recording again)"
    ) in raised.value.message
    assert backend.calls == 0


def test_allowed_playback_repeats_answer_with_the_last_recording_again(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "c.yaml", [interaction("Roll a die", "4"), interaction("Roll a die", "2")])
    deck, _ = deck_with(path, allow_playback_repeats=True)
    assert [reply_of(deck, ask("Roll a die")).message.content for _ in range(4)] == ["4", "2", "2", "2"]


def test_matching_on_chosen_parts_ignores_the_others(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "c.yaml", [interaction("Hi", "Hello", model="qwen3:32b")])
    deck, _ = deck_with(path, match_on=("messages",))
    assert reply_of(deck, ask("Hi", model=MODEL)).message.content == "Hello"

    strict, _ = deck_with(path)
    with pytest.raises(Reject, match=r"differences from #1: model \(same method, messages, tools\)"):
        strict.answer_now(ask("Hi", model=MODEL), CAP)


def test_a_matcher_of_your_own_can_be_registered(tmp_path: Path) -> None:
    register_matcher("shouting", lambda doc: [m.get("content", "").upper() for m in doc["messages"]])
    try:
        path = write_yaml(tmp_path / "c.yaml", [interaction("hello there", "Hi")])
        deck, _ = deck_with(path, match_on=("method", "shouting"))
        assert reply_of(deck, ask("HELLO there")).message.content == "Hi"
    finally:
        MATCHERS.pop("shouting")


def test_an_answer_recorded_under_a_higher_cap_is_cut_at_the_callers_cap(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    recorded(path, [ask("one two three four five six")])
    deck, _ = deck_with(path)
    answer = reply_of(deck, ask("one two three four five six"), cap=3)
    assert (answer.message.content, answer.output_tokens, answer.truncated) == ("echo: one", 3, True)


def test_recorded_rejects_replay_and_transient_ones_are_never_recorded(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    deck, _ = deck_with(path, RecordMode.ONCE)
    for text in ("reject:not today", "busy:now"):
        with pytest.raises(Reject):
            deck.answer_now(ask(text), CAP)
    assert deck.eject().recorded == 1

    replay, backend = deck_with(path)
    with pytest.raises(Reject) as refused:
        replay.answer_now(ask("reject:not today"), CAP)
    assert (refused.value.code, refused.value.message) == (RejectCode.CANISTER_REJECT, "not today")
    with pytest.raises(Reject, match="no recorded answer matches this request"):
        replay.answer_now(ask("busy:now"), CAP)
    assert backend.calls == 0


# -- misses ------------------------------------------------------------------------------------------


def test_a_miss_shows_the_request_the_closest_recordings_and_a_diff(
    emu: Stubs, llm: LlmClient, tmp_path: Path
) -> None:
    path = write_yaml(
        tmp_path / "c.yaml",
        [
            interaction("Tell me a joke", "No."),
            interaction("What is the weather in Zurich?", "Sunny."),
            interaction("What is the time in Zurich?", "Noon."),
        ],
    )
    use(emu, path)
    with pytest.raises(LlmReject) as raised:
        llm.prompt(MODEL, "What is the weather in Geneva?")
    assert raised.value.code is RejectCode.CANISTER_REJECT
    lines = raised.value.message.splitlines()
    expected = [
        f"no recorded answer matches this request (cassette {path}, record mode none, matching on method, "
        "model, "
        "messages, tools):",
        "  v1_chat 'llama3.1:8b', 1 message(s), last user: 'What is the weather in Geneva?'",
        "closest recorded requests:",
        "  #2 (similarity 0.9*): v1_chat 'llama3.1:8b', 1 message(s), last user: 'What is the weather in "
        "Zurich?'",
        "  #3 (similarity 0.*): v1_chat 'llama3.1:8b', 1 message(s), last user: 'What is the time in "
        "Zurich?'",
        "  #1 (similarity 0.*): v1_chat 'llama3.1:8b', 1 message(s), last user: 'Tell me a joke'",
        "differences from #2: messages (same method, model, tools)",
        "  --- recorded #2",
        "  +++ this request",
        "  @@ -3,4 +3,4 @@",
        "   messages:",
        "   - role: user",
        "  -  content: What is the weather in Zurich?",
        "  +  content: What is the weather in Geneva?",
        "   tools: []",
        "to record it, use record mode new_episodes (or once for a new cassette, all to record it anew): "
        "`icllm-emulator serve --record-mode MODE`, record_mode in Control.UseCassette, or "
        "`pytest --icllm-record-mode MODE`",
    ]
    assert len(lines) == len(expected), raised.value.message
    for line, pattern in zip(lines, expected, strict=True):
        assert fnmatch.fnmatchcase(line, pattern), f"{line!r} is not {pattern!r}"
    stats = eject(emu)
    assert list(stats.misses) == [raised.value.message]


def test_a_miss_on_a_cassette_that_does_not_exist_says_so(tmp_path: Path) -> None:
    path = tmp_path / "never.yaml"
    deck, _ = deck_with(path, miss_hint="run it with --record once")
    with pytest.raises(Reject) as raised:
        deck.answer_now(ask("Hi"), CAP)
    assert raised.value.message.splitlines()[-2:] == [
        f"the cassette file does not exist yet: nothing was recorded at {path}",
        "run it with --record once",
    ]


# -- scrubbing ---------------------------------------------------------------------------------------

CANISTER = "w36hm-eqaaa-aaaal-qr76a-cai"
ANONYMOUS = "2vxsx-fae"
OTHER = "ryjl3-tyaaa-aaaaa-aaaba-cai"


def test_principals_become_numbered_placeholders_and_come_back_on_replay(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    recorded(path, [ask(f"Pay {CANISTER} from {ANONYMOUS}, then {CANISTER} again")])
    text = path.read_text()
    assert CANISTER not in text and ANONYMOUS not in text
    assert "Pay <principal-1> from <principal-2>, then <principal-1> again" in text

    deck, backend = deck_with(path)
    answer = reply_of(deck, ask(f"Pay {OTHER} from {ANONYMOUS}, then {OTHER} again"))
    assert answer.message.content == f"echo: Pay {OTHER} from {ANONYMOUS}, then {OTHER} again"
    assert backend.calls == 0


@pytest.mark.parametrize(
    "text", ["state-of-the-art", "hello-world", "abcde-fgh", "w36hm-eqaaa-aaaal-qr76a-caj"]
)
def test_text_that_only_looks_like_a_principal_is_kept(text: str) -> None:
    assert not is_principal(text)
    assert is_principal(CANISTER) and is_principal(ANONYMOUS) and is_principal("aaaaa-aa")


def test_api_keys_bearer_tokens_and_the_upstream_key_never_reach_the_file(tmp_path: Path) -> None:
    secret = "our-upstream-key-1234"
    prompt = (
        f"keys: sk-proj-abcdefghijklmnop1234, ghp_{'a' * 36}, hf_{'B' * 34}, AKIAABCDEFGHIJKLMNOP, "
        f"header Authorization: Bearer eyJhbGciOi.payload.signature, and {secret}"
    )
    path = tmp_path / "c.yaml"
    recorded(path, [ask(prompt)], Echo(secrets=(secret,)))
    text = path.read_text()
    for leaked in ("sk-proj", "ghp_", "hf_", "AKIA", "eyJhbGciOi", secret):
        assert leaked not in text
    assert (
        "keys: <api-key>, <api-key>, <api-key>, <api-key>, header Authorization: Bearer <api-key>, and "
        "<api-key>"
    ) in text

    deck, backend = deck_with(path, inner=Echo(secrets=(secret,)))
    reply_of(deck, ask(prompt))
    assert backend.calls == 0


def test_user_patterns_are_scrubbed_and_the_request_still_matches(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    deck, _ = deck_with(path, RecordMode.ONCE, scrub_patterns=(r"order-\d+", "Alice"))
    reply_of(deck, ask("Where is order-1234 of Alice?"))
    deck.eject()
    assert "Where is <scrubbed> of <scrubbed>?" in path.read_text()

    replay, backend = deck_with(path, scrub_patterns=(r"order-\d+", "Alice"))
    assert (
        reply_of(replay, ask("Where is order-98 of Alice?")).message.content
        == "echo: Where is <scrubbed> of <scrubbed>?"
    )
    assert backend.calls == 0


def drop_classified(interaction: dict[str, Any]) -> dict[str, Any] | None:
    """A user's scrub step: calls about classified things are never written."""
    return None if "classified" in str(interaction["request"]) else interaction


def tag_team(interaction: dict[str, Any]) -> dict[str, Any]:
    """A user's scrub step: every recording says who made it."""
    if "recorded" in interaction:
        interaction["recorded"]["team"] = "payments"
    return interaction


def test_scrub_steps_of_your_own_can_change_or_drop_interactions(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    steps = ("tests.doors.test_cassettes:drop_classified", "tests.doors.test_cassettes:tag_team")
    deck, _ = deck_with(path, RecordMode.ONCE, scrubbers=steps)
    reply_of(deck, ask("classified plans"))
    reply_of(deck, ask("public plans"))
    assert deck.eject().recorded == 1
    (only,) = load_cassette(path).interactions
    assert only.request == ask("public plans") and only.recorded["team"] == "payments"


def test_a_scrub_step_that_breaks_an_interaction_is_reported_and_the_call_keeps_its_answer(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.yaml"
    deck, _ = deck_with(path, RecordMode.ONCE, scrubbers=("tests.doors.test_cassettes:break_request",))
    assert reply_of(deck, ask("hi")).message.content == "echo: hi"
    stats = deck.eject()
    assert stats.recorded == 0
    assert stats.errors == [
        f"not recorded: CassetteError: {path} (a scrub step's result): interactions[0].request: missing "
        "field 'model'"
    ]


def break_request(interaction: dict[str, Any]) -> dict[str, Any]:
    interaction["request"].pop("model")
    return interaction


# -- crash safety ------------------------------------------------------------------------------------


def test_a_failed_write_leaves_the_previous_cassette_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.yaml"
    deck, _ = deck_with(path, RecordMode.ONCE)
    reply_of(deck, ask("first"))
    assert len(load_cassette(path).interactions) == 1
    reply_of(deck, ask("second"))  # written with the next write, at most FLUSH_SECONDS later or at eject

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    stats = deck.eject()
    monkeypatch.undo()
    assert stats.errors == [f"cannot write {path}: No space left on device"]
    assert [i.request for i in load_cassette(path).interactions] == [ask("first")]
    assert not list(tmp_path.glob(".*.tmp"))


def test_sigkill_while_recording_leaves_every_cassette_loadable(
    spawn: Callable[..., Child], tmp_path: Path
) -> None:
    folder = tmp_path / "cassettes"
    child, target = start_serve(spawn, tmp_path, "--record-mode", "all", "--cassettes", str(folder))
    stop = threading.Event()
    answered = [0]

    def burst(worker: int) -> None:
        with LlmClient(target) as client:
            for n in range(10_000):
                if stop.is_set():
                    return
                try:
                    client.prompt(MODEL, f"worker {worker} question {n}: " + "tell me more " * 20)
                except Exception:  # the process is gone
                    return
                answered[0] += 1

    threads = [threading.Thread(target=burst, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    cassette = folder / "default.yaml"
    sizes: set[int] = set()

    def rewritten_a_few_times() -> bool:
        if cassette.exists():
            sizes.add(cassette.stat().st_size)
        return len(sizes) >= 3

    try:
        wait_until(rewritten_a_few_times, "the cassette to be written three times", timeout=60)
        os.kill(child.process.pid, signal.SIGKILL)  # mid-burst: calls are in flight, writes under way
        child.process.wait(timeout=30)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    files = cassette_format.cassette_files(folder)
    assert files == [cassette]
    assert len(load_cassette(cassette).interactions) >= 1
    assert main(["cassette", "check", str(folder)]) == 0
    assert answered[0] > 0


# -- the process: record with any backend, replay with the replay backend --------------------------


def test_serve_records_with_any_backend_and_the_replay_backend_replays_it(
    spawn: Callable[..., Child], tmp_path: Path
) -> None:
    folder = tmp_path / "cassettes"
    (tmp_path / "record").mkdir()
    (tmp_path / "replay").mkdir()
    recorder, target = start_serve(
        spawn, tmp_path / "record", "--seed", "3", "--record-mode", "once", "--cassettes", str(folder)
    )
    with LlmClient(target) as client:
        answer = client.prompt(MODEL, "Weather?")
        weather = tool("get_weather").with_parameter(parameter("city", ParameterType.STRING).is_required())
        call = client.chat(MODEL).with_messages([user("In Bern?")]).with_tools([weather]).send()
    assert recorder.stop() == 0, recorder.stderr()
    assert (folder / "default.yaml").exists()

    replayer, target = start_serve(
        spawn, tmp_path / "replay", "--backend", "replay", "--cassettes", str(folder)
    )
    with LlmClient(target) as client:
        assert client.prompt(MODEL, "Weather?") == answer
        assert client.chat(MODEL).with_messages([user("In Bern?")]).with_tools([weather]).send() == call
        with pytest.raises(LlmReject, match="no recorded answer matches this request"):
            client.prompt(MODEL, "Weather today?")
        with grpc.insecure_channel(target) as channel:
            from icllm_emulator._proto.icllm.v1 import control_pb2_grpc

            control = control_pb2_grpc.ControlStub(channel)
            loaded = control.UseCassette(cpb.UseCassetteRequest(path="tests/other.yaml"), timeout=30)
            assert (loaded.path, loaded.exists) == (str(folder / "tests" / "other.yaml"), False)
            assert control.EjectCassette(cpb.EjectCassetteRequest(), timeout=30).path == loaded.path
            control.Reset(cpb.ResetRequest(), timeout=30)  # the emulator's own cassette, from its start
        assert client.prompt(MODEL, "Weather?") == answer
    assert replayer.stop() == 0, replayer.stderr()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--record-mode", "all"], "--record-mode all records into a cassette: give --cassettes DIR"),
        (
            ["--backend", "replay", "--record-mode", "once", "--cassettes", "c"],
            "--record-mode once needs a backend to record from, and the replay backend only replays",
        ),
        (
            ["--record-mode", "sometimes", "--cassettes", "c"],
            "argument --record-mode: 'sometimes' is not valid; choose one of: none, once, new_episodes, all",
        ),
        (
            ["--cassettes", "c", "--match-on", "mesages"],
            "argument --match-on: 'mesages' is not a matcher; choose from: method",
        ),
        (
            ["--cassettes", "c", "--scrub-patterns", "(open"],
            "scrub pattern '(open' is not a valid regular expression",
        ),
        (["--cassettes", "broken"], "default.yaml: not valid YAML at line 2, column 1"),
    ],
    ids=["no-folder", "replay-records", "bad-mode", "bad-matcher", "bad-pattern", "broken-cassette"],
)
def test_bad_cassette_options_stop_the_start_with_exit_code_2(
    tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "default.yaml").write_text("[unclosed\n")
    result = run_cli("serve", "--grpc-port", "0", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


# -- icllm-emulator cassette ls|show|check ------------------------------------------------------------


def test_cassette_ls_show_and_check_describe_sound_cassettes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recorded(tmp_path / "a.yaml", [rich_request()], FakeBackend())
    deck, _ = deck_with(tmp_path / "sub" / "b.yaml", RecordMode.ONCE)
    reply_of(deck, ask("Hi"))
    with pytest.raises(Reject):
        deck.answer_now(ask("reject:no"), CAP)
    deck.eject()

    assert main(["cassette", "ls", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[0] for line in lines] == [
        str(tmp_path / "a.yaml"),
        str(tmp_path / "sub" / "b.yaml"),
    ]
    assert fnmatch.fnmatchcase(
        lines[1], "*/sub/b.yaml: 2 interaction(s), 1 reject(s), models llama3.1:8b, from echo, recorded 20*"
    )

    assert main(["cassette", "show", str(tmp_path / "a.yaml")]) == 0
    shown = capsys.readouterr().out
    for expected in (
        "#1 v1_chat 'llama3.1:8b'  (at ",
        "    system: You are terse.\n      Answer in one line.\n",
        "    user: Weather in Zurich?\n",
        "    assistant calls call_1: get_weather(city='Zurich')\n",
        '    tool (call_1): {"temp": 21}\n',
        "    offers get_weather(city: string, unit: celsius|fahrenheit, days: integer)\n",
        "  -> ",
    ):
        assert expected in shown

    assert main(["cassette", "check", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"ok {tmp_path / 'a.yaml'}: 1 interaction(s), format version 1",
        f"ok {tmp_path / 'sub' / 'b.yaml'}: 2 interaction(s), format version 1",
    ]


def test_cassette_check_exits_non_zero_naming_each_broken_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.yaml"
    recorded(good, [ask("Hi")])
    write_yaml(tmp_path / "future.yaml", [], version=2)
    twice = tmp_path / "twice.yaml"
    twice.write_text(
        "version: 1\ninteractions:\n- request:\n    method: v1_chat\n    model: m\n    model: n\n"
        "    messages: []\n  answer: {content: x}\n"
    )
    assert main(["cassette", "check", str(tmp_path)]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"BROKEN {tmp_path / 'future.yaml'}: cassette format version 2 is not supported: it was written by "
        "a newer "
        "pytest-icllm; upgrade pytest-icllm (this one reads version 1), or re-record the cassette with "
        "this one "
        "(record mode all)",
        f"ok {good}: 1 interaction(s), format version 1",
        f"BROKEN {twice}: not valid YAML at line 6, column 5: the key 'model' appears twice in one mapping; "
        "fix it by hand, or delete the file and re-record it",
    ]
    assert main(["cassette", "ls", str(tmp_path / "future.yaml")]) == 1


def test_cassette_check_warns_of_duplicates_and_leftovers_of_interrupted_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_yaml(tmp_path / "c.yaml", [interaction("Hi", "Hello"), interaction("Hi", "Hello")])
    (tmp_path / ".c.yaml.x1y2.tmp").write_text("half a cass")
    assert main(["cassette", "check", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"warning {path}: interactions #1, #2 are the same request with the same outcome (duplicates: each "
        "is "
        "replayed in turn, so they are harmless but redundant)",
        f"ok {path}: 2 interaction(s), format version 1",
        f"warning {tmp_path / '.c.yaml.x1y2.tmp'}: a temporary file of an interrupted write; delete it",
    ]


def test_cassette_commands_on_a_missing_path_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["cassette", "ls", str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere'}: no such file or folder" in capsys.readouterr().err


def test_a_settings_error_names_what_is_valid() -> None:
    with pytest.raises(ConfigError, match="record mode 'sometimes' is not valid"):
        CassetteDeck(Echo(), CassetteSettings()).use(CassetteSpec(path="x.yaml", record_mode="sometimes"))  # type: ignore[arg-type]
