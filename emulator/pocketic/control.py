"""The LLM canister's control plane of each PocketIC instance, under `/icllm/`: each route is a gRPC
Control method over JSON (the request and the answer in proto3 JSON), run by the same servicer."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format
from starlette.requests import Request
from starlette.routing import Route

from icllm_emulator._proto.icllm.v1 import control_pb2 as cpb
from icllm_emulator.domain import Reject
from icllm_emulator.errors import IcllmError
from icllm_emulator.pocketic.handlers import Handler, read_json
from icllm_emulator.pocketic.server import PocketIcServer
from icllm_emulator.pocketic.wire import BadRequest


def control_method(method: str, request_type: Any) -> Handler:
    """A Control RPC over JSON: the body is the request message in proto3 JSON, the answer likewise."""

    async def handler(server: PocketIcServer, request: Request) -> Any:
        from icllm_emulator.grpc_api.servicers import ControlServicer

        instance = server.get(request)
        body = await read_json(request) if request.method != "GET" else None
        message = request_type()
        try:
            json_format.ParseDict(body or {}, message)
        except json_format.ParseError as error:
            raise BadRequest(
                f"{request.url.path}: the body is not a {request_type.__name__}: {error}"
            ) from None
        servicer = ControlServicer(instance.engine)
        run = inspect.unwrap(getattr(servicer, method))
        try:
            result = await run(servicer, message, None)
        except Reject as reject:
            raise BadRequest(reject.message) from None
        except (ValueError, KeyError) as error:
            if isinstance(error, IcllmError):
                raise
            raise BadRequest(str(error)) from None
        return json_format.MessageToDict(result, preserving_proto_field_name=True)

    return handler


async def icllm_reset(server: PocketIcServer, request: Request) -> Any:
    """The LLM canister back to its start: rules, holds, queue, history, cassette, settings; the
    instance's canisters and time stay."""
    engine = server.get(request).engine
    engine.queue.reset()
    engine.rules.clear()
    engine.history.clear()
    engine.canister.ledger.balances.clear()
    engine.cassettes.reset()
    initial = engine.initial_config
    engine.configure(**{f.name: getattr(initial, f.name) for f in dataclasses.fields(initial)})
    return {}


# (route under .../icllm, HTTP method, Control method, its request message)
CONTROL_ROUTES: tuple[tuple[str, str, str, Any], ...] = (
    ("rules", "GET", "ListRules", cpb.ListRulesRequest),
    ("rules", "POST", "AddRules", cpb.AddRulesRequest),
    ("rules", "DELETE", "ClearRules", cpb.ClearRulesRequest),
    ("hold", "POST", "SetHold", cpb.SetHoldRequest),
    ("release", "POST", "Release", cpb.ReleaseRequest),
    ("pause", "POST", "SetPaused", cpb.SetPausedRequest),
    ("jobs", "GET", "ListJobs", cpb.ListJobsRequest),
    ("history", "GET", "GetHistory", cpb.GetHistoryRequest),
    ("stats", "GET", "GetStats", cpb.GetStatsRequest),
    ("settings", "GET", "GetConfig", cpb.GetConfigRequest),
    ("settings", "POST", "Configure", cpb.ConfigureRequest),
    ("balances", "GET", "GetBalances", cpb.GetBalancesRequest),
    ("balances", "POST", "SetBalance", cpb.SetBalanceRequest),
    ("cassette", "POST", "UseCassette", cpb.UseCassetteRequest),
    ("cassette", "DELETE", "EjectCassette", cpb.EjectCassetteRequest),
    ("outcall-rules", "GET", "ListOutcallRules", cpb.ListOutcallRulesRequest),
    ("outcall-rules", "POST", "AddOutcallRules", cpb.AddOutcallRulesRequest),
    ("outcall-rules", "DELETE", "ClearOutcallRules", cpb.ClearOutcallRulesRequest),
    ("outcalls", "GET", "GetOutcalls", cpb.GetOutcallsRequest),
)


def control_routes(base: str, route: Callable[[str, Handler, list[str]], Route]) -> list[Route]:
    """The control routes under `base`, made by `route` (path, handler, HTTP methods)."""
    return [
        *(
            route(f"{base}/{path}", control_method(name, kind), [verb])
            for path, verb, name, kind in CONTROL_ROUTES
        ),
        route(f"{base}/reset", icllm_reset, ["POST"]),
    ]
