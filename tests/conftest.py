"""Shared fixtures: an emulator in a background thread and gRPC stubs bound to it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

# icp-py-core's .did parser is a PyO3 extension, which can be initialised once per process: imported
# before any inner pytest run (pytester), it survives each run's restore of `sys.modules`.
import icp_candid.did_loader  # noqa: F401
import pytest

from icllm_emulator._proto.icllm.v1 import canister_pb2 as pb
from icllm_emulator._proto.icllm.v1 import canister_pb2_grpc, control_pb2_grpc, worker_pb2_grpc
from icllm_emulator.cassettes.settings import CassetteSettings
from icllm_emulator.config import EmulatorConfig
from icllm_emulator.server import ThreadedEmulator

# The plugin is tested as users meet it: generated test files run by an inner pytest.
pytest_plugins = ["pytester"]


@dataclass
class Stubs:
    emulator: ThreadedEmulator
    channel: grpc.Channel
    canister: canister_pb2_grpc.LlmCanisterStub
    worker: worker_pb2_grpc.AiWorkerStub
    control: control_pb2_grpc.ControlStub


@pytest.fixture
def start_emulator() -> Iterator[Callable[..., Stubs]]:
    """Start emulators with the given config fields; all are stopped at the end of the test."""
    started: list[Stubs] = []

    def start(**fields: Any) -> Stubs:
        # Port 0 for HTTP too: many emulators run at once, and Ollama's own 11434 may be taken. Tests
        # name cassettes in their tmp_path over Control, as the plugin's in-process emulator lets them.
        fields.setdefault("cassettes", CassetteSettings(paths_anywhere=True, scrubber_imports=True))
        emulator = ThreadedEmulator(EmulatorConfig(**{"grpc_port": 0, "ollama_port": 0, **fields}))
        emulator.start()
        channel = grpc.insecure_channel(emulator.ports.grpc_target)
        stubs = Stubs(
            emulator,
            channel,
            canister_pb2_grpc.LlmCanisterStub(channel),
            worker_pb2_grpc.AiWorkerStub(channel),
            control_pb2_grpc.ControlStub(channel),
        )
        started.append(stubs)
        return stubs

    yield start
    for stubs in started:
        stubs.channel.close()
        stubs.emulator.stop()


@pytest.fixture
def emu(start_emulator: Callable[..., Stubs]) -> Stubs:
    """An emulator with the default configuration (fake backend, one worker, real clock)."""
    return start_emulator()


def user_request(
    text: str = "What's the speed of light?", model: str = "llama3.1:8b", **kw: Any
) -> pb.V1ChatRequest:
    return pb.V1ChatRequest(model=model, messages=[pb.ChatMessageV1(user=pb.UserMessage(content=text))], **kw)


def reject_code(error: grpc.RpcError) -> int | None:
    """The IC reject code a gRPC error carries, or None for a plain gRPC error."""
    for key, value in error.trailing_metadata() or ():
        if key == "icllm-reject-code":
            return int(value)
    return None


LLAMA_TESTS = Path(__file__).resolve().parent / "llama"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/llama runs real inference: it carries the `llama` marker."""
    for item in items:
        if LLAMA_TESTS in item.path.parents:
            item.add_marker(pytest.mark.llama)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """With `-m 'not llama'` on a machine without the llama extra, its test modules are not imported."""
    if collection_path != LLAMA_TESTS or "not llama" not in (config.option.markexpr or ""):
        return None
    try:
        import jinja2  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError:
        return True
    return None
