"""The store contract, one suite over every store (chosen by URL), plus what is particular to each.

To hold a new store to the contract, add its URL maker to ``STORE_URLS`` (``durable=True`` if its data outlives
the process): every test below then runs against it. A maker may ``pytest.skip`` when its server is missing.
"""

from __future__ import annotations

import gc
import json
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

import services
from headwater.server.store import Append, Entry, Store, StoredItem, StoredResponse, create_store
from headwater.server.store.sqlite import SCHEMA_VERSION


@dataclass(frozen=True)
class StoreKind:
    url: Callable[[Path], AbstractAsyncContextManager[str]]  # a fresh, empty store's URL while in use
    durable: bool


@asynccontextmanager
async def memory_url(tmp_path: Path) -> AsyncIterator[str]:
    yield "memory://"


@asynccontextmanager
async def sqlite_url(tmp_path: Path) -> AsyncIterator[str]:
    yield f"sqlite://{tmp_path / 'db.sqlite3'}"


@asynccontextmanager
async def postgresql_url(tmp_path: Path) -> AsyncIterator[str]:
    async with services.postgres_schema() as url:  # the machine's PostgreSQL, a schema of its own
        yield url


STORE_URLS: dict[str, StoreKind] = {
    "memory": StoreKind(memory_url, durable=False),
    "sqlite": StoreKind(sqlite_url, durable=True),
    "postgresql": StoreKind(postgresql_url, durable=True),
}
DURABLE = [name for name, kind in STORE_URLS.items() if kind.durable]


@pytest.fixture(params=list(STORE_URLS))
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with STORE_URLS[request.param].url(tmp_path) as url:
        yield url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    instance = create_store(store_url)
    await instance.open()
    yield instance
    await instance.close()


def record(rid: str, status: str = "in_progress", owner: str | None = "k1") -> StoredResponse:
    return StoredResponse(rid, owner, status, 1, b'{"id": "%s"}' % rid.encode())


def entry(seq: int, payload: bytes = b"{}", kind: str = "response.output_text.delta") -> Entry:
    return Entry(seq, kind, payload)


# --- the contract -------------------------------------------------------------------------------------------


async def test_store_keeps_entries_in_order_and_reads_after(store: Store) -> None:
    await store.create(record("r1"), [])
    await store.append("r1", [entry(0, b"a", "response.created"), entry(1, b"b")])
    await store.append("r1", [entry(2, b"c", "response.completed")], status="completed", data=b"{}")
    assert await store.events("r1") == [
        Entry(0, "response.created", b"a"), Entry(1, "response.output_text.delta", b"b"),
        Entry(2, "response.completed", b"c"),
    ]
    assert await store.events("r1", starting_after=1) == [Entry(2, "response.completed", b"c")]
    assert await store.events("r1", starting_after=2) == []
    got = await store.get("r1")
    assert got is not None and got.status == "completed" and got.data == b"{}" and got.owner == "k1"
    assert await store.unfinished() == []


async def test_store_entries_are_not_tracked_by_the_cyclic_garbage_collector(store: Store) -> None:
    """Entries are many and long-lived (entries.py): neither the ones written nor the ones read back are scanned
    by every collection."""
    written = [entry(0, b"a", "response.created"), entry(1, b"b")]
    await store.create(record("r1"), [])
    await store.append("r1", written)
    read = await store.events("r1")
    assert len(read) == 2 and not any(gc.is_tracked(e) for e in [*written, *read])


async def test_store_gives_back_the_exact_bytes(store: Store) -> None:
    payload = '{"delta": "é✓\\u0000 \\n"}'.encode() + b"\xff"  # stores keep bytes, they never parse them
    items = [StoredItem("i0", "{\"t\": \"ünï\"}".encode())]
    await store.create(StoredResponse("r1", None, "queued", 7, b"\x00resource"), items)
    await store.append("r1", [entry(0, payload)])
    assert (await store.events("r1"))[0].payload == payload
    assert (await store.input_items("r1")).items == items
    got = await store.get("r1")
    assert got == StoredResponse("r1", None, "queued", 7, b"\x00resource")


async def test_store_refuses_a_repeated_sequence_number_and_changes_nothing(store: Store) -> None:
    await store.create(record("r1"), [])
    await store.append("r1", [entry(0, b"a")])
    with pytest.raises(Exception):  # noqa: B017 - each store has its own integrity error
        await store.append("r1", [entry(1, b"b"), entry(0, b"again")], status="completed", data=b"{}")
    assert await store.events("r1") == [entry(0, b"a")]
    got = await store.get("r1")
    assert got is not None and got.status == "in_progress"  # the terminal write did not half-land


async def test_store_refuses_a_second_response_with_the_same_id(store: Store) -> None:
    await store.create(record("r1"), [StoredItem("i", b"{}")])
    with pytest.raises(Exception):  # noqa: B017 - each store has its own integrity error
        await store.create(record("r1", "completed"), [])
    got = await store.get("r1")
    assert got is not None and got.status == "in_progress"


async def test_store_knows_nothing_of_an_unknown_id(store: Store) -> None:
    assert await store.get("nope") is None
    assert await store.events("nope") == []
    assert (await store.input_items("nope")).items == []
    assert not await store.delete("nope")


async def test_store_paginates_input_items_both_ways(store: Store) -> None:
    items = [StoredItem(f"i{n}", b'{"n": %d}' % n) for n in range(5)]
    await store.create(record("r1"), items)
    page = await store.input_items("r1", limit=2)
    assert [i.id for i in page.items] == ["i0", "i1"] and page.has_more
    page = await store.input_items("r1", limit=2, after="i3")
    assert [i.id for i in page.items] == ["i4"] and not page.has_more
    page = await store.input_items("r1", limit=3, order="desc")
    assert [i.id for i in page.items] == ["i4", "i3", "i2"] and page.has_more
    page = await store.input_items("r1", limit=3, order="desc", after="i2")
    assert [i.id for i in page.items] == ["i1", "i0"] and not page.has_more
    page = await store.input_items("r1", limit=5)
    assert len(page.items) == 5 and not page.has_more
    assert (await store.input_items("r1", after="unknown")).items == []


async def test_store_finds_an_item_by_id_for_its_owner(store: Store) -> None:
    def resource(rid: str, *items: dict[str, object]) -> bytes:
        return json.dumps({"id": rid, "status": "completed", "output": list(items)}).encode()

    message = {"type": "message", "id": "msg_out", "role": "assistant", "content": [], "extra": "é"}
    await store.create(StoredResponse("r1", "k1", "in_progress", 1, resource("r1")),
                       [StoredItem("msg_in", b'{"type": "message", "id": "msg_in"}')])
    assert await store.find_item("msg_out", "k1") is None  # not in the resource yet
    await store.append("r1", [entry(0)], status="completed", data=resource("r1", {"type": "reasoning", "id": "rs_1"},
                                                                          message))
    found = await store.find_item("msg_out", "k1")
    assert found is not None and (found.response_id, found.owner, found.output) == ("r1", "k1", True)
    assert json.loads(found.data) == message
    found = await store.find_item("msg_in", "k1")
    assert found is not None and found.output is False and json.loads(found.data)["id"] == "msg_in"
    # Another key sees nothing; an unknown id is nothing; a later response holding the id wins.
    assert await store.find_item("msg_out", "k2") is None and await store.find_item("msg_nope", "k1") is None
    await store.create(StoredResponse("r2", "k1", "completed", 2, resource("r2", {**message, "extra": 2})), [])
    found = await store.find_item("msg_out", "k1")
    assert found is not None and found.response_id == "r2" and json.loads(found.data)["extra"] == 2
    await store.create(StoredResponse("r3", None, "completed", 3, resource("r3", {**message, "id": "msg_x"})), [])
    assert await store.find_item("msg_x", "k1") is None
    found = await store.find_item("msg_x", None)
    assert found is not None and found.owner is None


async def test_store_lists_unfinished_and_deletes_everything(store: Store) -> None:
    await store.create(record("r1", "queued"), [StoredItem("i", b"{}")])
    await store.create(record("r2", "completed"), [])
    await store.create(record("r3", "in_progress"), [])
    await store.append("r1", [entry(0, b"x")])
    assert sorted(r.id for r in await store.unfinished()) == ["r1", "r3"]
    assert await store.delete("r1")
    assert not await store.delete("r1")
    assert await store.get("r1") is None
    assert await store.events("r1") == [] and (await store.input_items("r1")).items == []
    assert await store.get("r2") is not None  # the others are untouched


async def test_store_appends_many_responses_at_once_and_a_bad_batch_fails_only_itself(store: Store) -> None:
    for rid in ("r1", "r2", "r3"):
        await store.create(record(rid), [])
    await store.append("r3", [entry(0, b"x")])
    outcomes = await store.append_many([
        Append("r1", [entry(0, b"a", "response.created"), entry(1, b"b")]),
        Append("r3", [entry(1, b"y"), entry(0, b"again")], status="completed", data=b"{}"),  # a repeated number
        Append("r2", [entry(0, b"c"), entry(1, b"d", "response.completed")], status="completed", data=b"{2}"),
        Append("nope", [entry(0, b"e")], status="completed", data=b"{}"),  # no such response
    ])
    assert [o is None for o in outcomes] == [True, False, True, False]
    assert await store.events("r1") == [Entry(0, "response.created", b"a"), entry(1, b"b")]
    assert await store.events("r2") == [entry(0, b"c"), Entry(1, "response.completed", b"d")]
    assert await store.events("r3") == [entry(0, b"x")]  # the failing batch changed nothing
    r2, r3 = await store.get("r2"), await store.get("r3")
    assert r2 is not None and (r2.status, r2.data) == ("completed", b"{2}")
    assert r3 is not None and r3.status == "in_progress"
    assert await store.get("nope") is None
    # And the next appends of the same responses go on from there.
    assert await store.append_many([Append("r1", [entry(2, b"f")]), Append("r3", [entry(1, b"z")])]) == [None, None]
    assert [e.payload for e in await store.events("r1")] == [b"a", b"b", b"f"]
    assert [e.payload for e in await store.events("r3")] == [b"x", b"z"]
    assert await store.append_many([]) == []


async def test_store_reads_see_every_acknowledged_write(store: Store) -> None:
    await store.create(record("r1"), [])
    for seq in range(50):  # each append is acknowledged before the next read
        await store.append("r1", [entry(seq, b"%d" % seq)])
        assert (await store.events("r1", starting_after=seq - 1))[-1].sequence_number == seq


@pytest.mark.parametrize("kind", DURABLE)
async def test_durable_store_survives_reopening(kind: str, tmp_path: Path) -> None:
    async with STORE_URLS[kind].url(tmp_path) as url:
        first = create_store(url)
        await first.open()
        await first.create(record("r1"), [StoredItem("i", b"{}")])
        await first.append("r1", [entry(0, b"a", "response.created")])
        await first.close()
        second = create_store(url)
        await second.open()
        try:
            assert await second.events("r1") == [Entry(0, "response.created", b"a")]
            assert [r.id for r in await second.unfinished()] == ["r1"]
        finally:
            await second.close()


# --- choosing a store by URL ----------------------------------------------------------------------------------


def test_create_store_picks_the_store_the_url_names(tmp_path: Path) -> None:
    assert type(create_store("memory://")).__name__ == "MemoryStore"
    sqlite = create_store(f"sqlite://{tmp_path / 'x.sqlite3'}")
    assert sqlite.describe() == f"sqlite {tmp_path / 'x.sqlite3'}"


@pytest.mark.parametrize("url", ["sqlite", "mysql://h/db", "file:///tmp/x", "sqlite://", ""])
def test_create_store_refuses_a_url_it_cannot_serve(url: str) -> None:
    with pytest.raises(ValueError):
        create_store(url)


def test_naming_a_store_imports_only_that_store() -> None:
    code = (
        "import sys\n"
        "from headwater.server.store import create_store\n"
        "create_store('memory://')\n"
        "print(sorted(m for m in sys.modules if m.startswith('headwater.server.store.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['headwater.server.store.base', 'headwater.server.store.memory']"


# --- SQLite in particular -------------------------------------------------------------------------------------

_VERSION_1 = """
CREATE TABLE responses (id TEXT PRIMARY KEY, owner TEXT, status TEXT NOT NULL, created_at INTEGER NOT NULL,
                        data BLOB NOT NULL);
CREATE TABLE input_items (response_id TEXT NOT NULL, position INTEGER NOT NULL, item_id TEXT NOT NULL,
                          data BLOB NOT NULL, PRIMARY KEY (response_id, position)) WITHOUT ROWID;
CREATE TABLE events (response_id TEXT NOT NULL, seq INTEGER NOT NULL, data BLOB NOT NULL,
                     PRIMARY KEY (response_id, seq)) WITHOUT ROWID;
"""


def _old_file(path: Path, schema: str, *rows: tuple[str, list[tuple[object, ...]]]) -> str:
    """A file made by an older Headwater: its ``schema`` and ``rows`` (a statement, its parameters' rows); the
    store URL of it."""
    conn = sqlite3.connect(path)
    conn.executescript(schema)
    with conn:
        for statement, params in rows:
            conn.executemany(statement, params)
    conn.close()
    return f"sqlite://{path}"


async def test_sqlite_store_upgrades_a_file_of_the_first_schema(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    store = create_store(_old_file(
        path, _VERSION_1,
        ("INSERT INTO responses VALUES ('r1', NULL, 'completed', 1, ?)", [(b"{}",)]),
        ("INSERT INTO events VALUES ('r1', 0, ?)", [(b'{"type":"response.created","sequence_number":0}',)]),
    ))
    await store.open()
    try:
        assert await store.events("r1") == [
            Entry(0, "response.created", b'{"type":"response.created","sequence_number":0}')
        ]
        await store.append("r1", [entry(1, b"{}", "response.completed")])
        assert [e.type for e in await store.events("r1")] == ["response.created", "response.completed"]
        with pytest.raises(sqlite3.IntegrityError):  # the upgraded log still refuses a repeated number
            await store.append("r1", [entry(1, b"again")])
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    # Version 4: the events are a rowid table with a unique index; version 5: on (response key, seq).
    assert "(response, seq)" in conn.execute("SELECT sql FROM sqlite_master WHERE name = 'events_by_response'"
                                             ).fetchone()[0]
    conn.close()


_VERSION_4 = """
CREATE TABLE responses (id TEXT PRIMARY KEY, owner TEXT, status TEXT NOT NULL, created_at INTEGER NOT NULL,
                        data BLOB NOT NULL);
CREATE INDEX responses_unfinished ON responses (status) WHERE status IN ('queued', 'in_progress');
CREATE TABLE input_items (response_id TEXT NOT NULL, position INTEGER NOT NULL, item_id TEXT NOT NULL,
                          data BLOB NOT NULL, PRIMARY KEY (response_id, position)) WITHOUT ROWID;
CREATE INDEX input_items_by_id ON input_items (item_id);
CREATE TABLE events (response_id TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL, data BLOB NOT NULL);
CREATE UNIQUE INDEX events_by_response ON events (response_id, seq);
PRAGMA user_version = 4;
"""


async def test_sqlite_store_upgrades_a_file_of_version_4_to_numbered_responses(tmp_path: Path) -> None:
    """Version 5 indexes events by a number per response (in creation order) instead of its text id: every
    response and event of a version-4 file is there after, in order, and the unfinished are still found."""
    path = tmp_path / "v4.sqlite3"
    store = create_store(_old_file(
        path, _VERSION_4,
        ("INSERT INTO responses VALUES (?, ?, ?, ?, ?)",
         [("r2", "k1", "in_progress", 2, b'{"id": "r2"}'), ("r1", None, "completed", 1, b'{"id": "r1"}')]),
        ("INSERT INTO events VALUES (?, ?, 'response.output_text.delta', ?)",
         [(rid, seq, b'{"n": %d}' % seq) for rid in ("r1", "r2") for seq in range(3)]),
        ("INSERT INTO input_items VALUES ('r2', 0, 'msg_1', ?)", [(b'{"id": "msg_1"}',)]),
    ))
    await store.open()
    try:
        for rid in ("r1", "r2"):
            assert [(e.sequence_number, e.payload) for e in await store.events(rid)] == [
                (seq, b'{"n": %d}' % seq) for seq in range(3)]
        assert [r.id for r in await store.unfinished()] == ["r2"]
        assert (await store.input_items("r2")).items[0].id == "msg_1"
        await store.append("r2", [entry(3, b"{}", "response.completed")], status="completed", data=b'{"id": "r2"}')
        assert [e.sequence_number for e in await store.events("r2", 1)] == [2, 3]
        await store.create(record("r3"), [])
        assert await store.delete("r1")
        assert await store.events("r1") == [] and await store.get("r1") is None
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT id FROM responses ORDER BY key").fetchall() == [("r2",), ("r3",)]  # r1 deleted
    conn.close()


async def test_sqlite_store_refuses_a_file_from_a_newer_headwater(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    store = create_store(f"sqlite://{path}")
    with pytest.raises(RuntimeError, match="schema version"):
        await store.open()
