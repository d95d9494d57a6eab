"""The Redis live log against the machine's real Redis (a key prefix per test): ids from sequence numbers,
idempotent appends, range reads, TTL and length cap, one reader per process shared by its followers, and
cancel signals between processes (two ``RedisLiveLog`` instances stand for two replicas). Coalesced appends
(one script call for all the batches queued together) keep each of those properties, and a private
``redis-server`` that a test stops and starts shows what a restart costs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from headwater.server.entries import Entry
from headwater.server.live.redis import RedisLiveLog
from services import PrivateRedis


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


# --- coalesced appends: one writer per process, one script call for every batch queued meanwhile -------------


Rows = list[tuple[bytes, dict[bytes, bytes]]]


async def _rows(raw: aioredis.Redis, key: str) -> Rows:
    """The stream as Redis holds it."""
    rows: Rows = await raw.xrange(key)  # type: ignore[assignment]
    return rows


def _ids(rows: Rows) -> list[int]:
    return [int(stream_id.split(b"-")[0]) - 1 for stream_id, _ in rows]


@pytest.fixture
async def redis_only(redis_url: str) -> AsyncIterator[RedisLiveLog]:
    """A live log with no copy of its own: what it holds is what Redis holds."""
    instance = RedisLiveLog(redis_url + "&local=0")
    await instance.open()
    yield instance
    await instance.close()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url.partition("?")[0])
    yield client
    await client.aclose()


async def test_appends_of_many_responses_at_once_go_in_one_call_each_to_its_own_stream(
    redis_only: RedisLiveLog, raw: aioredis.Redis
) -> None:
    await redis_only.append("warm", [])  # (the script is loaded)
    writes = redis_only.writes
    await asyncio.gather(*(redis_only.append(f"r{n}", [delta(0), delta(1), delta(2)][: n % 3 + 1])
                           for n in range(30)))
    assert redis_only.writes == writes + 1
    for n in range(30):
        assert _ids(await _rows(raw, f"{redis_only.prefix}:events:r{n}")) == list(range(n % 3 + 1))


async def test_append_many_sends_one_call_serves_local_followers_and_fails_only_a_batch_after_its_end(
    live: RedisLiveLog, raw: aioredis.Redis
) -> None:
    end = Entry(1, "response.completed", b"{}")
    await live.append("done", [delta(0), end], ended=True)
    await live.append("warm", [])  # (the script is loaded)
    writes = live.writes
    outcomes = await live.append_many([("a", [delta(0), delta(1)], False), ("done", [delta(2)], False),
                                       ("b", [delta(0), end], True), ("a", [delta(2)], False)])
    assert outcomes[0] is None and isinstance(outcomes[1], ValueError) and outcomes[2:] == [None, None]
    assert live.writes == writes + 1
    assert _ids(await _rows(raw, f"{live.prefix}:events:a")) == [0, 1, 2]
    assert _ids(await _rows(raw, f"{live.prefix}:events:done")) == [0, 1]
    rows = await _rows(raw, f"{live.prefix}:events:b")
    assert _ids(rows) == [0, 1] and b"e" in rows[-1][1]
    local = await live.read("a")  # (this process's copy, which its own followers read)
    assert [e.sequence_number for e in local.entries] == [0, 1, 2] and not local.ended
    assert (await live.read("b")).ended


async def test_expiries_queued_together_go_in_one_call_after_the_appends_queued_with_them(
    redis_only: RedisLiveLog, raw: aioredis.Redis
) -> None:
    end = Entry(1, "response.completed", b"{}")
    await asyncio.gather(*(redis_only.append(f"r{n}", [delta(0)]) for n in range(20)))
    await redis_only.expire("warm")  # (the script is loaded)
    commands = redis_only.commands
    await asyncio.gather(*(redis_only.expire(f"r{n}", 0.0 if n % 2 else 3600.0) for n in range(20)))
    assert redis_only.commands == commands + 1
    for n in range(20):
        key = f"{redis_only.prefix}:events:r{n}"
        assert await raw.exists(key) == (0 if n % 2 else 1)
        if not n % 2:
            assert 0 < await raw.pttl(key) <= 3600_000
    # An end and its expiry queued together: the stream goes after its last entry, and is not made again.
    await asyncio.gather(redis_only.append("r0", [end], ended=True), redis_only.expire("r0"))
    assert await raw.exists(f"{redis_only.prefix}:events:r0") == 0


async def test_batches_of_one_response_keep_their_order_within_a_call_and_across_calls(
    redis_only: RedisLiveLog, raw: aioredis.Redis
) -> None:
    await redis_only.append("r1", [delta(0)])
    writes = redis_only.writes
    # Three batches of r1 (and one of r2 between them) queued together: one call, in order.
    await asyncio.gather(redis_only.append("r1", [delta(1), delta(2)]), redis_only.append("r2", [delta(0)]),
                         redis_only.append("r1", [delta(3)]), redis_only.append("r1", [delta(4), delta(5)]))
    assert redis_only.writes == writes + 1
    # A batch queued while a call is in flight goes into the next call, after it.
    first = asyncio.ensure_future(redis_only.append("r1", [delta(6)]))
    await asyncio.sleep(0)  # (the writer has sent the call and waits for its reply)
    second = asyncio.ensure_future(redis_only.append("r1", [delta(7), delta(8)]))
    await asyncio.gather(first, second)
    assert redis_only.writes == writes + 3
    assert _ids(await _rows(raw, f"{redis_only.prefix}:events:r1")) == list(range(9))


async def test_a_retried_batch_in_the_same_call_adds_nothing_twice(
    redis_only: RedisLiveLog, raw: aioredis.Redis
) -> None:
    await asyncio.gather(redis_only.append("r1", [delta(0), delta(1)]),
                         redis_only.append("r1", [delta(0), delta(1), delta(2)]),  # a retry after a lost reply
                         redis_only.append("r2", [delta(0)]))
    await redis_only.append("r1", [delta(1), delta(2), delta(3)])
    assert _ids(await _rows(raw, f"{redis_only.prefix}:events:r1")) == [0, 1, 2, 3]
    assert (await redis_only.read("r1", 1)).entries == [delta(2), delta(3)]


async def test_the_terminal_batch_marks_its_last_entry_and_nothing_follows_it(
    redis_only: RedisLiveLog, raw: aioredis.Redis
) -> None:
    end = Entry(2, "response.completed", b"{}")
    await asyncio.gather(redis_only.append("r1", [delta(0), delta(1), end], ended=True),
                         redis_only.append("r2", [delta(0)]))
    rows = await _rows(raw, f"{redis_only.prefix}:events:r1")
    assert _ids(rows) == [0, 1, 2] and b"e" in rows[-1][1] and not any(b"e" in f for _, f in rows[:-1])
    await asyncio.gather(redis_only.append("r1", [delta(3), delta(4)]),  # after the end: taken by nobody
                         redis_only.append("r2", [delta(1)]))
    assert _ids(await _rows(raw, f"{redis_only.prefix}:events:r1")) == [0, 1, 2]
    assert _ids(await _rows(raw, f"{redis_only.prefix}:events:r2")) == [0, 1]
    got = await redis_only.read("r1", 1)
    assert got.ended and got.entries == [end]


async def test_every_stream_of_a_shared_call_gets_its_ttl_and_length_cap(redis_url: str, raw: aioredis.Redis) -> None:
    live = RedisLiveLog(redis_url + "&ttl=30&final_ttl=5&maxlen=100&local=0")
    await live.open()
    try:
        await asyncio.gather(live.append("new", []),
                             live.append("long", [delta(n) for n in range(1000)]),
                             live.append("ended", [delta(0), Entry(1, "response.completed", b"{}")], ended=True))
        for name, low, high in (("new", 5_000, 30_000), ("long", 5_000, 30_000), ("ended", 0, 5_000)):
            assert low < await raw.pttl(f"{live.prefix}:events:{name}") <= high, name
        assert await raw.xlen(f"{live.prefix}:events:long") < 1000  # trimmed (MAXLEN ~ trims whole nodes)
        assert await raw.xlen(f"{live.prefix}:events:new") == 0 and (await live.read("new")).found
    finally:
        await live.close()


async def test_a_stream_s_ttl_is_set_by_its_first_append_then_once_every_quarter_ttl(
    redis_url: str, raw: aioredis.Redis
) -> None:
    live = RedisLiveLog(redis_url + "&ttl=40&final_ttl=5&local=0")
    await live.open()
    key = f"{live.prefix}:events:r1"
    try:
        await live.append("r1", [delta(0)])
        assert 0 < await raw.pttl(key) <= 40_000
        await raw.persist(key)
        await live.append("r1", [delta(1)])  # within the window: no PEXPIRE (one per stream, not per append)
        assert await raw.pttl(key) == -1
        live._ttl_since -= live._ttl_every  # a quarter of the TTL has passed: the next append sets it again
        await live.append("r1", [delta(2)])
        assert 0 < await raw.pttl(key) <= 40_000
        await raw.persist(key)
        await live.append("r1", [Entry(3, "response.completed", b"{}")], ended=True)  # the end: always
        assert 0 < await raw.pttl(key) <= 5_000
        assert _ids(await _rows(raw, key)) == [0, 1, 2, 3]
    finally:
        await live.close()


@contextlib.asynccontextmanager
async def _restartable(private_redis: PrivateRedis) -> AsyncIterator[tuple[RedisLiveLog, aioredis.Redis]]:
    """A live log (prefix ``t``, no in-process copy) on the private Redis and a raw client of it."""
    live = RedisLiveLog(private_redis.url + "?prefix=t&local=0")
    await live.open()
    raw = aioredis.Redis.from_url(private_redis.url)
    try:
        yield live, raw
    finally:
        await raw.aclose()
        await live.close()


async def test_a_stream_made_again_by_a_restarted_redis_gets_its_ttl_though_no_append_failed(
    private_redis: PrivateRedis,
) -> None:
    async with _restartable(private_redis) as (live, raw):
        await live.append("r1", [delta(0)])
        private_redis.restart(0.1)  # (nothing appended meanwhile: the next call finds its connection broken)
        errors = live.errors
        await live.append("r1", [delta(1)])
        assert live.errors == errors  # (the call went through on a new connection)
        assert _ids(await _rows(raw, "t:events:r1")) == [1]
        assert 0 < await raw.pttl("t:events:r1") <= live.ttl_ms


async def test_a_redis_restart_costs_the_appends_meanwhile_only_and_raises_none(
    private_redis: PrivateRedis,
) -> None:
    async with _restartable(private_redis) as (live, raw):
        await asyncio.gather(live.append("r1", [delta(0)]), live.append("r2", [delta(0)]))
        private_redis.stop()
        errors = live.errors
        await asyncio.gather(live.append("r1", [delta(1)]), live.append("r2", [delta(1)]))  # returns, raises none
        assert live.errors >= errors + 2  # counted: one per batch that did not reach Redis
        private_redis.start()  # empty: no stream, no script
        await asyncio.gather(live.append("r1", [delta(2)]),
                             live.append("r2", [delta(2), Entry(3, "response.completed", b"{}")], ended=True))
        # The streams start again from the next batch (a follower sees the gap and reads the store).
        assert _ids(await _rows(raw, "t:events:r1")) == [2]
        assert 0 < await raw.pttl("t:events:r1") <= live.ttl_ms  # (made again: its TTL set again too)
        rows = await _rows(raw, "t:events:r2")
        assert _ids(rows) == [2, 3] and b"e" in rows[-1][1]
        assert 0 < await raw.pttl("t:events:r2") <= live.final_ttl_ms
