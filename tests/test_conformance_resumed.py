"""The checker told that a stream is resumed (``starting_after``): what a resumed GET gives is conformant as it is,
and what a resumed stream gets wrong is still found."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from headwater.protocol.codec import decode_event, encode_event
from headwater.protocol.conformance import check
from headwater.protocol.recording import read_recording

CAPTURES = sorted((Path(__file__).parent / "fixtures/captures/openai").glob("*.jsonl"))


def _clean(path: Path) -> list:
    events = read_recording(path.read_bytes()).events
    return events if events and not check(events) else []


CLEAN = [path for path in CAPTURES if _clean(path)]


def test_there_are_clean_captures_to_cut() -> None:
    assert len(CLEAN) >= 15


@pytest.mark.parametrize("path", CLEAN, ids=lambda p: p.stem)
def test_every_cut_of_a_clean_recording_is_conformant_as_a_resumed_stream(path: Path) -> None:
    events = _clean(path)
    for cut in range(len(events) - 1):
        tail = events[cut + 1 :]
        found = check(tail, starting_after=events[cut].sequence_number)
        assert found == [], (cut, found[:3])


def test_a_resumed_stream_that_skips_an_event_is_reported() -> None:
    events = _clean(next(p for p in CLEAN if "mcp-tool.1" in p.name))
    middle = len(events) // 2
    tail = events[middle + 1 :]
    found = check(tail, starting_after=events[middle - 1].sequence_number)
    assert [v.rule_id for v in found][:1] == ["SEQ-START"]


def test_a_resumed_stream_still_checks_items_it_saw_from_their_start() -> None:
    events = _clean(next(p for p in CLEAN if "mcp-tool.1" in p.name))
    # Cut before the last message item is added, then break that item's done text.
    added = max(i for i, e in enumerate(events) if e.type == "response.output_item.added")
    done = max(i for i, e in enumerate(events) if e.type == "response.output_text.done")
    wire = json.loads(encode_event(events[done]))
    wire["text"] = wire["text"] + " (changed)"
    broken = [*events[added:done], decode_event(json.dumps(wire).encode()), *events[done + 1 :]]
    found = check(broken, starting_after=events[added - 1].sequence_number)
    assert "DONE-TEXT" in {v.rule_id for v in found}

