"""PocketIC's REST API (server 14.0.0) over the canister runtime, as a Starlette app.

Every handler parses its JSON into runtime values, calls the instance, and writes PocketIC's JSON back;
a caller's mistake is a 4xx `{"message": ...}` (clients treat any top-level `message` as an error),
never a 500. Everything is answered synchronously: no `state_label`/`op_id` "busy, poll again" replies.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from icllm_emulator.domain import Reject, RejectCode
from icllm_emulator.outcalls import HttpResponse
from icllm_emulator.pocketic import wire
from icllm_emulator.pocketic.control import control_routes
from icllm_emulator.pocketic.handlers import Handler, endpoint, read_body, read_json
from icllm_emulator.pocketic.instance import GENESIS_NS, SUBNET_KINDS, PocketInstance
from icllm_emulator.pocketic.server import PocketIcServer
from icllm_emulator.pocketic.wire import BadRequest, b64, blob, field, nat, principal
from icllm_emulator.runtime.messages import Response as CallResponse

log = logging.getLogger("icllm.pocketic")

# The blob store takes stable memory images (the IC's stable memory is up to 500 GiB; a test's is small).
MAX_BLOB_BYTES = 256 * 1024 * 1024
_PAGE = 65536


def _call_json(response: CallResponse) -> dict[str, Any]:
    if response.reply is not None:
        return wire.reply_json(response.reply)
    assert response.reject_code is not None
    return wire.reject_json(response.reject_code, response.reject_message, response.error_code)


# -- the server ---------------------------------------------------------------------------------------


async def status(server: PocketIcServer, request: Request) -> Any:
    return Response(status_code=200)


async def list_instances(server: PocketIcServer, request: Request) -> Any:
    return ["Available" if i in server.instances else "Deleted" for i in range(server.next_id)]


async def create_instance(server: PocketIcServer, request: Request) -> Any:
    body = await read_json(request)
    where = "POST /instances"
    config_set = field(body, "subnet_config_set", dict, where)
    kinds: list[str] = []
    for name, kind in SUBNET_KINDS.items():
        value = config_set.get(name)
        specs = value if isinstance(value, list) else [] if value is None else [value]
        if isinstance(value, int | bool):
            raise BadRequest(
                f"{where}: subnet_config_set.{name} is {value!r}, as PocketIC servers before 3.0 took it; "
                f"this server speaks the REST API of PocketIC server {wire.SERVER_VERSION} "
                "(@dfinity/pic 0.23, the pocket-ic crate 16): use a client of that version"
            )
        for spec in specs:
            state = spec.get("state_config", "New") if isinstance(spec, dict) else None
            if state != "New":
                raise BadRequest(
                    f"{where}: subnet_config_set.{name} asks for state {state!r}; only new, empty subnets "
                    "are emulated (loading subnet state from a directory is not)"
                )
            kinds.append(kind)
    if not kinds:
        raise BadRequest(f"{where}: the subnet_config_set asks for no subnet; ask for at least one")
    features = body.get("icp_features")
    if isinstance(features, dict) and any(v is not None for v in features.values()):
        asked = ", ".join(k for k, v in features.items() if v is not None)
        raise BadRequest(
            f"{where}: icp_features ({asked}) are not emulated: the NNS, II, ledgers and the other system "
            "canisters do not exist here; leave icp_features out"
        )
    for name, what in (("state_dir", "a state directory"), ("http_gateway_config", "the HTTP gateway")):
        if body.get(name) is not None:
            raise BadRequest(f"{where}: {name} asks for {what}, which is not emulated; leave it out")
    initial_ns, progress = _initial_time(body.get("initial_time"), where)
    instance = await server.create(kinds)
    if initial_ns is not None:
        await instance.set_time(initial_ns)
    if progress is not None:
        instance.start_progress(progress)
    return {
        "Created": {"instance_id": instance.id, "topology": _topology(instance), "http_gateway_info": None}
    }


def _initial_time(value: Any, where: str) -> tuple[int | None, int | None]:
    """`initial_time`: `{"Timestamp": {"nanos_since_epoch": n}}` (from genesis on) or
    `{"AutoProgress": {"artificial_delay_ms": ms}}`; None for genesis. (time in ns, auto-progress delay)"""
    if value is None:
        return None, None
    if isinstance(value, dict) and "Timestamp" in value:
        nanos = nat(value["Timestamp"], "nanos_since_epoch", f"{where}: initial_time.Timestamp", bits=64)
        if nanos < GENESIS_NS:
            raise BadRequest(
                f"{where}: initial_time {nanos} ns is before PocketIC's genesis ({GENESIS_NS} ns, "
                "2021-05-06T19:17:10Z)"
            )
        return nanos, None
    if isinstance(value, dict) and isinstance(value.get("AutoProgress"), dict):
        delay = value["AutoProgress"].get("artificial_delay_ms") or 0
        if not isinstance(delay, int) or delay < 0:
            raise BadRequest(f"{where}: artificial_delay_ms is a natural number of ms, got {delay!r}")
        return None, delay
    raise BadRequest(
        f'{where}: initial_time is {{"Timestamp": {{"nanos_since_epoch": n}}}} or '
        f'{{"AutoProgress": {{"artificial_delay_ms": ms}}}}, got {value!r:.80}'
    )


async def delete_instance(server: PocketIcServer, request: Request) -> Any:
    instance = server.get(request)
    await server.delete(instance.id, "deleted by its client")
    return Response(status_code=200)


def _topology(instance: PocketInstance) -> dict[str, Any]:
    return {
        "subnet_configs": {
            subnet.id: {
                "subnet_kind": subnet.kind,
                "subnet_seed": list(subnet.seed),
                "size": 13,
                "instruction_config": "Production",
                "canister_ranges": [
                    {"start": {"canister_id": b64(start)}, "end": {"canister_id": b64(end)}}
                    for start, end in subnet.ranges
                ],
            }
            for subnet in instance.subnets
        },
        "default_effective_canister_id": {"canister_id": b64(instance.main_subnet.ranges[0][0])},
    }


async def topology(server: PocketIcServer, request: Request) -> Any:
    return _topology(server.get(request))


async def upload_blob(server: PocketIcServer, request: Request) -> Any:
    data = await read_body(request, MAX_BLOB_BYTES)
    encoding = request.headers.get("content-encoding", "")
    if encoding not in ("", "gzip"):
        raise BadRequest(f"the blob store takes Content-Encoding gzip or none, got {encoding!r}")
    return PlainTextResponse(server.put_blob(data, encoding == "gzip").hex())


async def get_blob(server: PocketIcServer, request: Request) -> Any:
    try:
        blob_id = bytes.fromhex(request.path_params["blob_id"])
    except ValueError:
        raise BadRequest("a blob id is the hex the blob store returned") from None
    data, gzipped = server.blobs.get(blob_id, (None, False))
    if data is None:
        raise BadRequest(f"no blob {blob_id.hex()} in the blob store", 404)
    headers = {"Content-Encoding": "gzip"} if gzipped else {}
    return Response(data, media_type="application/octet-stream", headers=headers)


async def not_emulated(server: PocketIcServer, request: Request) -> Any:
    raise BadRequest(
        f"{request.method} {request.url.path} is not emulated by this PocketIC door "
        "(no HTTP gateway, no state graph polling, no threshold keys): "
        "see the list of served endpoints in pytest-icllm's documentation",
        501,
    )


# -- time -----------------------------------------------------------------------------------------------


async def get_time(server: PocketIcServer, request: Request) -> Any:
    return {"nanos_since_epoch": server.get(request).now_ns()}


async def set_time(server: PocketIcServer, request: Request) -> Any:
    instance = server.get(request)
    body = await read_json(request)
    await instance.set_time(nat(body, "nanos_since_epoch", request.url.path, bits=64))
    return None


async def tick(server: PocketIcServer, request: Request) -> Any:
    await server.get(request).tick()
    return None


async def auto_progress(server: PocketIcServer, request: Request) -> Any:
    instance = server.get(request)
    if request.method == "GET":
        return instance.auto_progress is not None
    body = await read_json(request) or {}
    delay = body.get("artificial_delay_ms") if isinstance(body, dict) else None
    if delay is not None and (not isinstance(delay, int) or delay < 0):
        raise BadRequest(f"auto_progress: artificial_delay_ms is a natural number of ms, got {delay!r}")
    instance.start_progress(delay or 0)
    return None


async def stop_progress(server: PocketIcServer, request: Request) -> Any:
    server.get(request).stop_progress()
    return None


# -- calls --------------------------------------------------------------------------------------------


def _canister_call(body: Any, where: str) -> tuple[bytes, bytes, str, bytes, tuple[str, bytes | None]]:
    return (
        principal(body, "sender", where),
        principal(body, "canister_id", where),
        field(body, "method", str, where),
        blob(body, "payload", where),
        wire.effective_principal(field(body, "effective_principal", (str, dict), where), where),
    )


async def submit_ingress(server: PocketIcServer, request: Request) -> Any:
    instance = server.get(request)
    sender, canister, method, payload, effective = _canister_call(await read_json(request), request.url.path)
    submitted = instance.submit(sender, canister, method, payload)
    if isinstance(submitted, CallResponse):
        return _call_json(submitted)
    return {"Ok": {"effective_principal": wire.effective_json(*effective), "message_id": b64(submitted)}}


def _message(instance: PocketInstance, body: Any, where: str) -> Any:
    wire.effective_principal(field(body, "effective_principal", (str, dict), where), where)
    message_id = blob(body, "message_id", where)
    message = instance.ingress.get(message_id)
    if message is None:
        raise BadRequest(
            f"{where}: no ingress message {message_id.hex()} in instance {instance.id}: use the message_id "
            "that submit_ingress_message returned (the oldest finished messages are forgotten after "
            "10000 more)"
        )
    return message


async def await_ingress(server: PocketIcServer, request: Request) -> Any:
    instance = server.get(request)
    message = _message(instance, await read_json(request), request.url.path)
    try:
        return _call_json(await asyncio.shield(message.task))
    except asyncio.CancelledError:
        if message.task.cancelled():  # the instance went away while the call ran
            raise BadRequest(f"PocketIC instance {instance.id} was deleted while the call ran", 410) from None
        raise


async def ingress_status(server: PocketIcServer, request: Request) -> Any:
    instance = server.get(request)
    body = await read_json(request)
    message = _message(instance, field(body, "raw_message_id", dict, request.url.path), request.url.path)
    caller = body.get("raw_caller")
    if isinstance(caller, dict) and principal(caller, "principal_id", request.url.path) != message.sender:
        raise BadRequest("ingress_status: the message was submitted by another caller", 403)
    if not message.task.done():
        return None
    if message.task.cancelled():
        raise BadRequest(f"PocketIC instance {instance.id} was deleted while the call ran", 410)
    return _call_json(message.task.result())


async def query(server: PocketIcServer, request: Request) -> Any:
    instance = server.get(request)
    sender, canister, method, payload, _ = _canister_call(await read_json(request), request.url.path)
    return _call_json(await instance.call(sender, canister, method, payload, query=True))


# -- canister state -------------------------------------------------------------------------------------


def _record(instance: PocketInstance, body: Any, where: str) -> Any:
    canister = principal(body, "canister_id", where)
    record = instance.runtime.lifecycle.records.get(canister)
    if record is None:
        raise BadRequest(
            f"{where}: canister {wire.principal_text(canister)} does not exist in PocketIC instance "
            f"{instance.id}",
            404,
        )
    return record


async def get_cycles(server: PocketIcServer, request: Request) -> Any:
    instance = server.get(request)
    record = _record(instance, await read_json(request), request.url.path)
    live = instance.runtime.canisters.get(record.principal)
    return {"cycles": record.balance if live is None else live.balance}


async def add_cycles(server: PocketIcServer, request: Request) -> Any:
    instance = server.get(request)
    body = await read_json(request)
    record = _record(instance, body, request.url.path)
    instance.runtime.lifecycle.deposit_cycles(record.principal, nat(body, "amount", request.url.path))
    live = instance.runtime.canisters.get(record.principal)
    return {"cycles": record.balance if live is None else live.balance}


async def get_stable_memory(server: PocketIcServer, request: Request) -> Any:
    instance = server.get(request)
    record = _record(instance, await read_json(request), request.url.path)
    live = instance.runtime.canisters.get(record.principal)
    return {"blob": b64(b"" if live is None else bytes(live.stable))}


async def set_stable_memory(server: PocketIcServer, request: Request) -> Any:
    instance = server.get(request)
    body = await read_json(request)
    record = _record(instance, body, request.url.path)
    data = server.get_blob(blob(body, "blob_id", request.url.path))
    live = instance.runtime.canisters.get(record.principal)
    if live is None:
        raise BadRequest(
            f"canister {record.id} has no module installed: install one before its stable memory"
        )
    live.stable[:] = data + bytes(-len(data) % _PAGE)
    return None


async def get_controllers(server: PocketIcServer, request: Request) -> Any:
    instance = server.get(request)
    record = _record(instance, await read_json(request), request.url.path)
    return [{"principal_id": b64(c)} for c in sorted(record.controllers)]


async def get_subnet(server: PocketIcServer, request: Request) -> Any:
    instance = server.get(request)
    body = await read_json(request)
    subnet = instance.subnet_of(principal(body, "canister_id", request.url.path))
    return None if subnet is None else {"subnet_id": b64(subnet.principal)}


# -- outcalls -------------------------------------------------------------------------------------------


async def get_canister_http(server: PocketIcServer, request: Request) -> Any:
    instance = server.get(request)
    subnet = instance.main_subnet.principal
    return [
        {
            "subnet_id": {"subnet_id": b64(subnet)},
            "request_id": outcall.request_id,
            "http_method": outcall.request.method.upper(),
            "url": outcall.request.url,
            "headers": [{"name": k, "value": v} for k, v in outcall.request.headers],
            "body": b64(outcall.request.body),
            "max_response_bytes": outcall.request.max_response_bytes,
        }
        for outcall in instance.outcalls.pending.values()
    ]


def _outcall_response(value: Any, where: str) -> HttpResponse | Reject:
    if isinstance(value, dict) and "CanisterHttpReply" in value:
        reply = value["CanisterHttpReply"]
        status = nat(reply, "status", where, bits=16)
        headers = field(reply, "headers", list, where)
        return HttpResponse(
            status,
            tuple((str(field(h, "name", str, where)), str(field(h, "value", str, where))) for h in headers),
            blob(reply, "body", where),
        )
    if isinstance(value, dict) and "CanisterHttpReject" in value:
        reject = value["CanisterHttpReject"]
        code = nat(reject, "reject_code", where, bits=8)
        if code not in {int(c) for c in RejectCode}:
            raise BadRequest(f"{where}: reject_code is an IC reject code 1-6, got {code}")
        return Reject(RejectCode(code), field(reject, "message", str, where))
    raise BadRequest(f'{where}: response is {{"CanisterHttpReply": ...}} or {{"CanisterHttpReject": ...}}')


async def mock_canister_http(server: PocketIcServer, request: Request) -> Any:
    instance = server.get(request)
    body = await read_json(request)
    where = request.url.path
    response = _outcall_response(field(body, "response", dict, where), where)
    try:
        instance.outcalls.mock(nat(body, "request_id", where, bits=64), response)
    except KeyError as error:
        raise BadRequest(str(error.args[0])) from None
    await asyncio.sleep(0)
    await instance.runtime.settle()
    return None


async def pub_key(server: PocketIcServer, request: Request) -> Any:
    raise BadRequest(
        "read/pub_key is not emulated: this door certifies nothing, so no subnet has a threshold BLS key "
        "(an agent that verifies certificates cannot be pointed at it)",
        501,
    )


def create_app(server: PocketIcServer) -> Starlette:
    def route(path: str, handler: Handler, methods: list[str]) -> Route:
        return Route(path, endpoint(handler, server), methods=methods)

    i = "/instances/{instance_id}"
    return Starlette(
        routes=[
            route("/status", status, ["GET"]),
            route("/instances", list_instances, ["GET"]),
            route("/instances", create_instance, ["POST"]),
            route(i, delete_instance, ["DELETE"]),
            route(f"{i}/_/topology", topology, ["GET"]),
            route(f"{i}/read/topology", topology, ["GET"]),
            route("/blobstore", upload_blob, ["POST"]),
            route("/blobstore/{blob_id}", get_blob, ["GET"]),
            route(f"{i}/read/get_time", get_time, ["GET"]),
            route(f"{i}/update/set_time", set_time, ["POST"]),
            route(f"{i}/update/set_certified_time", set_time, ["POST"]),
            route(f"{i}/update/tick", tick, ["POST"]),
            route(f"{i}/auto_progress", auto_progress, ["GET", "POST"]),
            route(f"{i}/stop_progress", stop_progress, ["POST"]),
            route(f"{i}/update/submit_ingress_message", submit_ingress, ["POST"]),
            route(f"{i}/update/await_ingress_message", await_ingress, ["POST"]),
            route(f"{i}/read/ingress_status", ingress_status, ["POST"]),
            route(f"{i}/read/query", query, ["POST"]),
            route(f"{i}/read/get_cycles", get_cycles, ["POST"]),
            route(f"{i}/update/add_cycles", add_cycles, ["POST"]),
            route(f"{i}/read/get_stable_memory", get_stable_memory, ["POST"]),
            route(f"{i}/update/set_stable_memory", set_stable_memory, ["POST"]),
            route(f"{i}/read/get_controllers", get_controllers, ["POST"]),
            route(f"{i}/read/get_subnet", get_subnet, ["POST"]),
            route(f"{i}/read/pub_key", pub_key, ["POST"]),
            route(f"{i}/read/get_canister_http", get_canister_http, ["GET"]),
            route(f"{i}/update/mock_canister_http", mock_canister_http, ["POST"]),
            route("/http_gateway", not_emulated, ["POST"]),
            route("/http_gateway/{gateway_id}/stop", not_emulated, ["POST"]),
            route("/read_graph/{state_label}/{op_id}", not_emulated, ["GET"]),
            *control_routes(f"{i}/icllm", route),
            *control_routes("/subnets/{subnet_id}/icllm", route),
        ],
        exception_handlers={404: _not_found, 405: _not_allowed},
    )


async def _not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse(
        {
            "message": f"{request.method} {request.url.path} is not an endpoint of PocketIC server "
            f"{wire.SERVER_VERSION}'s REST API as this door serves it (a client of another version?)"
        },
        status_code=404,
    )


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return JSONResponse({"message": f"{request.url.path} does not take {request.method}"}, status_code=405)
