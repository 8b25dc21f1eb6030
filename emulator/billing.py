"""Cycles, as the 2026 LLM canister charges them: free models refund everything, paid models bill.

A paid call pays from the cycles attached to it when at least `MIN_ATTACHED` are attached; otherwise
its attached cycles are refunded in full and it draws on the caller's prepaid balance (`v1_deposit`).
Before the job is queued the most it can cost is reserved (from the attached cycles or the balance), so
concurrent callers can never spend one balance twice; when the answer arrives the actual price is
charged and the rest of the reservation goes back. A call that is rejected is charged nothing.
The real prices are not public: the defaults below are the emulator's, and configurable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from icllm_emulator.domain import Reject, RejectCode

# ic-llm 2.x attached this to every call; the 2026 canister asks at least this much of a paid call.
MIN_ATTACHED = 100_000_000_000
# The IC counts cycles in 128 bits; the emulator's wire formats carry 64, which is plenty for tests.
MAX_CYCLES = 2**64 - 1


def checked_cycles(text: str, what: str, error: Callable[[str], Exception]) -> int:
    """A number of cycles given as text (metadata, a header), within the emulator's range; else `error`."""
    digits = text
    if not digits.isascii() or not digits.isdigit():
        raise error(
            f"{what} {digits[:30]!r} is not a natural number of cycles (decimal digits only, no sign "
            "or spaces: e.g. 1000000)"
        )
    if len(digits) > 20 or int(digits) > MAX_CYCLES:
        raise error(
            f"{what} {digits[:30]!r} is more cycles than the emulator carries "
            f"(at most {MAX_CYCLES}, 2^64 - 1)"
        )
    return int(digits)


@dataclass(frozen=True, slots=True)
class Price:
    """What one call of a paid model costs: a fixed part and a part per token (prompt and answer)."""

    per_call: int = 2_000_000_000
    per_token: int = 1_000_000

    def __post_init__(self) -> None:
        if self.per_call < 0 or self.per_token < 0:
            raise ValueError(f"prices are 0 or more cycles, got {self}")

    def of(self, tokens: int) -> int:
        return self.per_call + self.per_token * tokens


DEFAULT_PRICES: dict[str, Price] = {"gemma3:27b": Price(), "z-ai:glm-5.2": Price()}


@dataclass(slots=True)
class Receipt:
    """What a call attached, and (once settled) what it was charged and refunded."""

    attached: int = 0
    charged: int = 0
    refunded: int = 0
    from_balance: bool = False
    reserved: int = 0
    settled: bool = False


@dataclass
class Ledger:
    """Prepaid balances by principal."""

    balances: dict[str, int] = field(default_factory=dict)

    def balance(self, principal: str) -> int:
        return self.balances.get(principal, 0)

    def deposit(self, principal: str, cycles: int) -> int:
        if cycles < 0:
            raise ValueError(f"a deposit is 0 or more cycles, got {cycles}")
        balance = self.balance(principal) + cycles
        if balance > MAX_CYCLES:
            raise Reject(
                RejectCode.CANISTER_REJECT,
                f"the deposit would take {principal}'s balance to {balance} cycles, over the emulator's "
                f"{MAX_CYCLES}; the balance stays {self.balance(principal)}",
            )
        self.balances[principal] = balance
        return balance

    def set_balance(self, principal: str, cycles: int) -> None:
        if cycles < 0:
            raise ValueError(f"a balance is 0 or more cycles, got {cycles}")
        self.balances[principal] = cycles

    def admit(self, receipt: Receipt, caller: str, model: str, price: Price | None, most_tokens: int) -> None:
        """Reserve what a call may cost, or reject it with what was attached and what is needed."""
        if price is None:  # a free model: everything attached comes back
            return
        most = price.of(most_tokens)
        if receipt.attached >= MIN_ATTACHED:
            if receipt.attached < most:
                raise Reject(
                    RejectCode.CANISTER_REJECT,
                    f"model {model!r} is paid and this call may cost up to {most} cycles, more than the "
                    f"{receipt.attached} attached; attach at least {most}, or attach fewer than "
                    f"{MIN_ATTACHED} to pay from {caller}'s prepaid balance",
                )
            receipt.reserved = most
            return
        balance = self.balance(caller)
        if balance < most:
            raise Reject(
                RejectCode.CANISTER_REJECT,
                f"model {model!r} is paid: attach at least {MIN_ATTACHED} cycles to the call "
                f"(attached: {receipt.attached}), or deposit cycles for {caller} with v1_deposit "
                f"(balance: {balance}; this call may cost up to {most})",
            )
        self.balances[caller] = balance - most
        receipt.from_balance = True
        receipt.reserved = most

    def settle(self, receipt: Receipt, caller: str, price: Price | None, tokens: int | None) -> None:
        """Charge the actual price (`tokens` is None when the call was rejected) and refund the rest."""
        if receipt.settled:
            return
        receipt.settled = True
        charged = 0 if price is None or tokens is None else min(price.of(tokens), receipt.reserved)
        receipt.charged = charged
        if receipt.from_balance:
            self.balances[caller] = self.balance(caller) + receipt.reserved - charged
            receipt.refunded = receipt.attached
        else:
            receipt.refunded = receipt.attached - charged
