"""Backends produce the answer to a job once scripted rules have had their say."""

from __future__ import annotations

import enum
from typing import Protocol

from emulator.domain import Answer, ChatRequest


class ToolPolicy(enum.StrEnum):
    """Whether a backend that invents answers may call the tools a request offers."""

    NEVER = "never"
    AUTO = "auto"


class Backend(Protocol):
    """Something that answers a chat request, keeping within a token cap."""

    name: str

    async def generate(self, request: ChatRequest, max_output_tokens: int | None) -> Answer: ...

    async def aclose(self) -> None: ...
