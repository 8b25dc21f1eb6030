"""Backends produce the answer to a job once scripted rules have had their say."""

from __future__ import annotations

from typing import Protocol

from icllm_emulator.domain import Answer, ChatRequest, ToolPolicy

# What `--backend llama` says without the `llama` extra (here, where the docs' test reads it without it).
LLAMA_INSTALL_HINT = (
    "the llama backend needs the llama extra, which is not installed: "
    "pip install '/path/to/pytest-icllm[llama]' (your clone of pytest-icllm, or the wheel its `make dist` "
    "builds, with [llama] after it); PyPI has llama-cpp-python as source only, and where its default "
    "build stops with 'Illegal instruction', build it portably: CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" "
    "pip install --no-cache-dir '/path/to/pytest-icllm[llama]' (`make run-llama` and `make test` do this "
    "for you)"
)


class Backend(Protocol):
    """Something that answers a chat request, keeping within a token cap.

    What a backend can do is declared here, with what a backend that cannot do it does; a backend
    subclasses this protocol to inherit those defaults. `generate` and `answer_now` may raise a
    `Reject` for a job the backend cannot serve: the caller gets it as it is.
    """

    name: str

    async def generate(self, request: ChatRequest, max_output_tokens: int | None) -> Answer:
        """The answer, taking whatever time it takes (a model runs here)."""
        ...

    def answer_now(self, request: ChatRequest, max_output_tokens: int | None) -> Answer | None:
        """The answer, if the backend can give it without waiting (then workers skip a trip through the
        event loop); None: this job needs `generate`."""
        return None

    async def load(self) -> None:
        """Get ready (load model files); awaited before any worker starts and before health is SERVING."""
        return None

    def reconfigure(self, seed: int, tool_policy: ToolPolicy) -> None:
        """The run-time settings an answer may depend on changed (Control.Configure, a test's marker)."""
        return None

    async def aclose(self) -> None:
        """Release what the backend holds (threads, connections, files)."""
        return None
