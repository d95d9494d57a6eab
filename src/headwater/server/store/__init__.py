"""Where responses, input items and event logs are kept: ``memory`` and ``sqlite`` (the default).

``create_store`` picks one by name; PostgreSQL or Redis stores implement ``Store`` from ``base`` the same way.
"""

from __future__ import annotations

from pathlib import Path

from .base import ItemPage, Store, StoredItem, StoredResponse
from .memory import MemoryStore
from .sqlite import SQLiteStore

__all__ = ["ItemPage", "MemoryStore", "SQLiteStore", "Store", "StoredItem", "StoredResponse", "create_store"]


def create_store(kind: str, database_path: Path) -> Store:
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return SQLiteStore(database_path)
    raise ValueError(f"unknown store {kind!r} (choose sqlite or memory)")
