"""A drop-in for PocketIC's server: its REST API over the canister runtime, the LLM canister inside.

Each PocketIC instance is a fresh IC (`instance.PocketInstance`) whose canisters reach the LLM canister
at its mainnet id, answered by the engine; `app` serves the REST API and, under `/icllm/`, the LLM
canister's control plane per instance; `serve` runs it as PocketIC's clients start their server binary.
"""
