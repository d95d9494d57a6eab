"""``GET /metrics``: the server's figures in Prometheus' text format (prometheus-client), for operators of
several replicas. Each app has its own registry; gauges and totals are read when scraped (no cost per event
beyond one integer add in the run), latencies are histograms fed by the store's and live log's timing hooks.

With ``--workers N`` the N processes share one port, so a scrape reaches one of them at random: they then
keep their figures in prometheus-client's multiprocess files (``share_values(directory)`` in each worker,
before its app is made; ``Metrics(..., shared=directory)``), and whichever worker is scraped reports the sum
over all of them. Each worker writes its gauges and totals there every ``REFRESH_SECONDS`` (and at once when
it is the one scraped); runs live and queued are ``livesum`` gauges (a dead worker's runs are not counted once
the parent has called ``mark_process_dead``), totals and histograms add up over every worker that ever ran.

Without keys, like ``/healthz``, the endpoint needs no API key: expose it only where scrapers reach it.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["REFRESH_SECONDS", "Metrics", "forget_worker", "prepare_shared", "share_values"]

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
REFRESH_SECONDS = 1.0  # how often a worker writes its figures for the others' scrapes (--workers)
_TOTALS = ("events", "takeovers", "store_errors", "live_errors")


def prepare_shared(directory: str) -> None:
    """Make ``directory`` the workers' shared metrics directory (``PROMETHEUS_MULTIPROC_DIR``), emptied of an
    earlier run's files, before the workers are forked."""
    os.makedirs(directory, exist_ok=True)
    for path in glob.glob(os.path.join(directory, "*.db")):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory


def share_values() -> None:
    """In a worker, before its app is made: metrics made from now on keep their values in this process's
    files of the shared directory (prometheus-client chose its value class when it was imported, before)."""
    values.ValueClass = values.MultiProcessValue()


def forget_worker(pid: int, directory: str) -> None:
    """A worker exited: its live gauges (runs live, queued) no longer count."""
    multiprocess.mark_process_dead(pid, directory)


class Metrics(Collector):
    """The figures of one app. ``sources`` gives, at scrape time: runs generating, runs queued, events
    published, lease takeovers, store errors, live-log errors (each an int). ``shared``: the workers' metrics
    directory (``--workers``), in a process that called ``share_values``."""

    def __init__(self, sources: Callable[[], dict[str, int]], *, shared: str | None = None) -> None:
        self._sources = sources
        self.shared = shared
        self.registry = CollectorRegistry(auto_describe=False)
        # With ``shared``, the metrics write to the process's files and a scrape reads every worker's.
        own = None if shared else self.registry
        self.store_seconds = Histogram(
            "headwater_store_seconds", "Time of store operations (PostgreSQL: each group commit, each read).",
            ["operation"], buckets=_BUCKETS, registry=own,
        )
        self.live_seconds = Histogram(
            "headwater_live_seconds", "Time of live-log operations (Redis: each append, read, XREAD).",
            ["operation"], buckets=_BUCKETS, registry=own,
        )
        self.requests_failed = Counter(
            "headwater_unavailable_total", "Requests answered 503 because the store could not be reached.",
            registry=own,
        )
        self._task: asyncio.Task[None] | None = None
        if shared is None:
            self.registry.register(self)
            return
        multiprocess.MultiProcessCollector(self.registry, path=shared)
        self._live = Gauge("headwater_runs_live", "Runs generating in the server's processes.",
                           multiprocess_mode="livesum", registry=None)
        self._queued = Gauge("headwater_runs_queued", "Runs of the server's processes still queued.",
                             multiprocess_mode="livesum", registry=None)
        self._totals = {
            "events": Counter("headwater_events", "Events published by the server's runs (rate(): events/s).",
                              registry=None),
            "takeovers": Counter("headwater_lease_takeovers", "Responses the server's replicas took over from "
                                 "dead ones.", registry=None),
        }
        errors = Counter("headwater_errors", "Errors of the shared parts, by part.", ["part"], registry=None)
        self._totals["store_errors"] = errors.labels("store")
        self._totals["live_errors"] = errors.labels("live")
        self._written = dict.fromkeys(_TOTALS, 0)

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

    # --- shared (--workers) -----------------------------------------------------------------------------

    def write_shared(self) -> None:
        """Write this process's figures to its files of the shared directory."""
        now = self._sources()
        self._live.set(now["live"])
        self._queued.set(now["queued"])
        for name in _TOTALS:
            grown = now[name] - self._written[name]
            if grown > 0:
                self._totals[name].inc(grown)
                self._written[name] = now[name]

    async def start(self) -> None:
        """With ``shared``: write this process's figures every ``REFRESH_SECONDS`` until ``stop``."""
        if self.shared is not None:
            self.write_shared()
            self._task = asyncio.get_running_loop().create_task(self._refresh(), name="headwater-metrics")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        if self.shared is not None:
            self.write_shared()  # the last figures (the totals stay counted after this worker is gone)

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            self.write_shared()

    def route(self) -> Route:
        async def metrics(request: Request) -> Response:
            if self.shared is not None:
                self.write_shared()  # this worker's figures as of now; the others' as of their last refresh
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

        return Route("/metrics", metrics, methods=["GET"])
