"""`icllm-emulator cassette ls|show|check PATH...`: list, pretty-print and validate cassette files.

A path is a cassette file or a folder searched for `*.yaml` / `*.yml` (hidden files and folders, such
as the temporary files of an interrupted write, are passed over). The exit code is 0 when every
cassette is sound, 1 when one is broken (each broken file is named with what is wrong), 2 when a path
does not exist.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, TextIO

from icllm_emulator.cassettes.format import (
    CassetteError,
    CassetteFile,
    Interaction,
    cassette_files,
    load_cassette,
)
from icllm_emulator.cassettes.matching import canonical
from icllm_emulator.domain import Answer, AssistantMessage, Message, Reject, ToolCall, ToolMessage

OK, BROKEN, MISSING = 0, 1, 2


def add_cassette_commands(commands: Any) -> None:
    """The `cassette` command and its three actions, on the CLI's subparsers."""
    cassette = commands.add_parser("cassette", help="list, show and check cassette files")
    actions = cassette.add_subparsers(dest="action", required=True, metavar="{ls,show,check}")
    for name, text in (
        ("ls", "list cassettes: interactions, models, when and from what they were recorded"),
        ("show", "print every interaction of cassettes, readably"),
        ("check", "validate cassettes: version, schema, keys given twice, duplicate interactions"),
    ):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("paths", nargs="+", metavar="PATH", help="a cassette file, or a folder of them")


def run_cassette_command(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    files: list[Path] = []
    status = OK
    for given in args.paths:
        path = Path(given)
        if not path.exists():
            print(f"icllm-emulator cassette: error: {given}: no such file or folder", file=sys.stderr)
            status = MISSING
            continue
        found = cassette_files(path)
        if not found:
            print(f"{given}: no cassettes (no .yaml or .yml files)", file=out)
        files.extend(found)
    for path in files:
        strict = args.action == "check"
        try:
            cassette = load_cassette(path, strict_keys=strict)
        except CassetteError as error:
            print(f"BROKEN {error}", file=out)
            status = max(status, BROKEN)
            continue
        if args.action == "ls":
            print(_summary(cassette), file=out)
        elif args.action == "show":
            _show(cassette, out)
        else:
            for warning in _warnings(cassette):
                print(f"warning {path}: {warning}", file=out)
            print(f"ok {path}: {len(cassette.interactions)} interaction(s), format version 1", file=out)
    if args.action == "check":
        for given in args.paths:
            for leftover in _leftovers(Path(given)):
                print(f"warning {leftover}: a temporary file of an interrupted write; delete it", file=out)
    return status


def _summary(cassette: CassetteFile) -> str:
    interactions = cassette.interactions
    models = sorted({interaction.request.model for interaction in interactions})
    backends = sorted({str(i.recorded.get("backend")) for i in interactions if i.recorded.get("backend")})
    times = sorted(str(i.recorded["at"]) for i in interactions if i.recorded.get("at"))
    rejects = sum(isinstance(i.outcome, Reject) for i in interactions)
    parts = [f"{len(interactions)} interaction(s)"]
    if rejects:
        parts.append(f"{rejects} reject(s)")
    if models:
        parts.append(f"models {', '.join(models)}")
    if backends:
        parts.append(f"from {', '.join(backends)}")
    if times:
        parts.append(f"recorded {times[0]}" + (f" to {times[-1]}" if times[-1] != times[0] else ""))
    return f"{cassette.path}: " + ", ".join(parts)


def _indent(text: str, prefix: str) -> str:
    lines = text.splitlines() or [""]
    return "\n".join([lines[0], *(prefix + line if line else "" for line in lines[1:])])


def _call(call: ToolCall) -> str:
    arguments = ", ".join(f"{a.name}={a.value!r}" for a in call.function.arguments)
    return f"{call.id}: {call.function.name}({arguments})"


def _message(message: Message) -> list[str]:
    role = message.role.value
    if isinstance(message, AssistantMessage):
        lines = [] if message.content is None else [f"    {role}: {_indent(message.content, '      ')}"]
        lines.extend(f"    {role} calls {_call(call)}" for call in message.tool_calls)
        return lines
    if isinstance(message, ToolMessage):
        return [f"    tool ({message.tool_call_id}): {_indent(message.content, '      ')}"]
    return [f"    {role}: {_indent(message.content, '      ')}"]


def _show_one(number: int, interaction: Interaction) -> list[str]:
    request = interaction.request
    recorded = interaction.recorded
    origin = ", ".join(f"{key} {value}" for key, value in recorded.items() if key != "model")
    lines = [f"#{number} {request.api.value} {request.model!r}" + (f"  ({origin})" if origin else "")]
    for message in request.messages:
        lines.extend(_message(message))
    for tool in request.tools:
        params = tool.parameters.properties if tool.parameters is not None else ()
        declared = ", ".join(f"{p.name}: {'|'.join(p.enum) if p.enum else p.type}" for p in params)
        lines.append(f"    offers {tool.name}({declared})")
    outcome = interaction.outcome
    if isinstance(outcome, Reject):
        lines.append(
            f"  -> reject {outcome.code.name} ({int(outcome.code)}): {_indent(outcome.message, '     ')}"
        )
    else:
        assert isinstance(outcome, Answer)
        size = f"{outcome.output_tokens} tokens" + (", truncated" if outcome.truncated else "")
        if outcome.message.content is not None:
            lines.append(f"  -> answer ({size}): {_indent(outcome.message.content, '     ')}")
        for call in outcome.message.tool_calls:
            lines.append(f"  -> tool call {_call(call)}")
        if outcome.message.content is None and not outcome.message.tool_calls:
            lines.append(f"  -> answer ({size}) with no content")
    return lines


def _show(cassette: CassetteFile, out: TextIO) -> None:
    print(f"== {_summary(cassette)}", file=out)
    for number, interaction in enumerate(cassette.interactions, start=1):
        print("\n".join(_show_one(number, interaction)), file=out)


def _warnings(cassette: CassetteFile) -> list[str]:
    """Interactions that are the same request with the same outcome: only the first can be told apart."""
    seen: dict[str, list[int]] = defaultdict(list)
    for number, interaction in enumerate(cassette.interactions, start=1):
        doc = {key: value for key, value in interaction.doc.items() if key != "recorded"}
        seen[canonical(doc)].append(number)
    return [
        f"interactions {', '.join(f'#{n}' for n in numbers)} are the same request with the same outcome "
        "(duplicates: each is replayed in turn, so they are harmless but redundant)"
        for numbers in seen.values()
        if len(numbers) > 1
    ]


def _leftovers(root: Path) -> list[Path]:
    if root.is_file():
        root = root.parent
    if not root.is_dir():
        return []
    return sorted(path for path in root.rglob(".*.tmp") if path.is_file())
