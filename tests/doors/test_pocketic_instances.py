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


@pytest.mark.asyncio
async def test_only_recent_reasons_are_kept_but_every_deleted_id_answers_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from starlette.requests import Request

    from icllm_emulator.pocketic import server as module
    from icllm_emulator.pocketic.wire import BadRequest

    monkeypatch.setattr(module, "DELETED_KEPT", 2)
    server = PocketIcServer(EmulatorConfig())
    for _ in range(3):
        await server.delete((await server.create(["Application"])).id, "deleted by its client")
    assert list(server.deleted) == [1, 2]
    scope = {"type": "http", "path_params": {"instance_id": "0"}, "headers": []}
    with pytest.raises(BadRequest) as gone:
        server.get(Request(scope))
    assert (gone.value.status, gone.value.message) == (410, "PocketIC instance 0 was deleted")
