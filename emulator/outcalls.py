"""HTTP outcalls of the canisters in the runtime: scripted like LLM answers, recorded like calls.

A canister's `http_request` to the management canister reaches `OutcallBook.respond`: the first scripted
rule that matches (method, URL, headers, body) answers with its response or its reject; nothing leaves
the process unless loopback pass-through was asked for by name, and then only to 127.0.0.1, ::1 or
localhost. Without a rule the call is rejected with a message that says how to script it. The IC's own
rules (cycles, size limits, the transform) are applied by the runtime's management canister around it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from icllm_emulator import patterns
from icllm_emulator.addresses import is_loopback_host
from icllm_emulator.domain import Reject, RejectCode
from icllm_emulator.errors import IcllmError

MAX_RESPONSE_CEILING = 2_000_000
MAX_URL_LENGTH = 8192
# The IC's limits on an outcall request (ic-types canister_http.rs, validate_http_headers_and_body).
MAX_REQUEST_BYTES = 2_000_000  # header names and values, and the body
MAX_HEADERS = 64
MAX_HEADER_PART_BYTES = 8 * 1024  # one header's name, or its value
MAX_HEADERS_BYTES = 48 * 1024
# An HTTP header name is a token (RFC 9110); its value is visible ASCII, spaces and tabs.
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
METHODS = ("get", "head", "post")


class OutcallRuleError(IcllmError, ValueError):
    """A scripted outcall rule that cannot work; the message says what would be valid."""


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """An outcall as the canister sent it."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    max_response_bytes: int | None = None
    transform: str | None = None  # the canister's transform query, by method name

    def describe(self) -> str:
        return f"{self.method.upper()} {self.url}"


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    @property
    def size(self) -> int:
        """What max_response_bytes counts: the body and every header's name and value."""
        return len(self.body) + sum(len(k.encode()) + len(v.encode()) for k, v in self.headers)


@dataclass(frozen=True, slots=True)
class OutcallMatch:
    """Every criterion given must hold; an empty match matches every outcall."""

    method: str | None = None
    url: str | None = None
    url_regex: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body_contains: bytes | None = None

    def __post_init__(self) -> None:
        if self.method is not None and self.method.lower() not in METHODS:
            raise OutcallRuleError(
                f"method {self.method!r} is not an outcall method; choose one of: {', '.join(METHODS)}"
            )
        if self.url_regex is not None:
            try:
                patterns.compiled(self.url_regex)
            except patterns.PatternError as error:
                raise OutcallRuleError(f"url_regex {error}") from None

    def mismatches(self, request: HttpRequest) -> list[str]:
        why = []
        if self.method is not None and request.method != self.method.lower():
            why.append(f"method is {request.method}, not {self.method.lower()}")
        if self.url is not None and request.url != self.url:
            why.append(f"url is {request.url!r}, not {self.url!r}")
        if self.url_regex is not None:
            try:
                if not patterns.search(self.url_regex, request.url):
                    why.append(f"url {request.url!r} does not match {self.url_regex!r}")
            except patterns.PatternTimeout as timeout:
                why.append(f"{timeout}, so it counts as a miss")
        sent = {k.lower(): v for k, v in request.headers}
        for name, value in self.headers:
            if sent.get(name.lower()) != value:
                why.append(f"header {name} is {sent.get(name.lower())!r}, not {value!r}")
        if self.body_contains is not None and self.body_contains not in request.body:
            why.append(f"body does not contain {self.body_contains!r}")
        return why

    def describe(self) -> str:
        parts = [
            f"{k}={v!r}"
            for k, v in (("method", self.method), ("url", self.url), ("url_regex", self.url_regex))
            if v
        ]
        parts += [f"header {k}={v!r}" for k, v in self.headers]
        if self.body_contains is not None:
            parts.append(f"body_contains={self.body_contains!r}")
        return ", ".join(parts) or "any outcall"


@dataclass
class OutcallRule:
    match: OutcallMatch
    response: HttpResponse | None = None
    reject: Reject | None = None
    times: int | None = None
    id: str = ""
    uses: int = 0

    def __post_init__(self) -> None:
        if (self.response is None) == (self.reject is None):
            raise OutcallRuleError("an outcall rule answers with a response or a reject, exactly one of them")
        if self.times is not None and self.times < 1:
            raise OutcallRuleError(f"times is 1 or more, got {self.times}")
        if self.response is not None and not 100 <= self.response.status <= 599:
            raise OutcallRuleError(f"status {self.response.status} is not an HTTP status (100-599)")

    @property
    def exhausted(self) -> bool:
        return self.times is not None and self.uses >= self.times


@dataclass
class OutcallRecord:
    """One outcall and how it ended; `response` is what the canister got (after its transform)."""

    id: str
    canister: str
    request: HttpRequest
    received_at: float
    cycles_attached: int = 0
    cycles_charged: int = 0
    rule_id: str = ""
    upstream: HttpResponse | None = None  # before the transform
    response: HttpResponse | None = None
    reject: Reject | None = None
    unexpected: bool = False


@dataclass
class OutcallBook:
    """Scripted outcall rules, the history of outcalls, and the policy for unscripted ones."""

    strict: bool = False
    allow_loopback: bool = False
    rules: list[OutcallRule] = field(default_factory=list)
    records: list[OutcallRecord] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _record_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def add(self, rule: OutcallRule) -> str:
        rule.id = rule.id or f"outcall-rule-{next(self._ids)}"
        if any(r.id == rule.id for r in self.rules):
            raise OutcallRuleError(f"an outcall rule with id {rule.id!r} exists already")
        self.rules.append(rule)
        return rule.id

    def clear(self) -> None:
        self.rules.clear()

    def reset(self, strict: bool, allow_loopback: bool) -> None:
        self.rules.clear()
        self.records.clear()
        self.strict, self.allow_loopback = strict, allow_loopback
        self._ids = itertools.count(1)
        self._record_ids = itertools.count(1)

    def open(self, canister: str, request: HttpRequest, now: float, cycles: int) -> OutcallRecord:
        record = OutcallRecord(f"outcall-{next(self._record_ids):06d}", canister, request, now, cycles)
        self.records.append(record)
        return record

    def select(self, request: HttpRequest) -> OutcallRule | None:
        for rule in self.rules:
            if not rule.exhausted and not rule.match.mismatches(request):
                rule.uses += 1
                return rule
        return None

    def explain_miss(self, request: HttpRequest) -> str:
        lines = [
            f"HTTP outcall {request.describe()} is not scripted: the canister runtime sends no request to "
            "the network. Script it from pytest with icllm.outcalls.on(url=...).reply(status=200, body=...) "
            "(or Control.AddOutcallRules)"
            + (
                "; loopback pass-through is on, but this URL is not on loopback"
                if self.allow_loopback
                else ""
            )
        ]
        for rule in self.rules:
            why = "used up" if rule.exhausted else "; ".join(rule.match.mismatches(request))
            lines.append(f"  rule {rule.id} ({rule.match.describe()}): {why}")
        return "\n".join(lines)

    async def respond(self, request: HttpRequest, record: OutcallRecord) -> HttpResponse:
        """The scripted answer, a loopback server's, or the `Reject` the canister gets."""
        rule = self.select(request)
        if rule is not None:
            record.rule_id = rule.id
            if rule.reject is not None:
                raise rule.reject
            assert rule.response is not None
            return rule.response
        if self.allow_loopback and is_loopback(request.url):
            return await _pass_through(request)
        record.unexpected = self.strict
        raise Reject(RejectCode.CANISTER_REJECT, self.explain_miss(request))


def check_url(url: str) -> str | None:
    """Why the IC would refuse this URL, or None."""
    if len(url) > MAX_URL_LENGTH:
        return f"the URL is {len(url)} characters; the IC allows at most {MAX_URL_LENGTH}"
    bad = next((i for i, c in enumerate(url) if c <= " " or c == "\x7f"), None)
    if bad is not None:
        return (
            f"{url[:80]!r} is not a URL: it has {url[bad]!r} at position {bad} (spaces and control "
            "characters are percent-encoded in a URL)"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- parsing the port checks its range
    except ValueError as error:
        return f"{url[:80]!r} is not a URL: {error}"
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return f"{url[:80]!r} is not an http(s) URL with a host (the IC sends outcalls to https URLs)"
    return None


def check_request(headers: tuple[tuple[str, str], ...], body: bytes) -> str | None:
    """Why the IC would refuse these headers and body (with its own message), or None."""
    names = [len(name.encode()) for name, _ in headers]
    values = [len(value.encode()) for _, value in headers]
    headers_bytes = sum(names) + sum(values)
    if len(headers) > MAX_HEADERS:
        return f"number of all http headers {len(headers)} exceeds {MAX_HEADERS}"
    if max(names, default=0) > MAX_HEADER_PART_BYTES:
        return (
            f"number of bytes to represent some http header name {max(names)} exceeds {MAX_HEADER_PART_BYTES}"
        )
    if max(values, default=0) > MAX_HEADER_PART_BYTES:
        return (
            f"number of bytes to represent some http header value {max(values)} exceeds "
            f"{MAX_HEADER_PART_BYTES}"
        )
    if headers_bytes > MAX_HEADERS_BYTES:
        return (
            "total number of bytes to represent all http header names and values "
            f"{headers_bytes} exceeds {MAX_HEADERS_BYTES}"
        )
    if headers_bytes + len(body) > MAX_REQUEST_BYTES:
        return (
            "total number of bytes to represent all http header names and values and http body "
            f"{headers_bytes + len(body)} exceeds {MAX_REQUEST_BYTES}"
        )
    for name, value in headers:
        if not name or not set(name) <= _TOKEN:
            return (
                f"the header name {name[:80]!r} is not an HTTP header name "
                "(letters, digits and !#$%&'*+-.^_`|~)"
            )
        if any(not (" " <= c <= "~" or c == "\t") for c in value):
            return (
                f"the value of header {name} ({value[:80]!r}) is not an HTTP header value "
                "(visible ASCII characters, spaces and tabs)"
            )
    return None


def is_loopback(url: str) -> bool:
    return is_loopback_host(urlsplit(url).hostname or "")


async def _pass_through(request: HttpRequest) -> HttpResponse:
    import httpx

    limit = MAX_RESPONSE_CEILING if request.max_response_bytes is None else request.max_response_bytes
    try:
        async with (
            httpx.AsyncClient(timeout=30, follow_redirects=False, trust_env=False) as client,
            client.stream(
                request.method.upper(),
                request.url,
                headers=list(request.headers),
                content=request.body or None,
            ) as answer,
        ):
            body = bytearray()
            async for chunk in answer.aiter_bytes():
                body += chunk
                if len(body) > limit:
                    break
            return HttpResponse(answer.status_code, tuple(answer.headers.items()), bytes(body))
    except (httpx.HTTPError, httpx.InvalidURL, ValueError) as error:
        # ValueError: what httpx refuses before sending (check_url and check_request refuse it first)
        raise Reject(
            RejectCode.SYS_TRANSIENT,
            f"the loopback outcall to {request.url} failed: {type(error).__name__}: {error}",
        ) from None
