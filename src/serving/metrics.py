"""Prometheus metrics of the API (requests, latency, predictions per class, the served model, the prediction log's
losses) and the ASGI middleware that records them.

Each app has its own registry. With several uvicorn workers, set PROMETHEUS_MULTIPROC_DIR (an empty folder) so
/metrics aggregates every worker (prometheus-client multiprocess mode).
"""

from __future__ import annotations

import os
import time
from collections import Counter as Tally
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServingMetrics:
    """The API's metrics, in one registry per app."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter("http_requests", "HTTP requests by method, route and status code",
                                ["method", "path", "status"], registry=r)
        self.latency = Histogram("http_request_duration_seconds", "Time to answer an HTTP request, by route",
                                 ["method", "path"], buckets=LATENCY_BUCKETS, registry=r)
        self.predictions = Counter("predictions", "Records scored, by model version and predicted class "
                                   "('value' for regression)", ["model_version", "prediction"], registry=r)
        self.model_version = Gauge("model_version", "Version number of the served model (0: none loaded)",
                                   ["model_name", "alias"], registry=r, multiprocess_mode="max")
        self.model_loads = Counter("model_loads", "Model (re)load attempts by outcome", ["outcome"], registry=r)
        self.log_dropped = Gauge("prediction_log_dropped", "Scored records the prediction log could not keep",
                                 registry=r, multiprocess_mode="sum")
        self.log_restarts = Gauge("prediction_log_restarts", "Times the prediction log's writer thread died and was "
                                  "restarted", registry=r, multiprocess_mode="sum")

    def count_predictions(self, version: str, values: list, classification: bool) -> None:
        """Add scored records to the per-class counter."""
        if not classification:
            self.predictions.labels(version, "value").inc(len(values))
            return
        if len(values) == 1:
            self.predictions.labels(version, values[0]).inc()
            return
        for label, n in Tally(values).items():
            self.predictions.labels(version, label).inc(n)

    def render(self) -> bytes:
        """The metrics in Prometheus text format (every worker's, in multiprocess mode)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware: counts every HTTP request and observes its latency under its route template."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics, clock: Callable[[], float] = time.perf_counter) -> None:
        self.app, self.metrics, self.clock = app, metrics, clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = self.clock(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            # unknown paths and methods share one label each, so scanners cannot blow up the label sets
            path = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.requests.labels(method, path, str(status)).inc()
            self.metrics.latency.labels(method, path).observe(self.clock() - started)
