"""Compatibility mode: repairs the streams of providers that bend the protocol, and says what it repaired.

Seen in the wild (Ollama, llama.cpp, OpenRouter): no ``sequence_number``, no ``output_index``, an SSE ``event:``
name that differs from ``data.type``, no terminal event. ``Repairer`` works on decoded JSON payloads before they
are typed: it numbers events in stream order, infers addresses (``output_index`` from ``item_id`` and back, part
indexes from the last part added), trusts ``data.type``, and at the end of a stream that never finished closes
what is open and synthesizes the terminal event from the accumulated snapshot. It cannot invent lost content:
a repaired stream says no more than the provider sent. Sans-I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from headwater.protocol.accumulate import Accumulator
from headwater.protocol.events import EVENT_CLASSES, ErrorEvent
from headwater.protocol.resources import to_builtins

__all__ = ["Repairer"]

# Address fields an event type requires (those the repairer can infer).
_ADDRESS = ("output_index", "item_id", "content_index", "summary_index")
_REQUIRED: dict[str, frozenset[str]] = {
    name: frozenset(f.name for f in msgspec.structs.fields(cls) if f.required and f.name in _ADDRESS)
    for name, cls in EVENT_CLASSES.items()
}

# A delta stream's type -> (its done type, the done event's field, where it lives: "content", "summary" or None
# for a stream on the item itself).
_STREAMS: dict[str, tuple[str, str, str | None]] = {
    "response.output_text.delta": ("response.output_text.done", "text", "content"),
    "response.refusal.delta": ("response.refusal.done", "refusal", "content"),
    "response.reasoning_text.delta": ("response.reasoning_text.done", "text", "content"),
    "response.reasoning.delta": ("response.reasoning.done", "text", "content"),
    "response.reasoning_summary_text.delta": ("response.reasoning_summary_text.done", "text", "summary"),
    "response.function_call_arguments.delta": ("response.function_call_arguments.done", "arguments", None),
    "response.custom_tool_call_input.delta": ("response.custom_tool_call_input.done", "input", None),
    "response.mcp_call_arguments.delta": ("response.mcp_call_arguments.done", "arguments", None),
    "response.code_interpreter_call_code.delta": ("response.code_interpreter_call_code.done", "code", None),
    "response.apply_patch_call_operation_diff.delta": ("response.apply_patch_call_operation_diff.done", "diff", None),
}
_DONE_OF = {done: (delta, where) for delta, (done, _, where) in _STREAMS.items()}
_PART_ADDED = {"response.content_part.added": "content", "response.reasoning_summary_part.added": "summary"}
_PART_DONE = {"response.content_part.done": "content", "response.reasoning_summary_part.done": "summary"}
_PART_DONE_TYPE = {"content": "response.content_part.done", "summary": "response.reasoning_summary_part.done"}
_INDEX_FIELD = {"content": "content_index", "summary": "summary_index"}

Key = tuple[str | None, int]  # (where, part index); (None, 0) for a stream on the item itself


@dataclass
class _Stream:
    delta_type: str
    chunks: list[str]
    had_deltas: bool = False


@dataclass
class _OpenItem:
    item_id: str | None
    item_type: str | None
    streams: dict[Key, _Stream] = field(default_factory=dict)
    parts: set[Key] = field(default_factory=set)
    last_part: dict[str, int] = field(default_factory=dict)


class Repairer:
    """Feed each payload (a dict, changed in place) with its SSE ``event:`` name to ``repair``; at a stream's end
    with no terminal event, ``closing`` then ``terminal`` give the events that end it. ``repairs`` says what
    was done, one readable line per kind of repair."""

    def __init__(self) -> None:
        self.next_sequence_number = 0
        self._tally: dict[str, list[Any]] = {}  # kind -> [count, first example], in order of first sighting
        self._index_of: dict[str, int] = {}
        self._id_at: dict[int, str] = {}
        self._next_index = 0
        self._latest_index: int | None = None
        self._open: dict[int, _OpenItem] = {}
        self._last_part: dict[int, dict[str, int]] = {}

    # --- reporting -------------------------------------------------------------------------------------------

    def note(self, kind: str, example: str = "") -> None:
        entry = self._tally.get(kind)
        if entry is None:
            self._tally[kind] = [1, example]
        else:
            entry[0] += 1

    @property
    def repairs(self) -> list[str]:
        return [_describe(kind, count, example) for kind, (count, example) in self._tally.items()]

    # --- one payload ------------------------------------------------------------------------------------------

    def repair(self, sse_name: str | None, obj: dict[str, Any]) -> bool:
        """Repair ``obj`` in place; True if anything in it changed."""
        changed = False
        etype = obj.get("type")
        if not isinstance(etype, str):
            if sse_name:
                obj["type"] = etype = sse_name
                changed = True
                self.note("type-from-name", sse_name)
            etype = str(etype)
        elif sse_name and sse_name != etype:
            self.note("sse-name", f"`event: {sse_name}` for data.type {etype!r}")
        required = _REQUIRED.get(etype, frozenset())
        if etype == "response.output_item.added":
            changed |= self._item_added(obj)
        elif etype == "response.output_item.done":
            changed |= self._item_done(obj)
        elif required:
            changed |= self._address(etype, obj, required)
        self._track(etype, obj)
        changed |= self._number(obj)
        return changed

    def _number(self, obj: dict[str, Any]) -> bool:
        want = self.next_sequence_number
        self.next_sequence_number += 1
        seq = obj.get("sequence_number")
        if type(seq) is int and seq == want:
            return False
        if seq is None:
            self.note("seq-missing")
        else:
            self.note("seq-renumbered", f"{seq!r} where {want} was due")
        obj["sequence_number"] = want
        return True

    def _item_added(self, obj: dict[str, Any]) -> bool:
        changed = False
        item = _dict(obj.get("item"))
        item_id = item.get("id") if isinstance(item.get("id"), str) else None
        index = obj.get("output_index")
        if type(index) is not int:
            index = self._next_index
            obj["output_index"] = index
            changed = True
            self.note("index-added", f"item {item_id!r} put at output_index {index}")
        self._next_index = max(self._next_index, index + 1)
        self._latest_index = index
        if item_id is not None:
            self._index_of[item_id] = index
            self._id_at[index] = item_id
        open_item = _OpenItem(item_id, item.get("type") if isinstance(item.get("type"), str) else None)
        for delta_type, (_, name, where) in _STREAMS.items():
            if where is None and isinstance(item.get(name), str) and _stream_fits(delta_type, open_item.item_type):
                open_item.streams[(None, 0)] = _Stream(delta_type, [item[name]])
        self._open[index] = open_item
        return changed

    def _item_done(self, obj: dict[str, Any]) -> bool:
        if type(obj.get("output_index")) is int:
            return False
        item = _dict(obj.get("item"))
        item_id = item.get("id")
        index = self._index_of.get(item_id) if isinstance(item_id, str) else None
        if index is None:
            index = self._latest_index if self._latest_index is not None else 0
        obj["output_index"] = index
        self.note("index-inferred", f"{obj.get('type')} for item {item_id!r} -> output_index {index}")
        return True

    def _address(self, etype: str, obj: dict[str, Any], required: frozenset[str]) -> bool:
        changed = False
        item_id = obj.get("item_id")
        if "output_index" in required and not isinstance(obj.get("output_index"), (int, float)):
            index = self._index_of.get(item_id) if isinstance(item_id, str) else None
            how = f"from item_id {item_id!r}"
            if index is None:
                index, how = (self._latest_index or 0), "as the latest item"
            obj["output_index"] = index
            changed = True
            self.note("index-inferred", f"{etype} -> output_index {index} ({how})")
        index = obj.get("output_index")
        if "item_id" in required and not isinstance(item_id, str) and isinstance(index, int) and index in self._id_at:
            obj["item_id"] = self._id_at[index]
            changed = True
            self.note("item-id", f"{etype} at output_index {index} -> {self._id_at[index]!r}")
        for where, name in _INDEX_FIELD.items():
            if name in required and type(obj.get(name)) is not int:
                last = self._last_part.get(index, {}).get(where, 0) if isinstance(index, int) else 0
                obj[name] = last
                changed = True
                self.note("part-index", f"{etype} -> {name} {last}")
        return changed

    # --- what is open, for closing a stream that never finished ------------------------------------------------

    def _track(self, etype: str, obj: dict[str, Any]) -> None:
        index = obj.get("output_index")
        if not isinstance(index, int):
            return
        if etype == "response.output_item.done":
            self._open.pop(index, None)
            return
        open_item = self._open.get(index)
        if open_item is None:
            return
        where = _PART_ADDED.get(etype)
        if where is not None:
            part_index = obj.get(_INDEX_FIELD[where])
            if isinstance(part_index, int):
                key: Key = (where, part_index)
                open_item.parts.add(key)
                self._last_part.setdefault(index, {})[where] = part_index
                part = _dict(obj.get("part"))
                text = part.get("refusal") if part.get("type") == "refusal" else part.get("text")
                open_item.streams[key] = _Stream("", [text] if isinstance(text, str) else [])
            return
        where = _PART_DONE.get(etype)
        if where is not None:
            key = _key(where, obj)
            open_item.parts.discard(key)
            open_item.streams.pop(key, None)
            return
        stream_info = _STREAMS.get(etype)
        if stream_info is not None:
            _, _, where = stream_info
            key = _key(where, obj)
            stream = open_item.streams.setdefault(key, _Stream(etype, []))
            stream.delta_type = etype
            stream.had_deltas = True
            delta = obj.get("delta")
            if isinstance(delta, str):
                stream.chunks.append(delta)
            return
        done = _DONE_OF.get(etype)
        if done is not None:
            closed = open_item.streams.get(_key(done[1], obj))
            if closed is not None:
                closed.had_deltas = False  # closed: nothing left to say at the end

    def closing(self, acc: Accumulator) -> list[dict[str, Any]]:
        """Payloads that close every stream, part and item still open (items end ``incomplete``)."""
        out: list[dict[str, Any]] = []
        for index in sorted(self._open):
            open_item = self._open.pop(index)
            address: dict[str, Any] = {"output_index": index}
            if open_item.item_id is not None:
                address["item_id"] = open_item.item_id
            snapshot = acc.item(index)
            item = to_builtins(snapshot) if snapshot is not None else {}
            keys = sorted(set(open_item.streams) | open_item.parts, key=lambda k: (k[0] is None, k[0] or "", k[1]))
            for key in keys:
                stream = open_item.streams.get(key)
                if stream is not None and stream.had_deltas:
                    done_type, name, where = _STREAMS[stream.delta_type]
                    payload = {"type": done_type, **address, name: "".join(stream.chunks)}
                    if where is not None:
                        payload[_INDEX_FIELD[where]] = key[1]
                    out.append(payload)
                where = key[0]
                if where is not None and key in open_item.parts:
                    parts = _list(item.get(where))
                    part = parts[key[1]] if 0 <= key[1] < len(parts) else {"type": "output_text", "text": ""}
                    out.append({"type": _PART_DONE_TYPE[where], **address, _INDEX_FIELD[where]: key[1], "part": part})
            if "status" in item:
                item["status"] = "incomplete"
            out.append({"type": "response.output_item.done", "output_index": index, "item": item})
            self.note("closed-item", f"item {open_item.item_id!r} at output_index {index}")
        for payload in out:
            payload["sequence_number"] = self.next_sequence_number
            self.next_sequence_number += 1
        return out

    def terminal(self, acc: Accumulator, error: ErrorEvent | None, closed_items: bool) -> dict[str, Any]:
        """The terminal payload for a stream that ended without one, from the accumulated snapshot: failed after
        an ``error`` event, incomplete (reason ``interrupted``) if items had to be closed, else completed."""
        response = to_builtins(acc.response)
        if error is not None:
            etype, status = "response.failed", "failed"
            response["error"] = {"code": error.error_code, "message": error.error_message}
        elif closed_items:
            etype, status = "response.incomplete", "incomplete"
            response["incomplete_details"] = {"reason": "interrupted"}
        else:
            etype, status = "response.completed", "completed"
        response["status"] = status
        self.note("terminal", etype)
        payload = {"type": etype, "sequence_number": self.next_sequence_number, "response": response}
        self.next_sequence_number += 1
        return payload


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _key(where: str | None, obj: dict[str, Any]) -> Key:
    if where is None:
        return (None, 0)
    value = obj.get(_INDEX_FIELD[where])
    return (where, value if isinstance(value, int) else 0)


def _stream_fits(delta_type: str, item_type: str | None) -> bool:
    prefix = {"function_call": "response.function_call_", "custom_tool_call": "response.custom_tool_call_",
              "mcp_call": "response.mcp_call_", "code_interpreter_call": "response.code_interpreter_call_",
              "apply_patch_call": "response.apply_patch_call_"}.get(item_type or "")
    return prefix is not None and delta_type.startswith(prefix)


_DESCRIPTIONS = {
    "seq-missing": "{n} event(s) had no sequence_number: numbered in stream order",
    "seq-renumbered": "{n} event(s) had a sequence_number out of step (first: {example}): renumbered in stream order",
    "sse-name": "{n} event(s) had an SSE event name differing from data.type (first: {example}): data.type trusted",
    "type-from-name": "{n} event(s) had no data.type (first: {example}): took the SSE event name",
    "index-added": "{n} output_item.added event(s) had no output_index (first: {example}): took the next free index",
    "index-inferred": "{n} event(s) had no output_index (first: {example}): inferred from the item",
    "item-id": "{n} event(s) had no item_id (first: {example}): inferred from output_index",
    "part-index": "{n} event(s) had no content/summary index (first: {example}): took the item's latest part",
    "closed-item": "{n} item(s) were still open when the stream ended (first: {example}): closed as incomplete",
    "terminal": "the stream ended without a terminal event: synthesized {example} from the accumulated snapshot",
    "not-json": "{n} event(s) whose data is not a JSON object were dropped (first: {example})",
}


def _describe(kind: str, count: int, example: str) -> str:
    template = _DESCRIPTIONS.get(kind, kind + " ({n}x)")
    return template.format(n=count, example=example)
