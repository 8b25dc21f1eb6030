"""A deterministic fake backend: plausible answers with no model behind them.

Tests and local development need answers that look real, vary from prompt to prompt, and yet are
reproducible byte for byte on every run, process and machine. So every answer is a pure function of
(seed, normalised request, token cap, tool policy): the request is turned into canonical JSON,
hashed with the seed, and the digest seeds both Faker (for the words) and a private `random.Random`
(for the choices). No global random state is read or written.
"""

from __future__ import annotations

import array
import functools
import hashlib
import json
import math
import random
import re
import threading
from typing import TYPE_CHECKING, Any

from faker.providers.lorem.en_US import Provider as LoremProvider

from icllm_emulator.backends import Backend
from icllm_emulator.domain import (
    Answer,
    AssistantMessage,
    ChatRequest,
    FunctionCall,
    Message,
    Property,
    Tool,
    ToolCall,
    ToolCallArgument,
    ToolMessage,
    ToolPolicy,
    UserMessage,
)
from icllm_emulator.tokens import count_tokens, truncate_tokens

if TYPE_CHECKING:
    from faker import Faker

__all__ = ["FakeBackend", "canonical_request", "fake_answer"]

_FAKER_LOCK = threading.Lock()
_WORDS: tuple[str, ...] = tuple(LoremProvider.word_list)
# The word each 16-bit draw picks (`draw % len(_WORDS)`), looked up in C rather than computed in Python
# for every word of every answer (`make bench ARGS=grpc` profiles the path).
_WORD_OF_DRAW: tuple[str, ...] = tuple(_WORDS * ((1 << 16) // len(_WORDS) + 1))[: 1 << 16]


@functools.cache
def _faker() -> Faker:
    """The one Faker, built at the first tool call's answer (a session that never needs one skips it).

    Building one takes milliseconds, so one instance serves every call. It is stateful, hence the
    lock, and it is re-seeded right before each use, so no answer depends on the calls made before it.
    """
    from faker import Faker

    return Faker("en_US")


_MIN_TEXT_TOKENS = 5
_MAX_TEXT_TOKENS = 400
_MIN_SENTENCE_WORDS = 4
_MAX_SENTENCE_WORDS = 14
_TOOL_RESULT_SNIPPET_TOKENS = 20
_ECHO_WORDS = 8
_WORD = re.compile(r"\w+(?:['\u2019]\w+)*")  # "What's" stays one word when the prompt is echoed


def _message_json(message: Message) -> dict[str, Any]:
    """Every field of a message, so that any change to it changes the answer."""
    if isinstance(message, AssistantMessage):
        return {
            "role": str(message.role),
            "content": message.content,
            "tool_calls": [
                {
                    "id": call.id,
                    "function": {
                        "name": call.function.name,
                        "arguments": [[arg.name, arg.value] for arg in call.function.arguments],
                    },
                }
                for call in message.tool_calls
            ],
        }
    if isinstance(message, ToolMessage):
        return {"role": str(message.role), "content": message.content, "tool_call_id": message.tool_call_id}
    return {"role": str(message.role), "content": message.content}


def _tool_json(tool: Tool) -> dict[str, Any]:
    parameters = tool.parameters
    return {
        "name": tool.name,
        "description": tool.description,
        "parameters": None
        if parameters is None
        else {
            "type": parameters.type,
            "properties": [
                {"name": p.name, "type": p.type, "description": p.description, "enum": list(p.enum)}
                for p in parameters.properties
            ],
            "required": list(parameters.required),
        },
    }


def canonical_request(request: ChatRequest) -> str:
    """The request as canonical JSON: sorted keys and fixed separators, so equal requests hash equally."""
    document = {
        "model": request.model,
        "api": str(request.api),
        "messages": [_message_json(message) for message in request.messages],
        "tools": [_tool_json(tool) for tool in request.tools],
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _digest(request: ChatRequest, seed: int) -> bytes:
    return hashlib.sha256(f"{seed}\n{canonical_request(request)}".encode()).digest()


def _sentences_text(rng: random.Random) -> tuple[str, int]:
    """Sentences up to a length drawn log-uniformly from 5..400 tokens, split into paragraphs.

    Log-uniform so that short replies are as common as long ones; whole sentences only, so the
    uncapped text never ends mid-sentence. The words are Faker's English word list, each one token,
    so the token count is known without scanning the text; every word, sentence length and
    paragraph length comes from one draw of random bytes (this runs for every fake answer, so it is
    kept cheap). Returns (text, tokens).
    """
    target = round(math.exp(rng.uniform(math.log(_MIN_TEXT_TOKENS), math.log(_MAX_TEXT_TOKENS))))
    count = target + _MAX_SENTENCE_WORDS
    picks = array.array("H", rng.randbytes(2 * count))
    words = list(map(_WORD_OF_DRAW.__getitem__, picks))
    shapes = rng.randbytes(count)  # at least one byte per sentence and per paragraph
    sentence_span = _MAX_SENTENCE_WORDS - _MIN_SENTENCE_WORDS + 1
    paragraphs: list[str] = []
    sentences: list[str] = []
    paragraph_size = 3 + shapes[0] % 4
    tokens = used = 0
    for shape in shapes[1:]:
        if tokens >= target:
            break
        length = _MIN_SENTENCE_WORDS + shape % sentence_span
        sentences.append(" ".join(words[used : used + length]).capitalize() + ".")
        used += length
        tokens += length + 1
        if len(sentences) >= paragraph_size:
            paragraphs.append(" ".join(sentences))
            sentences = []
            paragraph_size = 3 + (shape >> 4) % 4
    if sentences:
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs), tokens


def _prefix(last: Message | None, rng: random.Random) -> str:
    """An opening that ties the text to the conversation: the tool result, or the user's topic."""
    if isinstance(last, ToolMessage):
        snippet, cut = truncate_tokens(last.content.strip(), _TOOL_RESULT_SNIPPET_TOKENS)
        snippet = " ".join(snippet.split())
        if not snippet:
            return "According to the tool result, there is nothing to report. "
        if cut:
            snippet += "..."
        elif snippet[-1] not in ".!?":
            snippet += "."
        return f"According to the tool result, {snippet} "
    if isinstance(last, UserMessage) and rng.random() < 0.5:
        words = _WORD.findall(last.content)
        if words:
            topic = " ".join(words[:_ECHO_WORDS]) + ("..." if len(words) > _ECHO_WORDS else "")
            return f'Regarding "{topic}": '
    return ""


def _text_answer(request: ChatRequest, rng: random.Random, max_output_tokens: int | None) -> Answer:
    last = request.messages[-1] if request.messages else None
    prefix = _prefix(last, rng)
    body, body_tokens = _sentences_text(rng)
    tokens = count_tokens(prefix) + body_tokens
    text = prefix + body
    if max_output_tokens is None or tokens <= max_output_tokens:
        return Answer(message=AssistantMessage(content=text), output_tokens=tokens)
    final, truncated = truncate_tokens(text, max_output_tokens)
    return Answer(
        message=AssistantMessage(content=final), output_tokens=count_tokens(final), truncated=truncated
    )


def _string_value(name: str, fake: Faker) -> str:
    """A string that suits the parameter's name, so tool calls read naturally."""
    hint = name.lower()
    if "city" in hint:
        return fake.city()
    if "country" in hint:
        return fake.country()
    if "email" in hint:
        return fake.email()
    if "date" in hint:
        return fake.date()
    if "name" in hint:
        return fake.name()
    return fake.word()


def _argument_value(prop: Property, fake: Faker, rng: random.Random) -> str:
    """A value of the declared type, as text, the way arguments travel on the wire."""
    if prop.enum:
        return rng.choice(prop.enum)
    kind = prop.type.strip().lower()
    if kind == "string":
        return _string_value(prop.name, fake)
    if kind == "number":
        if rng.random() < 0.5:
            return str(rng.randint(0, 100))
        return f"{rng.randint(0, 1000) / 10:.1f}"
    if kind == "integer":
        return str(rng.randint(0, 100))
    if kind == "boolean":
        return rng.choice(("true", "false"))
    if kind == "array":
        return json.dumps([fake.word() for _ in range(rng.randint(0, 3))])
    if kind == "object":
        return "{}"
    return fake.word()


def _arguments(tool: Tool, fake: Faker, rng: random.Random) -> tuple[ToolCallArgument, ...]:
    """Arguments that satisfy the schema: all required ones, each optional one with probability 1/2."""
    parameters = tool.parameters
    if parameters is None:
        return ()
    required = set(parameters.required)
    arguments: list[ToolCallArgument] = []
    seen: set[str] = set()
    for prop in parameters.properties:
        if prop.name in seen:
            continue
        seen.add(prop.name)
        if prop.name in required or rng.random() < 0.5:
            arguments.append(ToolCallArgument(prop.name, _argument_value(prop, fake, rng)))
    for name in parameters.required:
        if name not in seen:
            seen.add(name)
            arguments.append(ToolCallArgument(name, fake.word()))
    return tuple(arguments)


def _tool_call_answer(request: ChatRequest, fake: Faker, rng: random.Random, digest: bytes) -> Answer:
    """One call to a tool chosen by the rng; never truncated, whatever the cap."""
    tool = rng.choice(request.tools)
    arguments = _arguments(tool, fake, rng)
    call = ToolCall(id="call_" + digest[16:22].hex(), function=FunctionCall(tool.name, arguments))
    tokens = count_tokens(tool.name) + sum(count_tokens(a.name) + count_tokens(a.value) for a in arguments)
    return Answer(message=AssistantMessage(content=None, tool_calls=(call,)), output_tokens=tokens)


def fake_answer(
    request: ChatRequest, *, seed: int, max_output_tokens: int | None, tool_policy: ToolPolicy
) -> Answer:
    """The fake answer to `request`: a pure function of its arguments, identical on every run.

    With tools offered, policy AUTO and a user message last, the answer is one tool call; otherwise
    it is English text cut to `max_output_tokens` (a cap of 0 gives empty text).
    """
    digest = _digest(request, seed)
    # Separate slices of the digest for Faker and the rng, so their streams are not the same numbers.
    faker_seed = int.from_bytes(digest[0:8], "big")
    rng = random.Random(int.from_bytes(digest[8:16], "big"))
    last = request.messages[-1] if request.messages else None
    wants_tool = tool_policy == ToolPolicy.AUTO and bool(request.tools) and isinstance(last, UserMessage)
    if not wants_tool or max_output_tokens == 0:
        return _text_answer(request, rng, max_output_tokens)
    with _FAKER_LOCK:
        faker = _faker()
        faker.seed_instance(faker_seed)
        return _tool_call_answer(request, faker, rng, digest)


class FakeBackend(Backend):
    """The Backend that answers with `fake_answer`; seed and policy can be changed between jobs."""

    name: str = "fake"

    def __init__(self, *, seed: int = 0, tool_policy: ToolPolicy = ToolPolicy.AUTO) -> None:
        self.seed = seed
        self.tool_policy = tool_policy

    def answer_now(self, request: ChatRequest, max_output_tokens: int | None) -> Answer:
        """A fake answer takes tens of microseconds: workers may take it without waiting."""
        return fake_answer(
            request, seed=self.seed, max_output_tokens=max_output_tokens, tool_policy=self.tool_policy
        )

    async def generate(self, request: ChatRequest, max_output_tokens: int | None) -> Answer:
        return self.answer_now(request, max_output_tokens)

    def reconfigure(self, seed: int, tool_policy: ToolPolicy) -> None:
        self.seed = seed
        self.tool_policy = tool_policy

    async def aclose(self) -> None:
        """Nothing to release."""
