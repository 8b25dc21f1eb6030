"""One cassette in use: its recordings, its record mode, what it replayed, recorded and missed.

Recordings are kept as YAML fragments (one per interaction, dumped once), so writing the file is a
join and an atomic replace. Writes are coalesced: at most one every `FLUSH_SECONDS` while calls keep
coming, and a last one when the cassette is ejected or the emulator stops, so a burst of calls does
not rewrite a large file per call; a process killed meanwhile leaves the last complete file.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from icllm_emulator.cassettes.format import (
    CassetteError,
    Fragment,
    Interaction,
    _Reader,
    cassette_text,
    dump_interaction,
    load_cassette,
    outcome_doc,
    paused_gc,
    read_interaction,
    recorded_now,
    request_doc,
    write_atomically,
)
from icllm_emulator.cassettes.matching import Index, Matching, Recording, explain_miss
from icllm_emulator.cassettes.scrub import (
    Step,
    has_placeholders,
    restore_principals,
    run_steps,
    scrub_request,
)
from icllm_emulator.cassettes.scrub import __name__ as scrub_module
from icllm_emulator.cassettes.settings import RecordMode
from icllm_emulator.domain import Answer, AssistantMessage, ChatRequest, Reject, RejectCode
from icllm_emulator.tokens import count_tokens, truncate_tokens

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.1
# A transient failure says nothing about the request: replaying it would fail forever where the real
# server would have answered a retry. Such rejects pass through unrecorded.
UNRECORDED_CODES = frozenset({RejectCode.SYS_TRANSIENT, RejectCode.SYS_UNKNOWN})


@dataclass
class CassetteStats:
    """What a cassette did while in use (what `Control.EjectCassette` reports)."""

    path: str = ""
    record_mode: str = ""
    # The mode in effect: `once` on a cassette that exists only replays ("none").
    effective_mode: str = ""
    loaded: int = 0
    replayed: int = 0
    recorded: int = 0
    # Recordings not yet replayed.
    unplayed: int = 0
    # The explanation of every call that found no recorded answer (each was rejected).
    misses: list[str] = field(default_factory=list)
    written: bool = False
    # Files that could not be written, steps that failed.
    errors: list[str] = field(default_factory=list)


def default_hint(mode: RecordMode, exists: bool) -> str:
    if mode is RecordMode.ONCE and exists:
        return (
            "record mode once records only into a cassette that does not exist yet, and this one does: "
            "delete it to record it again, or use record mode new_episodes to add to it"
        )
    return (
        "to record it, use record mode new_episodes (or once for a new cassette, all to record it anew): "
        "`icllm-emulator serve --record-mode MODE`, record_mode in Control.UseCassette, or "
        "`pytest --icllm-record-mode MODE`"
    )


class ActiveCassette:
    """A cassette file opened in a record mode, replaying and recording until it is closed."""

    def __init__(
        self,
        path: Path,
        mode: RecordMode,
        matching: Matching,
        *,
        allow_repeats: bool = False,
        steps: Sequence[Step] = (),
        hint: str = "",
    ) -> None:
        self.path = path
        self.mode = mode
        self.matching = matching
        self.allow_repeats = allow_repeats
        self.steps = tuple(steps)
        self._custom_steps = any(getattr(step, "__module__", None) != scrub_module for step in self.steps)
        self.exists = path.exists()
        self.replays = mode is not RecordMode.ALL
        self.records = mode in (RecordMode.NEW_EPISODES, RecordMode.ALL) or (
            mode is RecordMode.ONCE and not self.exists
        )
        self.hint = hint or default_hint(mode, self.exists)
        if self.exists and not self.replays:
            load_cassette(
                path
            )  # record mode all rewrites the file: only if it is a cassette (else CassetteError)
        loaded = load_cassette(path).interactions if self.exists and self.replays else ()
        with paused_gc():
            self._recordings = [
                self._recording(interaction, n) for n, interaction in enumerate(loaded, start=1)
            ]
        self.index = Index(self._recordings, allow_repeats=allow_repeats)
        # The file is rewritten from these: what it held (new_episodes keeps it) and what was recorded.
        self._kept: list[Recording] = list(self._recordings) if mode is RecordMode.NEW_EPISODES else []
        self._fragments: list[Fragment] = []
        self.misses: list[str] = []
        self.errors: list[str] = []
        self.recorded = 0
        self.written = False
        self._dirty = False
        self._last_write = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def _recording(self, interaction: Interaction, number: int) -> Recording:
        doc = request_doc(interaction.request, interaction.max_output_tokens)
        return Recording(interaction, self.matching.key(doc), number, doc)

    # -- replay ------------------------------------------------------------------------------------

    def _scrubbed(self, raw: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """A live request as a recording of it would read (scrubbed the same way), and its key.

        A user's step works on a copy, so the live request stays as it came; one that fails on a
        request, or leaves it unusable, is passed over for the lookup (the recording reports it).
        """
        if self.steps:
            try:
                doc = scrub_request(copy.deepcopy(raw) if self._custom_steps else raw, self.steps)
                return doc, self.matching.key(doc)
            except Exception:
                pass
        return raw, self.matching.key(raw)

    def live_doc(self, request: ChatRequest, max_output_tokens: int | None) -> dict[str, Any]:
        """The live request as a recording of it would read (scrubbed the same way)."""
        return self._scrubbed(request_doc(request, max_output_tokens))[0]

    def replay(self, request: ChatRequest, max_output_tokens: int | None) -> Answer | Reject | None:
        """The recorded outcome for this request, or None when nothing (left) matches."""
        if not self.replays:
            return None
        raw = request_doc(request, max_output_tokens)
        recording = self.index.take(self._scrubbed(raw)[1])
        if recording is None:
            return None
        interaction = recording.interaction
        outcome = interaction.outcome
        if recording.placeholders is None:
            recording.placeholders = has_placeholders(
                interaction.doc.get("answer", interaction.doc.get("reject"))
            )
        if recording.placeholders:
            outcome = _outcome_from(restore_principals(interaction.doc, raw), str(self.path))
        if isinstance(outcome, Answer):
            outcome = _capped(outcome, max_output_tokens, interaction.max_output_tokens)
        return outcome

    def miss(self, request: ChatRequest, max_output_tokens: int | None) -> Reject:
        """Explain a miss, remember it for the stats, and reject the call with the explanation."""
        explanation = explain_miss(
            self.live_doc(request, max_output_tokens),
            self.matching,
            self.index,
            cassette=str(self.path),
            mode=self.mode.value,
            exists=self.exists,
            hint=self.hint,
        )
        self.misses.append(explanation)
        return Reject(RejectCode.CANISTER_REJECT, explanation)

    # -- record ------------------------------------------------------------------------------------

    def record(
        self,
        request: ChatRequest,
        max_output_tokens: int | None,
        outcome: Answer | Reject,
        details: Mapping[str, Any],
    ) -> None:
        """Add the call to the cassette (scrubbed), unless it is a transient reject or a step drops it."""
        if isinstance(outcome, Reject) and outcome.code in UNRECORDED_CODES:
            return
        kind, body = outcome_doc(outcome)
        doc: dict[str, Any] = {
            "request": request_doc(request, max_output_tokens),
            kind: body,
            "recorded": {"at": recorded_now(), **details},
        }
        try:
            scrubbed = run_steps(doc, self.steps)
            if scrubbed is None:
                return
            read_interaction(scrubbed, f"{self.path} (a scrub step's result)", self.recorded)
            fragment = dump_interaction(scrubbed)
        except Exception as error:  # a user's step: the call keeps its answer, the stats say what failed
            self._error(f"not recorded: {type(error).__name__}: {error}")
            return
        self._fragments.append(fragment)
        self.recorded += 1
        self._dirty = True
        self._schedule_write()

    def _schedule_write(self) -> None:
        """Write now if the last write is FLUSH_SECONDS old; else once that time has passed (on the
        event loop), or at the next recording or `close` (without one)."""
        if self._timer is not None:
            return
        wait = self._last_write + FLUSH_SECONDS - time.monotonic()
        if wait <= 0:
            self.flush()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._timer = loop.call_later(wait, self._timed_flush)

    def _timed_flush(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Write the cassette now if anything was recorded since the last write."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._dirty:
            return
        if self._kept:  # dumped once, at the first write; later writes reuse the text
            self._fragments[:0] = [dump_interaction(r.interaction.doc) for r in self._kept]
            self._kept = []
        try:
            write_atomically(self.path, cassette_text(self._fragments))
        except OSError as error:
            self._error(f"cannot write {self.path}: {error.strerror or error}")
            return
        self._dirty = False
        self.written = True
        self._last_write = time.monotonic()

    def _error(self, message: str) -> None:
        log.error("cassette %s: %s", self.path, message)
        self.errors.append(message)

    # -- lifecycle ---------------------------------------------------------------------------------

    def rewind(self) -> None:
        """Replay from the start again (a reset): every recording is available once more."""
        self.index = Index(self._recordings, allow_repeats=self.allow_repeats)
        self.misses = []

    def close(self) -> CassetteStats:
        self.flush()
        return self.stats()

    def stats(self) -> CassetteStats:
        effective = self.mode.value
        if self.mode is RecordMode.ONCE and self.exists:
            effective = RecordMode.NONE.value
        return CassetteStats(
            path=str(self.path),
            record_mode=self.mode.value,
            effective_mode=effective,
            loaded=len(self._recordings),
            replayed=self.index.replayed,
            recorded=self.recorded,
            unplayed=self.index.unplayed,
            misses=list(self.misses),
            written=self.written,
            errors=list(self.errors),
        )


def _outcome_from(doc: Mapping[str, Any], where: str) -> Answer | Reject:
    reader = _Reader(where)
    if "answer" in doc:
        return reader.answer(doc["answer"], "answer")
    return reader.reject(doc["reject"], "reject")


def _capped(answer: Answer, cap: int | None, recorded_cap: int | None) -> Answer:
    """An answer recorded under a larger token cap is cut at this call's cap, as the canister would."""
    if cap is None or answer.message.content is None or (recorded_cap is not None and cap >= recorded_cap):
        return answer
    content, cut = truncate_tokens(answer.message.content, cap)
    if not cut:
        return answer
    message = AssistantMessage(content=content, tool_calls=answer.message.tool_calls)
    return Answer(message, output_tokens=count_tokens(content), truncated=True)


__all__ = ["ActiveCassette", "CassetteError", "CassetteStats", "default_hint"]
