"""Backends produce the answer to a job once scripted rules have had their say."""

from __future__ import annotations

from typing import Protocol

from icllm_emulator.domain import Answer, ChatRequest


class Backend(Protocol):
    """Something that answers a chat request, keeping within a token cap.

    `generate` may raise a `Reject` for a job it cannot serve; the caller gets it as it is. A backend
    that needs time to get ready (loading model files) also has `async def load(self) -> None`, which
    the engine awaits before any worker starts and before health reports SERVING.
    """

    name: str

    async def generate(self, request: ChatRequest, max_output_tokens: int | None) -> Answer: ...

    async def aclose(self) -> None: ...
