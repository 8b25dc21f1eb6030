"""The PocketIC server's state: its instances (bounded in number, freed after the time-to-live) and
the blob store they share."""

from __future__ import annotations

import asyncio
import gc
import gzip
import hashlib
import logging
import time
import zlib
from collections import OrderedDict

from starlette.requests import Request

from icllm_emulator.config import EmulatorConfig
from icllm_emulator.pocketic.instance import PocketInstance
from icllm_emulator.pocketic.wire import BadRequest

log = logging.getLogger("icllm.pocketic")

MAX_BLOB_STORE_BYTES = 1024 * 1024 * 1024
# Each instance is an IC with its own engine and canisters: one with the Motoko agent takes about 7 MiB.
DEFAULT_MAX_INSTANCES = 64
# PocketIC's default: a server (and here an instance) unused this long is freed.
DEFAULT_TTL_SECONDS = 60
# How many deleted instances' reasons are kept for the 410 a client gets when it uses one.
DELETED_KEPT = 10_000


class PocketIcServer:
    """The server's state: its instances, their limit and time-to-live, and the blob store."""

    def __init__(
        self,
        config: EmulatorConfig,
        *,
        max_instances: int = DEFAULT_MAX_INSTANCES,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
    ) -> None:
        self.config = config
        self.max_instances = max_instances
        self.ttl_seconds = ttl_seconds
        self.instances: dict[int, PocketInstance] = {}
        # why each recent instance went (older ones are only known to be gone: their id is below next_id)
        self.deleted: OrderedDict[int, str] = OrderedDict()
        self.next_id = 0
        self.blobs: OrderedDict[bytes, tuple[bytes, bool]] = OrderedDict()
        self.last_request = time.monotonic()
        self._lock = asyncio.Lock()

    # -- instances ----------------------------------------------------------------------------------

    def get(self, request: Request) -> PocketInstance:
        """The instance a request names: by its id, or (for /subnets/{subnet_id}/icllm/) by a subnet."""
        if "subnet_id" in request.path_params:
            return self._by_subnet(request.path_params["subnet_id"])
        text = request.path_params["instance_id"]
        try:
            instance_id = int(text)
        except ValueError:
            raise BadRequest(
                f"the instance id is a number, as POST /instances returns; got {text!r}"
            ) from None
        instance = self.instances.get(instance_id)
        if instance is None:
            if 0 <= instance_id < self.next_id:
                why = self.deleted.get(instance_id)
                raise BadRequest(
                    f"PocketIC instance {instance_id} was deleted" + (f" ({why})" if why else ""), 410
                )
            live = ", ".join(str(i) for i in self.instances) or "none"
            raise BadRequest(f"no PocketIC instance {instance_id} (live instances: {live})", 404)
        instance.last_used = time.monotonic()
        return instance

    def _by_subnet(self, subnet_id: str) -> PocketInstance:
        """Clients that do not show the instance id (pic-js) know their subnets from the topology."""
        for instance in self.instances.values():
            if any(subnet.id == subnet_id for subnet in instance.subnets):
                instance.last_used = time.monotonic()
                return instance
        raise BadRequest(
            f"no live PocketIC instance has a subnet {subnet_id} (the topology lists an instance's subnets)",
            404,
        )

    async def create(self, kinds: list[str]) -> PocketInstance:
        async with self._lock:
            if len(self.instances) >= self.max_instances:
                raise BadRequest(
                    f"this server holds {self.max_instances} PocketIC instances at once "
                    f"(--max-instances), each a whole IC in memory: delete one (tearDown) or start the "
                    "server with a larger --max-instances",
                    429,
                )
            instance = PocketInstance(self.next_id, self.config, kinds)
            self.next_id += 1
            await instance.start()
            self.instances[instance.id] = instance
            return instance

    async def delete(self, instance_id: int, why: str) -> None:
        instance = self.instances.pop(instance_id, None)
        if instance is not None:
            self.deleted[instance_id] = why
            while len(self.deleted) > DELETED_KEPT:
                self.deleted.popitem(last=False)
            await instance.close()
            del instance
            gc.collect()  # an IC is a web of references (runtime, lifecycle, engine): free its memory now

    async def sweep(self) -> None:
        """Free every instance unused for the time-to-live."""
        now = time.monotonic()
        unused = [i for i, instance in self.instances.items() if now - instance.last_used > self.ttl_seconds]
        for instance_id in unused:
            log.info("freeing PocketIC instance %d, unused for %g s", instance_id, self.ttl_seconds)
            await self.delete(instance_id, f"unused for more than --ttl {self.ttl_seconds:g} s")

    async def close(self) -> None:
        for instance_id in list(self.instances):
            await self.delete(instance_id, "the server stopped")

    # -- blobs --------------------------------------------------------------------------------------

    def put_blob(self, data: bytes, gzipped: bool) -> bytes:
        blob_id = hashlib.sha256(data).digest()
        self.blobs[blob_id] = (data, gzipped)
        self.blobs.move_to_end(blob_id)
        while sum(len(d) for d, _ in self.blobs.values()) > MAX_BLOB_STORE_BYTES and len(self.blobs) > 1:
            self.blobs.popitem(last=False)
        return blob_id

    def get_blob(self, blob_id: bytes) -> bytes:
        entry = self.blobs.get(blob_id)
        if entry is None:
            raise BadRequest(
                f"no blob {blob_id.hex()} in the blob store: upload it with POST /blobstore first"
            )
        data, gzipped = entry
        if not gzipped:
            return data
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise BadRequest(
                f"blob {blob_id.hex()} was uploaded as gzip but does not decompress: {error}"
            ) from None
