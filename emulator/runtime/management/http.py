"""The management canister's `http_request`, as the canister runtime serves it.

It is answered by the outcall book (scripted responses), under the IC's rules: the cycles it must
carry (the published cost formula), `max_response_bytes` and its 2 MB ceiling, and the canister's
`transform` query applied before the canister sees the response.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from icp_candid.candid import LEB128
from icp_principal import Principal

from icllm_emulator.domain import Reject, RejectCode
from icllm_emulator.outcalls import (
    MAX_RESPONSE_CEILING,
    HttpRequest,
    HttpResponse,
    check_request,
    check_url,
)
from icllm_emulator.runtime.errors import RuntimeUsageError, error_code_for
from icllm_emulator.runtime.messages import Call, Response
from icllm_emulator.runtime.values import Interface

if TYPE_CHECKING:
    from icllm_emulator.runtime.ic import CanisterRuntime
    from icllm_emulator.runtime.instance import CanisterInstance

# `(blob)` in Candid: a type table of one `vec nat8`, one argument of that type, then the bytes.
_BLOB_PREFIX = b"DIDL\x01\x6d\x7b\x01\x00"
# The management canister's http_request, as its interface declares it.
HTTP_DID = """
type http_header = record { name : text; value : text };
type http_request_result = record { status : nat; headers : vec http_header; body : blob };
type transform_args = record { response : http_request_result; context : blob };
type http_request_args = record {
  url : text;
  max_response_bytes : opt nat64;
  method : variant { get; head; post };
  headers : vec http_header;
  body : opt blob;
  transform : opt record {
    function : func (transform_args) -> (http_request_result) query;
    context : blob;
  };
  is_replicated : opt bool;
};
service : {
  http_request : (http_request_args) -> (http_request_result);
  transform : (transform_args) -> (http_request_result) query;
}
"""


@functools.cache
def http_interface() -> Interface:
    return Interface(HTTP_DID, "the management canister's http_request interface")


# The IC's published price of an HTTP outcall on a 13-node subnet (n = 13):
# (3_000_000 + 60_000 n) n + 400 n per request byte + 800 n per byte of max_response_bytes.
_SUBNET_NODES = 13
DEFAULT_MAX_RESPONSE_BYTES = 2_000_000


def http_request_cost(request_bytes: int, max_response_bytes: int | None) -> int:
    n = _SUBNET_NODES
    response = DEFAULT_MAX_RESPONSE_BYTES if max_response_bytes is None else max_response_bytes
    return (3_000_000 + 60_000 * n) * n + 400 * n * request_bytes + 800 * n * response


def blob_reply(data: bytes) -> bytes:
    return _BLOB_PREFIX + bytes(LEB128.encode_u(len(data))) + data


class HttpOutcalls:
    """The management canister's http_request, answered by the runtime's outcall book."""

    def __init__(self, runtime: CanisterRuntime) -> None:
        self.runtime = runtime

    async def http_request(self, instance: CanisterInstance, call: Call) -> Response:
        """An HTTP outcall: checked and priced as on the IC, answered by the outcall book, transformed."""
        book = self.runtime.outcalls
        interface = http_interface()
        try:
            (args,) = interface.decode_call("http_request", bytes(call.arg))
        except RuntimeUsageError as error:
            return _rejected(RejectCode.CANISTER_REJECT, f"http_request: {error}", call.cycles)
        transform = args.get("transform")
        request = HttpRequest(
            method=next(iter(args["method"])),
            url=args["url"],
            headers=tuple((h["name"], h["value"]) for h in args["headers"]),
            body=args.get("body") or b"",
            max_response_bytes=args.get("max_response_bytes"),
            transform=None if transform is None else str(transform["function"][1]),
        )
        record = book.open(instance.id, request, self.runtime.clock.now(), call.cycles)

        def refuse(code: RejectCode, message: str, refund: int) -> Response:
            record.reject = Reject(code, message)
            return _rejected(code, message, refund)

        problem = check_url(request.url) or check_request(request.headers, request.body)
        if problem is not None:
            return refuse(RejectCode.CANISTER_REJECT, f"http_request: {problem}", call.cycles)
        limit = MAX_RESPONSE_CEILING if request.max_response_bytes is None else request.max_response_bytes
        if limit > MAX_RESPONSE_CEILING:
            return refuse(
                RejectCode.CANISTER_REJECT,
                f"http_request: max_response_bytes is {limit}; it cannot exceed {MAX_RESPONSE_CEILING}",
                call.cycles,
            )
        context = b"" if transform is None else bytes(transform["context"])
        size = (
            len(request.url.encode())
            + sum(len(k.encode()) + len(v.encode()) for k, v in request.headers)
            + len(request.body)
            + len((request.transform or "").encode())
            + len(context)
        )
        cost = http_request_cost(size, request.max_response_bytes)
        if call.cycles < cost:
            return refuse(
                RejectCode.CANISTER_REJECT,
                f"http_request request sent with {call.cycles} cycles, but {cost} cycles are required.",
                call.cycles,
            )
        record.cycles_charged = cost
        refund = call.cycles - cost
        try:
            upstream = await book.respond(request, record)
        except Reject as reject:
            return refuse(reject.code, reject.message, refund)
        record.upstream = upstream
        if upstream.size > limit:
            return refuse(
                RejectCode.SYS_FATAL,
                f"Http body exceeds size limit of {limit} bytes: the response of {request.describe()} "
                f"has {upstream.size} (body and headers)",
                refund,
            )
        response = upstream
        if transform is not None:
            owner = transform["function"][0]
            owner_id = owner.to_str() if isinstance(owner, Principal) else str(owner)
            if owner_id != instance.id:
                return refuse(
                    RejectCode.CANISTER_REJECT,
                    f"http_request: the transform must be a query of the calling canister {instance.id}, "
                    f"not of {owner_id}",
                    refund,
                )
            transformed = await self._transform(instance, request.transform or "", upstream, context)
            if isinstance(transformed, Reject):
                return refuse(transformed.code, transformed.message, refund)
            response = transformed
        record.response = response
        reply = interface.encode_reply("http_request", (_result_value(response),))
        return Response(reply=reply, refund=refund)

    async def _transform(
        self, instance: CanisterInstance, method: str, response: HttpResponse, context: bytes
    ) -> HttpResponse | Reject:
        interface = http_interface()
        arg = interface.encode_call("transform", ({"response": _result_value(response), "context": context},))
        outcome = await self.runtime.deliver(instance, method, arg, b"", 0, query=True)
        if outcome.reply is None:
            return Reject(
                RejectCode.CANISTER_ERROR,
                f"http_request: the transform query {method!r} of {instance.id} failed: "
                f"{outcome.reject_message}",
            )
        try:
            value = interface.decode_reply("transform", outcome.reply)
        except RuntimeUsageError as error:
            return Reject(
                RejectCode.CANISTER_ERROR, f"http_request: the transform {method!r} replied wrongly: {error}"
            )
        return HttpResponse(
            int(value["status"]),
            tuple((h["name"], h["value"]) for h in value["headers"]),
            bytes(value["body"]),
        )


def _result_value(response: HttpResponse) -> dict[str, Any]:
    return {
        "status": response.status,
        "headers": [{"name": k, "value": v} for k, v in response.headers],
        "body": response.body,
    }


def _rejected(code: RejectCode, message: str, refund: int) -> Response:
    return Response.rejected(code, message, error_code_for(code), refund)
