"""The process's group-commit event log (``runs.log.EventLog``): the batches of many runs share one store call;
each run's entries are committed and published in order (to a live log elsewhere too, while the next commit goes
on); a failing run fails nobody else; a follower never sees an entry the store does not have; the terminal batch
is awaited until it is logged and published. Real stores (memory, SQLite) and the in-process live log; a gate
holds a commit (or a live log's append) open where a test needs one in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import pytest
import redis.asyncio

from headwater.protocol.resources import Response
from headwater.protocol.writer import ResponseWriter
from headwater.server.backends.base import ChatMessage, Finish, GenerationRequest, Step, TextDelta
from headwater.server.backends.scripted import ScriptedBackend
from headwater.server.live import LiveLog
from headwater.server.live.base import LiveRead
from headwater.server.live.memory import MemoryLiveLog
from headwater.server.live.redis import RedisLiveLog
from headwater.server.runs import Runs
from headwater.server.runs.log import EventLog, RunLog
from headwater.server.store import Append, Entry, Fenced, MemoryStore, SQLiteStore, Store, StoredResponse
from services import PrivateRedis


def entry(seq: int, kind: str = "response.output_text.delta") -> Entry:
    return Entry(seq, kind, b'{"n": %d}' % seq)


class GatedStore(MemoryStore):
    """A memory store that records each ``append_many`` call and, while ``gate`` is closed, holds it open."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[Append]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()
        self.refuse: dict[str, Exception] = {}  # response id -> the error its batches fail with

    async def append_many(self, batches: Sequence[Append]) -> list[BaseException | None]:
        self.calls.append(list(batches))
        self.entered.set()
        await self.gate.wait()
        outcomes = await super().append_many([b for b in batches if b.response_id not in self.refuse])
        by_id = dict(zip([b.response_id for b in batches if b.response_id not in self.refuse], outcomes, strict=True))
        return [self.refuse.get(b.response_id) or by_id[b.response_id] for b in batches]


class CheckingLive(MemoryLiveLog):
    """The in-process live log, noting every entry it is handed that its store did not have at that moment."""

    def __init__(self, store: MemoryStore) -> None:
        super().__init__()
        self.store = store
        self.not_durable: list[tuple[str, int]] = []

    def append_now(self, response_id: str, entries: Sequence[Entry], *, ended: bool = False) -> None:
        stored = {e.sequence_number for e in self.store._events.get(response_id, [])}
        self.not_durable += [(response_id, e.sequence_number) for e in entries if e.sequence_number not in stored]
        super().append_now(response_id, entries, ended=ended)


async def created(store: Store, *ids: str) -> None:
    for rid in ids:
        await store.create(StoredResponse(rid, None, "in_progress", 0, b"{}"), [])


async def live_entries(live: MemoryLiveLog, rid: str) -> list[int]:
    return [e.sequence_number for e in (await live.read(rid)).entries]


async def test_the_batches_of_several_runs_share_one_store_call() -> None:
    store, live = GatedStore(), MemoryLiveLog()
    await created(store, "a", "b", "c")
    log = EventLog(store)
    runs = [log.open(rid, live) for rid in ("a", "b", "c")]
    for run in runs:  # (what three runs woken in one loop iteration do)
        run.write([entry(0), entry(1)])
    await asyncio.gather(*(run.flushed() for run in runs))
    assert len(store.calls) == 1 and [b.response_id for b in store.calls[0]] == ["a", "b", "c"]
    for rid in ("a", "b", "c"):
        assert [e.sequence_number for e in await store.events(rid)] == [0, 1]
        assert await live_entries(live, rid) == [0, 1]


async def test_batches_written_during_a_commit_go_together_into_the_next_in_order() -> None:
    store, live = GatedStore(), MemoryLiveLog()
    await created(store, "a", "b")
    log = EventLog(store)
    a, b = log.open("a", live), log.open("b", live)
    store.gate.clear()
    a.write([entry(0)], status="in_progress", data=b'{"v": 0}')
    await store.entered.wait()  # the first commit is in flight: what follows queues up behind it
    for seq in range(1, 6):
        a.write([entry(seq)], data=b'{"v": %d}' % seq)
        b.write([entry(seq - 1)])
    store.gate.set()
    await asyncio.gather(a.flushed(), b.flushed())
    assert [[x.response_id for x in call] for call in store.calls] == [["a"], ["a", "b"]]
    merged = store.calls[1][0]
    assert [e.sequence_number for e in merged.entries] == [1, 2, 3, 4, 5] and merged.data == b'{"v": 5}'
    assert await live_entries(live, "a") == [0, 1, 2, 3, 4, 5]
    assert await live_entries(live, "b") == [0, 1, 2, 3, 4]
    assert [e.sequence_number for e in await store.events("a")] == [0, 1, 2, 3, 4, 5]


async def test_a_run_whose_batch_fails_fails_alone() -> None:
    store, live = GatedStore(), MemoryLiveLog()
    await created(store, "ok", "broken", "fenced")
    store.refuse = {"broken": OSError("disk full"), "fenced": Fenced("another replica owns it")}
    log = EventLog(store)
    ok, broken, fenced = (log.open(rid, live) for rid in ("ok", "broken", "fenced"))
    for run in (ok, broken, fenced):
        run.write([entry(0)])
    await asyncio.gather(ok.flushed(), broken.flushed(), fenced.flushed())
    assert ok.error is None and ok.silenced is None
    assert isinstance(broken.error, OSError) and broken.silenced is None
    assert isinstance(fenced.error, Fenced) and fenced.silenced is fenced.error
    assert [e.sequence_number for e in await store.events("ok")] == [0]
    assert await store.events("broken") == [] and await store.events("fenced") == []
    # A failed run is no longer stored; what it says is still published (it ends its followers' stream),
    # unless it is fenced: then nothing more of it is published from here.
    for run in (ok, broken, fenced):
        run.write([entry(1, "response.failed")])
    await asyncio.gather(ok.flushed(), broken.flushed(), fenced.flushed())
    assert [b.response_id for b in store.calls[-1]] == ["ok"]
    assert await live_entries(live, "ok") == [0, 1] and await live_entries(live, "broken") == [0, 1]
    assert (await live.read("fenced")).found is False
    assert ok.ended and broken.ended and not fenced.ended


async def test_a_follower_never_sees_an_entry_the_store_does_not_have() -> None:
    store = GatedStore()
    live = CheckingLive(store)
    await created(store, "a")
    log = EventLog(store)
    run = log.open("a", live)
    await live.append("a", [])
    store.gate.clear()
    run.write([entry(0), entry(1)])
    await store.entered.wait()
    assert (await live.read("a", wait=0.05)).entries == []  # the commit is in flight: nothing to see yet
    store.gate.set()
    for seq in range(2, 20):
        run.write([entry(seq)])
        await asyncio.sleep(0)
    await run.flushed()
    assert await live_entries(live, "a") == list(range(20))
    assert live.not_durable == []


async def test_the_terminal_batch_is_awaited_until_logged_and_published() -> None:
    store, live = GatedStore(), MemoryLiveLog()
    await created(store, "a")
    run = EventLog(store).open("a", live)
    store.gate.clear()
    run.write([entry(0), entry(1, "response.completed")], status="completed", data=b'{"done": true}')
    waiting = asyncio.create_task(run.flushed())
    await store.entered.wait()
    await asyncio.sleep(0.01)
    assert not waiting.done()
    store.gate.set()
    await waiting
    got = await live.read("a")
    assert [e.sequence_number for e in got.entries] == [0, 1] and got.ended
    record = await store.get("a")
    assert record is not None and record.status == "completed"


async def test_the_in_process_store_commits_and_publishes_a_batch_in_the_write_itself() -> None:
    """Nothing to wait for: no task, no turn of the event loop between ``write`` and the follower's entries."""
    store, live = MemoryStore(), MemoryLiveLog()
    await created(store, "a")
    log = EventLog(store)
    run = log.open("a", live)
    run.write([entry(0), entry(1)], status="in_progress", data=b'{"v": 1}')
    # (no await since the write:)
    assert [e.sequence_number for e in store._events["a"]] == [0, 1] and store._responses["a"].data == b'{"v": 1}'
    assert [e.sequence_number for e in live._logs["a"].entries] == [0, 1]
    run.write([entry(2, "response.completed")])
    assert log.commits == 2 and run.ended and live._logs["a"].ended
    await run.flushed()  # (returns at once: nothing is pending)


async def test_a_batch_the_in_process_store_refuses_fails_its_run_and_is_still_published() -> None:
    store, live = MemoryStore(), MemoryLiveLog()
    await created(store, "a")
    run = EventLog(store).open("a", live)
    run.write([entry(0)])
    run.write([entry(0)])  # (a sequence number that is not after the last: the store refuses it)
    assert isinstance(run.error, ValueError) and run.silenced is None
    run.write([entry(1, "response.failed")])  # not stored any more, published all the same
    assert [e.sequence_number for e in await store.events("a")] == [0]
    assert await live_entries(live, "a") == [0, 1] and run.ended


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "db.sqlite3")
    await store.open()
    yield store
    await store.close()


async def test_many_runs_of_one_server_share_the_commits_of_one_event_log(sqlite: SQLiteStore) -> None:
    """Real runs on SQLite: every run's stream is whole and stored, with fewer store calls than batches."""
    script: list[Step] = [*(TextDelta(f"w{n} ") for n in range(5)), Finish("stop")]
    runs = Runs(sqlite, ScriptedBackend(script, models=["m"]))
    started = []
    for _ in range(20):
        writer = ResponseWriter(Response(model="m"))
        await sqlite.create(StoredResponse(writer.id, None, "queued", 0, b"{}"), [])
        request = GenerationRequest(model="m", messages=[ChatMessage("user", "hi")])
        started.append(runs.start(writer=writer, request=request, owner=None, stored=True, background=False,
                                  max_tool_calls=None, followed=False))
    await asyncio.gather(*(run.wait() for run in started))
    batches = 0
    for run in started:
        stored = await sqlite.events(run.id)
        assert [e.sequence_number for e in stored] == list(range(len(stored))) and stored[-1].type == "response.completed"
        batches += 1 + 5 + 1  # created/in_progress, one per delta, the end (at least: the writer may split more)
        record = await sqlite.get(run.id)
        assert record is not None and record.status == "completed"
    assert 0 < runs.log.commits < batches


class GatedRemoteLive(LiveLog):
    """A live log outside the process, as far as the event log can tell (not the in-process one): it records
    each append, whether the store had its entries by then, and holds appends while ``gate`` is closed."""

    def __init__(self, store: MemoryStore) -> None:
        self.inner = MemoryLiveLog()
        self.store = store
        self.gate = asyncio.Event()
        self.gate.set()
        self.appends: list[tuple[str, list[int]]] = []
        self.not_durable: list[tuple[str, int]] = []

    def describe(self) -> str:
        return "gated"

    async def append(self, response_id: str, entries: Sequence[Entry], *, ended: bool = False) -> None:
        stored = {e.sequence_number for e in self.store._events.get(response_id, [])}
        self.not_durable += [(response_id, e.sequence_number) for e in entries if e.sequence_number not in stored]
        await self.gate.wait()
        self.appends.append((response_id, [e.sequence_number for e in entries]))
        await self.inner.append(response_id, entries, ended=ended)

    async def read(self, response_id: str, starting_after: int = -1, *, wait: float = 0.0) -> LiveRead:
        return await self.inner.read(response_id, starting_after, wait=wait)

    async def expire(self, response_id: str, after: float = 0.0) -> None:
        await self.inner.expire(response_id, after)

    def follow(self, response_id: str, starting_after: int = -1, *, keepalive: float) -> AsyncIterator[list[Entry]]:
        return self.inner.follow(response_id, starting_after, keepalive=keepalive)


async def test_a_live_log_elsewhere_gets_each_commit_in_order_while_the_next_commit_goes_on() -> None:
    store = GatedStore()
    live = GatedRemoteLive(store)
    await created(store, "a", "b")
    log = EventLog(store)
    a, b = log.open("a", live), log.open("b", live)
    live.gate.clear()
    a.write([entry(0)])
    b.write([entry(0)])
    while not store.calls:
        await asyncio.sleep(0)
    a.write([entry(1)])  # the first commit's appends are held: the second commit does not wait for them
    while len(store.calls) < 2:
        await asyncio.sleep(0)
    assert [e.sequence_number for e in await store.events("a")] == [0, 1] and live.appends == []
    a.write([entry(2), entry(3, "response.completed")])
    done = asyncio.create_task(a.flushed())
    await asyncio.sleep(0.01)
    assert not done.done()  # its entries are stored, not yet published
    live.gate.set()
    await asyncio.gather(done, b.flushed())
    assert [seqs for rid, seqs in live.appends if rid == "a"] == [[0], [1], [2, 3]]
    assert live.not_durable == [] and a.ended


async def until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(1000):  # (a bound, not a timing check: each turn is a short sleep)
        if condition():
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"never: {what}")


class HeldRedis:
    """A Redis live log on a redis-server of the test's own, which ``hold`` stops (SIGSTOP: it takes calls and
    answers none) until the block ends."""

    def __init__(self, redis: PrivateRedis, live: RedisLiveLog) -> None:
        self.redis = redis
        self.live = live

    async def run(self) -> tuple[GatedStore, RedisLiveLog, RunLog]:
        """A gated store with response "a", and that run's place in an event log over this live log."""
        store = GatedStore()
        await created(store, "a")
        return store, self.live, EventLog(store).open("a", self.live)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        process = self.redis._process
        assert process is not None
        process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            process.send_signal(signal.SIGCONT)


@pytest.fixture
async def held_redis(private_redis: PrivateRedis) -> AsyncIterator[HeldRedis]:
    live = RedisLiveLog(private_redis.url + "?prefix=held")
    await live.open()
    await live.append("warm", [])  # (the script is loaded)
    yield HeldRedis(private_redis, live)
    await live.close()


async def test_with_redis_holding_its_replies_commits_go_on_and_local_followers_get_each_one(
    held_redis: HeldRedis,
) -> None:
    # Redis is stopped: each commit is still served to this process's followers at once and the next commit
    # does not wait; the terminal batch counts as published only once Redis has it.
    store, live, a = await held_redis.run()
    with held_redis.hold():
        a.write([entry(0)])
        await until(lambda: len(store.calls) == 1 and live._writer is not None, "the first commit")
        a.write([entry(1)])
        await until(lambda: len(store.calls) == 2, "the second commit, while Redis holds the first")
        a.write([entry(2, "response.completed")])
        done = asyncio.ensure_future(a.flushed())
        await until(lambda: len(store.calls) == 3, "the third commit")
        local = await live.read("a")
        assert [e.sequence_number for e in local.entries] == [0, 1, 2] and local.ended
        await asyncio.sleep(0.05)
        assert not done.done()  # stored and served here, not yet in Redis
    await done
    raw = redis.asyncio.Redis.from_url(held_redis.redis.url)
    try:
        rows = await raw.xrange("held:events:a")
    finally:
        await raw.aclose()
    assert [int(stream_id.split(b"-")[0]) - 1 for stream_id, _ in rows] == [0, 1, 2]


async def test_behind_the_runs_pace_the_next_commit_waits_for_the_previous_ones_sending(
    held_redis: HeldRedis,
) -> None:
    # A run that queued two batches during one commit is behind: the commit after them waits for the previous
    # commit's Redis sending (commits grow with the load) instead of starting at once.
    store, live, a = await held_redis.run()
    store.gate.clear()
    a.write([entry(0)])
    await until(lambda: len(store.calls) == 1, "the first commit")
    with held_redis.hold():
        a.write([entry(1)])
        a.write([entry(2)])  # (two batches queued meanwhile: behind)
        store.gate.set()
        await until(lambda: len(store.calls) == 2, "the second commit")
        a.write([entry(3)])
        await asyncio.sleep(0.05)
        assert len(store.calls) == 2  # held: the first commit's sending is not done
        assert [e.sequence_number for e in (await live.read("a")).entries] == [0, 1, 2]
    await until(lambda: len(store.calls) == 3, "the third commit, once Redis answered")
    await a.flushed()


async def test_with_most_runs_keeping_pace_the_next_commit_does_not_wait_for_the_previous_ones_sending(
    held_redis: HeldRedis,
) -> None:
    # One run of five queued two batches during a commit (a cycle about as long as the pace): not behind, so
    # the next commit goes at once though the previous one's Redis sending is held.
    store, live, a = await held_redis.run()
    await created(store, "b", "c", "d", "e")
    log = a._log
    assert log is not None
    others = [log.open(rid, live) for rid in ("b", "c", "d", "e")]
    store.gate.clear()
    a.write([entry(0)])
    await until(lambda: len(store.calls) == 1, "the first commit")
    with held_redis.hold():
        a.write([entry(1)])
        a.write([entry(2)])  # (two batches: this run alone is behind)
        for run in others:
            run.write([entry(0)])
        store.gate.set()
        await until(lambda: len(store.calls) == 2, "the second commit")
        a.write([entry(3)])
        await until(lambda: len(store.calls) == 3, "the third commit, while Redis holds the second's sending")
        assert [e.sequence_number for e in (await live.read("a")).entries] == [0, 1, 2, 3]
    await asyncio.gather(a.flushed(), *(run.flushed() for run in others))
