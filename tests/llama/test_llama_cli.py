"""`icllm-emulator serve|worker --backend llama` as real processes, and the `--model` option."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from icllm_emulator._proto.icllm.v1 import canister_pb2_grpc, control_pb2_grpc
from icllm_emulator._proto.icllm.v1 import control_pb2 as cpb
from icllm_emulator.cli import build_parser
from icllm_emulator.client import LlmClient
from icllm_emulator.config import ConfigError, EmulatorConfig
from icllm_emulator.domain import Limits
from icllm_emulator.settings import BackendKind, model_files
from tests.conftest import Stubs, user_request
from tests.llama.test_llama_backend import PARIS, TINY, smollm2  # noqa: F401 (a fixture)
from tests.processes.test_cli import (
    CALL_TIMEOUT,
    Child,
    child_env,
    run_cli,
    spawn,  # noqa: F401 (a fixture)
    start_serve,
)

MODEL = "llama3.1:8b"
NO_HTTP = ("--ollama-port", "0")  # a free port: Ollama's own may be taken


# -- the option --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "files"),
    [
        ("llama3.1:8b=/models/a.gguf", [("llama3.1:8b", "/models/a.gguf")]),
        ("/models/a.gguf", [("", "/models/a.gguf")]),
        ("/models/x=y.gguf", [("", "/models/x=y.gguf")]),
        ("a=/m/a.gguf; qwen3:32b=/m/q.gguf;", [("a", "/m/a.gguf"), ("qwen3:32b", "/m/q.gguf")]),
    ],
    ids=["named", "bare", "equals-in-path", "several"],
)
def test_model_files_are_name_equals_path_or_a_bare_path(text: str, files: list[tuple[str, str]]) -> None:
    assert model_files(text) == tuple(files)


def test_model_flag_repeats_and_replaces_the_env_var() -> None:
    environ = {"ICLLM_MODEL": "a=/m/a.gguf;b=/m/b.gguf"}
    assert build_parser(environ).parse_args(["serve"]).model == (("a", "/m/a.gguf"), ("b", "/m/b.gguf"))
    args = build_parser(environ).parse_args(["serve", "--model", "c=/m/c.gguf", "--model", "/m/d.gguf"])
    assert args.model == (("c", "/m/c.gguf"), ("", "/m/d.gguf"))


def test_a_bare_path_serves_the_default_model_and_new_names_join_the_catalogue() -> None:
    config = EmulatorConfig(
        backend=BackendKind.LLAMA, models=("m1", "m2"), model_files=(("", "/a.gguf"), ("m3", "/b.gguf"))
    )
    assert config.model_files == (("m1", "/a.gguf"), ("m3", "/b.gguf"))
    assert config.models == ("m1", "m2", "m3")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"backend": BackendKind.LLAMA}, "the llama backend needs a GGUF file: give --model NAME=PATH"),
        ({"model_files": (("", "/a.gguf"),)}, "but the backend is 'fake'; add --backend llama"),
        (
            {"backend": BackendKind.LLAMA, "model_files": (("m", "/a.gguf"), ("m", "/b.gguf"))},
            "model 'm' is given two GGUF files (/a.gguf and /b.gguf)",
        ),
    ],
    ids=["no-file", "file-without-llama", "two-files-one-model"],
)
def test_model_file_settings_that_cannot_work_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        EmulatorConfig(**fields)  # type: ignore[arg-type]
    assert message in str(caught.value)


# -- serve -------------------------------------------------------------------------------------------


def test_serve_answers_a_real_question_with_smollm2_set_by_env_vars(
    spawn: Callable[..., Child],  # noqa: F811
    tmp_path: Path,
    smollm2: Path,  # noqa: F811
) -> None:
    env = {"ICLLM_BACKEND": "llama", "ICLLM_MODEL": f"{MODEL}={smollm2}"}
    child, target = start_serve(spawn, tmp_path, *NO_HTTP, env=env)
    with LlmClient(target, timeout=CALL_TIMEOUT) as client:
        assert "Paris" in client.prompt(MODEL, PARIS)
    assert child.stop() == 0
    log = child.stderr()
    assert f"loading model {MODEL} from {smollm2} (98.4 MB)" in log
    assert f"loaded model {MODEL} in " in log


@pytest.mark.parametrize(
    ("make_file", "mentions"),
    [
        (lambda tmp: tmp / "missing.gguf", "no file at"),
        (lambda tmp: write(tmp / "notes.txt", b"hello"), "is not a GGUF file"),
        (lambda tmp: write(tmp / "cut.gguf", TINY.read_bytes()[:5000]), "llama.cpp cannot load"),
    ],
    ids=["missing", "not-gguf", "corrupt"],
)
def test_a_bad_model_file_fails_at_start_up_with_exit_code_2(
    tmp_path: Path, make_file: Callable[[Path], Path], mentions: str
) -> None:
    path = make_file(tmp_path)
    port_file = tmp_path / "ports.json"
    result = run_cli(
        "serve", "--grpc-port", "0", "--ollama-port", "0", "--port-file", str(port_file),
        "--backend", "llama", "--model", f"{MODEL}={path}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"icllm-emulator: error: model '{MODEL}': " in result.stderr
    assert mentions in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr
    assert not port_file.exists()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_without_llama_cpp_the_llama_backend_says_how_to_install_it(tmp_path: Path) -> None:
    # As if the extra were not installed: importing llama_cpp fails.
    code = (
        "import sys; sys.modules['llama_cpp'] = None; from icllm_emulator.cli import main; "
        "sys.exit(main(['serve', '--grpc-port', '0', '--ollama-port', '0', '--backend', 'llama', "
        f"'--model', {str(TINY)!r}]))"
    )
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
    assert "pip install '/path/to/pytest-icllm[llama]'" in result.stderr
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF"' in result.stderr
    assert "Traceback" not in result.stderr


def test_model_option_without_the_llama_backend_fails_naming_the_fix(tmp_path: Path) -> None:
    result = run_cli("serve", "--grpc-port", "0", *NO_HTTP, "--model", str(TINY), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "add --backend llama" in result.stderr


# -- external worker ---------------------------------------------------------------------------------


def test_an_external_llama_worker_answers_like_the_built_in_backend(
    spawn: Callable[..., Child],  # noqa: F811
    tmp_path: Path,
    start_emulator: Callable[..., Stubs],
) -> None:
    server, target = start_serve(spawn, tmp_path, *NO_HTTP, "--workers", "0", "--profile", "launch-2025")
    worker = spawn(
        "worker", "--connect", target, "--worker-id", "gpu-1", "--poll-seconds", "1",
        "--backend", "llama", "--model", f"{MODEL}={TINY}",
    )  # fmt: skip
    request = user_request("Tell me about external workers")
    with grpc.insecure_channel(target) as channel:
        answer = canister_pb2_grpc.LlmCanisterStub(channel).V1Chat(request, timeout=CALL_TIMEOUT)
        history = control_pb2_grpc.ControlStub(channel).GetHistory(
            cpb.GetHistoryRequest(), timeout=CALL_TIMEOUT
        )
    [call] = history.calls
    assert call.worker_id == "gpu-1"

    built_in = start_emulator(
        backend=BackendKind.LLAMA, model_files=((MODEL, str(TINY)),), custom_limits=Limits(10, 10240, 200)
    )
    in_process = built_in.canister.V1Chat(request, timeout=CALL_TIMEOUT)
    assert answer.message.content and answer.SerializeToString() == in_process.SerializeToString()

    assert worker.stop() == 0, worker.stderr()
    assert "worker gpu-1 serving llama" in worker.stderr()
    assert f"loaded model {MODEL} in " in worker.stderr()
    assert "Traceback" not in worker.stderr()
    assert server.stop() == 0, server.stderr()


def test_an_external_llama_worker_with_a_bad_file_exits_with_code_2(tmp_path: Path) -> None:
    result = run_cli("worker", "--backend", "llama", "--model", str(tmp_path / "none.gguf"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert f"model '{MODEL}': no file at" in result.stderr
