"""Every setting of the emulator and the plugin, declared once.

A setting `x_y` is the command-line flag `--x-y` of `icllm-emulator serve` (and of `worker`, when a
worker has it), the environment variable `ICLLM_X_Y`, the pytest option `--icllm-x-y` and the ini key
`icllm_x_y`. The CLI parser, the plugin's options, the `@pytest.mark.icllm` keys, the Control
`Configure` fields and the reference page of the documentation are all derived from `SETTINGS`; a
test fails when any of them drifts.

Each parser takes what a user can give (a string from a flag, an env var or an ini file; a Python
value in a marker or the `icllm_config` fixture) and returns the checked value, or raises
`SettingError` saying what would be valid.
"""

from __future__ import annotations

import enum
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from icllm_emulator.billing import Price
from icllm_emulator.cassettes.settings import (
    BUILTIN_MATCHERS,
    DEFAULT_CASSETTE,
    DEFAULT_MATCH_ON,
    CassetteSettingsError,
    RecordMode,
    check_patterns,
    check_scrubbers,
)
from icllm_emulator.clock import ClockKind
from icllm_emulator.domain import Limits, ToolPolicy
from icllm_emulator.errors import IcllmError
from icllm_emulator.upstream import (
    DEFAULT_KEY_ENV,
    DEFAULT_UPSTREAM_TIMEOUT,
    UpstreamApi,
    UpstreamError,
    UpstreamSettings,
    parse_model_map,
    upstream_api,
)

ENV_PREFIX = "ICLLM_"
# The longest a worker's long-poll may wait (the AiWorker service's own limit).
MAX_POLL_SECONDS = 60.0
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_MODELS = ("llama3.1:8b", "qwen3:32b", "llama4-scout", "qwen2.5:0.5b", "gemma3:27b", "z-ai:glm-5.2")
INTERFACE_VERSIONS = ("v1", "v0.3.1")
PROFILES: dict[str, Limits] = {
    # Since the output cap was raised from 200 to 1000 tokens.
    "current": Limits(max_messages=10, max_prompt_bytes=10 * 1024, max_output_tokens=1000),
    # The canister as launched in February 2025.
    "launch-2025": Limits(max_messages=10, max_prompt_bytes=10 * 1024, max_output_tokens=200),
    "unlimited": Limits(max_messages=None, max_prompt_bytes=None, max_output_tokens=None),
}
# `cassette=True` in pytest: the test's own file, cassettes/<module>/<test>.yaml.
PER_TEST_CASSETTE = "per-test"


class SettingError(IcllmError, ValueError):
    """A setting's value that cannot be used; the message says what would be valid."""


class Door(enum.StrEnum):
    """Where a setting can be given."""

    SERVE = "serve"  # icllm-emulator serve: flag and env var
    WORKER = "worker"  # icllm-emulator worker: flag and env var
    PYTEST = "pytest"  # pytest option, ini key (and a marker key when per_test)


class BackendKind(enum.StrEnum):
    FAKE = "fake"
    LLAMA = "llama"
    # Answers only from cassettes (the cassette deck with no backend behind it).
    REPLAY = "replay"
    # Forwards to an upstream Ollama- or OpenAI-compatible server (backends/proxy.py).
    PROXY = "proxy"


class UnknownModels(enum.StrEnum):
    """What a call naming a model outside the catalogue gets (the real canister's answer is not public)."""

    REJECT = "reject"
    # Served like a paid model: the 2026 canister's models are free-form strings.
    PAID = "paid"


# -- parsers: what a user may write, to the checked value --------------------------------------------


def _text(value: Any) -> str:
    return str(value.value if isinstance(value, enum.Enum) else value).strip()


def choice(valid: Iterable[str]) -> Callable[[Any], str]:
    names = tuple(valid)

    def parse(value: Any) -> str:
        text = _text(value)
        if text not in names:
            raise SettingError(f"{value!r} is not valid; choose one of: {', '.join(names)}")
        return text

    return parse


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = _text(value).lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise SettingError(f"{value!r} is not a boolean; use true or false")


def whole(value: Any, least: int = 0) -> int:
    """A whole number of `least` or more (argparse alone would say only "invalid int value")."""
    try:
        number = int(_text(value)) if not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None:
        raise SettingError(f"{value!r} is not a whole number (like 0, 1 or 42)")
    if number < least:
        raise SettingError(f"{value!r} is not a whole number of {least} or more")
    return number


def positive(value: Any) -> int:
    return whole(value, least=1)


def port(value: Any) -> int:
    number = whole(value)
    if number > 65535:
        raise SettingError(f"{value!r} is not a port: use 0-65535 (0: any free port)")
    return number


def port_or_off(value: Any) -> int | None:
    if value is None or _text(value).lower() in ("off", "none"):
        return None
    try:
        return port(value)
    except SettingError:
        raise SettingError(f"{value!r} is not a port: use 0-65535 (0: any free port) or off") from None


def _number(value: Any) -> float:
    try:
        seconds = math.nan if isinstance(value, bool) else float(_text(value))
    except ValueError:
        seconds = math.nan
    return seconds


def seconds(value: Any) -> float:
    """A number of seconds, 0 or more."""
    number = _number(value)
    if not math.isfinite(number) or number < 0:
        raise SettingError(f"{value!r} is not a number of seconds (0 or more)")
    return number


def duration(value: Any) -> float:
    """A number of seconds above 0 (a lease, a timeout: something that must end)."""
    number = _number(value)
    if not math.isfinite(number) or number <= 0:
        raise SettingError(f"{value!r} is not a number of seconds above 0 (like 60 or 0.5)")
    return number


def optional_duration(value: Any) -> float | None:
    if value is None or _text(value).lower() in ("", "none", "off"):
        return None
    try:
        return duration(value)
    except SettingError:
        raise SettingError(f"{value!r} must be a finite number of seconds above 0 (or 'none')") from None


def poll_seconds(value: Any) -> float:
    number = seconds(value)
    if number > MAX_POLL_SECONDS:
        raise SettingError(f"{value!r} is longer than a poll may wait (0-{MAX_POLL_SECONDS:g} s)")
    return number


def optional_text(value: Any) -> str | None:
    return None if value is None or _text(value) == "" else _text(value)


def log_level(value: Any) -> str:
    level = _text(value).upper()
    if level not in LOG_LEVELS:
        raise SettingError(f"{value!r} is not a log level; choose one of: {', '.join(LOG_LEVELS)}")
    return level


def words(value: Any, separators: str = ",") -> tuple[Any, ...]:
    """A list: a string split at any of `separators`, or a list/tuple as it is."""
    if isinstance(value, str):
        for separator in separators[1:]:
            value = value.replace(separator, separators[0])
        return tuple(part.strip() for part in value.split(separators[0]) if part.strip())
    if isinstance(value, list | tuple):
        return tuple(value)
    raise SettingError(f"{value!r} is not a list")


def each(parse: Callable[[str], list[Any]]) -> Callable[[Any], tuple[Any, ...]]:
    """A repeatable setting: a string, or a list of strings (one per use of the flag), each parsed."""

    def parse_all(value: Any) -> tuple[Any, ...]:
        items = [value] if isinstance(value, str) else list(value)
        return tuple(part for item in items for part in ([item] if isinstance(item, tuple) else parse(item)))

    return parse_all


def models(value: Any) -> tuple[str, ...]:
    names = tuple(str(name).strip() for name in words(value))
    if not all(names):
        raise SettingError(f"{value!r} is not a list of model names (comma-separated)")
    return names


def catalogue(value: Any) -> tuple[str, ...]:
    names = models(value)
    if not names:
        raise SettingError("the model catalogue needs at least one model")
    return names


MODEL_FILE_SEPARATOR = ";"


def _model_files(text: str) -> list[tuple[str, str]]:
    """`NAME=PATH` or a bare `PATH` (name ""), several separated by `;`.

    A `NAME` holds no `/`, so a path that contains `=` is still read as a path.
    """
    files: list[tuple[str, str]] = []
    for spec in text.split(MODEL_FILE_SEPARATOR):
        spec = spec.strip()
        if not spec:
            continue
        name, equals, path = spec.partition("=")
        if not equals or "/" in name or os.sep in name:
            name, path = "", spec
        files.append((name.strip(), path.strip()))
    return files


model_files = each(_model_files)


def _canisters(text: str) -> list[tuple[str, str]]:
    """`NAME=PATH`, several separated by `;`."""
    out = []
    for spec in text.split(";"):
        if not spec.strip():
            continue
        name, equals, path = spec.strip().partition("=")
        if not equals or not name.strip() or not path.strip():
            raise SettingError(f"{spec.strip()!r} is not NAME=PATH (for example agent=agent.wasm)")
        out.append((name.strip(), path.strip()))
    return out


def canisters(value: Any) -> tuple[tuple[str, str], ...]:
    out = each(_canisters)(value)
    names = [name for name, _ in out]
    if len(set(names)) != len(names):
        raise SettingError(f"canister names must differ: {', '.join(names)}")
    return out


def prices(value: Any) -> dict[str, Price] | None:
    """`gemma3:27b=2000000000/1000000,...`: cycles per call, and per token after the slash; none: free."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return {str(model): Price(*price) for model, price in value.items()}
    if _text(value).lower() in ("none", "off", ""):
        return {}
    out: dict[str, Price] = {}
    for spec in _text(value).split(","):
        model, equals, amounts = spec.strip().rpartition("=")
        per_call, _, per_token = amounts.partition("/")
        amounts_ok = all(part.isascii() and part.isdigit() for part in (per_call, per_token or "0"))
        if not equals or not model or not amounts_ok:
            raise SettingError(
                f"{spec.strip()!r} is not MODEL=PER_CALL[/PER_TOKEN] in cycles, "
                "e.g. gemma3:27b=2000000000/1000000"
            )
        out[model] = Price(int(per_call), int(per_token or 0))
    return out


def model_map(value: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(value, Mapping):
        return tuple((str(k), str(v)) for k, v in value.items())
    try:
        return parse_model_map(value) if isinstance(value, str) else tuple(map(tuple, value))
    except (UpstreamError, TypeError, ValueError) as error:
        raise SettingError(str(error)) from None


def grpc_address(value: Any) -> str | None:
    """HOST:PORT of a gRPC server (a `grpc://` in front is allowed); a URL of another scheme is refused."""
    if value is None or _text(value) == "":
        return None
    text = _text(value).removeprefix("grpc://")
    valid = "use HOST:PORT, e.g. 127.0.0.1:50051 (the emulator's gRPC port, not its HTTP one)"
    if "://" in text:
        scheme = text.partition("://")[0]
        raise SettingError(f"{value!r} is not a gRPC address: leave out {scheme}://; {valid}")
    host, _, number = text.rpartition(":")
    if not host or "/" in host or not number.isdigit() or int(number) > 65535:
        raise SettingError(f"{value!r} is not a gRPC address; {valid}")
    return text


def upstream_url(value: Any) -> str | None:
    if value is None or _text(value) == "":
        return None
    try:
        url: str = UpstreamSettings(url=_text(value)).url
        return url
    except UpstreamError as error:
        raise SettingError(str(error)) from None


def api(value: Any) -> str:
    try:
        return upstream_api(value).value
    except UpstreamError as error:
        raise SettingError(str(error)) from None


def cassette(value: Any) -> str | None:
    """A cassette file name (.yaml), false, or (pytest) true for the test's own file."""
    if value is None or value is False:
        return None
    if value is True:
        return PER_TEST_CASSETTE
    text = _text(value)
    if text.lower() in ("", "0", "false", "no", "off", "none"):
        return None
    if text.lower() in ("1", "true", "yes", "on", PER_TEST_CASSETTE):
        return PER_TEST_CASSETTE
    if not text.endswith((".yaml", ".yml")):
        raise SettingError(
            f"{value!r} is not valid; give true (the test's own cassettes/<module>/<test>.yaml), "
            "false, or a cassette file name ending in .yaml"
        )
    return text


def matchers(value: Any) -> tuple[str, ...]:
    names = tuple(str(name) for name in words(value))
    # Matchers registered at run time (cassettes.matching.register_matcher) count once loaded.
    matching = sys.modules.get("icllm_emulator.cassettes.matching")
    known = tuple(getattr(matching, "MATCHERS", {})) or BUILTIN_MATCHERS
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise SettingError(
            f"{', '.join(map(repr, unknown)) or 'nothing'} is not a matcher; choose from: {', '.join(known)}"
        )
    return names


def scrub_patterns(value: Any) -> tuple[str, ...]:
    """Regular expressions: one per use of the flag, or one per line in the env var or ini key."""
    items = [value] if isinstance(value, str) else list(value)
    patterns = tuple(str(line) for item in items for line in str(item).split("\n") if line.strip())
    try:
        return check_patterns(patterns)
    except CassetteSettingsError as error:
        raise SettingError(str(error)) from None


def scrubbers(value: Any) -> tuple[str, ...]:
    """MODULE:FUNCTION references; a function given in a marker or the config fixture is named so."""
    references = []
    items = [value] if isinstance(value, str) or callable(value) else list(value)
    for item in items:
        if callable(item):
            module, name = getattr(item, "__module__", None), getattr(item, "__qualname__", "")
            if not module or "<" in name:
                raise SettingError(
                    f"{item!r} cannot be named by an import path; define the scrub step at the top level "
                    "of a module (conftest.py will do)"
                )
            references.append(f"{module}:{name}")
        else:
            references.extend(str(part) for part in words(str(item), ",\n"))
    try:
        return check_scrubbers(tuple(references))
    except CassetteSettingsError as error:
        raise SettingError(str(error)) from None


# -- the table -------------------------------------------------------------------------------------

SERVE, WORKER, PYTEST = Door.SERVE, Door.WORKER, Door.PYTEST
EVERYWHERE = frozenset({SERVE, WORKER, PYTEST})
SERVED = frozenset({SERVE, PYTEST})
# The processes' own settings: the command line (and its env vars) sets them, pytest does not.
SERVE_ONLY, WORKER_ONLY, PROCESSES = frozenset({SERVE}), frozenset({WORKER}), frozenset({SERVE, WORKER})
PYTEST_ONLY = frozenset({PYTEST})


@dataclass(frozen=True)
class Setting:
    """One setting: its name, parser, default and help, and where it can be given."""

    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    doors: frozenset[Door] = SERVED
    # pytest: a marker or the icllm_config fixture may set it for one test (Control.Configure applies it).
    per_test: bool = False
    # The ConfigureRequest field that changes it at run time (None: fixed once the emulator started).
    configure: str | None = None
    # A flag that may be given more than once (each use adds to the list).
    repeatable: bool = False
    # What `icllm-emulator worker` means by it, when that differs: (default, help).
    worker: tuple[Any, str] | None = None

    @property
    def flag(self) -> str:
        """Its flag of `icllm-emulator serve` and `worker`: `--x-y`."""
        return "--" + self.name.replace("_", "-")

    @property
    def switch(self) -> bool:
        """A boolean: its flag takes true or false, and alone means true (`--x-y` is `--x-y true`)."""
        return self.parse is boolean

    @property
    def flag_help(self) -> str:
        """The help of its flag: a boolean's says which values it takes."""
        return f"{self.help} (true or false; the flag alone: true)" if self.switch else self.help

    @property
    def env(self) -> str:
        """Its environment variable: `ICLLM_X_Y`."""
        return ENV_PREFIX + self.name.upper()

    @property
    def pytest_flag(self) -> str:
        """Its pytest option: `--icllm-x-y`."""
        return "--icllm-" + self.name.replace("_", "-")

    @property
    def ini(self) -> str:
        """Its ini key: `icllm_x_y`."""
        return "icllm_" + self.name

    def check(self, value: Any, origin: str) -> Any:
        """The parsed value; an error names where the value came from."""
        try:
            return self.parse(value)
        except SettingError as error:
            raise SettingError(f"{origin}: {error}") from None


SETTINGS: tuple[Setting, ...] = (
    # -- the process: only the command line sets these ----------------------------------------------
    Setting("host", str, "127.0.0.1", "address to listen on (loopback by default)", SERVE_ONLY),
    Setting("grpc_port", port, 50051, "gRPC port; 0 picks a free one (see --port-file)", SERVE_ONLY),
    Setting(
        "ollama_port",
        port_or_off,
        11434,
        "Ollama-compatible HTTP port (Ollama's own); 0 picks a free one, off turns HTTP off",
        SERVE_ONLY,
    ),
    Setting(
        "port_file",
        optional_text,
        None,
        "write the bound ports here as JSON once listening",
        SERVE_ONLY,
    ),
    Setting("grace", seconds, 10.0, "seconds to finish calls in flight on SIGTERM/SIGINT", SERVE_ONLY),
    Setting("log_level", log_level, "INFO", "DEBUG, INFO, WARNING or ERROR", PROCESSES),
    Setting(
        "cassette_paths_anywhere",
        boolean,
        False,
        "let Control.UseCassette name cassettes outside --cassettes (pytest's own emulator always may)",
        SERVE_ONLY,
    ),
    Setting(
        "allow_scrubber_imports",
        boolean,
        False,
        "let Control.UseCassette import scrubbers not given at start (pytest's own emulator always may)",
        SERVE_ONLY,
    ),
    Setting("connect", str, "127.0.0.1:50051", "the emulator's gRPC address", WORKER_ONLY),
    Setting("worker_id", optional_text, None, "this worker's name (default: a random one)", WORKER_ONLY),
    Setting("poll_seconds", poll_seconds, 10.0, "how long one long-poll waits for a job", WORKER_ONLY),
    # -- the answers ---------------------------------------------------------------------------------
    Setting(
        "backend",
        choice(b.value for b in BackendKind),
        BackendKind.FAKE.value,
        f"where answers come from: {', '.join(b.value for b in BackendKind)}",
        EVERYWHERE,
    ),
    Setting(
        "model",
        model_files,
        (),
        "llama backend: a GGUF file, NAME=PATH, or a bare PATH for the default model; repeatable "
        "(in the env var or ini key, separate them with ;)",
        EVERYWHERE,
        repeatable=True,
        worker=(
            (),
            "llama backend: GGUF files, NAME=PATH; this worker then leases only those models' prompts",
        ),
    ),
    Setting(
        "llama_instances", positive, 1, "llama backend: instances of each model, for callers in parallel"
    ),
    Setting(
        "seed",
        whole,
        0,
        "seed of the answers (fake text; llama sampling)",
        EVERYWHERE,
        per_test=True,
        configure="seed",
    ),
    Setting(
        "tool_policy",
        choice(p.value for p in ToolPolicy),
        ToolPolicy.AUTO.value,
        "whether fake answers call the tools a request offers: auto or never",
        EVERYWHERE,
        per_test=True,
        configure="tool_policy",
    ),
    Setting(
        "upstream",
        upstream_url,
        None,
        "proxy backend: base URL of an Ollama- or OpenAI-compatible server",
        EVERYWHERE,
    ),
    Setting(
        "upstream_api",
        api,
        UpstreamApi.OLLAMA.value,
        "proxy backend: the server's API, ollama (/api/chat) or openai (/v1/chat/completions)",
        EVERYWHERE,
    ),
    Setting(
        "upstream_timeout",
        duration,
        DEFAULT_UPSTREAM_TIMEOUT,
        "proxy backend: seconds to wait for an answer",
        EVERYWHERE,
    ),
    Setting(
        "upstream_models",
        model_map,
        (),
        "proxy backend: NAME=UPSTREAM,... the server's names of models",
        EVERYWHERE,
    ),
    Setting(
        "upstream_key_env",
        str,
        DEFAULT_KEY_ENV,
        "proxy backend: the environment variable that holds the server's API key (sent as a bearer token)",
        EVERYWHERE,
    ),
    # -- the canister --------------------------------------------------------------------------------
    Setting(
        "profile",
        choice(PROFILES),
        "current",
        f"limit profile: {', '.join(PROFILES)}",
        per_test=True,
        configure="profile",
    ),
    Setting(
        "models",
        catalogue,
        DEFAULT_MODELS,
        "the model catalogue, comma-separated; the first is the default",
        EVERYWHERE,
        per_test=True,
        configure="models",
        worker=((), "only lease prompts for these models (comma-separated; default: all)"),
    ),
    Setting(
        "interface",
        choice(INTERFACE_VERSIONS),
        "v1",
        "Candid interface version: v1 (with v1_deposit, paid models) or v0.3.1",
    ),
    Setting(
        "unknown_models",
        choice(u.value for u in UnknownModels),
        UnknownModels.REJECT.value,
        "what a model outside the catalogue gets: reject, or paid",
    ),
    Setting(
        "prices",
        prices,
        None,
        "paid models: MODEL=PER_CALL[/PER_TOKEN],... in cycles, or none (all free); default: gemma3:27b "
        "and z-ai:glm-5.2",
        configure="prices",
    ),
    Setting(
        "strict_requests",
        boolean,
        False,
        "reject requests the real canister only warns about",
        per_test=True,
        configure="strict_requests",
    ),
    # -- the queue and its workers -------------------------------------------------------------------
    Setting(
        "workers", whole, 1, "built-in AI workers (0: only external workers answer)", configure="workers"
    ),
    Setting(
        "queue_capacity",
        whole,
        0,
        "prompts waiting or in progress before SYS_TRANSIENT; 0 is unbounded",
        per_test=True,
        configure="queue_capacity",
    ),
    Setting(
        "max_attempts",
        positive,
        3,
        "leases of one prompt before its caller is rejected",
        per_test=True,
        configure="max_attempts",
    ),
    Setting(
        "lease_seconds",
        duration,
        60.0,
        "how long a worker's lease lasts without renewal",
        per_test=True,
        configure="lease_seconds",
    ),
    Setting(
        "caller_deadline",
        optional_duration,
        None,
        "seconds before a caller gets SYS_UNKNOWN (ic-llm: 300)",
        per_test=True,
        configure="caller_deadline_seconds",
    ),
    Setting(
        "clock",
        choice(c.value for c in ClockKind),
        ClockKind.REAL.value,
        "real, or virtual (moved by Control.Advance; in pytest, icllm.advance)",
    ),
    Setting(
        "history_bytes",
        lambda v: whole(v, least=1024),
        64 * 1024 * 1024,
        "about how many bytes of requests the call history keeps",
    ),
    # -- scripts -------------------------------------------------------------------------------------
    Setting("rules", optional_text, None, "a YAML or JSON file of scripted rules, loaded at start"),
    Setting(
        "strict_rules",
        boolean,
        False,
        "reject (and in pytest, report) prompts that no scripted answer expects",
        per_test=True,
        configure="strict_rules",
    ),
    # -- canisters in the test -----------------------------------------------------------------------
    Setting(
        "canister",
        canisters,
        (),
        "install a canister module at start: NAME=PATH; repeatable (env var or ini key: ; between)",
        repeatable=True,
    ),
    Setting("strict_outcalls", boolean, False, "mark canisters' unscripted HTTP outcalls as unexpected"),
    Setting(
        "outcalls_loopback", boolean, False, "send canisters' unscripted outcalls to loopback URLs for real"
    ),
    # -- the servers ---------------------------------------------------------------------------------
    Setting(
        "control_token",
        optional_text,
        None,
        "the token Control, Canisters and AiWorker calls must carry (needed with a non-loopback --host; "
        "pytest: that of --icllm-url)",
        EVERYWHERE,
        worker=(None, "the emulator's control token, sent with every AiWorker call"),
    ),
    Setting("idle_timeout", seconds, 120.0, "seconds before an idle HTTP or gRPC connection is closed"),
    Setting("header_timeout", seconds, 10.0, "seconds an HTTP request's headers may take to arrive"),
    Setting("body_timeout", seconds, 30.0, "seconds an HTTP request's body may take to arrive (then 408)"),
    # -- cassettes -----------------------------------------------------------------------------------
    Setting(
        "cassettes",
        optional_text,
        None,
        "the folder of cassettes, for recording and replay alike (pytest: default cassettes/ beside "
        "each test module)",
        per_test=True,
    ),
    Setting(
        "cassette",
        cassette,
        None,
        f"the cassette in --cassettes (serve: default {DEFAULT_CASSETTE}); pytest: true for the test's "
        "own cassettes/<module>/<test>.yaml, or a file name",
        per_test=True,
    ),
    Setting(
        "record_mode",
        choice(mode.value for mode in RecordMode),
        RecordMode.NONE.value,
        "none (replay only; a miss is a reject), once, new_episodes or all; recording wraps the backend",
        per_test=True,
    ),
    Setting(
        "match_on",
        matchers,
        DEFAULT_MATCH_ON,
        f"the parts of a request a recording must match, comma-separated: {', '.join(BUILTIN_MATCHERS)}",
        per_test=True,
    ),
    Setting(
        "allow_playback_repeats",
        boolean,
        False,
        "replay a request's last recording again once its recordings are used up (default: a miss)",
        per_test=True,
    ),
    Setting(
        "scrub_patterns",
        scrub_patterns,
        (),
        "a regular expression of text written to cassettes as <scrubbed>; repeatable (one per line in "
        "the env var or ini key)",
        per_test=True,
        repeatable=True,
    ),
    Setting(
        "scrubbers",
        scrubbers,
        (),
        "MODULE:FUNCTION of a scrub step of your own, run before writing; repeatable",
        per_test=True,
        repeatable=True,
    ),
    # -- the plugin's own ----------------------------------------------------------------------------
    Setting(
        "url",
        grpc_address,
        None,
        "use a running emulator at HOST:PORT instead of starting one (env ICLLM_URL)",
        PYTEST_ONLY,
    ),
    Setting(
        "canister_timeout",
        duration,
        60.0,
        "seconds a test's canister call may take (waiting for a held LLM answer, a paused worker, a "
        "canister that never replies) before the test fails, saying what is pending",
        PYTEST_ONLY,
    ),
    Setting(
        "assert_all_used",
        boolean,
        True,
        "fail a test whose scripted answers were never used",
        PYTEST_ONLY,
        per_test=True,
    ),
    Setting(
        "assert_all_expected",
        boolean,
        True,
        "in strict mode, fail a test that sent unexpected prompts",
        PYTEST_ONLY,
        per_test=True,
    ),
    Setting(
        "assert_no_misses",
        boolean,
        True,
        "fail a test in which a call found no recorded answer",
        PYTEST_ONLY,
        per_test=True,
    ),
)
BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}


def at(door: Door) -> tuple[Setting, ...]:
    """The settings a door takes, in the table's order."""
    return tuple(setting for setting in SETTINGS if door in setting.doors)


def defaults(door: Door) -> dict[str, Any]:
    """Every setting of `door` at its default (a worker's own default where it has one)."""
    return {s.name: (s.worker[0] if door is WORKER and s.worker else s.default) for s in at(door)}
