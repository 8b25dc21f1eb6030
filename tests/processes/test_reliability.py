"""The reliability suite, short form (`make soak` runs the long one, bench/soak.py).

- load: hundreds of concurrent unique calls through gRPC, HTTP and Candid, each answer checked against
  the deterministic fake: none lost, duplicated or crossed;
- faults: an external worker SIGKILLed while it holds a lease (the job is answered once, by another);
  the emulator SIGKILLed while recording and SIGTERM with calls in flight are in test_cassettes.py
  (test_sigkill_while_recording_leaves_every_cassette_loadable) and test_cli.py
  (test_sigterm_lets_the_call_in_flight_finish), HTTP past the grace period in test_robustness.py;
- fuzz: hypothesis-made bytes and messages for every gRPC method and HTTP route (the Candid door among
  them): never INTERNAL, never a bare UNKNOWN, never a 500, never a hang, and healthy afterwards;
- leaks: a canister installed and dropped hundreds of times (removed, the runtime cleared, a test's
  fixture torn down) leaves the process's resident memory flat after a warm-up.
All traffic stays on loopback; every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import descriptor as pbd
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icllm_emulator._proto.icllm.v1 import canister_pb2, canisters_pb2, control_pb2, worker_pb2
from icllm_emulator._proto.icllm.v1 import canister_pb2 as pb
from icllm_emulator._proto.icllm.v1 import control_pb2 as cpb
from icllm_emulator.backends.fake import fake_answer
from icllm_emulator.candid import decode_reply, encode_chat_request
from icllm_emulator.clock import VirtualClock
from icllm_emulator.domain import Api, ChatRequest, ToolPolicy, UserMessage
from icllm_emulator.grpc_api.status import REJECT_CODE_KEY
from icllm_emulator.runtime import CanisterRuntime, Response
from tests.canisters.conftest import module_path
from tests.conftest import Stubs, user_request

CAP = 1000  # the current profile's output cap
CALLS = 200


def expected(text: str, api: Api = Api.V1) -> str:
    request = ChatRequest("llama3.1:8b", (UserMessage(text),), api=api)
    answer = fake_answer(request, seed=0, max_output_tokens=CAP, tool_policy=ToolPolicy.AUTO)
    return answer.message.content or ""


# -- load -------------------------------------------------------------------------------------------


def test_hundreds_of_concurrent_calls_lose_duplicate_and_cross_nothing(emu: Stubs) -> None:
    target = emu.emulator.ports.grpc_target
    url = emu.emulator.ports.http_url

    async def grpc_call(stub: Any, n: int) -> tuple[str, str]:
        text = f"grpc question {n}"
        response = await stub.V1Chat(user_request(text), timeout=60)
        return text, response.message.content

    async def candid_call(stub: Any, n: int) -> tuple[str, str]:
        text = f"candid question {n}"
        arg = encode_chat_request(ChatRequest("llama3.1:8b", (UserMessage(text),), api=Api.V0))
        response = await stub.CallCandid(pb.CallCandidRequest(method="v0_chat", arg=arg), timeout=60)
        return text, str(decode_reply("v0_chat", response.reply))

    async def http_call(client: httpx.AsyncClient, n: int) -> tuple[str, str]:
        text = f"http question {n}"
        body = {"model": "llama3.1:8b", "messages": [{"role": "user", "content": text}], "stream": False}
        response = await client.post(f"{url}/api/chat", json=body)
        response.raise_for_status()
        return text, str(response.json()["message"]["content"])

    async def main() -> list[tuple[str, str]]:
        from icllm_emulator._proto.icllm.v1 import canister_pb2_grpc

        async with grpc.aio.insecure_channel(target) as channel, httpx.AsyncClient(timeout=60) as client:
            stub = canister_pb2_grpc.LlmCanisterStub(channel)
            calls = [grpc_call(stub, n) for n in range(CALLS)]
            calls += [candid_call(stub, n) for n in range(CALLS // 4)]
            calls += [http_call(client, n) for n in range(CALLS // 4)]
            return await asyncio.gather(*calls)

    results = asyncio.run(main())
    assert len(results) == CALLS + CALLS // 2
    for text, answer in results:
        assert answer == expected(text, Api.V0 if text.startswith("candid") else Api.V1), text
    history = emu.control.GetHistory(cpb.GetHistoryRequest()).calls
    prompts = Counter(call.request.messages[0].user.content for call in history)
    assert len(prompts) == len(results) and set(prompts.values()) == {1}  # each call once, none twice
    assert all(call.job_state == "DONE" for call in history)


# -- faults -------------------------------------------------------------------------------------------

DYING_WORKER = textwrap.dedent(
    """
    import sys, threading
    import grpc
    from icllm_emulator._proto.icllm.v1 import worker_pb2 as wpb, worker_pb2_grpc
    with grpc.insecure_channel(sys.argv[1]) as channel:
        job = worker_pb2_grpc.AiWorkerStub(channel).Poll(wpb.PollRequest(worker_id="doomed", wait_seconds=30))
        print(job.job.id, flush=True)
        threading.Event().wait()  # holds the lease until it is killed
    """
)


def test_an_external_worker_killed_while_it_holds_a_lease_loses_the_job_to_another(
    start_emulator: Callable[..., Stubs], tmp_path: Path
) -> None:
    emu = start_emulator(workers=0, lease_seconds=1.0)
    target = emu.emulator.ports.grpc_target
    script = tmp_path / "dying_worker.py"
    script.write_text(DYING_WORKER)
    call = emu.canister.V1Chat.future(user_request("who answers me?"), timeout=60)
    with subprocess.Popen([sys.executable, str(script), target], stdout=subprocess.PIPE, text=True) as doomed:
        try:
            assert doomed.stdout is not None
            leased = doomed.stdout.readline().strip()  # it holds the lease now
        finally:
            doomed.kill()  # SIGKILL: no goodbye, the lease just runs out
    assert leased == "call-000001"
    with subprocess.Popen(
        [sys.executable, "-m", "icllm_emulator", "worker", "--connect", target, "--poll-seconds", "1"],
        stderr=subprocess.DEVNULL,
    ) as rescuer:
        try:
            answer = call.result(timeout=60)
        finally:
            rescuer.terminate()
            rescuer.wait(timeout=20)
    assert answer.message.content == expected("who answers me?")
    (record,) = emu.control.GetHistory(cpb.GetHistoryRequest()).calls
    assert record.attempts == 2 and record.job_state == "DONE"


# -- fuzz ---------------------------------------------------------------------------------------------

SERVICES = [
    m.DESCRIPTOR.services_by_name[name]
    for m, name in (
        (canister_pb2, "LlmCanister"),
        (worker_pb2, "AiWorker"),
        (control_pb2, "Control"),
        (canisters_pb2, "Canisters"),
    )
]
METHODS = [(service, method) for service in SERVICES for method in service.methods]
FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
# Calls that wait by design (a long poll) are cut short by the client; anything else must answer.
TIMEOUT = 3.0


def _scalar(field: pbd.FieldDescriptor) -> st.SearchStrategy[Any]:
    kinds = pbd.FieldDescriptor
    if field.type == kinds.TYPE_STRING:
        return st.one_of(
            st.text(max_size=40), st.sampled_from(["", "v1_chat", "v0_chat", "2vxsx-fae", "HELD"])
        )
    if field.type == kinds.TYPE_BYTES:
        return st.binary(max_size=200)
    if field.type == kinds.TYPE_BOOL:
        return st.booleans()
    if field.type in (kinds.TYPE_DOUBLE, kinds.TYPE_FLOAT):
        return st.floats(
            allow_nan=True, allow_infinity=True, width=32 if field.type == kinds.TYPE_FLOAT else 64
        )
    if field.type == kinds.TYPE_ENUM:
        assert field.enum_type is not None
        return st.sampled_from([v.number for v in field.enum_type.values] + [999])
    if field.type in (kinds.TYPE_UINT32, kinds.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if field.type in (kinds.TYPE_UINT64, kinds.TYPE_FIXED64):
        return st.integers(0, 2**64 - 1)
    if field.type in (kinds.TYPE_INT32, kinds.TYPE_SINT32, kinds.TYPE_SFIXED32):
        return st.integers(-(2**31), 2**31 - 1)
    return st.integers(-(2**63), 2**63 - 1)


@st.composite
def messages(draw: st.DrawFn, descriptor: pbd.Descriptor, depth: int = 0) -> Any:
    """A message of this type with random fields (set or not), nested three deep at most."""
    message = message_factory.GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        if field.message_type is not None:
            if depth >= 3 or field.message_type.GetOptions().map_entry:
                continue
            count = draw(st.integers(0, 2)) if field.is_repeated else 1
            for _ in range(count):
                value = draw(messages(field.message_type, depth + 1))
                if field.is_repeated:
                    getattr(message, field.name).add().CopyFrom(value)
                else:
                    getattr(message, field.name).CopyFrom(value)
        elif field.is_repeated:
            getattr(message, field.name).extend(draw(st.lists(_scalar(field), max_size=3)))
        else:
            setattr(message, field.name, draw(_scalar(field)))
    return message


def _call(
    channel: grpc.Channel, service: pbd.ServiceDescriptor, method: pbd.MethodDescriptor, raw: bytes
) -> None:
    """One call with these request bytes; fails the test on INTERNAL, a bare UNKNOWN, or a hang."""
    path = f"/{service.full_name}/{method.name}"
    call = channel.unary_unary(path, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    try:
        call(raw, timeout=TIMEOUT, metadata=(("icllm-cycles", "0"),))
    except grpc.RpcError as error:
        code = error.code()
        trailing = dict(error.trailing_metadata() or ())
        assert code is not grpc.StatusCode.INTERNAL, f"{path}: INTERNAL {error.details()}"
        assert code is not grpc.StatusCode.UNKNOWN or REJECT_CODE_KEY in trailing, (
            f"{path}: {error.details()}"
        )
        if code is grpc.StatusCode.DEADLINE_EXCEEDED and REJECT_CODE_KEY not in trailing:
            assert method.name == "Poll", f"{path} hung for {TIMEOUT} s"


def _recover(emu: Stubs) -> None:
    emu.control.Reset(cpb.ResetRequest(), timeout=10)


def _healthy(emu: Stubs) -> None:
    health = health_pb2_grpc.HealthStub(emu.channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert emu.canister.V1Chat(user_request("still there?"), timeout=10).message.content == expected(
        "still there?"
    )


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[f"{s.name}.{m.name}" for s, m in METHODS])
def test_random_bytes_to_every_grpc_method(
    emu: Stubs, service: pbd.ServiceDescriptor, method: pbd.MethodDescriptor
) -> None:
    @FUZZ
    @given(raw=st.binary(max_size=300))
    def fuzz(raw: bytes) -> None:
        _call(emu.channel, service, method, raw)

    fuzz()
    _recover(emu)
    _healthy(emu)


@pytest.mark.parametrize(("service", "method"), METHODS, ids=[f"{s.name}.{m.name}" for s, m in METHODS])
def test_random_messages_to_every_grpc_method(
    emu: Stubs, service: pbd.ServiceDescriptor, method: pbd.MethodDescriptor
) -> None:
    @FUZZ
    @given(request=messages(method.input_type))
    def fuzz(request: Any) -> None:
        _call(emu.channel, service, method, request.SerializeToString())
        if service.name == "Control":
            _recover(emu)  # a random hold or pause would make the next calls wait by design

    fuzz()
    _recover(emu)
    _healthy(emu)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)
KEYS = [
    "model",
    "messages",
    "prompt",
    "stream",
    "options",
    "tools",
    "format",
    "role",
    "content",
    "max_tokens",
]
BODIES = st.one_of(
    st.binary(max_size=300),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(KEYS), JSON_VALUES, max_size=6).map(lambda v: json.dumps(v).encode()),
)
ROUTES = ["/api/chat", "/api/generate", "/api/show", "/api/pull", "/v1/chat/completions", "/api/embed"]


@pytest.mark.parametrize("route", ROUTES)
def test_random_bodies_to_every_http_route(emu: Stubs, route: str) -> None:
    url = emu.emulator.ports.http_url
    with httpx.Client(timeout=TIMEOUT) as client:

        @FUZZ
        @given(body=BODIES)
        def fuzz(body: bytes) -> None:
            response = client.post(
                f"{url}{route}", content=body, headers={"Content-Type": "application/json"}
            )
            assert response.status_code < 500 or response.status_code in (501, 502, 503), response.text

        fuzz()
        for path in ("/", "/api/version", "/api/tags", "/api/ps", "/v1/models", "/metrics", "/nope"):
            assert client.get(f"{url}{path}").status_code < 500
    _healthy(emu)


# -- leaks ---------------------------------------------------------------------------------------------

# Install-and-drop cycles: the first ones warm the allocator and the compiled-module cache up, the rest
# are measured. A leaked Motoko agent costs about 5 MiB of resident memory (its heap, its shadow copy,
# its compiled instance), so 100 measured cycles that leaked would grow by about 500 MiB; the bound
# leaves room for the allocator's own noise.
WARM_UP = 20
CYCLES = 100
GROWTH_MIB = 24


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def _no_llm(method: str, arg: bytes, caller: str, cycles: int) -> Response:
    raise AssertionError("these cycles make no LLM call")


@pytest.mark.parametrize("drop", ["remove", "clear"])
def test_a_canister_installed_and_dropped_many_times_leaves_memory_flat(drop: str) -> None:
    wasm = module_path("motoko-agent").read_bytes()

    async def cycle(ic: CanisterRuntime) -> None:
        canister = ic.install(wasm)
        assert await ic.call(canister.id, "asked_count", b"DIDL\0\0", query=True) == b"DIDL\0\x01}\0"
        if drop == "remove":
            ic.remove(canister.id)
        else:
            ic.clear()

    async def main() -> tuple[float, float]:
        ic = CanisterRuntime(VirtualClock(), _no_llm)
        for _ in range(WARM_UP):
            await cycle(ic)
        before = rss_mib()
        for _ in range(CYCLES):
            await cycle(ic)
        return before, rss_mib()

    before, after = asyncio.run(main())
    assert after - before < GROWTH_MIB, (
        f"{CYCLES} install-and-{drop} cycles of the Motoko agent grew the process from {before:.0f} to "
        f"{after:.0f} MiB ({(after - before) / CYCLES:.2f} MiB a cycle)"
    )


FIXTURE_CYCLES = textwrap.dedent(
    """
    import os
    from pathlib import Path

    import pytest

    WASM = Path(os.environ["ICLLM_LEAK_WASM"])
    RSS = Path(os.environ["ICLLM_LEAK_RSS"])

    @pytest.fixture(autouse=True)
    def sample():
        yield
        status = Path("/proc/self/status").read_text()
        kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
        with RSS.open("a") as out:
            out.write(kib + "\\n")

    @pytest.mark.parametrize("n", range({count}))
    def test_agent(icllm_canister, n):
        agent = icllm_canister(WASM)
        assert agent.update("prompt", f"question {{n}}")
    """
)


def test_tests_that_each_install_a_canister_leave_memory_flat(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """Each test's canisters are freed when its `icllm_canister` fixture ends (in a pytest of its own)."""
    rss = tmp_path / "rss.txt"
    pytester.makepyfile(test_leak=FIXTURE_CYCLES.format(count=WARM_UP + CYCLES))
    pytester.makeini("[pytest]\naddopts = -p no:hypothesispytest -p no:faker\n")
    env = {"ICLLM_LEAK_WASM": str(module_path("motoko-agent")), "ICLLM_LEAK_RSS": str(rss)}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        result = pytester.runpytest_subprocess("-q")
    result.assert_outcomes(passed=WARM_UP + CYCLES)
    samples = [int(line) / 1024 for line in rss.read_text().split()]
    before, after = samples[WARM_UP - 1], samples[-1]
    assert after - before < GROWTH_MIB, (
        f"{CYCLES} tests that each installed the Motoko agent grew pytest from {before:.0f} to "
        f"{after:.0f} MiB ({(after - before) / CYCLES:.2f} MiB a test)"
    )
