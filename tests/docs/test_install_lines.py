"""Every line of the docs that installs pytest-icllm works as written, on a machine that has only the clone.

The package is not on PyPI: a line installs the clone by path (with an extra, or not) or the wheel that
`make dist` builds. Each line found in the README, the docs and the llama backend's install hint is run
against a copy of this clone (its files as git knows them), into a new virtual environment, by the
same pip; `--no-deps` is added so that no dependency is downloaded (the test checks the extra a line
names instead), and `/path/to/pytest-icllm` stands for the copy. Then a small test project runs in that
environment, with the dependencies of the development environment beside it, and uses the plugin as
installed, not this checkout.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from icllm_emulator.backends import LLAMA_INSTALL_HINT

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
CLONE = "/path/to/pytest-icllm"
# `pip install ...` of pytest-icllm, with environment variables before it and options after it.
INSTALL_LINE = re.compile(r"""(?:\w+="[^"]*" )*pip install(?: --[\w-]+)* (?:'[^']+'|[^\s`'),;]+)""")
PIP_TIMEOUT = 300


def install_lines() -> dict[str, list[str]]:
    """Each distinct install line of pytest-icllm, and where it is shown."""
    texts = {page.relative_to(REPO).as_posix(): page.read_text(encoding="utf-8") for page in PAGES}
    texts["the llama backend's install hint"] = LLAMA_INSTALL_HINT
    found: dict[str, list[str]] = {}
    for where, text in texts.items():
        for line in INSTALL_LINE.findall(" ".join(text.split())):
            if "pytest-icllm" in line or "pytest_icllm" in line:
                found.setdefault(line, []).append(where)
    return found


LINES = install_lines()


def test_the_docs_show_install_lines_of_every_kind() -> None:
    targets = {shlex.split(line)[-1] for line in LINES}
    assert CLONE in targets and f"{CLONE}[llama]" in targets
    assert any(target.endswith(".whl") for target in targets), targets
    assert not {t for t in targets if not t.startswith(CLONE)}, "a line installs from elsewhere (PyPI?)"


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the clone (the files git knows, as they are now), and its wheel from `make dist`."""
    copy = tmp_path_factory.mktemp("clone") / "pytest-icllm"
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    for name in filter(None, files.decode().split("\0")):
        if (REPO / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name)
    recipe = re.search(r"^dist: .*\n\t\$\(BIN\)/(.*)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert recipe, "the Makefile's dist recipe"
    assert recipe[1] == "pip wheel --quiet --no-deps . -w dist", recipe[1]
    pip([*shlex.split(recipe[1])[1:]], cwd=copy)
    return copy


def pip(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pip", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT,
    )
    assert result.returncode == 0, f"pip {shlex.join(args)}:\n{result.stdout[-2000:]}{result.stderr[-3000:]}"


@pytest.mark.parametrize("line", list(LINES), ids=list(LINES))
def test_an_install_line_installs_a_working_plugin(line: str, clone: Path, tmp_path: Path) -> None:
    words = shlex.split(line)
    env = dict(word.split("=", 1) for word in words[: words.index("pip")])
    options, target = words[words.index("install") + 1 : -1], words[-1].replace(CLONE, str(clone), 1)
    path, _, extras = target.partition("[")
    assert Path(path).exists(), f"{line} (shown in {LINES[line]}): {path} does not exist after `make dist`"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    pip(["--python", str(python), "install", "--quiet", "--no-deps", *options, target], cwd=tmp_path, env=env)

    # The dependencies are those of this environment (a path entry: its .pth files, among them this
    # checkout's editable install, are not run, so pytest_icllm is the installed one).
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    project = tmp_path / "project"
    project.mkdir()
    named = [extra.strip() for extra in extras.rstrip("]").split(",") if extra.strip()]
    (project / "test_installed.py").write_text(
        "import importlib.metadata, pytest_icllm\n\n"
        "def test_the_installed_plugin_answers(icllm, icllm_client):\n"
        f"    assert pytest_icllm.__file__.startswith({str(venv)!r})\n"
        f"    extras = importlib.metadata.metadata('pytest-icllm').get_all('Provides-Extra')\n"
        f"    assert set({named!r}) <= set(extras)\n"
        "    import icllm_emulator.motoko as motoko  # build-motoko's script is installed beside it\n"
        f"    assert motoko._SCRIPT.is_file() and str(motoko._SCRIPT).startswith({str(venv)!r})\n"
        "    icllm.on(contains='hi').reply('installed')\n"
        "    assert icllm_client.prompt('llama3.1:8b', 'hi') == 'installed'\n"
    )
    result = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        env={k: v for k, v in os.environ.items() if not k.startswith(("ICLLM_", "PYTEST_"))},
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT,
    )
    assert result.returncode == 0, f"{line}:\n{result.stdout[-3000:]}{result.stderr[-2000:]}"
    assert "1 passed" in result.stdout
