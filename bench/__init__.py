"""Benchmarks: each compares the emulator with a baseline measured in the same run.

Run from the project root with ``python -m bench [NAME]`` (or ``make bench``); ``NAME --help`` lists
a benchmark's flags.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_figures(path: Path, document: dict[str, Any]) -> None:
    """A benchmark's figures as JSON at `path` (`--json`), for comparing runs by script."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"figures written to {path}")
