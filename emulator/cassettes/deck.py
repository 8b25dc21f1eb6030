"""Record and replay in front of whichever backend serves: the emulator's cassette deck.

The engine puts every backend behind a `CassetteDeck`. With no cassette in use it passes each job
through to the backend it wraps. With one (from `--cassettes DIR`, or loaded by `Control.UseCassette`
for one test), it answers from the recordings, asks the backend and records, or rejects a miss, as the
cassette's record mode says. `--backend replay` is the deck with no backend behind it: it only replays.

Scripted rules are answered by the workers before any backend, so scripted answers are never recorded
(they are the test's own script) and never replayed from a cassette.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from icllm_emulator.backends import Backend
from icllm_emulator.cassettes.settings import CassetteSettings, CassetteSettingsError, RecordMode, record_mode
from icllm_emulator.config import ConfigError
from icllm_emulator.domain import Answer, ChatRequest, Reject, RejectCode, ToolPolicy

# The cassette files' machinery (PyYAML, rapidyaml, matching, scrubbing) is imported with the first
# cassette: an emulator or a test session that uses none never loads it.
if TYPE_CHECKING:
    from icllm_emulator.cassettes.scrub import Step
    from icllm_emulator.cassettes.store import ActiveCassette, CassetteStats

log = logging.getLogger(__name__)

NO_CASSETTE = (
    "the replay backend answers from cassettes only, and no cassette is in use: start the emulator with "
    "--cassettes DIR (it then replays DIR/{cassette}), or load one with Control.UseCassette "
    "(pytest: @pytest.mark.icllm(cassette=True))"
)


@dataclass(frozen=True)
class CassetteSpec:
    """Which cassette to use and how (`Control.UseCassette`, or the start-up settings)."""

    path: str
    record_mode: RecordMode = RecordMode.NONE
    match_on: tuple[str, ...] = ()
    allow_playback_repeats: bool = False
    scrub_patterns: tuple[str, ...] = ()
    scrubbers: tuple[str, ...] = ()
    # Appended to every miss's explanation instead of the emulator's own advice (the plugin's words).
    miss_hint: str = ""


MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255


def check_path(path: str) -> None:
    """A cassette path the file system can take, or a `ConfigError` that says what is wrong with it."""
    if not path.strip():
        raise ConfigError("the cassette path is empty: name a .yaml file")
    if "\0" in path:
        raise ConfigError("the cassette path contains a NUL byte, which no file name may hold")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise ConfigError(
            f"the cassette path is {len(path)} characters; paths are at most {MAX_PATH_BYTES} bytes"
        )
    long = next(
        (part for part in Path(path).parts if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES),
        None,
    )
    if long is not None:
        raise ConfigError(
            f"the cassette path has a name of {len(long)} characters; "
            f"names are at most {MAX_NAME_BYTES} bytes"
        )


class CassetteDeck(Backend):
    """A backend that replays and records through the cassette in use, in front of `inner`."""

    def __init__(self, inner: Backend | None, settings: CassetteSettings) -> None:
        self.inner = inner
        self.name = inner.name if inner is not None else "replay"
        self.settings = settings
        self._startup: ActiveCassette | None = None
        self._active: ActiveCassette | None = None
        if settings.active:
            self._startup = self._active = self._open(
                CassetteSpec(
                    path=settings.cassette,
                    record_mode=settings.record_mode,
                    match_on=settings.match_on,
                    allow_playback_repeats=settings.allow_playback_repeats,
                    scrub_patterns=settings.scrub_patterns,
                    scrubbers=settings.scrubbers,
                )
            )

    @property
    def active(self) -> ActiveCassette | None:
        return self._active

    # -- choosing the cassette ---------------------------------------------------------------------

    def resolve(self, path: str) -> Path:
        """A relative path is found in `--cassettes` (or the emulator's working directory)."""
        given = Path(path).expanduser()
        if not given.is_absolute() and self.settings.directory is not None:
            given = Path(self.settings.directory).expanduser() / given
        return given.absolute()

    def _open(self, spec: CassetteSpec, *, confined: bool = False) -> ActiveCassette:
        from icllm_emulator.cassettes.format import SUFFIXES, CassetteError
        from icllm_emulator.cassettes.matching import MatchError, Matching
        from icllm_emulator.cassettes.scrub import ScrubError
        from icllm_emulator.cassettes.store import ActiveCassette

        check_path(spec.path)
        path = self.resolve(spec.path)
        unregistered = [s for s in spec.scrubbers if s not in self.settings.scrubbers]
        if confined and unregistered and not self.settings.scrubber_imports:
            raise ConfigError(
                f"scrubber {unregistered[0]!r} was not given at start-up: a cassette named over Control "
                "may use the scrubbers of --scrubber only (importing a module a client names would run "
                "its code); "
                "start the emulator with --allow-scrubber-imports to allow any"
            )
        if confined and not self.settings.paths_anywhere:
            base = Path(self.settings.directory or ".").expanduser().resolve()
            if not path.resolve().is_relative_to(base):
                raise ConfigError(
                    f"cassette {path} is outside the cassette folder {base}: a cassette named over Control "
                    "must be in the folder of --cassettes (or the working directory without it); start the "
                    "emulator with --cassette-paths-anywhere to allow any path"
                )
        if path.suffix not in SUFFIXES:
            raise ConfigError(
                f"cassette {path}: a cassette is a YAML file; give a path ending in .yaml or .yml"
            )
        if path.is_dir():
            raise ConfigError(f"cassette {path} is a folder; give the path of a .yaml file")
        try:
            mode = record_mode(spec.record_mode)
        except CassetteSettingsError as error:
            raise ConfigError(str(error)) from None
        if self.inner is None and mode is not RecordMode.NONE:
            raise ConfigError(
                f"record mode {mode.value} needs a backend to record from, and the replay backend only "
                "replays: start the emulator with the backend that should answer (fake, llama or proxy) "
                "and --record-mode, or use record mode none"
            )
        try:
            matching = Matching(spec.match_on or self.settings.match_on)
            steps = self._steps(spec)
            return ActiveCassette(
                path,
                mode,
                matching,
                allow_repeats=spec.allow_playback_repeats,
                steps=steps,
                hint=spec.miss_hint,
            )
        except (CassetteError, MatchError, ScrubError) as error:
            raise ConfigError(str(error)) from None

    def _steps(self, spec: CassetteSpec) -> list[Step]:
        from icllm_emulator.cassettes.scrub import default_steps, load_scrubber

        secrets: Iterable[str] = getattr(self.inner, "secrets", ())
        steps = default_steps(spec.scrub_patterns, secrets)
        steps.extend(load_scrubber(reference) for reference in spec.scrubbers)
        return steps

    def use(self, spec: CassetteSpec, *, confined: bool = False) -> ActiveCassette:
        """Use this cassette from now on (the one a previous `use` loaded is written and closed).

        `confined` (a client's request, over Control): the path must lie in the cassette folder and the
        scrubbers must be the start-up ones, unless the emulator allows others.
        """
        cassette = self._open(spec, confined=confined)
        self._close_loaded()
        self._active = cassette
        return cassette

    def eject(self) -> CassetteStats:
        """Stop using the cassette `use` loaded (back to the start-up one); its stats, after writing it."""
        if self._active is None or self._active is self._startup:
            from icllm_emulator.cassettes.store import CassetteStats

            return CassetteStats()
        loaded, self._active = self._active, self._startup
        try:
            return loaded.close()
        except Exception as error:
            raise ConfigError(
                f"the cassette {loaded.path} is ejected, but it could not be written: {error}"
            ) from None

    def reset(self) -> None:
        """Back to the start-up cassette, replaying from its beginning; a loaded one is written first."""
        self._close_loaded()
        self._active = self._startup
        if self._startup is not None:
            self._startup.flush()
            self._startup.rewind()

    def _close_loaded(self) -> None:
        """Write and close the cassette `use` loaded; if that fails, it is still let go (and logged)."""
        loaded, self._active = self._active, self._startup
        if loaded is not None and loaded is not self._startup:
            try:
                loaded.close()
            except Exception:
                log.exception("could not write the cassette %s; it is closed without it", loaded.path)

    # -- answering ---------------------------------------------------------------------------------

    def _details(self, request: ChatRequest) -> dict[str, Any]:
        details: dict[str, Any] = {"backend": self.name, "model": request.model}
        describe = getattr(self.inner, "recording_details", None)
        if describe is not None:
            extra: Mapping[str, Any] = describe(request)
            details.update(extra)
        return details

    def _without_cassette(self) -> Reject:
        return Reject(RejectCode.CANISTER_REJECT, NO_CASSETTE.format(cassette=self.settings.cassette))

    def answer_now(self, request: ChatRequest, max_output_tokens: int | None) -> Answer | None:
        """The answer when it needs no waiting (a replay, or a backend that answers at once); else None.

        Raises the `Reject` the caller should get: a recorded reject, or a miss.
        """
        cassette = self._active
        if cassette is None:
            if self.inner is None:
                raise self._without_cassette()
            return self.inner.answer_now(request, max_output_tokens)
        outcome = cassette.replay(request, max_output_tokens)
        if outcome is not None:
            return _deliver(outcome)
        if not cassette.records or self.inner is None:
            raise cassette.miss(request, max_output_tokens)
        inner = self.inner
        return self._record(
            cassette, request, max_output_tokens, lambda: inner.answer_now(request, max_output_tokens)
        )

    async def generate(self, request: ChatRequest, max_output_tokens: int | None) -> Answer:
        cassette = self._active
        if cassette is None:
            if self.inner is None:
                raise self._without_cassette()
            return await self.inner.generate(request, max_output_tokens)
        outcome = cassette.replay(request, max_output_tokens)
        if outcome is not None:
            return _deliver(outcome)
        if not cassette.records or self.inner is None:
            raise cassette.miss(request, max_output_tokens)
        try:
            answer = await self.inner.generate(request, max_output_tokens)
        except Reject as reject:
            cassette.record(request, max_output_tokens, reject, self._details(request))
            raise
        cassette.record(request, max_output_tokens, answer, self._details(request))
        return answer

    def _record(
        self, cassette: ActiveCassette, request: ChatRequest, max_output_tokens: int | None, call: Any
    ) -> Answer | None:
        """The answer of `call()`, recorded; None (the backend needs time: the worker's `generate`
        records it) is not."""
        try:
            answer: Answer | None = call()
        except Reject as reject:
            cassette.record(request, max_output_tokens, reject, self._details(request))
            raise
        if answer is not None:
            cassette.record(request, max_output_tokens, answer, self._details(request))
        return answer

    # -- lifecycle ---------------------------------------------------------------------------------

    async def load(self) -> None:
        if self.inner is not None:
            await self.inner.load()

    def reconfigure(self, seed: int, tool_policy: ToolPolicy) -> None:
        if self.inner is not None:
            self.inner.reconfigure(seed, tool_policy)

    async def aclose(self) -> None:
        """Write every cassette in use, then close the backend behind."""
        for cassette in {id(c): c for c in (self._active, self._startup) if c is not None}.values():
            cassette.flush()
        if self.inner is not None:
            await self.inner.aclose()


def _deliver(outcome: Answer | Reject) -> Answer:
    if isinstance(outcome, Reject):
        raise outcome
    return outcome


__all__ = ["CassetteDeck", "CassetteSpec"]
