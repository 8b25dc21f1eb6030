"""`GET /metrics`: Prometheus text format, for the HTTP door and for the canister behind every door.

HTTP figures (requests by route, method and status; latency; requests in progress) are counted by
an ASGI middleware. Canister figures (calls, rejects by code, queue depth, jobs in flight and held,
tokens in and out, call latency) are read from the engine's history at scrape time, so they count
gRPC and HTTP callers alike. Each app has its own registry: several emulators can share a process.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from icllm_emulator.domain import RejectCode
from icllm_emulator.engine import Engine

# Seconds: from a cached answer (sub-millisecond) to a caller deadline of 300 s.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
)
OTHER_ROUTE = "other"
# A status for requests whose client went away before an answer could be sent (nginx's convention).
CLIENT_CLOSED = 499


class _CanisterCollector(Collector):
    """The engine's running totals, read when Prometheus scrapes."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        stats = self.engine.stats()
        yield CounterMetricFamily("icllm_calls", "Calls to the LLM canister, from every door", stats.calls)
        yield CounterMetricFamily("icllm_calls_answered", "Calls answered with a reply", stats.answered)
        rejects = CounterMetricFamily(
            "icllm_rejects", "Calls rejected, by IC reject code", labels=("code", "name")
        )
        for code in RejectCode:
            rejects.add_metric((str(int(code)), code.name), stats.rejects_by_code.get(int(code), 0))
        yield rejects
        yield GaugeMetricFamily("icllm_calls_pending", "Calls waiting for their answer", stats.pending)
        yield GaugeMetricFamily("icllm_queue_depth", "Prompts waiting for an AI worker", stats.queue_depth)
        yield GaugeMetricFamily("icllm_jobs_in_flight", "Prompts leased to an AI worker", stats.in_flight)
        yield GaugeMetricFamily("icllm_jobs_held", "Finished answers held back by a test", stats.held)
        yield CounterMetricFamily("icllm_input_tokens", "Prompt tokens received", stats.input_tokens)
        yield CounterMetricFamily("icllm_output_tokens", "Answer tokens returned", stats.output_tokens)
        latency = GaugeMetricFamily(
            "icllm_call_latency_seconds",
            "Canister call latency over the recent calls, by quantile",
            labels=("quantile",),
        )
        for name, quantile in (("p50", "0.5"), ("p90", "0.9"), ("p99", "0.99"), ("max", "1")):
            latency.add_metric((quantile,), stats.latency_ms[name] / 1000)
        yield latency


class Metrics:
    """The registry of one app, and the ASGI middleware that counts its requests."""

    def __init__(self, engine: Engine, routes: Iterable[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.routes = frozenset(routes)
        self.requests = Counter(
            "icllm_http_requests",
            "HTTP requests, by route, method and status",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "icllm_http_request_duration_seconds",
            "HTTP request latency, until the last byte of the response",
            ("route",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_progress = Gauge(
            "icllm_http_requests_in_progress", "HTTP requests being served", registry=self.registry
        )
        self.registry.register(_CanisterCollector(engine))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """Wrap `app`: count each HTTP request once its response has ended (or its client left)."""

        async def counted(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            route = scope["path"] if scope["path"] in self.routes else OTHER_ROUTE
            status = CLIENT_CLOSED
            started = time.perf_counter()

            async def sending(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            self.in_progress.inc()
            try:
                await app(scope, receive, sending)
            finally:
                self.in_progress.dec()
                self.requests.labels(route, scope["method"], str(status)).inc()
                self.latency.labels(route).observe(time.perf_counter() - started)

        return counted
