"""Admission control: how many responses generate at once (in all, and per API key), and a bounded FIFO queue
for the ones that wait their turn; beyond the queue a request is refused with 429 and ``Retry-After``.

``Admission.admit(owner)`` gives a ``Ticket``: granted at once when a slot is free, else queued (first come,
first served among the requests whose key is under its own cap). A run waits for its ticket before it
generates and releases it when it ends; a released slot goes to the first queued ticket that may take it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass
from types import TracebackType

from .config import ServerConfig
from .errors import APIError

__all__ = ["Admission", "Limits", "Ticket", "admission_limits", "default_limits"]

# Retry-After bounds (seconds), and the weight of the latest run in the running mean of run durations.
MIN_RETRY_AFTER = 1
MAX_RETRY_AFTER = 300
_SMOOTHING = 0.2


@dataclass(frozen=True, slots=True)
class Limits:
    """``max_running`` responses generate at once, ``max_running_per_key`` of them for one API key (None: no
    cap of its own); ``max_queued`` wait for a turn, ``max_queued_per_key`` of them for one key."""

    max_running: int
    max_queued: int
    max_running_per_key: int | None = None
    max_queued_per_key: int | None = None


def default_limits(slots: int | None) -> Limits:
    """The limits when none are given: as many running as the backend has generation slots (its ``slots``;
    512 for a backend that declares none, such as an upstream), 16 queued per running one, at most 1024."""
    running = slots if slots is not None and slots > 0 else 512
    return Limits(max_running=running, max_queued=min(1024, 16 * running))


def admission_limits(config: ServerConfig, backend: object) -> Limits:
    """The limits ``config`` sets, with the defaults for what it leaves unset; ``backend`` declares its
    capacity as ``slots`` (the local backend: one generation slot per core), or does not."""
    slots = getattr(backend, "slots", None)
    base = default_limits(config.max_running if config.max_running is not None else slots)
    return Limits(
        max_running=base.max_running,
        max_queued=config.max_queued if config.max_queued is not None else base.max_queued,
        max_running_per_key=config.max_running_per_key,
        max_queued_per_key=config.max_queued_per_key,
    )


class Ticket:
    """One request's place: granted (it may generate), queued, or released. As a context manager it is
    released when the block raises (the run it was for never started)."""

    def __init__(self, admission: Admission, owner: str | None) -> None:
        self.owner = owner
        self._admission = admission
        self._granted = asyncio.get_running_loop().create_future()
        self._granted_at: float | None = None
        self.released = False

    @property
    def granted(self) -> bool:
        return self._granted.done()

    async def wait(self) -> None:
        """Until the ticket is granted (cancelling the wait leaves the ticket queued)."""
        await asyncio.shield(self._granted)

    def release(self) -> None:
        """Give the slot back (or leave the queue); does nothing the second time."""
        if not self.released:
            self.released = True
            self._admission._release(self)

    def _grant(self) -> None:
        self._granted_at = time.monotonic()
        self._granted.set_result(None)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is not None:
            self.release()


class Admission:
    """The running counts and the queue of one server process."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.running = 0
        self._running_by_key: dict[str | None, int] = {}
        self._queued_by_key: dict[str | None, int] = {}
        self._queue: deque[Ticket] = deque()
        self._mean_seconds = 1.0  # running mean of how long a run holds its slot

    @property
    def queued(self) -> int:
        return len(self._queue)

    def admit(self, owner: str | None) -> Ticket:
        """A ticket for a request of ``owner`` (an API key digest, None without keys): granted now, or queued.
        Raises ``APIError`` 429 with ``Retry-After`` when the queue (all of it, or this key's share) is full."""
        limits = self.limits
        ticket = Ticket(self, owner)
        if self._may_run(owner):
            self._start(ticket)
            return ticket
        if len(self._queue) >= limits.max_queued:
            raise self._refusal(f"the server is at its limit of {limits.max_running} running and "
                                f"{limits.max_queued} queued responses")
        per_key = limits.max_queued_per_key
        if per_key is not None and self._queued_by_key.get(owner, 0) >= per_key:
            raise self._refusal(f"this API key is at its limit of {per_key} queued responses")
        self._queue.append(ticket)
        self._queued_by_key[owner] = self._queued_by_key.get(owner, 0) + 1
        return ticket

    def _may_run(self, owner: str | None) -> bool:
        per_key = self.limits.max_running_per_key
        return self.running < self.limits.max_running and (
            per_key is None or self._running_by_key.get(owner, 0) < per_key)

    def _start(self, ticket: Ticket) -> None:
        self.running += 1
        self._running_by_key[ticket.owner] = self._running_by_key.get(ticket.owner, 0) + 1
        ticket._grant()

    def _release(self, ticket: Ticket) -> None:
        if not ticket.granted:
            self._queue.remove(ticket)
            self._count_down(self._queued_by_key, ticket.owner)
            return
        self.running -= 1
        self._count_down(self._running_by_key, ticket.owner)
        if ticket._granted_at is not None:
            held = time.monotonic() - ticket._granted_at
            self._mean_seconds += _SMOOTHING * (held - self._mean_seconds)
        self._dispatch()

    def _dispatch(self) -> None:
        """Grant, in queue order, every queued ticket that may run now."""
        if not self._queue:
            return
        waiting: deque[Ticket] = deque()
        while self._queue and self.running < self.limits.max_running:
            ticket = self._queue.popleft()
            if self._may_run(ticket.owner):
                self._count_down(self._queued_by_key, ticket.owner)
                self._start(ticket)
            else:
                waiting.append(ticket)  # its key is at its cap: it keeps its place
        waiting.extend(self._queue)
        self._queue = waiting

    @staticmethod
    def _count_down(counts: dict[str | None, int], owner: str | None) -> None:
        left = counts.get(owner, 0) - 1
        if left > 0:
            counts[owner] = left
        else:
            counts.pop(owner, None)

    def retry_after(self) -> int:
        """Seconds until a place is likely free: the queue ahead, served ``max_running`` at a time, at the
        running mean of run durations (bounded to 1..300)."""
        rounds = (len(self._queue) + 1) / self.limits.max_running
        return max(MIN_RETRY_AFTER, min(MAX_RETRY_AFTER, math.ceil(self._mean_seconds * rounds)))

    def _refusal(self, reason: str) -> APIError:
        seconds = self.retry_after()
        return APIError(429, f"too many requests: {reason}; retry after {seconds} s", code="rate_limit_exceeded",
                        type="rate_limit_error", headers={"retry-after": str(seconds)})
