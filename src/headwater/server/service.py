"""The operations of the Responses API, shared by both transports (HTTP and WebSocket): create, find, get,
stream, cancel, delete, input items, compact, models.

A transport authenticates, reads and validates its input, calls one operation here and renders what it
returns; it touches neither the store nor the backend. Policy that must not differ between transports (the
model a request runs on, the sampling it reports, what a refusal looks like) lives here, once.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from headwater.protocol.accumulate import Accumulator
from headwater.protocol.codec import decode_event
from headwater.protocol.writer import ResponseWriter, new_id

from . import offload
from .backends.base import Backend, BackendError, ChatMessage, sampling_defaults, served_model
from .compaction import (
    encode_compaction,
    extractive_summary,
    output_text,
    render_transcript,
    replaced_turns,
    summary_budget,
    summary_request,
    usable_summary,
    usage_json,
)
from .config import ServerConfig
from .conversation import conversation_items, resolve_references, to_chat_messages
from .entries import Entry
from .errors import APIError
from .input_limits import shown
from .replicas import Replica
from .requests import CompactionItem, MessageItem, StoredItem, ValidatedRequest, encode_input_item
from .runs import Run, Runs, encode_response
from .store import Store, StoredResponse
from .store import StoredItem as StoredRow
from .store.base import UNFINISHED_STATUSES

__all__ = ["Compaction", "Found", "Service"]

log = logging.getLogger("headwater.server")


def _stored_rows(request: ValidatedRequest) -> list[StoredRow]:
    return [StoredRow(item.id or "", encode_input_item(item)) for item in request.items]


def _folded(log: list[Entry]) -> bytes:
    """The resource that a stored log's events describe, as JSON."""
    accumulator = Accumulator()
    for entry in log:
        accumulator.feed(decode_event(entry.payload))
    return encode_response(accumulator.response)


@dataclass(slots=True)
class Found:
    """A response its owner asked for: its live run in this process, or its stored record."""

    id: str
    run: Run | None
    record: StoredResponse | None

    @property
    def data(self) -> bytes:
        """The response resource's JSON as it stands."""
        if self.run is not None:
            return self.run.resource()
        assert self.record is not None
        return self.record.data

    @property
    def status(self) -> str:
        if self.run is not None:
            return self.run.response.status
        assert self.record is not None
        return self.record.status


@dataclass(slots=True)
class Compaction:
    """A compaction under way: its summarising run, then ``result()`` once the run has finished."""

    run: Run
    items: list[StoredItem]
    replaced: list[ChatMessage]  # the turns the compaction item stands for
    budget: int  # the summary's length limit, in characters
    model: str
    created_at: int

    def result(self) -> bytes:
        """The ``CompactResource`` JSON; raises ``APIError`` when the model failed."""
        run = self.run
        if run.backend_error is not None:
            error = run.backend_error
            raise APIError(error.status, error.message, code=error.code, param=error.param)
        response = run.response
        if response.status == "failed":
            code = response.error.code if response.error is not None else "server_error"
            raise APIError(500, "the model failed while summarising the conversation", code=code)
        summary = output_text(response.output)
        if not usable_summary(summary, complete=response.status == "completed", budget=self.budget):
            log.info("compaction %s: the model's summary does not comply (%d characters, %s, budget %d); using the "
                     "extractive one", run.id, len(summary), response.status, self.budget)
            summary = extractive_summary(self.replaced, self.budget)
        compaction = CompactionItem(
            id=new_id("cmp_"), encrypted_content=encode_compaction(summary, model=self.model, created_at=self.created_at)
        )
        kept: list[StoredItem] = [item for item in self.items if isinstance(item, MessageItem) and item.role == "user"]
        return msgspec.json.encode({
            "id": run.id,
            "object": "response.compaction",
            "output": [msgspec.Raw(encode_input_item(item)) for item in [*kept, compaction]],
            "created_at": self.created_at,
            "usage": usage_json(response.usage),
        })


@dataclass(slots=True)
class Service:
    """The server's operations over its backend, store and runs (built by ``app.create_app``)."""

    config: ServerConfig
    backend: Backend
    store: Store
    runs: Runs
    # Several replicas share the store and live log: leases, takeovers, cross-replica follow and cancel.
    replica: Replica | None = None
    started_at: int = field(default_factory=lambda: int(time.time()))

    # --- create -----------------------------------------------------------------------------------------------

    async def create(
        self,
        owner: str | None,
        request: ValidatedRequest,
        *,
        streamed: bool,
        conversation: list[StoredItem] | None = None,
    ) -> Run:
        """Start a response: its conversation, its resource (stored when ``store``), its run. ``streamed``: the
        caller follows the run's events; a foreground stream then waits for the backend's first step (or a
        keep-alive interval), so that a request the backend refuses at once raises ``APIError`` with the
        backend's status instead of becoming a failed stream. ``conversation``: every input item the model
        should see, when the caller already has them (WebSocket mode's connection memory)."""
        body = request.body
        if request.dropped_tools:
            log.info("dropped tools the backend cannot run: %s",
                     ", ".join(shown(t) for t in dict.fromkeys(request.dropped_tools[:100])))
        model = served_model(self.backend, body.model)
        if conversation is None:
            conversation = await self.conversation(owner, request)
        messages = [ChatMessage(role="system", content=body.instructions)] if body.instructions else []
        messages.extend(await offload.call(len(conversation) > offload.OFF_LOOP_ITEMS, to_chat_messages,
                                           conversation))
        generation = request.generation_request(model, messages)
        with self.runs.admit(owner) as ticket:  # a place to run, or in the queue; 429 beyond it
            # An upstream backend is asked now, when the run can start at once: its time to the first event
            # overlaps the rest of the create (storing the response, starting the run, its first events), and the
            # run reads this answer. On a kept connection the request is written in this call; a new connection
            # is made ahead (a task) only when storing the response may wait, else by the run.
            ahead: Any = self.backend if ticket.granted and hasattr(self.backend, "send_ahead") else None
            if ahead is not None:
                ahead.send_ahead(generation, connect=body.store and not getattr(self.store, "inline", False))
            try:
                template = request.response_template(
                    response_id=new_id("resp_"),
                    model=model,
                    created_at=int(time.time()),
                    # The response reports the sampling the backend really uses when the request leaves it unset.
                    **sampling_defaults(self.backend),
                )
                if body.store:
                    rows = await offload.call(len(request.items) > offload.OFF_LOOP_ITEMS, _stored_rows, request)
                    await self.store.create(
                        StoredResponse(template.id, owner, template.status, int(template.created_at),
                                       encode_response(template)),
                        rows,
                    )
                run = self.runs.start(
                    writer=ResponseWriter(template),
                    request=generation,
                    owner=owner,
                    stored=body.store,
                    background=body.background,
                    max_tool_calls=body.max_tool_calls,
                    followed=streamed,
                    ticket=ticket,
                )
            except BaseException:
                if ahead is not None:
                    ahead.forget_ahead(generation)
                raise
        run.template = template
        if streamed and not body.background:
            # (a queued run answers at once: headers, response.created, response.queued)
            await run.wait_first_step(self.config.keepalive_seconds)
            if run.steps == 0 and run.finished and run.backend_error is not None:
                raise await self._refused(run)
        return run

    async def resolve(self, owner: str | None, request: ValidatedRequest) -> ValidatedRequest:
        """``request`` with its ``item_reference`` items replaced by the stored items they name (400 for an id
        ``owner`` has no item of). Every transport calls it right after validation."""
        return await resolve_references(self.store, owner, request)

    async def count_input_tokens(self, owner: str | None, request: ValidatedRequest) -> int:
        """The input tokens ``request`` would take (``POST /v1/responses/input_tokens``), counted by the backend's
        ``count_tokens`` (exact for the local model, the upstream's own count for a Responses upstream); 501 for
        a backend that cannot count."""
        counter = getattr(self.backend, "count_tokens", None)
        if counter is None:
            raise APIError(501, f"the {self.backend.name} backend cannot count input tokens", code="not_implemented")
        items = await self.conversation(owner, request)
        instructions = request.body.instructions
        messages = [ChatMessage(role="system", content=instructions)] if instructions else []
        messages.extend(to_chat_messages(items))
        try:
            count: int = await counter(request.generation_request(served_model(self.backend, request.body.model),
                                                                  messages))
        except BackendError as exc:
            raise APIError(exc.status, exc.message, code=exc.code, param=exc.param) from None
        return count

    async def conversation(self, owner: str | None, request: ValidatedRequest) -> list[StoredItem]:
        """The conversation as input items: the stored ``previous_response_id`` chain, then the request's own."""
        return await conversation_items(self.store, owner, request, max_chain_length=self.config.max_chain_length)

    async def result(self, run: Run) -> bytes:
        """The resource JSON of a finished run; a run the backend refused raises its ``APIError``."""
        if run.backend_error is not None:
            raise await self._refused(run)
        return run.resource()

    def client_left(self, run: Run) -> None:
        """The client of a foreground response went before its end: stop paying for tokens nobody reads
        (after ``disconnect_grace_seconds`` for a stored one, which the client may resume meanwhile)."""
        if run.finished:
            return
        log.info("response %s: client disconnected; cancelling", run.id)
        run.cancel_unless_followed(self.config.disconnect_grace_seconds if run.stored else 0.0)

    async def _refused(self, run: Run) -> APIError:
        """The backend's error as the answer. The client never learns the response id, so the failed response
        is not kept."""
        await run.wait()
        error = run.backend_error
        assert error is not None
        with contextlib.suppress(Exception):
            await self.store.delete(run.id)
        return APIError(error.status, error.message, code=error.code, param=error.param)

    # --- one response -------------------------------------------------------------------------------------------

    async def find(self, owner: str | None, response_id: str) -> Found:
        """The response, if it exists and belongs to ``owner``; else 404 (the same for both)."""
        run = self.runs.get(response_id)
        if run is not None:
            if run.owner == owner:
                return Found(response_id, run, None)
        else:
            record = await self.store.get(response_id)
            if record is not None and record.owner == owner:
                return Found(response_id, None, record)
        raise APIError.not_found(f"response '{response_id}' not found")

    async def resource(self, found: Found) -> bytes:
        """The response resource as it stands (``GET`` without ``stream``), the same on every replica: its run's
        snapshot when it runs here; when it runs on another replica, the stored log folded through the
        protocol's ``Accumulator`` (the store has every event a client may have seen: events are stored
        before they are sent), not the resource as last stored (that one changes only with the status)."""
        if found.run is not None or self.replica is None or found.status not in UNFINISHED_STATUSES:
            return found.data
        stored = await self.store.events(found.id)
        if not stored:  # queued, or not begun: the stored resource is all there is
            return found.data
        return await offload.call(len(stored) > offload.OFF_LOOP_ITEMS, _folded, stored)

    async def events(self, found: Found, starting_after: int = -1) -> AsyncIterator[list[Entry]]:
        """The response's events after ``starting_after``: the stored ones, then, while it runs, the live ones
        until the terminal event (an empty batch for each quiet keep-alive interval)."""
        keepalive = self.config.keepalive_seconds
        if self.replica is not None and (found.run is not None or found.status in UNFINISHED_STATUSES):
            # On from the store and the shared live log, wherever the run is (``replicas``).
            async for batch in self.replica.follow(found.run, found.id, starting_after, keepalive):
                yield batch
            return
        if found.run is not None:
            async for batch in found.run.follow(starting_after, keepalive):
                yield batch
            return
        stored = await self.store.events(found.id, starting_after)
        if stored:
            yield stored

    def follow(self, run: Run) -> AsyncIterator[list[Entry]]:
        """A just-created run's events from its start, for the stream that created it."""
        if self.replica is not None:
            return self.replica.follow(run, run.id, -1, self.config.keepalive_seconds)
        return run.follow(-1, self.config.keepalive_seconds)

    async def cancel(self, found: Found) -> bytes:
        """Stop a running response (it ends ``cancelled``); the resource as it ended."""
        if found.run is not None:
            found.run.cancel()
            await found.run.wait()
        elif self.replica is not None and found.status in UNFINISHED_STATUSES:  # it runs on another replica
            record = await self.replica.cancel_elsewhere(found.id)
            if record is None:
                raise APIError.not_found(f"response '{found.id}' not found")
            return record.data
        elif found.status != "cancelled":
            raise APIError.invalid(
                f"response '{found.id}' is already {found.status}; only a queued or in_progress response can be "
                "cancelled",
                code="response_not_cancellable",
            )
        return found.data

    async def delete(self, found: Found) -> bytes:
        if found.run is not None:
            found.run.cancel()
            await found.run.wait()
        elif self.replica is not None and found.status in UNFINISHED_STATUSES:
            await self.replica.cancel_elsewhere(found.id)
        await self.store.delete(found.id)
        return msgspec.json.encode({"id": found.id, "object": "response", "deleted": True})

    async def input_items(
        self, found: Found, *, limit: int, after: str | None, order: Literal["asc", "desc"]
    ) -> bytes:
        page = await self.store.input_items(found.id, limit=limit, after=after, order=order)
        return msgspec.json.encode({
            "object": "list",
            "data": [msgspec.Raw(item.data) for item in page.items],
            "first_id": page.items[0].id if page.items else None,
            "last_id": page.items[-1].id if page.items else None,
            "has_more": page.has_more,
        })

    # --- compaction -----------------------------------------------------------------------------------------------

    async def compact(self, owner: str | None, request: ValidatedRequest, model: str) -> Compaction:
        """Start summarising the conversation (an ordinary run that is not stored); ``result()`` once it ends."""
        items = await self.conversation(owner, request)
        if not items:
            raise APIError.invalid("there is nothing to compact: send 'input' or 'previous_response_id'", "input",
                                   code="missing_required_parameter")
        messages = to_chat_messages(items)
        instructions = request.body.instructions
        context = [ChatMessage(role="system", content=instructions)] if instructions else []
        replaced = replaced_turns(messages)
        budget = summary_budget(render_transcript(replaced))
        created_at = int(time.time())
        template = request.response_template(response_id=new_id("resp_"), model=model, created_at=created_at)
        run = self.runs.start(
            writer=ResponseWriter(template),
            request=summary_request(model, render_transcript(context + messages), budget),
            owner=owner,
            stored=False,
            background=False,
            max_tool_calls=None,
            followed=False,
        )
        return Compaction(run, items, replaced, budget, model, created_at)

    # --- the rest -------------------------------------------------------------------------------------------------

    def models(self) -> bytes:
        data: list[dict[str, Any]] = [
            {"id": name, "object": "model", "created": self.started_at, "owned_by": self.backend.name}
            for name in self.backend.models()
        ]
        return msgspec.json.encode({"object": "list", "data": data})

    def health(self, *, detailed: bool = True) -> bytes:
        """Liveness; ``detailed``: with the backend and store (for a caller who may know them)."""
        if not detailed:
            return b'{"status":"ok"}'
        return msgspec.json.encode({"status": "ok", "backend": self.backend.name, "store": self.store.describe()})
