"""Every example in the README runs, and the README's tables agree with the code they describe.

Examples are read from the README's fenced blocks, section by section:
- a ```python block under "Testing with pytest" is a small pytest project: lines `# conftest.py` or
  `# test_name.py` start its files, and `# test_name.py (run with: pytest ARGS)` gives the arguments;
- a ```ini block there is a `pytest.ini`, run with one empty test;
- a ```text block right after either is output the run must show (for a python block: a run that
  fails, with these lines); without one, every test of the example must pass.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from icllm_emulator._proto.icllm.v1 import control_pb2 as cpb
from pytest_icllm import _options
from tests.conftest import Stubs, user_request
from tests.pytester_support import INI

README = Path(__file__).resolve().parent.parent / "README.md"
FILE_LINE = re.compile(r"^# (?P<name>[\w/]+\.py)(?: \(run with: pytest (?P<args>[^)]*)\))?$")


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int  # of the opening fence, 1-based


@dataclass
class Example:
    kind: str  # "python" or "ini"
    line: int
    files: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)


def section_blocks(heading: str) -> list[Block]:
    """The fenced blocks under `## heading`, up to the next `## ` heading."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index(f"## {heading}")
    blocks: list[Block] = []
    fence: tuple[str, int, list[str]] | None = None
    for number, line in enumerate(lines[start + 1 :], start=start + 2):
        if fence is None and line.startswith("## "):
            break
        if line.startswith("```"):
            if fence is None:
                fence = (line[3:].strip(), number, [])
            else:
                blocks.append(Block(fence[0], "\n".join(fence[2]) + "\n", fence[1]))
                fence = None
        elif fence is not None:
            fence[2].append(line)
    assert fence is None, f"README.md:{fence[1]}: a code block is never closed" if fence else ""
    return blocks


def split_files(block: Block) -> tuple[dict[str, str], list[str]]:
    """A python block's files (by their `# name.py` lines) and the pytest arguments named there."""
    files: dict[str, list[str]] = {}
    args: list[str] = []
    current = f"test_readme_{block.line}.py"
    for line in block.text.splitlines():
        if match := FILE_LINE.match(line):
            current = match["name"]
            args += (match["args"] or "").split()
            continue
        files.setdefault(current, []).append(line)
    return {name: "\n".join(body).strip() + "\n" for name, body in files.items()}, args


def pytest_examples(heading: str) -> list[Example]:
    examples: list[Example] = []
    for block in section_blocks(heading):
        if block.lang == "python":
            files, args = split_files(block)
            examples.append(Example("python", block.line, files, args))
        elif block.lang == "ini":
            examples.append(Example("ini", block.line, {"pytest.ini": block.text}))
        elif block.lang == "text":
            assert examples and not examples[-1].expected, f"README.md:{block.line}: output of what?"
            examples[-1].expected = [line for line in block.text.splitlines() if line.strip()]
        else:
            raise AssertionError(f"README.md:{block.line}: no runner for ```{block.lang} blocks")
    return examples


PLUGIN_EXAMPLES = pytest_examples("Testing with pytest")


def test_the_pytest_section_has_examples_of_every_kind() -> None:
    kinds = {(e.kind, bool(e.expected)) for e in PLUGIN_EXAMPLES}
    assert kinds == {("python", False), ("python", True), ("ini", True)}


@pytest.mark.parametrize("example", PLUGIN_EXAMPLES, ids=[f"README.md:{e.line}" for e in PLUGIN_EXAMPLES])
def test_pytest_section_example_runs(pytester: pytest.Pytester, example: Example) -> None:
    pytester.makeini(INI)
    for name, text in example.files.items():
        path = pytester.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    if example.kind == "ini":  # the example's keys, and the strict test project's own
        extra = INI.replace("[pytest]", "").strip()
        pytester.makefile(".ini", pytest=example.files["pytest.ini"].rstrip() + "\n" + extra + "\n")
        pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result = pytester.runpytest(*example.args)
    outcomes = result.parseoutcomes()
    if example.expected:
        result.stdout.fnmatch_lines(example.expected)
    if example.kind == "python" and example.expected:
        assert outcomes.get("failed", 0) + outcomes.get("errors", 0) + outcomes.get("error", 0) == 1
    else:
        assert outcomes.get("passed", 0) >= 1
        assert set(outcomes) <= {"passed"}, result.stdout.str()


def test_calling_the_emulator_from_python_example_runs(start_emulator: Callable[..., Stubs]) -> None:
    (block,) = [b for b in section_blocks("Calling the emulator from Python") if b.lang == "python"]
    assert block.text.count('"127.0.0.1:50051"') == 1
    target = start_emulator().emulator.ports.grpc_target
    printed: list[str] = []

    def collect(*values: object) -> None:
        printed.append(" ".join(map(str, values)))

    code = compile(block.text.replace("127.0.0.1:50051", target), f"README.md:{block.line}", "exec")
    exec(code, {"print": collect})
    answer, final, reject = printed
    assert answer.strip() and final.strip()
    assert reject.startswith("CANISTER_REJECT unknown model 'gpt-5': this LLM canister serves llama3.1:8b")


def test_candid_door_example_runs(start_emulator: Callable[..., Stubs]) -> None:
    (block,) = [b for b in section_blocks("The Candid door") if b.lang == "python"]
    target = start_emulator().emulator.ports.grpc_target
    printed: list[str] = []
    code = compile(block.text.replace("127.0.0.1:50051", target), f"README.md:{block.line}", "exec")
    exec(code, {"print": lambda *values: printed.append(" ".join(map(str, values)))})
    (content,) = printed
    assert content.strip()


def test_scripted_rules_example_loads_and_answers(
    tmp_path: Path, start_emulator: Callable[..., Stubs]
) -> None:
    (block,) = [b for b in section_blocks("Scripted rules") if b.lang == "yaml"]
    rules = tmp_path / "rules.yaml"
    rules.write_text(block.text, encoding="utf-8")
    emu = start_emulator(rules_file=str(rules))
    speed = emu.canister.V1Chat(user_request("What is the speed of light?"))
    assert speed.message.content == "299,792,458 m/s"
    assert [state.rule.id for state in emu.control.ListRules(cpb.ListRulesRequest()).rules] == [
        f"rule-{n}" for n in range(1, 5)
    ]


# -- the README's tables and statements agree with the code ----------------------------------------


def test_readme_states_the_precedence_of_the_resolver() -> None:
    def words(text: str) -> str:
        return " ".join(text.split())

    docstring = _options.__doc__ or ""
    precedence = words(docstring[docstring.index("Precedence") :])
    assert precedence in words(README.read_text(encoding="utf-8"))


def test_your_canister_examples_compile_and_their_tests_pass(pytester: pytest.Pytester) -> None:
    """Each ```motoko block is compiled; the ```python block after it tests it (its `WASM = "x.wasm"`)."""
    from tests.canisters.conftest import BUILD

    blocks = [b for b in section_blocks("Your canister in the test") if b.lang in ("motoko", "python")]
    assert [b.lang for b in blocks] == ["motoko", "python", "motoko", "python"]
    pytester.makeini(INI)
    expected = 0
    for motoko, tests in zip(blocks[::2], blocks[1::2], strict=True):
        try:
            wasm = BUILD.built_motoko(motoko.text)
        except BUILD.BuildError as error:
            pytest.fail(
                f"README.md:{motoko.line}: the Motoko example does not compile: {error}", pytrace=False
            )
        (placeholder,) = re.findall(r'^WASM = ("\w+\.wasm")$', tests.text, re.MULTILINE)
        files, _ = split_files(tests)
        for name, text in files.items():
            pytester.makepyfile(**{name.removesuffix(".py"): text.replace(placeholder, repr(str(wasm)))})
        expected += tests.text.count("\ndef test_")
    result = pytester.runpytest()
    result.assert_outcomes(passed=expected)


def test_canisters_from_any_language_example_runs(tmp_path: Path) -> None:
    """The TypeScript example, as written, against the emulator process and the Rust test agent."""
    import os
    import subprocess
    import sys

    from tests.canisters.conftest import module_path

    (block,) = [b for b in section_blocks("Canisters from any language") if b.lang == "ts"]
    ts = README.parent / "tests" / "ts"
    if not (ts / "node_modules").is_dir():
        pytest.fail(f"the TypeScript harness's packages are missing: run `npm ci` in {ts}")
    (tmp_path / "node_modules").symlink_to(ts / "node_modules")
    (tmp_path / "proto").symlink_to(README.parent / "proto")
    (tmp_path / "agent.wasm").write_bytes(module_path("rust-agent").read_bytes())
    (tmp_path / "package.json").write_text('{"type": "module"}')
    (tmp_path / "example.test.ts").write_text(block.text)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["node", "--import", "tsx", "--test", "example.test.ts"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"README.md:{block.line}:\n{result.stdout[-3000:]}{result.stderr[-2000:]}"
    assert "# pass 1" in result.stdout


def test_readme_grpc_table_lists_every_method_of_every_service() -> None:
    from icllm_emulator._proto.icllm.v1 import canister_pb2, canisters_pb2, control_pb2, worker_pb2

    rows = {
        line.split("|")[1].strip().strip("`"): line.split("|")[2]
        for line in README.read_text(encoding="utf-8").splitlines()
        if line.startswith("| `icllm.v1.")
    }
    for module in (canister_pb2, worker_pb2, control_pb2, canisters_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            listed = set(re.findall(r"`(\w+)`", rows[service.full_name]))
            assert {m.name for m in service.methods} <= listed, service.full_name
