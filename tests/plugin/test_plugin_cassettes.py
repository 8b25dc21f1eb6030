"""Cassettes in the pytest plugin, as users meet them: inner pytest runs that record, replay and miss.

Every test sets the environment variable CI itself (CI services set it, and the plugin replays only
when it is true), so the outcome never depends on where the suite runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pytest_icllm.plugin import cassette_name
from tests.pytester_support import INI, pt, run

__all__ = ["pt"]  # a fixture

AGENT = """
import pytest
from icllm_emulator.domain import ToolPolicy
from icllm_emulator.backends.fake import fake_answer
from icllm_emulator.domain import ChatRequest, UserMessage

pytestmark = pytest.mark.icllm(cassette=True)


def seed_0_answer(text):
    request = ChatRequest("llama3.1:8b", (UserMessage(text),))
    return fake_answer(request, seed=0, max_output_tokens=1000, tool_policy=ToolPolicy.AUTO).message.content


def test_agent(icllm, icllm_client):
    answer = icllm_client.prompt("llama3.1:8b", "{prompt}")
    assert answer == seed_0_answer("{prompt}")  # recorded with seed 0: replayed whatever the seed
    assert icllm.cassette.parts[-3:] == ("cassettes", "test_user", "test_agent.yaml")
"""


@pytest.fixture(autouse=True)
def not_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)


def agent(prompt: str = "Weather in Zurich?") -> str:
    return AGENT.replace("{prompt}", prompt)


def cassette(pt: pytest.Pytester, test: str = "test_agent") -> Path:
    return pt.path / "cassettes" / "test_user" / f"{test}.yaml"


def prompts_in(path: Path) -> list[str]:
    data = yaml.safe_load(path.read_text())
    return [item["request"]["messages"][-1]["content"] for item in data["interactions"]]


def test_once_records_the_tests_cassette_beside_its_module_and_later_runs_replay_it(
    pt: pytest.Pytester,
) -> None:
    run(pt, agent(), "--icllm-record-mode", "once").assert_outcomes(passed=1)
    assert prompts_in(cassette(pt)) == ["Weather in Zurich?"]

    pt.runpytest("--icllm-seed", "5").assert_outcomes(passed=1)  # seed 5 would answer otherwise
    pt.runpytest("--icllm-seed", "5", "--icllm-record-mode", "once").assert_outcomes(passed=1)


def test_a_miss_fails_the_test_with_the_closest_recording_and_a_diff(pt: pytest.Pytester) -> None:
    run(pt, agent(), "--icllm-record-mode", "once").assert_outcomes(passed=1)
    result = run(pt, agent("Weather in Geneva?"))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E  *icllm_emulator.client.LlmReject: CANISTER_REJECT (4): "
            "no recorded answer matches this request "
            f"(cassette {cassette(pt)}, record mode none, matching on method, model, messages, tools):",
            "E  *v1_chat 'llama3.1:8b', 1 message(s), last user: 'Weather in Geneva?'",
            "E  *closest recorded requests:",
            "E  *#1 (similarity 0.*): v1_chat 'llama3.1:8b', 1 message(s), last user: 'Weather in Zurich?'",
            "E  *differences from #1: messages (same method, model, tools)",
            "E  *--- recorded #1",
            "E  *+++ this request",
            "E  *-  content: Weather in Zurich?",
            "E  *+  content: Weather in Geneva?",
            "E  *to record it: pytest --icllm-record-mode once (a new cassette), new_episodes (add to this "
            "one) "
            "or all (record it anew), or @pytest.mark.icllm(record_mode=...) on the test",
        ]
    )
    assert "ERROR at teardown" not in result.stdout.str()  # the test's own failure says it all


def test_a_swallowed_miss_still_fails_the_test_at_teardown(pt: pytest.Pytester) -> None:
    source = """
        import pytest
        from pytest_icllm import LlmReject

        @pytest.mark.icllm(cassette=True)
        def test_agent(icllm, icllm_client):
            try:
                icllm_client.prompt("llama3.1:8b", "Weather in Zurich?")
            except LlmReject:
                pass  # the code under test falls back quietly

        @pytest.mark.icllm(cassette=True, assert_no_misses=False)
        def test_agent_that_expects_misses(icllm, icllm_client):
            with pytest.raises(LlmReject):
                icllm_client.prompt("llama3.1:8b", "Weather in Zurich?")
        """
    result = run(pt, source)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_agent*",
            "1 call(s) found no recorded answer in the cassette, and the emulator rejected them (turn this "
            "check "
            "off with @pytest.mark.icllm(assert_no_misses=False)):",
            f"no recorded answer matches this request (cassette {cassette(pt)}, record mode none, *",
            "  v1_chat 'llama3.1:8b', 1 message(s), last user: 'Weather in Zurich?'",
            f"the cassette file does not exist yet: nothing was recorded at {cassette(pt)}",
        ]
    )


def test_record_modes_from_markers_add_to_and_rewrite_a_cassette(pt: pytest.Pytester) -> None:
    template = """
        import pytest

        @pytest.mark.icllm(cassette=True, record_mode="{mode}")
        def test_agent(icllm, icllm_client):
            for prompt in {prompts}:
                icllm_client.prompt("llama3.1:8b", prompt)
        """
    for mode, prompts, expected in [
        ("once", ["one"], ["one"]),
        ("new_episodes", ["one", "two"], ["one", "two"]),
        ("all", ["three"], ["three"]),
        ("none", ["three"], ["three"]),
    ]:
        source = template.replace("{mode}", mode).replace("{prompts}", repr(prompts))
        run(pt, source).assert_outcomes(passed=1)
        assert prompts_in(cassette(pt)) == expected, mode


def test_ci_replays_only_unless_the_command_line_asks_for_recording(
    pt: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    source = """
        import pytest

        @pytest.mark.icllm(cassette=True, record_mode="once")
        def test_agent(icllm, icllm_client):
            icllm_client.prompt("llama3.1:8b", "Weather in Zurich?")
        """
    result = run(pt, source)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "icllm cassettes: record_mode=none, cassette=off, CI=true: replay only unless "
            "--icllm-record-mode "
            "says otherwise",
            "E  *CI is true, so this run only replays (record modes from ini keys, icllm_config and "
            "markers are "
            "ignored in CI): record the cassette on a development machine (pytest --icllm-record-mode "
            "once, or "
            "new_episodes to add to it) and commit it, or force recording with --icllm-record-mode",
        ]
    )
    assert not cassette(pt).exists()

    pt.runpytest("--icllm-record-mode", "once").assert_outcomes(passed=1)
    assert prompts_in(cassette(pt)) == ["Weather in Zurich?"]
    pt.runpytest().assert_outcomes(passed=1)  # and CI replays it


def test_parametrized_tests_get_a_cassette_each_with_safe_file_names(pt: pytest.Pytester) -> None:
    source = """
        import pytest

        @pytest.mark.icllm(cassette=True)
        @pytest.mark.parametrize("city", ["Zurich", "São Paulo", "a/b"])
        def test_weather(icllm, icllm_client, city):
            icllm_client.prompt("llama3.1:8b", f"Weather in {city}?")

        class TestAgent:
            @pytest.mark.icllm(cassette=True)
            def test_plan(self, icllm, icllm_client):
                icllm_client.prompt("llama3.1:8b", "Plan a trip")
        """
    run(pt, source, "--icllm-record-mode", "once").assert_outcomes(passed=4)
    names = sorted(path.name for path in (pt.path / "cassettes" / "test_user").iterdir())
    assert names == sorted(
        [
            "test_weather[Zurich].yaml",
            cassette_name("test_weather[S\\xe3o Paulo]"),  # pytest escapes non-ASCII ids
            cassette_name("test_weather[a/b]"),
            "TestAgent.test_plan.yaml",
        ]
    )
    pt.runpytest().assert_outcomes(passed=4)


def test_cassette_names_replace_unsafe_characters_and_hash_long_names() -> None:
    assert cassette_name("test_agent") == "test_agent.yaml"
    assert cassette_name("TestAgent.test_x[1-2]") == "TestAgent.test_x[1-2].yaml"
    unsafe = cassette_name("test_x[a/b]")
    assert unsafe.startswith("test_x[a_b]-") and unsafe.endswith(".yaml")
    assert cassette_name("test_x[a/b]") != cassette_name("test_x[a:b]")
    long = cassette_name("test_" + "x" * 300)
    assert len(long) == 100 + len(".yaml") and long.startswith("test_xxx")
    assert cassette_name("test_" + "x" * 300) != cassette_name("test_" + "x" * 301)


def test_a_cassette_folder_and_a_shared_cassette_by_name(pt: pytest.Pytester) -> None:
    pt.makeini(INI + "icllm_cassettes = recorded\n")
    source = """
        import pytest

        pytestmark = pytest.mark.icllm(cassette="shared.yaml", record_mode="new_episodes")

        def test_first(icllm, icllm_client):
            icllm_client.prompt("llama3.1:8b", "first")

        def test_second(icllm, icllm_client):
            icllm_client.prompt("llama3.1:8b", "second")
        """
    run(pt, source).assert_outcomes(passed=2)
    assert prompts_in(pt.path / "recorded" / "test_user" / "shared.yaml") == ["first", "second"]


def test_bad_cassette_settings_fail_naming_the_valid_values(pt: pytest.Pytester) -> None:
    result = pt.runpytest("--icllm-record-mode", "sometimes")
    result.stderr.fnmatch_lines(
        [
            "ERROR: pytest-icllm: option --icllm-record-mode: 'sometimes' is not valid; "
            "choose one of: none, once, new_episodes, all"
        ]
    )
    source = """
        import pytest

        @pytest.mark.icllm(cassette="answers.json")
        def test_json(icllm):
            pass

        @pytest.mark.icllm(cassette=True, match_on="model,mesages")
        def test_matcher(icllm):
            pass
        """
    result = run(pt, source)
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            "test_user.py:3: @pytest.mark.icllm: cassette: 'answers.json' is not valid; give true (the "
            "test's "
            "own cassettes/<module>/<test>.yaml), false, or a cassette file name ending in .yaml",
            "test_user.py:7: @pytest.mark.icllm: match_on: 'mesages' is not a matcher; choose from: method, "
            "model, messages, tools, last_message, system, max_output_tokens",
        ]
    )


def test_a_broken_cassette_fails_the_tests_setup_saying_what_is_wrong(pt: pytest.Pytester) -> None:
    broken = cassette(pt)
    broken.parent.mkdir(parents=True)
    broken.write_text("version: 2\ninteractions: []\n")
    result = run(pt, agent())
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            f"pytest-icllm: cannot use the cassette {broken}: {broken}: cassette format version 2 is not "
            "supported: it was written by a newer pytest-icllm; *"
        ]
    )


def test_scrub_steps_and_patterns_from_a_conftest_and_a_marker(pt: pytest.Pytester) -> None:
    pt.makeconftest(
        """
        def no_drafts(interaction):
            return None if "draft" in str(interaction["request"]) else interaction
        """
    )
    source = """
        import pytest
        from conftest import no_drafts

        @pytest.mark.icllm(
            cassette=True, record_mode="once", scrubbers=[no_drafts], scrub_patterns=[r"\\d{4}-\\d{4}"]
        )
        def test_agent(icllm, icllm_client):
            icllm_client.prompt("llama3.1:8b", "draft: nothing to keep")
            icllm_client.prompt("llama3.1:8b", "card 1234-5678 please")
        """
    run(pt, source).assert_outcomes(passed=1)
    assert prompts_in(cassette(pt)) == ["card <scrubbed> please"]


def test_the_report_header_shows_the_record_mode(pt: pytest.Pytester) -> None:
    result = pt.runpytest("--icllm-record-mode", "new_episodes", "--icllm-cassette", "true")
    result.stdout.fnmatch_lines(["icllm cassettes: record_mode=new_episodes, cassette=per-test"])
