"""The SQLite store's durability setting (docs/limits.md, "Durability"): WAL + ``synchronous=NORMAL`` unless
``HEADWATER_SQLITE_SYNCHRONOUS=FULL`` asks for an fsync at every commit; anything else is refused at open."""

from __future__ import annotations

from pathlib import Path

import pytest

from headwater.server.store.sqlite import SQLiteStore

# SQLite's numbers for PRAGMA synchronous.
NORMAL, FULL = 1, 2


async def _settings(path: Path) -> tuple[str, int, int]:
    store = SQLiteStore(path)
    await store.open()
    try:
        assert store._writer is not None and store._reader is not None
        mode = await store._writer.call(lambda conn: conn.execute("PRAGMA journal_mode").fetchone()[0])
        writer = await store._writer.call(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0])
        reader = await store._reader.call(lambda conn: conn.execute("PRAGMA synchronous").fetchone()[0])
    finally:
        await store.close()
    return mode, writer, reader


async def test_the_store_commits_in_wal_mode_without_an_fsync_per_commit(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEADWATER_SQLITE_SYNCHRONOUS", raising=False)
    assert await _settings(tmp_path / "a.sqlite3") == ("wal", NORMAL, NORMAL)


async def test_full_synchronous_on_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADWATER_SQLITE_SYNCHRONOUS", "full")
    assert await _settings(tmp_path / "a.sqlite3") == ("wal", FULL, FULL)


async def test_an_unknown_setting_is_refused_before_anything_is_opened(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEADWATER_SQLITE_SYNCHRONOUS", "OFF")
    store = SQLiteStore(tmp_path / "a.sqlite3")
    with pytest.raises(ValueError, match="HEADWATER_SQLITE_SYNCHRONOUS must be one of NORMAL, FULL, not 'OFF'"):
        await store.open()
    assert not (tmp_path / "a.sqlite3").exists()
