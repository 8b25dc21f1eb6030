"""The plugin's settings and the one resolver that decides them.

Precedence, lowest first: built-in defaults < ini keys (`pytest.ini`, `[tool.pytest.ini_options]`)
< the `ICLLM_URL` environment variable (for `url` only) < command-line flags < the `icllm_config`
fixture < `@pytest.mark.icllm(...)` markers: module, then class, then the test itself (the closest
wins). Session settings (backend, clock, workers, url, upstream...) describe the emulator that the
whole session shares, so only defaults, ini keys, the environment and flags decide them.

When the environment variable CI is true, a record mode other than `none` from an ini key, the config
fixture or a marker is ignored: CI replays only, and records only when `--icllm-record-mode` on the
command line asks for it by name.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from icllm_emulator.backends import ToolPolicy
from icllm_emulator.backends.upstream import UpstreamApi, UpstreamError, parse_model_map
from icllm_emulator.cassettes.settings import (
    BUILTIN_MATCHERS,
    DEFAULT_MATCH_ON,
    CassetteSettingsError,
    RecordMode,
    check_patterns,
    check_scrubbers,
)
from icllm_emulator.clock import ClockKind
from icllm_emulator.config import DEFAULT_MODELS, PROFILES, BackendKind, parse_model_files


class OptionError(ValueError):
    """A setting with a value that cannot work; the message lists what would be valid."""


def _choice(valid: Iterable[str]) -> Callable[[Any], str]:
    names = list(valid)

    def parse(value: Any) -> str:
        text = str(value.value if hasattr(value, "value") else value)
        if text not in names:
            raise OptionError(f"{value!r} is not valid; choose one of: {', '.join(names)}")
        return text

    return parse


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise OptionError(f"{value!r} is not a boolean; use true or false")


def _natural(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise OptionError(f"{value!r} is not a whole number") from None
    if number < 0 or isinstance(value, bool):
        raise OptionError(f"{value!r} is not a whole number of 0 or more")
    return number


def _positive(value: Any) -> int:
    number = _natural(value)
    if number < 1:
        raise OptionError(f"{value!r} is not a whole number of 1 or more")
    return number


def _duration(value: Any) -> float:
    """A number of seconds above 0, and never 'none' (a lease must end)."""
    try:
        seconds = None if isinstance(value, bool) else _seconds(value)
    except OptionError:
        seconds = None
    if seconds is None:
        raise OptionError(f"{value!r} is not a number of seconds above 0 (like 60 or 0.5)")
    return seconds


def _seconds(value: Any) -> float | None:
    if value is None or str(value).strip().lower() in ("", "none", "off"):
        return None
    if isinstance(value, bool):
        raise OptionError(f"{value!r} is not a number of seconds (or 'none')")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise OptionError(f"{value!r} is not a number of seconds (or 'none')") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise OptionError(f"{value!r} must be a finite number of seconds above 0 (or 'none')")
    return seconds


def _models(value: Any) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",")) if isinstance(value, str) else tuple(map(str, value))
    if not names or not all(names):
        raise OptionError(f"{value!r} is not a list of model names")
    return names


def _token(value: Any) -> str | None:
    return None if value is None or str(value).strip() == "" else str(value).strip()


def _url(value: Any) -> str | None:
    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip().removeprefix("grpc://")
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise OptionError(f"{value!r} is not a gRPC address; use HOST:PORT, e.g. 127.0.0.1:50051")
    return text


def _http_url(value: Any) -> str | None:
    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip()
    if not text.startswith(("http://", "https://")):
        raise OptionError(f"{value!r} is not an http(s) URL, e.g. http://127.0.0.1:11434")
    return text


def _model_map(value: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(value, dict):
        return tuple((str(k), str(v)) for k, v in value.items())
    try:
        return parse_model_map(str(value)) if isinstance(value, str) else tuple(map(tuple, value))
    except (UpstreamError, TypeError, ValueError) as error:
        raise OptionError(str(error)) from None


def _model_files(value: Any) -> tuple[tuple[str, str], ...]:
    """GGUF files for the llama backend: `NAME=PATH;...`, a bare PATH serving the default model."""
    if isinstance(value, str):
        return tuple(parse_model_files(value))
    return tuple((str(name), str(path)) for name, path in value)


# `cassette=True`: the test's own file, cassettes/<module>/<test>.yaml.
PER_TEST_CASSETTE = "per-test"


def _cassette(value: Any) -> str | None:
    if value is None or value is False:
        return None
    if value is True:
        return PER_TEST_CASSETTE
    text = str(value).strip()
    if text.lower() in ("", "0", "false", "no", "off", "none"):
        return None
    if text.lower() in ("1", "true", "yes", "on", PER_TEST_CASSETTE):
        return PER_TEST_CASSETTE
    if not text.endswith((".yaml", ".yml")):
        raise OptionError(
            f"{value!r} is not valid; give true (the test's own cassettes/<module>/<test>.yaml), "
            "false, or a cassette file name ending in .yaml"
        )
    return text


def _folder(value: Any) -> str | None:
    if value is None or str(value).strip() == "":
        return None
    return str(value).strip()


def _words(value: Any, separators: str = ",") -> tuple[str, ...]:
    if isinstance(value, str):
        for separator in separators[1:]:
            value = value.replace(separator, separators[0])
        return tuple(part.strip() for part in value.split(separators[0]) if part.strip())
    if isinstance(value, list | tuple):
        return tuple(value)
    raise OptionError(f"{value!r} is not a list")


def _matchers(value: Any) -> tuple[str, ...]:
    names = tuple(str(name) for name in _words(value))
    # Matchers registered at run time (icllm_emulator.cassettes.matching.register_matcher) count once loaded.
    matching = sys.modules.get("icllm_emulator.cassettes.matching")
    known = tuple(getattr(matching, "MATCHERS", {})) or BUILTIN_MATCHERS
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise OptionError(
            f"{', '.join(map(repr, unknown)) or 'nothing'} is not a matcher; choose from: {', '.join(known)}"
        )
    return names


def _patterns(value: Any) -> tuple[str, ...]:
    patterns = tuple(str(p) for p in _words(value, "\n")) if isinstance(value, str) else _words(value)
    try:
        return check_patterns(tuple(map(str, patterns)))
    except CassetteSettingsError as error:
        raise OptionError(str(error)) from None


def _scrubbers(value: Any) -> tuple[str, ...]:
    """MODULE:FUNCTION references; a function given in a marker or the config fixture is named so."""
    references = []
    for item in _words(value, ",\n") if isinstance(value, str) else _words(value):
        if callable(item):
            module, name = getattr(item, "__module__", None), getattr(item, "__qualname__", "")
            if not module or "<" in name:
                raise OptionError(
                    f"{item!r} cannot be named by an import path; define the scrub step at the top level "
                    "of a module (conftest.py will do)"
                )
            references.append(f"{module}:{name}")
        else:
            references.append(str(item))
    try:
        return check_scrubbers(tuple(references))
    except CassetteSettingsError as error:
        raise OptionError(str(error)) from None


@dataclass(frozen=True)
class Option:
    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    per_test: bool = True

    @property
    def flag(self) -> str:
        return "--icllm-" + self.name.replace("_", "-")

    @property
    def ini(self) -> str:
        return "icllm_" + self.name


OPTIONS: tuple[Option, ...] = (
    Option(
        "backend",
        _choice(b.value for b in BackendKind),
        BackendKind.FAKE.value,
        "where answers come from",
        per_test=False,
    ),
    Option(
        "clock",
        _choice(c.value for c in ClockKind),
        ClockKind.REAL.value,
        "real, or virtual (tests move it with icllm.advance)",
        per_test=False,
    ),
    Option("workers", _natural, 1, "built-in AI workers of the session's emulator", per_test=False),
    Option(
        "model",
        _model_files,
        (),
        "llama backend: GGUF files, NAME=PATH;... (a bare PATH serves the default model)",
        per_test=False,
    ),
    Option("url", _url, None, "use a running emulator at HOST:PORT instead of starting one", per_test=False),
    Option(
        "control_token",
        _token,
        None,
        "the Control token of the emulator at --icllm-url (its --control-token; env ICLLM_CONTROL_TOKEN)",
        per_test=False,
    ),
    Option(
        "upstream",
        _http_url,
        None,
        "proxy backend: base URL of an Ollama- or OpenAI-compatible server",
        per_test=False,
    ),
    Option(
        "upstream_api",
        _choice(api.value for api in UpstreamApi),
        UpstreamApi.OLLAMA.value,
        "proxy backend: the server's API, ollama or openai",
        per_test=False,
    ),
    Option(
        "upstream_timeout", _duration, 120.0, "proxy backend: seconds to wait for an answer", per_test=False
    ),
    Option(
        "upstream_models",
        _model_map,
        (),
        "proxy backend: NAME=UPSTREAM,... the server's names of the canister's models",
        per_test=False,
    ),
    Option("profile", _choice(PROFILES), "current", "limit profile"),
    Option("models", _models, DEFAULT_MODELS, "model catalogue (comma-separated)"),
    Option("seed", _natural, 0, "seed of the fake backend's answers"),
    Option(
        "tool_policy",
        _choice(p.value for p in ToolPolicy),
        ToolPolicy.AUTO.value,
        "whether fake answers call offered tools",
    ),
    Option("strict", _bool, False, "reject (and report) prompts that no scripted answer expects"),
    Option("strict_requests", _bool, False, "reject requests the real canister only warns about"),
    Option("caller_deadline", _seconds, None, "seconds before a caller gets SYS_UNKNOWN (ic-llm: 300)"),
    Option(
        "queue_capacity", _natural, 0, "prompts waiting or in progress before SYS_TRANSIENT; 0: unbounded"
    ),
    Option("max_attempts", _positive, 3, "leases of one prompt before its caller is rejected"),
    Option("lease_seconds", _duration, 60.0, "how long a worker's lease lasts (a hung worker loses it then)"),
    Option("assert_all_used", _bool, True, "fail a test whose scripted answers were never used"),
    Option("assert_all_expected", _bool, True, "in strict mode, fail a test that sent unexpected prompts"),
    Option(
        "cassette",
        _cassette,
        None,
        "replay and record through a cassette: true (cassettes/<module>/<test>.yaml) or a .yaml file",
    ),
    Option(
        "record_mode",
        _choice(mode.value for mode in RecordMode),
        RecordMode.NONE.value,
        "none (replay only; a miss fails), once, new_episodes or all",
    ),
    Option(
        "cassette_dir", _folder, None, "folder of cassettes (default: cassettes/ beside each test module)"
    ),
    Option(
        "match_on",
        _matchers,
        DEFAULT_MATCH_ON,
        f"parts of a request a recording must match: {', '.join(BUILTIN_MATCHERS)}",
    ),
    Option(
        "allow_playback_repeats",
        _bool,
        False,
        "replay a request's last recording again once all are replayed",
    ),
    Option("scrub_patterns", _patterns, (), "regular expressions of text written to cassettes as <scrubbed>"),
    Option("scrubbers", _scrubbers, (), "MODULE:FUNCTION scrub steps of your own, run before writing"),
    Option("assert_no_misses", _bool, True, "fail a test in which a call found no recorded answer"),
)
BY_NAME = {option.name: option for option in OPTIONS}
PER_TEST = tuple(option.name for option in OPTIONS if option.per_test)


@dataclass(frozen=True)
class Settings:
    """The effective settings of one test (or of the session, for the session's fields)."""

    backend: str
    clock: str
    workers: int
    model: tuple[tuple[str, str], ...]
    url: str | None
    profile: str
    models: tuple[str, ...]
    seed: int
    tool_policy: str
    strict: bool
    strict_requests: bool
    caller_deadline: float | None
    queue_capacity: int
    max_attempts: int
    lease_seconds: float
    assert_all_used: bool
    assert_all_expected: bool
    upstream: str | None = None
    upstream_api: str = UpstreamApi.OLLAMA.value
    upstream_timeout: float = 120.0
    upstream_models: tuple[tuple[str, str], ...] = ()
    cassette: str | None = None
    record_mode: str = RecordMode.NONE.value
    cassette_dir: str | None = None
    match_on: tuple[str, ...] = DEFAULT_MATCH_ON
    allow_playback_repeats: bool = False
    scrub_patterns: tuple[str, ...] = ()
    scrubbers: tuple[str, ...] = ()
    assert_no_misses: bool = True
    control_token: str | None = None

    def details(self) -> str:
        """Every other setting, as `icllm settings: name=value, ...` (the header's second line)."""
        shown = {"backend", "clock", "workers", "url", "profile", "seed", "tool_policy", "strict"}
        secret = {"control_token"}  # shown as set or not, never its value
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in shown}
        rest = [f"{k}={'(set)' if k in secret and v else _show(v)}" for k, v in values.items()]
        return "icllm settings: " + ", ".join(rest)

    def header(self) -> str:
        server = (
            f"emulator at {self.url}"
            if self.url
            else f"in-process, backend={self.backend}, clock={self.clock}, workers={self.workers}"
        )
        return (
            f"icllm: {server}; profile={self.profile}, seed={self.seed}, tool_policy={self.tool_policy}, "
            f"strict={self.strict}"
        )


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        pairs = (f"{v[0] or 'default'}={v[1]}" if isinstance(v, tuple) else str(v) for v in value)
        return ",".join(pairs) or "-"
    return "-" if value is None else str(value)


def parse_option(name: str, value: Any, origin: str) -> Any:
    """One value, checked; errors say where it came from and what is valid."""
    try:
        return BY_NAME[name].parse(value)
    except OptionError as error:
        raise OptionError(f"{origin}: {error}") from None


def resolve(
    ini: Mapping[str, Any],
    cli: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
    markers: Iterable[tuple[str, Mapping[str, Any]]] = (),
    *,
    ci: bool = False,
) -> Settings:
    """Merge every layer in precedence order (see the module docstring) into checked settings.

    `ini` and `cli` are keyed by option name and hold only what was given; `markers` are
    (location, kwargs) pairs ordered farthest first. With `ci`, a record mode other than `none` is
    taken from `cli` only (see the module docstring).
    """
    values: dict[str, Any] = {option.name: option.default for option in OPTIONS}

    def take(name: str, value: Any, origin: str, *, trusted: bool = False) -> None:
        parsed = parse_option(name, value, origin)
        if ci and not trusted and name == "record_mode" and parsed != RecordMode.NONE.value:
            return  # CI replays only, unless the command line asks for recording by name
        values[name] = parsed

    for name, value in ini.items():
        take(name, value, f"ini option {BY_NAME[name].ini}")
    for name, value in cli.items():
        take(name, value, f"option {BY_NAME[name].flag}", trusted=True)
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if config:
        layers.append(("the icllm_config fixture", config))
    layers.extend(markers)
    for origin, layer in layers:
        check_keys(layer, origin)
        for name, value in layer.items():
            take(name, value, f"{origin}: {name}")
    return Settings(**values)


def check_keys(layer: Mapping[str, Any], origin: str) -> None:
    unknown = sorted(set(layer) - set(BY_NAME))
    if unknown:
        raise OptionError(
            f"{origin}: unknown setting {', '.join(map(repr, unknown))}; "
            f"valid settings: {', '.join(PER_TEST)}"
        )
    session = sorted(name for name in layer if not BY_NAME[name].per_test)
    if session:
        raise OptionError(
            f"{origin}: {', '.join(session)} is chosen for the whole session; set it with "
            f"{', '.join(BY_NAME[n].flag for n in session)} or the ini key "
            f"{', '.join(BY_NAME[n].ini for n in session)}"
        )
