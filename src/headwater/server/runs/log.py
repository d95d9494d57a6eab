"""The group-commit event log of one process: every run's batches of entries -> one store call -> the live log.

A run never writes to the store itself. ``RunLog.write`` queues a batch and returns at once (generation never
waits for the disk); the ``EventLog``'s one task takes everything that every run has queued, makes ONE
``Store.append_many`` call for all of it (one transaction and one fsync for all runs), and only then publishes
each run's entries to its live log. While that commit is in flight the next batches queue up, so the busier
the server, the more runs share a commit. A store that can commit on the loop's thread (``commits_now`` and
``append_many_now``: the in-process store, SQLite with ``synchronous=NORMAL``) is called so, without a coroutine;
and a batch written while nothing is queued is committed and published within ``write`` itself, which saves
each event a turn of the event loop on its way to the followers. The in-process store does that for every such
batch; SQLite, whose commit costs 20-130 µs where the memory store's costs 2, for the first batch of each turn
of the loop only: the runs that write later in the same turn share the next commit (one task, next turn). What
it keeps:

- **Durable before visible**: a run's entries reach its live log (and so any follower) only once the store call
  that holds them has returned.
- **Per-run order**: a run's batches are committed and published in the order it wrote them (one commit is in
  flight at a time; a run's batches queued together are merged, in order, into one).
- **The terminal batch is awaited**: ``RunLog.flushed`` returns once everything the run wrote is logged and
  published (``Run._emit`` awaits it for the terminal batch).
- **A failure fails only its run.** ``Fenced`` or ``StoreUnavailable`` *silence* the run: nothing more of it is
  published from here (its followers must only see what is stored; they find the live log gone and read the
  store). Any other store error is the run's ``error``: nothing more of it is stored, its entries are still
  published (so that a run still generating ends its followers' stream with ``error`` + ``response.failed``,
  which ``Run._emit`` makes when it sees the error). Other runs of the same commit are not touched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from headwater.protocol.events import TERMINAL_EVENT_TYPES

from ..entries import Entry
from ..live import LiveLog
from ..live.memory import MemoryLiveLog
from ..store import Append, Fenced, Store, StoreUnavailable

__all__ = ["EventLog", "RunLog"]

log = logging.getLogger("headwater.server")


class RunLog:
    """One run's place in the event log: it queues the run's batches and knows what became of them."""

    __slots__ = ("_log", "_pending", "_waiter", "ended", "error", "id", "live", "silenced")

    def __init__(self, response_id: str, live: LiveLog, log: EventLog | None) -> None:
        self.id = response_id
        self.live = live
        self._log = log  # None: the run is not stored, its entries are published at once
        self.error: Exception | None = None  # the store failed this run: nothing more of it is stored
        self.silenced: Exception | None = None  # fenced or the shared store away: nothing more is published
        self.ended = False  # the terminal entry is in the live log
        self._pending = 0  # batches written, not yet logged and published
        self._waiter: asyncio.Future[None] | None = None

    def write(self, entries: list[Entry], status: str | None = None, data: bytes | None = None) -> None:
        """Queue a batch for the store (with the resource's ``status`` and ``data`` when they change); it is
        published once it is durable."""
        assert self._log is not None, "a run that is not stored publishes its entries itself"
        self._pending += 1
        self._log.queue(self, entries, status, data)

    async def flushed(self) -> None:
        """Until every batch written so far is logged and published (or failed trying)."""
        if self._pending == 0:
            return
        if self._waiter is None or self._waiter.done():
            self._waiter = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._waiter)

    async def publish(self, entries: list[Entry]) -> None:
        """Hand ``entries`` to the live log (the not-stored path, and the EventLog's for other live logs)."""
        ended = self._publishable(entries)
        if ended is not None:
            await self.live.append(self.id, entries, ended=ended)

    def _publishable(self, entries: list[Entry]) -> bool | None:
        """Whether ``entries`` end the log, or None when they are not to be published at all."""
        if not entries or self.ended or self.silenced is not None:
            return None
        self.ended = entries[-1].type in TERMINAL_EVENT_TYPES
        return self.ended

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, (Fenced, StoreUnavailable)):
            # Another replica owns the response now, or the shared store is away: nothing more is published
            # from here (followers must only see what is stored). Local followers find the live log gone and
            # read the store; the response is closed by its new owner, or by this replica once the store is
            # back (``replicas``).
            log.error("response %s: %s; this replica stops writing it", self.id, exc)
            self.error = self.silenced = exc
        elif isinstance(exc, Exception):
            # Followers still get a consistent stream: the run's next _emit raises, so a run still generating
            # ends with error + response.failed. The store keeps its prefix in_progress and the next start
            # closes it as failed (close_orphans).
            log.error("response %s: the store failed; its log stops here", self.id, exc_info=exc)
            self.error = exc
        else:
            self.error = RuntimeError(f"the event log stopped: {exc!r}")

    def _done(self, batches: int) -> None:
        self._pending -= batches
        if self._pending == 0 and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class _Pending:
    """One run's batches of one commit, merged in order (the last status and resource win)."""

    __slots__ = ("batches", "data", "entries", "status")

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.status: str | None = None
        self.data: bytes | None = None
        self.batches = 0


class EventLog:
    """The process's group commit over ``store``: ``open`` gives each run its ``RunLog``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        # A store that commits without a coroutine (``append_many_now``; None from it: not now, await
        # ``append_many``): a batch written while nothing is queued or in flight is committed and published at
        # once, in the writer's own call, with no task to hand it to (one hop of the event loop fewer between an
        # event and its followers). One whose commit costs more than a wake-up (not ``inline``: SQLite) does so
        # once per turn of the loop; the turn's later batches wait for the drain task, and share its commit.
        self._now: Callable[[Sequence[Append]], list[BaseException | None] | None] | None = (
            getattr(store, "append_many_now", None) if getattr(store, "commits_now", False) else None)
        self._once_per_turn = not getattr(store, "inline", False)
        self._committed_this_turn = False
        self._queue: list[tuple[RunLog, list[Entry], str | None, bytes | None]] = []
        self._task: asyncio.Task[None] | None = None
        self._publishing: asyncio.Task[None] | None = None  # the last commit's appends to a live log elsewhere
        self._sending: list[asyncio.Future[None]] = []  # the last commit's appends being sent (append_many_nowait)
        self.commits = 0  # store calls made (tests, figures)
        # The least time from one commit's start to the next one's (``commit_interval`` of the store, seconds; 0:
        # none): the batches written meanwhile wait for it, and share it. A batch written when the last commit
        # is older than that is committed at once, so only a busy server's events wait (PostgreSQL: see there).
        self._interval = store.commit_interval
        self._last_start = float("-inf")

    def open(self, response_id: str, live: LiveLog) -> RunLog:
        return RunLog(response_id, live, self)

    def queue(self, run: RunLog, entries: list[Entry], status: str | None, data: bytes | None) -> None:
        if (self._now is not None and self._task is None and not self._committed_this_turn
                and isinstance(run.live, MemoryLiveLog) and self._commit_now(self._now, run, entries, status, data)):
            return
        self._queue.append((run, entries, status, data))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._drain(), name="headwater event log")

    def _commit_now(self, append_many: Callable[[Sequence[Append]], list[BaseException | None] | None],
                    run: RunLog, entries: list[Entry], status: str | None, data: bytes | None) -> bool:
        """One run's batch committed and published in this call (nothing is queued before it: ``_task`` is None
        only once the queue is empty), with ``_commit``'s outcomes; False, having done nothing, when the store
        cannot commit now."""
        if run.error is None:
            try:
                outcomes = append_many([Append(run.id, entries, status, data)])
                if outcomes is None:
                    return False
                outcome = outcomes[0]
            except Exception as exc:
                outcome = exc
            self.commits += 1
            self._turn_committed()
            if outcome is not None:
                run._failed(outcome)
        assert isinstance(run.live, MemoryLiveLog)
        _publish_now(run, run.live, entries)
        run._done(1)
        return True

    def _turn_committed(self) -> None:
        """Note a commit made on the loop's thread in this turn of the loop (for a store committing once a turn)."""
        if self._once_per_turn and not self._committed_this_turn:
            self._committed_this_turn = True
            asyncio.get_running_loop().call_soon(self._new_turn)

    def _new_turn(self) -> None:
        self._committed_this_turn = False

    async def _drain(self) -> None:
        """Commit and publish whatever is queued, until nothing is (a new task starts with the next write)."""
        try:
            while self._queue:
                if self._interval:  # (a store whose commits are spaced: wait out the rest of the interval)
                    loop = asyncio.get_running_loop()
                    wait = self._last_start + self._interval - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    self._last_start = loop.time()
                queued, self._queue = self._queue, []
                await self._commit(queued)
        finally:
            self._task = None
            if self._queue:  # (the task was cancelled: the loop is going away; fail the rest, do not hang)
                leftovers, self._queue = self._queue, []
                for run, *_ in leftovers:
                    run._failed(asyncio.CancelledError())
                    run._done(1)

    async def _commit(self, queued: list[tuple[RunLog, list[Entry], str | None, bytes | None]]) -> None:
        """One store call for every run in ``queued``, then their publishing."""
        merged: dict[RunLog, _Pending] = {}
        for run, entries, status, data in queued:
            pending = merged.get(run)
            if pending is None:
                pending = merged[run] = _Pending()
            pending.entries.extend(entries)
            pending.batches += 1
            if status is not None:
                pending.status = status
            if data is not None:
                pending.data = data
        try:
            stored = [run for run in merged if run.error is None]
            if stored:
                appends = [Append(run.id, merged[run].entries, merged[run].status, merged[run].data) for run in stored]
                self.commits += 1
                try:
                    outcomes = self._now(appends) if self._now is not None else None
                    if outcomes is None:
                        outcomes = await self.store.append_many(appends)
                    else:
                        self._turn_committed()
                except Exception as exc:  # (a store that raises instead of answering batch by batch)
                    outcomes = [exc] * len(stored)
                for run, outcome in zip(stored, outcomes, strict=True):
                    if outcome is not None:
                        run._failed(outcome)
        except BaseException as exc:  # cancelled (the loop is going away): these runs learn it, and end
            self._abandon(list(merged.items()), exc)
            raise
        # Durable: publish. The in-process log takes its entries at once, without a coroutine. A live log that
        # queues appends without waiting (``append_many_nowait``: Redis, whose writer keeps them in order) gets all
        # of this commit's at once too, and serves this process's followers now; each run's batches count as
        # published once its writer has sent them. Any other gets all of this commit's appends together in a
        # task of their own, so that the next commit overlaps them; at most one such task is in flight, so a
        # run's entries reach the live log in the order they were committed.
        remote: list[tuple[RunLog, _Pending]] = []
        nowait: dict[int, list[tuple[RunLog, _Pending]]] = {}
        for run, pending in merged.items():
            if isinstance(run.live, MemoryLiveLog):
                _publish_now(run, run.live, pending.entries)
                run._done(pending.batches)
            elif hasattr(run.live, "append_many_nowait"):
                nowait.setdefault(id(run.live), []).append((run, pending))
            else:
                remote.append((run, pending))
        sending = [_publish_queued(items) for items in nowait.values()]
        # Behind the runs' pace (more than a quarter of the runs queued several batches while the last commit
        # was in flight: it took over 1.25 paces): before the next commit, let the previous one's sending
        # finish, so that commits grow with the load and carry more per run (fewer commits, wake-ups and writes
        # per event: what a saturated process can carry). Keeping up, the next commit goes at once: the shortest
        # cycle, the smallest gap between events. (With any one run behind as the test, a cycle about as long as
        # the pace tipped over: a few runs always have two batches, the wait lengthens the cycle, more runs do.)
        previous, self._sending = self._sending, [s for s in sending if not s.done()]
        pending_sends = [s for s in previous if not s.done()]
        behind = len(queued) > len(merged) and 4 * sum(p.batches > 1 for p in merged.values()) > len(merged)
        if behind and pending_sends:
            try:
                await asyncio.wait(pending_sends)
            except BaseException as exc:
                self._abandon(remote, exc)
                raise
        if not remote:
            return
        try:
            if self._publishing is not None and not self._publishing.done():
                await asyncio.wait([self._publishing])
        except BaseException as exc:
            self._abandon(remote, exc)
            raise
        self._publishing = asyncio.get_running_loop().create_task(self._publish(remote), name="headwater publish")

    @staticmethod
    def _abandon(runs: list[tuple[RunLog, _Pending]], exc: BaseException) -> None:
        for run, pending in runs:
            if run.error is None:
                run._failed(exc)
            run._done(pending.batches)

    async def _publish(self, remote: list[tuple[RunLog, _Pending]]) -> None:
        """One ``append_many`` per live log (all runs of a process normally share one) for the whole commit."""
        try:
            by_log: dict[int, tuple[LiveLog, list[RunLog], list[tuple[str, list[Entry], bool]]]] = {}
            for run, pending in remote:
                ended = run._publishable(pending.entries)
                if ended is None:
                    continue
                _, runs, batches = by_log.setdefault(id(run.live), (run.live, [], []))
                runs.append(run)
                batches.append((run.id, pending.entries, ended))
            for live, runs, batches in by_log.values():
                try:
                    results = await live.append_many(batches)
                except Exception as exc:
                    results = [exc] * len(runs)
                for run, result in zip(runs, results, strict=True):
                    if result is not None:  # followers' bounded reads notice; the store has every entry
                        log.error("response %s: the live log failed", run.id, exc_info=result)
        finally:
            for run, pending in remote:
                run._done(pending.batches)


def _publish_queued(items: list[tuple[RunLog, _Pending]]) -> asyncio.Future[None]:
    """One commit's appends to one live log with ``append_many_nowait``, handed over without a wait; the runs'
    batches are done once it has sent them (the future returned)."""
    live = items[0][0].live
    runs: list[RunLog] = []
    batches: list[tuple[str, list[Entry], bool]] = []
    for run, pending in items:
        ended = run._publishable(pending.entries)
        if ended is not None:
            runs.append(run)
            batches.append((run.id, pending.entries, ended))

    def sent(_: object) -> None:
        for run, pending in items:
            run._done(pending.batches)

    try:
        results, written = live.append_many_nowait(batches)  # type: ignore[attr-defined]
    except Exception as exc:
        results, written = [exc] * len(runs), None
    for run, result in zip(runs, results, strict=True):
        if result is not None:  # followers' bounded reads notice; the store has every entry
            log.error("response %s: the live log failed", run.id, exc_info=result)
    if written is None:
        sent(None)
        written = asyncio.get_running_loop().create_future()
        written.set_result(None)
    else:
        written.add_done_callback(sent)
    return written


def _publish_now(run: RunLog, live: MemoryLiveLog, entries: list[Entry]) -> None:
    ended = run._publishable(entries)
    if ended is None:
        return
    try:
        live.append_now(run.id, entries, ended=ended)
    except Exception as exc:  # followers' bounded reads notice; the store has every entry
        log.error("response %s: the live log failed", run.id, exc_info=exc)
