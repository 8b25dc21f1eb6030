"""Record modes and the settings of a cassette, checked when they are made.

This module stays free of heavy imports: `icllm_emulator.config` (which the pytest plugin imports at start-up)
holds a `CassetteSettings`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from icllm_emulator.errors import IcllmError

DEFAULT_CASSETTE = "default.yaml"
# The parts of a request that must be equal for a recorded answer to be replayed.
DEFAULT_MATCH_ON = ("method", "model", "messages", "tools")
# Every matcher the emulator knows; `matching.register_matcher` adds more at run time.
BUILTIN_MATCHERS = ("method", "model", "messages", "tools", "last_message", "system", "max_output_tokens")


class CassetteSettingsError(IcllmError, ValueError):
    """A cassette setting that cannot work; the message says what would be valid."""


class RecordMode(enum.StrEnum):
    """When a call is answered from the cassette, and when the backend answers and is recorded (as VCR.py).

    - NONE: replay only; a call with no recorded answer is rejected (a miss).
    - ONCE: record every call if the cassette file did not exist yet; otherwise as NONE.
    - NEW_EPISODES: replay what matches; record calls that match nothing.
    - ALL: never replay; every call goes to the backend, and the cassette is recorded anew.
    """

    NONE = "none"
    ONCE = "once"
    NEW_EPISODES = "new_episodes"
    ALL = "all"


def record_mode(value: str | RecordMode, what: str = "record mode") -> RecordMode:
    try:
        return RecordMode(str(value.value if isinstance(value, RecordMode) else value).strip().lower())
    except ValueError:
        valid = ", ".join(mode.value for mode in RecordMode)
        raise CassetteSettingsError(f"{what} {str(value)!r} is not valid; choose one of: {valid}") from None


def check_patterns(patterns: tuple[str, ...]) -> tuple[str, ...]:
    for pattern in patterns:
        if not pattern:
            raise CassetteSettingsError("a scrub pattern is empty: it would match everywhere")
        from icllm_emulator import patterns as regexes  # the regex package, once patterns are given

        try:
            regexes.compiled(pattern)
        except regexes.PatternError as error:
            raise CassetteSettingsError(f"scrub pattern {error}") from None
    return patterns


def check_scrubbers(references: tuple[str, ...]) -> tuple[str, ...]:
    for reference in references:
        module, colon, function = reference.partition(":")
        if not colon or not module.strip() or not function.strip():
            raise CassetteSettingsError(
                f"scrubber {reference!r} is not MODULE:FUNCTION (e.g. mypackage.scrub:drop_debug_calls)"
            )
    return references


@dataclass(frozen=True)
class CassetteSettings:
    """Where cassettes live and how the one in use replays and records.

    `directory` is the folder of `--cassettes`: relative cassette paths are found there (recording and
    replay alike). `cassette` is the emulator's own cassette in that folder, used from start-up and
    after every reset, unless a test loads another one through `Control.UseCassette`.
    """

    directory: str | None = None
    # Whether Control.UseCassette may name a cassette outside `directory` (the pytest plugin's own
    # in-process emulator does: its cassettes live beside the test modules).
    paths_anywhere: bool = False
    # Whether Control.UseCassette may name scrubbers (MODULE:FUNCTION, imported by the emulator) other
    # than those given at start-up; importing a module named by a client runs its code.
    scrubber_imports: bool = False
    cassette: str = DEFAULT_CASSETTE
    record_mode: RecordMode = RecordMode.NONE
    match_on: tuple[str, ...] = DEFAULT_MATCH_ON
    allow_playback_repeats: bool = False
    scrub_patterns: tuple[str, ...] = ()
    # MODULE:FUNCTION references of filter steps of the user's own, imported when a cassette is used.
    scrubbers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "record_mode", record_mode(self.record_mode))
        object.__setattr__(self, "match_on", tuple(self.match_on))
        object.__setattr__(self, "scrub_patterns", check_patterns(tuple(self.scrub_patterns)))
        object.__setattr__(self, "scrubbers", check_scrubbers(tuple(self.scrubbers)))
        if self.directory is not None and not str(self.directory).strip():
            raise CassetteSettingsError("--cassettes is empty: name the folder of the cassettes")
        if not self.cassette.strip():
            raise CassetteSettingsError("--cassette is empty: name the emulator's cassette file")

    @property
    def active(self) -> bool:
        """Whether the emulator uses a cassette from start-up (it does once a folder is given)."""
        return self.directory is not None
