"""HTTP outcalls of a canister, scripted from pytest like its LLM answers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import wasmtime

from icllm_emulator.runtime.management.http import http_interface
from pytest_icllm import CanisterReject, IcllmController
from pytest_icllm._canisters import CanisterIC
from pytest_icllm.plugin import EmulatorAddress
from tests.canisters.wat import relay_module
from tests.pytester_support import pt, run

__all__ = ["pt"]  # a fixture

PRICE_URL = "https://api.example.com/price?symbol=ICP"


def test_an_agents_tool_makes_an_outcall_scripted_from_pytest(
    icllm: IcllmController, icllm_canister: CanisterIC, motoko_agent: Path
) -> None:
    icllm.on(tool="get_price").call_tool("get_price", symbol="ICP")
    icllm.on(contains="42.5").reply("ICP trades at 42.5 USD.")
    price = icllm.outcalls.on(url=PRICE_URL, method="get").reply(
        json_body={"usd": 42.5}, headers={"Set-Cookie": "session=abc"}
    )
    agent = icllm_canister(motoko_agent)
    assert agent.update("price_agent", "What does ICP cost?") == "ICP trades at 42.5 USD."
    assert price.uses == 1
    (outcall,) = icllm.outcalls.calls
    assert (outcall.canister, outcall.method, outcall.url) == (agent.id, "get", PRICE_URL)
    assert ("Accept", "application/json") in outcall.headers
    assert outcall.upstream is not None and ("Set-Cookie", "session=abc") in outcall.upstream.headers
    assert outcall.response is not None and outcall.response.headers == ()  # the canister's transform ran
    assert outcall.response.text == '{"usd": 42.5}'
    assert outcall.cycles_charged > 0 and outcall.cycles_attached == 1_000_000_000
    tool_result = icllm.requests[1].messages[-1]
    assert tool_result.content == 'HTTP 200: {"usd": 42.5}'


def test_an_unscripted_outcall_is_rejected_with_how_to_script_it(
    icllm: IcllmController, icllm_canister: CanisterIC, motoko_agent: Path
) -> None:
    agent = icllm_canister(motoko_agent)
    with pytest.raises(CanisterReject) as caught:
        agent.update("fetch_price", "ICP", 1_000_000_000)
    assert caught.value.code == 4
    assert f"HTTP outcall GET {PRICE_URL} is not scripted" in caught.value.message
    assert "icllm.outcalls.on(url=...).reply(" in caught.value.message
    (outcall,) = icllm.outcalls.calls
    assert outcall.reject_code == 4 and not outcall.unexpected


def test_too_few_cycles_is_the_ics_reject_and_they_come_back(
    icllm: IcllmController, icllm_canister: CanisterIC, motoko_agent: Path
) -> None:
    icllm.outcalls.on(url=PRICE_URL).reply(body="1")
    agent = icllm_canister(motoko_agent)
    before = agent.balance
    with pytest.raises(
        CanisterReject, match=r"http_request request sent with 1000 cycles, but \d+ cycles are"
    ):
        agent.update("fetch_price", "ICP", 1000)
    assert agent.balance == before
    assert icllm.outcalls.calls[0].cycles_charged == 0
    assert agent.update("fetch_price", "ICP", 1_000_000_000) == "HTTP 200: 1"
    charged = icllm.outcalls.calls[1].cycles_charged
    assert agent.balance == before - charged  # the rest of the 1B attached was refunded


def test_a_response_above_max_response_bytes_is_rejected(
    icllm: IcllmController, icllm_canister: CanisterIC, motoko_agent: Path
) -> None:
    icllm.outcalls.on(url_regex=r"/price\?").reply(body="x" * 10_001)  # the agent allows 10,000 bytes
    agent = icllm_canister(motoko_agent)
    with pytest.raises(CanisterReject, match="exceeds size limit of 10000 bytes"):
        agent.update("fetch_price", "ICP", 1_000_000_000)  # the canister passes the reject on, as its own
    assert icllm.outcalls.calls[0].reject_code == 1  # SYS_FATAL, as the IC answers


def test_a_scripted_reject_and_a_server_error_reach_the_canister(
    icllm: IcllmController, icllm_canister: CanisterIC, motoko_agent: Path
) -> None:
    icllm.outcalls.on(url_regex="symbol=BTC").reply(status=503, body="busy")
    icllm.outcalls.on(url_regex="symbol=ETH").reject(2, "connection refused")
    agent = icllm_canister(motoko_agent)
    assert agent.update("fetch_price", "BTC", 1_000_000_000) == "HTTP 503: busy"
    with pytest.raises(CanisterReject, match="connection refused"):
        agent.update("fetch_price", "ETH", 1_000_000_000)
    assert icllm.outcalls.calls[1].reject_code == 2


def test_bad_scripts_fail_at_once(icllm: IcllmController) -> None:
    with pytest.raises(
        ValueError, match="method 'fetch' is not an outcall method; choose one of: get, head, post"
    ):
        icllm.outcalls.on(method="fetch")
    with pytest.raises(ValueError, match=r"url_regex .* is not a valid regular expression"):
        icllm.outcalls.on(url_regex="(unclosed")
    with pytest.raises(ValueError, match="status 42 is not an HTTP status"):
        icllm.outcalls.on().reply(status=42)


def test_strict_outcalls_and_unused_scripts_fail_the_test_at_teardown(
    pt: pytest.Pytester, motoko_agent: Path
) -> None:
    result = run(
        pt,
        f"""
        import pytest
        from pytest_icllm import CanisterReject

        def test_unscripted(icllm, icllm_canister):
            icllm.outcalls.strict()
            agent = icllm_canister({str(motoko_agent)!r})
            with pytest.raises(CanisterReject):
                agent.update("fetch_price", "DOGE", 1_000_000_000)

        def test_unused(icllm):
            icllm.outcalls.on(url="https://api.example.com/never").reply(body="unused")
        """,
    )
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*HTTP outcalls that no scripted response expected (strict outcalls*",
            "*outcall-000001 GET https://api.example.com/price?symbol=DOGE from *-> rejected 4*",
            "*scripted outcall responses that no outcall used*",
            "*outcall-rule-1: outcall url='https://api.example.com/never'*",
        ]
    )


def test_loopback_pass_through_is_opt_in_and_loopback_only(
    icllm: IcllmController, icllm_canister: CanisterIC, icllm_server: EmulatorAddress, motoko_agent: Path
) -> None:
    assert icllm_server.http_url
    agent = icllm_canister(motoko_agent)
    version = f"{icllm_server.http_url}/api/version"
    with pytest.raises(CanisterReject, match="is not scripted"):
        agent.update("fetch_url", version, 1_000_000_000)  # off by default
    icllm.outcalls.allow_loopback()
    answer = agent.update("fetch_url", version, 1_000_000_000)  # the emulator's own Ollama door
    assert answer.startswith('HTTP 200: {"version":')
    with pytest.raises(CanisterReject, match="loopback pass-through is on, but this URL is not on loopback"):
        agent.update("fetch_url", "https://example.com/", 1_000_000_000)


def test_an_outcall_url_that_is_not_a_url_is_rejected(icllm_canister: CanisterIC, motoko_agent: Path) -> None:
    agent = icllm_canister(motoko_agent)
    with pytest.raises(CanisterReject, match="is not an http\\(s\\) URL with a host") as caught:
        agent.update("fetch_url", "not-a-url", 1_000_000_000)
    assert caught.value.code == 4


# Sends its whole argument (Candid http_request_args) to the management canister's http_request with
# 100B cycles, and replies with the reply's bytes, or with the reject code as a digit and the message.
RELAY = relay_module(
    "relay",
    """
    (call $arg_copy (i32.const 65536) (i32.const 0) (call $arg_size))
    (call $call_new
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 12)
      (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 0))
    (call $call_data_append (i32.const 65536) (call $arg_size))
    (call $cycles_add (i64.const 0) (i64.const 100000000000))""",
    pages=64,
    buffer=65536,
    data='(data (i32.const 0) "http_request")',
)


def _outcall(url: str, headers: tuple[tuple[str, str], ...] = (), body: bytes | None = None) -> bytes:
    args = {
        "url": url,
        "max_response_bytes": None,
        "method": {"post" if body else "get": None},
        "headers": [{"name": name, "value": value} for name, value in headers],
        "body": body,
        "transform": None,
        "is_replicated": None,
    }
    return http_interface().encode_call("http_request", (args,))


@pytest.mark.parametrize(
    ("url", "headers", "body", "problem"),
    [
        ("{base}/api/version\r\nX-Injected: 1", (), None, r"has '\\r' at position \d+ \(spaces and control"),
        ("{base}/api/\tversion", (), None, r"has '\\t' at position \d+"),
        ("http://127.0.0.1:99999/api/version", (), None, "is not a URL: Port out of range 0-65535"),
        ("{base}/api/version", (("X-Name", "café"),), None, r"the value of header X-Name \('café'\) is not"),
        ("{base}/api/version", (("X Name", "v"),), None, r"the header name 'X Name' is not an HTTP header"),
        (
            "{base}/api/version",
            (("Content-Type", "text/plain"),),
            b"x" * (2_000_001 - len("Content-Typetext/plain")),
            "total number of bytes to represent all http header names and values and http body "
            "2000001 exceeds 2000000",
        ),
    ],
    ids=["CR-LF", "TAB", "port 99999", "non-ASCII header value", "bad header name", "over 2 MB"],
)
def test_an_outcall_httpx_would_refuse_is_rejected_like_a_bad_url(
    icllm: IcllmController,
    icllm_canister: CanisterIC,
    icllm_server: EmulatorAddress,
    url: str,
    headers: tuple[tuple[str, str], ...],
    body: bytes | None,
    problem: str,
) -> None:
    icllm.outcalls.allow_loopback()  # these would go out to this machine's loopback
    relay = icllm_canister(bytes(wasmtime.wat2wasm(RELAY)))
    answer = relay.update_raw("relay", _outcall(url.format(base=icllm_server.http_url), headers, body))
    assert answer[:1] == b"4", answer[:300]  # CANISTER_REJECT, as for any bad URL, and the call is answered
    message = answer[1:].decode()
    assert message.startswith("http_request: ")
    assert re.search(problem, message), message
    assert icllm.outcalls.calls[-1].reject_code == 4


def test_an_outcall_of_exactly_2_mb_is_sent(icllm: IcllmController, icllm_canister: CanisterIC) -> None:
    icllm.outcalls.on(url_regex="/upload$").reply(body="stored")
    relay = icllm_canister(bytes(wasmtime.wat2wasm(RELAY)))
    answer = relay.update_raw(
        "relay", _outcall("https://example.com/upload", (("A", "b"),), b"x" * 1_999_998)
    )
    assert http_interface().decode_reply("http_request", answer)["body"] == b"stored"
