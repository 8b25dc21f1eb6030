"""pytest-icllm: test code that calls the Internet Computer's LLM canister against a local emulator.

The fixtures live in `pytest_icllm.plugin` (registered through the `pytest11` entry point); this root
exports what a test may name in type hints and `except` clauses.
"""

from importlib.metadata import version

from emulator.client import EmulatorError, LlmReject
from pytest_icllm._controller import IcllmController

__version__ = version("pytest-icllm")
__all__ = ["EmulatorError", "IcllmController", "LlmReject", "__version__"]
