"""What a session imports: only what its tests use (canister modules, the HTTP door) is loaded."""

from __future__ import annotations

import pytest

from tests.pytester_support import pt

__all__ = ["pt"]  # a fixture

LEAN = """
import sys

M = "llama3.1:8b"


def test_a_scripted_call_loads_no_canister_runtime(icllm, icllm_client):
    icllm.on(contains="hi").reply("hello")
    assert icllm_client.prompt(M, "hi") == "hello"
    loaded = {name.split(".")[0] for name in sys.modules}
    # The canister runtime, the HTTP door, regex rules' matcher, YAML (rule files, cassettes): all unused.
    assert not {"wasmtime", "uvicorn", "starlette", "regex", "yaml", "ryml"} & loaded
"""


def test_a_session_without_canisters_or_http_imports_neither(pt: pytest.Pytester) -> None:
    pt.makepyfile(test_lean=LEAN)

    result = pt.runpytest_subprocess("-p", "no:pytest_httpx")

    result.assert_outcomes(passed=1)


USES_THEM = """
import sys

import httpx


def test_the_http_door_starts_when_its_address_is_asked_for(icllm, icllm_server):
    icllm.on(contains="hi").reply("hello")
    assert "uvicorn" not in sys.modules
    reply = httpx.post(
        icllm_server.http_url + "/api/chat",
        json={"model": "llama3.1:8b", "messages": [{"role": "user", "content": "hi"}], "stream": False},
    )
    assert reply.json()["message"]["content"] == "hello"
    assert icllm_server.ollama_env()["OLLAMA_HOST"] == icllm_server.http_url.removeprefix("http://")


def test_the_door_stays_open_for_later_tests(icllm, icllm_server):
    icllm.on(contains="again").reply("still here")
    reply = httpx.post(
        icllm_server.http_url + "/api/chat",
        json={"model": "llama3.1:8b", "messages": [{"role": "user", "content": "again"}], "stream": False},
    )
    assert reply.json()["message"]["content"] == "still here"
"""


def test_the_http_door_opens_on_first_use(pt: pytest.Pytester) -> None:
    pt.makepyfile(test_http=USES_THEM)

    result = pt.runpytest_subprocess("-p", "no:pytest_httpx", "-p", "no:randomly")

    result.assert_outcomes(passed=2)
