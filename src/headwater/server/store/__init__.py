"""Where responses, input items and event logs are kept, chosen by URL: ``memory://``, ``sqlite:///path``
(the default, in the data directory), ``postgresql://...``.

``create_store(url)`` imports only the implementation the URL names (a driver is loaded when it is used).
Every store implements ``Store`` from ``base``; ``tests/test_store.py`` holds each to the same contract.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..schemes import class_for_url
from .base import (
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

if TYPE_CHECKING:
    from .memory import MemoryStore
    from .sqlite import SQLiteStore

__all__ = [
    "STORE_SCHEMES",
    "Append",
    "Entry",
    "Fenced",
    "FoundItem",
    "ItemPage",
    "MemoryStore",
    "SQLiteStore",
    "Store",
    "StoreUnavailable",
    "StoredItem",
    "StoredResponse",
    "create_store",
]

# URL scheme -> (module in this package, class). The class is built with the URL (memory: without).
STORE_SCHEMES: dict[str, tuple[str, str]] = {
    "memory": ("memory", "MemoryStore"),
    "sqlite": ("sqlite", "SQLiteStore"),
    "postgresql": ("postgres", "PostgresStore"),
    "postgres": ("postgres", "PostgresStore"),
}
_LAZY = {"MemoryStore": "memory", "SQLiteStore": "sqlite"}


def create_store(url: str) -> Store:
    """The store a URL names. ``sqlite:///abs/path.sqlite3`` (three slashes and an absolute path) or
    ``sqlite://relative/path``; ``memory://``; ``postgresql://user:password@host:port/db``."""
    scheme, cls = class_for_url(url, __name__, STORE_SCHEMES, "store")
    rest = url.partition("://")[2]
    if scheme == "memory":
        store: Store = cls()
    elif scheme == "sqlite":
        if not rest:
            raise ValueError(f"{url!r} names no file: write sqlite:///absolute/path.sqlite3")
        store = cls(Path(rest))
    else:
        store = cls(url)
    return store


def __getattr__(name: str) -> Any:  # MemoryStore, SQLiteStore: imported when first named
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
