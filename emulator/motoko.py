"""Compile a Motoko canister for a test, without dfx: npm `motoko` (the Motoko compiler built for
JavaScript, with `mo:core` bundled), run by node, offline once installed.

    npm install motoko@4.10.0                              # once, in your project (or -g)
    icllm-emulator build-motoko agent.mo -o agent.wasm     # writes agent.wasm and agent.did

or, from Python (a session fixture, say), `compile_motoko("agent.mo")`, which compiles again only when
a `.mo` file beside the source is newer than the module. The compiler is looked for as node looks for a
package: `node_modules/motoko` in the working directory or a folder above it, then npm's global folder;
`$ICLLM_MOTOKO` names its folder outright. Without node or the package, `MotokoError` says how to get
them, and the other ways to build: `moc` with `--package core`, mops, or a dfx or icp-cli project.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from icllm_emulator.errors import IcllmError

# The version this project compiles its own test canisters with (fixtures/canisters/package.json).
MOTOKO_VERSION = "4.10.0"
MOTOKO_ENV = "ICLLM_MOTOKO"
PERSISTENCE = ("enhanced", "classical")
_SCRIPT = Path(__file__).with_name("motoko_build.cjs")
_NOT_SEARCHED = {"node_modules", ".mops", ".dfx", ".icp", ".git", "target"}
HOW_TO_GET_IT = (
    f"install it with `npm install motoko@{MOTOKO_VERSION}` in your project (or with -g), or set "
    f"{MOTOKO_ENV} to its folder; or build with the tools you have: `moc --package core PATH/TO/core/src "
    "agent.mo -o agent.wasm` (mops: `moc $(mops sources) agent.mo -o agent.wasm`), or `dfx build` / "
    "`icp build` in a dfx or icp-cli project"
)


class MotokoError(IcllmError, RuntimeError):
    """A Motoko source that could not be compiled: the compiler is missing, or the source is wrong."""


def find_compiler(start: Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """The folder of npm `motoko`: `$ICLLM_MOTOKO`, else node_modules/motoko in `start` (the working
    directory) or a folder above it, else in npm's global folder."""
    environ = os.environ if environ is None else environ
    if environ.get(MOTOKO_ENV):
        given = Path(environ[MOTOKO_ENV])
        if not (given / "package.json").is_file():
            raise MotokoError(f"{MOTOKO_ENV}={given} is not the folder of npm `motoko` (no package.json)")
        return given
    folder = (start or Path.cwd()).resolve()
    for parent in (folder, *folder.parents):
        if (parent / "node_modules" / "motoko" / "package.json").is_file():
            return parent / "node_modules" / "motoko"
    try:
        npm_root = subprocess.run(["npm", "root", "-g"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        npm_root = ""
    if npm_root.strip() and (Path(npm_root.strip()) / "motoko" / "package.json").is_file():
        return Path(npm_root.strip()) / "motoko"
    raise MotokoError(
        f"npm `motoko` is not installed (looked in node_modules from {folder} up): {HOW_TO_GET_IT}"
    )


def compile_motoko(
    source: str | Path,
    out: str | Path | None = None,
    *,
    persistence: str = "enhanced",
    rebuild: bool = False,
    environ: Mapping[str, str] | None = None,
) -> Path:
    """Compile the actor in `source` to `out` (default: the source's name with .wasm) and its Candid
    interface beside it (.did); return the module's path.

    The `.mo` files beside the source (and below) are the actor's imports; `mo:core` is bundled. Unless
    `rebuild`, a module newer than every one of those files is kept as it is. `persistence`: enhanced
    (the default of current Motoko, a 64-bit module) or classical (32-bit).
    """
    main = Path(source)
    if not main.is_file():
        raise MotokoError(
            f"no Motoko source at {main} (that is {main.absolute()}): give the path of the actor's .mo file"
        )
    if persistence not in PERSISTENCE:
        raise MotokoError(
            f"persistence {persistence!r} is not valid; choose one of: {', '.join(PERSISTENCE)}"
        )
    target = main.with_suffix(".wasm") if out is None else Path(out)
    if not rebuild and target.is_file() and target.with_suffix(".did").is_file():
        built = target.stat().st_mtime
        if all(path.stat().st_mtime <= built for path in _sources(main.parent)):
            return target
    compiler = find_compiler(environ=environ)
    command = ["node", str(_SCRIPT), str(compiler), str(main), str(target), persistence]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise MotokoError(f"node is not installed (npm `motoko` runs on it): {HOW_TO_GET_IT}") from None
    if result.returncode != 0:
        raise MotokoError(f"{main} does not compile:\n{(result.stderr or result.stdout).strip()[-3000:]}")
    return target


def _sources(folder: Path) -> list[Path]:
    found = []
    for path in folder.rglob("*.mo"):
        if not _NOT_SEARCHED & set(path.relative_to(folder).parts):
            found.append(path)
    return found


# -- the `icllm-emulator build-motoko` command ------------------------------------------------------


def add_command(commands: Any) -> None:
    text = "compile a Motoko actor to a canister module (.wasm and .did) with npm `motoko`, no dfx needed"
    command = commands.add_parser("build-motoko", help=text, description=f"{text}; {HOW_TO_GET_IT}.")
    command.add_argument(
        "source", metavar="SOURCE.mo", help="the actor's file; .mo files beside it are its imports"
    )
    command.add_argument("-o", "--output", metavar="OUT.wasm", help="the module (default: SOURCE.wasm)")
    command.add_argument("--persistence", choices=PERSISTENCE, default="enhanced", help="default: enhanced")


def run_command(args: argparse.Namespace) -> int:
    try:
        wasm = compile_motoko(args.source, args.output, persistence=args.persistence, rebuild=True)
    except MotokoError as error:
        print(f"icllm-emulator build-motoko: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {wasm} and {wasm.with_suffix('.did')}")
    return 0
