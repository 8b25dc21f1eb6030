"""The pytest plugin as its users meet it: test files run by an inner pytest, checked by their outcome
and the exact text a test author reads."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

import icllm_emulator.client
import pytest_icllm
from tests.pytester_support import INI, pt, run

__all__ = ["pt"]  # a fixture

# -- the package -----------------------------------------------------------------------------------


def test_package_root_exports_the_controller_what_it_returns_the_exceptions_and_the_version() -> None:
    from icllm_emulator import history
    from icllm_emulator.grpc_api import control

    assert pytest_icllm.__all__ == [
        "Call",
        "Canister",
        "CanisterIC",
        "CanisterReject",
        "EmulatorError",
        "IcllmController",
        "JobInfo",
        "LlmReject",
        "PendingCall",
        "Stats",
        "Stub",
        "__version__",
    ]
    assert pytest_icllm.__version__ == importlib.metadata.version("pytest-icllm")
    assert pytest_icllm.LlmReject is icllm_emulator.client.LlmReject
    assert pytest_icllm.EmulatorError is icllm_emulator.client.EmulatorError
    assert pytest_icllm.IcllmController.__module__ == "pytest_icllm._controller"
    # what the icllm_canister fixture gives, and what its canisters' submit() returns, for type hints
    assert (pytest_icllm.CanisterIC.__module__, pytest_icllm.PendingCall.__module__) == (
        "pytest_icllm._canisters",
        "pytest_icllm._canisters",
    )
    assert (pytest_icllm.Call, pytest_icllm.JobInfo, pytest_icllm.Stats) == (
        control.Call,
        control.JobInfo,
        history.Stats,
    )
    with pytest.raises(AttributeError, match="module 'pytest_icllm' has no attribute 'Engine'"):
        _ = pytest_icllm.Engine


FIXTURE_DOCS = {
    "icllm": "The controller of the emulated LLM canister, reset for this test: script, steer, inspect.",
    "icllm_client": "A blocking client (shaped like ic-llm) bound to the emulator, which `icllm` has reset.",
    "icllm_async_client": "An asyncio client bound to the emulator, which `icllm` has reset "
    "(needs pytest-asyncio).",
    "icllm_server [[]session scope[]]": "The session's emulator: started in a background thread, "
    "or the one at --icllm-url / ICLLM_URL.",
    "icllm_config": "Per-test emulator settings; override this fixture in a conftest, at any scope.",
    "icllm_canister": "This test's IC: "
    "`icllm_canister(wasm, did=, init=, id=, ...)`, `.stub(id, did=)`, `.faults.on()`.",
    "icllm_canister_session [[]session scope[]]": "Install canisters once for the session "
    "(snapshot them, `restore` in each test): as icllm_canister.",
}


def test_fixtures_listing_documents_every_icllm_fixture(pt: pytest.Pytester) -> None:
    result = pt.runpytest("--fixtures")
    for name, doc in FIXTURE_DOCS.items():
        result.stdout.fnmatch_lines(
            ["*fixtures defined from pytest_icllm.plugin*", f"{name} -- *plugin.py:*", f"    {doc}"]
        )
    listed = [
        line.split(" ")[0] for line in result.stdout.lines if line.startswith("icllm") and " -- " in line
    ]
    assert sorted(listed) == sorted(name.split(" ")[0] for name in FIXTURE_DOCS)


def test_report_header_shows_the_effective_settings(pt: pytest.Pytester) -> None:
    result = pt.runpytest("--icllm-seed", "7", "--icllm-strict-rules", "true")
    result.stdout.fnmatch_lines(
        [
            "icllm: in-process, backend=fake, clock=real, workers=1; "
            "profile=current, seed=7, tool_policy=auto, strict_rules=True"
        ]
    )


def test_a_boolean_option_alone_means_true(pt: pytest.Pytester) -> None:
    result = pt.runpytest("--icllm-strict-rules", "--icllm-outcalls-loopback")
    result.stdout.fnmatch_lines(["icllm: *strict_rules=True", "icllm settings: outcalls_loopback=True"])


def test_a_boolean_option_alone_before_a_path_says_where_to_put_it(pt: pytest.Pytester) -> None:
    pt.makepyfile(test_it="def test_it():\n    pass\n")
    result = pt.runpytest("--icllm-strict-rules", "test_it.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: pytest-icllm: option --icllm-strict-rules: 'test_it.py' is not a boolean; use true or "
            "false (alone, --icllm-strict-rules means true: put it after the test paths, or write "
            "--icllm-strict-rules=true)"
        ]
    )
    pt.runpytest("test_it.py", "--icllm-strict-rules").assert_outcomes(passed=1)


def test_the_settings_line_shows_only_what_differs_from_the_defaults(pt: pytest.Pytester) -> None:
    result = pt.runpytest()
    result.stdout.fnmatch_lines(["icllm settings: the others at their defaults"])
    result = pt.runpytest("--icllm-lease-seconds", "5", "--icllm-history-bytes", "2048")
    result.stdout.fnmatch_lines(["icllm settings: lease_seconds=5.0, history_bytes=2048"])


def test_plugin_can_be_disabled_by_name(pt: pytest.Pytester) -> None:
    result = run(pt, "def test_plain():\n    pass\n", "-p", "no:icllm")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("icllm:*")


# -- scripting answers -----------------------------------------------------------------------------


def test_sketch_example_scripts_an_answer_and_records_the_request(pt: pytest.Pytester) -> None:
    result = run(
        pt,
        """
        def test_agent_answers(icllm, icllm_client):
            icllm.on(contains="speed of light").reply("299,792,458 m/s")
            assert icllm_client.prompt("llama3.1:8b", "What's the speed of light?") == "299,792,458 m/s"
            assert icllm.requests[-1].messages[-1].content == "What's the speed of light?"
        """,
    )
    result.assert_outcomes(passed=1)


def test_a_rule_for_the_last_message_answers_its_turn_only(pt: pytest.Pytester) -> None:
    """A multi-turn agent sends every earlier turn again: `last=True` scripts one turn of it."""
    result = run(
        pt,
        """
        from icllm_emulator.client import assistant, user

        def test_two_turns(icllm, icllm_client):
            icllm.on(contains="weather", last=True).reply("Sunny.")
            icllm.on(contains="tomorrow", last=True).reply("Rain.")
            chat = icllm_client.chat("llama3.1:8b")
            assert chat.with_messages([user("What's the weather?")]).send().content == "Sunny."
            turns = [user("What's the weather?"), assistant("Sunny."), user("And tomorrow?")]
            assert chat.with_messages(turns).send().content == "Rain."
            assert len(icllm.assert_prompted(contains="weather")) == 2
            assert len(icllm.assert_prompted(contains="weather", last=True)) == 1
        """,
    )
    result.assert_outcomes(passed=1)


def test_last_alone_is_refused_at_the_tests_line(pt: pytest.Pytester) -> None:
    result = run(pt, "def test_it(icllm):\n    icllm.on(last=True)\n")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [">*icllm.on(last=True)", "E   *ValueError: last=True narrows contains, regex or role to the last*"]
    )


def test_replies_with_text_and_tool_calls_whose_arguments_travel_as_text(pt: pytest.Pytester) -> None:
    result = run(
        pt,
        """
        from icllm_emulator.client import ParameterType, parameter, tool, user

        WEATHER = tool("get_weather").with_parameter(parameter("city", ParameterType.STRING).is_required())

        def test_tool_calls(icllm, icllm_client):
            icllm.on(tool="get_weather").call_tool("get_weather", id="call_7", city="Zurich", days=3)
            icllm.on(contains="plan").reply(
                "Two steps.",
                tool_calls=[{"name": "search", "arguments": {"q": "trains", "limit": 5, "exact": True}}],
            )
            chat = icllm_client.chat("llama3.1:8b")
            first = chat.with_messages([user("Weather?")]).with_tools([WEATHER]).send()
            assert first.content is None
            (call,) = first.tool_calls
            assert (call.id, call.function.name) == ("call_7", "get_weather")
            assert [(a.name, a.value) for a in call.function.arguments] == [("city", "Zurich"), ("days", "3")]

            second = icllm_client.chat("llama3.1:8b").with_messages([user("plan a trip")]).send()
            assert second.content == "Two steps."
            (search,) = second.tool_calls
            assert search.id == "call_1"
            assert [(a.name, a.value) for a in search.function.arguments] == [
                ("q", "trains"), ("limit", "5"), ("exact", "true")
            ]
            assert [c.answer for c in icllm.calls] == [first, second]
        """,
    )
    result.assert_outcomes(passed=1)


def test_every_ic_reject_code_reaches_the_caller_as_llm_reject(pt: pytest.Pytester) -> None:
    result = run(
        pt,
        """
        import pytest
        from icllm_emulator.client import RejectCode
        from pytest_icllm import LlmReject

        @pytest.mark.parametrize("code", list(RejectCode))
        def test_reject(icllm, icllm_client, code):
            icllm.on(contains="hello").reject(code, f"scripted {code.name}")
            with pytest.raises(LlmReject) as caught:
                icllm_client.prompt("llama3.1:8b", "hello there")
            assert (caught.value.code, caught.value.message) == (code, f"scripted {code.name}")
            assert icllm.calls[-1].reject.code == code

        def test_reject_takes_plain_numbers(icllm, icllm_client):
            icllm.on().reject(2, "busy")
            with pytest.raises(LlmReject) as caught:
                icllm_client.prompt("llama3.1:8b", "hi")
            assert caught.value.code is RejectCode.SYS_TRANSIENT
        """,
    )
    result.assert_outcomes(passed=7)


def test_replies_answer_successive_calls_in_order_then_the_backend_answers(pt: pytest.Pytester) -> None:
    result = run(
        pt,
        """
        def test_sequence(icllm, icllm_client):
            answers = icllm.on(contains="next").replies("one", "two", "three")
            got = [icllm_client.prompt("llama3.1:8b", "next please") for _ in range(4)]
            assert got[:3] == ["one", "two", "three"]
            assert got[3] not in ("one", "two", "three") and got[3]  # the fake backend's text
            assert [a.uses for a in answers] == [1, 1, 1]
        """,
    )
    result.assert_outcomes(passed=1)


def test_times_limits_a_scripted_answer_and_uses_counts_its_answers(pt: pytest.Pytester) -> None:
    result = run(
        pt,
        """
        def test_times(icllm, icllm_client):
            twice = icllm.on(contains="ping").times(2).reply("pong")
            assert twice.uses == 0
            got = [icllm_client.prompt("llama3.1:8b", "ping") for _ in range(3)]
            assert got[:2] == ["pong", "pong"] and got[2] != "pong"
            assert twice.uses == 2
            assert [c.rule_id for c in icllm.calls] == [twice.id, twice.id, ""]
        """,
    )
    result.assert_outcomes(passed=1)


def test_bad_scripting_arguments_fail_at_the_tests_line_with_the_valid_values(pt: pytest.Pytester) -> None:
    result = run(
        pt,
        """
        def test_role(icllm):
            icllm.on(role="robot").reply("x")

        def test_code(icllm):
            icllm.on().reject(9, "x")

        def test_times(icllm):
            icllm.on().times(0).reply("x")

        def test_regex(icllm):
            icllm.on(regex="(").reply("x")
        """,
    )
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines(
        [
            '>       icllm.on(role="robot").reply("x")',
            "E       ValueError: role 'robot' is not one of user, system, assistant, tool",
            '>       icllm.on().reject(9, "x")',
            "E       ValueError: reject code 9 is not an IC reject code; valid: 1 SYS_FATAL, "
            "2 SYS_TRANSIENT, 3 DESTINATION_INVALID, 4 CANISTER_REJECT, 5 CANISTER_ERROR, 6 SYS_UNKNOWN",
            "E       ValueError: times must be 1 or more, got 0",
            "E       ValueError: regex '(' is not a valid regular expression: *",
        ]
    )


# -- time, hangs, hold, pause ----------------------------------------------------------------------

THREADED = """
import threading
import time

import pytest
from pytest_icllm import LlmReject

M = "llama3.1:8b"


class Caller:
    \"\"\"A prompt sent from another thread, as concurrent canister calls arrive.\"\"\"

    def __init__(self, client, text):
        self.result = None
        self.thread = threading.Thread(target=self._run, args=(client, text))
        self.thread.start()

    def _run(self, client, text):
        try:
            self.result = client.prompt(M, text)
        except LlmReject as reject:
            self.result = reject

    def get(self):
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the call never finished"
        return self.result


def wait_for_job(icllm, state, attempt=1):
    for _ in range(2000):
        if any(j.state == state and j.attempt == attempt for j in icllm.jobs()):
            return
        time.sleep(0.005)
    raise AssertionError(f"no job reached {state} attempt {attempt}: {icllm.jobs()}")
"""


def test_delay_waits_on_the_virtual_clock_until_advanced(pt: pytest.Pytester) -> None:
    pt.makeconftest(THREADED)
    result = run(
        pt,
        """
        from conftest import Caller, wait_for_job

        def test_slow_model(icllm, icllm_client):
            icllm.on(contains="slow").after(30).reply("finally")
            call = Caller(icllm_client, "a slow question")
            wait_for_job(icllm, "LEASED")
            start = icllm.advance(29)
            assert icllm.calls[0].answer is None and icllm.calls[0].reject is None
            assert icllm.advance(1) == start + 1
            assert call.get() == "finally"
        """,
        "--icllm-clock",
        "virtual",
    )
    result.assert_outcomes(passed=1)


def test_caller_deadline_gives_sys_unknown_while_the_job_goes_on(pt: pytest.Pytester) -> None:
    pt.makeconftest(THREADED)
    result = run(
        pt,
        """
        import pytest
        from icllm_emulator.client import RejectCode
        from conftest import Caller, wait_for_job

        @pytest.mark.icllm(caller_deadline=300)
        def test_bounded_wait(icllm, icllm_client):
            icllm.on().after(600).reply("too late")
            call = Caller(icllm_client, "anyone there?")
            wait_for_job(icllm, "LEASED")
            icllm.advance(300)
            assert call.get().code is RejectCode.SYS_UNKNOWN
            icllm.advance(300)
            assert icllm.calls[0].job_state == "DONE"
        """,
        "--icllm-clock",
        "virtual",
    )
    result.assert_outcomes(passed=1)


def test_hang_loses_each_lease_then_rejects_after_max_attempts(pt: pytest.Pytester) -> None:
    pt.makeconftest(THREADED)
    result = run(
        pt,
        """
        import pytest
        from icllm_emulator.client import RejectCode
        from conftest import Caller, wait_for_job

        def test_default_attempts(icllm, icllm_client):
            icllm.on(model="llama3.1:8b").hang()
            call = Caller(icllm_client, "hello?")
            for attempt in (1, 2, 3):
                wait_for_job(icllm, "LEASED", attempt)
                icllm.advance(60)
            reject = call.get()
            assert reject.code is RejectCode.CANISTER_REJECT
            assert reject.message.startswith("no AI worker answered the prompt after 3 attempts")
            assert icllm.calls[0].attempts == 3

        @pytest.mark.icllm(max_attempts=1, lease_seconds=5)
        def test_marker_shortens_the_wait(icllm, icllm_client):
            icllm.on().hang()
            call = Caller(icllm_client, "hello?")
            wait_for_job(icllm, "LEASED")
            icllm.advance(5)
            assert call.get().message.startswith("no AI worker answered the prompt after 1 attempts")
        """,
        "--icllm-clock",
        "virtual",
    )
    result.assert_outcomes(passed=2)


def test_advance_on_a_real_clock_says_how_to_get_a_virtual_one(pt: pytest.Pytester) -> None:
    result = run(pt, "def test_advance(icllm):\n    icllm.advance(1)\n")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E       icllm_emulator.client.EmulatorError: gRPC call failed with FAILED_PRECONDITION: "
            "the clock is real: start the emulator with --clock virtual to advance it; with pytest, run with "
            "--icllm-clock virtual (or the ini key icllm_clock = virtual)"
        ]
    )


def test_hold_and_release_choose_the_order_concurrent_callers_see_answers(pt: pytest.Pytester) -> None:
    pt.makeconftest(THREADED)
    result = run(
        pt,
        """
        from conftest import Caller

        def test_release_in_reverse(icllm, icllm_client):
            icllm.on(contains="first").reply("A")
            icllm.on(contains="second").reply("B")
            icllm.hold()
            first = Caller(icllm_client, "first")
            (first_job,) = icllm.held(1)
            second = Caller(icllm_client, "second")
            first_job_again, second_job = icllm.held(2)
            assert first_job_again == first_job
            assert icllm.stats().held == 2

            assert icllm.release(second_job) == [second_job]
            assert second.get() == "B"
            assert first.thread.is_alive() and icllm.held() == [first_job]
            icllm.release(first_job)
            assert first.get() == "A"

        def test_release_all_delivers_oldest_first(icllm, icllm_client):
            icllm.hold()
            calls = [Caller(icllm_client, f"q{n}") for n in range(3)]
            held = icllm.held(3)
            assert icllm.release_all() == held
            assert all(call.get() for call in calls)

        def test_hold_off_lets_answers_through(icllm, icllm_client):
            icllm.hold()
            icllm.hold(False)
            assert icllm_client.prompt("llama3.1:8b", "hi")
        """,
    )
    result.assert_outcomes(passed=3)


def test_pause_keeps_prompts_queued_until_resume(pt: pytest.Pytester) -> None:
    pt.makeconftest(THREADED)
    result = run(
        pt,
        """
        from conftest import Caller, wait_for_job

        def test_pause(icllm, icllm_client):
            icllm.on().reply("served")
            icllm.pause()
            call = Caller(icllm_client, "wait for me")
            wait_for_job(icllm, "QUEUED", attempt=0)
            assert icllm.stats().queue_depth == 1 and call.thread.is_alive()
            icllm.resume()
            assert call.get() == "served"
            assert icllm.jobs() == [] and icllm.stats().answered == 1
        """,
    )
    result.assert_outcomes(passed=1)


def test_jobs_waits_for_jobs_in_a_state_and_says_what_it_saw(pt: pytest.Pytester) -> None:
    pt.makeconftest(THREADED)
    result = run(
        pt,
        """
        from conftest import Caller

        def test_waits(icllm, icllm_client):
            icllm.pause()
            calls = [Caller(icllm_client, f"q{n}") for n in range(2)]
            queued = icllm.jobs("QUEUED", count=2)
            assert [job.state for job in queued] == ["QUEUED", "QUEUED"]
            assert icllm.jobs("LEASED") == []
            icllm.resume()
            assert all(call.get() for call in calls)

        def test_bad_state(icllm):
            icllm.jobs("DONE")

        def test_gives_up(icllm, icllm_client):
            icllm.pause()
            call = Caller(icllm_client, "q")
            (job,) = icllm.jobs(count=1)
            try:
                icllm.jobs("LEASED", count=1, timeout=0.05)
            finally:
                icllm.resume()
                call.get()
        """,
    )
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "E       ValueError: job state 'DONE' is not valid; choose one of: QUEUED, LEASED, HELD",
            "E           AssertionError: expected 1 leased job(s) within 0.05 s, got []",
        ]
    )


# -- assertions ------------------------------------------------------------------------------------


def test_assert_prompted_failure_lists_every_call_and_why_it_did_not_match(pt: pytest.Pytester) -> None:
    result = run(
        pt,
        """
        def test_agent_asks_about_weather(icllm, icllm_client):
            icllm_client.prompt("llama3.1:8b", "Tell me a joke")
            icllm_client.prompt("qwen3:32b", "What's the weather in Zurich?")
            icllm.assert_prompted(contains="weather", model="llama3.1:8b")
        """,
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            '>       icllm.assert_prompted(contains="weather", model="llama3.1:8b")',
            "E       AssertionError: expected at least one call matching "
            "match(model='llama3.1:8b', contains='weather'), got 0; 2 call(s) received:",
            "E         call-* v1_chat 'llama3.1:8b', last user: 'Tell me a joke': "
            "no message contains 'weather'",
            "E         call-* v1_chat 'qwen3:32b', last user: \"What's the weather in Zurich?\": "
            "model is 'qwen3:32b', not 'llama3.1:8b'",
            "test_user.py:4: AssertionError",
        ]
    )


def test_assert_prompted_counts_and_assert_not_prompted_shows_the_offender(pt: pytest.Pytester) -> None:
    result = run(
        pt,
        """
        def test_counts(icllm, icllm_client):
            for text in ("hi", "hi again", "bye"):
                icllm_client.prompt("llama3.1:8b", text)
            assert [c.prompt for c in icllm.assert_prompted(contains="hi", times=2)] == ["hi", "hi again"]
            assert icllm.prompts == ["hi", "hi again", "bye"]

        def test_nothing_sent(icllm):
            icllm.assert_prompted(contains="hi")

        def test_not_prompted(icllm, icllm_client):
            icllm_client.prompt("llama3.1:8b", "delete everything")
            icllm.assert_not_prompted(contains="delete")
        """,
    )
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "E       AssertionError: expected at least one call matching match(contains='hi'), got 0; "
            "0 call(s) received:",
            "E         (none: did the code under test reach the emulator at "
            "the icllm_server fixture address?)",
            "E       AssertionError: expected exactly 0 call(s) matching match(contains='delete'), got 1; "
            "1 call(s) received:",
            "E         call-* v1_chat 'llama3.1:8b', last user: 'delete everything': matches",
        ]
    )


# -- teardown checks -------------------------------------------------------------------------------


def test_unused_scripted_answer_fails_the_test_at_teardown(pt: pytest.Pytester) -> None:
    result = run(
        pt,
        """
        import pytest
        from pytest_icllm import LlmReject

        def test_forgets_to_call(icllm, icllm_client):
            icllm.on(contains="weather").reply("sunny")
            icllm.on(contains="joke").reject(4, "no jokes")
            with pytest.raises(LlmReject):
                icllm_client.prompt("llama3.1:8b", "a joke please")
        """,
    )
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_forgets_to_call*",
            "scripted answers that no call used (turn this check off with "
            "@pytest.mark.icllm(assert_all_used=False)):",
            "  rule-1: on(contains='weather') -> reply 'sunny'",
            "*short test summary*",
            "ERROR test_user.py::test_forgets_to_call - Failed: scripted answers*",
        ]
    )
    result.stdout.no_fnmatch_line("*rule-2*")


def test_marker_switches_the_unused_answer_check_off(pt: pytest.Pytester) -> None:
    result = run(
        pt,
        """
        import pytest

        @pytest.mark.icllm(assert_all_used=False)
        def test_spare_answers(icllm):
            icllm.on(contains="maybe").reply("if asked")
        """,
    )
    result.assert_outcomes(passed=1)


def test_strict_mode_rejects_an_unexpected_prompt_and_reports_it_at_teardown(pt: pytest.Pytester) -> None:
    result = run(
        pt,
        """
        import pytest
        from pytest_icllm import LlmReject

        @pytest.mark.icllm(strict_rules=True)
        def test_strict(icllm, icllm_client):
            icllm.on(contains="weather").reply("sunny")
            assert icllm_client.prompt("llama3.1:8b", "weather?") == "sunny"
            with pytest.raises(LlmReject) as caught:
                icllm_client.prompt("llama3.1:8b", "Tell me a joke")
            assert caught.value.code.name == "CANISTER_REJECT"
            print(caught.value.message)
        """,
        "-rP",
    )
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_strict*",
            "prompts that no scripted answer expected (strict mode; the emulator rejected them; "
            "turn this check off with @pytest.mark.icllm(assert_all_expected=False)):",
            "  call-* v1_chat 'llama3.1:8b', last user: 'Tell me a joke'",
            "*Captured stdout call*",
            "no scripted rule matches this request (strict mode): model 'llama3.1:8b', 1 messages, "
            "last user: 'Tell me a joke'",
            "- rule-1 match(contains='weather'): no message contains 'weather'",
        ]
    )


def test_strict_mode_passes_when_every_prompt_was_expected_or_the_check_is_off(pt: pytest.Pytester) -> None:
    result = run(
        pt,
        """
        import pytest
        from pytest_icllm import LlmReject

        pytestmark = pytest.mark.icllm(strict_rules=True)

        def test_expected(icllm, icllm_client):
            icllm.on().reply("ok")
            assert icllm_client.prompt("llama3.1:8b", "anything") == "ok"

        @pytest.mark.icllm(assert_all_expected=False)
        def test_check_off(icllm, icllm_client):
            with pytest.raises(LlmReject):
                icllm_client.prompt("llama3.1:8b", "unexpected")
        """,
    )
    result.assert_outcomes(passed=2)


def test_teardown_checks_never_hide_the_tests_own_failure(pt: pytest.Pytester) -> None:
    result = run(
        pt,
        """
        import pytest

        def test_unused_and_failing(icllm, icllm_client):
            icllm.on(contains="never sent").reply("x")
            assert icllm_client.prompt("llama3.1:8b", "hi") == "the agent's own expectation"

        @pytest.mark.icllm(strict_rules=True)
        def test_unexpected_and_failing(icllm, icllm_client):
            icllm_client.prompt("llama3.1:8b", "unexpected")
        """,
    )
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            '>       assert icllm_client.prompt("llama3.1:8b", "hi") == "the agent\'s own expectation"',
            '>       icllm_client.prompt("llama3.1:8b", "unexpected")',
            "E           icllm_emulator.client.LlmReject: CANISTER_REJECT (4): "
            "no scripted rule matches this request (strict mode)*",
        ]
    )
    result.stdout.no_fnmatch_line("*ERROR at teardown*")


def test_teardown_checks_stand_back_when_setup_failed(pt: pytest.Pytester) -> None:
    result = run(
        pt,
        """
        import pytest

        @pytest.fixture
        def broken(icllm):
            icllm.on(contains="x").reply("y")
            raise RuntimeError("the test's own setup failed")

        def test_with_broken_setup(broken):
            pass
        """,
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*RuntimeError: the test's own setup failed"])
    result.stdout.no_fnmatch_line("*scripted answers that no call used*")


# -- isolation between tests -----------------------------------------------------------------------


def test_rules_history_hold_pause_and_busy_workers_do_not_leak_into_the_next_test(
    pt: pytest.Pytester,
) -> None:
    result = run(
        pt,
        """
        import threading

        import pytest
        from pytest_icllm import LlmReject

        def swallow_reject(client):
            with pytest.raises(LlmReject, match="the emulator was reset while the call waited"):
                client.prompt("llama3.1:8b", "slow")

        @pytest.mark.icllm(assert_all_used=False, seed=5, profile="unlimited")
        def test_a_leaves_a_mess(icllm, icllm_client):
            icllm.on(contains="secret").reply("from test A")
            assert icllm_client.prompt("llama3.1:8b", "secret") == "from test A"
            icllm.on(contains="other").reply("unused")
            icllm.hold()
            icllm.pause()

        def test_a2_leaves_a_worker_inside_a_long_delay(icllm, icllm_client):
            icllm.on().after(3600).reply("an hour later")
            threading.Thread(target=swallow_reject, args=(icllm_client,), daemon=True).start()
            icllm.jobs("LEASED", count=1)

        def test_b_starts_fresh(icllm, icllm_client):
            assert icllm.calls == [] and icllm.jobs() == []
            assert icllm.settings.seed == 0 and icllm.settings.profile == "current"
            assert icllm_client.prompt("llama3.1:8b", "secret") != "from test A"
            assert icllm.stats().calls == 1

        def test_c_client_alone_also_starts_fresh(icllm_client):
            assert icllm_client.prompt("llama3.1:8b", "secret") != "from test A"
        """,
    )
    result.assert_outcomes(passed=4)


# -- options ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--icllm-profile", "turbo"],
            "option --icllm-profile: 'turbo' is not valid; choose one of: current, launch-2025, unlimited",
        ),
        (
            ["--icllm-clock", "sundial"],
            "option --icllm-clock: 'sundial' is not valid; choose one of: real, virtual",
        ),
        (
            ["--icllm-tool-policy", "always"],
            "option --icllm-tool-policy: 'always' is not valid; choose one of: never, auto",
        ),
        (["--icllm-seed", "-1"], "option --icllm-seed: '-1' is not a whole number of 0 or more"),
        (
            ["--icllm-strict-rules", "maybe"],
            "option --icllm-strict-rules: 'maybe' is not a boolean; use true or false (alone, --icllm-strict-"
            "rules means true: put it after the test paths, or write --icllm-strict-rules=true)",
        ),
        (
            ["--icllm-url", "localhost"],
            "option --icllm-url: 'localhost' is not a gRPC address; use HOST:PORT, e.g. 127.0.0.1:50051 *",
        ),
        (
            ["--icllm-url", "http://127.0.0.1:50051"],
            "option --icllm-url: 'http://127.0.0.1:50051' is not a gRPC address: leave out http://; "
            "use HOST:PORT, e.g. 127.0.0.1:50051 (the emulator's gRPC port, not its HTTP one)",
        ),
        (
            ["--icllm-max-attempts", "0"],
            "option --icllm-max-attempts: '0' is not a whole number of 1 or more",
        ),
        (
            ["--icllm-caller-deadline", "-5"],
            "option --icllm-caller-deadline: '-5' must be a finite number of seconds above 0 (or 'none')",
        ),
    ],
)
def test_bad_option_value_is_a_usage_error_listing_valid_values(
    pt: pytest.Pytester, args: list[str], message: str
) -> None:
    result = pt.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: pytest-icllm: {message}"])


def test_bad_ini_value_is_a_usage_error_naming_the_ini_key(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI + "icllm_profile = turbo\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: pytest-icllm: ini option icllm_profile: 'turbo' is not valid; "
            "choose one of: current, launch-2025, unlimited"
        ]
    )


SHOW_SEED = """
def test_seed(icllm):
    print("seed", icllm.settings.seed)
"""


def test_precedence_ini_then_cli(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI + "icllm_seed = 1\n")
    pytester.makepyfile(test_seed=SHOW_SEED)
    pytester.runpytest("-s").stdout.fnmatch_lines(["*seed 1*"])
    pytester.runpytest("-s", "--icllm-seed", "2").stdout.fnmatch_lines(["*seed 2*"])


def test_precedence_config_fixture_then_module_class_and_function_markers(pytester: pytest.Pytester) -> None:
    pytester.makeini(INI + "icllm_seed = 1\n")
    pytester.makepyfile(
        test_plain="""
        def test_cli(icllm):
            assert icllm.settings.seed == 2
        """,
    )
    layered = pytester.mkdir("layered")
    (layered / "conftest.py").write_text(
        "import pytest\n\n"
        "@pytest.fixture(scope='module')\n"
        "def icllm_config():\n"
        "    return {'seed': 3, 'profile': 'launch-2025'}\n"
    )
    (layered / "test_fixture.py").write_text(
        "def test_config_fixture(icllm):\n"
        "    assert (icllm.settings.seed, icllm.settings.profile) == (3, 'launch-2025')\n"
    )
    (layered / "test_markers.py").write_text(
        "import pytest\n\n"
        "pytestmark = pytest.mark.icllm(seed=4)\n\n"
        "def test_module_marker(icllm):\n"
        "    assert (icllm.settings.seed, icllm.settings.profile) == (4, 'launch-2025')\n\n"
        "@pytest.mark.icllm(seed=5, profile='unlimited')\n"
        "class TestClass:\n"
        "    def test_class_marker(self, icllm):\n"
        "        assert (icllm.settings.seed, icllm.settings.profile) == (5, 'unlimited')\n\n"
        "    @pytest.mark.icllm(seed=6)\n"
        "    def test_function_marker(self, icllm):\n"
        "        assert (icllm.settings.seed, icllm.settings.profile) == (6, 'unlimited')\n"
    )
    result = pytester.runpytest("--icllm-seed", "2")
    result.assert_outcomes(passed=5)


def test_url_from_the_environment_loses_to_the_flag(
    pt: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ICLLM_URL", "127.0.0.1:1")
    pt.runpytest().stdout.fnmatch_lines(["icllm: emulator at 127.0.0.1:1; *"])
    pt.runpytest("--icllm-url", "127.0.0.1:2").stdout.fnmatch_lines(["icllm: emulator at 127.0.0.1:2; *"])


def test_bad_url_in_the_environment_names_the_variable(
    pt: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ICLLM_URL", "nowhere")
    result = pt.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: pytest-icllm: environment variable ICLLM_URL: 'nowhere' is not a gRPC address; "
            "use HOST:PORT, e.g. 127.0.0.1:50051 *"
        ]
    )


def test_per_test_settings_reach_the_emulator(pt: pytest.Pytester) -> None:
    pt.makeconftest(THREADED)
    result = run(
        pt,
        """
        import pytest
        from icllm_emulator.backends.fake import FakeBackend
        from icllm_emulator.client import ParameterType, parameter, tool, tool_result, user
        from icllm_emulator.domain import ChatRequest, UserMessage
        from pytest_icllm import LlmReject
        from conftest import Caller, wait_for_job

        M = "llama3.1:8b"
        ELEVEN = [user(f"message {n}") for n in range(11)]

        def test_profile_current_rejects_eleven_messages(icllm_client):
            with pytest.raises(LlmReject, match="too many messages: the request has 11, the limit is 10"):
                icllm_client.chat(M).with_messages(ELEVEN).send()

        @pytest.mark.icllm(profile="unlimited")
        def test_profile_unlimited_accepts_them(icllm_client):
            assert icllm_client.chat(M).with_messages(ELEVEN).send().content

        @pytest.mark.icllm(models="my-model,other")
        def test_models(icllm_client):
            assert icllm_client.prompt("my-model", "hi")
            unknown = "unknown model 'llama3.1:8b': this LLM canister serves my-model, other"
            with pytest.raises(LlmReject, match=unknown):
                icllm_client.prompt(M, "hi")

        @pytest.mark.icllm(tool_policy="never")
        def test_tool_policy(icllm_client):
            city = parameter("city", ParameterType.STRING).is_required()
            weather = tool("get_weather").with_parameter(city)
            reply = icllm_client.chat(M).with_messages([user("weather?")]).with_tools([weather]).send()
            assert reply.tool_calls == () and reply.content

        @pytest.mark.icllm(strict_requests=True)
        def test_strict_requests(icllm_client):
            warning = "strict requests: message 2 .tool. answers tool_call_id 'nope'"
            with pytest.raises(LlmReject, match=warning):
                icllm_client.chat(M).with_messages([user("hi"), tool_result("{}", "nope")]).send()

        @pytest.mark.icllm(seed=1)
        def test_seed(icllm_client):
            request = ChatRequest(M, (UserMessage("same question"),))
            seed = {n: FakeBackend(seed=n).answer_now(request, 1000).message.content for n in (0, 1)}
            assert seed[0] != seed[1]
            assert icllm_client.prompt(M, "same question") == seed[1]

        @pytest.mark.icllm(queue_capacity=1)
        def test_queue_capacity(icllm, icllm_client):
            icllm.pause()
            first = Caller(icllm_client, "first")
            wait_for_job(icllm, "QUEUED", attempt=0)
            with pytest.raises(LlmReject, match="the LLM canister's queue is full"):
                icllm_client.prompt(M, "second")
            icllm.resume()
            assert first.get()
        """,
    )
    result.assert_outcomes(passed=7)


# -- markers ---------------------------------------------------------------------------------------


def test_bad_marker_arguments_fail_pointing_at_the_marker(pt: pytest.Pytester) -> None:
    result = run(
        pt,
        """
        import pytest

        @pytest.mark.icllm(profil="current")
        def test_unknown_key(icllm):
            pass

        @pytest.mark.icllm("strict_rules")
        def test_positional(icllm):
            pass

        @pytest.mark.icllm(clock="virtual")
        def test_session_key(icllm):
            pass

        @pytest.mark.icllm(profile="turbo")
        def test_bad_value(icllm):
            pass

        class TestClass:
            pytestmark = pytest.mark.icllm(seed=-3)

            def test_in_class(self, icllm):
                pass
        """,
    )
    result.assert_outcomes(errors=5)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_unknown_key*",
            "test_user.py:3: @pytest.mark.icllm: unknown setting 'profil'; valid settings: seed, "
            "tool_policy, profile, models, strict_requests, queue_capacity, max_attempts, lease_seconds, "
            "caller_deadline, strict_rules, cassettes, cassette, record_mode, match_on, "
            "allow_playback_repeats, scrub_patterns, scrubbers, assert_all_used, assert_all_expected, "
            "assert_no_misses",
            "*ERROR at setup of test_positional*",
            "test_user.py:7: @pytest.mark.icllm takes keyword arguments only (seed, *); "
            "got positional ('strict_rules',)",
            "*ERROR at setup of test_session_key*",
            "test_user.py:11: @pytest.mark.icllm: clock is chosen for the whole session; "
            "set it with --icllm-clock or the ini key icllm_clock",
            "*ERROR at setup of test_bad_value*",
            "test_user.py:15: @pytest.mark.icllm: profile: 'turbo' is not valid; "
            "choose one of: current, launch-2025, unlimited",
            "*ERROR at setup of TestClass.test_in_class*",
            "test_user.py:19: @pytest.mark.icllm: seed: -3 is not a whole number of 0 or more",
        ]
    )


def test_bad_module_marker_points_at_pytestmark(pt: pytest.Pytester) -> None:
    result = run(
        pt,
        """
        import pytest

        pytestmark = [pytest.mark.icllm(strict_rules="sometimes")]

        def test_one(icllm):
            pass
        """,
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        ["test_user.py:3: @pytest.mark.icllm: strict_rules: 'sometimes' is not a boolean; use true or false"]
    )


def test_bad_config_fixture_value_names_the_fixture(pt: pytest.Pytester) -> None:
    pt.makeconftest(
        """
        import pytest

        @pytest.fixture
        def icllm_config():
            return {"workers": 4}
        """
    )
    result = run(pt, "def test_one(icllm):\n    pass\n")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "the icllm_config fixture: workers is chosen for the whole session; "
            "set it with --icllm-workers or the ini key icllm_workers"
        ]
    )


def test_marker_is_registered_for_strict_markers(pt: pytest.Pytester) -> None:
    result = pt.runpytest("--markers")
    result.stdout.fnmatch_lines(
        [
            "@pytest.mark.icllm(seed=..., tool_policy=..., profile=..., *): "
            "settings of the emulated LLM canister*"
        ]
    )


@pytest.mark.llama
def test_llama_backend_serves_the_model_file_given_to_pytest(pt: pytest.Pytester) -> None:
    tiny = Path(__file__).resolve().parents[2] / "fixtures" / "tiny-llama.gguf"
    pt.makepyfile(
        """
        def test_real_inference_answers(icllm, icllm_client):
            assert isinstance(icllm_client.prompt("llama3.1:8b", "Hello"), str)
            (call,) = icllm.calls
            assert call.answer is not None and call.worker_id.startswith("builtin-")
        """
    )
    result = pt.runpytest("--icllm-backend", "llama", "--icllm-model", str(tiny))
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"icllm settings: model=default={tiny}*"])
    missing = pt.runpytest("--icllm-backend", "llama")
    missing.stderr.fnmatch_lines(
        ["ERROR: pytest-icllm: the llama backend needs a GGUF file: *--icllm-model)"]
    )


def test_server_gives_the_environment_that_points_ollama_clients_at_it(pt: pytest.Pytester) -> None:
    pt.makepyfile(
        """
        import ollama

        def test_ollama_client_reaches_the_emulator(icllm, icllm_server, monkeypatch):
            env = icllm_server.ollama_env()
            assert env["OLLAMA_HOST"] == icllm_server.http_url.removeprefix("http://")
            for name, value in env.items():
                monkeypatch.setenv(name, value)
            icllm.on(contains="ping").reply("pong")
            with ollama.Client() as client:  # reads OLLAMA_HOST
                reply = client.chat(model="llama3.1:8b", messages=[{"role": "user", "content": "ping"}])
            assert reply.message.content == "pong"
        """
    )
    pt.runpytest().assert_outcomes(passed=1)


def test_jobs_and_stats_are_the_plugins_own_dataclasses(pt: pytest.Pytester) -> None:
    result = run(
        pt,
        """
        import dataclasses
        import threading

        from pytest_icllm import JobInfo, Stats

        def test_views(icllm, icllm_client):
            icllm.hold()
            asking = threading.Thread(target=icllm_client.prompt, args=("llama3.1:8b", "hello"))
            asking.start()
            (job,) = icllm.jobs("HELD", count=1)
            assert isinstance(job, JobInfo) and dataclasses.is_dataclass(job)
            assert (job.state, job.model, job.attempt) == ("HELD", "llama3.1:8b", 1)
            icllm.release_all()
            asking.join()
            stats = icllm.stats()
            assert isinstance(stats, Stats)
            assert (stats.calls, stats.answered, stats.rejects_by_code) == (1, 1, {})
        """,
    )
    result.assert_outcomes(passed=1)
