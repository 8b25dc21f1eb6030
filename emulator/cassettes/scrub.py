"""Scrubbing before a write: small filter steps over an interaction, as VCR.py's `before_record`.

A step takes the interaction as it is about to be written (a dict: `request`, `answer` or `reject`,
`recorded`) and returns it, changed or not, or None to leave the interaction out of the cassette. The
same steps run on every incoming request before it is matched (as `{"request": ...}` alone), so a
scrubbed recording still matches the live request it came from. The defaults:

- principals (textual IC principals, checksum verified) become `<principal-1>`, `<principal-2>`, ... in
  order of first appearance in the interaction; on replay they are put back from the live request;
- API keys and bearer tokens (OpenAI, Anthropic, Hugging Face, GitHub, Google, AWS, Slack shapes, and
  the proxy's own key) become `<api-key>`;
- text matching a user's pattern (`--scrub REGEX`, `scrub_patterns`) becomes `<scrubbed>`.

A user adds steps of their own as `MODULE:FUNCTION` references (`--scrubber`, the plugin's `scrubbers`).
"""

from __future__ import annotations

import base64
import binascii
import importlib
import re
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from icllm_emulator import patterns as patterns_module
from icllm_emulator.errors import IcllmError

Step = Callable[[dict[str, Any]], "dict[str, Any] | None"]

PRINCIPAL_PLACEHOLDER = "<principal-{}>"
API_KEY_PLACEHOLDER = "<api-key>"
PATTERN_PLACEHOLDER = "<scrubbed>"

_PRINCIPAL = re.compile(r"(?<![A-Za-z0-9-])[a-z2-7]{5}(?:-[a-z2-7]{5}){0,10}-[a-z2-7]{1,5}(?![A-Za-z0-9-])")
_PLACEHOLDER = re.compile(r"<principal-(\d+)>")
_API_KEYS = re.compile(
    "|".join(
        (
            r"\bsk-[A-Za-z0-9_\-]{16,}",  # OpenAI (sk-, sk-proj-), Anthropic (sk-ant-)
            r"\bgh[pousr]_[A-Za-z0-9]{30,}",  # GitHub
            r"\bhf_[A-Za-z0-9]{30,}",  # Hugging Face
            r"\bAIza[0-9A-Za-z_\-]{35}",  # Google
            r"\bAKIA[0-9A-Z]{16}\b",  # AWS access key id
            r"\bxox[abprs]-[A-Za-z0-9\-]{10,}",  # Slack
        )
    )
)
_BEARER = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=\-]{8,}")


class ScrubError(IcllmError, ValueError):
    """A scrubber reference that cannot be loaded; the message says why and what is expected."""


def is_principal(text: str) -> bool:
    """A textual principal whose CRC-32 checksum holds (so `hello-world` is not one)."""
    groups = text.split("-")
    if any(len(group) != 5 for group in groups[:-1]) or not 1 <= len(groups[-1]) <= 5:
        return False
    compact = text.replace("-", "").upper()
    try:
        data = base64.b32decode(compact + "=" * (-len(compact) % 8))
    except (binascii.Error, ValueError):
        return False
    if len(data) < 4 or len(data) > 33 or zlib.crc32(data[4:]) != int.from_bytes(data[:4], "big"):
        return False
    # The last character may carry unused bits: only the canonical spelling is the principal's.
    return base64.b32encode(data).decode().rstrip("=").lower() == text.replace("-", "")


def _strings(value: Any, change: Callable[[str], str]) -> Any:
    """The value with `change` applied to every text in it (mapping keys stay as they are)."""
    if isinstance(value, str):
        return change(value)
    if isinstance(value, dict):
        return {key: _strings(item, change) for key, item in value.items()}
    if isinstance(value, list):
        return [_strings(item, change) for item in value]
    return value


def _walk_strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _walk_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk_strings(item)


def principals_in(value: Any) -> list[str]:
    """Every principal in the texts of `value`, in order of first appearance."""
    found: dict[str, None] = {}
    for text in _walk_strings(value):
        if "-" not in text:
            continue
        for match in _PRINCIPAL.finditer(text):
            if match.group() not in found and is_principal(match.group()):
                found[match.group()] = None
    return list(found)


def scrub_principals(interaction: dict[str, Any]) -> dict[str, Any]:
    """Principals become `<principal-N>`, numbered by first appearance (request first, then the answer)."""
    found = principals_in(interaction)
    if not found:
        return interaction
    numbers = {principal: PRINCIPAL_PLACEHOLDER.format(n) for n, principal in enumerate(found, start=1)}
    scrubbed: dict[str, Any] = _strings(
        interaction, lambda text: _PRINCIPAL.sub(lambda m: numbers.get(m.group(), m.group()), text)
    )
    return scrubbed


def restore_principals(value: Any, live_request: Mapping[str, Any]) -> Any:
    """A replayed answer with `<principal-N>` put back to the live request's N-th principal."""
    found = principals_in(live_request)

    def put_back(match: re.Match[str]) -> str:
        number = int(match.group(1))
        return found[number - 1] if 1 <= number <= len(found) else match.group()

    return _strings(value, lambda text: _PLACEHOLDER.sub(put_back, text) if "<principal-" in text else text)


def has_placeholders(value: Any) -> bool:
    return any("<principal-" in text for text in _walk_strings(value))


def api_key_step(secrets: Iterable[str] = ()) -> Step:
    """API keys and bearer tokens of the usual shapes, and these exact secrets, become `<api-key>`."""
    exact = sorted({secret for secret in secrets if secret}, key=len, reverse=True)

    def change(text: str) -> str:
        for secret in exact:
            text = text.replace(secret, API_KEY_PLACEHOLDER)
        text = _BEARER.sub(lambda m: m.group(1) + API_KEY_PLACEHOLDER, text)
        return _API_KEYS.sub(API_KEY_PLACEHOLDER, text)

    def scrub_api_keys(interaction: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = _strings(interaction, change)
        return result

    return scrub_api_keys


def pattern_step(patterns: Sequence[str]) -> Step | None:
    """Text matching any of these regular expressions becomes `<scrubbed>`."""
    if not patterns:
        return None
    combined = "|".join(f"(?:{pattern})" for pattern in patterns)
    try:
        patterns_module.compiled(combined)
    except patterns_module.PatternError as error:
        raise ScrubError(f"scrub pattern {error}") from None

    def replace(text: str) -> str:
        try:
            return patterns_module.substitute(combined, PATTERN_PLACEHOLDER, text)
        except patterns_module.PatternTimeout as timeout:  # never write what could not be scrubbed
            raise ScrubError(f"scrub patterns: {timeout}") from None

    def scrub_patterns(interaction: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = _strings(interaction, replace)
        return result

    return scrub_patterns


def load_scrubber(reference: str) -> Step:
    """Import `MODULE:FUNCTION` (FUNCTION may be dotted: `Class.method`)."""
    module_name, _, attribute = reference.partition(":")
    try:
        target: Any = importlib.import_module(module_name.strip())
    except ImportError as error:
        raise ScrubError(
            f"scrubber {reference!r}: cannot import {module_name!r} ({error}); the emulator process imports "
            "it, so it must be importable there (on its sys.path)"
        ) from None
    for part in attribute.strip().split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ScrubError(f"scrubber {reference!r}: {module_name} has no {attribute!r}") from None
    if not callable(target):
        raise ScrubError(f"scrubber {reference!r} is not a function (it is a {type(target).__name__})")
    step: Step = target
    return step


def default_steps(patterns: Sequence[str] = (), secrets: Iterable[str] = ()) -> list[Step]:
    steps: list[Step] = [scrub_principals, api_key_step(secrets)]
    user = pattern_step(patterns)
    if user is not None:
        steps.append(user)
    return steps


def run_steps(interaction: dict[str, Any], steps: Sequence[Step]) -> dict[str, Any] | None:
    """The interaction after every step, or None when a step left it out."""
    current: dict[str, Any] | None = interaction
    for step in steps:
        if current is None:
            return None
        current = step(current)
        if current is not None and not isinstance(current, dict):
            name = getattr(step, "__qualname__", repr(step))
            raise ScrubError(
                f"scrub step {name} returned {type(current).__name__}: return the interaction or None"
            )
    return current


def scrub_request(request: dict[str, Any], steps: Sequence[Step]) -> dict[str, Any]:
    """A live request as the steps would have written it, to match it against scrubbed recordings."""
    result = run_steps({"request": request}, steps)
    if result is None or not isinstance(result.get("request"), dict):
        return request
    scrubbed: dict[str, Any] = result["request"]
    return scrubbed
