"""The engine: clock, queue, rules, history, canister core, backend and built-in workers, wired once.

The CLI process, the pytest plugin and in-memory tests all build this same object; the front doors
only translate wire formats to calls of its facade (`chat`, `deposit`, `add_rule`, `release`, ...),
which take and give domain types.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from icllm_emulator import candid
from icllm_emulator.backends import Backend
from icllm_emulator.backends.fake import FakeBackend
from icllm_emulator.billing import Receipt
from icllm_emulator.canister import Canister
from icllm_emulator.cassettes.deck import CassetteDeck, CassetteSpec
from icllm_emulator.clock import VirtualClock, make_clock
from icllm_emulator.config import ConfigError, EmulatorConfig
from icllm_emulator.domain import Answer, ChatRequest, Reject
from icllm_emulator.history import CallRecord, History, Stats
from icllm_emulator.outcalls import OutcallBook
from icllm_emulator.queue import Job, PromptQueue
from icllm_emulator.rules import Rule, RuleBook, RuleState, load_rules
from icllm_emulator.runtime.errors import CanisterReject
from icllm_emulator.settings import BackendKind
from icllm_emulator.workers import QueueSource, Worker, outcome_now

if TYPE_CHECKING:
    from icllm_emulator.cassettes.store import ActiveCassette, CassetteStats
    from icllm_emulator.runtime import CanisterRuntime, InstallSettings


def make_backend(config: EmulatorConfig) -> Backend:
    if config.backend is BackendKind.FAKE:
        return FakeBackend(seed=config.seed, tool_policy=config.tool_policy)
    if config.backend is BackendKind.LLAMA:
        # Imported here: it imports llama_cpp, an optional extra (a ConfigError says how to install it).
        from icllm_emulator.backends.llama import LlamaBackend, LlamaSettings

        return LlamaBackend(
            config.model_files, LlamaSettings(seed=config.seed, instances=config.llama_instances)
        )
    if config.backend is BackendKind.PROXY and config.upstream is not None:
        from icllm_emulator.backends.proxy import ProxyBackend  # imports httpx

        return ProxyBackend(config.upstream)
    raise ConfigError(f"backend {config.backend!r} is not available")


class Engine:
    """One emulated LLM canister. Must be created and used inside a running event loop."""

    def __init__(self, config: EmulatorConfig, clock: VirtualClock | None = None) -> None:
        """`clock`: one the caller made (a PocketIC instance's starts at the IC's genesis), else the
        configuration's."""
        self.initial_config = config
        self.config = config
        self.clock = make_clock(config.clock) if clock is None else clock
        # Every backend answers through the cassette deck: it passes jobs through while no cassette is
        # in use, and replays and records when one is (the replay backend is the deck with none behind).
        inner = None if config.backend is BackendKind.REPLAY else make_backend(config)
        self.cassettes = CassetteDeck(inner, config.cassettes)
        self.backend: Backend = self.cassettes
        self.queue = PromptQueue(
            self.clock,
            capacity=config.queue_capacity,
            max_attempts=config.max_attempts,
            lease_seconds=config.lease_seconds,
            outcome_now=self._outcome_now,
        )
        self.rules = RuleBook()
        self.history = History(config.history_limit, config.history_bytes)
        self.canister = Canister(lambda: self.config, self.clock, self.queue, self.rules, self.history)
        self.outcalls = OutcallBook(strict=config.strict_outcalls, allow_loopback=config.outcalls_loopback)
        self._runtime: CanisterRuntime | None = None
        self._startup_canisters: list[tuple[str, bytes]] = []
        self._workers: dict[str, asyncio.Task[None]] = {}  # the built-in workers, by id
        self._worker_ids = 0
        self._load_rule_file()

    def _outcome_now(self, job: Job) -> Answer | Reject | None:
        """The queue's fast path: the outcome a built-in worker would give at once (`outcome_now`)."""
        return outcome_now(job.rule, job.request, job.max_output_tokens, self.backend, waited=False)

    @property
    def runtime(self) -> CanisterRuntime:
        """The canister runtime: canister modules installed beside the LLM canister, calling it in-process."""
        if self._runtime is None:
            from icllm_emulator.runtime import CanisterRuntime, llm

            self._runtime = CanisterRuntime(
                self.clock,
                llm.in_process(self.call_candid),
                seed=self.config.seed,
                time_limit=self.config.canister_time_limit,
                memory_limit=self.config.canister_memory_limit,
                outcalls=self.outcalls,
            )
        return self._runtime

    def _load_rule_file(self) -> None:
        if self.config.rules_file:
            for rule in load_rules(Path(self.config.rules_file)):
                self.rules.add(rule)

    async def load(self) -> None:
        """Make the backend ready (a model backend loads its files here), before any worker starts;
        install the start-up canisters."""
        await self.backend.load()
        for name, path in self.config.canisters:
            try:
                wasm = Path(path).read_bytes()
            except OSError as error:
                raise ConfigError(
                    f"--canister {name}={path}: cannot read the module: {error.strerror}"
                ) from None
            try:
                await self.runtime.install_async(wasm, self._startup_settings(name))
            except (ValueError, CanisterReject) as error:
                raise ConfigError(f"--canister {name}={path}: {error}") from None
            self._startup_canisters.append((name, wasm))

    @staticmethod
    def _startup_settings(name: str) -> InstallSettings:
        from icllm_emulator.runtime import InstallSettings  # wasmtime is imported once canisters are used

        return InstallSettings(name=name)

    @property
    def startup_canisters(self) -> dict[str, str]:
        """The start-up canisters' ids by name (they keep their ids across a reset)."""
        if self._runtime is None:
            return {}
        return {
            c.name: c.id for c in self._runtime.canisters.values() if c.name in dict(self._startup_canisters)
        }

    def start(self) -> None:
        self._scale_workers(self.config.workers)

    async def stop(self) -> None:
        self._scale_workers(0)
        await self.backend.aclose()

    def _scale_workers(self, count: int) -> None:
        """Start or stop built-in workers; a stopped worker drops its lease, which then expires."""
        while len(self._workers) < count:
            self._worker_ids += 1
            worker = Worker(f"builtin-{self._worker_ids}", QueueSource(self.queue), self.backend, self.clock)
            self._workers[worker.worker_id] = asyncio.get_running_loop().create_task(worker.run())
        while len(self._workers) > count:
            self._workers.popitem()[1].cancel()

    def configure(self, **changes: Any) -> EmulatorConfig:
        """Apply setting changes (validated as a whole before any takes effect)."""
        config = dataclasses.replace(self.config, **changes)
        if config.clock is not self.config.clock or config.backend is not self.config.backend:
            raise ConfigError("the clock and the backend are chosen when the emulator starts")
        self._apply(config)
        return config

    def _apply(self, config: EmulatorConfig) -> None:
        """Make a validated configuration the current one."""
        self.config = config
        self.queue.capacity = config.queue_capacity
        self.queue.max_attempts = config.max_attempts
        self.queue.lease_seconds = config.lease_seconds
        self.backend.reconfigure(config.seed, config.tool_policy)
        self._scale_workers(config.workers)
        if self._runtime is not None:
            self._runtime.seed = config.seed

    def reset(self, *, reinstall: bool = True) -> None:
        """Back to the start-up state: configuration, rules (from the rule file), history, queue; the
        start-up canisters installed afresh unless `reinstall` is False (`reset_async` does it then)."""
        self.queue.reset()
        if isinstance(self.clock, VirtualClock):
            self.clock.reset()
        self.rules.clear()
        self.history.clear()
        self.canister.ledger.balances.clear()
        self.cassettes.reset()
        self.outcalls.reset(self.initial_config.strict_outcalls, self.initial_config.outcalls_loopback)
        if self._runtime is not None:
            self._runtime.clear()
            for name, wasm in self._startup_canisters if reinstall else ():
                self._runtime.install(wasm, self._startup_settings(name))  # with the same ids as at start-up
        # A built-in worker still busy with a job the reset ended is replaced: one inside a scripted
        # delay would otherwise sleep through the next test's prompts. Idle workers are kept.
        for worker_id in [w for w in self._workers if not self.queue.is_idle(w)]:
            self._workers.pop(worker_id).cancel()
        # The start-up configuration was validated when the emulator started; `_apply` starts workers.
        self._apply(self.initial_config)
        self._load_rule_file()

    async def reset_async(self) -> None:
        """`reset`, the start-up canisters' code run on the canister runtime's thread (the doors answer
        meanwhile, and a message the reset stopped has ended first)."""
        self.reset(reinstall=False)
        if self._runtime is not None:
            for name, wasm in self._startup_canisters:
                await self._runtime.install_async(wasm, self._startup_settings(name))

    # -- the facade: what the doors and the plugin call, in domain types -------------------------

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
        """One v0_chat or v1_chat call: the answer, or the `Reject` the caller gets (`Canister.chat`)."""
        return await self.canister.chat(
            request, caller, cycles, receipt, max_output_tokens=max_output_tokens, deadline=deadline
        )

    def deposit(self, caller: str, cycles: int, beneficiary: str | None = None) -> int:
        """v1_deposit: the cycles join the beneficiary's (else the caller's) balance; the new balance."""
        return self.canister.deposit(caller, cycles, beneficiary)

    def balances(self) -> dict[str, int]:
        return dict(self.canister.ledger.balances)

    def set_balance(self, principal: str, cycles: int) -> None:
        self.canister.ledger.set_balance(principal, cycles)

    def add_rule(self, rule: Rule) -> str:
        """Script an answer; returns the rule's id."""
        return self.rules.add(rule).id

    def rule_states(self) -> list[RuleState]:
        return list(self.rules.states)

    def clear_rules(self) -> None:
        self.rules.clear()

    def set_hold(self, hold: bool) -> None:
        """Hold finished answers (HELD) until released, or deliver them again as they finish."""
        self.queue.set_hold(hold)

    def release(self, job_ids: Iterable[str] | None = None) -> list[str]:
        """Deliver held answers in this order (None: every held one, oldest first); the ids released."""
        ids = [job.id for job in self.queue.held()] if job_ids is None else list(job_ids)
        return self.queue.release(ids)

    def set_paused(self, paused: bool) -> None:
        """While paused, no worker leases a job: prompts wait in the queue."""
        self.queue.set_paused(paused)

    def jobs(self) -> list[Job]:
        """Unfinished jobs, oldest first."""
        return list(self.queue.jobs())

    def records(self) -> Sequence[CallRecord]:
        """The call history, oldest first (within its bounds)."""
        return self.history.records

    def stats(self) -> Stats:
        return self.history.stats(self.queue)

    def use_cassette(self, spec: CassetteSpec) -> ActiveCassette:
        """Replay and record through this cassette from now on (confined to the cassette folder,
        unless the emulator allows paths anywhere)."""
        return self.cassettes.use(spec, confined=True)

    def eject_cassette(self) -> CassetteStats:
        return self.cassettes.eject()

    # -- the AI-worker protocol, for workers in other processes -----------------------------------

    @property
    def lease_seconds(self) -> float:
        return self.queue.lease_seconds

    async def lease(self, worker_id: str, wait: float, accept: Callable[[Job], bool]) -> Job | None:
        return await self.queue.lease(worker_id, wait=wait, accept=accept)

    def renew(self, job_id: str, attempt: int, worker_id: str) -> float:
        return self.queue.renew(job_id, attempt, worker_id)

    def complete(self, job_id: str, attempt: int, worker_id: str, outcome: Answer | Reject) -> None:
        self.queue.complete(job_id, attempt, worker_id, outcome)

    def retry(self, job_id: str, attempt: int, worker_id: str, reason: str) -> None:
        self.queue.retry(job_id, attempt, worker_id, reason)

    async def call_candid(
        self,
        method: str,
        arg: bytes,
        caller: str,
        cycles: int = 0,
        receipt: Receipt | None = None,
        *,
        deadline: float | Literal["config"] | None = "config",
    ) -> bytes:
        """One call to the LLM canister in Candid: the reply bytes, or the `Reject` the caller gets.

        The one path for every caller that speaks Candid: the gRPC `CallCandid` door and canisters in
        the canister runtime. `receipt` learns what was charged and refunded (everything, when the call
        is rejected before the canister core: no such method, or an argument that does not decode).
        `deadline` is the caller's bounded wait in seconds ("config": the caller_deadline setting).
        """
        receipt = Receipt(attached=cycles) if receipt is None else receipt
        try:
            if candid.check_method(method, self.config.interface) == candid.DEPOSIT:
                beneficiary = candid.decode_deposit(arg)
                balance = self.deposit(caller, cycles, beneficiary)
                receipt.refunded = 0
                return candid.encode_deposit_reply(balance)
            chat = candid.decode_request(method, arg)
        except Reject:
            receipt.refunded = cycles
            raise
        answer = await self.chat(chat, caller, cycles, receipt, deadline=deadline)
        return candid.encode_reply(chat.api, answer.message)

    async def advance_clock(self, seconds: float) -> float:
        if not isinstance(self.clock, VirtualClock):
            raise ConfigError("the clock is real: start the emulator with --clock virtual to advance it")
        now = await self.clock.advance(seconds)
        if (
            self._runtime is not None
        ):  # what the new time woke (timers, deadlines) runs on before this returns
            await self._runtime.quiesce()
        return now
