"""The environment a program needs to talk to the emulator as if it were a local Ollama."""

from __future__ import annotations

from urllib.parse import urlsplit

from icllm_emulator.addresses import bracketed


def ollama_env(http_url: str) -> dict[str, str]:
    """Environment variables that point Ollama and OpenAI clients at the emulator's HTTP API.

    `http_url` is the emulator's base URL (`Ports.http_url`, or the port file's `http_url`), e.g.
    `http://127.0.0.1:11434`. `OLLAMA_HOST` is `host:port`, the form that the `ollama` CLI and the
    official Python and JavaScript clients all read; the other variables are the names common tools
    (LangChain, the OpenAI SDKs) look for. The API key is a placeholder: the emulator ignores it,
    the OpenAI SDKs refuse to start without one.
    """
    parts = urlsplit(http_url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
        raise ValueError(f"expected a base URL like http://127.0.0.1:11434, got {http_url!r}")
    base = http_url.rstrip("/")
    return {
        "OLLAMA_HOST": f"{bracketed(parts.hostname)}:{parts.port}",
        "OLLAMA_BASE_URL": base,
        "OPENAI_BASE_URL": f"{base}/v1",
        "OPENAI_API_BASE": f"{base}/v1",
        "OPENAI_API_KEY": "icllm-emulator",
    }
