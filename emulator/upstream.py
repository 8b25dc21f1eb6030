"""The settings of the proxy backend's upstream server, checked when they are made.

Kept apart from `icllm_emulator.backends.proxy` (which imports httpx): `icllm_emulator.config` holds them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from icllm_emulator.addresses import bracketed
from icllm_emulator.errors import IcllmError

DEFAULT_UPSTREAM_TIMEOUT = 120.0
# The environment variable the API key is read from, unless --upstream-key-env names another.
DEFAULT_KEY_ENV = "ICLLM_UPSTREAM_API_KEY"


class UpstreamError(IcllmError, ValueError):
    """An upstream setting that cannot work; the message says what would be valid."""


class UpstreamApi(enum.StrEnum):
    """Which HTTP API the upstream server speaks."""

    OLLAMA = "ollama"  # POST /api/chat (Ollama, and this emulator's own HTTP door)
    OPENAI = "openai"  # POST /v1/chat/completions (vLLM, llama.cpp's server, LM Studio, OpenAI, ...)


def upstream_api(value: str | UpstreamApi) -> UpstreamApi:
    try:
        return UpstreamApi(str(value.value if isinstance(value, UpstreamApi) else value).strip().lower())
    except ValueError:
        valid = ", ".join(api.value for api in UpstreamApi)
        raise UpstreamError(f"upstream API {str(value)!r} is not valid; choose one of: {valid}") from None


def parse_model_map(text: str) -> tuple[tuple[str, str], ...]:
    """`NAME=UPSTREAM,NAME=UPSTREAM`: the canister's model names and the upstream server's names for them."""
    pairs: list[tuple[str, str]] = []
    for spec in text.split(","):
        spec = spec.strip()
        if not spec:
            continue
        name, equals, upstream = spec.partition("=")
        if not equals or not name.strip() or not upstream.strip():
            raise UpstreamError(
                f"upstream model {spec!r} is not NAME=UPSTREAM "
                "(e.g. llama3.1:8b=meta-llama/Llama-3.1-8B-Instruct)"
            )
        pairs.append((name.strip(), upstream.strip()))
    return tuple(pairs)


@dataclass(frozen=True)
class UpstreamSettings:
    """An Ollama- or OpenAI-compatible server that the proxy backend forwards every job to.

    `api_key` comes from an environment variable only (never a flag, which `ps` would show); it is sent
    as `Authorization: Bearer ...` and never written to a cassette.
    """

    url: str
    api: UpstreamApi = UpstreamApi.OLLAMA
    timeout: float = DEFAULT_UPSTREAM_TIMEOUT
    api_key: str | None = field(default=None, repr=False)
    # Canister model name -> the upstream server's name; a model not listed keeps its name.
    models: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "api", upstream_api(self.api))
        object.__setattr__(self, "models", tuple(tuple(pair) for pair in self.models))
        url = self.url.strip().rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UpstreamError(
                f"upstream {self.url!r} is not an http(s) URL; give the server's base URL, "
                "e.g. http://127.0.0.1:11434 (Ollama) or http://127.0.0.1:8000 (vLLM)"
            )
        if parts.query or parts.fragment:
            raise UpstreamError(f"upstream {self.url!r}: give the base URL, without a query or fragment")
        object.__setattr__(self, "url", url)
        if not 0 < self.timeout < float("inf"):
            raise UpstreamError(f"upstream timeout must be more than 0 seconds, got {self.timeout}")

    def __repr__(self) -> str:
        return (
            f"UpstreamSettings(url={self.public_url!r}, api={self.api.value!r}, timeout={self.timeout!r}, "
            f"models={self.models!r})"
        )

    @property
    def public_url(self) -> str:
        """The URL without any user name or password, fit for logs and cassettes."""
        parts = urlsplit(self.url)
        if not parts.username and not parts.password:
            return self.url
        netloc = bracketed(parts.hostname or "")
        if parts.port is not None:
            netloc += f":{parts.port}"
        return parts._replace(netloc=netloc).geturl()

    def upstream_model(self, model: str) -> str:
        return dict(self.models).get(model, model)
