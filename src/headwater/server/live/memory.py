"""The in-process live log (``memory://``), the default and the reference: a list of entries per response and
an event that wakes its followers. Nothing leaves the process, so only this process's runs can be followed.

``follow`` reads the list directly (the process's one reader is the list itself); ``read`` with ``wait``
behaves as any live log's must. A follower whose
task lends it a sink (``direct``: an SSE stream on a server that offers the connection's writer) is written by
``append`` itself while it waits, rather than woken for each batch.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import AsyncIterator, Sequence

from .. import direct
from ..direct import Sink
from .base import Entry, LiveLog, LiveRead

__all__ = ["MemoryLiveLog"]


class _Log:
    __slots__ = ("ended", "entries", "expiry", "parked", "seqs", "waiters")

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.seqs: list[int] = []
        self.ended = False
        # The futures of those waiting for a change (resolved with False by the next one). A bare future per
        # wait: with 1,000 followers woken 20 times a second, an Event per change and a timeout per wait were
        # about 5 % of a worker's CPU (bench/README.md).
        self.waiters: list[asyncio.Future[bool]] = []
        # The followers waiting with a sink (``direct``): each append is written to them, not woken for.
        self.parked: list[_Follower] = []
        self.expiry: asyncio.TimerHandle | None = None

    def appended(self) -> None:
        """Entries were added: parked followers' sinks write them (one that refuses is woken: its task takes
        them), and every waiter wakes."""
        if self.parked:
            entries = self.entries
            refused = None
            for follower in self.parked:
                if not follower.deliver(entries):
                    refused = [follower] if refused is None else [*refused, follower]
            for follower in refused or ():
                follower.wake(False)
        if self.waiters:
            self._wake_waiters()

    def notify(self) -> None:
        """The log ended or is gone: wake everyone, parked followers too."""
        for follower in list(self.parked):
            follower.wake(False)
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            if not waiter.done():  # (its waiter was cancelled, or its keep-alive came first)
                waiter.set_result(False)

    def position(self, starting_after: int) -> int:
        """The index of the first entry with ``sequence_number > starting_after``."""
        if not self.seqs or starting_after < self.seqs[0]:
            return 0
        return bisect.bisect_right(self.seqs, starting_after)


class _Follower:
    """One follower of a log: its keep-alive clock (one timer per quiet interval rather than one per wait; ``wait``
    returns True once ``interval`` seconds passed since the last write with no change), and its ``sink``, if the
    task that follows lends one (``direct.lending``). With a sink, a wait *parks* the follower in the log: the
    entries appended meanwhile are written by the sink in the appender's call and ``index`` moves past them; the
    wait ends only when the log ends or goes, a keep-alive is due, or the sink refuses a batch."""

    __slots__ = ("_interval", "_log", "_loop", "_since", "_timer", "_waiter", "after", "index", "sink")

    def __init__(self, log: _Log, interval: float, after: int, sink: Sink | None) -> None:
        self._loop = asyncio.get_running_loop()
        self._log = log
        self._interval = interval
        self._since = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Future[bool] | None = None
        self.after = after  # the follower's ``starting_after``: nothing at or below it is for it
        self.sink = sink
        self.index = 0  # while parked: the index of the next entry for the sink

    def reset(self) -> None:
        """Something was written: the quiet interval starts again (the timer re-arms itself when it fires)."""
        self._since = self._loop.time()

    async def wait(self, index: int) -> bool:
        """Until the log changes (False), or a keep-alive is due (True); ``index``: the follower's next entry."""
        waiter = self._waiter = self._loop.create_future()
        if self.sink is None:
            self._log.waiters.append(waiter)
        else:
            self.index = index
            self._log.parked.append(self)
        if self._timer is None:
            self._timer = self._loop.call_at(self._since + self._interval, self._due)
        try:
            return await waiter
        finally:
            self._waiter = None
            if self.sink is not None and self in self._log.parked:  # (cancelled while parked)
                self._log.parked.remove(self)

    def deliver(self, entries: list[Entry]) -> bool:
        """Hand the sink the entries from ``index`` on (the parked follower's next, just appended); False when
        it refused them (nothing was written: the follower's task is to take them)."""
        batch = entries[self.index:]
        if not batch:
            return True
        if batch[0].sequence_number <= self.after:  # (they came after the follower did)
            batch = [e for e in batch if e.sequence_number > self.after]
            if not batch:
                self.index = len(entries)
                return True
        try:
            if not self.sink(batch):  # type: ignore[misc]  # (only a follower with a sink is parked)
                return False
        except Exception:  # (the task's own write will meet the error, in its own call)
            return False
        self.index = len(entries)
        self._since = self._loop.time()
        return True

    def wake(self, keepalive: bool) -> None:
        """End a wait (a parked follower leaves the log's parked list first: from here on its task writes)."""
        if self.sink is not None and self in self._log.parked:
            self._log.parked.remove(self)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(keepalive)

    def _due(self) -> None:
        due = self._since + self._interval
        if self._loop.time() < due:  # written meanwhile: wait for the rest of the new interval
            self._timer = self._loop.call_at(due, self._due)
            return
        self._timer = None
        self.wake(True)

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
        before = len(log.entries)
        for entry in entries:
            if entry.sequence_number > last:
                log.entries.append(entry)
                log.seqs.append(entry.sequence_number)
                last = entry.sequence_number
        log.ended = ended
        if len(log.entries) > before:
            log.appended()
        if ended:
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
        self.expire_now(response_id, after)

    def expire_now(self, response_id: str, after: float = 0.0) -> None:
        """``expire`` without a coroutine: a run forgets its log as its last follower leaves, in that call, with
        no task per stream to run it."""
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
        follower = _Follower(log, keepalive, starting_after, direct.lent())
        try:
            while True:
                if index < len(entries):
                    batch = entries[index:]
                    index = len(entries)
                    if batch[0].sequence_number <= starting_after:  # (they came after the follower did)
                        batch = [e for e in batch if e.sequence_number > starting_after]
                    if batch:
                        yield batch
                        follower.reset()
                    continue  # (more may have come while the batch was being written)
                if log.ended or self._logs.get(response_id) is not log:
                    return
                keepalive_due = await follower.wait(index)
                if follower.sink is not None and follower.index > index:
                    # Written by the sink while parked: passed on all the same (the layers above keep their place
                    # in the stream by what they see; the transport skips what it has written).
                    batch = entries[index:follower.index]
                    index = follower.index
                    if batch[0].sequence_number <= starting_after:
                        batch = [e for e in batch if e.sequence_number > starting_after]
                    if batch:
                        yield batch
                if keepalive_due:
                    yield []
                    follower.reset()
        finally:
            follower.close()
