"""The emulator's configuration: one frozen value that describes a running emulator.

The settings themselves (names, parsers, defaults, help) are declared in `settings.py`;
`config_from_settings` turns checked settings into this value, and the Control service replaces it
with an edited copy.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import re
from collections import ChainMap
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from icllm_emulator.billing import DEFAULT_PRICES, Price
from icllm_emulator.cassettes.settings import CassetteSettings, CassetteSettingsError, RecordMode
from icllm_emulator.clock import ClockKind
from icllm_emulator.domain import Limits, ToolPolicy
from icllm_emulator.settings import (
    DEFAULT_MODELS,
    INTERFACE_VERSIONS,
    PER_TEST_CASSETTE,
    PROFILES,
    SERVE,
    BackendKind,
    SettingError,
    UnknownModels,
    defaults,
)
from icllm_emulator.upstream import UpstreamError, UpstreamSettings

ANONYMOUS_PRINCIPAL = "2vxsx-fae"
# A textual principal: base32 groups of five separated by dashes (the last group may be shorter).
_PRINCIPAL = re.compile(r"^[a-z2-7]{5}(-[a-z2-7]{1,5})*$")
CUSTOM_PROFILE = "custom"
# Built-in workers are asyncio tasks; more than this is a typo, not a load test.
MAX_WORKERS = 1024
# Profiles of the canister before paid models: every call is free and attached cycles come back.
FREE_PROFILES = frozenset({"launch-2025"})
E = TypeVar("E", bound=enum.StrEnum)


class ConfigError(SettingError):
    """Settings that cannot work (together); the message names what would be valid."""


def checked_principal(text: str, what: str, error: Callable[[str], Exception]) -> str:
    """A textual principal (stripped), checked for its shape (not its checksum); else `error(message)`."""
    principal = text.strip()
    if not _PRINCIPAL.match(principal):
        raise error(
            f"{what} {principal!r} is not a textual principal "
            f"(lower-case base32 groups joined by dashes, e.g. {ANONYMOUS_PRINCIPAL})"
        )
    return principal


def choice(kind: type[E], value: str, what: str) -> E:
    """Parse a string setting into its enum, or say which values are valid."""
    try:
        return kind(value)
    except ValueError:
        valid = ", ".join(member.value for member in kind)
        raise ConfigError(f"{what} {value!r} is not valid; choose one of: {valid}") from None


def resolve_model_files(files: Iterable[tuple[str, str]], default_model: str) -> tuple[tuple[str, str], ...]:
    """Name every GGUF file (a file given without a name serves the default model), one file per model."""
    resolved: dict[str, str] = {}
    for given_name, path in files:
        name = given_name.strip() or default_model
        if not path.strip():
            raise ConfigError(f"model {name!r}: the path of its GGUF file is empty; give --model {name}=PATH")
        if name in resolved:
            raise ConfigError(
                f"model {name!r} is given two GGUF files ({resolved[name]} and {path}); give each model one"
            )
        resolved[name] = path
    return tuple(resolved.items())


def profile_limits(name: str) -> Limits:
    if name not in PROFILES:
        raise ConfigError(f"profile {name!r} is not valid; choose one of: {', '.join(PROFILES)}")
    return PROFILES[name]


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything that decides how the emulator behaves; see the README's table of options."""

    host: str = "127.0.0.1"
    grpc_port: int = 50051
    # The Ollama-compatible HTTP API's port (Ollama's own by default); 0 picks a free one, None: no HTTP.
    ollama_port: int | None = 11434
    port_file: str | None = None
    backend: BackendKind = BackendKind.FAKE
    profile: str = "current"
    # Limits that override the profile's; the profile is then called "custom".
    custom_limits: Limits | None = None
    models: tuple[str, ...] = DEFAULT_MODELS
    # GGUF files of the llama backend, (model name, path); a name "" stands for the default model.
    # Names not in `models` join the catalogue.
    model_files: tuple[tuple[str, str], ...] = ()
    # Paid models and their prices; a model not named here is free.
    prices: Mapping[str, Price] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    # Whether paid models charge: by default, unless the profile predates paid models.
    billing: bool | None = None
    seed: int = 0
    tool_policy: ToolPolicy = ToolPolicy.AUTO
    rules_file: str | None = None
    strict_rules: bool = False
    strict_requests: bool = False
    workers: int = 1
    queue_capacity: int = 0
    max_attempts: int = 3
    lease_seconds: float = 60.0
    caller_deadline: float | None = None
    clock: ClockKind = ClockKind.REAL
    grace: float = 10.0
    # Connection timeouts of both servers, in seconds: an idle connection is closed; a request's
    # headers must arrive within header_timeout of its first byte, its body within body_timeout.
    # Required by the Control service (metadata icllm-control-token) when set; an emulator that listens
    # beyond loopback refuses to start without one.
    control_token: str | None = None
    idle_timeout: float = 120.0
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    history_limit: int = 10_000
    # About how many bytes of requests the history keeps (the oldest records go first).
    history_bytes: int = 64 * 1024 * 1024
    # Record and replay (`--cassettes`, `--record-mode`, ...), around whichever backend serves.
    cassettes: CassetteSettings = field(default_factory=CassetteSettings)
    # The proxy backend's server (`--upstream`, ...).
    upstream: UpstreamSettings | None = None
    # The Candid interface served: v1 (v0_chat, v1_chat, v1_deposit, paid models) or v0.3.1 (the
    # interface mainnet published until mid-2026: no v1_deposit, every model free).
    interface: str = "v1"
    unknown_models: UnknownModels = UnknownModels.REJECT
    # llama backend: model instances per model, for callers in parallel (each costs a context's memory).
    llama_instances: int = 1
    # Canister modules installed at start-up (`--canister NAME=PATH`), in this order.
    canisters: tuple[tuple[str, str], ...] = ()
    # Canisters' HTTP outcalls: unscripted ones are unexpected (strict); loopback pass-through.
    # Wall-clock seconds a canister's message may run.
    canister_time_limit: float = 10.0
    # Bytes all canisters may hold together.
    canister_memory_limit: int = 2 * 1024**3
    strict_outcalls: bool = False
    outcalls_loopback: bool = False

    def __post_init__(self) -> None:
        # Accept plain strings (from env vars, ini files, JSON) for every enum setting.
        object.__setattr__(self, "backend", choice(BackendKind, self.backend, "backend"))
        object.__setattr__(self, "tool_policy", choice(ToolPolicy, self.tool_policy, "tool policy"))
        object.__setattr__(self, "clock", choice(ClockKind, self.clock, "clock"))
        object.__setattr__(
            self, "unknown_models", choice(UnknownModels, self.unknown_models, "unknown models")
        )
        if self.interface not in INTERFACE_VERSIONS:
            raise ConfigError(
                f"interface {self.interface!r} is not valid; choose one of: {', '.join(INTERFACE_VERSIONS)}"
            )
        object.__setattr__(self, "models", tuple(self.models))
        if self.model_files:
            files = resolve_model_files(self.model_files, self.models[0] if self.models else "")
            object.__setattr__(self, "model_files", files)
            extra = tuple(dict.fromkeys(name for name, _ in files if name not in self.models))
            object.__setattr__(self, "models", self.models + extra)
        if self.custom_limits is not None:
            object.__setattr__(self, "profile", CUSTOM_PROFILE)
        self.validate()

    @property
    def charges(self) -> bool:
        """Whether paid models charge: not before paid models existed (launch-2025, interface v0.3.1)."""
        if self.billing is not None:
            return self.billing
        return self.profile not in FREE_PROFILES and self.interface != "v0.3.1"

    @property
    def limits(self) -> Limits:
        return self.custom_limits or PROFILES[self.profile]

    @property
    def default_model(self) -> str:
        return self.models[0]

    def _validate_cassettes_and_upstream(self) -> None:
        if self.backend is BackendKind.PROXY and self.upstream is None:
            raise ConfigError(
                "the proxy backend needs a server to forward to: give --upstream URL "
                "(e.g. http://127.0.0.1:11434 for Ollama; add --upstream-api openai for an "
                "OpenAI-compatible one)"
            )
        if self.upstream is not None and self.backend is not BackendKind.PROXY:
            raise ConfigError(
                f"--upstream gives the proxy backend its server, but the backend is {self.backend.value!r}; "
                "add --backend proxy"
            )
        mode = self.cassettes.record_mode
        if mode is not RecordMode.NONE and self.backend is BackendKind.REPLAY:
            raise ConfigError(
                f"--record-mode {mode.value} needs a backend to record from, and the replay backend "
                "only replays: choose the backend that should answer (--backend fake, llama or proxy)"
            )
        if mode is not RecordMode.NONE and not self.cassettes.active:
            raise ConfigError(f"--record-mode {mode.value} records into a cassette: give --cassettes DIR")

    def validate(self) -> None:
        checks = [
            (0 <= self.workers <= MAX_WORKERS, f"workers must be 0-{MAX_WORKERS}, got {self.workers}"),
            (
                self.queue_capacity >= 0,
                f"queue capacity must be 0 (unbounded) or more, got {self.queue_capacity}",
            ),
            (self.max_attempts >= 1, f"max attempts must be 1 or more, got {self.max_attempts}"),
            (self.lease_seconds > 0, f"lease seconds must be more than 0, got {self.lease_seconds}"),
            (
                self.caller_deadline is None or self.caller_deadline > 0,
                f"caller deadline must be more than 0 seconds, got {self.caller_deadline}",
            ),
            (self.seed >= 0, f"seed must be 0 or more, got {self.seed}"),
            (bool(self.models), "the model catalogue needs at least one model"),
            (all(m.strip() for m in self.models), f"model names must not be empty, got {list(self.models)}"),
            (0 <= self.grpc_port <= 65535, f"gRPC port must be 0-65535, got {self.grpc_port}"),
            (
                self.ollama_port is None or 0 <= self.ollama_port <= 65535,
                f"Ollama HTTP port must be 0-65535 (or off), got {self.ollama_port}",
            ),
            (self.history_limit >= 1, f"history limit must be 1 or more, got {self.history_limit}"),
            (self.history_bytes >= 1024, f"history bytes must be 1024 or more, got {self.history_bytes}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.backend is BackendKind.LLAMA and not self.model_files:
            raise ConfigError(
                "the llama backend needs a GGUF file: give --model NAME=PATH (NAME a model of the catalogue, "
                "e.g. llama3.1:8b), or --model PATH for the default model (with pytest: --icllm-model)"
            )
        self._validate_cassettes_and_upstream()
        if self.model_files and self.backend is not BackendKind.LLAMA:
            raise ConfigError(
                f"--model gives GGUF files to the llama backend, but the backend is {self.backend.value!r}; "
                "add --backend llama"
            )
        if self.custom_limits is None:
            profile_limits(self.profile)  # a ConfigError for a profile that does not exist
        for name, value in (
            ("max messages", self.limits.max_messages),
            ("max prompt bytes", self.limits.max_prompt_bytes),
            ("max output tokens", self.limits.max_output_tokens),
        ):
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be 0 or more (or absent for no limit), got {value}")


def upstream_settings(values: Mapping[str, Any], environ: Mapping[str, str]) -> UpstreamSettings | None:
    """The proxy backend's server; its API key comes from the environment only (never a setting)."""
    if values.get("upstream") is None:
        return None
    try:
        return UpstreamSettings(
            url=values["upstream"],
            api=values["upstream_api"],
            timeout=values["upstream_timeout"],
            api_key=environ.get(values["upstream_key_env"]) or None,
            models=values["upstream_models"],
        )
    except UpstreamError as error:
        raise ConfigError(str(error)) from None


def cassette_settings(values: Mapping[str, Any]) -> CassetteSettings:
    """Record and replay, from the cassette settings (`cassettes`, `cassette`, `record_mode`...)."""
    if values["cassette"] == PER_TEST_CASSETTE:
        raise ConfigError("--cassette true names a test's own cassette, which only pytest has: give a file")
    try:
        return CassetteSettings(
            directory=values["cassettes"],
            **({} if values["cassette"] is None else {"cassette": values["cassette"]}),
            record_mode=values["record_mode"],
            match_on=values["match_on"],
            allow_playback_repeats=values["allow_playback_repeats"],
            scrub_patterns=tuple(values["scrub_patterns"]),
            scrubbers=tuple(values["scrubbers"]),
            paths_anywhere=values["cassette_paths_anywhere"],
            scrubber_imports=values["allow_scrubber_imports"],
        )
    except CassetteSettingsError as error:
        raise ConfigError(str(error)) from None


# EmulatorConfig fields made from settings of another name or shape (the rest share the setting's name;
# `cassettes`, the setting, is the folder inside the field `cassettes`, a CassetteSettings).
GROUPED = frozenset({"prices", "model_files", "canisters", "rules_file", "cassettes", "upstream"})


def config_from_settings(
    values: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> EmulatorConfig:
    """The configuration of an emulator, from checked `serve` settings (missing ones at their default)."""
    given = ChainMap(dict(values) if not isinstance(values, dict) else values, defaults(SERVE))
    environ = os.environ if environ is None else environ
    same_name = {
        f.name: given[f.name]
        for f in dataclasses.fields(EmulatorConfig)
        if f.name in given and f.name not in GROUPED
    }
    return EmulatorConfig(
        **same_name,
        **({} if given["prices"] is None else {"prices": given["prices"]}),
        model_files=tuple(given["model"]),
        canisters=tuple(given["canister"]),
        rules_file=given["rules"],
        cassettes=cassette_settings(given),
        upstream=upstream_settings(given, environ),
    )
