"""The canister as deployed in late 2026: interface versions, the model table, paying and depositing."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from icllm_emulator import candid
from icllm_emulator._proto.icllm.v1 import canister_pb2 as pb
from icllm_emulator._proto.icllm.v1 import control_pb2 as cpb
from icllm_emulator.settings import DEFAULT_MODELS
from pytest_icllm import IcllmController
from pytest_icllm._canisters import CanisterIC
from tests.canisters.conftest import BUILD
from tests.conftest import Stubs, user_request
from tests.units.test_billing import refunded

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
HUNDRED_BILLION = 100_000_000_000


def test_both_interface_versions_are_served_as_their_did_files(start_emulator: Callable[..., Stubs]) -> None:
    for version, name in (("v1", "llm_canister.did"), ("v0.3.1", "llm_canister_v0.3.1.did")):
        emu = start_emulator(interface=version)
        did = emu.canister.GetCandidInterface(pb.GetCandidInterfaceRequest()).did
        assert did == (FIXTURES / name).read_text() == candid.candid_interface(version)
    v031 = (FIXTURES / "llm_canister_v0.3.1.did").read_text()
    assert "v1_deposit" not in v031 and "variant { worker; ollama; openrouter" in v031


def test_v0_3_1_has_no_v1_deposit_and_no_paid_models(start_emulator: Callable[..., Stubs]) -> None:
    emu = start_emulator(interface="v0.3.1")
    with pytest.raises(grpc.RpcError) as caught:
        emu.canister.CallCandid(pb.CallCandidRequest(method="v1_deposit", arg=candid.encode_deposit(None)))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    details = caught.value.details()
    assert "has no update method 'v1_deposit'; it has v0_chat, v1_chat (interface v0.3.1)" in details
    with pytest.raises(grpc.RpcError) as caught:
        emu.canister.V1Deposit(pb.V1DepositRequest(), metadata=(("icllm-cycles", "5"),))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    _, call = emu.canister.V1Chat.with_call(
        user_request(model="gemma3:27b"), metadata=(("icllm-cycles", str(HUNDRED_BILLION)),)
    )
    assert refunded(call) == HUNDRED_BILLION  # before paid models, every cycle comes back


def test_the_2026_model_table() -> None:
    free = ("llama3.1:8b", "qwen3:32b", "llama4-scout", "qwen2.5:0.5b")
    assert (*free, "gemma3:27b", "z-ai:glm-5.2") == DEFAULT_MODELS


def test_a_free_model_called_with_100b_cycles_gets_every_cycle_back(emu: Stubs) -> None:
    for model in ("llama3.1:8b", "qwen3:32b", "llama4-scout", "qwen2.5:0.5b"):
        _, call = emu.canister.V1Chat.with_call(
            user_request(model=model), metadata=(("icllm-cycles", str(HUNDRED_BILLION)),)
        )
        assert refunded(call) == HUNDRED_BILLION


def test_paid_models_charge_and_unknown_models_are_a_setting(start_emulator: Callable[..., Stubs]) -> None:
    emu = start_emulator()
    _, call = emu.canister.V1Chat.with_call(
        user_request(model="z-ai:glm-5.2"), metadata=(("icllm-cycles", str(HUNDRED_BILLION)),)
    )
    assert refunded(call) < HUNDRED_BILLION
    with pytest.raises(grpc.RpcError) as caught:
        emu.canister.V1Chat(user_request(model="mistral:7b"))
    assert "unknown model 'mistral:7b'" in caught.value.details()
    paid = start_emulator(unknown_models="paid")
    with pytest.raises(grpc.RpcError) as caught:
        paid.canister.V1Chat(user_request(model="mistral:7b"))  # a paid model needs cycles
    assert "cycles" in caught.value.details()
    _, call = paid.canister.V1Chat.with_call(
        user_request(model="mistral:7b"), metadata=(("icllm-cycles", str(HUNDRED_BILLION)),)
    )
    assert 0 < refunded(call) < HUNDRED_BILLION


PROXY = """
persistent actor Proxy {
  transient let llm : actor { v1_deposit : (?Principal) -> async Nat } =
    actor ("w36hm-eqaaa-aaaal-qr76a-cai");

  public func deposit_for(beneficiary : Principal) : async Nat {
    await (with cycles = 300_000_000_000) llm.v1_deposit(?beneficiary);
  };
};
"""


def test_a_proxy_canister_deposits_for_its_beneficiary_and_a_top_up_adds_more(
    icllm: IcllmController, icllm_canister: CanisterIC
) -> None:
    proxy = icllm_canister(BUILD.built_motoko(PROXY))
    beneficiary = "ryjl3-tyaaa-aaaaa-aaaba-cai"
    assert proxy.update("deposit_for", beneficiary) == 300_000_000_000
    assert icllm.balance(beneficiary) == 300_000_000_000
    assert icllm.balance(proxy.id) == 0
    assert icllm.top_up(beneficiary, 50) == 300_000_000_050
    with pytest.raises(ValueError, match="0 or more cycles"):
        icllm.top_up(beneficiary, -1)


def test_interface_and_unknown_models_are_refused_when_not_valid() -> None:
    from icllm_emulator.config import ConfigError, EmulatorConfig

    with pytest.raises(ConfigError, match=r"interface 'v2' is not valid; choose one of: v1, v0\.3\.1"):
        EmulatorConfig(interface="v2")
    with pytest.raises(ConfigError, match="reject, paid"):
        EmulatorConfig(unknown_models="maybe")  # type: ignore[arg-type]  # as from an env var
    assert cpb  # the Control messages are the same for both versions


# -- what OpenAI's and Ollama's clients expect ------------------------------------------------------


@pytest.mark.parametrize("route", ["/v1/embeddings", "/v1/completions", "/v1/responses"])
def test_unimplemented_openai_routes_answer_in_openais_error_shape(emu: Stubs, route: str) -> None:
    import httpx

    response = httpx.post(
        f"{emu.emulator.ports.http_url}{route}", json={"model": "llama3.1:8b", "input": "x"}
    )
    # OpenAI's own answer to a route it lacks; the OpenAI SDK retries 408, 409, 429 and 5xx with back-off.
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["type"] == "not_found_error"
    assert set(error) >= {"message", "type", "code"}
    assert error["code"] == "unsupported_route" and "POST /v1/chat/completions" in error["message"]


def _openai(emu: Stubs, **fields: object) -> object:
    import httpx

    body = {
        "model": "llama3.1:8b",
        "messages": [{"role": "user", "content": "What is the weather in Rome?"}],
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
        ],
        **fields,
    }
    return httpx.post(f"{emu.emulator.ports.http_url}/v1/chat/completions", json=body)


def test_tool_choice_none_gives_no_tool_calls_and_forcing_is_refused(emu: Stubs) -> None:
    auto = _openai(emu).json()  # type: ignore[attr-defined]
    assert auto["choices"][0]["message"]["tool_calls"]  # the fake backend calls the offered tool
    none = _openai(emu, tool_choice="none").json()  # type: ignore[attr-defined]
    assert "tool_calls" not in none["choices"][0]["message"]
    assert none["choices"][0]["finish_reason"] == "stop"
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        refused = _openai(emu, tool_choice=choice)
        assert refused.status_code == 400  # type: ignore[attr-defined]
        assert "is not supported" in refused.json()["error"]["message"]  # type: ignore[attr-defined]


def test_n_above_one_is_a_400_that_says_why(emu: Stubs) -> None:
    refused = _openai(emu, n=3)
    assert refused.status_code == 400  # type: ignore[attr-defined]
    assert "one choice per request" in refused.json()["error"]["message"]  # type: ignore[attr-defined]
    assert _openai(emu, n=1).status_code == 200  # type: ignore[attr-defined]


def test_every_accepted_but_ignored_field_is_named_in_the_header(emu: Stubs) -> None:
    answer = _openai(
        emu, temperature=0.2, top_p=0.9, seed=7, user="u1", logit_bias={}, parallel_tool_calls=True
    )
    named = answer.headers["x-icllm-ignored-fields"].split(", ")  # type: ignore[attr-defined]
    assert {"temperature", "top_p", "seed", "user", "logit_bias", "parallel_tool_calls"} <= set(named)


# -- messages that say what would be valid -------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "icllm_emulator", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_numbers_are_refused_with_what_would_do() -> None:
    seed = _cli("serve", "--seed", "x")
    assert (
        seed.returncode == 2 and "argument --seed: 'x' is not a whole number (like 0, 1 or 42)" in seed.stderr
    )
    lease = _cli("serve", "--lease-seconds", "abc")
    assert "'abc' is not a number of seconds above 0" in lease.stderr


def test_a_yaml_error_in_a_rule_file_names_the_file(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - match: {contains: [unclosed\n")
    result = _cli("serve", "--grpc-port", "0", "--ollama-port", "off", "--rules", str(rules))
    assert result.returncode == 2
    assert f'in "{rules}"' in result.stderr and "<unicode string>" not in result.stderr


def test_a_worker_that_finds_no_emulator_gives_up_saying_where_it_looked() -> None:
    result = _cli("worker", "--connect", "127.0.0.1:1", "--poll-seconds", "1")
    assert result.returncode == 2
    assert "no emulator answers at 127.0.0.1:1" in result.stderr


def test_the_protos_ship_in_the_package() -> None:
    from importlib import resources

    files = resources.files("icllm_emulator._proto.icllm.v1")
    for name in ("canister.proto", "control.proto", "worker.proto", "canisters.proto"):
        assert (
            files.joinpath(name).read_text()
            == (FIXTURES.parent / "proto" / "icllm" / "v1" / name).read_text()
        )


def test_fake_answers_keep_apostrophes_when_they_echo_the_prompt() -> None:
    from icllm_emulator.backends.fake import fake_answer
    from icllm_emulator.domain import ChatRequest, ToolPolicy, UserMessage

    request = ChatRequest("llama3.1:8b", (UserMessage("What's the speed of light?"),))
    answers = [
        fake_answer(request, seed=seed, max_output_tokens=50, tool_policy=ToolPolicy.AUTO).message.content
        or ""
        for seed in range(20)
    ]
    assert any(a.startswith('Regarding "What\'s the speed of light"') for a in answers)
    assert not any("What s" in a for a in answers)


def test_plugin_messages(pytester: pytest.Pytester) -> None:
    from tests.pytester_support import INI

    pytester.makeini(INI)
    pytester.makepyfile(
        test_messages="""
        import pytest

        @pytest.mark.icllm(lease_secnds=5)
        def test_misspelt_marker_without_the_fixture():
            pass

        @pytest.mark.icllm(lease_seconds=0)
        def test_zero_lease(icllm):
            pass

        def test_unused_rule(icllm, icllm_client):
            icllm.on(contains="weather").reply("sunny")
            icllm_client.prompt("llama3.1:8b", "tell me a joke")
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, errors=3)  # two refused at setup, one checked at teardown
    text = result.stdout.str()
    assert "lease_secnds" in text
    assert "0 is not a number of seconds above 0 (like 60 or 0.5)" in text and "(or 'none')" not in text
    result.stdout.fnmatch_lines(
        ["*rule-1: *weather*", "*call-000001 v1_chat*: no message contains 'weather'"]
    )
