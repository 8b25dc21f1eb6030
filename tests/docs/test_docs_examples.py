"""Every code example in the README and in docs/ runs, and the pages agree with the code they describe.

A fenced block of a language that can run (python, ini, yaml, motoko, ts) carries, on the line above
its fence, the runner that checks it: `<!-- example: KIND -->`. Kinds:
- `pytest`: a small pytest project (python: lines `# conftest.py` or `# test_name.py` start its files,
  `# test_name.py (run with: pytest ARGS)` gives the arguments; ini: a `pytest.ini` run with one empty
  test). A ```text block right after it is output the run must show (for python: a run that fails,
  with these lines); without one, every test must pass.
- `client`: a program run against a started emulator (its address `127.0.0.1:50051` replaced).
- `rules`: a rules file the emulator loads at start.
- `cassette`: a cassette file that `icllm-emulator cassette check` accepts.
- `canister`: a Motoko block, compiled by `moc`, and the next `canister` python tests of its page, run
  with its module in place of their `"x.wasm"`; `canister uses=PAGE` runs python tests with PAGE's
  first agent. The shell commands that build the canister tutorial's agent are run too.
- `ts`: a TypeScript harness, run with node against the emulator process and the Rust test agent.
- `pic`: a vitest file using @dfinity/pic, run against the PocketIC door with the Motoko test agent.
- `not run: REASON`: shown only (it needs what a test machine lacks); the reason is required.
Shell and text blocks are commands and output, not examples.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from icllm_emulator._proto.icllm.v1 import control_pb2 as cpb
from pytest_icllm import _options
from tests.conftest import Stubs
from tests.pytester_support import INI

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]
RUNNABLE = {"python", "ini", "yaml", "motoko", "ts"}
KINDS = {"pytest", "client", "rules", "cassette", "canister", "ts", "pic", "not run"}
FILE_LINE = re.compile(r"^# (?P<name>[\w/]+\.py)(?: \(run with: pytest (?P<args>[^)]*)\))?$")
DIRECTIVE = re.compile(r"^<!-- example: (?P<kind>not run|[\w-]+)(?P<rest>[^>]*?)\s*-->$")
WASM_LITERAL = re.compile(r'"\w+\.wasm"')


@dataclass(frozen=True)
class Block:
    page: Path
    lang: str
    text: str
    line: int  # of the opening fence, 1-based
    kind: str | None  # the directive's kind
    options: str  # the rest of the directive

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def page_blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    fence: tuple[str, int, list[str], str | None, str] | None = None
    for number, line in enumerate(lines, start=1):
        if line.startswith("```"):
            if fence is None:
                above = next((lines[n] for n in range(number - 2, -1, -1) if lines[n].strip()), "")
                directive = DIRECTIVE.match(above.strip())
                kind = directive["kind"] if directive else None
                rest = directive["rest"].strip(" :") if directive else ""
                fence = (line[3:].strip(), number, [], kind, rest)
            else:
                lang, start, body, kind, rest = fence
                blocks.append(Block(page, lang, "\n".join(body) + "\n", start, kind, rest))
                fence = None
        elif fence is not None:
            fence[2].append(line)
    assert fence is None, f"{page}:{fence[1] if fence else 0}: a code block is never closed"
    return blocks


BLOCKS = [block for page in PAGES for block in page_blocks(page)]


def of_kind(kind: str) -> list[Block]:
    return [block for block in BLOCKS if block.kind == kind]


def ids(blocks: list[Block]) -> list[str]:
    return [block.where for block in blocks]


def test_every_example_has_a_runner() -> None:
    missing = [b.where for b in BLOCKS if b.lang in RUNNABLE and b.kind is None]
    assert not missing, f"code blocks with no `<!-- example: KIND -->` above them: {missing}"
    unknown = [(b.where, b.kind) for b in BLOCKS if b.kind is not None and b.kind not in KINDS]
    assert not unknown, f"unknown example kinds (valid: {sorted(KINDS)}): {unknown}"
    unexplained = [b.where for b in of_kind("not run") if not b.options]
    assert not unexplained, f"`not run` needs a reason: {unexplained}"


# -- pytest projects --------------------------------------------------------------------------------


@dataclass
class Example:
    block: Block
    files: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)


def split_files(block: Block) -> tuple[dict[str, str], list[str]]:
    """A python block's files (by their `# name.py` lines) and the pytest arguments named there."""
    files: dict[str, list[str]] = {}
    args: list[str] = []
    current = f"test_example_{block.line}.py"
    for line in block.text.splitlines():
        if match := FILE_LINE.match(line):
            current = match["name"]
            args += (match["args"] or "").split()
            continue
        files.setdefault(current, []).append(line)
    return {name: "\n".join(body).strip() + "\n" for name, body in files.items()}, args


def pytest_examples() -> list[Example]:
    examples: list[Example] = []
    previous: Block | None = None
    for block in BLOCKS:
        if block.kind == "pytest" and block.lang == "python":
            files, args = split_files(block)
            examples.append(Example(block, files, args))
        elif block.kind == "pytest" and block.lang == "ini":
            examples.append(Example(block, {"pytest.ini": block.text}))
        elif block.lang == "text" and previous is not None and previous.kind == "pytest":
            examples[-1].expected = [line for line in block.text.splitlines() if line.strip()]
        previous = block
    return examples


PYTEST_EXAMPLES = pytest_examples()


def test_there_are_pytest_examples_of_every_kind() -> None:
    kinds = {(e.block.lang, bool(e.expected)) for e in PYTEST_EXAMPLES}
    assert kinds == {("python", False), ("python", True), ("ini", True)}


@pytest.mark.parametrize("example", PYTEST_EXAMPLES, ids=[e.block.where for e in PYTEST_EXAMPLES])
def test_pytest_example_runs(pytester: pytest.Pytester, example: Example) -> None:
    pytester.makeini(INI)
    for name, text in example.files.items():
        path = pytester.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    if example.block.lang == "ini":  # the example's keys, and the strict test project's own
        extra = INI.replace("[pytest]", "").strip()
        pytester.makefile(".ini", pytest=example.files["pytest.ini"].rstrip() + "\n" + extra + "\n")
        pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    result = pytester.runpytest(*example.args)
    outcomes = result.parseoutcomes()
    if example.expected:
        result.stdout.fnmatch_lines(example.expected)
    if example.block.lang == "python" and example.expected:
        assert outcomes.get("failed", 0) + outcomes.get("errors", 0) + outcomes.get("error", 0) == 1
    else:
        assert outcomes.get("passed", 0) >= 1
        assert set(outcomes) <= {"passed"}, result.stdout.str()


# -- programs, rules and cassettes ------------------------------------------------------------------


@pytest.mark.parametrize("block", of_kind("client"), ids=ids(of_kind("client")))
def test_client_example_runs(block: Block, start_emulator: Callable[..., Stubs]) -> None:
    assert '"127.0.0.1:50051"' in block.text, f"{block.where}: a client example names 127.0.0.1:50051"
    target = start_emulator().emulator.ports.grpc_target
    printed: list[str] = []
    code = compile(block.text.replace("127.0.0.1:50051", target), block.where, "exec")
    exec(code, {"print": lambda *values: printed.append(" ".join(map(str, values)))})
    assert printed and all(line.strip() for line in printed), f"{block.where} printed {printed}"


@pytest.mark.parametrize("block", of_kind("rules"), ids=ids(of_kind("rules")))
def test_rules_example_loads(block: Block, tmp_path: Path, start_emulator: Callable[..., Stubs]) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(block.text, encoding="utf-8")
    emu = start_emulator(rules_file=str(rules))
    loaded = emu.control.ListRules(cpb.ListRulesRequest()).rules
    assert len(loaded) == len(yaml.safe_load(block.text)["rules"]), f"{block.where}: not every rule loaded"


@pytest.mark.parametrize("block", of_kind("cassette"), ids=ids(of_kind("cassette")))
def test_cassette_example_is_valid(block: Block, tmp_path: Path) -> None:
    cassette = tmp_path / "example.yaml"
    cassette.write_text(block.text, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "icllm_emulator", "cassette", "check", str(cassette)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"{block.where}: {result.stdout}{result.stderr}"


# -- canisters --------------------------------------------------------------------------------------


def _canister_pairs() -> list[tuple[Block, Block]]:
    """(motoko, python tests) pairs: a `canister` Motoko block and the next `canister` python block of
    its page, or a `canister uses=PAGE` python block and the first such Motoko block of PAGE."""
    pairs = []
    for index, block in enumerate(BLOCKS):
        if block.kind != "canister":
            continue
        if block.lang == "motoko":
            after = (b for b in BLOCKS[index + 1 :] if b.page == block.page and b.kind == "canister")
            tests = next(after, None)
            assert tests is not None and tests.lang == "python", f"{block.where}: no tests follow"
            pairs.append((block, tests))
        elif block.options.startswith("uses="):
            page = DOCS / block.options.removeprefix("uses=")
            motoko = next(b for b in page_blocks(page) if b.lang == "motoko" and b.kind == "canister")
            pairs.append((motoko, block))
    return pairs


CANISTER_PAIRS = _canister_pairs()


@pytest.mark.parametrize(("motoko", "tests"), CANISTER_PAIRS, ids=[t.where for _, t in CANISTER_PAIRS])
def test_canister_example_compiles_and_its_tests_pass(
    pytester: pytest.Pytester, motoko: Block, tests: Block
) -> None:
    from tests.canisters.conftest import BUILD

    try:
        wasm = BUILD.built_motoko(motoko.text)
    except BUILD.BuildError as error:
        pytest.fail(f"{motoko.where}: the Motoko example does not compile: {error}", pytrace=False)
    pytester.makeini(INI)
    files, _ = split_files(tests)
    for name, text in files.items():
        pytester.makepyfile(**{name.removesuffix(".py"): WASM_LITERAL.sub(repr(str(wasm)), text)})
    result = pytester.runpytest()
    result.assert_outcomes(passed=tests.text.count("\ndef test_") + tests.text.startswith("def test_"))


def test_the_canister_tutorials_build_commands_build_its_agent(pytester: pytest.Pytester) -> None:
    """The shell lines that build the tutorial's agent, as a user types them in a fresh folder: the npm
    install (offline here: the project's own npm `motoko`, checked to be the version the line names)
    and `icllm-emulator build-motoko`; then the tutorial's tests pass against the module it wrote."""
    import shlex

    from icllm_emulator.motoko import MOTOKO_VERSION
    from tests.canisters.conftest import BUILD

    page = DOCS / "tutorials" / "canister.md"
    blocks = page_blocks(page)
    (commands,) = [b for b in blocks if b.lang == "sh" and "build-motoko" in b.text]
    agent = next(b for b in blocks if b.lang == "motoko" and b.kind == "canister")
    tests = next(b for b in blocks if b.lang == "python" and b.kind == "canister")
    (pytester.path / "agent.mo").write_text(agent.text, encoding="utf-8")
    lines = [shlex.split(line, comments=True) for line in commands.text.splitlines() if line.strip()]
    assert lines[0] == ["npm", "install", f"motoko@{MOTOKO_VERSION}"], commands.where
    (pytester.path / "node_modules").symlink_to(BUILD.NODE_MODULES)  # what that install makes
    for argv in lines[1:]:
        assert argv[0] == "icllm-emulator", f"{commands.where}: {argv}"
        result = subprocess.run(
            [str(Path(sys.executable).parent / argv[0]), *argv[1:]],
            cwd=pytester.path,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, f"{commands.where}: {shlex.join(argv)}: {result.stderr}"
    wasm = pytester.path / "agent.wasm"
    assert wasm.is_file() and wasm.with_suffix(".did").is_file()
    pytester.makeini(INI)
    files, _ = split_files(tests)
    for name, text in files.items():
        pytester.makepyfile(**{name.removesuffix(".py"): WASM_LITERAL.sub(repr(str(wasm)), text)})
    pytester.runpytest().assert_outcomes(passed=tests.text.count("\ndef test_"))


@pytest.mark.parametrize("block", of_kind("ts"), ids=ids(of_kind("ts")))
def test_typescript_example_runs(block: Block, tmp_path: Path) -> None:
    """A TypeScript example, as written, against the emulator process and the Rust test agent."""
    from tests.canisters.conftest import module_path

    ts = REPO / "tests" / "ts"
    if not (ts / "node_modules").is_dir():
        pytest.fail(f"the TypeScript harness's packages are missing: run `npm ci` in {ts}")
    (tmp_path / "node_modules").symlink_to(ts / "node_modules")
    (tmp_path / "proto").symlink_to(REPO / "proto")
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
    assert result.returncode == 0, f"{block.where}:\n{result.stdout[-3000:]}{result.stderr[-2000:]}"
    assert "# pass 1" in result.stdout


@pytest.mark.parametrize("block", of_kind("pic"), ids=ids(of_kind("pic")))
def test_pic_js_example_runs(block: Block, tmp_path: Path) -> None:
    """A pic-js example, as written, under vitest, with the PocketIC door as pic-js's server binary."""
    from tests.canisters.conftest import module_path

    pic = REPO / "tests" / "pic"
    if not (pic / "node_modules" / "@dfinity" / "pic" / "pocket-ic").exists():
        pytest.fail(f"pic-js is not installed with the launcher: run `make test` (npm ci in {pic})")
    (tmp_path / "node_modules").symlink_to(pic / "node_modules")
    (tmp_path / "agent.wasm").write_bytes(module_path("motoko-agent").read_bytes())
    (tmp_path / "package.json").write_text('{"type": "module"}')
    (tmp_path / "example.test.ts").write_text(block.text)
    result = subprocess.run(
        [str(pic / "node_modules" / ".bin" / "vitest"), "run", "--root", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{block.where}:\n{result.stdout[-3000:]}{result.stderr[-2000:]}"
    assert "1 passed" in result.stdout


def test_the_pocketic_reference_lists_every_route_the_door_serves() -> None:
    """Each PocketIC route of the door is a row of docs/reference/pocketic.md (the /icllm/ ones are in
    docs/reference/http.md)."""
    from icllm_emulator.config import EmulatorConfig
    from icllm_emulator.pocketic.app import create_app
    from icllm_emulator.pocketic.server import PocketIcServer

    page = (DOCS / "reference" / "pocketic.md").read_text(encoding="utf-8")
    icllm = (DOCS / "reference" / "http.md").read_text(encoding="utf-8")
    for route in create_app(PocketIcServer(EmulatorConfig())).routes:
        path = getattr(route, "path", "").replace("{instance_id}", "{id}").replace("{gateway_id}", "{id}")
        if "/icllm/" in path:
            assert f"`{path.split('/icllm')[1]}`" in icllm, path
            continue
        tail = path.removeprefix("/instances/{id}/")
        assert f"{tail}`" in page or f"{path}`" in page, f"{path} is not in docs/reference/pocketic.md"


# -- the pages agree with the code -------------------------------------------------------------------


def test_the_settings_page_states_the_precedence_of_the_resolver() -> None:
    def words(text: str) -> str:
        return " ".join(text.split())

    docstring = _options.__doc__ or ""
    precedence = words(docstring[docstring.index("Precedence") :])
    assert precedence in words((DOCS / "reference" / "fixtures.md").read_text(encoding="utf-8"))


def test_the_readme_stays_short_and_starts_with_the_two_commands() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    first_block = page_blocks(REPO / "README.md")[0]
    assert first_block.text.startswith("make run") and "\nmake test" in first_block.text


def test_the_readme_links_every_page_of_the_site_and_nothing_else() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    pages = {p.relative_to(REPO).as_posix() for p in DOCS.rglob("*.md")}
    links = set(re.findall(r"\]\(([^)#]+)\)", text))
    assert pages - links == set(), "pages the README does not link"
    assert {link for link in links if not (REPO / link).is_file()} == set(), "links to nothing"


def test_the_grpc_table_lists_every_method_of_every_service() -> None:
    from icllm_emulator._proto.icllm.v1 import canister_pb2, canisters_pb2, control_pb2, worker_pb2

    page = (DOCS / "how-to" / "other-languages.md").read_text(encoding="utf-8")
    rows = {
        line.split("|")[1].strip().strip("`"): line.split("|")[2]
        for line in page.splitlines()
        if line.startswith("| `icllm.v1.")
    }
    for module in (canister_pb2, worker_pb2, control_pb2, canisters_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            listed = set(re.findall(r"`(\w+)`", rows[service.full_name]))
            assert {m.name for m in service.methods} <= listed, service.full_name


def test_the_http_reference_lists_every_route_the_app_serves() -> None:
    """Each route `create_app` serves is a row of docs/reference/http.md, and nothing else is."""
    from icllm_emulator.ollama import app

    page = (DOCS / "reference" / "http.md").read_text(encoding="utf-8")
    rows = [line.split("|")[1] for line in page.splitlines() if line.startswith("| `")]
    documented = {path for row in rows for path in re.findall(r" (/[^`]*)`", row)}
    # the routes as create_app declares them (the 501 ones come from UNSUPPORTED_ROUTES)
    source = Path(app.__file__).read_text(encoding="utf-8")
    served = {
        path.replace("{model:path}", "{model}") for path in re.findall(r'Route\("([^"]+)", api\.', source)
    }
    assert served == documented


def test_the_cli_reference_names_every_key_of_the_port_file(tmp_path: Path) -> None:
    import json

    from icllm_emulator.server import Ports, write_port_file

    page = " ".join((DOCS / "reference" / "cli.md").read_text(encoding="utf-8").split())
    (documented,) = re.findall(r"\(JSON `\{([^}]*)\}`", page)
    path = tmp_path / "ports.json"
    write_port_file(path, Ports("127.0.0.1", 50051, 11434, (("agent", "lxzze-o7777-77777-aaaaa-cai"),)))
    written = json.loads(path.read_text(encoding="utf-8"))
    assert [key.strip(' "') for key in documented.split(",")] == list(written)


def test_the_site_keeps_names_whole_in_tables_and_wraps_long_code_lines() -> None:
    """Material breaks code in a table anywhere (`--icllm-strict-rul` / `es`) and scrolls a long code
    line out of sight; the site's stylesheet says otherwise, and mkdocs.yml loads it."""
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text(encoding="utf-8").replace("!!python", "#"))
    (sheet,) = config["extra_css"]
    css = " ".join((DOCS / sheet).read_text(encoding="utf-8").split())
    assert ".md-typeset table:not([class]) code { word-break: normal; overflow-wrap: normal;" in css
    assert ".md-typeset pre > code { white-space: pre-wrap;" in css


def test_the_python_api_page_names_public_objects_whose_every_method_it_shows() -> None:
    """The page's objects by the names a user imports; mkdocstrings leaves out what has no docstring, so
    every public method and property of each class has one."""
    import importlib
    import inspect

    page = (DOCS / "reference" / "python-api.md").read_text(encoding="utf-8")
    names = re.findall(r"^::: ([\w.]+)$", page, re.MULTILINE)
    private = [name for name in names if any(part.startswith("_") for part in name.split("."))]
    assert private == [], "objects named by a private module path"
    undocumented = []
    for name in names:
        module, _, attribute = name.rpartition(".")
        obj = getattr(importlib.import_module(module), attribute)
        members = vars(obj).items() if inspect.isclass(obj) else ()
        for member, value in members:
            shown = member == "__call__" or not member.startswith("_")
            if shown and (callable(value) or isinstance(value, property)) and not inspect.getdoc(value):
                undocumented.append(f"{name}.{member}")
    assert undocumented == []
    assert {"pytest_icllm.Canister", "pytest_icllm.CanisterIC", "icllm_emulator.client.LlmClient"} <= {*names}


def test_the_fixtures_reference_lists_every_fixture_and_every_canister_method() -> None:
    """Where a user looks first: each fixture of the plugin, and each public method and property of what
    `icllm_canister` gives, is named on the fixtures page."""
    from pytest_icllm import Canister, CanisterIC, PendingCall, plugin

    page = (DOCS / "reference" / "fixtures.md").read_text(encoding="utf-8")
    fixtures = [
        name for name, value in vars(plugin).items() if type(value).__name__ == "FixtureFunctionDefinition"
    ]
    missing = [name for name in fixtures if not name.startswith("_") and f"| `{name}` |" not in page]
    assert "icllm_canister" in fixtures
    # how the page writes a member of each: `icllm_canister.settle(`, `canister.update(`, `done()`
    written = {CanisterIC: "`icllm_canister.{}", Canister: "`canister.{}", PendingCall: "`{}("}
    for cls, form in written.items():
        for member, value in vars(cls).items():
            public = not member.startswith("_") and member != "read"  # read: Canister's way onto the loop
            if (
                public
                and (callable(value) or isinstance(value, property))
                and form.format(member) not in page
            ):
                missing.append(f"{cls.__name__}.{member}")
    assert missing == []
