"""Runs: responses being generated, each in a task of its own, detached from the request that started it.

``Runs`` (here) starts them, finds the live ones and stops them at shutdown; ``run.Run`` is one run's
lifecycle; ``steps.StepWriter`` turns steps into events; ``log.EventLog`` is the group commit that logs every
run's events (one store call for all) and publishes them; ``orphans`` closes what a crash left unfinished.
"""

from __future__ import annotations

import asyncio

from headwater.protocol.codec import encode_response
from headwater.protocol.writer import ResponseWriter

from ..admission import Admission, Limits, Ticket, default_limits
from ..backends.base import Backend, GenerationRequest
from ..errors import APIError
from ..live import LiveLog
from ..live.memory import MemoryLiveLog
from ..store import Store
from .log import EventLog
from .orphans import ORPHAN_MESSAGE, close_orphan, close_orphans
from .run import Run

__all__ = ["ORPHAN_MESSAGE", "Run", "Runs", "close_orphan", "close_orphans", "encode_response"]


class Runs:
    """The runs of one server: started here, found by id while live (stored runs only), stopped at shutdown."""

    def __init__(
        self, store: Store, backend: Backend, live: LiveLog | None = None, limits: Limits | None = None
    ) -> None:
        self.store = store
        self.backend = backend
        self.admission = Admission(limits or default_limits(getattr(backend, "slots", None)))
        self.closing = False  # shutting down: no new runs
        self.live: LiveLog = live if live is not None else MemoryLiveLog()
        self.log = EventLog(store)  # the group commit of every stored run's events
        # A response that is not stored can be read only by the request that made it, in this process.
        self._private = self.live if isinstance(self.live, MemoryLiveLog) else MemoryLiveLog()
        self._live: dict[str, Run] = {}
        self._all: set[Run] = set()
        self._events_of_finished = 0

    def start(
        self,
        *,
        writer: ResponseWriter,
        request: GenerationRequest,
        owner: str | None,
        stored: bool,
        background: bool,
        max_tool_calls: int | None,
        followed: bool = True,
        ticket: Ticket | None = None,
    ) -> Run:
        """Start a run. ``ticket``: its place from ``admit`` (taken here when not given; ``admit``'s 429 then
        comes from here)."""
        if ticket is None:
            ticket = self.admit(owner)
        run = Run(
            writer=writer,
            backend=self.backend,
            request=request,
            store=self.store if stored else None,
            owner=owner,
            background=background,
            max_tool_calls=max_tool_calls,
            on_finish=self._finished,
            live=self.live if stored else self._private,
            followed=followed,
            ticket=ticket,
            event_log=self.log,
        )
        self._all.add(run)
        if stored:
            self._live[run.id] = run
        run.start()
        return run

    def admit(self, owner: str | None) -> Ticket:
        """A place for a run of ``owner``: granted now or queued; ``APIError`` 429 with ``Retry-After`` beyond
        the queue, 503 once the server is shutting down. Take it before storing the response (``with``: it is
        released if the block raises before ``start``)."""
        if self.closing:
            raise APIError(503, "the server is shutting down", code="server_shutting_down")
        return self.admission.admit(owner)

    def get(self, response_id: str) -> Run | None:
        """The live run of a stored response. It stays here until its terminal event is in the store."""
        return self._live.get(response_id)

    def figures(self) -> dict[str, int]:
        """Runs generating now, those still queued, and the events all runs of this process have made. (Cheap:
        /metrics of each worker refreshes it every second with every run live; "queued" is admission's count,
        not each run's snapshot, which costs building the response.)"""
        runs = self._all
        return {
            "live": len(runs),
            "queued": self.admission.queued,
            "events": self._events_of_finished + sum(run.events for run in runs),
        }

    def running(self) -> set[str]:
        """The ids of the stored responses this process is generating now."""
        return set(self._live)

    def cancel(self, response_id: str) -> None:
        """Cancel the run of ``response_id`` if this process runs it (a cancel signal from another replica)."""
        run = self._live.get(response_id)
        if run is not None:
            run.cancel()

    def _finished(self, run: Run) -> None:
        self._events_of_finished += run.events
        self._all.discard(run)
        self._live.pop(run.id, None)

    async def shut_down(self) -> None:
        """Stop every run (each ends with ``error`` + ``response.failed``, ``server_shutdown``, and logs one
        line) and wait until their terminal events are logged and published. New runs are refused (503)."""
        self.closing = True
        runs = list(self._all)
        for run in runs:
            run.shut_down()
        await asyncio.gather(*(run.wait() for run in runs), return_exceptions=True)
