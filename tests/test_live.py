"""The live-log contract, one suite over every live log (chosen by URL).

To hold a new live log to the contract, add its URL maker to ``LIVE_URLS``: every test below runs against it
(a maker may ``pytest.skip`` when its server is missing). The Redis log's one reader per process, shared by
that process's followers, is tested in ``test_live_redis.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest

import services
from headwater.server.app import create_app
from headwater.server.backends.base import Finish, TextDelta
from headwater.server.backends.scripted import ScriptedBackend
from headwater.server.config import ServerConfig
from headwater.server.live import Entry, LiveLog, create_live_log
from headwater.server.live.memory import MemoryLiveLog
from headwater.server.store import MemoryStore


@asynccontextmanager
async def memory_url() -> AsyncIterator[str]:
    yield "memory://"


@asynccontextmanager
async def redis_url() -> AsyncIterator[str]:
    async with services.redis_prefix() as url:  # the machine's Redis, a key prefix of its own
        yield url


@asynccontextmanager
async def redis_only_url() -> AsyncIterator[str]:
    async with services.redis_prefix() as url:  # every read through Redis, none from the process's own copy
        yield services.with_query(url, local="0")


LIVE_URLS: dict[str, Callable[[], AbstractAsyncContextManager[str]]] = {
    "memory": memory_url,
    "redis": redis_url,
    "redis-only": redis_only_url,
}


@pytest.fixture(params=list(LIVE_URLS))
async def live(request: pytest.FixtureRequest) -> AsyncIterator[LiveLog]:
    async with LIVE_URLS[request.param]() as url:
        instance: LiveLog = create_live_log(url)
        await instance.open()
        yield instance
        await instance.close()


def entry(seq: int, kind: str = "response.output_text.delta") -> Entry:
    return Entry(seq, kind, b'{"type":"%s","sequence_number":%d}' % (kind.encode(), seq))


def terminal(seq: int) -> Entry:
    return entry(seq, "response.completed")


async def collect(live: LiveLog, rid: str, starting_after: int = -1, keepalive: float = 30.0) -> list[Entry]:
    return [e async for batch in live.follow(rid, starting_after, keepalive=keepalive) for e in batch]


# --- append and read ------------------------------------------------------------------------------------------


async def test_read_gives_the_entries_after_a_point_in_order(live: LiveLog) -> None:
    await live.append("r1", [entry(0, "response.created"), entry(1)])
    await live.append("r1", [entry(2)])
    got = await live.read("r1")
    assert got.entries == [entry(0, "response.created"), entry(1), entry(2)] and got.found and not got.ended
    assert (await live.read("r1", 1)).entries == [entry(2)]
    assert (await live.read("r1", 2)).entries == []


async def test_a_retried_append_never_duplicates(live: LiveLog) -> None:
    await live.append("r1", [entry(0), entry(1)])
    await live.append("r1", [entry(0), entry(1), entry(2)])  # the producer retried after a lost reply
    assert [e.sequence_number for e in (await live.read("r1")).entries] == [0, 1, 2]


async def test_the_terminal_batch_ends_the_log(live: LiveLog) -> None:
    await live.append("r1", [entry(0)])
    await live.append("r1", [entry(1), terminal(2)], ended=True)
    got = await live.read("r1", 0)
    assert got.ended and got.entries == [entry(1), terminal(2)]
    with contextlib.suppress(Exception):  # refusing or ignoring are both fine: nothing may be read after the end
        await live.append("r1", [entry(3)])
    assert (await live.read("r1", 2)).entries == []


async def test_logs_of_different_responses_are_apart(live: LiveLog) -> None:
    await live.append("r1", [entry(0)])
    await live.append("r2", [entry(0, "response.created"), entry(1)])
    assert (await live.read("r1")).entries == [entry(0)]
    assert len((await live.read("r2")).entries) == 2


async def test_an_unknown_or_expired_log_is_not_found(live: LiveLog) -> None:
    assert not (await live.read("nope")).found
    await live.append("r1", [entry(0)])
    await live.expire("r1")
    assert not (await live.read("r1")).found
    await live.expire("r1")  # again: nothing to do


async def test_an_empty_append_creates_the_log(live: LiveLog) -> None:
    await live.append("r1", [])
    got = await live.read("r1")
    assert got.found and got.entries == [] and not got.ended


async def test_a_waiting_read_returns_when_an_entry_arrives(live: LiveLog) -> None:
    await live.append("r1", [entry(0)])
    reader = asyncio.create_task(live.read("r1", 0, wait=30.0))
    await asyncio.sleep(0)
    await live.append("r1", [entry(1)])
    got = await reader  # long before 30 s: the append woke it
    assert got.entries == [entry(1)]


async def test_a_waiting_read_is_bounded(live: LiveLog) -> None:
    await live.append("r1", [entry(0)])
    got = await live.read("r1", 0, wait=0.05)  # a producer that never appends cannot hold it
    assert got.found and got.entries == [] and not got.ended


async def test_a_later_expiry_does_not_postpone_an_earlier_one(live: LiveLog) -> None:
    await live.append("r1", [terminal(0)], ended=True)
    await live.expire("r1", after=0.0)
    await live.expire("r1", after=3600.0)
    assert not (await live.read("r1")).found


# --- follow -----------------------------------------------------------------------------------------------------


async def test_follow_yields_live_entries_until_the_terminal_one(live: LiveLog) -> None:
    await live.append("r1", [entry(0, "response.created")])
    follower = asyncio.create_task(collect(live, "r1"))
    await asyncio.sleep(0.01)
    await live.append("r1", [entry(1), entry(2)])
    await live.append("r1", [terminal(3)], ended=True)
    assert [e.sequence_number for e in await follower] == [0, 1, 2, 3]


async def test_follow_starts_after_starting_after(live: LiveLog) -> None:
    await live.append("r1", [entry(n) for n in range(5)])
    await live.append("r1", [terminal(5)], ended=True)
    assert [e.sequence_number for e in await collect(live, "r1", 2)] == [3, 4, 5]
    assert await collect(live, "r1", 5) == []


async def test_every_follower_gets_the_same_entries(live: LiveLog) -> None:
    await live.append("r1", [entry(0, "response.created")])
    followers = [asyncio.create_task(collect(live, "r1", after)) for after in (-1, -1, 0, 3)]
    await asyncio.sleep(0.01)
    for seq in range(1, 20):
        await live.append("r1", [entry(seq)])
    await live.append("r1", [terminal(20)], ended=True)
    first, second, third, fourth = await asyncio.gather(*followers)
    assert first == second and [e.sequence_number for e in first] == list(range(21))
    assert third == first[1:] and fourth == first[4:]


async def test_follow_says_when_nothing_came_for_a_while(live: LiveLog) -> None:
    await live.append("r1", [entry(0)])
    stream = live.follow("r1", keepalive=0.02)
    assert await anext(stream) == [entry(0)]
    assert await anext(stream) == []  # the transport writes a keep-alive
    await live.append("r1", [terminal(1)], ended=True)
    rest = [e async for batch in stream for e in batch]
    assert rest == [terminal(1)]


async def test_follow_hands_over_what_is_ready_in_one_batch(live: LiveLog) -> None:
    await live.append("r1", [entry(n) for n in range(10)])
    stream = live.follow("r1", 3, keepalive=30.0)
    assert await anext(stream) == [entry(n) for n in range(4, 10)]
    await live.append("r1", [entry(10), entry(11), terminal(12)], ended=True)
    assert [e async for batch in stream for e in batch] == [entry(10), entry(11), terminal(12)]


async def test_follow_of_an_unknown_log_ends_at_once(live: LiveLog) -> None:
    assert await collect(live, "nope") == []


async def test_follow_ends_when_the_log_expires(live: LiveLog) -> None:
    await live.append("r1", [entry(0)])
    follower = asyncio.create_task(collect(live, "r1", keepalive=0.02))
    await asyncio.sleep(0.01)
    await live.expire("r1")
    got = await follower  # no terminal entry: the caller reads the store after what it got
    assert got in ([], [entry(0)])


# --- the server's live log -------------------------------------------------------------------------------------


def test_the_server_delivers_through_its_live_log_and_forgets_finished_runs(
    serve: Any, wait_until: Callable[..., None]
) -> None:
    """Every delivery mode goes through the live log the app was given, and nothing of a finished response
    stays in it once its followers are done (a live log holds running responses only)."""
    backend = ScriptedBackend([TextDelta("Hello"), TextDelta(" there"), Finish("stop")], models=["m"])
    live = MemoryLiveLog()
    server = serve(create_app(ServerConfig(store="memory"), backend=backend, store=MemoryStore(), live=live))
    with httpx.Client(base_url=server.url, timeout=20) as client:
        streamed = client.post("/v1/responses", json={"input": "hi", "stream": True})
        assert streamed.status_code == 200 and "response.completed" in streamed.text
        rid = client.post("/v1/responses", json={"input": "hi"}).json()["id"]
        background = client.post("/v1/responses", json={"input": "hi", "background": True}).json()["id"]
        private = client.post("/v1/responses", json={"input": "hi", "store": False, "stream": True})
        assert "response.completed" in private.text
        resumed = client.get(f"/v1/responses/{background}", params={"stream": "true", "starting_after": 1})
        assert resumed.status_code == 200 and resumed.text.count("event: ") >= 3
        assert "response.completed" in resumed.text
        assert client.get(f"/v1/responses/{rid}").json()["status"] == "completed"
        wait_until(lambda: not live._logs)  # the logs of the stored responses were all forgotten
