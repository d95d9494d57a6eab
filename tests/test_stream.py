"""Bytes to typed events and back: iter_events / aiter_events / EventDecoder / encode_sse."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.protocol import events as ev
from headwater.protocol.codec import encode_event
from headwater.protocol.errors import DecodeError, SSEError
from headwater.protocol.stream import EventDecoder, aiter_events, encode_sse, iter_events

CAPTURE = Path(__file__).parent / "fixtures/captures/openai/openai-issue-11239.2.jsonl"


def capture_lines() -> list[bytes]:
    return [line for line in CAPTURE.read_bytes().splitlines() if line.strip()]


def as_sse(lines: list[bytes], *, keepalive: bool = False) -> bytes:
    out = []
    for line in lines:
        decoded = next(iter_events([line + b"\n"]))
        out.append(encode_sse(decoded))
        if keepalive:
            out.append(b": OPENROUTER PROCESSING\n\n")
    return b"".join(out) + b"data: [DONE]\n\n"


def test_jsonl_capture_reads_as_typed_events() -> None:
    events = list(iter_events([CAPTURE.read_bytes()]))
    assert len(events) == len(capture_lines())
    assert isinstance(events[0], ev.ResponseCreated)
    assert isinstance(events[-1], ev.ResponseCompleted)
    assert [encode_event(e) for e in events] == capture_lines()


def test_sse_stream_with_keepalives_and_done() -> None:
    data = as_sse(capture_lines(), keepalive=True)
    decoder = EventDecoder()
    events = decoder.feed(data) + decoder.close()
    assert decoder.mode == "sse"
    assert decoder.comments == len(capture_lines())
    assert [encode_event(e) for e in events] == capture_lines()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=60))
def test_any_chunking_gives_the_same_events(sizes: list[int]) -> None:
    data = as_sse(capture_lines())
    chunks, pos, i = [], 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)]
        chunks.append(data[pos : pos + size])
        pos += size
        i += 1
    assert [encode_event(e) for e in iter_events(chunks)] == capture_lines()


def test_sse_event_name_that_differs_from_type_is_recorded() -> None:
    payload = b'{"type":"response.output_text.delta","sequence_number":1,"item_id":"m","output_index":0,"content_index":0,"delta":"x"}'
    (event,) = list(iter_events([b"event: response.text.delta\ndata: " + payload + b"\n\n"]))
    assert event.__dict__.get("_sse_event") == "response.text.delta"
    (same,) = list(iter_events([b"event: response.output_text.delta\ndata: " + payload + b"\n\n"]))
    assert same.__dict__.get("_sse_event") is None


def test_encode_sse_names_the_event_by_its_type() -> None:
    (event,) = list(iter_events([capture_lines()[0] + b"\n"]))
    block = encode_sse(event)
    assert block.startswith(b"event: response.created\ndata: {")
    assert block.endswith(b"\n\n") and block.count(b"\n") == 3


async def test_aiter_events_matches_iter_events() -> None:
    data = as_sse(capture_lines())

    async def chunks():
        for i in range(0, len(data), 97):
            yield data[i : i + 97]

    got = [encode_event(e) async for e in aiter_events(chunks())]
    assert got == capture_lines()


def test_bad_json_in_a_stream_raises_decode_error() -> None:
    with pytest.raises(DecodeError):
        list(iter_events([b"data: {not json}\n\n"]))


def test_lenient_stream_keeps_misfit_events() -> None:
    bad = b'data: {"type":"response.output_text.delta","sequence_number":"x"}\n\n'
    (event,) = list(iter_events([bad], lenient=True))
    assert isinstance(event, ev.UnknownEvent) and event.problem


def test_oversized_event_raises_sse_error() -> None:
    with pytest.raises(SSEError):
        list(iter_events([b"data: " + b"x" * 5000 + b"\n\n"], max_event_size=1000))


def test_camel_stream() -> None:
    data = b'data: {"type":"response.refusal.delta","outputIndex":0,"itemId":"item-1","contentIndex":0,"delta":"no","sequenceNumber":4}\n\n'
    (event,) = list(iter_events([data], camel=True))
    assert isinstance(event, ev.ResponseRefusalDelta) and event.item_id == "item-1"


_DELTA = b'{"type":"response.output_text.delta","sequence_number":1,"item_id":"m","output_index":0,"content_index":0,"delta":"x"}'
_DONE_TEXT = b'{"type":"response.output_text.done","sequence_number":2,"item_id":"m","output_index":0,"content_index":0,"text":"x"}'
_ODD = b'{"type":"response.future_event","sequence_number":3,"shiny":true}'
_SSE_NAMES = [None, "response.output_text.delta", "response.output_text.done", "response.text.delta", ""]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(_SSE_NAMES), st.sampled_from([_DELTA, _DELTA, _DONE_TEXT, _ODD, b"[DONE]"]))),
    st.lists(st.integers(1, 300), min_size=1, max_size=8),
)
def test_batches_decode_like_one_event_at_a_time(frames: list[tuple[str | None, bytes]], sizes: list[int]) -> None:
    """However names and payloads mix in a batch (one name for all, names that differ from the types, events
    without a name, unknown types, [DONE]), the batch gives what decoding each frame alone gives: the same
    events, each keeping its payload and, where the SSE name differs from its type, that name."""
    stream = b"".join((b"event: " + name.encode() + b"\n" if name is not None else b"") + b"data: " + payload + b"\n\n"
                      for name, payload in frames)
    chunks, pos, i = [], 0, 0
    while pos < len(stream):
        chunks.append(stream[pos : pos + sizes[i % len(sizes)]])
        pos += sizes[i % len(sizes)]
        i += 1
    got = list(iter_events(chunks))
    expected = [event for name, payload in frames for event in iter_events([b"data: " + payload + b"\n\n"])]
    for (name, _), event in zip([f for f in frames if f[1] != b"[DONE]"], expected, strict=True):
        if name and name != event.type:
            event.__dict__["_sse_event"] = name
    assert got == expected
    assert [(e.raw_json, e.__dict__.get("_sse_event")) for e in got] == [
        (e.raw_json, e.__dict__.get("_sse_event")) for e in expected
    ]
