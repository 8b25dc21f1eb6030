"""The plugin's settings and the one resolver that decides them.

The settings are those of `icllm_emulator.settings.SETTINGS` that pytest takes: each `x_y` is the
option `--icllm-x-y` and the ini key `icllm_x_y`; the per-test ones are also marker keys.

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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from icllm_emulator.cassettes.settings import DEFAULT_MATCH_ON, RecordMode
from icllm_emulator.settings import (
    PYTEST,
    SERVE,
    Setting,
    SettingError,
    at,
)
from icllm_emulator.upstream import DEFAULT_KEY_ENV, DEFAULT_UPSTREAM_TIMEOUT, UpstreamApi

OPTIONS: tuple[Setting, ...] = at(PYTEST)
BY_NAME = {option.name: option for option in OPTIONS}
PER_TEST = tuple(option.name for option in OPTIONS if option.per_test)
# What the emulator the plugin starts is given: its session settings, and the per-test ones that
# Control.Configure sets (the cassette settings go to Control.UseCassette, test by test).
STARTUP = tuple(o.name for o in OPTIONS if SERVE in o.doors and (not o.per_test or o.configure))
# What a test's Configure call sets.
CONFIGURED = tuple(o for o in OPTIONS if o.per_test and o.configure)


@dataclass(frozen=True)
class Settings:
    """The effective settings of one test (or of the session, for the session's fields).

    One field per pytest setting of `icllm_emulator.settings.SETTINGS` (a test checks that they agree).
    """

    backend: str
    clock: str
    workers: int
    model: tuple[tuple[str, str], ...]
    url: str | None
    profile: str
    models: tuple[str, ...]
    seed: int
    tool_policy: str
    strict_rules: bool
    strict_requests: bool
    caller_deadline: float | None
    queue_capacity: int
    max_attempts: int
    lease_seconds: float
    assert_all_used: bool
    assert_all_expected: bool
    upstream: str | None = None
    upstream_api: str = UpstreamApi.OLLAMA.value
    upstream_timeout: float = DEFAULT_UPSTREAM_TIMEOUT
    upstream_models: tuple[tuple[str, str], ...] = ()
    upstream_key_env: str = DEFAULT_KEY_ENV
    cassette: str | None = None
    record_mode: str = RecordMode.NONE.value
    cassettes: str | None = None
    match_on: tuple[str, ...] = DEFAULT_MATCH_ON
    allow_playback_repeats: bool = False
    scrub_patterns: tuple[str, ...] = ()
    scrubbers: tuple[str, ...] = ()
    assert_no_misses: bool = True
    control_token: str | None = None
    llama_instances: int = 1
    interface: str = "v1"
    unknown_models: str = "reject"
    prices: Mapping[str, Any] | None = None
    history_bytes: int = 64 * 1024 * 1024
    rules: str | None = None
    canister: tuple[tuple[str, str], ...] = ()
    strict_outcalls: bool = False
    outcalls_loopback: bool = False
    idle_timeout: float = 120.0
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    canister_timeout: float = 60.0

    def details(self) -> str:
        """The header's second line: the other settings that differ from their defaults, as
        `icllm settings: name=value, ...` (all of them would make one line of a thousand characters)."""
        shown = {"backend", "clock", "workers", "url", "profile", "seed", "tool_policy", "strict_rules"}
        secret = {"control_token"}  # shown as set or not, never its value
        values = {
            f.name: value
            for f in dataclasses.fields(self)
            if f.name not in shown and (value := getattr(self, f.name)) != BY_NAME[f.name].default
        }
        rest = [f"{k}={'(set)' if k in secret and v else _show(v)}" for k, v in values.items()]
        return "icllm settings: " + (", ".join(rest) or "the others at their defaults")

    def header(self) -> str:
        server = (
            f"emulator at {self.url}"
            if self.url
            else f"in-process, backend={self.backend}, clock={self.clock}, workers={self.workers}"
        )
        return (
            f"icllm: {server}; profile={self.profile}, seed={self.seed}, tool_policy={self.tool_policy}, "
            f"strict_rules={self.strict_rules}"
        )


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        pairs = (f"{v[0] or 'default'}={v[1]}" if isinstance(v, tuple) else str(v) for v in value)
        return ",".join(pairs) or "-"
    return "-" if value is None else str(value)


def parse_option(name: str, value: Any, origin: str) -> Any:
    """One value, checked; errors say where it came from and what is valid."""
    return BY_NAME[name].check(value, origin)


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
        try:
            take(name, value, f"option {BY_NAME[name].pytest_flag}", trusted=True)
        except SettingError as error:
            if not BY_NAME[name].switch:
                raise
            # `pytest --icllm-strict-rules tests/`: argparse gave the path to the option
            flag = BY_NAME[name].pytest_flag
            raise SettingError(
                f"{error} (alone, {flag} means true: put it after the test paths, or write {flag}=true)"
            ) from None
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
        raise SettingError(
            f"{origin}: unknown setting {', '.join(map(repr, unknown))}; "
            f"valid settings: {', '.join(PER_TEST)}"
        )
    session = sorted(name for name in layer if not BY_NAME[name].per_test)
    if session:
        raise SettingError(
            f"{origin}: {', '.join(session)} is chosen for the whole session; set it with "
            f"{', '.join(BY_NAME[n].pytest_flag for n in session)} or the ini key "
            f"{', '.join(BY_NAME[n].ini for n in session)}"
        )
