"""The built wheel installs beside a user project that has its own top-level `emulator` package."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", str(REPO), "-w", str(out)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("pytest_icllm-*.whl")
    return built


def test_the_wheel_installs_no_module_named_emulator(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"icllm_emulator", "pytest_icllm"}
    assert "icllm_emulator/_proto/icllm/v1/canister.proto" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "icllm-emulator = icllm_emulator.cli:main" in text and "icllm = pytest_icllm.plugin" in text
    assert "icllm-emulator-pocket-ic = icllm_emulator.pocketic.serve:launcher" in text
    assert "icllm_emulator/pocketic/app.py" in names


def test_a_project_with_its_own_emulator_package_runs_its_tests_and_the_plugins(
    wheel: Path, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    project = tmp_path / "project"
    (project / "emulator").mkdir(parents=True)
    (project / "emulator" / "__init__.py").write_text('NAME = "the project\'s own emulator"\n')
    (project / "tests").mkdir()
    (project / "tests" / "test_app.py").write_text(
        textwrap.dedent(
            """
            import icllm_emulator
            import emulator
            from icllm_emulator.client import user


            def test_own_package():
                assert emulator.NAME == "the project's own emulator"


            def test_plugin(icllm, icllm_client):
                assert icllm_emulator.__file__.startswith({site!r})
                icllm.on(contains="Hi").reply("Hello from the emulator")
                assert icllm_client.prompt("llama3.1:8b", "Hi") == "Hello from the emulator"
            """
        ).format(site=str(site))
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(project)])}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
