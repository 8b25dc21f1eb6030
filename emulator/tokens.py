"""Token counting for backends that have no tokenizer of their own (fake, scripted, replayed answers).

A token here is a run of word characters or one other non-space character: "It's 42." is the five
tokens `It`, `'`, `s`, `42`, `.`. Real Llama tokenizers give a similar count for English prose
(about 1.3 tokens per word); the real backend counts with the model's own tokenizer instead.
"""

from __future__ import annotations

import re

from icllm_emulator.domain import ChatRequest

_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokens(text: str) -> list[str]:
    """The tokens of `text`, in order."""
    return _TOKEN.findall(text)


def count_tokens(text: str) -> int:
    """How many tokens `text` holds."""
    return sum(1 for _ in _TOKEN.finditer(text))


def prompt_tokens(request: ChatRequest) -> int:
    """How many tokens the request's messages hold: what every door reports as the prompt's size."""
    return sum(count_tokens(message.content or "") for message in request.messages)


def truncate_tokens(text: str, cap: int | None) -> tuple[str, bool]:
    """Cut `text` right after its `cap`-th token; returns the text and whether it was cut."""
    if cap is None:
        return text, False
    if cap <= 0:
        return "", bool(text.strip())
    for index, match in enumerate(_TOKEN.finditer(text), start=1):
        if index == cap:
            rest = text[match.end() :]
            return text[: match.end()], bool(rest.strip())
    return text, False
