"""``GET /metrics``: Prometheus text with the runs, events, store and live-log figures of the process."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from headwater.server.app import create_app
from headwater.server.backends.base import Finish, TextDelta
from headwater.server.backends.scripted import ScriptedBackend
from headwater.server.config import ServerConfig
from headwater.server.store import MemoryStore
from headwater.server.testing import LiveServer
from services import Replicas, stored_log


def figures(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            label = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[sample.name + (f"{{{label}}}" if label else "")] = sample.value
    return out


def test_metrics_count_the_events_of_each_stream(serve: Callable[[Any], LiveServer]) -> None:
    backend = ScriptedBackend([TextDelta("a"), TextDelta("b"), Finish()])
    server = serve(create_app(ServerConfig(backend="scripted"), backend=backend, store=MemoryStore()))
    before = figures(server.url)
    assert before["headwater_events_total"] == 0 and before["headwater_runs_live"] == 0
    with httpx.stream("POST", f"{server.url}/v1/responses", json={"input": "hi", "stream": True}) as r:
        frames = [line for line in r.iter_lines() if line.startswith("event: ")]
    after = figures(server.url)
    assert after["headwater_events_total"] == len(frames)
    assert after["headwater_lease_takeovers_total"] == 0
    assert after["headwater_errors_total{part=store}"] == 0


def _query(postgres_url: str, sql: str) -> dict[str, int]:
    """The rows of a two-column query (a name, a count) on the test's schema."""
    import asyncio

    import asyncpg

    base, _, schema = postgres_url.partition("?schema=")

    async def rows() -> dict[str, int]:
        conn = await asyncpg.connect(base, server_settings={"search_path": schema}, timeout=10)
        try:
            return {row[0]: row[1] for row in await conn.fetch(sql)}
        finally:
            await conn.close()

    return asyncio.run(rows())


def _replica_rows(postgres_url: str) -> dict[str, int]:
    """The workers' replica rows (none before the first worker has made the schema)."""
    import asyncpg

    try:
        return _query(postgres_url, "SELECT id, 1 FROM replicas")
    except asyncpg.exceptions.UndefinedTableError:
        return {}


def _unfinished_owners(postgres_url: str) -> dict[str, int]:
    """Unfinished responses by the replica (worker) that holds each one's lease."""
    return _query(postgres_url, "SELECT lease_replica, count(*) FROM responses "
                                "WHERE status IN ('queued', 'in_progress') GROUP BY lease_replica")


def _scrapes_agree(url: str, name: str, expected: float, times: int = 8, timeout: float = 30.0) -> list[float]:
    """``name`` in ``times`` scrapes in a row once one showed ``expected`` (each worker writes its figures
    every second; a guard of ``timeout`` seconds), or the last scrapes seen."""
    deadline = time.monotonic() + timeout
    while figures(url)[name] != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return [figures(url)[name] for _ in range(times)]


def test_metrics_of_two_workers_count_both_workers_runs_and_events(replicas: Replicas, postgres_url: str) -> None:
    (server,) = replicas(1, steps=3000, delay=0.01, extra=("--workers", "2"))
    deadline = time.monotonic() + 30
    while len(_replica_rows(postgres_url)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)  # both workers are up (each writes its replica row as it starts)
    ids: list[str] = []
    for _ in range(100):  # each request on a new connection: the kernel hands them to either worker
        body = {"input": "long", "background": True}
        ids.append(httpx.post(f"{server.url}/v1/responses", json=body, timeout=30).json()["id"])
        if len(_unfinished_owners(postgres_url)) == 2 and len(ids) >= 3:
            break
    owners = _unfinished_owners(postgres_url)
    assert len(owners) == 2 and sum(owners.values()) == len(ids)  # both workers run some
    # Whichever worker a scrape reaches, it reports the runs of both.
    assert _scrapes_agree(server.url, "headwater_runs_live", len(ids)) == [len(ids)] * 8
    for rid in ids:
        assert httpx.post(f"{server.url}/v1/responses/{rid}/cancel", timeout=30).json()["status"] == "cancelled"
    events = sum(len(stored_log(server.url, rid)) for rid in ids)
    assert _scrapes_agree(server.url, "headwater_events_total", events) == [events] * 8
    assert _scrapes_agree(server.url, "headwater_runs_live", 0) == [0] * 8
    assert figures(server.url)["headwater_store_seconds_count{operation=commit}"] > 0
