"""Inputs that once wedged, froze or exhausted the emulator: each is refused clearly, and the emulator
goes on serving. Every test here failed before its fix."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import wasmtime
from grpc_health.v1 import health_pb2

from icllm_emulator._proto.icllm.v1 import canister_pb2 as pb
from icllm_emulator._proto.icllm.v1 import canisters_pb2 as canisters_pb
from icllm_emulator._proto.icllm.v1 import canisters_pb2_grpc
from icllm_emulator._proto.icllm.v1 import control_pb2 as cpb
from icllm_emulator._proto.icllm.v1 import worker_pb2 as worker_pb
from icllm_emulator.cassettes.settings import CassetteSettings
from tests.conftest import Stubs, user_request

# -- cassette paths over Control --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("bad\0name.yaml", "contains a NUL byte"),
        ("x" * 5000 + ".yaml", "paths are at most 4096 bytes"),
        ("d/" + "n" * 300 + ".yaml", "names are at most 255 bytes"),
    ],
)
def test_an_impossible_cassette_path_is_refused_and_the_emulator_goes_on(
    emu: Stubs, path: str, problem: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        emu.control.UseCassette(cpb.UseCassetteRequest(path=path, record_mode="all"))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert problem in caught.value.details()
    assert emu.canister.V1Chat(user_request()).message.content
    emu.control.EjectCassette(cpb.EjectCassetteRequest())
    emu.control.Reset(cpb.ResetRequest())


def test_record_mode_all_never_overwrites_a_file_that_is_not_a_cassette(emu: Stubs, tmp_path: Path) -> None:
    precious = tmp_path / "config.yaml"
    precious.write_text("database: production\npassword: hunter2\n")
    with pytest.raises(grpc.RpcError) as caught:
        emu.control.UseCassette(cpb.UseCassetteRequest(path=str(precious), record_mode="all"))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert precious.read_text() == "database: production\npassword: hunter2\n"


def test_control_paths_stay_in_the_cassette_folder_unless_allowed(
    start_emulator: Callable[..., Stubs], tmp_path: Path
) -> None:
    folder = tmp_path / "cassettes"
    folder.mkdir()
    emu = start_emulator(cassettes=CassetteSettings(directory=str(folder)))
    for outside in ("../escape.yaml", str(tmp_path / "elsewhere.yaml")):
        with pytest.raises(grpc.RpcError) as caught:
            emu.control.UseCassette(cpb.UseCassetteRequest(path=outside, record_mode="all"))
        assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "is outside the cassette folder" in caught.value.details()
        assert "--cassette-paths-anywhere" in caught.value.details()
    emu.control.UseCassette(cpb.UseCassetteRequest(path="inside.yaml", record_mode="all"))
    emu.canister.V1Chat(user_request())
    emu.control.EjectCassette(cpb.EjectCassetteRequest())
    assert (folder / "inside.yaml").is_file()
    assert not (tmp_path / "escape.yaml").exists()
    with pytest.raises(grpc.RpcError) as caught:
        emu.control.UseCassette(cpb.UseCassetteRequest(path="x.yaml", scrubbers=["os:system"]))
    assert "was not given at start-up" in caught.value.details()


# -- the clock -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [math.nan, math.inf, 1e308])
def test_absurd_clock_moves_are_refused_and_reset_restores_the_clock(
    start_emulator: Callable[..., Stubs], seconds: float
) -> None:
    emu = start_emulator(clock="virtual")
    start = emu.control.AdvanceClock(cpb.AdvanceClockRequest(seconds=0)).now
    with pytest.raises(grpc.RpcError) as caught:
        emu.control.AdvanceClock(cpb.AdvanceClockRequest(seconds=seconds))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert emu.control.AdvanceClock(cpb.AdvanceClockRequest(seconds=10)).now == start + 10
    emu.control.Reset(cpb.ResetRequest())
    assert emu.control.AdvanceClock(cpb.AdvanceClockRequest(seconds=0)).now == start


# -- HTTP bodies ------------------------------------------------------------------------------------------

LONE_SURROGATE = (
    '{"model": "llama3.1:8b", "messages": [{"role": "user", "content": "\\ud800"}], "stream": false}'
)


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/api/chat", LONE_SURROGATE),
        ("/api/generate", '{"model": "llama3.1:8b", "prompt": "\\ud800", "stream": false}'),
        ("/api/show", '{"model": "\\udfff"}'),
        ("/api/pull", '{"model": "\\ud800"}'),
        (
            "/v1/chat/completions",
            '{"model": "llama3.1:8b", "messages": [{"role": "user", "content": "\\ud800"}]}',
        ),
    ],
)
def test_a_lone_surrogate_is_a_400_and_leaves_no_record_open(emu: Stubs, route: str, body: str) -> None:
    url = emu.emulator.ports.http_url
    response = httpx.post(f"{url}{route}", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "lone UTF-16 surrogate" in response.text
    assert list(emu.control.GetHistory(cpb.GetHistoryRequest()).calls) == []  # refused before the canister
    assert emu.canister.V1Chat(user_request()).message.content


@pytest.mark.parametrize("value", ["Infinity", "-Infinity", "NaN", "1e400"])
def test_non_finite_numbers_are_a_400(emu: Stubs, value: str) -> None:
    url = emu.emulator.ports.http_url
    body = '{"model": "llama3.1:8b", "prompt": "hi", "stream": false, "options": {"num_predict": VALUE}}'
    body = body.replace("VALUE", value)
    response = httpx.post(f"{url}/api/generate", content=body)
    assert response.status_code == 400
    assert "finite number" in response.text
    assert httpx.get(f"{url}/api/version").status_code == 200


# -- gRPC odds and ends -------------------------------------------------------------------------------


def test_malformed_health_checks_are_invalid_argument(emu: Stubs) -> None:
    check = emu.channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=lambda raw: raw,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    with pytest.raises(grpc.RpcError) as caught:
        check(b"\xff\xff\xff\xff")
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert check(b"").status == health_pb2.HealthCheckResponse.SERVING


def test_a_huge_method_name_is_shortened_in_the_reject(emu: Stubs) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        emu.canister.CallCandid(pb.CallCandidRequest(method="m" * 20_000, arg=b"DIDL\0\0"))
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert "(20000 characters)" in caught.value.details()
    assert len(caught.value.details()) < 500


# -- the port file ----------------------------------------------------------------------------------------


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "icllm_emulator", "serve", "--grpc-port", "0", "--ollama-port", "off", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_port_file_in_a_missing_folder_is_refused(tmp_path: Path) -> None:
    result = serve("--port-file", str(tmp_path / "missing" / "ports.json"))
    assert result.returncode == 2
    assert "does not exist; create it first" in result.stderr
    assert not (tmp_path / "missing").exists()


def test_a_port_file_never_replaces_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "ports.fifo"
    os.mkfifo(fifo)
    result = serve("--port-file", str(fifo))
    assert result.returncode == 2
    assert "is not a regular file" in result.stderr
    assert fifo.is_fifo()


# -- history -------------------------------------------------------------------------------------------


def test_history_keeps_little_of_huge_or_rejected_requests_and_says_so(
    start_emulator: Callable[..., Stubs],
) -> None:
    emu = start_emulator(profile="unlimited")
    huge = "x" * 1_900_000
    emu.canister.V1Chat(user_request(huge))
    emu.control.Configure(cpb.ConfigureRequest(profile="current"))
    with pytest.raises(grpc.RpcError):
        emu.canister.V1Chat(user_request("y" * 50_000))  # over 10 KiB: rejected
    kept, rejected = emu.control.GetHistory(cpb.GetHistoryRequest()).calls
    assert kept.request_truncated and rejected.request_truncated
    assert len(kept.request.messages[0].user.content) < 70_000
    assert "characters not stored" in kept.request.messages[0].user.content
    assert len(rejected.request.messages[0].user.content) < 5_000
    assert emu.emulator.engine.history._bytes < 100_000


def test_history_is_bounded_by_bytes(start_emulator: Callable[..., Stubs]) -> None:
    emu = start_emulator(profile="unlimited", history_bytes=200_000)
    for n in range(20):
        emu.canister.V1Chat(user_request(f"{n} " + "z" * 50_000))
    calls = emu.control.GetHistory(cpb.GetHistoryRequest()).calls
    assert 2 <= len(calls) <= 4
    assert calls[-1].request.messages[0].user.content.startswith("19 ")
    assert emu.control.GetStats(cpb.GetStatsRequest()).calls == 20  # the totals count every call


def test_a_history_over_2_mib_comes_in_pages(start_emulator: Callable[..., Stubs]) -> None:
    emu = start_emulator(profile="unlimited")
    for n in range(40):
        emu.canister.V1Chat(user_request(f"{n:02d} " + "w" * 60_000))
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = emu.control.GetHistory(cpb.GetHistoryRequest(page_token=token))
        seen += [call.request.messages[0].user.content[:2] for call in page.calls]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"{n:02d}" for n in range(40)]
    assert pages >= 3
    small = emu.control.GetHistory(cpb.GetHistoryRequest(page_size=5))
    assert len(small.calls) == 5 and small.next_page_token == small.calls[-1].id
    with pytest.raises(grpc.RpcError) as caught:
        emu.control.GetHistory(cpb.GetHistoryRequest(page_token="nonsense"))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT


# -- backtracking patterns ------------------------------------------------------------------------------

# `^(a+)+$`, which froze the loop for a second, is no trouble for the regex package; this one still is.
EVIL = "^(a|a)+$"
NEAR_MISS = "a" * 30 + "!"


def test_a_backtracking_rule_regex_is_that_rules_miss_and_blocks_nothing(
    start_emulator: Callable[..., Stubs],
) -> None:
    emu = start_emulator(strict_rules=True)
    emu.control.AddRules(
        cpb.AddRulesRequest(
            rules=[
                cpb.Rule(
                    id="evil",
                    match=cpb.RuleMatch(regex=EVIL),
                    action=cpb.RuleAction(reply=cpb.ReplyAction(content="never")),
                ),
            ]
        )
    )
    with pytest.raises(grpc.RpcError) as caught:
        emu.canister.V1Chat(user_request(NEAR_MISS), timeout=10)
    assert (
        "- evil match(regex='^(a|a)+$'): the pattern /^(a|a)+$/ took longer than 50 ms"
        in caught.value.details()
    )
    assert "counts as a miss" in caught.value.details()


def test_a_backtracking_scrub_pattern_fails_the_write_not_the_emulator(
    start_emulator: Callable[..., Stubs], tmp_path: Path
) -> None:
    emu = start_emulator()
    cassette = tmp_path / "c.yaml"
    emu.control.UseCassette(
        cpb.UseCassetteRequest(path=str(cassette), record_mode="all", scrub_patterns=[EVIL])
    )
    assert emu.canister.V1Chat(
        user_request(NEAR_MISS), timeout=10
    ).message.content  # the call keeps its answer
    stats = emu.control.EjectCassette(cpb.EjectCassetteRequest())
    assert any("took longer than 50 ms" in error for error in stats.errors)
    assert NEAR_MISS not in (cassette.read_text() if cassette.exists() else "")


def test_a_backtracking_outcall_url_regex_is_a_miss() -> None:
    from icllm_emulator.outcalls import HttpRequest, OutcallMatch

    why = OutcallMatch(url_regex="^https://(a|a)+$").mismatches(HttpRequest("get", "https://" + NEAR_MISS))
    assert why and "took longer than 50 ms" in why[0]


# -- HTTP connections: streams, hang-ups, slow clients, shutdown ----------------------------------


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
    return sock


def test_a_large_stream_to_a_client_that_never_reads_holds_up_no_other_request(
    start_emulator: Callable[..., Stubs],
) -> None:
    emu = start_emulator(profile="unlimited")
    words = " ".join(f"w{n}" for n in range(200_000))  # 1.5 MB, 200,000 stream pieces
    emu.control.AddRules(
        cpb.AddRulesRequest(rules=[cpb.Rule(action=cpb.RuleAction(reply=cpb.ReplyAction(content=words)))])
    )
    url = emu.emulator.ports.http_url
    assert url
    readers = []
    for _ in range(5):  # clients that ask for the stream and never read it
        sock = _connect(url)
        body = b'{"model": "llama3.1:8b", "messages": [{"role": "user", "content": "talk"}]}'
        sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        readers.append(sock)
    for _ in range(3):
        assert httpx.get(f"{url}/api/version", timeout=10).status_code == 200
    assert emu.canister.V1Chat(user_request("and you?"), timeout=10).message.content == words
    for sock in readers:
        sock.close()  # hang up mid-stream: the server stops the streams
    assert httpx.get(f"{url}/api/version", timeout=10).status_code == 200


def test_a_hang_up_logs_no_error(emu: Stubs, caplog: pytest.LogCaptureFixture) -> None:
    url = emu.emulator.ports.http_url
    assert url
    emu.control.SetHold(cpb.SetHoldRequest(hold=True))
    sock = _connect(url)
    body = b'{"model": "llama3.1:8b", "prompt": "wait", "stream": false}'
    sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    for _ in range(200):
        if emu.control.ListJobs(cpb.ListJobsRequest()).jobs:
            break
        threading.Event().wait(0.01)
    with caplog.at_level(logging.ERROR):
        sock.close()
        for _ in range(20):  # the server notices the hang-up, and goes on
            assert httpx.get(f"{url}/api/version", timeout=10).status_code == 200
        gc.collect()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    (call,) = emu.control.GetHistory(cpb.GetHistoryRequest()).calls
    assert call.reject.code == 6  # SYS_UNKNOWN: the caller went away


def test_clients_that_leave_mid_stream_flood_no_log(emu: Stubs, caplog: pytest.LogCaptureFixture) -> None:
    """A client that resets its connection while a stream is being written: the server stops quietly
    (asyncio would log "socket.send() raised exception." for each piece written after the reset)."""
    url = emu.emulator.ports.http_url
    assert url
    words = " ".join(f"w{n}" for n in range(2000))
    emu.control.AddRules(
        cpb.AddRulesRequest(rules=[cpb.Rule(action=cpb.RuleAction(reply=cpb.ReplyAction(content=words)))])
    )
    body = b'{"model": "llama3.1:8b", "messages": [{"role": "user", "content": "talk"}]}'
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            sock = _connect(url)
            sock.sendall(
                b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            )
            assert sock.recv(200).startswith(b"HTTP/1.1 200")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset, not FIN
            sock.close()
        for _ in range(20):  # the server notices the resets, and goes on
            assert httpx.get(f"{url}/api/version", timeout=10).status_code == 200
    noise = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert noise == []


def test_slow_clients_are_cut_off(start_emulator: Callable[..., Stubs]) -> None:
    emu = start_emulator(header_timeout=0.3, body_timeout=0.3, idle_timeout=1.0)
    url = emu.emulator.ports.http_url
    assert url
    slowloris = _connect(url)
    slowloris.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\n")  # and never the rest of the headers
    assert slowloris.recv(100) == b""  # closed by the server
    short = _connect(url)
    short.sendall(b'POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"model"')
    answer = b""
    while b"did not arrive" not in answer and (chunk := short.recv(1000)):  # headers and body may part
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within 0.3 s" in answer
    idle = _connect(url)
    assert idle.recv(100) == b""  # opened and never used
    for sock in (slowloris, short, idle):
        sock.close()
    assert httpx.get(f"{url}/api/version", timeout=10).status_code == 200


def test_http_calls_still_waiting_at_the_end_of_the_grace_period_get_a_503() -> None:
    from icllm_emulator.config import EmulatorConfig
    from icllm_emulator.server import ThreadedEmulator

    emulator = ThreadedEmulator(EmulatorConfig(grpc_port=0, ollama_port=0))
    emulator.start()
    url = emulator.ports.http_url
    channel = grpc.insecure_channel(emulator.ports.grpc_target)
    from icllm_emulator._proto.icllm.v1 import control_pb2_grpc

    control = control_pb2_grpc.ControlStub(channel)
    control.SetHold(cpb.SetHoldRequest(hold=True))
    answers: list[httpx.Response] = []
    caller = threading.Thread(
        target=lambda: answers.append(
            httpx.post(
                f"{url}/api/generate",
                json={"model": "llama3.1:8b", "prompt": "x", "stream": False},
                timeout=30,
            )
        )
    )
    caller.start()
    for _ in range(500):
        if control.ListJobs(cpb.ListJobsRequest()).jobs:
            break
        threading.Event().wait(0.01)
    channel.close()
    emulator.stop(grace=0.2)
    caller.join(30)
    (answer,) = answers
    assert answer.status_code == 503
    assert "shutting down" in answer.json()["error"]


# -- the Control service's token ---------------------------------------------------------------------


def test_listening_beyond_loopback_needs_a_control_token() -> None:
    result = serve("--host", "0.0.0.0")
    assert result.returncode == 2
    assert "give it a token with --control-token TOKEN" in result.stderr


# Every method of the services that change the emulator, run code or take prompts' work.
GUARDED = [
    (service.full_name, method.name)
    for proto in (cpb, canisters_pb, worker_pb)
    for service in proto.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]


def test_with_a_token_every_door_that_runs_code_needs_it(start_emulator: Callable[..., Stubs]) -> None:
    emu = start_emulator(control_token="s3cret")
    assert {name for name, _ in GUARDED} == {"icllm.v1.Control", "icllm.v1.Canisters", "icllm.v1.AiWorker"}
    for service, method in GUARDED:
        call = emu.channel.unary_unary(f"/{service}/{method}")
        with pytest.raises(grpc.RpcError) as caught:
            call(b"", timeout=10)
        assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED, (service, method)
        short = service.rsplit(".", 1)[-1]
        assert (
            f"the {short} service needs the emulator's control token (its --control-token) as metadata "
            "icllm-control-token"
        ) in caught.value.details()
    token = (("icllm-control-token", "s3cret"),)
    canisters = canisters_pb2_grpc.CanistersStub(emu.channel)
    module = bytes(wasmtime.wat2wasm('(module (memory (export "memory") 1))'))
    installed = canisters.Install(canisters_pb.InstallRequest(wasm=module), metadata=token, timeout=10)
    listed = canisters.ListCanisters(canisters_pb.ListCanistersRequest(), metadata=token, timeout=10)
    assert [c.canister_id for c in listed.canisters] == [installed.canister_id]
    polled = emu.worker.Poll(worker_pb.PollRequest(worker_id="w", wait_seconds=0), metadata=token, timeout=10)
    assert not polled.HasField("job")


def test_with_a_token_control_answers_only_calls_that_carry_it(
    start_emulator: Callable[..., Stubs], pytester: pytest.Pytester
) -> None:
    emu = start_emulator(control_token="s3cret")
    with pytest.raises(grpc.RpcError) as caught:
        emu.control.Reset(cpb.ResetRequest())
    assert caught.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "icllm-control-token" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        emu.control.Reset(cpb.ResetRequest(), metadata=(("icllm-control-token", "guess"),))
    assert "the one given is wrong" in caught.value.details()
    emu.control.Reset(cpb.ResetRequest(), metadata=(("icllm-control-token", "s3cret"),))
    assert emu.canister.V1Chat(user_request()).message.content  # the canister itself needs no token
    from tests.pytester_support import INI

    pytester.makeini(INI)
    pytester.makepyfile(
        test_remote="""
        def test_scripted(icllm, icllm_client):
            icllm.on().reply("with the token")
            assert icllm_client.prompt("llama3.1:8b", "hi") == "with the token"
        """
    )
    target = emu.emulator.ports.grpc_target
    result = pytester.runpytest("--icllm-url", target, "--icllm-control-token", "s3cret")
    result.assert_outcomes(passed=1)
    assert "s3cret" not in result.stdout.str()  # the report header does not show it


def test_an_answer_over_the_send_limit_is_refused_with_a_message_not_by_the_transport() -> None:
    from icllm_emulator.grpc_api.status import SEND_MAX_BYTES, rpc

    class Aborted(Exception):
        pass

    class Context:
        async def abort(self, code: grpc.StatusCode, details: str) -> None:
            raise Aborted(code, details)

    class Servicer:
        @rpc
        async def GetLogs(self, request: canisters_pb.GetLogsRequest, context: Any) -> Any:
            return canisters_pb.GetLogsResponse(entries=[canisters_pb.LogEntry(text="x" * SEND_MAX_BYTES)])

    with pytest.raises(Aborted) as caught:
        asyncio.run(Servicer().GetLogs(canisters_pb.GetLogsRequest(), Context()))
    code, details = caught.value.args
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"the answer to GetLogs is {SEND_MAX_BYTES + 10} bytes, over the {SEND_MAX_BYTES}" in details
