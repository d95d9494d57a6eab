"""What replicas leave behind and what each of them answers, with real ``headwater serve`` processes on this
machine's PostgreSQL and Redis: a dead replica's row is removed once its responses were taken over (a stopped
one's at once); a non-streamed GET of a live response answers the same on every replica."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx

from services import Frames, Replicas, payload, wait_status


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


def test_a_get_of_a_live_response_answers_on_every_replica_what_its_stream_has_shown(replicas: Replicas) -> None:
    owner, other = replicas(2, steps=3000, delay=0.01)
    rid = httpx.post(f"{owner.url}/v1/responses", json={"input": "long", "background": True}, timeout=30).json()["id"]
    with httpx.stream("GET", f"{other.url}/v1/responses/{rid}", params={"stream": "true"}, timeout=60) as r:
        seen = [payload(frame) for frame in Frames(r).take(40)]
    text = "".join(event["delta"] for event in seen if event["type"] == "response.output_text.delta")
    assert text
    for url in (other.url, owner.url):  # the replica that does not run it, and the one that does
        body = httpx.get(f"{url}/v1/responses/{rid}", timeout=10).json()
        assert body["status"] == "in_progress"
        assert body["output"][0]["content"][0]["text"].startswith(text), url
    assert httpx.post(f"{other.url}/v1/responses/{rid}/cancel", timeout=30).json()["status"] == "cancelled"
    final = [httpx.get(f"{url}/v1/responses/{rid}", timeout=10).json() for url in (owner.url, other.url)]
    assert final[0] == final[1] and final[0]["output"][0]["content"][0]["text"].startswith(text)
