"""The plugin's session emulator: one per xdist worker, an external one by --icllm-url, and asyncio tests."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

import pytest

from tests.conftest import Stubs
from tests.pytester_support import pt, run

__all__ = ["pt"]  # a fixture


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- parallel --------------------------------------------------------------------------------------

ISOLATED = """
import json
import os
from pathlib import Path

import pytest

M = "llama3.1:8b"


@pytest.mark.parametrize("n", range(40))
def test_sees_only_its_own_calls(icllm, icllm_client, icllm_server, n):
    assert icllm.calls == []
    icllm.on(contains=f"question-{n} ").reply(f"answer-{n}")
    for k in range(3):
        assert icllm_client.prompt(M, f"question-{n} #{k}") == f"answer-{n}"
    assert icllm.prompts == [f"question-{n} #{k}" for k in range(3)]
    assert {call.rule_id for call in icllm.calls} == {"rule-1"}
    assert icllm.stats().calls == 3
    Path(f"seen-{n}.json").write_text(
        json.dumps({"worker": os.environ["PYTEST_XDIST_WORKER"], "target": icllm_server.grpc_target})
    )
"""


def test_each_xdist_worker_has_its_own_emulator_and_nothing_leaks(pt: pytest.Pytester) -> None:
    pt.makepyfile(test_isolated=ISOLATED)
    result = pt.runpytest_subprocess("-n", "4")
    result.assert_outcomes(passed=40)
    seen = [json.loads(path.read_text()) for path in pt.path.glob("seen-*.json")]
    assert len(seen) == 40
    targets_by_worker: dict[str, set[str]] = {}
    for entry in seen:
        targets_by_worker.setdefault(entry["worker"], set()).add(entry["target"])
    assert len(targets_by_worker) == 4
    assert all(len(targets) == 1 for targets in targets_by_worker.values())
    targets = [next(iter(t)) for t in targets_by_worker.values()]
    assert len(set(targets)) == 4


def test_url_with_xdist_is_refused(pt: pytest.Pytester) -> None:
    result = pt.runpytest("-n", "2", "--icllm-url", "127.0.0.1:50051")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: pytest-icllm: --icllm-url points every xdist worker at one emulator, whose state "
            "the workers would share and reset under each other; "
            "leave it out to give each worker its own emulator"
        ]
    )


def test_url_from_the_environment_with_xdist_is_refused_too(
    pt: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ICLLM_URL", "127.0.0.1:50051")
    result = pt.runpytest("-n", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: pytest-icllm: --icllm-url points every xdist worker at one*"])


def test_in_process_emulator_exposes_its_addresses_and_never_takes_ollamas_port(pt: pytest.Pytester) -> None:
    result = run(
        pt,
        """
        def test_address(icllm_server):
            assert icllm_server.in_process
            host, port = icllm_server.grpc_target.rsplit(":", 1)
            assert host == "127.0.0.1" and int(port) > 0
            assert icllm_server.http_url.startswith("http://127.0.0.1:")
            assert not icllm_server.http_url.endswith(":11434")
        """,
    )
    result.assert_outcomes(passed=1)


# -- an external emulator --------------------------------------------------------------------------


def test_url_points_the_fixtures_at_a_running_emulator(
    pt: pytest.Pytester, start_emulator: Callable[..., Stubs]
) -> None:
    external = start_emulator(clock="virtual")
    target = external.emulator.ports.grpc_target
    result = run(
        pt,
        f"""
        def test_uses_the_external_emulator(icllm, icllm_client, icllm_server):
            assert (icllm_server.grpc_target, icllm_server.in_process) == ({target!r}, False)
            icllm.on(contains="ping").reply("pong")
            assert icllm_client.prompt("llama3.1:8b", "ping") == "pong"
            icllm.advance(5)  # the external emulator runs a virtual clock

        def test_state_is_reset_there_too(icllm):
            assert icllm.calls == []
        """,
        "--icllm-url",
        target,
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"icllm: emulator at {target}; profile=current, *"])
    assert external.emulator.engine.history.calls == 0  # reset by the second test
    assert external.emulator.engine.rule_states() == []


def test_unreachable_url_exits_with_a_clear_message(pt: pytest.Pytester) -> None:
    port = free_port()
    result = run(pt, "def test_one(icllm):\n    pass\n", "--icllm-url", f"127.0.0.1:{port}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stdout.fnmatch_lines(
        [
            f"*pytest-icllm: no emulator answers at 127.0.0.1:{port} (UNAVAILABLE): start one there "
            "(icllm-emulator serve), or leave out --icllm-url / ICLLM_URL to run one in-process*"
        ]
    )


def test_tests_that_do_not_use_the_emulator_never_contact_the_url(pt: pytest.Pytester) -> None:
    result = run(pt, "def test_plain():\n    pass\n", "--icllm-url", f"127.0.0.1:{free_port()}")
    result.assert_outcomes(passed=1)


# -- asyncio ---------------------------------------------------------------------------------------


def test_asyncio_tests_use_the_async_client_and_wait_held(pt: pytest.Pytester) -> None:
    result = run(
        pt,
        """
        import asyncio

        import pytest
        from icllm_emulator.client import RejectCode, user
        from pytest_icllm import LlmReject

        M = "llama3.1:8b"

        @pytest.mark.asyncio
        async def test_scripted_answer(icllm, icllm_async_client):
            icllm.on(contains="capital").reply("Bern")
            chat = icllm_async_client.chat(M).with_messages([user("The capital of Switzerland?")])
            reply = await chat.send()
            assert reply.content == "Bern"
            icllm.assert_prompted(contains="capital", times=1)

        @pytest.mark.asyncio
        async def test_reject(icllm, icllm_async_client):
            icllm.on().reject(RejectCode.SYS_TRANSIENT, "busy")
            with pytest.raises(LlmReject) as caught:
                await icllm_async_client.prompt(M, "hi")
            assert caught.value.code is RejectCode.SYS_TRANSIENT

        @pytest.mark.asyncio
        async def test_release_order_across_awaits(icllm, icllm_async_client):
            icllm.on(contains="first").reply("1")
            icllm.on(contains="second").reply("2")
            icllm.hold()
            first = asyncio.create_task(icllm_async_client.prompt(M, "first"))
            (first_job,) = await icllm.wait_held(1)
            second = asyncio.create_task(icllm_async_client.prompt(M, "second"))
            _, second_job = await icllm.wait_held(2)
            icllm.release(second_job)
            assert await second == "2"
            assert not first.done()
            icllm.release(first_job)
            assert await first == "1"

        @pytest.mark.asyncio
        async def test_wait_held_gives_up_with_a_message(icllm):
            icllm.hold()
            await icllm.wait_held(1, timeout=0.05)
        """,
    )
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["E       AssertionError: expected 1 held job(s) within 0.05 s, got []"])


def test_icllm_calls_reads_a_history_of_several_pages(pt: pytest.Pytester) -> None:
    result = run(
        pt,
        """
        import pytest

        @pytest.mark.icllm(profile="unlimited")
        def test_many(icllm, icllm_client):
            for n in range(40):
                icllm_client.prompt("llama3.1:8b", f"{n:02d} " + "w" * 60_000)
            assert [call.prompt[:2] for call in icllm.calls] == [f"{n:02d}" for n in range(40)]
        """,
    )
    result.assert_outcomes(passed=1)
