"""What Ollama's model routes (`/api/tags`, `/api/show`, `/api/ps`, `/v1/models`) say about a model.

The emulator has no weights, so these are plausible details of the real model of that name (family,
parameter count, a Q4_K_M download size, context length), so that clients which inspect them behave as
they would against Ollama. Digests are derived from the name: stable, and plainly not a real file.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

# When every emulated model was "pulled": a fixed instant, so listings are the same on every run
# (the day the canister's current Candid interface appeared).
MODIFIED_AT = datetime(2025, 6, 18, tzinfo=UTC)
# Ollama keeps a model loaded for 5 minutes after its last use by default.
KEEP_ALIVE = timedelta(minutes=5)
# Q4_K_M stores about 4.85 bits per parameter.
_BYTES_PER_PARAMETER = 0.6


@dataclass(frozen=True, slots=True)
class ModelCard:
    name: str
    family: str
    parameter_count: int
    context_length: int
    quantization_level: str = "Q4_K_M"

    @property
    def parameter_size(self) -> str:
        """As Ollama prints it: `8.0B`, `32.8B`, `567M`."""
        if self.parameter_count >= 1_000_000_000:
            return f"{self.parameter_count / 1e9:.1f}B"
        return f"{self.parameter_count / 1e6:.0f}M"

    @property
    def size(self) -> int:
        return int(self.parameter_count * _BYTES_PER_PARAMETER)

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"icllm-emulator/{self.name}".encode()).hexdigest()

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }


_KNOWN = {
    card.name: card
    for card in (
        ModelCard("llama3.1:8b", "llama", 8_030_261_248, 131_072),
        ModelCard("qwen3:32b", "qwen3", 32_762_123_264, 40_960),
        ModelCard("llama4-scout", "llama4", 108_641_793_536, 10_485_760),
        ModelCard("gemma3:27b", "gemma3", 27_432_406_640, 131_072),
    )
}
_TAG_SIZE = re.compile(r"(?i)(\d+(?:\.\d+)?)([bm])")


def card(name: str) -> ModelCard:
    """The card of a catalogue model; unknown names get one guessed from the name (`mistral:7b`)."""
    known = _KNOWN.get(name) or _KNOWN.get(name.removesuffix(":latest"))
    if known is not None:
        return ModelCard(name, known.family, known.parameter_count, known.context_length)
    base, _, tag = name.partition(":")
    family = re.sub(r"[^a-z]+$", "", re.split(r"[-:/.]", base.lower().rsplit("/", 1)[-1])[0]) or "llama"
    size = _TAG_SIZE.search(tag or base)
    count = 8_000_000_000
    if size is not None:
        count = int(float(size.group(1)) * (1e9 if size.group(2).lower() == "b" else 1e6))
    return ModelCard(name, family, count, 8192)


def resolve(name: str, catalogue: Sequence[str]) -> str:
    """The catalogue's spelling of `name`: Ollama treats `model` and `model:latest` as one model."""
    if name in catalogue:
        return name
    if name.endswith(":latest") and name.removesuffix(":latest") in catalogue:
        return name.removesuffix(":latest")
    if ":" not in name and f"{name}:latest" in catalogue:
        return f"{name}:latest"
    return name


def timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with a `Z`, as Ollama's Go server writes times."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def tags_entry(name: str) -> dict[str, Any]:
    model = card(name)
    return {
        "name": name,
        "model": name,
        "modified_at": timestamp(MODIFIED_AT),
        "size": model.size,
        "digest": model.digest,
        "details": model.details(),
    }


def ps_entry(name: str, now: datetime) -> dict[str, Any]:
    """Every catalogue model is "loaded": there is nothing to load, and nothing is ever evicted."""
    model = card(name)
    return {
        "name": name,
        "model": name,
        "size": model.size,
        "digest": model.digest,
        "details": model.details(),
        "expires_at": timestamp(now + KEEP_ALIVE),
        "size_vram": 0,
        "context_length": model.context_length,
    }


def show(name: str) -> dict[str, Any]:
    model = card(name)
    architecture = model.family
    return {
        "license": "",
        "modelfile": (
            "# Modelfile of a model emulated by icllm-emulator: no weights behind it\n"
            f"FROM {name}\n"
            'TEMPLATE """{{ .Prompt }}"""\n'
        ),
        "parameters": "",
        "template": "{{ .Prompt }}",
        "details": model.details(),
        "model_info": {
            "general.architecture": architecture,
            "general.parameter_count": model.parameter_count,
            "general.quantization_version": 2,
            f"{architecture}.context_length": model.context_length,
        },
        "capabilities": ["completion", "tools"],
        "modified_at": timestamp(MODIFIED_AT),
    }


def openai_entry(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": int(MODIFIED_AT.timestamp()), "owned_by": "library"}
