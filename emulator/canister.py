"""The canister core: one place that decides what the LLM canister accepts and how it rejects.

Every front door hands its decoded request to `Canister.chat`, so gRPC, Candid and HTTP callers meet
exactly the same model catalogue, limits, queue and rejects. Where the real canister's behaviour is not
public, the choice made here is written down in the README ("Choices where the canister is silent").
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Literal

from icllm_emulator.billing import Ledger, Price, Receipt
from icllm_emulator.clock import Clock
from icllm_emulator.config import EmulatorConfig
from icllm_emulator.domain import (
    Answer,
    AssistantMessage,
    ChatRequest,
    Reject,
    RejectCode,
    ToolMessage,
)
from icllm_emulator.history import CallRecord, History
from icllm_emulator.queue import PromptQueue
from icllm_emulator.rules import RuleBook
from icllm_emulator.settings import UnknownModels
from icllm_emulator.tokens import prompt_tokens

# What a paid call may cost is reserved up front; with no output cap, this many answer tokens.
UNCAPPED_RESERVE_TOKENS = 4096


def prompt_bytes(request: ChatRequest) -> int:
    """The size that the 10 KiB limit counts: the UTF-8 bytes of every message's content."""
    return sum(len((message.content or "").encode("utf-8")) for message in request.messages)


def request_warnings(request: ChatRequest) -> list[str]:
    """Oddities that the real canister accepts; recorded, and rejected only with strict requests."""
    warnings = []
    call_ids: set[str] = set()
    for index, message in enumerate(request.messages, start=1):
        if isinstance(message, AssistantMessage):
            call_ids.update(call.id for call in message.tool_calls)
        elif isinstance(message, ToolMessage) and message.tool_call_id not in call_ids:
            warnings.append(
                f"message {index} (tool) answers tool_call_id {message.tool_call_id!r}, "
                "which no earlier assistant message called"
            )
    for tool in request.tools:
        if tool.parameters is None:
            continue
        declared = {p.name for p in tool.parameters.properties}
        for name in tool.parameters.required:
            if name not in declared:
                warnings.append(f"tool {tool.name!r} requires {name!r}, which is not among its properties")
    return warnings


class Canister:
    """Validate, queue, and wait for the answer, as the LLM canister does for each call."""

    def __init__(
        self,
        config: Callable[[], EmulatorConfig],
        clock: Clock,
        queue: PromptQueue,
        rules: RuleBook,
        history: History,
    ) -> None:
        self._config = config
        self.clock = clock
        self.queue = queue
        self.rules = rules
        self.history = history
        self.ledger = Ledger()
        self._ids = itertools.count(1)

    def check(self, request: ChatRequest) -> list[str]:
        """Reject what the canister would reject; return the warnings for what it lets through."""
        config = self._config()
        limits = config.limits
        if request.model not in config.models and config.unknown_models is UnknownModels.REJECT:
            raise Reject(
                RejectCode.CANISTER_REJECT,
                f"unknown model {request.model!r}: this LLM canister serves {', '.join(config.models)}",
            )
        if not request.messages:
            raise Reject(RejectCode.CANISTER_REJECT, "the request has no messages; send at least one")
        count = len(request.messages)
        if limits.max_messages is not None and count > limits.max_messages:
            raise Reject(
                RejectCode.CANISTER_REJECT,
                f"too many messages: the request has {count}, the limit is {limits.max_messages} "
                f"per request (profile {config.profile})",
            )
        size = prompt_bytes(request)
        if limits.max_prompt_bytes is not None and size > limits.max_prompt_bytes:
            raise Reject(
                RejectCode.CANISTER_REJECT,
                f"prompt too large: the messages' content is {size} bytes of UTF-8, the limit is "
                f"{limits.max_prompt_bytes} bytes across all messages (profile {config.profile})",
            )
        warnings = request_warnings(request)
        if warnings and config.strict_requests:
            raise Reject(RejectCode.CANISTER_REJECT, "strict requests: " + "; ".join(warnings))
        return warnings

    async def chat(
        self,
        request: ChatRequest,
        caller: str,
        cycles: int = 0,
        receipt: Receipt | None = None,
        *,
        max_output_tokens: int | None = None,
        deadline: float | Literal["config"] | None = "config",
    ) -> Answer:
        """One call to v0_chat or v1_chat: the answer, or a `Reject` exactly as the caller would see it.

        `cycles` are attached to the call; `receipt`, when given, learns what was charged and refunded.
        `max_output_tokens` lowers the profile's output cap for this call only (an Ollama client's
        `num_predict`); it never raises it. `deadline` is how long a bounded-wait caller waits, in
        seconds (None: a guaranteed-response call waits for good; "config": the caller_deadline setting).
        """
        config = self._config()
        receipt = Receipt(attached=cycles) if receipt is None else receipt
        receipt.attached = cycles
        price = config.prices.get(request.model) if config.charges else None
        if price is None and config.charges and request.model not in config.models:
            price = Price()  # --unknown-models paid: a model outside the catalogue is billed
        call_id = f"call-{next(self._ids):06d}"
        record = self.history.open(
            CallRecord(
                id=call_id,
                api=request.api,
                caller=caller,
                request=request,
                received_at=self.clock.now(),
                input_tokens=prompt_tokens(request),
                receipt=receipt,
            )
        )

        def settle(outcome: Answer | Reject) -> None:
            tokens = record.input_tokens + outcome.output_tokens if isinstance(outcome, Answer) else None
            self.ledger.settle(receipt, caller, price, tokens)
            self.history.job_finished(record)

        try:
            record.warnings = tuple(self.check(request))
            rule = self.rules.select(request)
            if rule is None and config.strict_rules:
                record.unexpected = True
                raise Reject(RejectCode.CANISTER_REJECT, self.rules.explain_miss(request))
            cap = config.limits.max_output_tokens
            if max_output_tokens is not None and (cap is None or max_output_tokens < cap):
                cap = max_output_tokens
            most_tokens = record.input_tokens + (UNCAPPED_RESERVE_TOKENS if cap is None else cap)
            try:
                self.ledger.admit(receipt, caller, request.model, price, most_tokens)
                record.job = job = self.queue.submit(call_id, request, caller, cap, rule, on_finish=settle)
            except Reject:
                if rule is not None:
                    self.rules.refund(rule)
                raise
            wait = config.caller_deadline if deadline == "config" else deadline
            outcome = await self._wait(job.done, record.received_at, wait)
        except Reject as reject:
            if record.job is None:
                settle(reject)
            self.history.close(record, reject)
            raise
        except asyncio.CancelledError:
            # The caller hung up (a cancelled gRPC call); the job, if any, goes on as on the IC.
            self.history.close(record, Reject(RejectCode.SYS_UNKNOWN, "the caller cancelled the call"))
            raise
        except Exception as error:  # a fault of the emulator: the record is closed all the same
            if record.job is None:
                settle(Reject(RejectCode.SYS_FATAL, "the emulator failed"))
            self.history.close(record, Reject(RejectCode.SYS_FATAL, f"the emulator failed: {error!r}"))
            raise
        self.history.close(record, outcome)
        if isinstance(outcome, Reject):
            raise outcome.bare()  # the job's own reject stays free of this call's frames
        return outcome

    def deposit(self, caller: str, cycles: int, beneficiary: str | None = None) -> int:
        """v1_deposit: the attached cycles join the beneficiary's (else the caller's) prepaid balance."""
        return self.ledger.deposit(beneficiary or caller, cycles)

    async def _wait(
        self, done: asyncio.Future[Answer | Reject], since: float, deadline: float | None
    ) -> Answer | Reject:
        """The job's outcome, or SYS_UNKNOWN once a bounded-wait caller's deadline has passed."""
        if deadline is None:
            return await done  # a cancelled caller cancels only its wait: the queue checks done() first
        timer = asyncio.ensure_future(self.clock.sleep_until(since + deadline))
        try:
            await asyncio.wait((done, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
        if done.done():
            return done.result()
        raise Reject(
            RejectCode.SYS_UNKNOWN,
            f"the caller's deadline of {deadline:g} s passed before an AI worker answered; "
            "the prompt may still be answered (bounded-wait call)",
        )
