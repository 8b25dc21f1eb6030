"""PocketIC instances in-process: each is an IC of its own, and a deleted one leaves nothing behind."""

from __future__ import annotations

import gc
import weakref

import pytest

from icllm_emulator.config import EmulatorConfig
from icllm_emulator.pocketic.server import PocketIcServer


@pytest.mark.asyncio
async def test_a_deleted_instance_is_freed_at_once() -> None:
    server = PocketIcServer(EmulatorConfig())
    instance_id = (await server.create(["Application"])).id
    engine = weakref.ref(server.instances[instance_id].engine)
    runtime = weakref.ref(server.instances[instance_id].engine.runtime)
    gc.disable()  # what frees it must be the deletion, not a collection that happens to run
    try:
        await server.delete(instance_id, "deleted by its client")
        assert engine() is None and runtime() is None
    finally:
        gc.enable()
    assert server.deleted == {0: "deleted by its client"}


@pytest.mark.asyncio
async def test_an_instance_unused_for_the_ttl_is_swept() -> None:
    server = PocketIcServer(EmulatorConfig(), ttl_seconds=0.0)
    kept = await server.create(["Application"])
    await server.sweep()
    assert server.instances == {}
    assert "unused for more than --ttl 0 s" in server.deleted[kept.id]
