"""What a replica does beside its own runs when several share one store and one live log.

- Its lease: a heartbeat row in PostgreSQL, renewed every ``renew`` seconds. The runs it starts are its own
  (``lease_replica``, with a fencing token the store checks in every append's transaction).
- Takeover: every ``renew`` seconds it takes the unfinished responses of replicas that have not renewed for
  ``lease`` seconds and ends each with ``error`` + ``response.failed`` (store and live log), so their
  followers on every replica get the terminal events; the dead owner, if it comes back, is fenced.
- Forgetting the dead: the row of a replica that has not renewed for ``2 * lease`` seconds and holds no
  unfinished response any more is removed (its own row goes at a clean shutdown, ``PostgresStore.close``).
- Followers of another replica's run: the stored log, then the live log, then the store again (the truth)
  whenever the live log is gone, has a gap, or says nothing; bounded waits, so a dead owner never hangs them.
- Cancel: a run owned elsewhere is cancelled by a signal its owner listens to (Redis pub/sub), and by a flag
  in the store that the owner reads at each renewal (so a cancel arrives within ``renew`` seconds without Redis).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Protocol, cast

from headwater.protocol.events import TERMINAL_EVENT_TYPES

from .live import Entry, LiveLog
from .store import Store, StoredResponse
from .store.base import UNFINISHED_STATUSES

if TYPE_CHECKING:
    from .live.redis import RedisLiveLog
    from .store.postgres import PostgresStore

__all__ = ["DEFAULT_LEASE_SECONDS", "DEFAULT_RENEW_SECONDS", "Replica", "follow_stored"]

log = logging.getLogger("headwater.server.replicas")

DEFAULT_RENEW_SECONDS = 1.0
DEFAULT_LEASE_SECONDS = 5.0
TAKEOVER_CODE = "server_lost"
TAKEOVER_MESSAGE = "the server generating this response stopped; another replica closed it as failed"
_POLL = 1.0  # how often a follower re-reads the store while the live log says nothing


class _Followable(Protocol):
    def follow(self, starting_after: int = -1, keepalive: float = 15.0) -> AsyncIterator[list[Entry]]: ...


def has_leases(store: Store) -> bool:
    return hasattr(store, "take_over_expired")


def has_signals(live: LiveLog) -> bool:
    return hasattr(live, "publish_cancel")


async def follow_stored(
    store: Store, live: LiveLog, response_id: str, starting_after: int, *, keepalive: float, poll: float = _POLL
) -> AsyncIterator[list[Entry]]:
    """Every entry of ``response_id`` after ``starting_after`` up to its terminal one, in batches, for a response
    this process does not run: from the store, then the live log, then the store again whenever the live log
    ends, is gone or skips; an empty batch after ``keepalive`` seconds without an entry. It ends after the
    terminal entry, or when the response is gone or finished."""
    position = starting_after
    quiet_since = time.monotonic()
    while True:
        stored = await store.events(response_id, position)
        if stored:
            yield stored
            position = stored[-1].sequence_number
            quiet_since = time.monotonic()
            if stored[-1].type in TERMINAL_EVENT_TYPES:
                return
        record = await store.get(response_id)
        if record is None:
            return
        if record.status not in UNFINISHED_STATUSES:
            rest = await store.events(response_id, position)  # what landed with the final status
            if rest:
                yield rest
            return
        got = False
        async for batch in live.follow(response_id, position, keepalive=keepalive):
            if not batch:
                yield batch
                quiet_since = time.monotonic()
                continue
            fresh = [entry for entry in batch if entry.sequence_number > position]
            if not fresh:
                continue
            contiguous = [entry for n, entry in enumerate(fresh) if entry.sequence_number == position + 1 + n]
            if contiguous:
                yield contiguous
                got = True
                position = contiguous[-1].sequence_number
                quiet_since = time.monotonic()
                if contiguous[-1].type in TERMINAL_EVENT_TYPES:
                    return
            if len(contiguous) < len(fresh):
                break  # a gap (the live log lost entries: a Redis restart, a trim): the store has them
        if not got:  # no live log (expired, Redis away, not yet made): wait a little before the store again
            await asyncio.sleep(poll)
            if time.monotonic() - quiet_since >= keepalive:
                yield []
                quiet_since = time.monotonic()


class Replica:
    """This process as one replica of several: its lease, takeovers, cancel signals. ``running()`` names the
    responses this process is generating now; ``cancel(id)`` stops one of them; ``close(store, record, code, message)``
    ends a response it took over and returns the entries it appended to the store."""

    def __init__(
        self,
        store: Store,
        live: LiveLog,
        *,
        running: Callable[[], set[str]],
        cancel: Callable[[str], None],
        close: Callable[[Store, StoredResponse, str, str], Awaitable[list[Entry]]],
        renew: float = DEFAULT_RENEW_SECONDS,
        lease: float = DEFAULT_LEASE_SECONDS,
    ) -> None:
        self.store = store
        self.live = live
        self.renew = renew
        self.lease = lease
        # A dead replica's row is removed once its lease has been expired for as long again (and it holds
        # no unfinished response: all were taken over), by whichever replica scans first.
        self.forget_after = 2 * lease
        self.takeovers = 0  # responses this replica took over from dead ones
        self._running = running
        self._cancel = cancel
        self._close = close
        self._task: asyncio.Task[None] | None = None
        self._suspects: set[str] = set()  # own unfinished responses seen not running at the last scan

    @property
    def leased(self) -> bool:
        return has_leases(self.store)

    async def follow(
        self, run: _Followable | None, response_id: str, starting_after: int, keepalive: float
    ) -> AsyncIterator[list[Entry]]:
        """A stream of ``response_id`` on this replica: from its run here, if there is one, and then (the run
        was fenced, or runs elsewhere) from the store and the shared live log (``follow_stored``)."""
        position = starting_after
        if run is not None:
            async for batch in run.follow(starting_after, keepalive):
                yield batch
                if batch:
                    position = batch[-1].sequence_number
                    if batch[-1].type in TERMINAL_EVENT_TYPES:
                        return
        async for batch in follow_stored(self.store, self.live, response_id, position, keepalive=keepalive):
            yield batch

    async def start(self) -> None:
        if has_signals(self.live):
            cast("RedisLiveLog", self.live).on_cancel(self._cancel)
        if self.leased:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name="headwater-lease")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        store = cast("PostgresStore", self.store)
        while True:
            try:
                await store.heartbeat()
                for response_id in await store.cancel_requests():  # (when the signal did not come through)
                    self._cancel(response_id)
                for takeover in await store.take_over_expired(self.lease):
                    log.warning(
                        "response %s: its replica %s stopped renewing its lease; closing it as failed",
                        takeover.record.id, takeover.previous_replica,
                    )
                    await self._end(takeover.record)
                    self.takeovers += 1
                await self._close_own_orphans(store)
                for gone in await store.forget_dead_replicas(self.forget_after):
                    log.info("replica %s: dead for %gs with nothing left to take over; its row is removed",
                             gone, self.forget_after)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("lease renewal or takeover failed: %s", exc)
            await asyncio.sleep(self.renew)

    async def _end(self, record: StoredResponse) -> None:
        entries = await self._close(self.store, record, TAKEOVER_CODE, TAKEOVER_MESSAGE)
        await self.live.append(record.id, entries, ended=True)
        await self.live.expire(record.id, 60.0)  # followers elsewhere read it; then they read the store

    async def _close_own_orphans(self, store: PostgresStore) -> None:
        """A response leased to this replica that it no longer runs (its run ended while the store was away)
        is closed as failed once it has been seen so at two scans in a row."""
        running = self._running()
        idle = {rid for rid in await store.owned_unfinished() if rid not in running}
        for response_id in idle & self._suspects:
            record = await self.store.get(response_id)
            if record is not None and record.status in UNFINISHED_STATUSES:
                log.warning("response %s: its run here ended without its terminal event stored; closing", response_id)
                await self._end(record)
        self._suspects = idle - self._suspects

    async def cancel_elsewhere(self, response_id: str, *, timeout: float | None = None) -> StoredResponse | None:
        """Ask the replica running ``response_id`` to cancel it and wait (at most ``timeout``: by default the
        takeover bound and a little) until the store has it finished; the stored record then."""
        if self.leased:
            await cast("PostgresStore", self.store).request_cancel(response_id)
        if has_signals(self.live):
            await cast("RedisLiveLog", self.live).publish_cancel(response_id)
        deadline = time.monotonic() + (timeout if timeout is not None else self.lease + 2 * self.renew + 5.0)
        while True:
            record = await self.store.get(response_id)
            if record is None or record.status not in UNFINISHED_STATUSES or time.monotonic() > deadline:
                return record
            await asyncio.sleep(0.05)
