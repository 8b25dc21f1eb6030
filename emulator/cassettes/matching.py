"""Which recorded interaction answers a request: canonical keys, an O(1) index, and misses explained.

A matcher takes the request as the cassette holds it (`format.request_doc`) and returns the part that
must be equal; the key of a request is the canonical JSON of its parts, so a lookup is one dict access.
Identical requests replay their recordings in order; once those are used up, the next identical call
is a miss, unless repeats are allowed (then the last recording answers again).
"""

from __future__ import annotations

import collections
import difflib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from icllm_emulator.cassettes.format import Interaction
from icllm_emulator.errors import IcllmError

Matcher = Callable[[Mapping[str, Any]], Any]

# The index narrows a miss's candidates to this many (by a cheap score) before the exact score.
_CANDIDATES = 20
_CLOSEST_SHOWN = 3
_DIFF_LINES = 60


def _messages(doc: Mapping[str, Any]) -> Any:
    return doc["messages"]


def _last_message(doc: Mapping[str, Any]) -> Any:
    messages = doc["messages"]
    return messages[-1] if messages else None


def _system(doc: Mapping[str, Any]) -> Any:
    return [message for message in doc["messages"] if message["role"] == "system"]


MATCHERS: dict[str, Matcher] = {
    "method": lambda doc: doc["method"],
    "model": lambda doc: doc["model"],
    "messages": _messages,
    "tools": lambda doc: doc.get("tools", []),
    "last_message": _last_message,
    "system": _system,
    "max_output_tokens": lambda doc: doc.get("max_output_tokens"),
}


class MatchError(IcllmError, ValueError):
    """A matcher name the emulator does not know; the message lists the known ones."""


def register_matcher(name: str, matcher: Matcher) -> None:
    """Add a named matcher (a function of the request document returning a JSON value) for `match_on`."""
    if not name.strip() or "," in name:
        raise MatchError(f"matcher name {name!r} must be a non-empty word without commas")
    MATCHERS[name] = matcher


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class Matching:
    """The matchers a cassette uses, in order; `key` of a request document is its canonical parts."""

    def __init__(self, match_on: Sequence[str]) -> None:
        unknown = [name for name in match_on if name not in MATCHERS]
        if unknown or not match_on:
            raise MatchError(
                f"match_on: unknown matcher {', '.join(map(repr, unknown))}; "
                f"choose from: {', '.join(MATCHERS)}"
                if unknown
                else f"match_on needs at least one matcher; choose from: {', '.join(MATCHERS)}"
            )
        self.names = tuple(match_on)
        self._matchers = tuple(MATCHERS[name] for name in self.names)

    def key(self, doc: Mapping[str, Any]) -> str:
        return canonical([matcher(doc) for matcher in self._matchers])

    def parts(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        return {name: matcher(doc) for name, matcher in zip(self.names, self._matchers, strict=True)}


@dataclass(eq=False)
class Recording:
    """An interaction of the cassette, with its key and position (1-based, as shown to people)."""

    interaction: Interaction
    key: str
    number: int
    request_doc: Mapping[str, Any]
    # Whether the recorded outcome holds principal placeholders to put back (found at the first replay).
    placeholders: bool | None = None
    _text: str | None = field(default=None, repr=False)


class Index:
    """Recordings by key, each key's in file order; `take` hands out the next one, in O(1)."""

    def __init__(self, recordings: Iterable[Recording], *, allow_repeats: bool) -> None:
        self.allow_repeats = allow_repeats
        self.recordings = list(recordings)
        self._queues: dict[str, collections.deque[Recording]] = {}
        for recording in self.recordings:
            queue = self._queues.get(recording.key)
            if queue is None:
                queue = self._queues[recording.key] = collections.deque()
            queue.append(recording)
        self._last: dict[str, Recording] = {}
        self.replayed = 0

    def take(self, key: str) -> Recording | None:
        queue = self._queues.get(key)
        if queue:
            recording = queue.popleft()
            self._last[key] = recording
            self.replayed += 1
            return recording
        if self.allow_repeats:
            last = self._last.get(key)
            if last is not None:
                self.replayed += 1
            return last
        return None

    def used_up(self, key: str) -> int:
        """How many recordings of this key there are, all already replayed (0: none were recorded)."""
        if self._queues.get(key):
            return 0
        return sum(1 for recording in self.recordings if recording.key == key)

    @property
    def unplayed(self) -> int:
        return sum(len(queue) for queue in self._queues.values())


# -- explaining a miss -------------------------------------------------------------------------------


def describe_request(doc: Mapping[str, Any]) -> str:
    """One line about a request: method, model, sizes and the last message."""
    messages = doc["messages"]
    tools = doc.get("tools", [])
    text = f"{doc['method']} {doc['model']!r}, {len(messages)} message(s)"
    if tools:
        text += f", tools {', '.join(tool['name'] for tool in tools)}"
    if messages:
        last = messages[-1]
        content = last.get("content")
        if content is None and last.get("tool_calls"):
            content = f"[{len(last['tool_calls'])} tool call(s)]"
        shown = content if isinstance(content, str) else repr(content)
        text += f", last {last['role']}: {shown[:100]!r}"
    return text


class _TextDumper(yaml.SafeDumper):
    pass


def _literal(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_TextDumper.add_representer(str, _literal)


def request_text(parts: Mapping[str, Any]) -> str:
    """The matched parts of a request as YAML lines: what the diff of a miss compares."""
    text: str = yaml.dump(
        dict(parts),
        Dumper=_TextDumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=100,
    )
    return text


def _text_of(recording: Recording, matching: Matching) -> str:
    if recording._text is None:
        recording._text = request_text(matching.parts(recording.request_doc))
    return recording._text


def closest(
    doc: Mapping[str, Any], matching: Matching, recordings: Sequence[Recording]
) -> list[tuple[float, Recording]]:
    """The recordings most like this request, best first, with a similarity from 0 to 1.

    A cheap score over the canonical keys picks the candidates (a cassette may hold thousands); the
    similarity shown is difflib's ratio of the YAML texts that the diff compares.
    """
    rough = difflib.SequenceMatcher(None, autojunk=False)
    rough.set_seq2(matching.key(doc))
    scored = []
    for recording in recordings:
        rough.set_seq1(recording.key)
        scored.append((rough.quick_ratio(), recording.number, recording))
    scored.sort(key=lambda item: (-item[0], item[1]))
    exact = difflib.SequenceMatcher(None, autojunk=False)
    exact.set_seq2(request_text(matching.parts(doc)))
    ranked = []
    for _, _, recording in scored[:_CANDIDATES]:
        exact.set_seq1(_text_of(recording, matching))
        ranked.append((exact.ratio(), recording))
    ranked.sort(key=lambda item: (-item[0], item[1].number))
    return ranked[:_CLOSEST_SHOWN]


def explain_miss(
    doc: Mapping[str, Any],
    matching: Matching,
    index: Index,
    *,
    cassette: str,
    mode: str,
    exists: bool,
    hint: str,
) -> str:
    """Why no recording answers this request: the request, the closest recordings, a diff, what to do."""
    key = matching.key(doc)
    lines = [
        f"no recorded answer matches this request (cassette {cassette}, record mode {mode}, "
        f"matching on {', '.join(matching.names)}):",
        f"  {describe_request(doc)}",
    ]
    used = index.used_up(key)
    if used:
        lines.append(
            f"this request was recorded {used} time(s), and each recording was replayed already: a call "
            "made more often than when it was recorded is a miss (allow_playback_repeats=True replays the "
            "last recording again)"
        )
    elif not exists:
        lines.append(f"the cassette file does not exist yet: nothing was recorded at {cassette}")
    elif not index.recordings:
        lines.append("the cassette holds no recordings")
    else:
        best = closest(doc, matching, index.recordings)
        lines.append("closest recorded requests:")
        for score, recording in best:
            lines.append(
                f"  #{recording.number} (similarity {score:.2f}): {describe_request(recording.request_doc)}"
            )
        top = best[0][1]
        mine = matching.parts(doc)
        theirs = matching.parts(top.request_doc)
        differ = [name for name in matching.names if canonical(mine[name]) != canonical(theirs[name])]
        same = [name for name in matching.names if name not in differ]
        lines.append(
            f"differences from #{top.number}: {', '.join(differ)}"
            + (f" (same {', '.join(same)})" if same else "")
        )
        diff = list(
            difflib.unified_diff(
                _text_of(top, matching).splitlines(),
                request_text(mine).splitlines(),
                fromfile=f"recorded #{top.number}",
                tofile="this request",
                lineterm="",
                n=2,
            )
        )
        if len(diff) > _DIFF_LINES:
            diff = [*diff[:_DIFF_LINES], f"... ({len(diff) - _DIFF_LINES} more diff lines)"]
        lines.extend(f"  {line}" for line in diff)
    if hint:
        lines.append(hint)
    return "\n".join(lines)
