"""``GET /metrics``: this process's figures in Prometheus' text format (prometheus-client), for operators of
several replicas. Each app has its own registry; gauges and totals are read when scraped (no cost per event
beyond one integer add in the run), latencies are histograms fed by the store's and live log's timing hooks.

Without keys, like ``/healthz``, the endpoint needs no API key: expose it only where scrapers reach it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["Metrics"]

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics(Collector):
    """The figures of one app. ``sources`` gives, at scrape time: runs generating, runs queued, events
    published, lease takeovers, store errors, live-log errors (each an int)."""

    def __init__(self, sources: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._sources = sources
        self.store_seconds = Histogram(
            "headwater_store_seconds", "Time of store operations (PostgreSQL: each group commit, each read).",
            ["operation"], buckets=_BUCKETS, registry=self.registry,
        )
        self.live_seconds = Histogram(
            "headwater_live_seconds", "Time of live-log operations (Redis: each append, read, XREAD).",
            ["operation"], buckets=_BUCKETS, registry=self.registry,
        )
        self.requests_failed = Counter(
            "headwater_unavailable_total", "Requests answered 503 because the store could not be reached.",
            registry=self.registry,
        )
        self.registry.register(self)

    def observe_store(self, operation: str, seconds: float) -> None:
        self.store_seconds.labels(operation).observe(seconds)

    def observe_live(self, operation: str, seconds: float) -> None:
        self.live_seconds.labels(operation).observe(seconds)

    def collect(self) -> Iterator[Any]:
        now = self._sources()
        yield GaugeMetricFamily("headwater_runs_live", "Runs generating in this process.", value=now["live"])
        yield GaugeMetricFamily("headwater_runs_queued", "Runs of this process still queued.", value=now["queued"])
        yield CounterMetricFamily("headwater_events", "Events published by this process's runs (rate(): events/s).",
                                  value=now["events"])
        yield CounterMetricFamily("headwater_lease_takeovers", "Responses this replica took over from dead ones.",
                                  value=now["takeovers"])
        errors = CounterMetricFamily("headwater_errors", "Errors of the shared parts, by part.", labels=["part"])
        errors.add_metric(["store"], now["store_errors"])
        errors.add_metric(["live"], now["live_errors"])
        yield errors

    def route(self) -> Route:
        async def metrics(request: Request) -> Response:
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

        return Route("/metrics", metrics, methods=["GET"])
