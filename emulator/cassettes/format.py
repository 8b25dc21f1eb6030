"""Cassette files, format version 1: YAML that a person can read, review and diff.

```yaml
version: 1
interactions:
- request:
    method: v1_chat
    model: llama3.1:8b
    messages:
    - {role: user, content: Weather in Zurich?}
    tools: [...]              # absent when none are offered
    max_output_tokens: 1000   # the cap in force when it was recorded (absent: none)
  answer:                     # or `reject: {code, name, message}`
    content: It is sunny.     # absent when the model answered with tool calls only
    tool_calls: [{id: call_1, name: get_weather, arguments: {city: Zurich}}]
    output_tokens: 4
    truncated: false
  recorded: {at: '2025-11-27T10:00:00Z', backend: fake, model: llama3.1:8b}
```

Reading never runs code: a file this module wrote, unchanged since (its first line holds a SHA-256
of the rest), is read by rapidyaml, a YAML parser that builds no Python objects of its own, through
JSON, 7 to 8 times faster than PyYAML; any other file (edited by hand, or from elsewhere) by
PyYAML's safe loader (libyaml's when present), which also gives the line and column of a syntax error.
Each interaction is written only after checking that rapidyaml reads it back exactly; one that it
would not (rare characters such as U+2028) leaves the file unsigned, so PyYAML reads it. A file of
another version fails with a message that says what to do. Files are written whole, to a temporary
file in the same folder that then replaces the old one, so a reader (or a process killed mid-write)
never sees half a cassette.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from icllm_emulator.domain import (
    Answer,
    Api,
    AssistantMessage,
    ChatRequest,
    FunctionCall,
    Message,
    Parameters,
    Property,
    Reject,
    RejectCode,
    SystemMessage,
    Tool,
    ToolCall,
    ToolCallArgument,
    ToolMessage,
    UserMessage,
)
from icllm_emulator.errors import IcllmError

VERSION = 1
SUFFIXES = (".yaml", ".yml")
SIGNATURE = "# pytest-icllm cassette; sha256 of the rest: {}\n"
HEADER = (
    "# Answers recorded from an LLM backend, replayed by the emulator of the IC's LLM canister.\n"
    "# Edit by hand if you like, then run `icllm-emulator cassette check FILE`.\n"
)
_SIGNED = re.compile(r"# pytest-icllm cassette; sha256 of the rest: ([0-9a-f]{64})")

try:
    import ryml
except ImportError:  # pragma: no cover - a platform without its wheel: PyYAML reads every file
    ryml = None

# Whether signed cassettes are read by rapidyaml (else PyYAML reads every file, more slowly).
FAST_READER = ryml is not None

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_BaseDumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class CassetteError(IcllmError, ValueError):
    """A cassette file that cannot be used; the message names the file, the place and the fix."""


# -- documents <-> domain values ---------------------------------------------------------------------


def _arguments_doc(arguments: Sequence[ToolCallArgument]) -> dict[str, str] | list[dict[str, str]]:
    """A mapping reads best; a call that repeats an argument name keeps every pair as a list."""
    names = [argument.name for argument in arguments]
    if len(set(names)) == len(names):
        return {argument.name: argument.value for argument in arguments}
    return [{"name": argument.name, "value": argument.value} for argument in arguments]


def tool_calls_doc(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    return [
        {"id": call.id, "name": call.function.name, "arguments": _arguments_doc(call.function.arguments)}
        for call in calls
    ]


def _assistant_doc(message: AssistantMessage) -> dict[str, Any]:
    """An assistant message's `content` (absent when None) and `tool_calls` (absent when none)."""
    doc: dict[str, Any] = {}
    if message.content is not None:
        doc["content"] = message.content
    if message.tool_calls:
        doc["tool_calls"] = tool_calls_doc(message.tool_calls)
    return doc


def message_doc(message: Message) -> dict[str, Any]:
    if isinstance(message, AssistantMessage):
        return {"role": "assistant", **_assistant_doc(message)}
    if isinstance(message, ToolMessage):
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    return {"role": message.role.value, "content": message.content}


def tool_doc(tool: Tool) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        doc["description"] = tool.description
    if tool.parameters is not None:
        properties = []
        for prop in tool.parameters.properties:
            entry: dict[str, Any] = {"name": prop.name, "type": prop.type}
            if prop.description is not None:
                entry["description"] = prop.description
            if prop.enum:
                entry["enum"] = list(prop.enum)
            properties.append(entry)
        doc["parameters"] = {
            "type": tool.parameters.type,
            "properties": properties,
            "required": list(tool.parameters.required),
        }
    return doc


def request_doc(request: ChatRequest, max_output_tokens: int | None = None) -> dict[str, Any]:
    """The request as the cassette holds it; also the input of the matchers."""
    doc: dict[str, Any] = {
        "method": request.api.value,
        "model": request.model,
        "messages": [message_doc(message) for message in request.messages],
    }
    if request.tools:
        doc["tools"] = [tool_doc(tool) for tool in request.tools]
    if max_output_tokens is not None:
        doc["max_output_tokens"] = max_output_tokens
    return doc


def outcome_doc(outcome: Answer | Reject) -> tuple[str, dict[str, Any]]:
    """`("answer", {...})` or `("reject", {...})`."""
    if isinstance(outcome, Reject):
        return "reject", {"code": int(outcome.code), "name": outcome.code.name, "message": outcome.message}
    doc = _assistant_doc(outcome.message)
    doc["output_tokens"] = outcome.output_tokens
    doc["truncated"] = outcome.truncated
    return "answer", doc


def recorded_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Reader:
    """Reads one document into domain values; every complaint names where it is.

    `at` is the place of the value being read (`interactions[3].request`); the place of a field is
    only spelled out when something is wrong there, since a cassette may hold many thousands of values.
    """

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, at: str, problem: str) -> CassetteError:
        return CassetteError(f"{self.where}: {at}: {problem}")

    def mapping(
        self, value: Any, at: str, required: tuple[str, ...], allowed: frozenset[str]
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(at, f"must be a mapping, got {_kind(value)}")
        if not value.keys() <= allowed:
            unknown = [key for key in value if key not in allowed]
            raise self.fail(
                at,
                f"unknown field {', '.join(map(repr, unknown))}; valid fields: {', '.join(sorted(allowed))}",
            )
        for key in required:
            if key not in value:
                missing = [key for key in required if key not in value]
                raise self.fail(at, f"missing field {', '.join(map(repr, missing))}")
        return value

    def text(self, value: Any, at: str, name: str, *, optional: bool = False) -> Any:
        if isinstance(value, str):
            return value
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(f"{at}{name}", f"must be text, got {_kind(value)}")
        # YAML reads `3` as a number; the canister's values are text.
        return str(value)

    def integer(self, value: Any, at: str, name: str, *, optional: bool = False) -> int | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(f"{at}{name}", f"must be a whole number of 0 or more, got {_kind(value)}")
        return value

    def sequence(self, value: Any, at: str, name: str) -> list[Any]:
        if isinstance(value, list):
            return value
        if value is None:
            return []
        raise self.fail(f"{at}{name}", f"must be a list, got {_kind(value)}")

    def arguments(self, value: Any, at: str) -> tuple[ToolCallArgument, ...]:
        if value is None:
            return ()
        if isinstance(value, dict):
            return tuple(
                ToolCallArgument(self.text(name, at, " key"), self.text(item, at, f".{name}"))
                for name, item in value.items()
            )
        arguments = []
        for index, pair in enumerate(self.sequence(value, at, "")):
            where = f"{at}[{index}]"
            entry = self.mapping(pair, where, ("name", "value"), _ARGUMENT)
            arguments.append(
                ToolCallArgument(
                    self.text(entry["name"], where, ".name"), self.text(entry["value"], where, ".value")
                )
            )
        return tuple(arguments)

    def tool_calls(self, value: Any, at: str) -> tuple[ToolCall, ...]:
        calls = []
        for index, raw in enumerate(self.sequence(value, at, "")):
            where = f"{at}[{index}]"
            call = self.mapping(raw, where, ("id", "name"), _CALL)
            calls.append(
                ToolCall(
                    self.text(call["id"], where, ".id"),
                    FunctionCall(
                        self.text(call["name"], where, ".name"),
                        self.arguments(call.get("arguments"), f"{where}.arguments"),
                    ),
                )
            )
        return tuple(calls)

    def assistant(self, doc: Mapping[str, Any], at: str) -> AssistantMessage:
        """The content and tool calls of an assistant message, or of a recorded answer."""
        calls = doc.get("tool_calls")
        return AssistantMessage(
            content=self.text(doc.get("content"), at, ".content", optional=True),
            tool_calls=self.tool_calls(calls, f"{at}.tool_calls") if calls else (),
        )

    def message(self, value: Any, at: str) -> Message:
        if not isinstance(value, dict):
            raise self.fail(at, f"must be a mapping, got {_kind(value)}")
        role = value.get("role")
        if role == "user" or role == "system":
            doc = self.mapping(value, at, ("role", "content"), _TEXT_MESSAGE)
            content = self.text(doc["content"], at, ".content")
            return UserMessage(content) if role == "user" else SystemMessage(content)
        if role == "assistant":
            return self.assistant(self.mapping(value, at, ("role",), _ASSISTANT_MESSAGE), at)
        if role == "tool":
            doc = self.mapping(value, at, ("role", "tool_call_id", "content"), _TOOL_MESSAGE)
            return ToolMessage(
                self.text(doc["content"], at, ".content"), self.text(doc["tool_call_id"], at, ".tool_call_id")
            )
        raise self.fail(f"{at}.role", f"{role!r} is not a role; valid roles: user, system, assistant, tool")

    def tool(self, value: Any, at: str) -> Tool:
        doc = self.mapping(value, at, ("name",), _TOOL)
        parameters = None
        if doc.get("parameters") is not None:
            where = f"{at}.parameters"
            spec = self.mapping(doc["parameters"], where, (), _PARAMETERS)
            properties = []
            for index, raw in enumerate(self.sequence(spec.get("properties"), where, ".properties")):
                pat = f"{where}.properties[{index}]"
                prop = self.mapping(raw, pat, ("name", "type"), _PROPERTY)
                properties.append(
                    Property(
                        name=self.text(prop["name"], pat, ".name"),
                        type=self.text(prop["type"], pat, ".type"),
                        description=self.text(prop.get("description"), pat, ".description", optional=True),
                        enum=tuple(
                            self.text(item, pat, f".enum[{i}]")
                            for i, item in enumerate(self.sequence(prop.get("enum"), pat, ".enum"))
                        ),
                    )
                )
            parameters = Parameters(
                type=self.text(spec.get("type", "object"), where, ".type"),
                properties=tuple(properties),
                required=tuple(
                    self.text(item, where, f".required[{i}]")
                    for i, item in enumerate(self.sequence(spec.get("required"), where, ".required"))
                ),
            )
        return Tool(
            name=self.text(doc["name"], at, ".name"),
            description=self.text(doc.get("description"), at, ".description", optional=True),
            parameters=parameters,
        )

    def request(self, value: Any, at: str) -> tuple[ChatRequest, int | None]:
        doc = self.mapping(value, at, ("method", "model", "messages"), _REQUEST)
        method = doc["method"]
        if method != "v1_chat" and method != "v0_chat":
            raise self.fail(f"{at}.method", f"{method!r} is not a method; valid methods: v0_chat, v1_chat")
        messages = self.sequence(doc["messages"], at, ".messages")
        tools = doc.get("tools")
        request = ChatRequest(
            model=self.text(doc["model"], at, ".model"),
            messages=tuple(self.message(m, f"{at}.messages[{i}]") for i, m in enumerate(messages)),
            tools=tuple(
                self.tool(t, f"{at}.tools[{i}]") for i, t in enumerate(self.sequence(tools, at, ".tools"))
            )
            if tools
            else (),
            api=Api.V1 if method == "v1_chat" else Api.V0,
        )
        return request, self.integer(doc.get("max_output_tokens"), at, ".max_output_tokens", optional=True)

    def answer(self, value: Any, at: str) -> Answer:
        doc = self.mapping(value, at, (), _ANSWER)
        truncated = doc.get("truncated", False)
        if not isinstance(truncated, bool):
            raise self.fail(f"{at}.truncated", f"must be true or false, got {_kind(truncated)}")
        return Answer(
            self.assistant(doc, at),
            output_tokens=self.integer(doc.get("output_tokens", 0), at, ".output_tokens") or 0,
            truncated=truncated,
        )

    def reject(self, value: Any, at: str) -> Reject:
        doc = self.mapping(value, at, ("code", "message"), _REJECT)
        code = doc["code"]
        valid = ", ".join(f"{int(c)} {c.name}" for c in RejectCode)
        if isinstance(code, bool) or code not in {int(c) for c in RejectCode}:
            raise self.fail(f"{at}.code", f"{code!r} is not an IC reject code; valid codes: {valid}")
        name = doc.get("name")
        if name is not None and name != RejectCode(code).name:
            raise self.fail(f"{at}.name", f"{name!r} does not name code {code} ({RejectCode(code).name})")
        return Reject(RejectCode(code), self.text(doc["message"], at, ".message"))


_ARGUMENT = frozenset({"name", "value"})
_CALL = frozenset({"id", "name", "arguments"})
_TEXT_MESSAGE = frozenset({"role", "content"})
_ASSISTANT_MESSAGE = frozenset({"role", "content", "tool_calls"})
_TOOL_MESSAGE = frozenset({"role", "tool_call_id", "content"})
_TOOL = frozenset({"name", "description", "parameters"})
_PARAMETERS = frozenset({"type", "properties", "required"})
_PROPERTY = frozenset({"name", "type", "description", "enum"})
_REQUEST = frozenset({"method", "model", "messages", "tools", "max_output_tokens"})
_ANSWER = frozenset({"content", "tool_calls", "output_tokens", "truncated"})
_REJECT = frozenset({"code", "name", "message"})
_INTERACTION = frozenset({"request", "answer", "reject", "recorded"})


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"text ({value[:40]!r})"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


# -- interactions and files --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Interaction:
    """One recorded call: the request, what it got (an answer or a reject), and when and from what.

    `doc` is the interaction as written in the file (scrubbed); `request` and `outcome` are read from it.
    """

    doc: Mapping[str, Any]
    request: ChatRequest
    max_output_tokens: int | None
    outcome: Answer | Reject

    @property
    def recorded(self) -> Mapping[str, Any]:
        recorded = self.doc.get("recorded")
        return recorded if isinstance(recorded, dict) else {}


def read_interaction(doc: Any, where: str, index: int) -> Interaction:
    reader = _Reader(where)
    at = f"interactions[{index}]"
    value = reader.mapping(doc, at, ("request",), _INTERACTION)
    if ("answer" in value) == ("reject" in value):
        raise reader.fail(at, "needs exactly one of 'answer' (what the backend answered) or 'reject'")
    request, cap = reader.request(value["request"], f"{at}.request")
    outcome: Answer | Reject = (
        reader.answer(value["answer"], f"{at}.answer")
        if "answer" in value
        else reader.reject(value["reject"], f"{at}.reject")
    )
    recorded = value.get("recorded")
    if recorded is not None and not isinstance(recorded, dict):
        raise reader.fail(f"{at}.recorded", f"must be a mapping, got {_kind(recorded)}")
    return Interaction(value, request, cap, outcome)


@dataclass(frozen=True)
class CassetteFile:
    """A cassette as read from disk: its path and interactions, in file order."""

    path: Path
    interactions: tuple[Interaction, ...]


class _StrictLoader(yaml.SafeLoader):
    """The safe loader, refusing a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} appears twice in one mapping", mark
                )
            with contextlib.suppress(TypeError):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _fast_json(yaml_text: str) -> Any:
    """rapidyaml's reading of YAML, through JSON (raises on a syntax error)."""
    tree = ryml.parse_in_arena(yaml_text.encode("utf-8"))
    return json.loads(ryml.emit_json_malloc(tree, tree.root_id()), strict=False)


def _signed_body(text: str) -> str | None:
    """The text after the first line, if that line signs it (a file written here, unchanged since)."""
    first, _, body = text.partition("\n")
    signed = _SIGNED.fullmatch(first)
    if signed is None or hashlib.sha256(body.encode("utf-8")).hexdigest() != signed.group(1):
        return None
    return body


def parse_text(text: str, where: str, *, strict_keys: bool = False) -> list[Any]:
    """The interaction documents of a cassette's text, after checking it is a cassette of this version.

    `strict_keys` reads with PyYAML and refuses a key given twice in a mapping (`cassette check`).
    """
    document: Any = None
    body = None if strict_keys or ryml is None else _signed_body(text)
    if body is not None:
        try:
            document = _fast_json(body)
        except Exception:  # never for a file written here; PyYAML then says what is wrong
            body = None
    try:
        if body is None:
            loader = _StrictLoader if strict_keys else _Loader
            document = yaml.load(text, Loader=loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        place = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise CassetteError(
            f"{where}: not valid YAML{place}: {problem}; fix it by hand, or delete the file and re-record it"
        ) from None
    if not isinstance(document, dict):
        raise CassetteError(
            f"{where}: not a cassette (a YAML mapping with 'version' and 'interactions'), "
            f"got {_kind(document)}"
        )
    version = document.get("version")
    if version is None:
        raise CassetteError(
            f"{where}: has no 'version' field, so it is not a pytest-icllm cassette (or one cut short); "
            "delete it and re-record it"
        )
    if version != VERSION:
        if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
            advice = (
                "it was written by a newer pytest-icllm; upgrade pytest-icllm "
                f"(this one reads version {VERSION}), "
                "or re-record the cassette with this one (record mode all)"
            )
        else:
            advice = (
                f"re-record it with record mode all (this pytest-icllm reads and writes version {VERSION})"
            )
        raise CassetteError(f"{where}: cassette format version {version!r} is not supported: {advice}")
    unknown = [key for key in document if key not in ("version", "interactions")]
    if unknown:
        raise CassetteError(
            f"{where}: unknown top-level field {', '.join(map(repr, unknown))}; "
            "valid fields: interactions, version"
        )
    interactions = document.get("interactions")
    if interactions is None:
        return []
    if not isinstance(interactions, list):
        raise CassetteError(f"{where}: 'interactions' must be a list, got {_kind(interactions)}")
    return interactions


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No garbage collection while a cassette's many small objects are made (a fifth of a large load):
    none of them is garbage yet. Collection resumes as it was."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def load_cassette(path: Path, *, strict_keys: bool = False) -> CassetteFile:
    """Read and check a cassette file; a CassetteError says what is wrong and what to do."""
    with paused_gc():
        return _load_cassette(path, strict_keys)


def _load_cassette(path: Path, strict_keys: bool) -> CassetteFile:
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CassetteError(f"{where}: no such cassette file") from None
    except UnicodeDecodeError as error:
        raise CassetteError(f"{where}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise CassetteError(f"{where}: cannot be read: {error.strerror}") from None
    docs = parse_text(text, where, strict_keys=strict_keys)
    return CassetteFile(path, tuple(read_interaction(doc, where, index) for index, doc in enumerate(docs)))


# -- writing -----------------------------------------------------------------------------------------


class _Dumper(_BaseDumper):  # type: ignore[valid-type, misc]
    """Block style, keys in the order written, multi-line text as literal blocks (diffs by line)."""


# Text that YAML 1.1 (PyYAML) leaves unquoted but YAML 1.2 (rapidyaml) reads as a number: quoted.
_NUMBERLIKE = re.compile(r"[-+]?\.?[0-9]|[-+]?\.?(?:inf|nan)$", re.IGNORECASE)


# Control characters, and line breaks other than \n: escaped in double quotes, the one style in which
# both readers agree on them.
_SPECIAL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ufeff]")


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if _SPECIAL.search(value):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"')
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    if _NUMBERLIKE.match(value):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="'")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _represent_str)


@dataclass(frozen=True, slots=True)
class Fragment:
    """One interaction's YAML, and whether rapidyaml reads it back exactly (then the file can be signed)."""

    text: str
    fast: bool


def dump_interaction(doc: Mapping[str, Any]) -> Fragment:
    """One interaction as the YAML block that follows `interactions:` in a file (a one-item list)."""
    text: str = yaml.dump(
        [dict(doc)], Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False, width=110
    )
    fast = False
    if ryml is not None:
        try:
            fast = _fast_json(text) == [doc]
        except Exception:
            fast = False
    return Fragment(text, fast)


def cassette_text(fragments: Sequence[Fragment]) -> str:
    """A whole cassette file; signed (so rapidyaml reads it) when every fragment reads back exactly."""
    body = "".join(fragment.text for fragment in fragments)
    rest = HEADER + f"version: {VERSION}\n" + ("interactions:\n" + body if body else "interactions: []\n")
    if all(fragment.fast for fragment in fragments):
        return SIGNATURE.format(hashlib.sha256(rest.encode("utf-8")).hexdigest()) + rest
    return rest


def write_atomically(path: Path, text: str) -> None:
    """Write a whole file through a temporary file in the same folder and a rename.

    A reader sees the old file or the new one, never a mix; a process killed mid-write leaves the old
    file and a hidden `.NAME.*.tmp` beside it, which loaders and `cassette ls` pass over.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def is_cassette_name(path: Path) -> bool:
    """A YAML file that is not a hidden or temporary one."""
    return path.suffix in SUFFIXES and not path.name.startswith(".")


def cassette_files(root: Path) -> list[Path]:
    """Every cassette file under a folder (or the file itself), in a stable order."""
    if root.is_file():
        return [root]
    return sorted(
        path
        for path in root.rglob("*")
        if path.is_file()
        and is_cassette_name(path)
        and not any(part.startswith(".") for part in path.relative_to(root).parts[:-1])
    )
