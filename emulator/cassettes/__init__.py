"""Cassettes: recorded (request -> answer or reject) interactions, replayed instead of a live backend.

- `settings`: record modes and the settings of a cassette (light: `icllm_emulator.config` imports it);
- `format`: the YAML file format, version 1, read with safe loading only and written atomically;
- `matching`: canonical request keys, the O(1) index, and the explanation of a miss;
- `scrub`: the filter steps that replace principals, API keys and user patterns before a write;
- `store`: one cassette in use, in a record mode, put in front of a backend by the deck;
- `deck`: the cassette deck every backend answers through (`--backend replay`: the deck alone);
- `commands`: `icllm-emulator cassette ls|show|check`.
"""
