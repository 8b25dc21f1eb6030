"""Composite queries: a query that calls other canisters' queries, and keeps no state in the end.

On the IC a composite query runs on a copy of the canister's state that is thrown away. Here its
messages (the query and the callbacks of the calls it makes) run on a private state that is swapped
into the instance for each of them and out again after, so the canister's own messages in between see
its real state, and nothing of the composite query remains when it ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from icllm_emulator.runtime.instance import CanisterInstance
from icllm_emulator.runtime.messages import CallContext

COMPOSITE_PREFIX = "canister_composite_query "


@contextmanager
def composite_state(instance: CanisterInstance, context: CallContext | None) -> Iterator[None]:
    """Run the enclosed message on the composite query's private state (a no-op for other calls)."""
    if context is None or not context.composite:
        yield
        return
    public = instance.image()
    if context.private is not None:
        instance.load_image(context.private)
    try:
        yield
    finally:
        context.private = instance.image()
        instance.load_image(public)
