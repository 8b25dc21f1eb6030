"""Control's outcall methods: proto <-> the outcall book's types, in both directions."""

from __future__ import annotations

from typing import Any

from icllm_emulator._proto.icllm.v1 import control_pb2 as cpb
from icllm_emulator.domain import Reject
from icllm_emulator.grpc_api.pages import ANSWER_BYTES, shortened
from icllm_emulator.outcalls import HttpResponse, OutcallMatch, OutcallRecord, OutcallRule
from icllm_emulator.rules import parse_reject_code


def _headers(headers: tuple[tuple[str, str], ...]) -> list[cpb.HttpHeader]:
    return [cpb.HttpHeader(name=k, value=v) for k, v in headers]


def response_pb(response: HttpResponse) -> cpb.OutcallResponse:
    return cpb.OutcallResponse(status=response.status, headers=_headers(response.headers), body=response.body)


def rule_from_pb(rule: cpb.OutcallRule) -> OutcallRule:
    m = rule.match
    match = OutcallMatch(
        method=m.method if m.HasField("method") else None,
        url=m.url if m.HasField("url") else None,
        url_regex=m.url_regex if m.HasField("url_regex") else None,
        headers=tuple((h.name, h.value) for h in m.headers),
        body_contains=m.body_contains if m.HasField("body_contains") else None,
    )
    outcome = rule.WhichOneof("outcome")
    response = reject = None
    if outcome == "response":
        r = rule.response
        response = HttpResponse(r.status or 200, tuple((h.name, h.value) for h in r.headers), r.body)
    elif outcome == "reject":
        reject = Reject(parse_reject_code(rule.reject.code), rule.reject.message)
    return OutcallRule(
        match, response, reject, times=rule.times if rule.HasField("times") else None, id=rule.id
    )


def rule_pb(rule: OutcallRule) -> cpb.OutcallRule:
    m = rule.match
    match = cpb.OutcallMatch(
        method=m.method,
        url=m.url,
        url_regex=m.url_regex,
        headers=_headers(m.headers),
        body_contains=m.body_contains,
    )
    out = cpb.OutcallRule(id=rule.id, match=match, times=rule.times)
    if rule.response is not None:
        out.response.CopyFrom(response_pb(rule.response))
    if rule.reject is not None:
        out.reject.CopyFrom(cpb.RejectAction(code=int(rule.reject.code), message=rule.reject.message))
    return out


def record_pb(record: OutcallRecord) -> cpb.Outcall:
    request = record.request
    out = cpb.Outcall(
        id=record.id,
        canister_id=record.canister,
        method=request.method,
        url=request.url,
        headers=_headers(request.headers),
        body=request.body,
        max_response_bytes=request.max_response_bytes,
        transform=request.transform or "",
        rule_id=record.rule_id,
        cycles_attached=str(record.cycles_attached),
        cycles_charged=str(record.cycles_charged),
        unexpected=record.unexpected,
        received_at=record.received_at,
    )
    if record.response is not None:
        out.response.CopyFrom(response_pb(record.response))
    if record.upstream is not None:
        out.upstream.CopyFrom(response_pb(record.upstream))
    if record.reject is not None:
        out.reject_code = int(record.reject.code)
        out.reject_message = record.reject.message
    if out.ByteSize() > ANSWER_BYTES:
        _shorten(out)
    return out


# Each part of an outcall too large for an answer keeps at most this much.
_PART_BYTES = ANSWER_BYTES // 8


def _shorten(out: cpb.Outcall) -> None:
    """Cut each large part of the outcall to its beginning, so that it fits in an answer, and say so."""
    out.truncated = True
    out.url = shortened(out.url, _PART_BYTES)[0]
    out.reject_message = shortened(out.reject_message, _PART_BYTES)[0]
    out.body = out.body[:_PART_BYTES]
    _keep_headers(out.headers)
    for part in ("response", "upstream"):
        if not out.HasField(part):
            continue  # absent: writing to it would make it present
        response = getattr(out, part)
        response.body = response.body[:_PART_BYTES]
        _keep_headers(response.headers)


def _keep_headers(headers: Any) -> None:
    """Keep the first headers that fit in a part."""
    room = _PART_BYTES
    for index, header in enumerate(headers):
        room -= header.ByteSize()
        if room < 0:
            del headers[index:]
            return
