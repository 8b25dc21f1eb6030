"""The gRPC front door over real loopback connections: canister calls, rejects, bad input, control."""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from icllm_emulator._proto.icllm.v1 import canister_pb2 as pb
from icllm_emulator._proto.icllm.v1 import control_pb2 as cpb
from icllm_emulator._proto.icllm.v1 import worker_pb2 as wpb
from tests.conftest import Stubs, reject_code, user_request
from tests.waiting import wait_until

BAD_ROLE: Any = 42


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


# -- canister methods ------------------------------------------------------------------------------


def test_v0_chat_returns_text_and_same_request_same_text(emu: Stubs) -> None:
    request = pb.V0ChatRequest(
        model="llama3.1:8b",
        messages=[
            pb.ChatMessageV0(content="You are terse", role=pb.ChatMessageV0.SYSTEM),
            pb.ChatMessageV0(content="How big is the sun?", role=pb.ChatMessageV0.USER),
        ],
    )
    first = emu.canister.V0Chat(request).text
    assert first and first == emu.canister.V0Chat(request).text


def test_answers_survive_a_restart_byte_for_byte(start_emulator: Callable[..., Stubs]) -> None:
    first = start_emulator().canister.V1Chat(user_request()).SerializeToString()
    second = start_emulator().canister.V1Chat(user_request()).SerializeToString()
    assert first == second
    assert start_emulator(seed=7).canister.V1Chat(user_request()).SerializeToString() != first


def test_v1_chat_with_tools_calls_a_declared_tool(emu: Stubs) -> None:
    weather = pb.Tool(
        function=pb.FunctionTool(
            name="get_weather",
            parameters=pb.Parameters(
                type="object",
                properties=[
                    pb.Property(name="city", type="string"),
                    pb.Property(name="unit", type="string", enum=["celsius", "fahrenheit"]),
                ],
                required=["city", "unit"],
            ),
        )
    )
    reply = emu.canister.V1Chat(user_request("Weather in Zurich?", tools=[weather]))
    (call,) = reply.message.tool_calls
    arguments = {a.name: a.value for a in call.function.arguments}
    assert call.function.name == "get_weather"
    assert arguments["unit"] in ("celsius", "fahrenheit") and arguments["city"]
    assert not reply.message.HasField("content")


def test_reject_carries_ic_code_in_metadata_and_message_in_details(emu: Stubs) -> None:
    error = rpc_error(lambda: emu.canister.V1Chat(user_request(model="gpt-5")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reject_code(error) == 4
    assert "unknown model 'gpt-5'" in error.details()
    assert "llama3.1:8b" in error.details()


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (1, grpc.StatusCode.ABORTED),
        (2, grpc.StatusCode.UNAVAILABLE),
        (3, grpc.StatusCode.NOT_FOUND),
        (4, grpc.StatusCode.FAILED_PRECONDITION),
        (5, grpc.StatusCode.UNKNOWN),
        (6, grpc.StatusCode.DEADLINE_EXCEEDED),
    ],
)
def test_each_scripted_reject_code_has_its_grpc_status(
    emu: Stubs, code: int, status: grpc.StatusCode
) -> None:
    emu.control.AddRules(
        cpb.AddRulesRequest(
            rules=[
                cpb.Rule(
                    action=cpb.RuleAction(reject=cpb.RejectAction(code=code, message=f"scripted {code}"))
                )
            ]
        )
    )
    error = rpc_error(lambda: emu.canister.V1Chat(user_request()))
    assert (error.code(), reject_code(error), error.details()) == (status, code, f"scripted {code}")


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (
            lambda s: s.canister.V0Chat(
                pb.V0ChatRequest(model="llama3.1:8b", messages=[pb.ChatMessageV0(content="x")])
            ),
            "messages[0].role is ROLE_UNSPECIFIED; valid roles: USER, ASSISTANT, SYSTEM",
        ),
        (
            lambda s: s.canister.V0Chat(
                pb.V0ChatRequest(model="llama3.1:8b", messages=[pb.ChatMessageV0(content="x", role=BAD_ROLE)])
            ),
            "messages[0].role is 42, which is not a role",
        ),
        (
            lambda s: s.canister.V1Chat(pb.V1ChatRequest(model="llama3.1:8b", messages=[pb.ChatMessageV1()])),
            "messages[0] is empty: set one of user, system, assistant, tool",
        ),
        (lambda s: s.canister.V1Chat(user_request(tools=[pb.Tool()])), "tools[0] is empty: set `function`"),
        (
            lambda s: s.canister.V1Chat(user_request(), metadata=(("icllm-caller", "Not A Principal"),)),
            "is not a textual principal",
        ),
        (
            lambda s: s.canister.V1Chat(user_request(), metadata=(("icllm-cycles", "-5"),)),
            "is not a natural number of cycles",
        ),
        (
            lambda s: s.canister.V1Chat(user_request(), metadata=(("icllm-cycles", " 5"),)),
            "metadata icllm-cycles ' 5' is not a natural number of cycles",
        ),
    ],
)
def test_malformed_requests_are_invalid_argument_with_a_clear_message(
    emu: Stubs, call: Callable[[Stubs], Any], expected: str
) -> None:
    error = rpc_error(lambda: call(emu))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in error.details()
    assert emu.canister.V1Chat(user_request()).message.content  # still serving


def test_message_over_two_mib_is_refused_and_server_keeps_serving(emu: Stubs) -> None:
    error = rpc_error(lambda: emu.canister.V1Chat(user_request("x" * (3 * 1024 * 1024))))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert emu.canister.V1Chat(user_request()).message.content


def test_empty_request_is_the_canisters_reject(emu: Stubs) -> None:
    error = rpc_error(lambda: emu.canister.V1Chat(pb.V1ChatRequest(model="llama3.1:8b")))
    assert reject_code(error) == 4 and "no messages" in error.details()


@pytest.mark.parametrize(
    ("method", "payload", "problem"),
    [
        ("/icllm.v1.LlmCanister/V1Chat", b"\xff\xff\xff\xff", "Wire format was corrupt"),
        ("/icllm.v1.LlmCanister/V1Chat", b"\x0a\x02\xff\xfe", "String field had bad UTF-8"),
        ("/icllm.v1.Control/Configure", b"\xff\xff\xff\xff", "Wire format was corrupt"),
        ("/icllm.v1.AiWorker/Submit", b"\xff\xff\xff\xff", "Wire format was corrupt"),
    ],
)
def test_bytes_that_are_not_the_message_are_invalid_argument(
    emu: Stubs, method: str, payload: bytes, problem: str
) -> None:
    error = rpc_error(lambda: emu.channel.unary_unary(method)(payload))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"is not a valid {method.rsplit('/', 1)[1]} message" in error.details()
    assert problem in error.details()
    assert emu.canister.V1Chat(user_request()).message.content


# -- health and reflection -------------------------------------------------------------------------


def test_health_is_serving_for_every_service(emu: Stubs) -> None:
    health = health_pb2_grpc.HealthStub(emu.channel)
    for service in ("", "icllm.v1.LlmCanister", "icllm.v1.AiWorker", "icllm.v1.Control"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
        assert status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(emu: Stubs) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(emu.channel)
    (response,) = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for s in response.list_services_response.service}
    assert {"icllm.v1.LlmCanister", "icllm.v1.AiWorker", "icllm.v1.Control", "grpc.health.v1.Health"} <= names


# -- control plane ---------------------------------------------------------------------------------


def test_scripted_reply_then_backend_after_uses_run_out(emu: Stubs) -> None:
    (rule_id,) = emu.control.AddRules(
        cpb.AddRulesRequest(
            rules=[
                cpb.Rule(
                    match=cpb.RuleMatch(contains="speed of light"),
                    action=cpb.RuleAction(reply=cpb.ReplyAction(content="299,792,458 m/s")),
                    times=1,
                )
            ]
        )
    ).rule_ids
    assert emu.canister.V1Chat(user_request()).message.content == "299,792,458 m/s"
    assert emu.canister.V1Chat(user_request()).message.content != "299,792,458 m/s"
    (state,) = emu.control.ListRules(cpb.ListRulesRequest()).rules
    assert (state.rule.id, state.uses) == (rule_id, 1)
    history = emu.control.GetHistory(cpb.GetHistoryRequest()).calls
    assert [c.rule_id for c in history] == [rule_id, ""]


def test_bad_rules_are_invalid_argument(emu: Stubs) -> None:
    bad = [
        (cpb.Rule(action=cpb.RuleAction()), "needs an outcome"),
        (
            cpb.Rule(match=cpb.RuleMatch(regex="("), action=cpb.RuleAction(hang=cpb.HangAction())),
            "not a valid",
        ),
        (cpb.Rule(action=cpb.RuleAction(reject=cpb.RejectAction(code=9))), "1 SYS_FATAL"),
        (cpb.Rule(match=cpb.RuleMatch(role="bot"), action=cpb.RuleAction(hang=cpb.HangAction())), "user"),
    ]
    for rule, expected in bad:
        request = cpb.AddRulesRequest(rules=[rule])
        error = rpc_error(lambda: emu.control.AddRules(request))  # noqa: B023 (called at once)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert expected in error.details()
    assert not emu.control.ListRules(cpb.ListRulesRequest()).rules


def test_strict_rules_reject_shows_the_prompt_and_every_rule(emu: Stubs) -> None:
    emu.control.Configure(cpb.ConfigureRequest(strict_rules=True))
    emu.control.AddRules(
        cpb.AddRulesRequest(
            rules=[
                cpb.Rule(
                    match=cpb.RuleMatch(contains="weather"),
                    action=cpb.RuleAction(reply=cpb.ReplyAction(content="sunny")),
                )
            ]
        )
    )
    error = rpc_error(lambda: emu.canister.V1Chat(user_request("Tell me a joke")))
    assert reject_code(error) == 4
    assert "Tell me a joke" in error.details()
    assert "rule-1 match(contains='weather'): no message contains 'weather'" in error.details()


def test_hold_then_release_in_chosen_order(emu: Stubs) -> None:
    emu.control.SetHold(cpb.SetHoldRequest(hold=True))
    finished: list[str] = []
    with ThreadPoolExecutor(2) as pool:
        calls: dict[str, Future[pb.V1ChatResponse]] = {}
        for text in ("first", "second"):
            calls[text] = pool.submit(emu.canister.V1Chat, user_request(text))
            calls[text].add_done_callback(functools.partial(lambda text, _: finished.append(text), text))
        wait_until(
            lambda: (
                len([j for j in emu.control.ListJobs(cpb.ListJobsRequest()).jobs if j.state == "HELD"]) == 2
            )
        )
        jobs = {j.id: j for j in emu.control.ListJobs(cpb.ListJobsRequest()).jobs}
        _, second_id = sorted(jobs)
        emu.control.Release(cpb.ReleaseRequest(job_ids=[second_id]))
        calls["second"].result(timeout=5)
        assert finished == ["second"] and not calls["first"].done()
        emu.control.Release(cpb.ReleaseRequest(all=True))
        calls["first"].result(timeout=5)
    assert finished == ["second", "first"]


def test_release_of_a_job_that_is_not_held_is_not_found(emu: Stubs) -> None:
    error = rpc_error(lambda: emu.control.Release(cpb.ReleaseRequest(job_ids=["call-999999"])))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "held jobs: none" in error.details()


def test_paused_workers_leave_prompts_queued(emu: Stubs) -> None:
    emu.control.SetPaused(cpb.SetPausedRequest(paused=True))
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(emu.canister.V1Chat, user_request())
        wait_until(lambda: emu.control.GetStats(cpb.GetStatsRequest()).queue_depth == 1)
        assert not call.done()
        emu.control.SetPaused(cpb.SetPausedRequest(paused=False))
        assert call.result(timeout=5).message.content
    stats = emu.control.GetStats(cpb.GetStatsRequest())
    assert (stats.calls, stats.answered, stats.queue_depth) == (1, 1, 0)


def test_caller_deadline_on_virtual_clock_gives_sys_unknown(start_emulator: Callable[..., Stubs]) -> None:
    emu = start_emulator(clock="virtual", caller_deadline=300.0)
    emu.control.AddRules(
        cpb.AddRulesRequest(
            rules=[cpb.Rule(action=cpb.RuleAction(delay_seconds=600, reply=cpb.ReplyAction(content="late")))]
        )
    )
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(emu.canister.V1Chat, user_request())
        wait_until(lambda: emu.control.GetStats(cpb.GetStatsRequest()).in_flight == 1)
        emu.control.AdvanceClock(cpb.AdvanceClockRequest(seconds=301))
        error = call.exception(timeout=5)
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED and reject_code(error) == 6
    emu.control.AdvanceClock(cpb.AdvanceClockRequest(seconds=300))
    wait_until(lambda: emu.control.GetHistory(cpb.GetHistoryRequest()).calls[0].job_state == "DONE")
    (record,) = emu.control.GetHistory(cpb.GetHistoryRequest()).calls
    assert record.reject.code == 6  # the caller's outcome stays the reject it received


def test_advancing_a_real_clock_is_a_failed_precondition(emu: Stubs) -> None:
    error = rpc_error(lambda: emu.control.AdvanceClock(cpb.AdvanceClockRequest(seconds=1)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "--clock virtual" in error.details()


def test_configure_profile_and_limits(emu: Stubs) -> None:
    config = emu.control.Configure(cpb.ConfigureRequest(profile="launch-2025"))
    assert (config.profile, config.limits.max_output_tokens) == ("launch-2025", 200)
    config = emu.control.Configure(cpb.ConfigureRequest(limits=cpb.Limits(max_messages=2)))
    assert (config.profile, config.limits.max_messages, config.limits.max_output_tokens) == ("custom", 2, 200)
    error = rpc_error(
        lambda: emu.canister.V1Chat(
            pb.V1ChatRequest(
                model="llama3.1:8b", messages=[pb.ChatMessageV1(user=pb.UserMessage(content="x"))] * 3
            )
        )
    )
    assert "the request has 3, the limit is 2" in error.details()
    error = rpc_error(lambda: emu.control.Configure(cpb.ConfigureRequest(profile="turbo")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "current, launch-2025, unlimited" in error.details()
    emu.control.Reset(cpb.ResetRequest())
    assert emu.control.GetConfig(cpb.GetConfigRequest()).profile == "current"


def test_full_queue_rejects_with_sys_transient(start_emulator: Callable[..., Stubs]) -> None:
    emu = start_emulator(queue_capacity=1)
    emu.control.SetPaused(cpb.SetPausedRequest(paused=True))
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(emu.canister.V1Chat, user_request())
        wait_until(lambda: emu.control.GetStats(cpb.GetStatsRequest()).queue_depth == 1)
        error = rpc_error(lambda: emu.canister.V1Chat(user_request()))
        assert error.code() == grpc.StatusCode.UNAVAILABLE and reject_code(error) == 2
        emu.control.SetPaused(cpb.SetPausedRequest(paused=False))
        assert waiting.result(timeout=5).message.content


# -- external workers ------------------------------------------------------------------------------


def test_external_worker_leases_and_answers(start_emulator: Callable[..., Stubs]) -> None:
    emu = start_emulator(workers=0)
    assert not emu.worker.Poll(wpb.PollRequest(worker_id="w1", wait_seconds=0.05)).HasField("job")
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(emu.canister.V1Chat, user_request("ping"))
        job = emu.worker.Poll(wpb.PollRequest(worker_id="w1", wait_seconds=5)).job
        assert (job.attempt, job.request.messages[0].user.content, job.max_output_tokens) == (1, "ping", 1000)
        assert (
            emu.worker.Renew(wpb.RenewRequest(job_id=job.id, attempt=1, worker_id="w1")).lease_seconds == 60
        )
        emu.worker.Submit(
            wpb.SubmitRequest(
                job_id=job.id,
                attempt=1,
                worker_id="w1",
                completion=wpb.Completion(message=pb.AssistantMessage(content="pong"), output_tokens=1),
            )
        )
        assert call.result(timeout=5).message.content == "pong"
    error = rpc_error(
        lambda: emu.worker.Submit(
            wpb.SubmitRequest(
                job_id=job.id,
                attempt=1,
                worker_id="w1",
                completion=wpb.Completion(message=pb.AssistantMessage()),
            )
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND  # a second answer is refused


def test_external_worker_failure_rejects_or_retries(start_emulator: Callable[..., Stubs]) -> None:
    emu = start_emulator(workers=0, max_attempts=2)
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(emu.canister.V1Chat, user_request())
        for attempt in (1, 2):
            job = emu.worker.Poll(wpb.PollRequest(worker_id="w", wait_seconds=5)).job
            assert job.attempt == attempt
            emu.worker.Submit(
                wpb.SubmitRequest(
                    job_id=job.id,
                    attempt=attempt,
                    worker_id="w",
                    failure=wpb.Failure(message="GPU on fire", retry=True),
                )
            )
        error = call.exception(timeout=5)
    assert isinstance(error, grpc.RpcError) and reject_code(error) == 4
    assert "after 2 attempts" in error.details() and "GPU on fire" in error.details()


def test_worker_misuse_is_reported_clearly(start_emulator: Callable[..., Stubs]) -> None:
    emu = start_emulator(workers=0)
    error = rpc_error(lambda: emu.worker.Poll(wpb.PollRequest(worker_id=" ", wait_seconds=1)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "worker_id" in error.details()
    error = rpc_error(lambda: emu.worker.Poll(wpb.PollRequest(worker_id="w", wait_seconds=3600)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "wait_seconds" in error.details()
    error = rpc_error(lambda: emu.worker.Renew(wpb.RenewRequest(job_id="nope", attempt=1, worker_id="w")))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_scripted_jobs_are_not_offered_to_external_workers(start_emulator: Callable[..., Stubs]) -> None:
    emu = start_emulator(workers=0)
    emu.control.AddRules(
        cpb.AddRulesRequest(
            rules=[cpb.Rule(action=cpb.RuleAction(reply=cpb.ReplyAction(content="scripted")))]
        )
    )
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(emu.canister.V1Chat, user_request())
        wait_until(lambda: emu.control.GetStats(cpb.GetStatsRequest()).queue_depth == 1)
        assert not emu.worker.Poll(wpb.PollRequest(worker_id="w", wait_seconds=0.05)).HasField("job")
        emu.control.Configure(cpb.ConfigureRequest(workers=1))
        assert call.result(timeout=5).message.content == "scripted"


def test_serves_on_ipv6_loopback(start_emulator: Callable[..., Stubs]) -> None:
    emu = start_emulator(host="::1")
    assert emu.emulator.ports.grpc_target.startswith("[::1]:")
    assert emu.canister.V1Chat(user_request()).message.content
