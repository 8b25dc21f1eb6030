"""`icllm-emulator build-motoko` and `compile_motoko`: a Motoko actor to a module, with npm `motoko`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from icllm_emulator.motoko import MOTOKO_ENV, MOTOKO_VERSION, MotokoError, compile_motoko
from pytest_icllm._canisters import CanisterIC

NPM_MOTOKO = Path(__file__).resolve().parents[2] / "fixtures" / "canisters" / "node_modules" / "motoko"
COMPILER = {MOTOKO_ENV: str(NPM_MOTOKO)}

TYPES = 'module { public func greeting(name : Text) : Text { "Hello, " # name # "!" } };\n'
ACTOR = """import Types "lib/types";
import Text "mo:core/Text";

persistent actor {
  public query func greet(name : Text) : async Text { Types.greeting(Text.trim(name, #char ' ')) };
};
"""


@pytest.fixture(scope="module")
def compiler() -> Path:
    if not (NPM_MOTOKO / "package.json").is_file():
        pytest.fail(f"npm `motoko` is missing: run `npm ci` in {NPM_MOTOKO.parents[1]}", pytrace=False)
    return NPM_MOTOKO


def test_an_actor_and_its_local_imports_compile_and_run(
    compiler: Path, tmp_path: Path, icllm_canister: CanisterIC
) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "types.mo").write_text(TYPES)
    (tmp_path / "main.mo").write_text(ACTOR)
    wasm = compile_motoko(tmp_path / "main.mo", environ=COMPILER)
    assert (
        wasm == tmp_path / "main.wasm"
        and "greet: (name: text) -> (text) query" in (tmp_path / "main.did").read_text()
    )
    assert icllm_canister(wasm).query("greet", " Ada ") == "Hello, Ada!"
    # Nothing changed: the module is kept as it is; an import changed: it is compiled again.
    built = wasm.stat().st_mtime_ns
    assert compile_motoko(tmp_path / "main.mo", environ=COMPILER) == wasm
    assert wasm.stat().st_mtime_ns == built
    (tmp_path / "lib" / "types.mo").write_text(TYPES.replace("Hello", "Hi"))
    os.utime(tmp_path / "lib" / "types.mo", ns=(built + 10**9, built + 10**9))
    assert (
        icllm_canister(compile_motoko(tmp_path / "main.mo", environ=COMPILER)).query("greet", "Ada")
        == "Hi, Ada!"
    )


def test_a_source_that_does_not_compile_names_its_file_and_line(compiler: Path, tmp_path: Path) -> None:
    (tmp_path / "main.mo").write_text('persistent actor {\n  public func f() : async Nat { "text" };\n};\n')
    with pytest.raises(MotokoError, match=r"main\.mo does not compile:\n.*main\.mo:2: .*") as error:
        compile_motoko(tmp_path / "main.mo", environ=COMPILER)
    assert "Nat" in str(error.value) and "Text" in str(error.value)


def test_without_npm_motoko_the_command_exits_2_saying_how_to_get_it(tmp_path: Path) -> None:
    (tmp_path / "agent.mo").write_text("persistent actor {};\n")
    env = {k: v for k, v in os.environ.items() if k != MOTOKO_ENV}
    env["npm_config_prefix"] = str(tmp_path / "npm-global")  # an npm global folder without motoko
    result = subprocess.run(
        [sys.executable, "-m", "icllm_emulator", "build-motoko", "agent.mo", "-o", "agent.wasm"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert f"npm install motoko@{MOTOKO_VERSION}" in result.stderr
    assert "moc --package core" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "agent.wasm").exists()


def test_a_missing_source_is_named_with_where_it_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(MotokoError, match=r"^no Motoko source at agnt\.mo \(that is /"):
        compile_motoko("agnt.mo")


def test_the_version_to_install_is_the_one_this_project_tests_with() -> None:
    import json

    package = json.loads((NPM_MOTOKO.parents[1] / "package.json").read_text())
    assert package["dependencies"]["motoko"] == MOTOKO_VERSION
