"""The PostgreSQL store beyond the shared contract: schema versions, group commits, leases and fencing,
atomic terminal writes, and an unreachable server (against the machine's real PostgreSQL, a schema per test)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from headwater.server.store import Append, Entry, StoredItem, StoredResponse, StoreUnavailable
from headwater.server.store.postgres import _MIGRATIONS, SCHEMA_VERSION, Fenced, PostgresStore
from services import postgres_schema


def record(rid: str, status: str = "in_progress") -> StoredResponse:
    return StoredResponse(rid, "k1", status, 1, b'{"id": "%s"}' % rid.encode())


def e(seq: int, payload: bytes) -> Entry:
    return Entry(seq, "response.output_text.delta", payload)


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[PostgresStore]:
    instance = PostgresStore(postgres_url, replica="first")
    await instance.open()
    yield instance
    await instance.close()


async def test_start_up_creates_the_schema_at_its_version_and_a_reopen_keeps_the_data(postgres_url: str) -> None:
    first = PostgresStore(postgres_url)
    await first.open()
    await first.create(record("r1"), [StoredItem("i1", b"{}")])
    await first.append("r1", [e(0, b"a")])
    await first.close()
    second = PostgresStore(postgres_url)
    await second.open()
    try:
        assert await second.events("r1") == [e(0, b"a")]
        conn = await asyncpg.connect(second._dsn, server_settings={"search_path": second.schema or "public"})
        try:
            assert await conn.fetchval("SELECT version FROM headwater_schema") == SCHEMA_VERSION
        finally:
            await conn.close()
    finally:
        await second.close()


async def old_schema(postgres_url: str, version: int) -> None:
    """The tables as a Headwater of schema ``version`` (1 to 5) left them, with rows: three responses (two
    finished, one in progress) and their events (keyed by the response's text id before version 5, by its
    number from then on), payloads of any bytes."""
    base, _, schema = postgres_url.partition("?schema=")
    conn = await asyncpg.connect(base)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'SET search_path = "{schema}"')
        async with conn.transaction():
            for statement in _MIGRATIONS[:version]:
                await conn.execute(statement)
            await conn.execute("CREATE TABLE headwater_schema (version INTEGER NOT NULL)")
            await conn.execute("INSERT INTO headwater_schema (version) VALUES ($1)", version)
            await conn.executemany(
                "INSERT INTO responses (id, owner, status, created_at, data, lease_replica) VALUES ($1, 'k1', $2, $3, "
                "$4, $5)", [(rid, status, n, b'{"id": "%s"}' % rid.encode(), "gone" if status == "in_progress" else None)
                            for n, (rid, status) in enumerate(OLD_RESPONSES.items())])
            await conn.executemany("INSERT INTO input_items (response_id, position, item_id, data) VALUES ($1, 0, $2, "
                                   "'{}')", [(rid, f"item_{rid}") for rid in OLD_RESPONSES])
            insert = ("INSERT INTO events (response_id, seq, type, data) VALUES ($1, $2, $3, $4)" if version < 5 else
                      "INSERT INTO events (response, seq, type, data) SELECT key, $2, $3, $4 FROM responses WHERE id = $1")
            await conn.executemany(insert, [(rid, x.sequence_number, x.type, x.payload)
                                            for rid, log in OLD_EVENTS.items() for x in log])
    finally:
        await conn.close()


OLD_RESPONSES = {"resp_" + "b" * 32: "completed", "resp_" + "a" * 32: "failed", "resp_" + "c" * 32: "in_progress"}
OLD_EVENTS = {  # (ids that sort otherwise than they were made; payloads with NUL, invalid UTF-8, nothing)
    rid: [Entry(seq, "response.output_text.delta", b"%s \x00\xff\xfe %d " % (rid.encode(), seq) * seq)
          for seq in range(n)] for n, rid in zip((3, 40, 7), OLD_RESPONSES, strict=True)}


@pytest.mark.parametrize("version", [1, 2, 3, 4, 5])
async def test_start_up_upgrades_a_schema_of_an_older_version_with_its_rows(postgres_url: str, version: int) -> None:
    await old_schema(postgres_url, version)
    upgraded = PostgresStore(postgres_url, replica="later")
    await upgraded.open()
    try:
        async with upgraded._connection() as conn:
            assert await conn.fetchval("SELECT version FROM headwater_schema") == SCHEMA_VERSION
            # the foreign key version 4 removed; the events keyed by their response's number (version 5)
            assert await conn.fetchval(
                "SELECT count(*) FROM pg_constraint WHERE conrelid = 'events'::regclass AND contype = 'f'") == 0
            assert await conn.fetchval("SELECT count(*) FROM information_schema.columns WHERE table_name = 'events' "
                                       "AND column_name = 'response_id' AND table_schema = current_schema()") == 0
            # responses found by their number (version 6): the index the appends' fencing check descends
            assert await conn.fetchval("SELECT indisunique FROM pg_index WHERE indexrelid = 'responses_by_key'::regclass")
        for rid, log in OLD_EVENTS.items():  # every old event, byte for byte, in order
            assert await upgraded.events(rid) == log
            assert await upgraded.events(rid, 1) == log[2:]
            stored = await upgraded.get(rid)
            assert stored is not None and (stored.status, stored.data) == (OLD_RESPONSES[rid], b'{"id": "%s"}' % rid.encode())
            assert [i.id for i in (await upgraded.input_items(rid)).items] == [f"item_{rid}"]
        running = "resp_" + "c" * 32
        assert [r.id for r in await upgraded.unfinished()] == [running]
        await upgraded.request_cancel(running)  # the column version 3 added
        assert running in [t.record.id for t in await upgraded.take_over_expired(lease_seconds=60)]
        assert await upgraded.cancel_requests() == [running]
        # An old response goes on and a new one comes after them; each keeps its own events.
        await upgraded.append(running, [e(7, b"after"), e(8, b"end")], status="completed", data=b"{}")
        await upgraded.create(record("new"), [])
        await upgraded.append("new", [e(0, b"n")])
        assert await upgraded.events(running) == [*OLD_EVENTS[running], e(7, b"after"), e(8, b"end")]
        assert await upgraded.events("new") == [e(0, b"n")]
        assert await upgraded.delete("resp_" + "a" * 32) and await upgraded.events("resp_" + "a" * 32) == []
        assert await upgraded.events("resp_" + "b" * 32) == OLD_EVENTS["resp_" + "b" * 32]
    finally:
        await upgraded.close()


async def test_a_schema_newer_than_this_code_is_refused(store: PostgresStore, postgres_url: str) -> None:
    async with store._connection() as conn:
        await conn.execute("UPDATE headwater_schema SET version = $1", SCHEMA_VERSION + 1)
    newer = PostgresStore(postgres_url)
    with pytest.raises(RuntimeError, match="newer"):
        await newer.open()
    await newer.close()


async def test_concurrent_appends_share_group_commits(store: PostgresStore) -> None:
    commits: list[float] = []
    for n in range(50):
        await store.create(record(f"r{n}"), [])
    store.latency = lambda name, seconds: commits.append(seconds) if name == "commit" else None
    await asyncio.gather(*(store.append(f"r{n}", [e(0, b"x"), e(1, b"y")]) for n in range(50)))
    assert all([await store.events(f"r{n}") == [e(0, b"x"), e(1, b"y")] for n in range(50)])
    assert len(commits) < 50


async def test_a_group_commit_made_in_its_callers_task_and_the_writers_take_turns_on_one_connection(
    store: PostgresStore
) -> None:
    # append_many commits in its caller's task when nothing waits for the writer; what comes meanwhile (a
    # create, an append, another append_many) goes to the writer, which waits for that commit to end.
    for n in range(4):
        await store.create(record(f"r{n}"), [])
    commits: list[float] = []
    store.latency = lambda name, seconds: commits.append(seconds) if name == "commit" else None
    inline = asyncio.ensure_future(store.append_many([Append(f"r{n}", [e(0, b"a")]) for n in range(4)]))
    await asyncio.sleep(0)  # (its statement is on the wire)
    queued = await asyncio.gather(
        store.create(record("later"), [StoredItem("i1", b"{}")]),
        store.append_many([Append(f"r{n}", [e(1, b"b")]) for n in range(2)]),
        store.append("r3", [e(1, b"c")]),
    )
    assert await inline == [None] * 4 and queued == [None, [None, None], None]
    assert len(commits) >= 2
    assert [await store.events(f"r{n}") for n in range(4)] == [
        [e(0, b"a"), e(1, b"b")], [e(0, b"a"), e(1, b"b")], [e(0, b"a")], [e(0, b"a"), e(1, b"c")]]
    assert (await store.get("later")) is not None and store.errors == 0


async def test_creates_and_appends_sharing_a_commit_land_or_fail_each_alone(store: PostgresStore) -> None:
    await store.create(record("old"), [])
    await store.append("old", [e(0, b"a")])
    results = await asyncio.gather(
        store.create(record("new"), [StoredItem("i1", b'{"n": 1}'), StoredItem("i2", b'{"n": 2}')]),
        store.create(record("old"), [StoredItem("i3", b"{}")]),  # its id is taken
        store.append("old", [e(1, b"b")]),
        store.append("old", [e(0, b"again")]),  # its sequence number is taken
        return_exceptions=True,
    )
    assert results[0] is None and isinstance(results[1], KeyError)
    assert results[2] is None and isinstance(results[3], ValueError)
    assert [i.data for i in (await store.input_items("new", limit=10, order="asc")).items] == [b'{"n": 1}',
                                                                                              b'{"n": 2}']
    assert (await store.input_items("old", limit=10, order="asc")).items == []
    assert await store.events("old") == [e(0, b"a"), e(1, b"b")]


async def test_one_commit_carries_every_shape_of_append_each_as_asked(store: PostgresStore, postgres_url: str) -> None:
    # The statement's arrays come as literals and the events' data as one string of bytes: each response's
    # events, status and resource land as its own append said, whatever its neighbours in the commit carry.
    other = PostgresStore(postgres_url, replica="second")
    await other.open()
    try:
        await other.create(record("unowned"), [])  # (appended here without a token: NULL among the tokens)
        for rid in ("events", "status", "data", "both", "empty"):
            await store.create(record(rid), [])
        big = bytes(range(256)) * 300  # (every byte value, NUL and invalid UTF-8 among them; 76 KB)
        results = await store.append_many([
            Append("events", [Entry(0, "response.created", b""), Entry(1, "response.output_text.delta", big),
                              Entry(2, 'weird type \u00e9, {"quoted"}', b"\x00")]),
            Append("status", [], "completed"),
            Append("data", [Entry(0, "response.in_progress", b"d")], None, b'{"data": 1}'),
            Append("unowned", [Entry(0, "response.output_text.delta", b"u0"),
                               Entry(1, "response.output_text.delta", b"u1")]),
            Append("both", [Entry(5, "response.completed", b"done")], "completed", b""),
            Append("empty", []),
        ])
        assert results == [None] * 6
        assert await store.events("events") == [Entry(0, "response.created", b""),
                                                Entry(1, "response.output_text.delta", big),
                                                Entry(2, 'weird type \u00e9, {"quoted"}', b"\x00")]
        assert await store.events("data") == [Entry(0, "response.in_progress", b"d")]
        assert await store.events("unowned") == [Entry(0, "response.output_text.delta", b"u0"),
                                                 Entry(1, "response.output_text.delta", b"u1")]
        assert await store.events("both") == [Entry(5, "response.completed", b"done")]
        assert await store.events("status") == [] and await store.events("empty") == []
        expected = {"events": ("in_progress", b'{"id": "events"}'), "status": ("completed", b'{"id": "status"}'),
                    "data": ("in_progress", b'{"data": 1}'), "both": ("completed", b""),
                    "empty": ("in_progress", b'{"id": "empty"}'), "unowned": ("in_progress", b'{"id": "unowned"}')}
        for rid, (status, data) in expected.items():
            stored = await store.get(rid)
            assert stored is not None and (stored.status, stored.data) == (status, data), rid
    finally:
        await other.close()


async def xmin(store: PostgresStore, sql: str) -> str:
    """The transaction that wrote the row ``sql`` selects (``xmin``)."""
    async with store._connection() as conn:
        value: str = await conn.fetchval(sql)
        return value


async def test_a_commit_of_creates_and_appends_writes_them_in_one_transaction(store: PostgresStore) -> None:
    # One statement (one round trip, one WAL flush) for the creates and the appends of a commit: the new rows
    # and the events share their transaction id; a fenced append in it still fails alone, and the new
    # response's key is kept for its own appends.
    await store.create(record("old"), [])
    await store.create(record("lost"), [])
    store._tokens["lost"] = 7  # (as if another replica had taken it over since: the row's token is 1)
    results = await asyncio.gather(
        store.create(record("new"), [StoredItem("i1", b'{"n": 1}')]),
        store.append("old", [e(0, b"a"), e(1, b"b")], status="in_progress", data=b'{"old": 1}'),
        store.append("lost", [e(0, b"old owner")]),
        return_exceptions=True,
    )
    assert results[0] is None and results[1] is None and isinstance(results[2], Fenced)
    created = await xmin(store, "SELECT xmin::text FROM responses WHERE id = 'new'")
    assert created == await xmin(store, "SELECT xmin::text FROM input_items WHERE response_id = 'new'")
    assert created == await xmin(store, "SELECT e.xmin::text FROM events e JOIN responses r ON r.key = e.response "
                                        "WHERE r.id = 'old' AND e.seq = 1")
    assert created == await xmin(store, "SELECT xmin::text FROM responses WHERE id = 'old'")  # (its new status)
    assert await store.events("old") == [e(0, b"a"), e(1, b"b")] and await store.events("lost") == []
    assert "new" in store._keys
    await store.append("new", [e(0, b"n")])
    assert await store.events("new") == [e(0, b"n")]


async def test_a_taken_id_in_a_commit_of_creates_and_appends_fails_only_its_create(store: PostgresStore) -> None:
    # The one statement fails as a whole (the id is taken): the creates and the appends are then written
    # apart, and each bad job alone.
    await store.create(record("taken"), [])
    await store.create(record("old"), [])
    results = await asyncio.gather(
        store.create(record("taken"), [StoredItem("i1", b"{}")]),
        store.create(record("new"), [StoredItem("i2", b'{"n": 2}')]),
        store.append("old", [e(0, b"a")]),
        return_exceptions=True,
    )
    assert isinstance(results[0], KeyError) and results[1] is None and results[2] is None
    assert await store.events("old") == [e(0, b"a")]
    assert [i.data for i in (await store.input_items("new")).items] == [b'{"n": 2}']
    assert (await store.input_items("taken")).items == []
    await store.append("new", [e(0, b"n")])  # (its key came from the create written apart)
    assert await store.events("new") == [e(0, b"n")]


async def test_one_bad_append_in_a_group_commit_fails_only_itself(store: PostgresStore) -> None:
    await store.create(record("good"), [])
    await store.create(record("bad"), [])
    await store.append("bad", [e(0, b"a")])
    results = await asyncio.gather(
        store.append("good", [e(0, b"g")]),
        store.append("bad", [e(0, b"again")], status="completed", data=b"{}"),
        store.append("missing", [e(0, b"m")]),
        return_exceptions=True,
    )
    assert results[0] is None
    assert isinstance(results[1], ValueError) and isinstance(results[2], KeyError)
    assert await store.events("good") == [e(0, b"g")]
    bad = await store.get("bad")
    # The terminal status and the resource land with their events or not at all.
    assert bad is not None and bad.status == "in_progress" and await store.events("bad") == [e(0, b"a")]


async def test_a_first_change_to_what_the_create_stored_writes_no_new_version_of_the_row(
        store: PostgresStore, postgres_url: str) -> None:
    # A run's first batch (response.created, response.in_progress) carries the status and the resource its create
    # stored: that append writes its events, fenced as any, and leaves the row as it is (no UPDATE: same xmin);
    # a change to anything else is written, and so is the same change again later.
    for rid in ("same", "other", "fenced"):
        await store.create(record(rid), [])
    row = "SELECT xmin::text FROM responses WHERE id = '%s'"
    before = {rid: await xmin(store, row % rid) for rid in ("same", "other")}
    assert await store.append_many([Append("same", [e(0, b"c"), e(1, b"p")], "in_progress", b'{"id": "same"}'),
                                    Append("other", [e(0, b"c")], "in_progress", b'{"id": "other", "x": 1}')]
                                   ) == [None, None]
    assert await xmin(store, row % "same") == before["same"]
    assert await xmin(store, row % "other") != before["other"]
    assert await store.events("same") == [e(0, b"c"), e(1, b"p")]
    same, other = await store.get("same"), await store.get("other")
    assert same is not None and (same.status, same.data) == ("in_progress", b'{"id": "same"}')
    assert other is not None and other.data == b'{"id": "other", "x": 1}'
    await store.append("same", [e(2, b"q")], status="in_progress", data=b'{"id": "same"}')  # (now a change again)
    assert await xmin(store, row % "same") != before["same"]
    await store.append("same", [e(3, b"end")], status="completed", data=b'{"done": 1}')
    done = await store.get("same")
    assert done is not None and (done.status, done.data) == ("completed", b'{"done": 1}')
    store._tokens["fenced"] = 7  # (taken over meanwhile: the unchanged row's check still fences the append)
    with pytest.raises(Fenced):
        await store.append("fenced", [e(0, b"old owner")], status="in_progress", data=b'{"id": "fenced"}')
    assert await store.events("fenced") == []


async def test_a_replica_whose_lease_expired_is_taken_over_and_fenced(store: PostgresStore, postgres_url: str) -> None:
    await store.create(record("r1"), [])
    await store.create(record("done", "completed"), [])
    await store.append("r1", [e(0, b"a")])
    other = PostgresStore(postgres_url, replica="second")
    await other.open()
    try:
        assert await other.take_over_expired(lease_seconds=60) == []  # the first replica is alive
        await asyncio.sleep(0.05)
        await other.heartbeat()
        taken = await other.take_over_expired(lease_seconds=0.01)
        assert [(t.record.id, t.token, t.previous_replica) for t in taken] == [("r1", 2, "first")]
        assert await store.lease_holder("r1") == "second"
        with pytest.raises(Fenced):
            await store.append("r1", [e(1, b"from the old owner")])
        await other.append("r1", [e(1, b"error"), e(2, b"failed")], status="failed", data=b"{}")
        assert [x.payload for x in await store.events("r1")] == [b"a", b"error", b"failed"]
        assert await other.lease_holder("r1") is None
    finally:
        await other.close()


async def test_a_fenced_append_in_a_group_commit_writes_nothing_and_the_others_land(store: PostgresStore) -> None:
    for rid in ("mine", "lost", "ending"):
        await store.create(record(rid), [])
    store._tokens["lost"] = 7  # (as if another replica had taken it over since: the row's token is 1)
    results = await asyncio.gather(
        store.append("mine", [e(0, b"m")]),
        store.append("lost", [e(0, b"old owner")], status="completed", data=b"{}"),
        store.append("ending", [e(0, b"x"), e(1, b"end")], status="completed", data=b'{"done": 1}'),
        return_exceptions=True,
    )
    assert results[0] is None and isinstance(results[1], Fenced) and results[2] is None
    assert await store.events("mine") == [e(0, b"m")]
    lost, ending = await store.get("lost"), await store.get("ending")
    assert await store.events("lost") == [] and lost is not None and lost.status == "in_progress"
    assert ending is not None and (ending.status, ending.data) == ("completed", b'{"done": 1}')


async def test_appends_name_their_responses_by_number_and_find_the_number_of_one_not_owned_here(
    store: PostgresStore, postgres_url: str
) -> None:
    # This replica's own responses are appended by the key their create returned; one created by another
    # replica (no lease here: an orphan closed, say) by the key found from its id; one that does not exist
    # fails alone. All in one group commit, each event under its own response.
    other = PostgresStore(postgres_url, replica="second")
    await other.open()
    try:
        await other.create(record("theirs"), [])
        await store.create(record("mine"), [])
        await store.create(record("ended", "completed"), [])  # (finished at its create: no lease, no kept key)
        assert set(store._keys) == {"mine"} and "theirs" not in store._tokens
        results = await store.append_many([
            Append("theirs", [e(0, b"t0"), e(1, b"t1")]),
            Append("nothing", [e(0, b"n")]),
            Append("mine", [e(0, b"m0")], "completed", b'{"m": 1}'),
            Append("ended", [e(0, b"d0")]),
        ])
        assert results[0] is None and isinstance(results[1], KeyError) and results[2] is None and results[3] is None
        assert await other.events("theirs") == [e(0, b"t0"), e(1, b"t1")]
        assert await store.events("mine") == [e(0, b"m0")] and await store.events("ended") == [e(0, b"d0")]
        assert await store.events("nothing") == []
        mine = await store.get("mine")
        assert mine is not None and (mine.status, mine.data) == ("completed", b'{"m": 1}')
        assert "mine" not in store._keys and "mine" not in store._tokens  # (finished: forgotten)
        # The other replica's own appends name "theirs" by the key its create returned.
        assert "theirs" in other._keys
        await other.append("theirs", [e(2, b"t2")], status="completed", data=b"{}")
        assert [x.payload for x in await store.events("theirs")] == [b"t0", b"t1", b"t2"]
    finally:
        await other.close()


async def locking(postgres_url: str, statement: str) -> asyncpg.Connection:
    """Another session on the test's schema, inside a transaction that ran ``statement`` (and holds its locks)."""
    base, _, schema = postgres_url.partition("?schema=")
    conn = await asyncpg.connect(base, server_settings={"search_path": schema})
    await conn.execute("BEGIN")
    await conn.execute(statement)
    return conn


async def blocked_by(holder: asyncpg.Connection, append: asyncio.Future[None]) -> None:
    """Until some session (the store's append) waits for a lock ``holder`` has; the append must not end first."""
    while not await holder.fetchval("SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
                                    holder.get_server_pid()):
        assert not append.done(), append
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("terminal", [False, True], ids=["events only", "with the terminal status"])
async def test_an_append_racing_a_takeover_that_commits_first_is_fenced(
    store: PostgresStore, postgres_url: str, terminal: bool
) -> None:
    # The takeover locks the row and bumps its token; the append (checked against the old token) must wait for
    # it and then see the new token: Fenced, nothing written, rather than events after the new owner's.
    await store.create(record("r1"), [])
    takeover = await locking(postgres_url, "SELECT id FROM responses WHERE id = 'r1' FOR UPDATE")
    try:
        status = {"status": "completed", "data": b"{}"} if terminal else {}
        append = asyncio.ensure_future(store.append("r1", [e(0, b"old owner")], **status))  # type: ignore[arg-type]
        await blocked_by(takeover, append)
        await takeover.execute("UPDATE responses SET lease_token = lease_token + 1, lease_replica = 'second' "
                               "WHERE id = 'r1'")
        await takeover.execute("COMMIT")
        with pytest.raises(Fenced):
            await append
    finally:
        await takeover.close()
    assert await store.events("r1") == []
    stored = await store.get("r1")
    assert stored is not None and stored.status == "in_progress"


async def test_an_append_racing_a_delete_leaves_no_events_behind(store: PostgresStore, postgres_url: str) -> None:
    # The delete locks the row first; the append waits for it and then finds no response: KeyError, and no
    # event of the deleted response stays in the table (events have no foreign key to cascade through).
    await store.create(record("r1"), [])
    async with store._connection() as conn:
        key = await conn.fetchval("SELECT key FROM responses WHERE id = 'r1'")
    deleter = await locking(postgres_url, "DELETE FROM responses WHERE id = 'r1'")
    try:
        append = asyncio.ensure_future(store.append("r1", [e(0, b"late")]))
        await blocked_by(deleter, append)
        await deleter.execute("DELETE FROM events WHERE response = $1", key)
        await deleter.execute("COMMIT")
        with pytest.raises(KeyError):
            await append
        assert await deleter.fetchval("SELECT count(*) FROM events") == 0
    finally:
        await deleter.close()


async def test_an_unreachable_server_is_store_unavailable() -> None:
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/test", timeout=2)
    with pytest.raises(StoreUnavailable):
        await store.open()
    await store.close()


async def test_a_dead_replicas_row_goes_once_its_responses_are_taken_over_and_a_closed_ones_at_once(
    store: PostgresStore, postgres_url: str
) -> None:
    await store.create(record("r1"), [])
    async with store._connection() as conn:  # the first replica stopped renewing an hour ago
        await conn.execute("UPDATE replicas SET heartbeat = now() - interval '1 hour' WHERE id = 'first'")
    other = PostgresStore(postgres_url, replica="second")
    await other.open()
    try:
        assert await other.forget_dead_replicas(60) == []  # it still holds r1's lease
        assert await replica_rows(store) == {"first", "second"}
        assert [t.record.id for t in await other.take_over_expired(lease_seconds=60)] == ["r1"]
        assert await other.forget_dead_replicas(7200) == []  # not dead for that long
        assert await other.forget_dead_replicas(60) == ["first"]
        assert await replica_rows(store) == {"second"}
        await store.heartbeat()  # the first comes back after all: registered again
        assert await replica_rows(store) == {"first", "second"}
    finally:
        await other.close()
    assert await replica_rows(store) == {"first"}  # a clean close removes its own row


async def replica_rows(store: PostgresStore) -> set[str]:
    async with store._connection() as conn:
        return {row["id"] for row in await conn.fetch("SELECT id FROM replicas")}


async def test_replicas_starting_together_on_a_new_schema_all_start() -> None:
    for _ in range(5):
        async with postgres_schema() as url:  # a schema that does not exist yet
            stores = [PostgresStore(url, replica=f"r{n}") for n in range(4)]
            await asyncio.gather(*(store.open() for store in stores))  # none fails creating it
            await asyncio.gather(*(store.close() for store in stores))
