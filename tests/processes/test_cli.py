"""`icllm-emulator` as a real process: start-up, options and env vars, shutdown, external workers.

Every process is started with `python -m icllm_emulator` from this interpreter and talked to over gRPC on
loopback; the `spawn` fixture terminates (and, failing that, kills) and reaps each one at teardown.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from icllm_emulator._proto.icllm.v1 import canister_pb2_grpc, control_pb2_grpc
from icllm_emulator._proto.icllm.v1 import control_pb2 as cpb
from icllm_emulator.client import LlmClient, user
from icllm_emulator.settings import Door, at
from tests.conftest import Stubs, user_request
from tests.waiting import wait_until

MODEL = "llama3.1:8b"
# Generous: a loaded 2-core machine can take seconds just to import grpc and faker in a child.
START_TIMEOUT = 15.0
EXIT_TIMEOUT = 30.0
CALL_TIMEOUT = 60.0


@dataclass
class Child:
    """A running `python -m icllm_emulator ...`; its stderr goes to a file, read once it has exited."""

    process: subprocess.Popen[bytes]
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM, as a supervisor would, and the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=EXIT_TIMEOUT)


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any ICLLM_* setting of the caller's, plus `extra`.

    HTTP listens on a free port: emulators run side by side, and Ollama's own 11434 may be taken.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("ICLLM_")}
    env["ICLLM_OLLAMA_PORT"] = "0"
    env.update(extra or {})
    return env


def emulator_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "icllm_emulator", *args]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Child]]:
    """Start emulator processes (cwd tmp_path); every one is stopped and reaped at teardown."""
    children: list[Child] = []

    def start(*args: str, env: Mapping[str, str] | None = None) -> Child:
        stderr_path = tmp_path / f"child-{len(children)}.stderr"
        with stderr_path.open("wb") as stderr:
            process = subprocess.Popen(
                emulator_command(*args),
                cwd=tmp_path,
                env=child_env(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        child = Child(process, stderr_path)
        children.append(child)
        return child

    yield start
    for child in reversed(children):
        if child.process.poll() is None:
            child.process.terminate()
            try:
                child.process.wait(timeout=EXIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                child.process.kill()
        child.process.wait(timeout=EXIT_TIMEOUT)


def wait_for_port_file(child: Child, port_file: Path) -> str:
    """The gRPC target once the emulator has written its port file; fails early if it died instead."""

    def ready() -> bool:
        if child.process.poll() is not None:
            raise AssertionError(
                f"the emulator exited with {child.process.returncode} before listening:\n{child.stderr()}"
            )
        return port_file.exists()

    wait_until(ready, f"the port file {port_file}")
    ports = json.loads(port_file.read_text())
    assert set(ports) == {"host", "grpc", "grpc_target", "http", "http_url", "canisters"}
    assert ports["canisters"] == {}
    assert ports["http"] > 0 and ports["http_url"] == f"http://127.0.0.1:{ports['http']}"
    assert ports["host"] == "127.0.0.1" and ports["grpc"] > 0
    assert ports["grpc_target"] == f"127.0.0.1:{ports['grpc']}"
    target: str = ports["grpc_target"]
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=CALL_TIMEOUT)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    return target


def start_serve(
    spawn: Callable[..., Child], tmp_path: Path, *args: str, env: Mapping[str, str] | None = None
) -> tuple[Child, str]:
    """`serve` on a free port, once it listens and reports SERVING; returns it and its gRPC target."""
    port_file = tmp_path / "ports.json"
    assert not port_file.exists(), "one `serve` per test: the port file would be reused"
    child = spawn("serve", "--grpc-port", "0", "--port-file", str(port_file), *args, env=env)
    return child, wait_for_port_file(child, port_file)


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """A command expected to end by itself (bad options, --help); killed if it does not."""
    return subprocess.run(
        emulator_command(*args),
        cwd=cwd,
        env=child_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CALL_TIMEOUT,
        check=False,
    )


# -- serve -----------------------------------------------------------------------------------------


def test_serve_writes_port_file_answers_and_stops_on_sigterm(
    spawn: Callable[..., Child], tmp_path: Path
) -> None:
    child, target = start_serve(spawn, tmp_path)
    with LlmClient(target, timeout=CALL_TIMEOUT) as client:
        answer = client.chat(MODEL).with_messages([user("What's the speed of light?")]).send()
    assert answer.content

    assert child.stop() == 0
    assert "stopped" in child.stderr()


def test_ctrl_c_stops_the_emulator_cleanly(spawn: Callable[..., Child], tmp_path: Path) -> None:
    child, _ = start_serve(spawn, tmp_path)
    child.process.send_signal(signal.SIGINT)
    assert child.process.wait(timeout=EXIT_TIMEOUT) == 0
    assert "stopped" in child.stderr() and "Traceback" not in child.stderr()


def test_sigterm_lets_the_call_in_flight_finish(spawn: Callable[..., Child], tmp_path: Path) -> None:
    child, target = start_serve(spawn, tmp_path, "--clock", "real")
    rule = cpb.Rule(
        match=cpb.RuleMatch(contains="drain me"),
        action=cpb.RuleAction(delay_seconds=1.0, reply=cpb.ReplyAction(content="drained")),
    )
    with (
        grpc.insecure_channel(target) as channel,
        LlmClient(target, timeout=CALL_TIMEOUT) as client,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        control = control_pb2_grpc.ControlStub(channel)
        control.AddRules(cpb.AddRulesRequest(rules=[rule]), timeout=CALL_TIMEOUT)
        call = pool.submit(client.prompt, MODEL, "please drain me")

        def in_flight() -> bool:
            if call.done():
                raise AssertionError(f"the call finished before it was seen in flight: {call.result()!r}")
            stats = control.GetStats(cpb.GetStatsRequest(), timeout=CALL_TIMEOUT)
            return bool(stats.in_flight == 1)

        wait_until(in_flight, "the call to be in flight")
        child.process.send_signal(signal.SIGTERM)
        assert call.result(timeout=CALL_TIMEOUT) == "drained"
    assert child.process.wait(timeout=EXIT_TIMEOUT) == 0
    assert "stopped" in child.stderr()


@pytest.mark.parametrize(
    ("env", "args", "profile", "seed"),
    [
        ({"ICLLM_PROFILE": "launch-2025", "ICLLM_SEED": "5"}, (), "launch-2025", 5),
        ({"ICLLM_SEED": "5"}, ("--seed", "7"), "current", 7),
    ],
    ids=["env-vars-honoured", "flag-beats-env-var"],
)
def test_settings_from_env_vars_and_flags(
    spawn: Callable[..., Child],
    tmp_path: Path,
    env: dict[str, str],
    args: tuple[str, ...],
    profile: str,
    seed: int,
) -> None:
    _, target = start_serve(spawn, tmp_path, *args, env=env)
    with grpc.insecure_channel(target) as channel:
        config = control_pb2_grpc.ControlStub(channel).GetConfig(cpb.GetConfigRequest(), timeout=CALL_TIMEOUT)
    assert (config.profile, config.seed) == (profile, seed)


def test_prices_from_the_command_line(spawn: Callable[..., Child], tmp_path: Path) -> None:
    _, target = start_serve(spawn, tmp_path, env={"ICLLM_PRICES": "qwen3:32b=5/2,gemma3:27b=7"})
    with grpc.insecure_channel(target) as channel:
        config = control_pb2_grpc.ControlStub(channel).GetConfig(cpb.GetConfigRequest(), timeout=CALL_TIMEOUT)
    prices = {p.model: (p.per_call, p.per_token) for p in config.prices}
    assert prices == {"qwen3:32b": (5, 2), "gemma3:27b": (7, 0)}


@pytest.mark.parametrize(
    ("args", "env", "mentions"),
    [
        (("--profile", "turbo"), {}, "current, launch-2025, unlimited"),
        (("--tool-policy", "sometimes"), {}, "never, auto"),
        ((), {"ICLLM_WORKERS": "abc"}, "ICLLM_WORKERS"),
        (("--rules", "missing.yaml"), {}, "missing.yaml"),
        (("--log-level", "loud"), {}, "choose one of: DEBUG, INFO, WARNING, ERROR"),
        (("--ollama-port", "abc"), {}, "use 0-65535 (0: any free port) or off"),
        (("--caller-deadline", "inf"), {}, "must be a finite number of seconds above 0"),
        (("--grace", "-1"), {}, "is not a number of seconds (0 or more)"),
        (("--prices", "gemma3:27b=lots"), {}, "is not MODEL=PER_CALL[/PER_TOKEN] in cycles"),
    ],
    ids=[
        "profile",
        "tool-policy",
        "env-workers",
        "rules-file",
        "log-level",
        "ollama-port",
        "deadline",
        "grace",
        "prices",
    ],
)
def test_bad_options_fail_fast_naming_what_is_valid(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], mentions: str
) -> None:
    port_file = tmp_path / "ports.json"
    result = run_cli("serve", "--grpc-port", "0", "--port-file", str(port_file), *args, env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert mentions in result.stderr
    assert "Traceback" not in result.stderr
    assert not port_file.exists()


def test_rules_file_is_applied(spawn: Callable[..., Child], tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - match: {contains: hello}\n    reply: from file\n")
    _, target = start_serve(spawn, tmp_path, "--rules", str(rules))
    with LlmClient(target, timeout=CALL_TIMEOUT) as client:
        assert client.prompt(MODEL, "hello there") == "from file"
        assert client.prompt(MODEL, "What's the speed of light?") != "from file"


def test_port_in_use_fails_with_exit_code_2(start_emulator: Callable[..., Stubs]) -> None:
    taken = start_emulator().emulator.ports.grpc
    result = run_cli("serve", "--grpc-port", str(taken))
    assert result.returncode == 2, result.stderr
    assert f"cannot listen for gRPC on 127.0.0.1:{taken}" in result.stderr
    assert "Traceback" not in result.stderr


# -- worker ----------------------------------------------------------------------------------------


def test_external_worker_answers_like_an_in_process_emulator(
    spawn: Callable[..., Child], tmp_path: Path, start_emulator: Callable[..., Stubs]
) -> None:
    server, target = start_serve(spawn, tmp_path, "--workers", "0")
    worker = spawn("worker", "--connect", target, "--worker-id", "ext-1", "--poll-seconds", "1")
    request = user_request("Tell me about external workers")
    with grpc.insecure_channel(target) as channel:
        answer = canister_pb2_grpc.LlmCanisterStub(channel).V1Chat(request, timeout=CALL_TIMEOUT)
        history = control_pb2_grpc.ControlStub(channel).GetHistory(
            cpb.GetHistoryRequest(), timeout=CALL_TIMEOUT
        )
    assert answer.message.content
    assert [(call.request, call.worker_id) for call in history.calls] == [(request, "ext-1")]

    in_process = start_emulator().canister.V1Chat(request, timeout=CALL_TIMEOUT)
    assert answer.SerializeToString() == in_process.SerializeToString()

    assert worker.stop() == 0, worker.stderr()
    assert "Traceback" not in worker.stderr()
    assert "worker ext-1 serving fake" in worker.stderr()
    assert server.stop() == 0, server.stderr()


def test_an_external_worker_passes_the_emulators_control_token(
    spawn: Callable[..., Child], tmp_path: Path
) -> None:
    server, target = start_serve(spawn, tmp_path, "--workers", "0", "--control-token", "s3cret")
    refused = run_cli("worker", "--connect", target, "--poll-seconds", "1")
    assert refused.returncode == 2, refused.stderr
    assert (
        f"the emulator at {target} refused this worker: the AiWorker service needs the emulator's control "
        "token (its --control-token) as metadata icllm-control-token"
    ) in refused.stderr
    assert "Traceback" not in refused.stderr
    worker = spawn(
        "worker", "--connect", target, "--poll-seconds", "1", env={"ICLLM_CONTROL_TOKEN": "s3cret"}
    )
    with grpc.insecure_channel(target) as channel:
        answer = canister_pb2_grpc.LlmCanisterStub(channel).V1Chat(user_request("hi"), timeout=CALL_TIMEOUT)
    assert answer.message.content
    assert worker.stop() == 0, worker.stderr()
    assert server.stop() == 0, server.stderr()


# -- help ------------------------------------------------------------------------------------------


def test_help_lists_the_commands() -> None:
    script = Path(sys.executable).parent / "icllm-emulator"
    command = [str(script)] if script.exists() else emulator_command()
    result = subprocess.run(
        [*command, "--help"],
        env=child_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CALL_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "{serve,worker,pocket-ic,cassette,build-motoko}" in result.stdout
    assert "run the emulator" in result.stdout and "run an external AI worker" in result.stdout
    assert "serve PocketIC's REST API, the LLM canister inside" in result.stdout
    assert "list, show and check cassette files" in result.stdout
    assert "compile a Motoko actor to a canister module" in result.stdout


@pytest.mark.parametrize(
    ("command", "door", "example"),
    [("serve", Door.SERVE, "ICLLM_GRPC_PORT"), ("worker", Door.WORKER, "ICLLM_CONNECT")],
    ids=["serve", "worker"],
)
def test_subcommand_help_names_every_env_var(command: str, door: Door, example: str) -> None:
    result = run_cli(command, "--help", env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert f"[env {example}]" in result.stdout
    missing = [
        s.env for s in at(door) if f"{s.flag} " not in result.stdout or f"[env {s.env}]" not in result.stdout
    ]
    assert not missing, f"`{command} --help` does not name {missing}"


def test_worker_poll_longer_than_the_service_allows_fails_fast(tmp_path: Path) -> None:
    result = run_cli("worker", "--poll-seconds", "100", cwd=tmp_path)
    assert result.returncode == 2
    assert "longer than a poll may wait (0-60 s)" in result.stderr


# Hides packages from a child process, as if they were not installed: a finder ahead of every other one
# that refuses them by name (a fresh `pip install` of the base package has neither jinja2 nor llama_cpp).
WITHOUT_PACKAGES = """
import importlib.abc, sys
HIDDEN = {hidden!r}
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Hide())
from icllm_emulator.cli import main
sys.exit(main({argv!r}))
"""


def test_the_llama_backend_without_its_extra_exits_2_with_the_install_line(tmp_path: Path) -> None:
    """The packages of the `llama` extra hidden: the install line, not a traceback from jinja2."""
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    argv = ["serve", "--grpc-port", "0", "--ollama-port", "0", "--backend", "llama", "--model", str(model)]
    code = WITHOUT_PACKAGES.format(hidden=("jinja2", "llama_cpp", "gguf"), argv=argv)
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=CALL_TIMEOUT,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "the llama backend needs the llama extra" in result.stderr
    assert "pip install '/path/to/pytest-icllm[llama]'" in result.stderr
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF"' in result.stderr
    assert "Traceback" not in result.stderr
