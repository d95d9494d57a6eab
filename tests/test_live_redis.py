"""The Redis live log against the machine's real Redis (a key prefix per test): ids from sequence numbers,
idempotent appends, range reads, TTL and length cap, one reader per process shared by its followers, and
cancel signals between processes (two ``RedisLiveLog`` instances stand for two replicas)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from headwater.server.entries import Entry
from headwater.server.live.redis import RedisLiveLog


def delta(seq: int) -> Entry:
    return Entry(seq, "response.output_text.delta", b'{"sequence_number": %d}' % seq)


@pytest.fixture
async def live(redis_url: str) -> AsyncIterator[RedisLiveLog]:
    instance = RedisLiveLog(redis_url)
    await instance.open()
    yield instance
    await instance.close()


@pytest.fixture
async def other(redis_url: str) -> AsyncIterator[RedisLiveLog]:
    instance = RedisLiveLog(redis_url)
    await instance.open()
    yield instance
    await instance.close()


async def test_every_key_has_a_ttl_and_a_length_cap(redis_url: str) -> None:
    live = RedisLiveLog(redis_url + "&ttl=30&final_ttl=5&maxlen=100")
    await live.open()
    client = aioredis.Redis.from_url(redis_url.partition("?")[0])
    try:
        await live.append("r1", [delta(n) for n in range(1000)])
        key = f"{live.prefix}:events:r1"
        assert 5_000 < await client.pttl(key) <= 30_000
        assert await client.xlen(key) < 1000  # trimmed (MAXLEN ~ trims whole nodes)
        await live.append("r1", [Entry(1000, "response.completed", b"{}")], ended=True)
        assert 0 < await client.pttl(key) <= 5_000
        assert [k async for k in client.scan_iter(match=f"{live.prefix}:*")] == [key.encode()]
    finally:
        await client.aclose()
        await live.close()


async def test_a_follower_in_another_process_gets_each_entry_then_the_terminal_one(
    live: RedisLiveLog, other: RedisLiveLog
) -> None:
    await live.append("r1", [delta(0)])

    async def follow() -> list[Entry]:
        return [e async for batch in other.follow("r1", keepalive=30) for e in batch]

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.05)
    await live.append("r1", [delta(1), delta(2)])
    await live.append("r1", [Entry(3, "response.completed", b"{}")], ended=True)
    got = await asyncio.wait_for(follower, 10)
    assert [e.sequence_number for e in got] == [0, 1, 2, 3]


async def test_followers_of_one_process_share_one_reader_connection(
    live: RedisLiveLog, other: RedisLiveLog, redis_url: str
) -> None:
    for n in range(3):
        await live.append(f"r{n}", [])

    async def follow(rid: str) -> list[Entry]:
        return [e async for batch in other.follow(rid, keepalive=30) for e in batch]

    followers = [asyncio.create_task(follow(f"r{n % 3}")) for n in range(9)]
    client = aioredis.Redis.from_url(redis_url.partition("?")[0])
    try:
        # Wait (a guard, not a timing claim) until all nine followers have started reading.
        for _ in range(200):
            if other.readers == 3:
                break
            await asyncio.sleep(0.05)
        clients = await client.client_list()
        readers = [c for c in clients if c.get("name") == f"{other.prefix}:reader"]
        assert len(readers) == 1
        assert other.readers == 3  # one tail per response, shared by its three followers
    finally:
        await client.aclose()
    for n in range(3):
        await live.append(f"r{n}", [delta(0), Entry(1, "response.completed", b"{}")], ended=True)
    results = await asyncio.wait_for(asyncio.gather(*followers), 10)
    assert all([e.sequence_number for e in r] == [0, 1] for r in results)


async def test_a_follower_whose_stream_vanishes_ends_so_that_its_caller_reads_the_store(
    live: RedisLiveLog, other: RedisLiveLog, redis_url: str
) -> None:
    await live.append("r1", [delta(0)])
    follower = asyncio.create_task(
        asyncio.wait_for(_collect(other.follow("r1", keepalive=30)), 10)
    )
    await asyncio.sleep(0.1)
    client = aioredis.Redis.from_url(redis_url.partition("?")[0])
    try:
        await client.delete(f"{live.prefix}:events:r1")  # as a Redis restart without persistence does
    finally:
        await client.aclose()
    assert [e.sequence_number for e in await follower] == [0]


async def test_without_redis_appends_go_on_and_are_counted() -> None:
    live = RedisLiveLog("redis://127.0.0.1:1/0")
    await live.open()
    try:
        await live.append("r1", [delta(0)])  # this process's own followers still get it
        assert (await live.read("r1")).entries == [delta(0)]
        assert live.errors >= 1
    finally:
        await live.close()


async def _collect(stream: AsyncIterator[list[Entry]]) -> list[Entry]:
    return [e async for batch in stream for e in batch]


async def test_a_cancel_published_by_one_process_reaches_another(live: RedisLiveLog, other: RedisLiveLog) -> None:
    heard: asyncio.Queue[str] = asyncio.Queue()
    other.on_cancel(heard.put_nowait)
    for _ in range(50):  # until the subscription is in place
        if await live.publish_cancel("r1") > 0:
            break
        await asyncio.sleep(0.05)
    assert await asyncio.wait_for(heard.get(), 5) == "r1"
