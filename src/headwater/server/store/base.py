"""What a store keeps, and the interface every store implements: responses, their input items, their event logs.

A store never interprets events: it keeps each response's log as ``Entry`` rows in ``sequence_number`` order
and hands them back as they came.
Every write is durable when its coroutine returns, so the server acknowledges nothing a crash could lose. The
interface is small and coarse (one call per batch of events; ``append_many``: one call for the batches of many
responses, the process's group commit) so that PostgreSQL or Redis can follow.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import msgspec

from ..entries import Entry

__all__ = [
    "UNFINISHED_STATUSES",
    "Append",
    "Entry",
    "Fenced",
    "FoundItem",
    "ItemPage",
    "Store",
    "StoreUnavailable",
    "StoredItem",
    "StoredResponse",
    "output_item",
]

UNFINISHED_STATUSES = ("queued", "in_progress")


class StoreUnavailable(Exception):
    """The store cannot be reached (its database server is down or unreachable): a request fails with 503
    and nothing of it was written."""


class Fenced(Exception):
    """This process no longer owns the response: another replica took it over (a store with leases, e.g.
    PostgreSQL, refuses the old owner's appends). Nothing of the refused append was written."""


@dataclass(slots=True)
class StoredResponse:
    """One response as stored: who owns it, its status, and its latest ``ResponseResource`` JSON."""

    id: str
    owner: str | None  # the digest of the API key that created it; None when the server runs without keys
    status: str
    created_at: int
    data: bytes


@dataclass(slots=True)
class Append:
    """One response's part of a group commit (``Store.append_many``): what one ``append`` call would write."""

    response_id: str
    entries: Sequence[Entry]
    status: str | None = None
    data: bytes | None = None


@dataclass(slots=True)
class StoredItem:
    """One input item of a response: its id (the pagination cursor) and its JSON."""

    id: str
    data: bytes


@dataclass(slots=True)
class FoundItem:
    """An item found by its id (``Store.find_item``): its JSON and the response it belongs to (who may see it)."""

    response_id: str
    owner: str | None
    data: bytes
    output: bool  # an output item of the response (else one of its input items)


@dataclass(slots=True)
class ItemPage:
    items: list[StoredItem]
    has_more: bool

    @classmethod
    def cut(cls, items: list[StoredItem], limit: int | None) -> ItemPage:
        """The first ``limit`` of ``items`` (fetched as ``limit + 1``, so that one more says there are more)."""
        if limit is None or len(items) <= limit:
            return cls(items, False)
        return cls(items[:limit], True)


def output_item(data: bytes, item_id: str) -> bytes | None:
    """The JSON of the output item ``item_id`` in a stored resource ``data``, or None (for stores that keep the
    resource as one document)."""
    if item_id.encode() not in data:
        return None
    try:
        resource = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return None
    output = resource.get("output") if isinstance(resource, dict) else None
    for item in output if isinstance(output, list) else ():
        if isinstance(item, dict) and item.get("id") == item_id:
            return msgspec.json.encode(item)
    return None


class Store(abc.ABC):
    """A response store. Every method is a coroutine that returns once its effect is durable (writes) or
    consistent with every write acknowledged before it (reads)."""

    # The least time, seconds, from one group commit's start to the next one's in the process's event log
    # (``runs.log.EventLog``): the batches written meanwhile wait and share the next commit; an idle server's
    # batch is committed at once. 0: each commit follows the last as soon as it returns (PostgreSQL sets one).
    commit_interval: float = 0.0

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the data lives, for the start-up banner."""

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Prepare the store (create tables, open connections)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; pending writes are finished first."""

    @abc.abstractmethod
    async def create(self, response: StoredResponse, items: Sequence[StoredItem]) -> None:
        """Store a new response and its input items."""

    @abc.abstractmethod
    async def append(
        self,
        response_id: str,
        entries: Sequence[Entry],
        *,
        status: str | None = None,
        data: bytes | None = None,
    ) -> None:
        """Append entries (in ``sequence_number`` order) to a response's log and, in the same transaction,
        replace its ``status`` and ``data`` when given (a terminal event and the final resource land together).
        A ``sequence_number`` already in the log is an error and the whole call changes nothing."""

    async def append_many(self, batches: Sequence[Append]) -> list[BaseException | None]:
        """Several responses' appends at once (at most one batch per response), each with ``append``'s meaning
        and atomicity; a store makes them durable together where it can (one transaction, one fsync). Returns,
        batch by batch, None (it is durable) or the error that batch failed with: a failing batch changes
        nothing and fails no other batch. (This default calls ``append`` once per batch.)"""
        outcomes: list[BaseException | None] = []
        for batch in batches:
            try:
                await self.append(batch.response_id, batch.entries, status=batch.status, data=batch.data)
            except Exception as exc:
                outcomes.append(exc)
            else:
                outcomes.append(None)
        return outcomes

    @abc.abstractmethod
    async def get(self, response_id: str) -> StoredResponse | None: ...

    @abc.abstractmethod
    async def events(self, response_id: str, starting_after: int = -1) -> list[Entry]:
        """The log's entries with ``sequence_number > starting_after``, in order (none for an unknown id)."""

    @abc.abstractmethod
    async def input_items(
        self,
        response_id: str,
        *,
        limit: int | None = None,
        after: str | None = None,
        order: Literal["asc", "desc"] = "asc",
    ) -> ItemPage:
        """A page of input items, in input order (``asc``) or reversed, starting after the item with id
        ``after`` (an unknown ``after`` gives an empty page). ``limit=None`` returns all."""

    @abc.abstractmethod
    async def find_item(self, item_id: str, owner: str | None) -> FoundItem | None:
        """The item with id ``item_id`` among the output items (in the stored resource's ``output``) and input
        items of ``owner``'s responses, for an ``item_reference``; the most recent response's when several
        hold it; None when there is none."""

    @abc.abstractmethod
    async def delete(self, response_id: str) -> bool:
        """Remove a response, its items and its log; False when there was none."""

    @abc.abstractmethod
    async def unfinished(self) -> list[StoredResponse]:
        """Responses whose status is still ``queued`` or ``in_progress`` (after a crash: orphans)."""
