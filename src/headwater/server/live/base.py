"""The live event log of running responses: the interface every live log implements (in-process, Redis).

A live log carries each running response's entries from the run that makes them to whoever follows it, in
``sequence_number`` order, ending with the terminal entry. It is a transport, not the truth: the store keeps
every entry first, and a follower that finds no live log (never there, expired, lost) reads the store.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from ..entries import Entry

__all__ = ["Entry", "LiveLog", "LiveRead"]


@dataclass(slots=True)
class LiveRead:
    """What one ``read`` found: the entries after the point asked for, whether the log has ended (its last
    entry is the terminal event), and whether there is a log at all."""

    entries: list[Entry] = field(default_factory=list)
    ended: bool = False
    found: bool = True


class LiveLog(abc.ABC):
    """One log per response id. Every method is safe to call for an id that has no log."""

    @abc.abstractmethod
    def describe(self) -> str:
        """What carries the events, for the start-up banner."""

    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect (a pool, a client)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; followers still reading see their logs end."""

    @abc.abstractmethod
    async def append(self, response_id: str, entries: Sequence[Entry], *, ended: bool = False) -> None:
        """Add ``entries`` (in order) after those already in the log, creating the log on first use. An entry
        whose ``sequence_number`` is not after the log's last is skipped, so a retried append never duplicates.
        ``ended=True``: the batch ends the log (its last entry is the terminal event); nothing follows it."""

    async def append_many(self, batches: Sequence[tuple[str, Sequence[Entry], bool]]) -> list[BaseException | None]:
        """Several logs' appends at once, each ``(response_id, entries, ended)`` as ``append`` takes it (a
        response's batches in order): what each append raised, or None. The group commit publishes all of a
        commit's this way; a live log that can carry them in one round trip overrides it."""
        results = await asyncio.gather(*(self.append(rid, entries, ended=ended) for rid, entries, ended in batches),
                                       return_exceptions=True)
        return [result if isinstance(result, BaseException) else None for result in results]

    @abc.abstractmethod
    async def read(self, response_id: str, starting_after: int = -1, *, wait: float = 0.0) -> LiveRead:
        """The entries with ``sequence_number > starting_after``. When there are none yet and the log has not
        ended, wait at most ``wait`` seconds for some (bounded: a read never blocks longer, whatever happens to
        the producer); an empty result then only means "nothing yet"."""

    @abc.abstractmethod
    async def expire(self, response_id: str, after: float = 0.0) -> None:
        """Forget the log ``after`` seconds from now (sooner if asked again with less). Followers reading it
        then see ``found=False`` and go to the store."""

    @abc.abstractmethod
    def follow(self, response_id: str, starting_after: int = -1, *, keepalive: float) -> AsyncIterator[list[Entry]]:
        """The entries after ``starting_after`` in batches (each batch: every entry that is ready, in order) as
        they arrive, until the log ends or is gone; an empty batch after each ``keepalive`` seconds without any
        (so the transport can keep its connection open). Followers in one process share that process's one
        reader (the Redis log's tails them all on one connection). The caller checks whether the last entry it got was terminal, and reads the
        store after it if not."""
