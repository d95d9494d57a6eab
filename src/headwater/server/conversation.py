"""The conversation a backend sees: instructions, then every earlier turn of the ``previous_response_id`` chain
(its input items and its output), then this request's input, as a list of ``ChatMessage``.

Instructions are not inherited from earlier responses (as in OpenAI's API). Reasoning items are left out: a
chat backend cannot take them back. The chain is walked through the store, so only stored responses of the
same owner can be continued. A ``function_call_output`` must answer a ``function_call`` made earlier in the
conversation (as OpenAI requires); a stored record that cannot be read any more is a 400 naming
``previous_response_id``, never a crash.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

import msgspec

from headwater.protocol.codec import decode_response
from headwater.protocol.resources import Response

from . import offload
from .backends.base import ChatMessage
from .compaction import compaction_context
from .errors import APIError
from .input_limits import shown
from .requests import (
    TEXT_PARTS,
    CompactionItem,
    FunctionCallItem,
    FunctionCallOutputItem,
    MessageItem,
    RefusalPart,
    StoredItem,
    ValidatedRequest,
    decode_input_items,
    item_from_output,
    with_references,
)
from .store import Store
from .store.base import UNFINISHED_STATUSES

__all__ = ["build_messages", "check_call_outputs", "conversation_items", "resolve_references", "to_chat_messages"]

A = TypeVar("A")
T = TypeVar("T")


async def resolve_references(store: Store, owner: str | None, request: ValidatedRequest) -> ValidatedRequest:
    """``request`` with each ``item_reference`` (or bare ``{"id"}``) replaced by the item it names: an output
    item or an input item of one of ``owner``'s stored responses. An id found nowhere is a 400 naming
    ``input[i]``; a hosted-tool call found (no meaning as input) is left out, as in a ``previous_response_id``
    chain."""
    if not request.references:
        return request
    resolved: list[StoredItem | None] = []
    for _, index, item_id in request.references:
        found = await store.find_item(item_id, owner)
        if found is None:
            raise APIError.invalid(
                f"input[{index}] references item '{item_id}', which is not an output or input item of any stored "
                "response this key can see", f"input[{index}]", code="item_not_found")
        try:
            if found.output:
                try:
                    output = decode_response(b'{"output": [' + found.data + b"]}").output
                except msgspec.ValidationError:  # a type this server does not know: no meaning as input here
                    output = []
                resolved.append(item_from_output(output[0]) if output else None)
            else:
                resolved.append(decode_input_items([found.data])[0])
        except (RecursionError, msgspec.DecodeError):  # stored before the nesting limit existed, or damaged
            raise APIError.invalid(f"input[{index}] references item '{item_id}', which cannot be read back (it is "
                                   "nested too deeply or damaged)", f"input[{index}]",
                                   code="item_unreadable") from None
    return with_references(request, resolved)


async def build_messages(
    store: Store, owner: str | None, request: ValidatedRequest, *, max_chain_length: int = 1000
) -> list[ChatMessage]:
    """Everything the model should see for ``request``; raises ``APIError`` for a chain it cannot follow."""
    items = await conversation_items(store, owner, request, max_chain_length=max_chain_length)
    messages = [ChatMessage(role="system", content=request.body.instructions)] if request.body.instructions else []
    messages.extend(await offload.call(len(items) > offload.OFF_LOOP_ITEMS, to_chat_messages, items))
    return messages


async def conversation_items(
    store: Store, owner: str | None, request: ValidatedRequest, *, max_chain_length: int = 1000
) -> list[StoredItem]:
    """The conversation as input items: every earlier turn of the chain (its input, then its output), then
    ``request``'s input. Raises ``APIError`` for a chain it cannot follow."""
    earlier: list[tuple[str, Response]] = []
    previous = request.body.previous_response_id
    while previous is not None:
        record = await store.get(previous)
        if record is None or record.owner != owner:
            # 400 previous_response_not_found, as OpenAI answers (and as WebSocket mode must): the request is
            # what is wrong, not the URL.
            if not earlier:
                raise APIError.invalid(
                    f"previous response '{previous}' not found",
                    "previous_response_id",
                    code="previous_response_not_found",
                )
            raise APIError.invalid(
                f"the previous_response_id chain is broken: earlier response '{previous}' no longer exists",
                "previous_response_id",
                code="previous_response_not_found",
            )
        if record.status in UNFINISHED_STATUSES:
            raise APIError.invalid(
                f"previous response '{previous}' is still {record.status}; wait until it finishes",
                "previous_response_id",
                code="previous_response_in_progress",
            )
        response = await _read(len(record.data) > offload.OFF_LOOP_BYTES, decode_response, record.data,
                               record.id)
        earlier.append((record.id, response))
        if len(earlier) > max_chain_length:
            raise APIError.invalid(
                f"the previous_response_id chain is longer than {max_chain_length} responses",
                "previous_response_id",
                code="conversation_too_long",
            )
        previous = response.previous_response_id
    items: list[StoredItem] = []
    for response_id, response in reversed(earlier):
        page = await store.input_items(response_id)
        stored = [item.data for item in page.items]
        items.extend(await _read(sum(map(len, stored)) > offload.OFF_LOOP_BYTES, decode_input_items, stored,
                                 response_id))
        items.extend(item for item in map(item_from_output, response.output) if item is not None)
    check_call_outputs(items, request.items, request.referenced)
    items.extend(request.items)
    return items


async def _read(heavy: bool, decode: Callable[[A], T], data: A, response_id: str) -> T:
    """A stored record decoded (off the loop when ``heavy``), or a 400 naming ``previous_response_id`` when it
    cannot be: nested deeper than any decoder can follow (stored before the nesting limit existed) or damaged."""
    try:
        return await offload.call(heavy, decode, data)
    except (RecursionError, msgspec.DecodeError):
        raise APIError.invalid(
            f"earlier response '{response_id}' of this conversation cannot be read back (it is nested too deeply "
            "or damaged); start a new conversation without it", "previous_response_id",
            code="previous_response_unreadable") from None


def check_call_outputs(
    history: Iterable[StoredItem], new: list[StoredItem], referenced: set[str] | frozenset[str] = frozenset()
) -> None:
    """Refuse (400, naming the item) a ``function_call_output`` in ``new`` that answers no ``function_call`` of
    ``history`` or of ``new`` before it. After a compaction item, calls may have been folded into its summary, so
    outputs that follow one are not checked; nor are items given by reference (``referenced`` ids: checked when
    they were first sent)."""
    if not any(isinstance(item, FunctionCallOutputItem) for item in new):
        return
    calls: set[str] = set()
    compacted = False
    for item in history:
        if isinstance(item, FunctionCallItem):
            calls.add(item.call_id)
        elif isinstance(item, CompactionItem):
            compacted = True
    for i, item in enumerate(new):
        if isinstance(item, FunctionCallItem):
            calls.add(item.call_id)
        elif isinstance(item, CompactionItem):
            compacted = True
        elif isinstance(item, FunctionCallOutputItem) and item.call_id not in calls and not compacted \
                and item.id not in referenced:
            raise APIError.invalid(
                f"no tool call found for function call output with call_id {shown(item.call_id)}",
                f"input[{i}].call_id", code="invalid_value")


def to_chat_messages(items: Iterable[StoredItem]) -> list[ChatMessage]:
    """Input items in the chat shape: function calls join the assistant turn they follow, outputs become
    ``tool`` turns, a compaction item becomes a developer turn carrying its summary, reasoning is dropped."""
    messages: list[ChatMessage] = []
    for item in items:
        if isinstance(item, MessageItem):
            messages.append(ChatMessage(role=item.role, content=_text(item.content)))
        elif isinstance(item, FunctionCallItem):
            call = {"id": item.call_id, "name": item.name, "arguments": item.arguments}
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant":
                last.tool_calls.append(call)
            else:
                messages.append(ChatMessage(role="assistant", tool_calls=[call]))
        elif isinstance(item, FunctionCallOutputItem):
            messages.append(ChatMessage(role="tool", content=_text(item.output), tool_call_id=item.call_id))
        elif isinstance(item, CompactionItem):
            context = compaction_context(item.encrypted_content)
            if context is not None:  # one this server did not make (an upstream's) carries nothing readable
                messages.append(ChatMessage(role="developer", content=context))
    return messages


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    assert isinstance(content, list)
    texts = []
    for part in content:
        if isinstance(part, TEXT_PARTS):
            texts.append(part.text)
        elif isinstance(part, RefusalPart):
            texts.append(part.refusal)
    return "\n".join(texts)
