"""The Ollama-compatible HTTP door: Ollama's native API and its OpenAI-compatible routes.

A locally deployed LLM canister (dfx, icp-cli, PocketIC in live mode) calls Ollama on
`localhost:11434`; pointed at the emulator instead, its prompts go through the same canister core,
queue, rules and history as gRPC calls. The app lives in `icllm_emulator.ollama.app`, the wire
translation in `icllm_emulator.chat_json`, the uvicorn wiring in `icllm_emulator.ollama.serve`.
"""

from __future__ import annotations

from icllm_emulator.ollama.env import ollama_env

__all__ = ["ollama_env"]
