"""The in-process store: dictionaries, gone when the process ends. For tests and throw-away servers.

It follows the same contract as the durable stores (ordered logs, atomic terminal writes, pagination), so
the server behaves the same on it apart from surviving a restart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from .base import (
    UNFINISHED_STATUSES,
    Append,
    Entry,
    FoundItem,
    ItemPage,
    Store,
    StoredItem,
    StoredResponse,
    output_item,
)

__all__ = ["MemoryStore"]


class MemoryStore(Store):
    def __init__(self) -> None:
        self._responses: dict[str, StoredResponse] = {}
        self._items: dict[str, list[StoredItem]] = {}
        self._events: dict[str, list[Entry]] = {}

    def describe(self) -> str:
        return "memory (nothing survives a restart)"

    async def create(self, response: StoredResponse, items: Sequence[StoredItem]) -> None:
        if response.id in self._responses:
            raise KeyError(f"response {response.id} already exists")
        self._responses[response.id] = response
        self._items[response.id] = list(items)
        self._events[response.id] = []

    async def append(
        self,
        response_id: str,
        entries: Sequence[Entry],
        *,
        status: str | None = None,
        data: bytes | None = None,
    ) -> None:
        error = self._append(Append(response_id, entries, status, data))
        if error is not None:
            raise error

    @property
    def inline(self) -> bool:
        """Whether this store's writes complete without waiting, so that callers may make them inline: its
        ``create``, ``append`` and ``append_many`` are this class's own (a subclass that makes one of them wait
        or fail, as tests' gated and failing stores do, is used like any other store). The event log then
        commits through ``append_many_now``, and no upstream connection is made ahead of ``create`` (there
        is no store wait for it to overlap; a request is still written ahead on a kept idle connection)."""
        cls = type(self)
        return (cls.create is MemoryStore.create and cls.append is MemoryStore.append
                and cls.append_many is MemoryStore.append_many)

    @property
    def commits_now(self) -> bool:
        """Whether the event log may commit through ``append_many_now`` (as ``inline``)."""
        return self.inline

    def append_many_now(self, batches: Sequence[Append]) -> list[BaseException | None]:
        """``append_many`` without a coroutine (there is nothing to wait for), so that the event log can commit
        a batch the moment it is written (``EventLog``: no task to hand it to, no turn of the event loop)."""
        return [self._append(batch) for batch in batches]

    def _append(self, batch: Append) -> BaseException | None:
        """One append, or the error that refused it (nothing of it is written then)."""
        log = self._events.get(batch.response_id)
        if log is None:
            return KeyError(f"no response {batch.response_id}")
        last = log[-1].sequence_number if log else -1
        for entry in batch.entries:
            if entry.sequence_number <= last:
                return ValueError(
                    f"sequence number {entry.sequence_number} is not after {last} in {batch.response_id}")
            last = entry.sequence_number
        log.extend(batch.entries)
        record = self._responses[batch.response_id]
        if batch.status is not None:
            record.status = batch.status
        if batch.data is not None:
            record.data = batch.data
        return None

    async def get(self, response_id: str) -> StoredResponse | None:
        record = self._responses.get(response_id)
        if record is None:
            return None
        return StoredResponse(record.id, record.owner, record.status, record.created_at, record.data)

    async def events(self, response_id: str, starting_after: int = -1) -> list[Entry]:
        return [e for e in self._events.get(response_id, ()) if e.sequence_number > starting_after]

    async def input_items(
        self,
        response_id: str,
        *,
        limit: int | None = None,
        after: str | None = None,
        order: Literal["asc", "desc"] = "asc",
    ) -> ItemPage:
        items = list(self._items.get(response_id, ()))
        if order == "desc":
            items.reverse()
        if after is not None:
            position = next((i for i, item in enumerate(items) if item.id == after), None)
            items = [] if position is None else items[position + 1 :]
        return ItemPage.cut(items, limit)

    async def find_item(self, item_id: str, owner: str | None) -> FoundItem | None:
        mine = [r for r in self._responses.values() if r.owner == owner]
        for record in sorted(mine, key=lambda r: r.created_at, reverse=True):
            data = output_item(record.data, item_id)
            if data is not None:
                return FoundItem(record.id, record.owner, data, output=True)
        for record in sorted(mine, key=lambda r: r.created_at, reverse=True):
            for item in self._items.get(record.id, ()):
                if item.id == item_id:
                    return FoundItem(record.id, record.owner, item.data, output=False)
        return None

    async def delete(self, response_id: str) -> bool:
        self._items.pop(response_id, None)
        self._events.pop(response_id, None)
        return self._responses.pop(response_id, None) is not None

    async def unfinished(self) -> list[StoredResponse]:
        return [r for r in self._responses.values() if r.status in UNFINISHED_STATUSES]
