"""The llama backend: real quantized inference on GGUF models, through llama-cpp-python.

This is the only module that imports `llama_cpp` (an optional extra, `pytest-icllm[llama]`); without
it, choosing the backend fails at start-up with the command that installs it.

- Each model (`--model NAME=PATH`) is loaded once, before the emulator reports SERVING; a missing,
  foreign or corrupt file is a start-up error, never a failure at the first prompt.
- One `Llama` object per model serves every worker of the process, one request at a time, in its own
  thread, so the event loop keeps answering health, control and fake calls while a model generates.
  (A copy per worker was measured: each costs a whole context's memory again, and two requests at once
  ran 0.97x to 1.28x as fast on two copies as on one shared copy, on 2 CPUs; see the README.)
- Determinism: greedy decoding (temperature 0), a fixed seed, and the context, batch and thread counts
  pinned; the KV cache is cleared before every request, so no answer depends on the ones before it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from icllm_emulator.backends import LLAMA_INSTALL_HINT as INSTALL_HINT
from icllm_emulator.config import ConfigError

# Before the chat-template module, which imports jinja2: every package of the extra is checked here.
try:
    import jinja2  # noqa: F401
    import llama_cpp
except ImportError as missing:
    raise ConfigError(f"{INSTALL_HINT}; importing it failed: {missing}") from None

from icllm_emulator.backends import Backend
from icllm_emulator.backends.fake import canonical_request
from icllm_emulator.backends.llama_chat import (
    LLAMA_31_TEMPLATE,
    ChatTemplate,
    TemplateError,
    parse_tool_calls,
)
from icllm_emulator.domain import (
    Answer,
    AssistantMessage,
    ChatRequest,
    Reject,
    RejectCode,
    ToolPolicy,
)

__all__ = ["INSTALL_HINT", "LlamaBackend", "LlamaSettings", "check_model_file", "template_for"]

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"


def default_threads() -> int:
    """Half the logical CPUs (llama-cpp-python's own choice for generation), at most 8.

    llama.cpp's threads wait for each other at every step, spinning: one that the OS descheduled stalls
    the rest. With every CPU taken, any other busy process (the server itself, a test run beside it)
    slowed generation here tenfold; with half of them it was as fast, and steady.
    """
    return max(1, min((os.cpu_count() or 2) // 2, 8))


@dataclass(frozen=True)
class LlamaSettings:
    """The llama.cpp settings that decide an answer's bytes, pinned so a request always gets the same one.

    `n_ctx` holds prompt and answer: a 10 KiB English prompt is about 2,500 tokens, plus the 1,000-token
    cap. `n_batch` changes the arithmetic of prompt processing, so it is fixed too. The repeat penalty
    (Ollama's and llama-cpp-python's chat default) keeps greedy decoding out of loops on small models.
    """

    n_ctx: int = 4096
    n_batch: int = 512
    n_threads: int = field(default_factory=default_threads)
    seed: int = 0
    temperature: float = 0.0
    repeat_penalty: float = 1.1
    # Model instances per model: one `Llama` answers one request at a time, so N callers in parallel
    # need N instances (each its own context and KV cache; the weights are memory-mapped, shared).
    instances: int = 1

    def llama_kwargs(self) -> dict[str, Any]:
        """The constructor arguments of `llama_cpp.Llama` these settings stand for."""
        return {
            "n_ctx": self.n_ctx,
            "n_batch": self.n_batch,
            "n_ubatch": self.n_batch,
            "n_threads": self.n_threads,
            "n_threads_batch": self.n_threads,
            "seed": self.seed,
            "verbose": False,
        }

    def sampling_kwargs(self) -> dict[str, Any]:
        """The sampling arguments of `Llama.generate` these settings stand for (the seed is set apart)."""
        return {"temp": self.temperature, "repeat_penalty": self.repeat_penalty}


def check_model_file(name: str, path: str) -> Path:
    """The model file, if it exists and starts like a GGUF file; otherwise a ConfigError saying why."""
    file = Path(path).expanduser()
    fix = f"give --model {name}=PATH with the path of a GGUF file"
    if not file.exists():
        raise ConfigError(f"model {name!r}: no file at {path}; {fix}")
    if not file.is_file():
        raise ConfigError(f"model {name!r}: {path} is not a file; {fix}")
    try:
        with file.open("rb") as handle:
            magic = handle.read(len(GGUF_MAGIC))
    except OSError as error:
        raise ConfigError(f"model {name!r}: cannot read {path}: {error.strerror}") from None
    if magic != GGUF_MAGIC:
        raise ConfigError(
            f"model {name!r}: {path} is not a GGUF file (it does not start with {GGUF_MAGIC!r}); "
            "llama.cpp loads GGUF models, such as the Q4 files Ollama and Hugging Face distribute"
        )
    return file


def template_for(metadata: Mapping[str, str], *, bos_token: str, eos_token: str) -> ChatTemplate | None:
    """The model's own chat template; the Llama 3.1 format for a Llama model without one; else None."""
    source = metadata.get("tokenizer.chat_template")
    if source:
        return ChatTemplate(source, "GGUF metadata", bos_token=bos_token, eos_token=eos_token)
    if metadata.get("general.architecture") == "llama":
        return ChatTemplate(LLAMA_31_TEMPLATE, "Llama 3.1 fallback", bos_token=bos_token, eos_token=eos_token)
    return None


@dataclass(frozen=True)
class Completion:
    """What a model wrote: its text, its length in the model's tokens, and why it stopped."""

    text: str
    tokens: int
    # "stop": the model ended its answer; "length": it was cut at the cap (or the context's end).
    finish_reason: str
    prompt_tokens: int = 0


def _token_text(llama: llama_cpp.Llama, token: int) -> str:
    if token < 0:
        return ""
    return llama.detokenize([token], special=True).decode("utf-8", errors="replace")


class _Model:
    """One GGUF model: its `Llama` object, its template, and the one thread that runs it."""

    def __init__(self, name: str, path: Path, settings: LlamaSettings) -> None:
        self.name = name
        self.path = path
        self.settings = settings
        self.llama: llama_cpp.Llama | None = None
        self.template: ChatTemplate | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"llama-{name}")
        # The executor already runs one job at a time; the lock says so to any other caller.
        self.lock = threading.Lock()

    def load(self) -> None:
        if self.llama is not None:
            return
        size_mb = self.path.stat().st_size / 1e6
        log.info("loading model %s from %s (%.1f MB)", self.name, self.path, size_mb)
        started = time.perf_counter()
        try:
            llama = llama_cpp.Llama(model_path=str(self.path), **self.settings.llama_kwargs())
        except (ValueError, RuntimeError, OSError) as error:
            raise ConfigError(
                f"model {self.name!r}: llama.cpp cannot load {self.path} ({error}); is it a complete GGUF "
                "file of a model architecture llama.cpp supports?"
            ) from None
        metadata = dict(llama.metadata)
        try:
            template = template_for(
                metadata,
                bos_token=_token_text(llama, llama.token_bos()),
                eos_token=_token_text(llama, llama.token_eos()),
            )
        except TemplateError as error:
            llama.close()
            raise ConfigError(f"model {self.name!r}: {self.path}: {error}") from None
        if template is None:
            llama.close()
            architecture = metadata.get("general.architecture", "unknown")
            raise ConfigError(
                f"model {self.name!r}: {self.path} has no chat template in its metadata, and only Llama "
                f"models get the Llama 3.1 format by default (this one is {architecture!r})"
            )
        self.llama, self.template = llama, template
        log.info(
            "loaded model %s in %.2f s (%.1f MB, chat template: %s, context %d tokens, threads %d)",
            self.name,
            time.perf_counter() - started,
            size_mb,
            template.origin,
            self.settings.n_ctx,
            self.settings.n_threads,
        )

    def complete(self, prompt: str, max_tokens: int | None, cancel: threading.Event) -> Completion:
        """Generate from a fresh context, at most `max_tokens` tokens (runs in this model's thread).

        The loop is llama-cpp-python's own `create_completion` loop, except that it counts every token
        (that one lets a character split across tokens run past `max_tokens`) and stops at `cancel`.
        """
        with self.lock:
            llama = self.llama
            assert llama is not None, "the model is not loaded"
            prompt_tokens = llama.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
            room = self.settings.n_ctx - len(prompt_tokens)
            if room <= 0:
                raise Reject(
                    RejectCode.CANISTER_REJECT,
                    f"the prompt is {len(prompt_tokens)} tokens once laid out by model {self.name!r}'s chat "
                    f"template; its context holds {self.settings.n_ctx} tokens, prompt and answer together",
                )
            limit = room if max_tokens is None else min(max_tokens, room)
            vocab = llama_cpp.llama_model_get_vocab(llama.model)
            output: list[int] = []
            finish_reason = "length"
            # A fresh context: reusing the previous request's cache would change the arithmetic.
            llama.reset()  # type: ignore[no-untyped-call]
            llama.set_seed(self.settings.seed)
            for token in llama.generate(prompt_tokens, **self.settings.sampling_kwargs()):
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    finish_reason = "stop"
                    break
                output.append(token)
                if len(output) >= limit or cancel.is_set():
                    break
            text = llama.detokenize(output, prev_tokens=prompt_tokens).decode("utf-8", errors="ignore")
        return Completion(text, len(output), finish_reason, len(prompt_tokens))

    def close(self) -> None:
        self.executor.shutdown(wait=True)
        if self.llama is not None:
            self.llama.close()
            self.llama = None


class LlamaBackend(Backend):
    """Answers with llama.cpp on the GGUF file of the request's model."""

    name: str = "llama"

    def __init__(self, model_files: Iterable[tuple[str, str]], settings: LlamaSettings | None = None) -> None:
        """Check every file now (cheap); `load` reads them."""
        self.settings = settings or LlamaSettings()
        self.models: dict[str, _Model] = {}
        for name, path in model_files:
            if name in self.models:
                raise ConfigError(f"model {name!r} is given two GGUF files; give each model one --model")
            self.models[name] = _Model(name, check_model_file(name, path), self.settings)
        if not self.models:
            raise ConfigError("the llama backend needs a GGUF file: give --model NAME=PATH (or a bare PATH)")
        if self.settings.instances < 1:
            raise ConfigError(f"llama instances must be 1 or more per model, got {self.settings.instances}")
        self._cancels: set[threading.Event] = set()
        self._loaded = asyncio.Lock()
        # Every instance of each model (the first is `models[name]`), and the idle ones, by model.
        self._instances: dict[str, list[_Model]] = {
            name: [model]
            + [_Model(name, model.path, self.settings) for _ in range(self.settings.instances - 1)]
            for name, model in self.models.items()
        }
        self._idle: dict[str, asyncio.Queue[_Model]] | None = None

    def reconfigure(self, seed: int, tool_policy: ToolPolicy) -> None:
        """A new seed reaches every instance of every model (set before each generation)."""
        if seed != self.settings.seed:
            self.settings = dataclasses.replace(self.settings, seed=seed)
            for instances in self._instances.values():
                for instance in instances:
                    instance.settings = self.settings

    async def load(self) -> None:
        """Load every instance of every model, each in its own thread, so the event loop keeps serving."""
        async with self._loaded:
            loop = asyncio.get_running_loop()
            for instances in self._instances.values():
                await asyncio.gather(*(loop.run_in_executor(m.executor, m.load) for m in instances))
            if self._idle is None:
                self._idle = {}
                for name, instances in self._instances.items():
                    queue: asyncio.Queue[_Model] = asyncio.Queue()
                    for instance in instances:
                        queue.put_nowait(instance)
                    self._idle[name] = queue

    async def generate(self, request: ChatRequest, max_output_tokens: int | None) -> Answer:
        model = self.models.get(request.model)
        if model is None:
            raise Reject(
                RejectCode.CANISTER_REJECT,
                f"model {request.model!r} has no GGUF file in this emulator (models with one: "
                f"{', '.join(self.models)}); start it with --model {request.model}=PATH to serve it",
            )
        if model.template is None or self._idle is None:
            await self.load()
        assert model.template is not None and self._idle is not None
        if max_output_tokens == 0:
            return Answer(AssistantMessage(content=""), output_tokens=0, truncated=True)
        try:
            prompt = model.template.render(request)
        except TemplateError as error:
            raise Reject(RejectCode.CANISTER_REJECT, f"model {request.model!r}: {error}") from None
        cancel = threading.Event()
        self._cancels.add(cancel)
        idle = self._idle[request.model]
        instance = await idle.get()  # an instance of its own for this call (they are alike)
        try:
            completion = await asyncio.wrap_future(
                instance.executor.submit(instance.complete, prompt, max_output_tokens, cancel)
            )
        except asyncio.CancelledError:
            cancel.set()  # stops the generation at its next token; nobody waits for it any more
            raise
        finally:
            self._cancels.discard(cancel)
            idle.put_nowait(instance)
        id_seed = hashlib.sha256(canonical_request(request).encode("utf-8")).hexdigest()
        return Answer(
            parse_tool_calls(completion.text, request.tools, id_seed),
            output_tokens=completion.tokens,
            truncated=completion.finish_reason == "length",
        )

    async def aclose(self) -> None:
        """Stop generations in progress at their next token, then free the models."""
        for cancel in list(self._cancels):
            cancel.set()
        for instances in self._instances.values():
            for model in instances:
                await asyncio.to_thread(model.close)
