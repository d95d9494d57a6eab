"""The relay's hot path (the next delta of the stream the last delta went to skips the routing) relays exactly
what the full routing would: the same events, byte for byte, and the same repairs, whatever the upstream sends.
"""

from __future__ import annotations

import itertools
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater.protocol.codec import decode_event_obj, encode_event
from headwater.protocol.events import Event
from headwater.protocol.relay import ResponseRelay
from headwater.protocol.resources import Response
from test_upstream_responses import _MUTABLE, MANGLINGS, mangled


class _RoutedRelay(ResponseRelay):
    """A relay that routes every event in full (it never remembers a delta's route)."""

    def _remember(self, *args: Any) -> None:
        return None


def _relayed(cls: type[ResponseRelay], events: list[dict[str, Any]]) -> tuple[list[tuple[str, bytes]], list[str]]:
    counter = itertools.count()
    # The ids the relay makes up (for items with none, or a taken one) are the same in both runs.
    with mock.patch("headwater.protocol.relay.new_id", lambda prefix: f"{prefix}{next(counter)}"):
        relay = cls(Response(id="resp_hot", model="m", created_at=1), clock=lambda: 2.0)
        out: list[Event] = relay.start()
        for obj in events:
            out += relay.feed(decode_event_obj(obj, lenient=True))
        out += relay.close()
    return [(event.type, encode_event(event)) for event in out], relay.repairs


def test_the_hot_path_is_taken_on_a_plain_text_stream() -> None:
    """(Else the comparisons below would compare the full routing with itself.)"""
    relay = ResponseRelay(Response(id="resp_hot", model="m"))
    relay.start()
    taken = 0
    for obj in max(_MUTABLE, key=lambda group: sum(e["type"] == "response.output_text.delta" for e in group)):
        event = decode_event_obj(obj, lenient=True)
        hot = relay._hot
        relay.feed(event)
        taken += hot is not None and type(event) is hot[0] and event.item_id == hot[1]
    assert taken > 10


def test_every_recorded_stream_relays_the_same_either_way() -> None:
    for group in _MUTABLE:
        assert _relayed(ResponseRelay, group) == _relayed(_RoutedRelay, group)


def _interleaved(group: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Two messages whose text deltas alternate (the hot route changes at every event)."""
    out: list[dict[str, Any]] = []
    for obj in group:
        out.append(obj)
        if obj["type"] == "response.output_item.added" and obj["item"].get("type") == "message":
            out.append({**obj, "output_index": obj["output_index"] + 1,
                        "item": {**obj["item"], "id": "msg_other", "content": []}})
        if obj["type"] == "response.output_text.delta":
            out.append({**obj, "item_id": "msg_other", "output_index": obj["output_index"] + 1})
    return out


def test_interleaved_streams_relay_the_same_either_way() -> None:
    for group in _MUTABLE:
        assert _relayed(ResponseRelay, _interleaved(group)) == _relayed(_RoutedRelay, _interleaved(group))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_mangling_relays_the_same_either_way(data: st.DataObject) -> None:
    """Deltas re-addressed, renumbered, repeated after their done, of another type, cut short: the hot path
    decides as the full routing does."""
    events = mangled(data, rounds=12, manglings=set(MANGLINGS) - {"field"})
    assert _relayed(ResponseRelay, events) == _relayed(_RoutedRelay, events)


def test_a_delta_for_an_item_id_taken_over_by_a_new_item_is_routed_again() -> None:
    """A second item with the upstream id of an open one (of another type) takes the id over: the next delta
    with that id goes where the full routing sends it, not to the route remembered."""
    message = {"type": "message", "id": "it_1", "role": "assistant", "status": "in_progress", "content": []}
    part = {"type": "output_text", "text": "", "annotations": []}
    delta = {"type": "response.output_text.delta", "item_id": "it_1", "output_index": 0, "content_index": 0,
             "delta": "a", "logprobs": []}
    events = [
        {"type": "response.output_item.added", "output_index": 0, "item": message},
        {"type": "response.content_part.added", "item_id": "it_1", "output_index": 0, "content_index": 0,
         "part": part},
        delta,
        delta,
        {"type": "response.output_item.added", "output_index": 1,
         "item": {"type": "reasoning", "id": "it_1", "summary": []}},
        delta,
    ]
    events = [{**e, "sequence_number": n + 2} for n, e in enumerate(events)]
    assert _relayed(ResponseRelay, events) == _relayed(_RoutedRelay, events)


def test_a_part_added_to_an_item_of_an_unknown_type_is_closed_when_the_upstream_is_cut() -> None:
    """(Found by the property above.) The accumulator gives an item of a type Headwater does not model no parts,
    so when the upstream ends before the part's done, the relay closes it with an empty part instead of
    indexing the snapshot's part list, which raised TypeError."""
    events = [
        {"type": "response.output_item.added", "output_index": 0,
         "item": {"type": "program_output", "id": "po_1", "status": "in_progress"}},
        {"type": "response.content_part.added", "item_id": "po_1", "output_index": 0, "content_index": 0,
         "part": {"type": "output_text", "text": "", "annotations": []}},
    ]
    relayed, repairs = _relayed(ResponseRelay, events)
    types = [name for name, _ in relayed]
    assert "response.content_part.done" in types and types[-1] == "response.failed"  # upstream_truncated
    assert repairs
