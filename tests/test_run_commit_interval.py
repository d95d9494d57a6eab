"""The event log's spacing of group commits (``commit_interval`` of a store: PostgreSQL's): batches written within
the interval after a commit began wait and share the next commit; a batch written when the last commit is older
than that is committed at once. Against the in-process store made to commit through a coroutine (as PostgreSQL
does), recording each store call, and against the machine's real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from headwater.server.live.memory import MemoryLiveLog
from headwater.server.runs.log import EventLog
from headwater.server.store import Append, Entry, MemoryStore, StoredResponse
from headwater.server.store.postgres import PostgresStore


def entry(seq: int) -> Entry:
    return Entry(seq, "response.output_text.delta", b'{"n": %d}' % seq)


class SpacedStore(MemoryStore):
    """The in-process store committing through a coroutine (not ``commits_now``), with commits spaced by
    ``commit_interval``; each ``append_many`` call recorded."""

    commit_interval = 0.3

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[str]] = []

    async def append_many(self, batches: Sequence[Append]) -> list[BaseException | None]:
        self.calls.append([b.response_id for b in batches])
        return await super().append_many(batches)


async def created(store: MemoryStore | PostgresStore, *ids: str) -> None:
    for rid in ids:
        await store.create(StoredResponse(rid, None, "in_progress", 0, b"{}"), [])


async def turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_batches_written_within_the_interval_after_a_commit_share_the_next_one() -> None:
    store, live = SpacedStore(), MemoryLiveLog()
    await created(store, "a", "b", "c")
    log = EventLog(store)
    a, b, c = (log.open(rid, live) for rid in ("a", "b", "c"))
    a.write([entry(0)])  # (no commit before: at once)
    await turns()
    assert store.calls == [["a"]]
    await a.flushed()
    b.write([entry(0)])
    await turns()  # (without the interval, b's commit would be made here, alone)
    assert store.calls == [["a"]]
    c.write([entry(0)])
    a.write([entry(1)])
    await asyncio.gather(a.flushed(), b.flushed(), c.flushed())
    assert store.calls == [["a"], ["b", "c", "a"]]
    for rid, seqs in (("a", [0, 1]), ("b", [0]), ("c", [0])):
        assert [e.sequence_number for e in await store.events(rid)] == seqs
        assert [e.sequence_number for e in (await live.read(rid)).entries] == seqs


async def test_a_batch_written_after_the_interval_is_committed_at_once() -> None:
    store, live = SpacedStore(), MemoryLiveLog()
    await created(store, "a")
    log = EventLog(store)
    a = log.open("a", live)
    a.write([entry(0)])
    await a.flushed()
    await asyncio.sleep(store.commit_interval + 0.05)
    a.write([entry(1)])
    await turns()
    assert store.calls == [["a"], ["a"]]
    await a.flushed()


async def test_postgresql_commits_of_a_busy_log_are_spaced(postgres_url: str) -> None:
    assert PostgresStore.commit_interval > 0
    store = PostgresStore(postgres_url, replica="spaced")
    store.commit_interval = 0.5  # (longer than any commit here, however loaded the machine: no race)
    await store.open()
    try:
        await created(store, "a", "b")
        log, live = EventLog(store), MemoryLiveLog()
        a, b = log.open("a", live), log.open("b", live)
        a.write([entry(0)])
        await a.flushed()
        b.write([entry(0)])
        await turns()
        started = log.commits
        b.write([entry(1)])
        a.write([entry(1)])
        await asyncio.gather(a.flushed(), b.flushed())
        assert started == 1 and log.commits == 2  # b's first batch waited, and went with the next two
        assert [e.sequence_number for e in await store.events("b")] == [0, 1]
        assert [e.sequence_number for e in (await live.read("a")).entries] == [0, 1]
    finally:
        await store.close()
