"""The shared store of several replicas: PostgreSQL (asyncpg), with a versioned schema and group commits.

Every ``append`` of this process queues up; one writer task commits all that waited in one transaction, so many
runs share one round trip and one WAL flush. Each stored response carries a lease (the replica that owns it and a
fencing token); an append of a response this process owns only lands while its token is still the row's, so a
replica that lost a run to a takeover can no longer write to it (``Fenced``). Leases themselves: ``replicas``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from .base import (
    UNFINISHED_STATUSES,
    Append,
    Entry,
    Fenced,
    FoundItem,
    ItemPage,
    Store,
    StoredItem,
    StoredResponse,
    StoreUnavailable,
)

__all__ = ["SCHEMA_VERSION", "Fenced", "PostgresStore", "Takeover"]

log = logging.getLogger("headwater.server.store")
T = TypeVar("T")

# Each entry upgrades the schema from version i to i + 1; start-up applies the missing ones in one transaction.
_MIGRATIONS: list[str] = [
    """
    CREATE TABLE responses (
        id TEXT PRIMARY KEY,
        owner TEXT,
        status TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        data BYTEA NOT NULL,
        lease_replica TEXT,
        lease_token BIGINT NOT NULL DEFAULT 1
    );
    CREATE INDEX responses_unfinished ON responses (lease_replica) WHERE status IN ('queued', 'in_progress');
    CREATE TABLE input_items (
        response_id TEXT NOT NULL REFERENCES responses (id) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        item_id TEXT NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (response_id, position)
    );
    CREATE TABLE events (
        response_id TEXT NOT NULL REFERENCES responses (id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        type TEXT NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (response_id, seq)
    );
    CREATE TABLE replicas (
        id TEXT PRIMARY KEY,
        started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        heartbeat TIMESTAMPTZ NOT NULL DEFAULT now()
    );
    """,
    # item references (find_item)
    "CREATE INDEX input_items_by_id ON input_items (item_id);",
    # 3: a cancel asked for on any replica, which the owner picks up at its next lease renewal (it also hears
    # it at once through the live log's signal when there is one).
    """
    ALTER TABLE responses ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT false;
    """,
    # 4: no foreign key from events to responses. Its check (a lookup per event inserted) was about a fifth of
    # PostgreSQL's CPU per event appended (bench/bench_pg_append.py); the append statement checks each response
    # once per group commit instead (``_APPEND``), and ``delete`` removes a response's events itself.
    """
    ALTER TABLE events DROP CONSTRAINT IF EXISTS events_response_id_fkey;
    """,
    # 5: events keyed by a number of their response (``responses.key``, given in creation order, never reused)
    # instead of its random text id: the primary key's entries are 16 bytes instead of ~48, and those of the
    # runs in progress (the newest responses) lie side by side at the index's end instead of one leaf each
    # wherever their ids sort among all stored ones. The index was about half of PostgreSQL's CPU per event
    # (bench/README.md, "pgkey lane, session 21"). The events table is rewritten (copied, then indexed).
    """
    ALTER TABLE responses ADD COLUMN key BIGINT GENERATED ALWAYS AS IDENTITY;
    CREATE TABLE events_v5 (response BIGINT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL, data BYTEA NOT NULL);
    INSERT INTO events_v5 (response, seq, type, data) SELECT r.key, e.seq, e.type, e.data
        FROM events AS e JOIN responses AS r ON r.id = e.response_id ORDER BY r.key, e.seq;
    DROP TABLE events;
    ALTER TABLE events_v5 RENAME TO events;
    ALTER TABLE events ADD CONSTRAINT events_pkey PRIMARY KEY (response, seq);
    """,
    # 6: responses found by their number: an append names its responses by ``key`` (which the create returned)
    # and the group commit's fencing check descends an index of 8-byte numbers, not one of ~37-byte text ids
    # (about 1 µs of PostgreSQL's CPU per event at one event per response per commit: bench/README.md, "Scale
    # lane, session 22").
    """
    CREATE UNIQUE INDEX responses_by_key ON responses (key);
    """,
]
SCHEMA_VERSION = len(_MIGRATIONS)
# The appends of one group commit in one statement (its own transaction). One row per response: $1 its number
# ``key``, $2 its lease token (NULL: not fenced), $3 its change (0: events only; else the position of its new
# status and resource in $4 and $5, either NULL to keep the old one). The events: $6 their response's key, $7 seq,
# $8 type (its position in $9, the commit's distinct types), $11 and $12 where its data starts in $10 (all the
# events' data, one after another) and how long it is. The arrays of numbers come as array literals
# (``{1,2,NULL}``), the data as one bytea: asyncpg encodes an array element by element with two or three
# Python-level checks each, which cost about 0.3 µs an element, eight elements an event at one event per
# response per commit; a literal is one string (bench/README.md, "Scale lane, session 22").
# A response passes when its row exists and (given a token) still has that token: one whose status or
# resource changes by the UPDATE; one that only takes events by a check under a share lock, which writes no new
# version of the row. Either way the row is locked until the commit: a takeover's FOR UPDATE (or a delete)
# either waits for this commit, or committed first and the lock's re-check sees its token (or that the row is
# gone). Only the events of the responses that passed are inserted; the statement returns the keys of those
# that did not pass.
_APPEND_STEPS = """
u AS (
    SELECT * FROM unnest($1::text::bigint[], $2::text::bigint[], $3::text::int[]) AS u(key, token, change)
), changed AS (
    UPDATE responses AS r
    SET status = coalesce(($4::text[])[u.change], r.status), data = coalesce(($5::bytea[])[u.change], r.data)
    FROM u WHERE r.key = u.key AND u.change > 0 AND (u.token IS NULL OR r.lease_token = u.token)
    RETURNING r.key
), checked AS MATERIALIZED (
    SELECT r.key FROM responses AS r JOIN u ON r.key = u.key AND (u.token IS NULL OR r.lease_token = u.token)
    WHERE u.change = 0
    FOR SHARE OF r
), passed AS MATERIALIZED (
    SELECT key FROM changed UNION ALL SELECT key FROM checked
), inserted AS (
    INSERT INTO events (response, seq, type, data)
    SELECT e.key, e.seq, ($9::text[])[e.kind], substr($10::bytea, e.start, e.length)
    FROM unnest($6::text::bigint[], $7::text::int[], $8::text::int[], $11::text::int[], $12::text::int[])
        AS e(key, seq, kind, start, length)
    JOIN passed AS p ON p.key = e.key
)"""
_APPEND = f"WITH {_APPEND_STEPS} SELECT key FROM u WHERE key NOT IN (SELECT key FROM passed)"
# The creates of one group commit: $1-$6 the responses (id, owner, status, created_at, data, lease replica),
# $7-$10 their input items (response id, position, item id, data). Returns each new response's id and key.
_CREATE_STEPS = """
created AS (
    INSERT INTO responses (id, owner, status, created_at, data, lease_replica, lease_token)
    SELECT *, 1 FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bytea[], $6::text[])
    RETURNING id, key
), i AS (
    INSERT INTO input_items (response_id, position, item_id, data)
    SELECT * FROM unnest($7::text[], $8::int[], $9::text[], $10::bytea[])
)"""
_CREATE = f"WITH {_CREATE_STEPS} SELECT id, key FROM created"
# Both in one statement, one round trip and one transaction (one WAL flush) for a commit that has creates and
# appends: the appends' parameters after the creates' ($11-$22). An append's response is never one created in
# the same statement (its create returned before the run that appends began; ``_commit`` checks), which
# matters because the statement's parts share one snapshot: the appends could not see those rows. Rows: the
# created responses (id, key), then the keys of the appends that did not pass (id NULL).
_CREATE_AND_APPEND = (
    f"WITH {_CREATE_STEPS}, {re.sub(r'[$]([0-9]+)', lambda m: f'${int(m[1]) + 10}', _APPEND_STEPS)} "
    "SELECT id, key FROM created UNION ALL SELECT NULL, key FROM u WHERE key NOT IN (SELECT key FROM passed)"
)

_MAX_BATCH_ROWS = 5000  # events per group commit; more wait for the next one
IDLE_IN_TRANSACTION_MS = 3000

# What "PostgreSQL cannot be reached" looks like through asyncpg: the server answers 503 for these.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, crash shutdown, query cancelled
    asyncpg.exceptions.IdleInTransactionSessionTimeoutError,
    asyncpg.exceptions.TooManyConnectionsError,
)


@dataclass(slots=True)
class Takeover:
    """A response whose owner's lease expired, now owned by this replica: ``token`` fences the old owner."""

    record: StoredResponse
    token: int
    previous_replica: str | None


@dataclass(slots=True)
class _Append:
    response_id: str
    rows: list[Entry]
    status: str | None
    data: bytes | None
    token: int | None
    # Resolved (always with None) once the job's commit is over; several jobs of one ``append_many`` share one.
    future: asyncio.Future[None] = field(repr=False)
    # A create instead of an append: the new response and its input items (they share the group commit).
    new: tuple[StoredResponse, Sequence[StoredItem]] | None = None
    problem: BaseException | None = None  # why the job did not land, once its commit is over
    key: int | None = None  # the response's number: known for the responses this process owns, or found by id


def _split_url(url: str) -> tuple[str, str | None]:
    """The DSN for asyncpg and the ``schema`` query parameter (ours: where the tables live), removed from it."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), None)
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    scheme = "postgresql" if parts.scheme in ("postgresql", "postgres", "postgresql+asyncpg") else parts.scheme
    if schema is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", schema):
        raise ValueError(f"schema must be a plain SQL identifier, not {schema!r}")
    return urlunsplit((scheme, parts.netloc, parts.path, rest, parts.fragment)), schema


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:***@{host}" if ":" in user else f"{user}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def _record(row: asyncpg.Record) -> StoredResponse:
    return StoredResponse(row["id"], row["owner"], row["status"], row["created_at"], bytes(row["data"]))


class PostgresStore(Store):
    """``postgresql://user:password@host:port/database[?schema=NAME]``. ``replica`` names this process in
    leases (default: host, pid and a random suffix)."""

    # The least time from one group commit's start to the next one's, for the process's event log
    # (``runs.log.EventLog``), which lets the batches written meanwhile wait and share the next commit. Without
    # it a busy worker commits as soon as the last commit returns: at 1,000 paced streams ~450 commits a second
    # a worker of ~20 rows each, and a commit's own work (its transaction, its WAL flush) is much of
    # PostgreSQL's CPU per event. 5 ms (an eighth of a 40 ms pace) cut PostgreSQL's CPU per event by about a
    # quarter and the workers' by 10-15 % (bench/README.md, "Scale lane, session 24"); an event of an idle
    # server is committed at once.
    commit_interval = 0.005

    def __init__(
        self,
        url: str,
        *,
        replica: str | None = None,
        min_connections: int = 2,
        max_connections: int = 20,
        timeout: float = 5.0,
    ) -> None:
        self.url = url
        self._dsn, self.schema = _split_url(url)
        self.replica = replica or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._min = min_connections
        self._max = max_connections
        self._timeout = timeout
        self._pool: asyncpg.Pool | None = None
        self._queue: list[_Append] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        # The writer's own connection, held between commits: a pooled one is reset (a round trip and a
        # statement: RESET ALL, UNLISTEN *...) each time it goes back, which is once per group commit.
        self._writer_conn: asyncpg.Connection | None = None
        self._commit_lock = asyncio.Lock()  # held by whoever commits: the writer task, or append_many inline
        self._closing = False
        # The lease token of every response this process owns (created here or taken over): its appends are
        # fenced with it. Removed when the response reaches a terminal status.
        self._tokens: dict[str, int] = {}
        # The number (``responses.key``) of the same responses, as the create or takeover returned it: appends
        # name their responses by it (an append of any other response finds its key by id first). Kept and
        # removed with the token; a key is never reused, so a stale one only finds no row.
        self._keys: dict[str, int] = {}
        # The status and resource each of those responses that this process created was stored with, until an
        # append changes them: a run's first batch (response.created, response.in_progress) carries the very
        # status and bytes its create stored, and an UPDATE writing them again costs a new version of the row
        # (its WAL, its index entries) for nothing; such a change is left out (the append is fenced alike).
        self._stored_as: dict[str, tuple[str, bytes]] = {}
        self._registered = False  # this replica's row was written once (a later insert: it was removed)
        self.latency: Callable[[str, float], None] | None = None  # metrics hook: (operation, seconds)
        self.errors = 0  # times PostgreSQL could not be reached (for /metrics)

    def describe(self) -> str:
        where = _redacted(self._dsn)
        return f"postgresql {where}" + (f" (schema {self.schema})" if self.schema else "")

    # --- life cycle -------------------------------------------------------------------------------------

    async def open(self) -> None:
        # A replica frozen inside a transaction (a pause, SIGSTOP) would hold its rows' locks and block their
        # takeover: PostgreSQL ends such a session after IDLE_IN_TRANSACTION_MS (ours last milliseconds).
        settings = {"idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_MS)}
        if self.schema:
            settings["search_path"] = self.schema
        try:
            # The schema on a connection of its own, with no time limit on its statements: an upgrade may copy
            # a whole table (version 5), and a replica starting beside it waits for it.
            conn = await asyncpg.connect(self._dsn, timeout=self._timeout, command_timeout=None,
                                         server_settings={"search_path": self.schema} if self.schema else None)
            try:
                await self._migrate(conn)
            finally:
                await conn.close()
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self._min,
                max_size=self._max,
                timeout=self._timeout,
                command_timeout=self._timeout * 2,
                server_settings=settings,
            )
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"PostgreSQL at {_redacted(self._dsn)} cannot be reached: {exc}") from exc
        await self.heartbeat()
        self._writer = asyncio.get_running_loop().create_task(self._write_loop(), name="headwater-pg-writer")

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        """Create the schema or upgrade it to ``SCHEMA_VERSION``; replicas starting together take turns."""
        if self.schema:
            # (UniqueViolation: another replica starting at the same moment made it; "IF NOT EXISTS" does not lock)
            with contextlib.suppress(asyncpg.exceptions.UniqueViolationError):
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.headwater'))")
            await conn.execute("CREATE TABLE IF NOT EXISTS headwater_schema (version INTEGER NOT NULL)")
            version = await conn.fetchval("SELECT max(version) FROM headwater_schema")
            version = version or 0
            if version > SCHEMA_VERSION:
                raise RuntimeError(
                    f"the PostgreSQL schema is at version {version}, newer than this Headwater's {SCHEMA_VERSION}"
                )
            for number in range(version, SCHEMA_VERSION):
                log.info("PostgreSQL schema: upgrading to version %d", number + 1)
                await conn.execute(_MIGRATIONS[number])
            if version < SCHEMA_VERSION:
                await conn.execute("DELETE FROM headwater_schema")
                await conn.execute("INSERT INTO headwater_schema (version) VALUES ($1)", SCHEMA_VERSION)

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self._writer
            self._writer = None
        await self._drop_writer_connection()
        if self._pool is not None:
            with contextlib.suppress(Exception):
                async with self._pool.acquire(timeout=self._timeout) as conn:
                    await conn.execute("DELETE FROM replicas WHERE id = $1", self.replica)
            await self._pool.close()
            self._pool = None

    async def drop_schema(self) -> None:
        """Remove this store's schema and everything in it (tests: the per-session schema)."""
        if not self.schema:
            raise RuntimeError("drop_schema needs a store opened with ?schema=NAME")
        async with self._connection() as conn:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')

    @contextlib.asynccontextmanager
    async def _connection(self) -> Any:
        if self._pool is None:
            raise RuntimeError("the PostgreSQL store is not open")
        try:
            async with self._pool.acquire(timeout=self._timeout) as conn:
                yield conn
        except _UNAVAILABLE as exc:
            self.errors += 1
            raise StoreUnavailable(f"PostgreSQL cannot be reached: {exc}") from exc

    async def _run(self, name: str, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        start = time.perf_counter()
        async with self._connection() as conn:
            try:
                return await fn(conn)
            except _UNAVAILABLE as exc:
                self.errors += 1
                raise StoreUnavailable(f"PostgreSQL cannot be reached: {exc}") from exc
            finally:
                if self.latency is not None:
                    self.latency(name, time.perf_counter() - start)

    # --- writes -----------------------------------------------------------------------------------------

    async def create(self, response: StoredResponse, items: Sequence[StoredItem]) -> None:
        """Queued for the writer like an append: creates and appends of many requests share a commit."""
        job = _Append(response.id, [], None, None, None, self._future(), (response, list(items)))
        await self._queued(job)
        if response.status in UNFINISHED_STATUSES:
            self._tokens[response.id] = 1
            self._stored_as[response.id] = (response.status, response.data)
            if job.key is not None:
                self._keys[response.id] = job.key

    async def append(
        self,
        response_id: str,
        entries: Sequence[Entry],
        *,
        status: str | None = None,
        data: bytes | None = None,
    ) -> None:
        await self._queued(_Append(response_id, list(entries), status, data, self._tokens.get(response_id),
                                   self._future(), key=self._keys.get(response_id)))
        if status is not None and status not in UNFINISHED_STATUSES:
            self._forget_lease(response_id)

    async def append_many(self, batches: Sequence[Append]) -> list[BaseException | None]:
        """Every batch queued for the writer at once: they land in the same group commit (each fenced with its
        own lease token; one that cannot land fails only itself, as ``_commit`` does it)."""
        if not batches:
            return []
        done = self._future()  # (one for all: no future, callback and wake-up per response)
        tokens, keys = self._tokens, self._keys
        jobs = [_Append(b.response_id, b.entries if isinstance(b.entries, list) else list(b.entries), b.status, b.data,
                        tokens.get(b.response_id), done, key=keys.get(b.response_id)) for b in batches]
        if not self._queue and not self._commit_lock.locked() and sum(len(j.rows) for j in jobs) <= _MAX_BATCH_ROWS:
            # Nothing else waits for the writer: commit in the caller's task (the event log's), two turns of
            # the event loop sooner than through the writer task (its wake-up, then this one's).
            async with self._commit_lock:
                await self._commit(jobs)
            if self._queue:
                self._wake.set()  # (what was queued meanwhile: the writer's)
        else:
            self._queue.extend(jobs)
            self._wake.set()
        await done
        for batch, job in zip(batches, jobs, strict=True):
            if job.problem is None and batch.status is not None and batch.status not in UNFINISHED_STATUSES:
                self._forget_lease(batch.response_id)
        return [job.problem for job in jobs]

    def _forget_lease(self, response_id: str) -> None:
        """The response is finished (or gone): its appends are no longer fenced, nor named by a kept key."""
        self._tokens.pop(response_id, None)
        self._keys.pop(response_id, None)
        self._stored_as.pop(response_id, None)

    def _future(self) -> asyncio.Future[None]:
        if self._writer is None or self._closing:
            raise RuntimeError("the PostgreSQL store is not open")
        return asyncio.get_running_loop().create_future()

    async def _queued(self, job: _Append) -> None:
        self._queue.append(job)
        self._wake.set()
        await job.future
        if job.problem is not None:
            raise job.problem

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                async with self._commit_lock:  # (one commit at a time, on the writer's one connection)
                    taken = size = 0
                    for job in self._queue:
                        if taken and size + len(job.rows) > _MAX_BATCH_ROWS:
                            break
                        taken += 1
                        size += len(job.rows)
                    jobs, self._queue = self._queue[:taken], self._queue[taken:]
                    if jobs:
                        await self._commit(jobs)
            if self._closing:
                return

    async def _commit(self, jobs: list[_Append]) -> None:
        """All ``jobs`` at once: the creates and the appends in one statement (``_create_and_append``; the
        appends of a response come only after its create returned, so the two never meet), or, when one part
        fails it, one statement for the creates (``_create``) and one for the appends (``_append``), and when
        one of those fails as a whole, its jobs each alone, so one bad job fails only itself."""
        start = time.perf_counter()
        problems: dict[int, BaseException] = {}
        try:
            conn = await self._writer_connection()
            creates = [job for job in jobs if job.new is not None]
            appends = [job for job in jobs if job.new is None] if creates else jobs
            if creates and appends and not {job.response_id for job in creates} & {job.response_id for job in appends}:
                try:
                    problems.update(await self._create_and_append(conn, creates, appends))
                    creates = appends = []  # (all landed, or failed each alone)
                except (asyncpg.exceptions.IntegrityConstraintViolationError, _Problem):
                    pass  # (nothing of it landed: each part alone, as below)
            for group, write in ((creates, self._create), (appends, self._append)):
                if not group:
                    continue
                try:
                    problems.update(await write(conn, group))
                except (asyncpg.exceptions.IntegrityConstraintViolationError, _Problem):
                    for job in group:
                        try:
                            problems.update(await write(conn, [job]))
                        except (asyncpg.exceptions.IntegrityConstraintViolationError, _Problem) as exc:
                            problems[id(job)] = exc
        except Exception as exc:
            # Whatever stopped the commit (the server away, our session ended), these appends did not land as
            # far as we know: StoreUnavailable, so that no run publishes what may not be stored. The connection
            # goes (the next commit takes a fresh one).
            log.error("PostgreSQL group commit of %d append(s) failed: %s", len(jobs), exc)
            await self._drop_writer_connection()
            self.errors += 1
            failure = exc if isinstance(exc, StoreUnavailable) else StoreUnavailable(f"PostgreSQL commit failed: {exc}")
            problems = {id(job): failure for job in jobs}
        except BaseException:  # cancelled mid-commit (the loop is going away): the session's state is unknown
            if self._writer_conn is not None:
                self._writer_conn.terminate()  # (given back to the pool by the next use or by close)
            raise
        if self.latency is not None:
            self.latency("commit", time.perf_counter() - start)
        for job in jobs:
            problem = problems.get(id(job))
            job.problem = problem.cause if isinstance(problem, _Problem) else problem
            if not job.future.done():  # (a waiter that was cancelled; or the future of another job of its call)
                job.future.set_result(None)

    async def _writer_connection(self) -> asyncpg.Connection:
        if self._writer_conn is not None and self._writer_conn.is_closed():
            await self._drop_writer_connection()
        if self._writer_conn is None:
            if self._pool is None:
                raise RuntimeError("the PostgreSQL store is not open")
            try:
                self._writer_conn = await self._pool.acquire(timeout=self._timeout)
            except _UNAVAILABLE as exc:
                raise StoreUnavailable(f"PostgreSQL cannot be reached: {exc}") from exc
        return self._writer_conn

    async def _drop_writer_connection(self) -> None:
        conn, self._writer_conn = self._writer_conn, None
        if conn is not None and self._pool is not None:
            with contextlib.suppress(Exception):
                await self._pool.release(conn, timeout=self._timeout)

    def _create_args(self, jobs: list[_Append]) -> list[list[Any]]:
        """``_CREATE``'s parameters for the create ``jobs``."""
        created = [job.new for job in jobs if job.new is not None]
        items = [(r.id, n, item) for r, its in created for n, item in enumerate(its)]
        return [[r.id for r, _ in created], [r.owner for r, _ in created], [r.status for r, _ in created],
                [r.created_at for r, _ in created], [r.data for r, _ in created],
                [self.replica if r.status in UNFINISHED_STATUSES else None for r, _ in created],
                [i[0] for i in items], [i[1] for i in items], [i[2].id for i in items], [i[2].data for i in items]]

    @staticmethod
    def _created(jobs: list[_Append], rows: Sequence[Any]) -> None:
        """Each create job's key, from the statement's (id, key) rows."""
        keys = {row[0]: row[1] for row in rows if row[0] is not None}
        for job in jobs:
            job.key = keys.get(job.response_id)

    async def _create(self, conn: asyncpg.Connection, jobs: list[_Append]) -> dict[int, BaseException]:
        """The responses and input items of the create ``jobs``, in one statement, which gives each job its
        response's key. A response id that exists already raises ``_Problem`` (nothing of the statement lands;
        the caller tries job by job)."""
        try:
            rows = await conn.fetch(_CREATE, *self._create_args(jobs))
        except asyncpg.exceptions.UniqueViolationError:
            raise _Problem(KeyError("a response with this id already exists")) from None
        self._created(jobs, rows)
        return {}

    async def _keyed(self, conn: asyncpg.Connection, jobs: list[_Append]) -> tuple[list[_Append], list[_Append], list[str]]:
        """The append ``jobs`` merged (one per response), those of them whose response's key is known (looked
        up by id for any this process does not own: an orphan closed, a test's store), and the ids of those
        whose response has no row."""
        merged = _merged(jobs)
        stored_as = self._stored_as
        for job in merged:
            if job.status is not None or job.data is not None:
                was = stored_as.pop(job.response_id, None)
                if was is not None and job.status == was[0] and job.data == was[1]:
                    job.status = job.data = None  # (what the create stored: no change of the row)
        unknown = [job.response_id for job in merged if job.key is None]
        if unknown:  # (a statement more, off the hot path)
            found = dict(await conn.fetch("SELECT id, key FROM responses WHERE id = ANY($1::text[])", unknown))
            for job in merged:
                if job.key is None:
                    job.key = found.get(job.response_id)
        missing = [job.response_id for job in merged if job.key is None]
        return merged, [job for job in merged if job.key is not None] if missing else merged, missing

    @staticmethod
    def _append_args(known: list[_Append]) -> list[Any]:
        """``_APPEND``'s parameters for the merged append jobs ``known`` (each with its key)."""
        statuses: list[str | None] = []
        datas: list[bytes | None] = []
        changes: list[int] = []
        for job in known:
            if job.status is None and job.data is None:
                changes.append(0)
            else:
                statuses.append(job.status)
                datas.append(job.data)
                changes.append(len(statuses))
        entries = [entry for job in known for entry in job.rows]
        types = {kind: n for n, kind in enumerate(dict.fromkeys([entry.type for entry in entries]), 1)}
        payloads = [entry.payload for entry in entries]
        lengths = list(map(len, payloads))
        tokens = str([job.token for job in known]).replace("None", "NULL")  # (the only one that may hold None)
        return [_literal([job.key for job in known]), "{" + tokens[1:-1] + "}", _literal(changes), statuses, datas,
                _literal([job.key for job in known for _ in job.rows]),
                _literal([entry.sequence_number for entry in entries]),
                _literal([types[entry.type] for entry in entries]), list(types), b"".join(payloads),
                _literal(list(accumulate(lengths[:-1], initial=1))), _literal(lengths)]

    async def _append(self, conn: asyncpg.Connection, jobs: list[_Append]) -> dict[int, BaseException]:
        """``_APPEND`` for ``jobs`` (the appends of many responses); the jobs it refused, with their error."""
        _, known, missing = await self._keyed(conn, jobs)
        if known:
            try:
                refused = await conn.fetch(_APPEND, *self._append_args(known))
            except asyncpg.exceptions.UniqueViolationError as exc:
                raise _Problem(ValueError(f"a sequence number is already logged: {exc}")) from None
            missing += self._refused(known, refused)
        return await self._refusals(conn, jobs, missing)

    async def _create_and_append(self, conn: asyncpg.Connection, creates: list[_Append],
                                 appends: list[_Append]) -> dict[int, BaseException]:
        """``_CREATE_AND_APPEND``: the creates and the appends of one commit in one statement; the append jobs
        it refused, with their error. Anything that fails the statement as a whole raises (``_Problem`` for a
        taken id or sequence number): nothing of it landed, and the caller writes each part alone."""
        _, known, missing = await self._keyed(conn, appends)
        if not known:
            return {**await self._create(conn, creates), **await self._refusals(conn, appends, missing)}
        try:
            rows = await conn.fetch(_CREATE_AND_APPEND, *self._create_args(creates), *self._append_args(known))
        except asyncpg.exceptions.UniqueViolationError as exc:
            raise _Problem(ValueError(f"an id or a sequence number is already taken: {exc}")) from None
        self._created(creates, rows)
        missing += self._refused(known, [row for row in rows if row[0] is None])
        return await self._refusals(conn, appends, missing)

    @staticmethod
    def _refused(known: list[_Append], rows: Sequence[Any]) -> list[str]:
        """The ids of the responses whose keys an append statement returned (they did not pass)."""
        if not rows:
            return []
        by_key = {job.key: job.response_id for job in known}
        return [by_key[row[-1]] for row in rows]

    async def _refusals(self, conn: asyncpg.Connection, jobs: list[_Append], missing: list[str]) -> dict[int, BaseException]:
        """The error of each of ``jobs`` whose response is among ``missing`` (refused): gone, or taken over by
        another replica (a new lease token)."""
        if not missing:
            return {}
        current = dict(await conn.fetch("SELECT id, lease_token FROM responses WHERE id = ANY($1::text[])", missing))
        errors: dict[str, BaseException] = {
            rid: Fenced(f"response {rid} is owned by another replica now") if rid in current
            else KeyError(f"no response {rid}") for rid in missing}
        return {id(job): errors[job.response_id] for job in jobs if job.response_id in errors}

    # --- reads ------------------------------------------------------------------------------------------

    async def get(self, response_id: str) -> StoredResponse | None:
        async def get(conn: asyncpg.Connection) -> StoredResponse | None:
            row = await conn.fetchrow(
                "SELECT id, owner, status, created_at, data FROM responses WHERE id = $1", response_id
            )
            return None if row is None else _record(row)

        return await self._run("get", get)

    async def events(self, response_id: str, starting_after: int = -1) -> list[Entry]:
        async def events(conn: asyncpg.Connection) -> list[Entry]:
            rows = await conn.fetch(
                "SELECT seq, type, data FROM events WHERE response = (SELECT key FROM responses WHERE id = $1) "
                "AND seq > $2 ORDER BY seq",
                response_id, starting_after,
            )
            return [Entry(row[0], row[1], bytes(row[2])) for row in rows]

        return await self._run("events", events)

    async def input_items(
        self,
        response_id: str,
        *,
        limit: int | None = None,
        after: str | None = None,
        order: Literal["asc", "desc"] = "asc",
    ) -> ItemPage:
        direction, compare = ("DESC", "<") if order == "desc" else ("ASC", ">")

        async def page(conn: asyncpg.Connection) -> ItemPage:
            sql = "SELECT item_id, data FROM input_items WHERE response_id = $1"
            params: list[Any] = [response_id]
            if after is not None:
                position = await conn.fetchval(
                    "SELECT position FROM input_items WHERE response_id = $1 AND item_id = $2", response_id, after
                )
                if position is None:
                    return ItemPage([], False)
                sql += f" AND position {compare} $2"
                params.append(position)
            sql += f" ORDER BY position {direction}"
            if limit is not None:
                sql += f" LIMIT ${len(params) + 1}"
                params.append(limit + 1)
            items = [StoredItem(row[0], bytes(row[1])) for row in await conn.fetch(sql, *params)]
            return ItemPage.cut(items, limit)

        return await self._run("input_items", page)

    async def find_item(self, item_id: str, owner: str | None) -> FoundItem | None:
        async def find(conn: asyncpg.Connection) -> FoundItem | None:
            # Output items live inside the resource: a scan, its byte prefilter exact for random ids.
            row = await conn.fetchrow(
                "SELECT r.id, r.owner, e.value::text FROM (SELECT id, owner, created_at, "
                "convert_from(data, 'UTF8')::json -> 'output' AS output FROM responses "
                "WHERE owner IS NOT DISTINCT FROM $2 AND position(convert_to($1, 'UTF8') IN data) > 0) r, "
                "json_array_elements(CASE WHEN json_typeof(r.output) = 'array' THEN r.output ELSE '[]' END) e "
                "WHERE e.value ->> 'id' = $1 ORDER BY r.created_at DESC LIMIT 1",
                item_id, owner,
            )
            if row is not None:
                return FoundItem(row[0], row[1], row[2].encode(), output=True)
            row = await conn.fetchrow(
                "SELECT r.id, r.owner, i.data FROM input_items i JOIN responses r ON r.id = i.response_id "
                "WHERE i.item_id = $1 AND r.owner IS NOT DISTINCT FROM $2 ORDER BY r.created_at DESC LIMIT 1",
                item_id, owner,
            )
            return None if row is None else FoundItem(row[0], row[1], bytes(row[2]), output=False)

        return await self._run("find_item", find)

    async def delete(self, response_id: str) -> bool:
        async def delete(conn: asyncpg.Connection) -> bool:
            # The row first (an append holding its lock is waited for), then its events in a statement of its
            # own, whose snapshot has that append's events.
            async with conn.transaction():
                key = await conn.fetchval("DELETE FROM responses WHERE id = $1 RETURNING key", response_id)
                if key is not None:
                    await conn.execute("DELETE FROM events WHERE response = $1", key)
            return key is not None

        self._forget_lease(response_id)
        return await self._run("delete", delete)

    async def unfinished(self) -> list[StoredResponse]:
        async def unfinished(conn: asyncpg.Connection) -> list[StoredResponse]:
            rows = await conn.fetch(
                "SELECT id, owner, status, created_at, data FROM responses WHERE status = ANY($1::text[])",
                list(UNFINISHED_STATUSES),
            )
            return [_record(row) for row in rows]

        return await self._run("unfinished", unfinished)

    # --- leases (used by runs.leases) ---------------------------------------------------------------------

    def owns(self, response_id: str) -> bool:
        """Whether this process holds the lease of ``response_id`` (as far as it knows: see ``Fenced``)."""
        return response_id in self._tokens

    async def heartbeat(self) -> None:
        """Renew this replica's lease: every unfinished response it owns stays its own for the lease time."""

        async def beat(conn: asyncpg.Connection) -> bool:
            inserted: bool = await conn.fetchval(
                "INSERT INTO replicas (id) VALUES ($1) ON CONFLICT (id) DO UPDATE SET heartbeat = now() "
                "RETURNING xmax = 0",
                self.replica,
            )
            return inserted

        inserted = await self._run("heartbeat", beat)
        if inserted and self._registered:
            log.warning("replica %s: its row was gone (it was taken for dead: its unfinished responses were taken "
                        "over); registered again", self.replica)
        self._registered = True

    async def forget_dead_replicas(self, after_seconds: float) -> list[str]:
        """Remove the rows of replicas that have not renewed their lease for ``after_seconds`` and hold the
        lease of no unfinished response any more (all taken over): nothing refers to them now. Their ids."""

        async def forget(conn: asyncpg.Connection) -> list[str]:
            rows = await conn.fetch(
                "DELETE FROM replicas p WHERE p.heartbeat < now() - make_interval(secs => $1) AND p.id <> $2 "
                "AND NOT EXISTS (SELECT 1 FROM responses r WHERE r.lease_replica = p.id "
                "AND r.status = ANY($3::text[])) RETURNING p.id",
                after_seconds, self.replica, list(UNFINISHED_STATUSES),
            )
            return [row["id"] for row in rows]

        return await self._run("forget_replicas", forget)

    async def take_over_expired(self, lease_seconds: float, limit: int = 100) -> list[Takeover]:
        """Take every unfinished response whose owner has not renewed its lease for ``lease_seconds`` (or has no
        replica row at all): it becomes this replica's with a new fencing token. Replicas scanning together
        never take the same response (``FOR UPDATE SKIP LOCKED``)."""

        async def take(conn: asyncpg.Connection) -> list[tuple[Takeover, int]]:
            async with conn.transaction():
                rows = await conn.fetch(
                    "SELECT r.id, r.lease_replica FROM responses r LEFT JOIN replicas p ON p.id = r.lease_replica "
                    "WHERE r.status = ANY($1::text[]) AND (r.lease_replica IS NULL OR p.id IS NULL "
                    "OR p.heartbeat < now() - make_interval(secs => $2)) AND r.lease_replica IS DISTINCT FROM $3 "
                    "LIMIT $4 FOR UPDATE OF r SKIP LOCKED",
                    list(UNFINISHED_STATUSES), lease_seconds, self.replica, limit,
                )
                if not rows:
                    return []
                previous = {row["id"]: row["lease_replica"] for row in rows}
                taken = await conn.fetch(
                    "UPDATE responses SET lease_replica = $1, lease_token = lease_token + 1 WHERE id = ANY($2) "
                    "RETURNING id, owner, status, created_at, data, lease_token, key",
                    self.replica, list(previous),
                )
                return [(Takeover(_record(row), row["lease_token"], previous[row["id"]]), row["key"]) for row in taken]

        taken = await self._run("takeover", take)
        for takeover, key in taken:
            self._tokens[takeover.record.id] = takeover.token
            self._keys[takeover.record.id] = key
        return [takeover for takeover, _ in taken]

    async def request_cancel(self, response_id: str) -> None:
        """Ask the owner of an unfinished response to cancel it (``cancel_requests`` is how it learns)."""

        async def request(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "UPDATE responses SET cancel_requested = true WHERE id = $1 AND status = ANY($2::text[])",
                response_id, list(UNFINISHED_STATUSES),
            )

        await self._run("cancel", request)

    async def cancel_requests(self) -> list[str]:
        """The unfinished responses of this replica that a cancel was asked for."""

        async def requests(conn: asyncpg.Connection) -> list[str]:
            rows = await conn.fetch(
                "SELECT id FROM responses WHERE lease_replica = $1 AND cancel_requested "
                "AND status = ANY($2::text[])",
                self.replica, list(UNFINISHED_STATUSES),
            )
            return [row["id"] for row in rows]

        return await self._run("cancel_requests", requests)

    async def owned_unfinished(self) -> list[str]:
        """The unfinished responses whose lease this replica holds."""

        async def owned(conn: asyncpg.Connection) -> list[str]:
            rows = await conn.fetch(
                "SELECT id FROM responses WHERE lease_replica = $1 AND status = ANY($2::text[])",
                self.replica, list(UNFINISHED_STATUSES),
            )
            return [row["id"] for row in rows]

        return await self._run("owned", owned)

    async def lease_holder(self, response_id: str) -> str | None:
        """The replica that holds the lease of an unfinished response (None when finished or unknown)."""

        async def holder(conn: asyncpg.Connection) -> str | None:
            value: str | None = await conn.fetchval(
                "SELECT lease_replica FROM responses WHERE id = $1 AND status = ANY($2::text[])",
                response_id, list(UNFINISHED_STATUSES),
            )
            return value

        return await self._run("lease_holder", holder)


def _literal(numbers: list[int] | list[int | None]) -> str:
    """PostgreSQL's array literal of ``numbers`` (``{1, 2, 3}``; ints only, for a ``$n::text::int[]`` parameter):
    the list's own repr, made in C, is about half the cost of joining each number's ``str``."""
    text = repr(numbers)
    return "{" + text[1:-1] + "}"


def _merged(jobs: list[_Append]) -> list[_Append]:
    """One job per response (its appends in order; the last status and resource win), for one UPDATE row each."""
    if len({job.response_id for job in jobs}) == len(jobs):
        return jobs  # (the event log's commits: one job per response already; nothing to copy)
    merged: dict[str, _Append] = {}
    for job in jobs:
        first = merged.get(job.response_id)
        if first is None:
            merged[job.response_id] = _Append(job.response_id, list(job.rows), job.status, job.data, job.token,
                                              job.future, key=job.key)
        else:
            first.rows.extend(job.rows)
            first.status = job.status if job.status is not None else first.status
            first.data = job.data if job.data is not None else first.data
            first.token = job.token if job.token is not None else first.token
    return list(merged.values())


class _Problem(Exception):
    """One job of a group commit cannot land; ``cause`` is what its caller gets."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause
