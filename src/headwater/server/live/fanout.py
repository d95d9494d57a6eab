"""``Fanout``: one reader per response per process, shared by all of that process's followers of it.

A live log kept outside the process (Redis) would otherwise be read once per follower; here the first
follower of a response starts a reader task that reads the log with bounded blocking reads and hands each
batch to every follower in the process. The reader stops when the log ends or is gone, or nobody follows.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from .base import Entry, LiveLog

__all__ = ["Fanout"]


class _Reader:
    __slots__ = ("changed", "done", "entries", "followers", "seqs", "task")

    def __init__(self) -> None:
        self.entries: list[Entry] = []  # the whole live log as read so far (live logs are short and capped)
        self.seqs: list[int] = []
        self.done = False  # the log ended or is gone: nothing more will come
        self.followers = 0
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def notify(self) -> None:
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()


class Fanout:
    """Follow ``live``'s logs with one reader per response; ``poll`` bounds each blocking read (seconds)."""

    def __init__(self, live: LiveLog, *, poll: float = 1.0) -> None:
        self.live = live
        self.poll = poll
        self._readers: dict[str, _Reader] = {}

    @property
    def readers(self) -> int:
        """How many responses this process is reading right now."""
        return len(self._readers)

    async def follow(self, response_id: str, starting_after: int = -1, *, keepalive: float
                     ) -> AsyncIterator[list[Entry]]:
        reader = self._readers.get(response_id)
        if reader is None:
            reader = self._readers[response_id] = _Reader()
            reader.task = asyncio.get_running_loop().create_task(
                self._read(response_id, reader), name=f"headwater live reader {response_id}")
        reader.followers += 1
        try:
            index = 0
            while True:
                changed = reader.changed
                if index < len(reader.entries):
                    batch = [e for e in reader.entries[index:] if e.sequence_number > starting_after]
                    index = len(reader.entries)
                    if batch:
                        yield batch
                    continue  # (more may have come while the batch was being written)
                if reader.done:
                    return
                try:
                    async with asyncio.timeout(keepalive):
                        await changed.wait()
                except TimeoutError:
                    yield []
        finally:
            reader.followers -= 1
            if reader.followers == 0 and self._readers.get(response_id) is reader:
                del self._readers[response_id]
                if reader.task is not None and not reader.task.done():
                    reader.task.cancel()

    async def _read(self, response_id: str, reader: _Reader) -> None:
        last = -1
        try:
            while True:
                got = await self.live.read(response_id, last, wait=self.poll)
                if got.entries:
                    reader.entries.extend(got.entries)
                    last = got.entries[-1].sequence_number
                    reader.notify()
                if got.ended or not got.found:
                    return
        finally:
            reader.done = True
            reader.notify()
            if self._readers.get(response_id) is reader and reader.followers == 0:
                del self._readers[response_id]

    async def close(self) -> None:
        tasks = [r.task for r in self._readers.values() if r.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
