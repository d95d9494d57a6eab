"""The default store: one SQLite file in the data directory, WAL mode, ``synchronous=NORMAL`` (or ``FULL`` with
``HEADWATER_SQLITE_SYNCHRONOUS=FULL``; what each survives: docs/limits.md, "Durability").

One writer connection, used by one writer thread and, for the event log's appends, by the event loop's thread:
- The event log's appends and small creates commit on the loop's thread (``append_many_now``) whenever the
  writer thread is not in the middle of a job: with ``NORMAL`` a commit is a few ``pwrite``s and ``fcntl`` locks,
  no fsync (20 µs back to back, ~130 µs cold, 20 ms after the last), where the thread's round trip (wake it,
  commit, wake the loop) took ~300 µs and up to a few ms at p99 (bench/README.md, "Stores lane, session 19").
  With ``FULL`` (an fsync per commit, ms) everything goes through the thread, as do deletes, creates of more
  than INLINE_ITEMS input items and appends of more than INLINE_EVENTS events.
- The creates that come after a commit on the loop in the same turn of the loop (a wave of new streams) wait for
  one commit together, early in the next turn, or the event log's next one if it comes first (``_commit_creates``);
  one that finds the writer thread in a job waits for its end and commits on the loop then.
- The writer thread commits whatever has queued up in one transaction (group commit): a write's coroutine returns
  only after its COMMIT (with ``FULL``, after its fsync), and under load many share one commit.
- The WAL is checkpointed beside the commits, not inside one of them (which might be the loop's), once it has
  grown past ``CHECKPOINT_BYTES``: its own connection copies most of it back, then the writer thread the rest.
``append_many`` (the server's event log: every run's events of one commit) is one job with one executemany for all
of them. Reads use a second connection on their own thread; WAL lets them run beside the writer.
The schema is versioned (``PRAGMA user_version``); opening a file of an older version upgrades it in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from .base import UNFINISHED_STATUSES, Append, Entry, FoundItem, ItemPage, Store, StoredItem, StoredResponse

__all__ = ["SQLiteStore"]

log = logging.getLogger("headwater.server.store")
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_unfinished ON responses (status) WHERE status IN ('queued', 'in_progress');
CREATE TABLE IF NOT EXISTS input_items (
    response_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (response_id, position)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS input_items_by_id ON input_items (item_id);
CREATE TABLE IF NOT EXISTS events (
    response INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS events_by_response ON events (response, seq);
"""
# The events table is a rowid table (its rows are appended at its end, in commit order) with a unique index on
# (response, seq): a group commit of many runs' events then dirties a few data pages and the index's (version
# 4; a table clustered on (response_id, seq) dirtied a page per run, each written to the WAL whole). ``response``
# is the response's ``key``, a number given in creation order and never reused (AUTOINCREMENT), not its random
# text id (version 5): the runs in progress are the newest responses, so their index entries lie side by side
# in a few pages (~400 small entries a page) instead of one page each wherever their ids sort. A commit of one
# event for each of 64 runs wrote 85 pages to the WAL with text ids, 14 with keys (512 runs: 576 and 81); its
# time 648 -> 306 us (bench/README.md, "Stores lane, session 19").
SCHEMA_VERSION = 5
# Upgrades from each older version (a file made before versioning reads as 0 and has version 1's tables).
_UPGRADES = {
    0: "",  # version 1 created its tables with CREATE ... IF NOT EXISTS, as _SCHEMA does
    1: """
ALTER TABLE events ADD COLUMN type TEXT NOT NULL DEFAULT '';
UPDATE events SET type = coalesce(json_extract(CAST(data AS TEXT), '$.type'), '');
""",
    2: "CREATE INDEX IF NOT EXISTS input_items_by_id ON input_items (item_id);",  # item references
    3: """
CREATE TABLE events_v4 (response_id TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL, data BLOB NOT NULL);
INSERT INTO events_v4 (response_id, seq, type, data) SELECT response_id, seq, type, data FROM events
    ORDER BY response_id, seq;
DROP TABLE events;
ALTER TABLE events_v4 RENAME TO events;
CREATE UNIQUE INDEX events_by_response ON events (response_id, seq);
""",
    4: """
CREATE TABLE responses_v5 (key INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, owner TEXT,
    status TEXT NOT NULL, created_at INTEGER NOT NULL, data BLOB NOT NULL);
INSERT INTO responses_v5 (id, owner, status, created_at, data) SELECT id, owner, status, created_at, data
    FROM responses ORDER BY created_at, id;
DROP TABLE responses;
ALTER TABLE responses_v5 RENAME TO responses;
CREATE INDEX responses_unfinished ON responses (status) WHERE status IN ('queued', 'in_progress');
CREATE TABLE events_v5 (response INTEGER NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL, data BLOB NOT NULL);
INSERT INTO events_v5 (response, seq, type, data) SELECT r.key, e.seq, e.type, e.data
    FROM events e JOIN responses r ON r.id = e.response_id ORDER BY r.key, e.seq;
DROP TABLE events;
ALTER TABLE events_v5 RENAME TO events;
CREATE UNIQUE INDEX events_by_response ON events (response, seq);
""",
}

# In WAL mode, NORMAL writes each commit to the WAL file (the OS has it: a crash of the process loses nothing
# committed) and fsyncs at checkpoints; FULL also fsyncs every commit (a crash of the machine loses nothing
# committed either), which costs a few ms per commit on this kind of disk (docs/limits.md, "Durability").
_SYNCHRONOUS = ("NORMAL", "FULL")


def synchronous() -> str:
    """The ``PRAGMA synchronous`` the store's connections use: ``$HEADWATER_SQLITE_SYNCHRONOUS``, else NORMAL."""
    value = os.environ.get("HEADWATER_SQLITE_SYNCHRONOUS", "NORMAL").strip().upper()
    if value not in _SYNCHRONOUS:
        raise ValueError(f"HEADWATER_SQLITE_SYNCHRONOUS must be one of {', '.join(_SYNCHRONOUS)}, not {value!r}")
    return value

# The writer's page cache holds the pages a group commit of many runs touches (the default 2 MB holds ~500).
# The WAL is checkpointed beside the commits (never by a commit: ``wal_autocheckpoint=0``; ``_checkpoint_beside``)
# once it is past CHECKPOINT_BYTES, 10,000 pages (40 MB) rather than SQLite's 1,000, so that the pages every
# commit touches again (the index's) are copied back once per checkpoint, not once per few commits
# (bench/README.md: bench_pipeline, bench_scale). ``journal_size_limit=0`` truncates the WAL when it restarts after a checkpoint, so that its size
# on disk is what has been written since: what the check reads. The connection waits for no lock by itself
# (``busy_timeout=0``): the loop's commit must never block on another process's lock (it leaves the append to
# the thread), and the thread waits up to BUSY_SECONDS itself (``_begin``).
WRITER_PRAGMAS = ("cache_size=-32768", "wal_autocheckpoint=0", "journal_size_limit=0", "busy_timeout=0")
CHECKPOINT_BYTES = 10_000 * (4096 + 24)
CHECK_EVERY = 8  # commits between two looks at the WAL's size (a stat, ~3 µs; a commit of 64 runs adds ~300 KB)
BUSY_SECONDS = 5.0
INLINE_ITEMS = 64  # input items a create may have to commit on the loop's thread (more: the writer thread's work)
# Events an append_many may have to commit on the loop's thread. A saturated process's commits are larger (one
# event per run: hundreds, 1-2 ms of SQLite's work); on the writer thread that work runs beside the loop (the GIL
# released in each statement) instead of taking the loop's time from the runs and the sockets. (At 512 streams
# in one process the gateway figures swung more from run to run than with this bound: bench/README.md, "Stores
# lane, session 19".)
INLINE_EVENTS = 64

_Job = tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]
_Outcome = tuple[Any, BaseException | None]
_STOP = None


class _Worker:
    """A thread owning one connection. ``batch=True``: jobs that queue up together share one transaction (group
    commit); should one of them fail, the batch is done again with each job inside its own SAVEPOINT, so that
    one failing job does not undo the others. The futures of one commit are settled with one call into the
    event loop. ``commit_now`` commits a job on the calling thread instead, when the connection is free."""

    def __init__(self, path: Path, *, batch: bool, name: str, pragmas: Sequence[str] = ()) -> None:
        self._path = path
        self._batch = batch
        self._pragmas = pragmas
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._conn: sqlite3.Connection | None = None
        # Held by whoever uses the connection: the thread for each batch of jobs (``_held``), or ``commit_now``'s
        # caller. ``_wanted``: the thread waits for it, and ``commit_now`` leaves it alone until the thread had it
        # (the lock is not fair: a busy loop taking it turn after turn could keep the thread waiting as long as
        # the loop stays busy).
        self._lock = threading.Lock()
        self._wanted = False
        self._commits = 0  # since the last look at the WAL's size
        self._checkpointing = False  # a checkpoint is under way (``_checkpoint_beside``)
        # The thread is in a batch of jobs (from taking it to its end); ``when_free``'s callbacks, called then.
        self._in_batch = False
        self._free: list[tuple[asyncio.AbstractEventLoop, Callable[[], Any]]] = []
        self._free_lock = threading.Lock()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def call(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((fn, future))
        return future

    def commit_now(self, fns: Sequence[Callable[[sqlite3.Connection], Any]]) -> list[_Outcome] | None:
        """``fns`` in one transaction on the calling thread (each undone alone should it fail, as in a batch of
        the thread's): their (result, error)s, or None without doing anything when the connection is busy (the
        thread is in a job, or another process holds the write lock), so that the caller never waits for a
        lock; it queues the jobs for the thread then."""
        conn = self._conn
        if conn is None or self._wanted or not self._lock.acquire(blocking=False):
            return None
        try:
            outcomes = self._commit(conn, fns, _begin_now)
        except _Busy:
            return None
        finally:
            self._lock.release()
        self._committed()
        return outcomes

    def when_free(self, callback: Callable[[], Any]) -> bool:
        """``callback`` called on this loop once the thread's batch of jobs is over; False (no call) when the
        thread is in none (what holds the connection is another process's lock, or nothing any more)."""
        loop = asyncio.get_running_loop()
        with self._free_lock:
            if not self._in_batch:
                return False
            self._free.append((loop, callback))
            return True

    def _batch_over(self) -> None:
        with self._free_lock:
            self._in_batch = False
            free, self._free = self._free, []
        for loop, callback in free:
            with contextlib.suppress(RuntimeError):  # (a closed loop)
                loop.call_soon_threadsafe(callback)

    def queue(self, job: _Job) -> None:
        """A job for the thread whose future already exists (one ``commit_now`` could not take)."""
        self._jobs.put(job)

    def _committed(self) -> None:
        """Every CHECK_EVERY commits, a look at the WAL's size; past CHECKPOINT_BYTES, a checkpoint
        (``_checkpoint_beside``, on a thread of its own)."""
        self._commits += 1
        if self._commits < CHECK_EVERY or self._checkpointing or not self._batch:
            return
        self._commits = 0
        try:
            size = os.stat(f"{self._path}-wal").st_size
        except OSError:
            return
        if size >= CHECKPOINT_BYTES:
            self._checkpointing = True
            threading.Thread(target=self._checkpoint_beside, name="headwater-sqlite-checkpoint", daemon=True).start()

    def _checkpoint_beside(self) -> None:
        """A checkpoint in two steps: most of the WAL copied back from a connection of its own, beside the
        commits (a PASSIVE checkpoint takes no lock a writer needs; 40 MB took 50-450 ms here), then what was
        committed meanwhile, from the writer's connection by the writer thread (a few ms: the WAL's and the
        file's fsyncs), so that it completes and the WAL restarts. With only the second step, every commit
        waited for the whole copy (bench/README.md, "Stores lane, session 19")."""
        try:
            side = sqlite3.connect(self._path, isolation_level=None)
            try:
                side.execute(f"PRAGMA synchronous={synchronous()}")
                side.execute("PRAGMA wal_checkpoint(PASSIVE)")
            finally:
                side.close()
        except Exception as exc:
            log.error("SQLite checkpoint failed", exc_info=exc)
        self._jobs.put((_checkpoint, None))  # type: ignore[arg-type]

    def stop(self) -> None:
        self._jobs.put(_STOP)
        self._thread.join()

    def _main(self) -> None:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA synchronous={synchronous()}")
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_SECONDS * 1000)}")
            for pragma in self._pragmas:
                conn.execute(f"PRAGMA {pragma}")
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._conn = conn
        self._ready.set()
        try:
            while True:
                job = self._jobs.get()
                if job is _STOP:
                    return
                jobs = [job]
                if self._batch:
                    stop = False
                    while True:  # take everything already waiting: it shares the transaction
                        try:
                            more = self._jobs.get_nowait()
                        except queue.Empty:
                            break
                        if more is _STOP:
                            stop = True
                            break
                        jobs.append(more)
                    with self._free_lock:
                        self._in_batch = True
                    try:
                        self._run_batch(conn, jobs)
                    finally:
                        self._batch_over()
                    if stop:
                        return
                else:
                    fn, _ = job
                    try:
                        outcome: tuple[Any, BaseException | None] = (fn(conn), None)
                    except Exception as exc:
                        outcome = (None, exc)
                    _settle(jobs, [outcome])
        finally:
            with self._held():
                self._conn = None
                conn.close()

    @contextlib.contextmanager
    def _held(self) -> Iterator[None]:
        """The connection, for the thread: ``commit_now`` gives it up from now until the thread has had it."""
        self._wanted = True
        try:
            with self._lock:
                self._wanted = False
                yield
        finally:
            self._wanted = False

    def _run_batch(self, conn: sqlite3.Connection, jobs: list[_Job]) -> None:
        """One batch of jobs (a checkpoint alone, outside any transaction) with the connection held."""
        if jobs[0][0] is _checkpoint:
            with self._held():
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except Exception as exc:
                    log.error("SQLite checkpoint failed", exc_info=exc)
                finally:
                    self._checkpointing = False
            if len(jobs) > 1:
                self._run_batch(conn, jobs[1:])
            return
        checkpoint = [job for job in jobs if job[0] is _checkpoint]
        jobs = [job for job in jobs if job[0] is not _checkpoint]
        with self._held():
            outcomes = self._commit(conn, [fn for fn, _ in jobs], _begin)
        _settle(jobs, outcomes)
        self._committed()
        if checkpoint:
            self._run_batch(conn, checkpoint[:1])

    def _commit(self, conn: sqlite3.Connection, fns: Sequence[Callable[[sqlite3.Connection], Any]],
                begin: Callable[[sqlite3.Connection], None]) -> list[_Outcome]:
        """``fns`` in one transaction opened with ``begin``; should one fail, all again, each in a SAVEPOINT."""
        try:
            begin(conn)
            try:
                outcomes: list[_Outcome] = [(fn(conn), None) for fn in fns]
            except Exception:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                return self._commit_one_by_one(conn, fns, begin)
            conn.execute("COMMIT")
        except _Busy:
            raise
        except Exception as exc:
            return self._failed(conn, exc, len(fns))
        return outcomes

    def _commit_one_by_one(self, conn: sqlite3.Connection, fns: Sequence[Callable[[sqlite3.Connection], Any]],
                           begin: Callable[[sqlite3.Connection], None]) -> list[_Outcome]:
        """The jobs again in one transaction, each in a SAVEPOINT of its own: a failing one undoes only itself."""
        outcomes: list[_Outcome] = []
        try:
            begin(conn)
            for fn in fns:
                conn.execute("SAVEPOINT job")
                try:
                    outcomes.append((fn(conn), None))
                    conn.execute("RELEASE job")
                except Exception as exc:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    outcomes.append((None, exc))
            conn.execute("COMMIT")
        except _Busy:
            raise
        except Exception as exc:
            return self._failed(conn, exc, len(fns))
        return outcomes

    @staticmethod
    def _failed(conn: sqlite3.Connection, exc: Exception, jobs: int) -> list[tuple[Any, BaseException | None]]:
        log.error("SQLite commit failed", exc_info=exc)
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        return [(None, exc)] * jobs


def _begin(conn: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, waiting up to BUSY_SECONDS for another process's write lock (the writer connection's
    own ``busy_timeout`` is 0, so that ``commit_now`` never waits)."""
    deadline = time.monotonic() + BUSY_SECONDS
    delay = 0.001
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if not _busy(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


class _Busy(Exception):
    """``_begin_now`` found the write lock taken: nothing was done."""


def _begin_now(conn: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE without waiting (the loop's thread): ``_Busy`` when another process holds the write lock."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if _busy(exc):
            raise _Busy from None
        raise


def _busy(exc: sqlite3.OperationalError) -> bool:
    return exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY


def _checkpoint(conn: sqlite3.Connection) -> None:
    """The marker of a checkpoint job (``_Worker._run_batch`` runs it outside any transaction)."""


def _resolve(jobs: Sequence[_Job], outcomes: Sequence[_Outcome]) -> None:
    """Give each job's future its outcome (on the loop's thread), unless it is done already (cancelled)."""
    for (_, future), (result, error) in zip(jobs, outcomes, strict=True):
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _settle(jobs: list[_Job], outcomes: list[_Outcome]) -> None:
    """Give each job's future its outcome, in one call into the loop (one wake-up per commit, not per job)."""
    with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
        jobs[0][1].get_loop().call_soon_threadsafe(_resolve, jobs, outcomes)


class _Keys:
    """The ``key`` of each response the writer has appended to (looked up on its first append, forgotten at
    its end or deletion). Used under the writer connection's lock only; a key is never reused (AUTOINCREMENT), so
    one looked up in a transaction that was rolled back is still right."""

    LIMIT = 100_000  # entries kept at most (responses that never ended: forgotten all at once, looked up again)

    def __init__(self) -> None:
        self._keys: dict[str, int] = {}

    def of(self, conn: sqlite3.Connection, response_id: str) -> int:
        key = self._keys.get(response_id)
        if key is None:
            row = conn.execute("SELECT key FROM responses WHERE id = ?", (response_id,)).fetchone()
            if row is None:
                raise KeyError(f"no response {response_id}")
            if len(self._keys) >= self.LIMIT:
                self._keys.clear()
            key = self._keys[response_id] = row[0]
        return key

    def note(self, response_id: str, key: int | None) -> None:
        """The key a create has just given (should its transaction be rolled back, the entry stays: harmless, as
        no append follows a create that failed, and the id is random)."""
        if key is not None:
            if len(self._keys) >= self.LIMIT:
                self._keys.clear()
            self._keys[response_id] = key

    def forget(self, response_id: str) -> None:
        self._keys.pop(response_id, None)


_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33, 0)  # (UPDATE ... FROM, for the resources of one commit)


def _write_batches(conn: sqlite3.Connection, keys: _Keys, batches: Sequence[Append], *, few: bool = False) -> None:
    """The statements of appends: each resource that changes (its response must exist), then every event. With
    ``few`` (the writer thread's: each statement gives up the GIL and takes it back from the loop, see
    ``_insert_events``), the resources in one UPDATE (runs that end together: at 512 streams the thread's job p50
    5.4-7.0 -> 3.4-4.2 ms, bench/README.md, "Sqlite lane, session 28") and the events in a few INSERTs."""
    rows: list[tuple[int, int, str, bytes]] = []
    changes: list[tuple[int, str | None, bytes | None]] = []
    for batch in batches:
        key = keys.of(conn, batch.response_id)
        if batch.status is not None or batch.data is not None:
            changes.append((key, batch.status, batch.data))
            if batch.status is not None and batch.status not in UNFINISHED_STATUSES:
                keys.forget(batch.response_id)  # (its last append: a later one looks it up again)
        rows += [(key, e.sequence_number, e.type, e.payload) for e in batch.entries]
    if few and _UPDATE_FROM and len(changes) > 1 and len({key for key, _, _ in changes}) == len(changes):
        size = 1 << (len(changes) - 1).bit_length()  # (padded with rows that match none: few statements cached)
        conn.execute("UPDATE responses SET status = coalesce(v.column2, status), data = coalesce(v.column3, data) "
                     "FROM (VALUES " + ", ".join(["(?, ?, ?)"] * size) + ") AS v WHERE key = v.column1",
                     [value for change in changes for value in change] + [None] * (3 * (size - len(changes))))
    else:
        for key, status, data in changes:
            conn.execute("UPDATE responses SET status = coalesce(?, status), data = coalesce(?, data) WHERE key = ?",
                         (status, data, key))
    if few:
        _insert_events(conn, rows)
    else:
        conn.executemany("INSERT INTO events (response, seq, type, data) VALUES (?, ?, ?, ?)", rows)


# Multi-row INSERTs of events by size (powers of two up to 256 rows: a commit of n events takes as many statements
# as n has bits set, 8 at most below 256; nine statements in the connection's cache).
_INSERT_EVENTS = {size: "INSERT INTO events (response, seq, type, data) VALUES " + ", ".join(["(?, ?, ?, ?)"] * size)
                  for size in (256, 128, 64, 32, 16, 8, 4, 2, 1)}


def _insert_events(conn: sqlite3.Connection, rows: list[tuple[int, int, str, bytes]]) -> None:
    """``rows`` in a few statements, for the writer thread: ``executemany`` gives up the GIL twice a row (the
    statement's step and its reset) and must take it back each time from the event loop's thread, which holds it
    whenever it runs Python, while every run's next events wait for the commit. A statement of many rows gives it
    up twice in all: at 512 streams a job's time from call to outcome, p50 4.9-7.6 -> 4.0-6.2 ms, p99 102-122 ->
    75-85 ms (bench/README.md, "Sqlite lane, session 28"). (On the loop's thread nothing else wants the GIL, and
    ``executemany`` costs less there: bench/HISTORY.md, "Sqlite lane, session 24".)"""
    start = 0
    for size, sql in _INSERT_EVENTS.items():
        while len(rows) - start >= size:
            conn.execute(sql, [value for row in rows[start:start + size] for value in row])
            start += size


def _append_batches(conn: sqlite3.Connection, keys: _Keys, batches: Sequence[Append], *,
                    few: bool = False) -> list[BaseException | None]:
    """``append_many``'s job: every batch at once, or, when that fails, each in a SAVEPOINT of its own (``few``:
    the events in a few statements, for the writer thread)."""
    conn.execute("SAVEPOINT batches")
    try:
        _write_batches(conn, keys, batches, few=few)
    except Exception:
        conn.execute("ROLLBACK TO batches")
    else:
        conn.execute("RELEASE batches")
        return [None] * len(batches)
    conn.execute("RELEASE batches")
    outcomes: list[BaseException | None] = []
    for batch in batches:
        conn.execute("SAVEPOINT batch")
        try:
            _write_batches(conn, keys, [batch], few=few)
        except Exception as exc:
            conn.execute("ROLLBACK TO batch")
            outcomes.append(exc)
        else:
            outcomes.append(None)
        conn.execute("RELEASE batch")
    return outcomes


class SQLiteStore(Store):
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._writer: _Worker | None = None
        self._reader: _Worker | None = None
        self._keys = _Keys()
        self._turn_committed = False  # a commit was made on the loop's thread in this turn of the loop
        self._creates: list[_Job] = []  # creates waiting for the next commit on the loop's thread
        # synchronous() is NORMAL: known here, before open, because the event log asks ``commits_now`` when it is
        # made, which the app does before it opens the store (open refuses a wrong value).
        self._normal = os.environ.get("HEADWATER_SQLITE_SYNCHRONOUS", "NORMAL").strip().upper() == "NORMAL"

    def describe(self) -> str:
        return f"sqlite {self.path}"

    async def open(self) -> None:
        self._normal = synchronous() == "NORMAL"  # (a wrong $HEADWATER_SQLITE_SYNCHRONOUS is said here, first)
        await asyncio.to_thread(self._create_schema)
        self._writer = _Worker(self.path, batch=True, name="headwater-sqlite-writer", pragmas=WRITER_PRAGMAS)
        self._reader = _Worker(self.path, batch=False, name="headwater-sqlite-reader")

    def _create_schema(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: set once for the file
            conn.execute("BEGIN IMMEDIATE")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                conn.execute("ROLLBACK")
                raise RuntimeError(f"{self.path} has schema version {version}; this Headwater knows up to "
                                   f"{SCHEMA_VERSION} (a newer Headwater made it)")
            fresh = conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'events'").fetchone()[0] == 0
            if fresh:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            else:
                for old in range(version, SCHEMA_VERSION):
                    for statement in _UPGRADES[old].split(";"):
                        if statement.strip():
                            conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        finally:
            conn.close()

    async def close(self) -> None:
        for worker in (self._writer, self._reader):
            if worker is not None:
                await asyncio.to_thread(worker.stop)
        self._writer = self._reader = None

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        if self._writer is None:
            raise RuntimeError("the SQLite store is not open")
        return self._writer.call(fn)

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        if self._reader is None:
            raise RuntimeError("the SQLite store is not open")
        return self._reader.call(fn)

    async def create(self, response: StoredResponse, items: Sequence[StoredItem]) -> None:
        rows = [(response.id, i, item.id, item.data) for i, item in enumerate(items)]
        keys = self._keys

        def create(conn: sqlite3.Connection) -> None:
            cursor = conn.execute(
                "INSERT INTO responses (id, owner, status, created_at, data) VALUES (?, ?, ?, ?, ?)",
                (response.id, response.owner, response.status, response.created_at, response.data),
            )
            keys.note(response.id, cursor.lastrowid)  # (its first append needs no look-up)
            if rows:
                conn.executemany("INSERT INTO input_items (response_id, position, item_id, data) VALUES (?, ?, ?, ?)",
                                 rows)

        # A small create commits on the loop's thread too, when the connection is free: through the writer thread,
        # a saturated process's creates each waited for the GIL at every statement (5 ms switches), one after
        # another, and new streams' first events for seconds at 512 streams. The first commit of a turn of the
        # loop goes at once; the creates that come after it in the same turn (a wave of new streams) share one
        # commit early in the next turn (``_commit_creates``), or the event log's, should it come first.
        if len(rows) <= INLINE_ITEMS and self.commits_now:
            if self._turn_committed or self._creates:
                await self._wait_commit(create)
                return
            outcome = self._commit_now([create])
            if outcome is None:  # (busy: as the creates that wait for a commit)
                await self._wait_commit(create)
            elif outcome[0][1] is not None:
                raise outcome[0][1]
            return
        await self._write(create)

    async def _wait_commit(self, create: Callable[[sqlite3.Connection], Any]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._creates.append((create, future))
        if len(self._creates) == 1:
            asyncio.get_running_loop().call_soon(self._commit_creates)
        await future

    def _commit_creates(self, *also: Callable[[sqlite3.Connection], Any]) -> list[_Outcome] | None:
        """The creates waiting for a commit, committed on this thread together with the jobs ``also`` (the event
        log's append); the outcomes of ``also``, or None (not committed: the caller's to queue). When the writer
        thread is in a batch of jobs, the creates wait for its end and are committed on this thread then (queued
        behind it, each waited for the GIL again in the thread's next batch); when another process holds the
        write lock, they are queued for the thread, which waits for it."""
        creates, self._creates = self._creates, []
        if not creates and not also:  # (the event log's commit took them)
            return []
        if self._writer is None:  # (closed meanwhile)
            for _, future in creates:
                if not future.done():
                    future.set_exception(RuntimeError("the SQLite store is not open"))
            return None
        outcomes = self._commit_now([*(fn for fn, _ in creates), *also])
        if outcomes is None:
            if creates and self._writer.when_free(self._commit_creates):
                self._creates = creates + self._creates
            else:
                for job in creates:
                    self._writer.queue(job)
            return None
        _resolve(creates, outcomes[:len(creates)])
        return outcomes[len(creates):]

    async def append(
        self,
        response_id: str,
        entries: Sequence[Entry],
        *,
        status: str | None = None,
        data: bytes | None = None,
    ) -> None:
        batch = Append(response_id, entries, status, data)

        def append(conn: sqlite3.Connection) -> None:
            _write_batches(conn, self._keys, [batch])

        await self._write(append)

    async def append_many(self, batches: Sequence[Append]) -> list[BaseException | None]:
        """One job of the writer for every batch: one executemany for all their events (so a group commit costs a
        few statements, not a few per response); when that fails, each batch again in its own SAVEPOINT."""
        if not batches:
            return []
        return await self._write(lambda conn: _append_batches(conn, self._keys, batches, few=True))

    @property
    def commits_now(self) -> bool:
        """Whether the event log may commit through ``append_many_now`` on the loop's thread: not with ``FULL``
        (an fsync per commit would block the loop for milliseconds), nor in a subclass that changes
        ``append_many`` (tests' failing stores)."""
        return self._normal and type(self).append_many is SQLiteStore.append_many

    def _commit_now(self, fns: Sequence[Callable[[sqlite3.Connection], Any]]) -> list[_Outcome] | None:
        """``fns`` committed together on this thread (``_Worker.commit_now``), or None: not now (busy, or
        ``FULL``). A commit made notes the turn of the loop (``_turn_committed``)."""
        if self._writer is None:
            raise RuntimeError("the SQLite store is not open")
        if not self.commits_now:
            return None
        outcomes = self._writer.commit_now(fns)
        if outcomes is not None and not self._turn_committed:
            self._turn_committed = True
            asyncio.get_running_loop().call_soon(self._new_turn)
        return outcomes

    def _new_turn(self) -> None:
        self._turn_committed = False

    def append_many_now(self, batches: Sequence[Append]) -> list[BaseException | None] | None:
        """``append_many`` committed on the calling thread (the event loop's: no hand-over to the writer thread
        and back), with the creates waiting for a commit, or None, having done nothing, when the writer
        connection is busy (the thread is in a job or a checkpoint, another process holds the write lock) or the
        batches hold more than INLINE_EVENTS events: then ``append_many`` queues it for the thread."""
        if not batches:
            return []
        if sum(len(batch.entries) for batch in batches) > INLINE_EVENTS:
            return None
        job = functools.partial(_append_batches, keys=self._keys, batches=batches)
        outcomes = self._commit_creates(job) if self._creates else self._commit_now([job])
        if outcomes is None:
            return None
        result, error = outcomes[0]
        return [error] * len(batches) if error is not None else result

    async def get(self, response_id: str) -> StoredResponse | None:
        def get(conn: sqlite3.Connection) -> StoredResponse | None:
            row = conn.execute(
                "SELECT id, owner, status, created_at, data FROM responses WHERE id = ?", (response_id,)
            ).fetchone()
            return None if row is None else StoredResponse(row[0], row[1], row[2], row[3], bytes(row[4]))

        return await self._read(get)

    async def events(self, response_id: str, starting_after: int = -1) -> list[Entry]:
        def events(conn: sqlite3.Connection) -> list[Entry]:
            rows = conn.execute(
                "SELECT seq, type, data FROM events WHERE response = (SELECT key FROM responses WHERE id = ?) "
                "AND seq > ? ORDER BY seq",
                (response_id, starting_after),
            )
            return [Entry(row[0], row[1], bytes(row[2])) for row in rows]

        return await self._read(events)

    async def input_items(
        self,
        response_id: str,
        *,
        limit: int | None = None,
        after: str | None = None,
        order: Literal["asc", "desc"] = "asc",
    ) -> ItemPage:
        direction, compare = ("DESC", "<") if order == "desc" else ("ASC", ">")

        def page(conn: sqlite3.Connection) -> ItemPage:
            sql = "SELECT item_id, data FROM input_items WHERE response_id = ?"
            params: list[Any] = [response_id]
            if after is not None:
                found = conn.execute(
                    "SELECT position FROM input_items WHERE response_id = ? AND item_id = ?", (response_id, after)
                ).fetchone()
                if found is None:
                    return ItemPage([], False)
                sql += f" AND position {compare} ?"
                params.append(found[0])
            sql += f" ORDER BY position {direction}"
            if limit is not None:
                sql += " LIMIT ?"
                params.append(limit + 1)
            items = [StoredItem(row[0], bytes(row[1])) for row in conn.execute(sql, params)]
            return ItemPage.cut(items, limit)

        return await self._read(page)

    async def find_item(self, item_id: str, owner: str | None) -> FoundItem | None:
        def find(conn: sqlite3.Connection) -> FoundItem | None:
            # Output items live inside the resource: a scan, its byte prefilter exact for random ids.
            row = conn.execute(
                "SELECT r.id, r.owner, j.value FROM responses r, json_each(CAST(r.data AS TEXT), '$.output') j "
                "WHERE r.owner IS ? AND instr(r.data, CAST(? AS BLOB)) > 0 AND json_extract(j.value, '$.id') = ? "
                "ORDER BY r.created_at DESC LIMIT 1",
                (owner, item_id, item_id),
            ).fetchone()
            if row is not None:
                return FoundItem(row[0], row[1], str(row[2]).encode(), output=True)
            row = conn.execute(
                "SELECT r.id, r.owner, i.data FROM input_items i JOIN responses r ON r.id = i.response_id "
                "WHERE i.item_id = ? AND r.owner IS ? ORDER BY r.created_at DESC LIMIT 1",
                (item_id, owner),
            ).fetchone()
            return None if row is None else FoundItem(row[0], row[1], bytes(row[2]), output=False)

        return await self._read(find)

    async def delete(self, response_id: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            self._keys.forget(response_id)
            conn.execute("DELETE FROM events WHERE response = (SELECT key FROM responses WHERE id = ?)", (response_id,))
            conn.execute("DELETE FROM input_items WHERE response_id = ?", (response_id,))
            return conn.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount > 0

        return await self._write(delete)

    async def unfinished(self) -> list[StoredResponse]:
        marks = ", ".join("?" for _ in UNFINISHED_STATUSES)

        def unfinished(conn: sqlite3.Connection) -> list[StoredResponse]:
            rows = conn.execute(
                f"SELECT id, owner, status, created_at, data FROM responses WHERE status IN ({marks})",
                UNFINISHED_STATUSES,
            )
            return [StoredResponse(r[0], r[1], r[2], r[3], bytes(r[4])) for r in rows]

        return await self._read(unfinished)
