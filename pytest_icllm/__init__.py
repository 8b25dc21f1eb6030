"""pytest-icllm: test code that calls the Internet Computer's LLM canister against a local emulator."""

from importlib.metadata import version

__version__ = version("pytest-icllm")
__all__ = ["__version__"]
