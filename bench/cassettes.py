"""`python -m bench cassettes`: load a cassette of 10,000 interactions and replay every one of them.

Baseline, in the same run and process: the fake backend answering the same requests (the emulator's
fastest backend; replaying must keep up with it). The cassette is recorded first, through the cassette
deck in front of the fake backend, so it holds exactly what the emulator writes: a system prompt and a
question per request (one in ten offering a tool), fake answers of 5 to 400 tokens.

- load: open the cassette for replay (read, parse, check every interaction, index the keys), median
  of the runs; also the same file unsigned, which PyYAML's libyaml loader reads (what a cassette edited
  by hand costs). Target: under 0.5 s.
- replay: every request through `CassetteDeck.answer_now` (canonical key, scrubbing, the O(1) lookup,
  principals put back) against `FakeBackend.answer_now`, rounds interleaved, median rate of each.
  Target: at least 0.9x the fake backend's rate.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from icllm_emulator.backends.fake import FakeBackend
from icllm_emulator.cassettes.deck import CassetteDeck, CassetteSpec
from icllm_emulator.cassettes.format import FAST_READER
from icllm_emulator.cassettes.matching import Matching
from icllm_emulator.cassettes.settings import DEFAULT_MATCH_ON, CassetteSettings, RecordMode
from icllm_emulator.cassettes.store import ActiveCassette
from icllm_emulator.domain import (
    ChatRequest,
    Parameters,
    Property,
    SystemMessage,
    Tool,
    ToolPolicy,
    UserMessage,
)

CAP = 1000
TARGET_LOAD_S = 0.5
TARGET_RATIO = 0.9
TOPICS = ("weather", "trains", "taxes", "recipes", "cycles", "canisters", "poetry", "football")
WEATHER = Tool(
    "get_weather",
    "Current weather in a city",
    Parameters(properties=(Property("city", "string"), Property("days", "integer")), required=("city",)),
)


def requests(count: int) -> list[ChatRequest]:
    return [
        ChatRequest(
            "llama3.1:8b",
            (
                SystemMessage(f"You are an assistant for {TOPICS[n % len(TOPICS)]}. Answer briefly."),
                UserMessage(f"Question {n}: what should I know about {TOPICS[(n * 7) % len(TOPICS)]} today?"),
            ),
            tools=(WEATHER,) if n % 10 == 0 else (),
        )
        for n in range(count)
    ]


def record(path: Path, batch: list[ChatRequest]) -> float:
    deck = CassetteDeck(FakeBackend(tool_policy=ToolPolicy.AUTO), CassetteSettings())
    started = time.perf_counter()
    deck.use(CassetteSpec(path=str(path), record_mode=RecordMode.ONCE))
    for request in batch:
        deck.answer_now(request, CAP)
    deck.eject()
    return time.perf_counter() - started


def load_seconds(path: Path) -> float:
    started = time.perf_counter()
    ActiveCassette(path, RecordMode.NONE, Matching(DEFAULT_MATCH_ON))
    return time.perf_counter() - started


def replay_rate(deck: CassetteDeck, batch: list[ChatRequest]) -> float:
    cassette = deck.active
    assert cassette is not None
    cassette.rewind()
    started = time.perf_counter()
    for request in batch:
        deck.answer_now(request, CAP)
    return len(batch) / (time.perf_counter() - started)


def fake_rate(fake: FakeBackend, batch: list[ChatRequest]) -> float:
    started = time.perf_counter()
    for request in batch:
        fake.answer_now(request, CAP)
    return len(batch) / (time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench cassettes", description=__doc__.split("\n")[0])
    parser.add_argument("--interactions", type=int, default=10_000, help="interactions in the cassette")
    parser.add_argument("--runs", type=int, default=5, help="load and replay runs (the median is shown)")
    args = parser.parse_args(argv)
    batch = requests(args.interactions)
    with tempfile.TemporaryDirectory(prefix="icllm-bench-") as directory:
        path = Path(directory) / "big.yaml"
        recorded_s = record(path, batch)
        size_mb = path.stat().st_size / 1e6
        unsigned = Path(directory) / "unsigned.yaml"
        unsigned.write_text(path.read_text().split("\n", 1)[1])  # no signature line: PyYAML reads it
        loads = [load_seconds(path) for _ in range(args.runs)]
        pyyaml_load = load_seconds(unsigned)

        deck = CassetteDeck(FakeBackend(), CassetteSettings())
        deck.use(CassetteSpec(path=str(path)))
        fake = FakeBackend()
        replays, fakes = [], []
        for _ in range(args.runs):  # interleaved, so a slow spell of the machine hits both
            replays.append(replay_rate(deck, batch))
            fakes.append(fake_rate(fake, batch))
        cassette = deck.active
        assert cassette is not None and not cassette.misses
        cassette.rewind()
        same = all(deck.answer_now(request, CAP) == fake.answer_now(request, CAP) for request in batch)

    load = statistics.median(loads)
    replay, baseline = statistics.median(replays), statistics.median(fakes)
    ratio = replay / baseline
    print(
        f"{args.interactions} interactions, {size_mb:.1f} MB cassette, median of {args.runs} runs, "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, rapidyaml "
        f"{'yes' if FAST_READER else 'not installed'}"
    )
    print(f"recording them (fake backend, scrubbing, YAML, one write): {recorded_s:.2f} s")
    print(
        f"load for replay: {load:.3f} s (best {min(loads):.3f} s); target < {TARGET_LOAD_S} s: "
        f"{'met' if load < TARGET_LOAD_S else 'missed'}"
    )
    print(f"  the same file unsigned (as after a hand edit: PyYAML's libyaml loader): {pyyaml_load:.3f} s")
    print(f"replay: {replay:,.0f} lookups/s; fake backend: {baseline:,.0f} answers/s")
    print(f"every replayed answer is the one the fake backend gives: {'yes' if same else 'NO'}")
    verdict = "met" if ratio >= TARGET_RATIO else "missed"
    print(f"ratio replay/fake: {ratio:.2f}; target >= {TARGET_RATIO}: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
