"""The settings table is the one declaration: every door's names, defaults and mappings agree with it."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import pytest

from docs.generate import pages
from icllm_emulator._proto.icllm.v1 import control_pb2 as cpb
from icllm_emulator.cli import build_parser
from icllm_emulator.config import config_from_settings
from icllm_emulator.settings import PYTEST, SERVE, SETTINGS, WORKER, Door, SettingError, at, defaults, prices
from pytest_icllm._options import CONFIGURED, Settings

# ConfigureRequest fields that are not one setting: a limit override, and the "clear" switches.
CONFIGURE_EXTRAS = {"limits", "clear_caller_deadline", "billing", "clear_prices"}
# The processes' own settings: a pytest session has no port, port file, grace or log of its own, and
# its in-process emulator always lets the test suite's cassettes and scrubbers be named.
PROCESS_ONLY = {
    "host",
    "grpc_port",
    "ollama_port",
    "port_file",
    "grace",
    "log_level",
    "cassette_paths_anywhere",
    "allow_scrubber_imports",
    "connect",
    "worker_id",
    "poll_seconds",
}


def _flags(parser: argparse.ArgumentParser, command: str) -> dict[str, argparse.Action]:
    (commands,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub = commands.choices[command]
    return {a.option_strings[0]: a for a in sub._actions if a.option_strings and a.dest != "help"}


@pytest.mark.parametrize("door", [SERVE, WORKER], ids=["serve", "worker"])
def test_the_cli_has_one_flag_per_setting_named_after_it(door: Door) -> None:
    flags = _flags(build_parser({}), door.value)
    assert list(flags) == [s.flag for s in at(door)]
    for setting in at(door):
        assert flags[setting.flag].dest == setting.name
        assert f"[env {setting.env}]" in str(flags[setting.flag].help)
        assert setting.flag == "--" + setting.name.replace("_", "-")
        assert setting.env == "ICLLM_" + setting.name.upper()


def test_every_env_var_sets_its_flags_default() -> None:
    environ = {"ICLLM_SEED": "9", "ICLLM_STRICT_RULES": "true", "ICLLM_SCRUB_PATTERNS": "a\nb"}
    args = build_parser(environ).parse_args(["serve"])
    assert (args.seed, args.strict_rules, args.scrub_patterns) == (9, True, ("a", "b"))
    assert build_parser(environ).parse_args(["serve", "--seed", "3"]).seed == 3  # the flag wins


def test_the_plugin_has_every_setting_but_the_processes_own() -> None:
    assert {s.name for s in SETTINGS if PYTEST not in s.doors} == PROCESS_ONLY
    names = [f.name for f in dataclasses.fields(Settings)]
    assert sorted(names) == sorted(s.name for s in at(PYTEST))
    for setting in at(PYTEST):
        assert setting.pytest_flag == "--icllm-" + setting.name.replace("_", "-")
        assert setting.ini == "icllm_" + setting.name
        assert Settings.__dataclass_fields__[setting.name].default in (dataclasses.MISSING, setting.default)


def test_every_per_test_setting_that_configure_changes_names_a_configure_field() -> None:
    fields = set(cpb.ConfigureRequest.DESCRIPTOR.fields_by_name)
    configured = {s.configure for s in SETTINGS if s.configure}
    assert configured <= fields
    assert fields - configured == CONFIGURE_EXTRAS
    # and GetConfig reports each of them under the same name
    reported = set(cpb.EmulatorConfig.DESCRIPTOR.fields_by_name)
    assert configured <= reported
    assert {o.name for o in CONFIGURED} == {s.name for s in SETTINGS if s.per_test and s.configure}


class _Reads(dict[str, Any]):
    """A mapping that remembers which keys were read."""

    read: set[str]

    def __getitem__(self, key: str) -> Any:
        self.read.add(key)
        return super().__getitem__(key)


def test_the_configuration_reads_every_serve_setting() -> None:
    values = _Reads(defaults(SERVE))  # every setting given, so none is read from the defaults
    values.read = set()
    config_from_settings(values, {})
    # the upstream settings are read only when an upstream is given
    assert {s.name for s in at(SERVE)} - values.read == {
        "upstream_api",
        "upstream_timeout",
        "upstream_models",
        "upstream_key_env",
        "log_level",
    }


def test_a_bad_value_names_the_setting_and_what_would_do() -> None:
    with pytest.raises(
        SettingError, match=r"^option --icllm-seed: 'x' is not a whole number \(like 0, 1 or 42\)$"
    ):
        next(s for s in SETTINGS if s.name == "seed").check("x", "option --icllm-seed")


@pytest.mark.parametrize("path", list(pages()), ids=lambda p: p.name)
def test_the_generated_reference_pages_are_fresh(path: Any) -> None:
    assert path.read_text(encoding="utf-8") == pages()[path], "stale: run `make docs`"


def test_configure_changes_each_plain_setting_by_its_own_field() -> None:
    from icllm_emulator.config import EmulatorConfig
    from icllm_emulator.grpc_api.control import PLAIN, config_changes

    assert {"seed", "workers", "strict_requests", "strict_rules", "max_attempts"} | {
        "lease_seconds",
        "queue_capacity",
    } == PLAIN
    request = cpb.ConfigureRequest(seed=5, workers=2, strict_rules=True, lease_seconds=9.5)
    assert config_changes(request, EmulatorConfig()) == {
        "seed": 5,
        "workers": 2,
        "strict_rules": True,
        "lease_seconds": 9.5,
    }


@pytest.mark.parametrize("bad", ["gemma3:27b=\uff15", "gemma3:27b=2000/-1", "gemma3:27b=2000/1 000"])
def test_prices_take_decimal_digits_only(bad: str) -> None:
    with pytest.raises(SettingError, match="is not MODEL=PER_CALL"):
        prices(bad)


BOOLEANS = [s for s in SETTINGS if s.switch]


@pytest.mark.parametrize("setting", [s for s in BOOLEANS if SERVE in s.doors], ids=lambda s: s.name)
def test_a_boolean_flag_alone_means_true_and_its_help_says_what_it_takes(setting: Any) -> None:
    flag = _flags(build_parser({}), "serve")[setting.flag]
    assert "true or false" in str(flag.help)
    assert getattr(build_parser({}).parse_args(["serve", setting.flag]), setting.name) is True
    assert getattr(build_parser({}).parse_args(["serve", setting.flag, "false"]), setting.name) is False


@pytest.mark.parametrize(
    ("given", "mentions"),
    [
        ("http://127.0.0.1:50051", "leave out http://; use HOST:PORT, e.g. 127.0.0.1:50051"),
        ("https://emulator.example:443", "leave out https://"),
        ("127.0.0.1:50051/v1", "use HOST:PORT"),
        ("127.0.0.1:99999", "use HOST:PORT"),
        ("localhost", "use HOST:PORT"),
    ],
)
def test_a_url_that_is_not_a_grpc_address_is_refused_saying_what_would_do(given: str, mentions: str) -> None:
    url = next(s for s in SETTINGS if s.name == "url")
    with pytest.raises(SettingError, match=f"^{given!r} is not a gRPC address.*") as error:
        url.parse(given)
    assert mentions in str(error.value) and "the emulator's gRPC port, not its HTTP one" in str(error.value)
    assert url.parse("grpc://127.0.0.1:50051") == url.parse("127.0.0.1:50051") == "127.0.0.1:50051"
