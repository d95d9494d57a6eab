"""Where the SQLite store commits (``store/sqlite.py``): the event log's appends on the loop's thread when the
writer connection is free (``append_many_now``), through the writer thread when it is not (a job, a checkpoint,
another process's write lock: the loop never waits for a lock); with ``FULL`` always through the thread; the WAL
checkpointed beside the commits, so that it restarts and stays bounded while they go on. Real SQLite files.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from headwater.server.live.memory import MemoryLiveLog
from headwater.server.runs.log import EventLog
from headwater.server.store import Append, Entry, SQLiteStore, StoredResponse
from headwater.server.store import sqlite as sqlite_store


def entry(seq: int, kind: str = "response.output_text.delta") -> Entry:
    return Entry(seq, kind, b'{"n": %d}' % seq)


@pytest.fixture
async def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SQLiteStore]:
    monkeypatch.delenv("HEADWATER_SQLITE_SYNCHRONOUS", raising=False)
    instance = SQLiteStore(tmp_path / "db.sqlite3")
    await instance.open()
    yield instance
    await instance.close()


async def created(store: SQLiteStore, *ids: str) -> None:
    for rid in ids:
        await store.create(StoredResponse(rid, None, "in_progress", 0, b"{}"), [])


async def test_the_event_log_commits_a_batch_on_sqlite_in_the_write_itself(store: SQLiteStore) -> None:
    """The first batch of a turn of the loop: committed (readable from another connection) and published before
    ``write`` returns, with no task and no thread in between."""
    await created(store, "a")
    live = MemoryLiveLog()
    log = EventLog(store)
    run = log.open("a", live)
    run.write([entry(0), entry(1)], status="in_progress", data=b'{"v": 1}')
    # (no await since the write:)
    with sqlite3.connect(store.path) as other:
        rows = other.execute("SELECT seq FROM events WHERE response = (SELECT key FROM responses WHERE id = 'a') "
                             "ORDER BY seq").fetchall()
        data = other.execute("SELECT data FROM responses WHERE id = 'a'").fetchone()[0]
    assert rows == [(0,), (1,)] and data == b'{"v": 1}'
    assert [e.sequence_number for e in live._logs["a"].entries] == [0, 1]
    assert log.commits == 1 and log._task is None


async def test_later_batches_of_the_same_turn_share_the_next_commit(store: SQLiteStore) -> None:
    await created(store, "a", "b", "c")
    live = MemoryLiveLog()
    log = EventLog(store)
    runs = [log.open(rid, live) for rid in ("a", "b", "c")]
    for run in runs:
        run.write([entry(0)])
    assert log.commits == 1 and [e.sequence_number for e in live._logs["a"].entries] == [0]
    assert "b" not in live._logs or not live._logs["b"].entries  # not yet: queued for the next commit
    for run in runs:
        await run.flushed()
    assert log.commits == 2
    for rid in ("a", "b", "c"):
        assert [e.sequence_number for e in await store.events(rid)] == [0]
        assert [e.sequence_number for e in live._logs[rid].entries] == [0]
    await asyncio.sleep(0)  # a new turn: the first batch is committed in its write again
    runs[1].write([entry(1)])
    assert log.commits == 3 and [e.sequence_number for e in live._logs["b"].entries] == [0, 1]


async def test_with_another_process_holding_the_write_lock_the_loop_does_not_wait(store: SQLiteStore) -> None:
    """``append_many_now`` gives up at once (None, nothing written); the event log's batch goes to the writer
    thread, which waits for the lock, and reaches the follower once it is committed."""
    await created(store, "a")
    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        assert store.append_many_now([Append("a", [entry(0)], None, None)]) is None
        live = MemoryLiveLog()
        run = EventLog(store).open("a", live)
        run.write([entry(0)])
        await asyncio.sleep(0.05)
        assert "a" not in live._logs or not live._logs["a"].entries  # not durable yet: not published
        other.execute("COMMIT")
        await asyncio.wait_for(run.flushed(), 10)
    finally:
        other.close()
    assert [e.sequence_number for e in live._logs["a"].entries] == [0]
    assert [e.sequence_number for e in await store.events("a")] == [0]


async def test_a_batch_sqlite_refuses_now_fails_its_run_alone(store: SQLiteStore) -> None:
    await created(store, "a", "b")
    outcomes = store.append_many_now([Append("a", [entry(0)], None, None),
                                      Append("b", [entry(0), entry(0)], None, None)])  # a repeated number
    assert outcomes is not None and outcomes[0] is None and isinstance(outcomes[1], sqlite3.IntegrityError)
    assert [e.sequence_number for e in await store.events("a")] == [0]
    assert await store.events("b") == []


async def test_with_full_synchronous_every_commit_goes_through_the_thread(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """An fsync per commit must not block the loop: the event log never commits on it."""
    monkeypatch.setenv("HEADWATER_SQLITE_SYNCHRONOUS", "FULL")
    store = SQLiteStore(tmp_path / "db.sqlite3")
    await store.open()
    try:
        assert not store.commits_now
        await created(store, "a")
        live = MemoryLiveLog()
        log = EventLog(store)
        run = log.open("a", live)
        run.write([entry(0)])
        assert log._task is not None and ("a" not in live._logs or not live._logs["a"].entries)
        await run.flushed()
        assert [e.sequence_number for e in live._logs["a"].entries] == [0]
    finally:
        await store.close()


async def test_the_wal_is_checkpointed_beside_the_commits_and_restarts(store: SQLiteStore,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """With a small threshold, commits made without a pause restart the WAL again and again (its size on disk
    falls back: without the checkpoint's last step on the writer's connection it would only grow), and every
    event is there after. The commits go on until the WAL has restarted twice, however long the checkpoint's
    thread waits for a core (a fixed count of commits was too few for it once under load); the bound only keeps
    a broken checkpoint from looping for ever."""
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_BYTES", 200_000)
    ids = [f"r{i}" for i in range(16)]
    await created(store, *ids)
    wal = Path(f"{store.path}-wal")
    sizes = [os.stat(wal).st_size]
    restarts = 0
    seq = 0
    while restarts < 2:
        assert seq < 2_000, f"the WAL restarted {restarts} times in {seq} commits (sizes: {sizes[-8:]})"
        batches = [Append(rid, [entry(seq)], None, None) for rid in ids]
        outcomes = store.append_many_now(batches)
        if outcomes is None:  # the writer thread holds the connection (the checkpoint's last step)
            outcomes = await store.append_many(batches)
        assert outcomes == [None] * len(ids)
        sizes.append(os.stat(wal).st_size)
        restarts += sizes[-1] < sizes[-2]
        seq += 1
        await asyncio.sleep(0)
    for rid in ids:
        assert [e.sequence_number for e in await store.events(rid)] == list(range(seq))


async def test_a_small_create_commits_on_the_loop_and_waits_for_another_process_on_the_thread(
        store: SQLiteStore) -> None:
    """Without a lock in the way, ``create`` returns without ever suspending (no thread round trip); while
    another process holds the write lock, it waits on the writer thread and the loop goes on."""
    creating = store.create(StoredResponse("a", None, "in_progress", 0, b"{}"), [])
    with pytest.raises(StopIteration):
        creating.send(None)  # done in the first step
    other = sqlite3.connect(store.path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        waiting = asyncio.ensure_future(store.create(StoredResponse("b", None, "in_progress", 0, b"{}"), []))
        await asyncio.sleep(0.05)  # (the loop runs meanwhile)
        assert not waiting.done()
        other.execute("COMMIT")
        await asyncio.wait_for(waiting, 10)
    finally:
        other.close()
    assert (await store.get("a")) is not None and (await store.get("b")) is not None
    with pytest.raises(sqlite3.IntegrityError):  # a second response with the same id, refused inline too
        await store.create(StoredResponse("a", None, "in_progress", 0, b"{}"), [])


async def test_an_event_log_made_before_the_store_is_opened_commits_in_the_write(tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The app makes its event log (``Runs``) before it opens the store: the log must still commit on the loop."""
    monkeypatch.delenv("HEADWATER_SQLITE_SYNCHRONOUS", raising=False)
    store = SQLiteStore(tmp_path / "db.sqlite3")
    log = EventLog(store)
    await store.open()
    try:
        await created(store, "a")
        live = MemoryLiveLog()
        log.open("a", live).write([entry(0)])
        assert [e.sequence_number for e in live._logs["a"].entries] == [0] and log._task is None
    finally:
        await store.close()


def wal_commits(path: Path) -> int:
    """The commits in the WAL file since it last restarted: its frames that end a transaction (a frame header's
    second field, the database's size in pages after the commit, is 0 for every other frame)."""
    data = Path(f"{path}-wal").read_bytes()
    if len(data) < 32:
        return 0
    page_size = int.from_bytes(data[8:12], "big")
    salt = data[16:24]
    commits = 0
    for offset in range(32, len(data) - 24 - page_size + 1, 24 + page_size):
        header = data[offset:offset + 24]
        if header[8:16] != salt:  # (a frame left from before the WAL restarted)
            break
        commits += int.from_bytes(header[4:8], "big") != 0
    return commits


def response(rid: str) -> StoredResponse:
    return StoredResponse(rid, None, "in_progress", 0, b"{}")


async def test_creates_of_one_turn_after_its_first_commit_share_one_commit(store: SQLiteStore) -> None:
    """A wave of new streams: the first create of a turn of the loop commits at once, those after it in the
    same turn together early in the next; each is there once its call returns. One refused (a repeated id)
    fails alone."""
    await created(store, "old")
    before = wal_commits(store.path)
    ids = [f"r{i}" for i in range(10)]
    outcomes = await asyncio.gather(*(store.create(response(rid), []) for rid in [*ids, "old"]),
                                    return_exceptions=True)
    assert outcomes[:10] == [None] * 10 and isinstance(outcomes[10], sqlite3.IntegrityError)
    assert wal_commits(store.path) - before == 2
    for rid in ids:
        assert (await store.get(rid)) is not None


async def test_a_create_after_a_commit_of_its_turn_joins_the_event_logs_next_commit(store: SQLiteStore) -> None:
    await created(store, "a")
    live = MemoryLiveLog()
    log = EventLog(store)
    run = log.open("a", live)
    before = wal_commits(store.path)
    run.write([entry(0)])  # the turn's first commit, at once
    run.write([entry(1)])  # queued for the event log's next commit
    creating = store.create(response("b"), [])
    creating.send(None)  # waits for a commit
    await run.flushed()
    assert wal_commits(store.path) - before == 2  # the event log's second commit took the create too
    with pytest.raises(StopIteration):
        creating.send(None)  # done
    assert (await store.get("b")) is not None
    assert [e.sequence_number for e in await store.events("a")] == [0, 1]
    # and its first append finds its key without a look-up failing
    assert store.append_many_now([Append("b", [entry(0)], None, None)]) == [None]


async def test_a_create_that_finds_the_writer_thread_in_a_job_is_committed_on_the_loop_after_it(
        store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not queued behind the thread's job (where it would wait for the GIL again in the thread's next batch):
    it waits for the job's end, then commits on the loop's thread. With another process's lock in the way, it
    still goes to the thread (the test above)."""
    gate = threading.Event()
    holding = store._write(lambda conn: gate.wait(10))  # the thread in a job, holding the connection
    await asyncio.sleep(0.05)
    queued: list[object] = []  # jobs handed to the thread from now on
    put = store._writer._jobs.put  # type: ignore[union-attr]
    monkeypatch.setattr(store._writer, "_jobs", type("Jobs", (), {
        "put": lambda self, job: (queued.append(job), put(job)),
        "get": store._writer._jobs.get, "get_nowait": store._writer._jobs.get_nowait})())  # type: ignore[union-attr]
    creating = asyncio.ensure_future(store.create(response("a"), []))
    await asyncio.sleep(0.05)
    assert not creating.done()
    gate.set()
    await asyncio.wait_for(asyncio.gather(holding, creating), 10)
    assert queued == [] and (await store.get("a")) is not None


async def test_the_writer_thread_inserts_a_commits_events_in_a_few_statements(store: SQLiteStore) -> None:
    """``executemany`` gives up the GIL twice a row and takes it back from the loop's thread each time; the writer
    thread's commit of 150 events takes four multi-row INSERTs (128 + 16 + 4 + 2 rows), every event in order."""
    await created(store, "a", "b")
    statements: list[str] = []
    assert store._writer is not None and store._writer._conn is not None
    store._writer._conn.set_trace_callback(statements.append)  # (called on the writer thread)
    outcomes = await store.append_many([Append("a", [entry(i) for i in range(100)], None, None),
                                        Append("b", [entry(i) for i in range(50)], "completed", b'{"v": 2}')])
    store._writer._conn.set_trace_callback(None)
    assert outcomes == [None, None]
    assert len([s for s in statements if s.startswith("INSERT INTO events")]) == 4
    assert await store.events("a") == [entry(i) for i in range(100)]
    assert await store.events("b") == [entry(i) for i in range(50)]
    b = await store.get("b")
    assert b is not None and (b.status, b.data) == ("completed", b'{"v": 2}')


async def test_the_writer_thread_changes_a_commits_resources_in_one_statement(store: SQLiteStore) -> None:
    """The resources that change in one commit of the thread's (runs ending together): one UPDATE for them all,
    each status and resource as its batch says (either may be left as it was)."""
    if not sqlite_store._UPDATE_FROM:
        pytest.skip("this SQLite has no UPDATE ... FROM (3.33)")
    await created(store, "a", "b", "c", "d")
    statements: list[str] = []
    assert store._writer is not None and store._writer._conn is not None
    store._writer._conn.set_trace_callback(statements.append)  # (called on the writer thread)
    outcomes = await store.append_many([Append("a", [entry(0)], "completed", b'{"a": 1}'),
                                        Append("b", [entry(0)], "failed", None),
                                        Append("c", [entry(0)], None, b'{"c": 1}'),
                                        Append("d", [entry(0)], None, None)])
    store._writer._conn.set_trace_callback(None)
    assert outcomes == [None] * 4
    assert len([s for s in statements if s.startswith("UPDATE responses")]) == 1
    found = {rid: await store.get(rid) for rid in "abcd"}
    assert {rid: (r.status, r.data) for rid, r in found.items() if r is not None} == {
        "a": ("completed", b'{"a": 1}'), "b": ("failed", b"{}"), "c": ("in_progress", b'{"c": 1}'),
        "d": ("in_progress", b"{}")}
    assert [e.sequence_number for e in await store.events("a")] == [0]  # and a later append finds "a" again
    assert await store.append_many([Append("a", [entry(1)], None, None)]) == [None]
