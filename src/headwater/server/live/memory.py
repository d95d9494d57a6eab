"""The in-process live log (``memory://``), the default and the reference: a list of entries per response and
an event that wakes its followers. Nothing leaves the process, so only this process's runs can be followed.

``follow`` reads the list directly (the process's one reader is the list itself); ``read`` with ``wait`` is
what a ``Fanout`` or another process-local reader uses, and behaves as any live log's must.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import AsyncIterator, Sequence

from .base import Entry, LiveLog, LiveRead

__all__ = ["MemoryLiveLog"]


class _Log:
    __slots__ = ("ended", "entries", "expiry", "seqs", "waiters")

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.seqs: list[int] = []
        self.ended = False
        # The futures of those waiting for a change (resolved with False by the next one). A bare future per
        # wait: with 1,000 followers woken 20 times a second, an Event per change and a timeout per wait were
        # about 5 % of a worker's CPU (bench/README.md).
        self.waiters: list[asyncio.Future[bool]] = []
        self.expiry: asyncio.TimerHandle | None = None

    def notify(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():  # (its waiter was cancelled, or its keep-alive came first)
                waiter.set_result(False)

    def position(self, starting_after: int) -> int:
        """The index of the first entry with ``sequence_number > starting_after``."""
        if not self.seqs or starting_after < self.seqs[0]:
            return 0
        return bisect.bisect_right(self.seqs, starting_after)


class _KeepAlive:
    """A follower's keep-alive clock: one timer per quiet interval rather than one per wait. ``wait`` returns
    True once ``interval`` seconds passed since the last ``reset`` with no change, False at the next change."""

    __slots__ = ("_interval", "_loop", "_since", "_timer", "_waiter")

    def __init__(self, interval: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._interval = interval
        self._since = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Future[bool] | None = None

    def reset(self) -> None:
        """Something was written: the quiet interval starts again (the timer re-arms itself when it fires)."""
        self._since = self._loop.time()

    async def wait(self, log: _Log) -> bool:
        waiter = self._waiter = self._loop.create_future()
        log.waiters.append(waiter)
        if self._timer is None:
            self._timer = self._loop.call_at(self._since + self._interval, self._due)
        try:
            return await waiter
        finally:
            self._waiter = None

    def _due(self) -> None:
        due = self._since + self._interval
        if self._loop.time() < due:  # written meanwhile: wait for the rest of the new interval
            self._timer = self._loop.call_at(due, self._due)
            return
        self._timer = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(True)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _time_out(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(True)


class MemoryLiveLog(LiveLog):
    def __init__(self) -> None:
        self._logs: dict[str, _Log] = {}

    def describe(self) -> str:
        return "memory (in this process)"

    async def close(self) -> None:
        for log in self._logs.values():
            if log.expiry is not None:
                log.expiry.cancel()
            log.notify()
        self._logs.clear()

    async def append(self, response_id: str, entries: Sequence[Entry], *, ended: bool = False) -> None:
        self.append_now(response_id, entries, ended=ended)

    def append_now(self, response_id: str, entries: Sequence[Entry], *, ended: bool = False) -> None:
        """``append`` without a coroutine, for callers that must not yield (the run's publishing step)."""
        log = self._logs.get(response_id)
        if log is None:
            log = self._logs[response_id] = _Log()
        if log.ended:
            raise ValueError(f"the live log of {response_id} has ended")
        last = log.seqs[-1] if log.seqs else -1
        for entry in entries:
            if entry.sequence_number > last:
                log.entries.append(entry)
                log.seqs.append(entry.sequence_number)
                last = entry.sequence_number
        log.ended = ended
        log.notify()

    def has(self, response_id: str) -> bool:
        """Whether there is a log for ``response_id`` (``read(...).found`` without a coroutine)."""
        return response_id in self._logs

    async def read(self, response_id: str, starting_after: int = -1, *, wait: float = 0.0) -> LiveRead:
        log = self._logs.get(response_id)
        if log is None:
            return LiveRead(found=False)
        index = log.position(starting_after)
        if index == len(log.entries) and not log.ended and wait > 0:
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[bool] = loop.create_future()
            log.waiters.append(waiter)
            timer = loop.call_later(wait, _time_out, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
            if self._logs.get(response_id) is not log:
                return LiveRead(found=False)
        return LiveRead(log.entries[index:], log.ended)

    async def expire(self, response_id: str, after: float = 0.0) -> None:
        log = self._logs.get(response_id)
        if log is None:
            return
        loop = asyncio.get_running_loop()
        if log.expiry is not None:
            if log.expiry.when() <= loop.time() + after:
                return
            log.expiry.cancel()
        if after <= 0:
            self._forget(response_id, log)
        else:
            log.expiry = loop.call_later(after, self._forget, response_id, log)

    def _forget(self, response_id: str, log: _Log) -> None:
        if self._logs.get(response_id) is log:
            del self._logs[response_id]
        log.notify()

    async def follow(
        self, response_id: str, starting_after: int = -1, *, keepalive: float
    ) -> AsyncIterator[list[Entry]]:
        log = self._logs.get(response_id)
        if log is None:
            return
        index = log.position(starting_after)
        entries = log.entries
        clock = _KeepAlive(keepalive)
        try:
            while True:
                if index < len(entries):
                    batch = entries[index:]
                    index = len(entries)
                    if batch[0].sequence_number <= starting_after:  # (they came after the follower did)
                        batch = [e for e in batch if e.sequence_number > starting_after]
                    if batch:
                        yield batch
                        clock.reset()
                    continue  # (more may have come while the batch was being written)
                if log.ended or self._logs.get(response_id) is not log:
                    return
                if await clock.wait(log):
                    yield []
                    clock.reset()
        finally:
            clock.close()
