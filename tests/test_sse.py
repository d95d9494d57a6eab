"""Tests of the SSE framing layer (headwater.protocol.sse): WHATWG rules one by one, JSONL, limits, the encoder,
and hypothesis properties (any chunking gives the same frames; frames equal a slow reference parser's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater.protocol.errors import ProtocolError, SSEError
from headwater.protocol.sse import DONE, Frame, SSEDecoder, _lines, encode_comment, encode_frame

CAPTURES = Path(__file__).parent / "fixtures" / "captures" / "openai"
BOM = b"\xef\xbb\xbf"


def decode(
    stream: bytes, chunks: list[int] | None = None, *, max_event_size: int = 1 << 24, mode: str | None = None
) -> list[Frame]:
    """Feed `stream` whole (or cut at the `chunks` offsets), then close."""
    decoder = SSEDecoder(max_event_size=max_event_size, mode=mode)
    return feed_cuts(decoder, stream, chunks or [])


def feed_cuts(decoder: SSEDecoder, stream: bytes, cuts: list[int]) -> list[Frame]:
    frames: list[Frame] = []
    start = 0
    for cut in sorted(cuts):
        frames += decoder.feed(stream[start:cut])
        start = max(start, cut)
    frames += decoder.feed(stream[start:])
    frames += decoder.close()
    return frames


def bytewise(stream: bytes, *, max_event_size: int = 1 << 24) -> list[Frame]:
    return decode(stream, list(range(len(stream))), max_event_size=max_event_size)


# -- reference: a slow, literal reading of the WHATWG algorithm on the decoded text ---------------------------------


class Reference:
    def __init__(self, stream: bytes, mode: str | None = None) -> None:
        self.frames: list[Frame] = []
        self.comments = 0
        self.last_event_id = ""
        self.retry: int | None = None
        if stream.startswith(BOM):
            stream = stream[3:]
        self.mode = mode
        if self.mode is None:
            stripped = stream.lstrip(b" \t\r\n")
            if stripped:
                self.mode = "jsonl" if stripped.startswith(b"{") else "sse"
        if self.mode == "jsonl":
            self._jsonl(stream)
        elif self.mode == "sse":
            self._sse(stream.decode("utf-8", "surrogateescape"))

    def _jsonl(self, stream: bytes) -> None:
        for line in stream.split(b"\n"):
            if line.endswith(b"\r"):
                line = line[:-1]
            if line and not line.isspace():
                self.frames.append(Frame(None, line))

    def _sse(self, text: str) -> None:
        lines: list[str] = []
        i = start = 0
        while i < len(text):
            char = text[i]
            if char in "\r\n":
                lines.append(text[start:i])
                if char == "\r" and text[i + 1 : i + 2] == "\n":
                    i += 1
                start = i + 1
            i += 1
        # text[start:] is an unterminated line: discarded at end of stream.
        data_buffer, event_type = "", ""
        block_id: str | None = None
        block_retry: int | None = None
        for line in lines:
            if line == "":
                if data_buffer != "":
                    self.frames.append(
                        Frame(
                            _redecode(event_type) or None,
                            data_buffer[:-1].encode("utf-8", "surrogateescape"),
                            None if block_id is None else _redecode(block_id),
                            block_retry,
                        )
                    )
                data_buffer, event_type, block_id, block_retry = "", "", None, None
                continue
            if line.startswith(":"):
                self.comments += 1
                continue
            if ":" in line:
                name, value = line.split(":", 1)
                if value.startswith(" "):
                    value = value[1:]
            else:
                name, value = line, ""
            if name == "event":
                event_type = value
            elif name == "data":
                data_buffer += value + "\n"
            elif name == "id":
                if "\0" not in value:
                    block_id = value
                    self.last_event_id = _redecode(value)
            elif name == "retry" and value and all(c in "0123456789" for c in value) and len(value) <= 18:
                self.retry = block_retry = int(value)


def _redecode(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# -- line ends --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eol", [b"\n", b"\r", b"\r\n"], ids=["LF", "CR", "CRLF"])
def test_line_ends_lf_cr_crlf(eol: bytes) -> None:
    stream = b"event: a" + eol + b"data: 1" + eol + eol + b"data: 2" + eol + b"data: 3" + eol + eol
    expected = [Frame("a", b"1"), Frame(None, b"2\n3")]
    assert decode(stream) == expected
    assert bytewise(stream) == expected


def test_mixed_line_ends() -> None:
    stream = b"event: a\rdata: 1\r\n\ndata: 2\n\r"
    assert decode(stream) == [Frame("a", b"1"), Frame(None, b"2")]


def test_crlf_split_across_chunks_is_one_line_end() -> None:
    stream = b"data: x\r\n\r\ndata: y\r\n\r\n"
    # Cut right after each CR: the LF opening the next chunk completes the CRLF, it is not a second line end
    # (which would be a blank line dispatching early, or nothing at all).
    cuts = [i + 1 for i, byte in enumerate(stream) if byte == 13]
    assert decode(stream, cuts) == [Frame(None, b"x"), Frame(None, b"y")]
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\ndata: b\r") == []  # still one event: "a" then "b"
    assert decoder.feed(b"\n\r") == [Frame(None, b"a\nb")]
    assert decoder.feed(b"\n") == []  # completes the CRLF of the blank line: no second dispatch


def test_cr_at_chunk_end_then_other_byte() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\r") == [Frame(None, b"a")]  # a CR alone is a line end: blank line
    assert decoder.feed(b"data: b\r\rdata: c\n\n") == [Frame(None, b"b"), Frame(None, b"c")]


# -- fields -----------------------------------------------------------------------------------------------------


def test_multiline_data_joined_with_lf() -> None:
    assert decode(b"data: a\ndata:\ndata: c\n\n") == [Frame(None, b"a\n\nc")]


def test_comment_keepalive_counted_not_dispatched() -> None:
    decoder = SSEDecoder()
    frames = decoder.feed(b": OPENROUTER PROCESSING\n\n: OPENROUTER PROCESSING\n\nevent: e\ndata: 1\n\n")
    assert frames == [Frame("e", b"1")]
    assert decoder.comments == 2
    assert decoder.feed(b":\n\n") == []
    assert decoder.comments == 3


def test_comment_inside_event() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: 1\n: ping\ndata: 2\n\n") == [Frame(None, b"1\n2")]
    assert decoder.comments == 1


def test_event_id_retry_fields() -> None:
    decoder = SSEDecoder()
    frames = decoder.feed(b"event: response.created\nid: 42\nretry: 3000\ndata: {}\n\ndata: x\n\n")
    assert frames == [Frame("response.created", b"{}", "42", 3000), Frame(None, b"x")]
    assert decoder.last_event_id == "42"  # WHATWG: the last event ID persists across events
    assert decoder.retry == 3000


def test_empty_event_name_is_absent() -> None:
    assert decode(b"event:\ndata: x\n\nevent: a\nevent: \ndata: y\n\n") == [
        Frame(None, b"x"),
        Frame(None, b"y"),
    ]


def test_id_with_nul_ignored() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n") == [
        Frame(None, b"a", "1"),
        Frame(None, b"b"),
    ]
    assert decoder.last_event_id == "1"


def test_empty_id_resets_last_event_id() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"id: 1\ndata: a\n\nid\ndata: b\n\n") == [
        Frame(None, b"a", "1"),
        Frame(None, b"b", ""),
    ]
    assert decoder.last_event_id == ""


@pytest.mark.parametrize("value", [b"", b"12a", b"  5", b"-1", b"1.5", b"\xd9\xa3", b"1" * 19])
def test_bad_retry_ignored(value: bytes) -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"retry: 7\ndata: a\n\nretry:" + value + b"\ndata: b\n\n") == [
        Frame(None, b"a", None, 7),
        Frame(None, b"b"),
    ]
    assert decoder.retry == 7


def test_field_without_colon_has_empty_value() -> None:
    assert decode(b"data\ndata\n\n") == [Frame(None, b"\n")]
    assert decode(b"data\n\n") == [Frame(None, b"")]
    assert decode(b"event\ndata: x\n\n") == [Frame(None, b"x")]


def test_leading_space_stripped_once_only() -> None:
    assert decode(b"data:  x\n\n") == [Frame(None, b" x")]
    assert decode(b"data:x\n\n") == [Frame(None, b"x")]
    assert decode(b"event:  sp\ndata:\t1\n\n") == [Frame(" sp", b"\t1")]
    assert decode(b"data: a: b\n\n") == [Frame(None, b"a: b")]  # only the first colon splits


def test_unknown_fields_ignored() -> None:
    assert decode(b"foo: bar\nDATA: no\n data: no\ndata: yes\n\n") == [Frame(None, b"yes")]


def test_block_without_data_dispatches_nothing() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"event: lonely\n\nid: 9\n\nretry: 5\n\n") == []
    assert decoder.last_event_id == "9"  # but id and retry still take effect
    assert decoder.retry == 5
    assert decoder.feed(b"data: x\n\n") == [Frame(None, b"x")]  # the event type did not leak


def test_blank_lines_alone_do_nothing() -> None:
    assert decode(b"\n\n\r\n\r\r\n") == []


# -- BOM, encoding ------------------------------------------------------------------------------------------------


def test_bom_dropped() -> None:
    assert decode(BOM + b"data: x\n\n") == [Frame(None, b"x")]


@pytest.mark.parametrize("cuts", [[1], [2], [1, 2], [3], [1, 2, 3, 4]])
def test_bom_split_over_chunks(cuts: list[int]) -> None:
    decoder = SSEDecoder()
    assert feed_cuts(decoder, BOM + b"data: x\n\n", cuts) == [Frame(None, b"x")]
    assert decoder.mode == "sse"


def test_bom_only_at_stream_start() -> None:
    # A second BOM is content: it is part of the first line's field name, so the line is an unknown field.
    assert decode(BOM + BOM + b"data: x\n\n") == []
    assert decode(b"data: " + BOM + b"x\n\n") == [Frame(None, BOM + b"x")]


def test_partial_bom_then_other_bytes() -> None:
    assert decode(b"\xef\xbbdata: x\n\n", [1]) == []  # not a BOM: the field name is b"\xef\xbbdata"


def test_utf8_multibyte_split_across_chunks() -> None:
    payload = '{"delta":"日本語 ü — 🎉"}'.encode()
    stream = b"event: response.output_text.delta\ndata: " + payload + b"\n\n"
    expected = [Frame("response.output_text.delta", payload)]
    assert bytewise(stream) == expected
    name = "événement".encode()
    assert bytewise(b"event: " + name + b"\ndata: 1\n\n") == [Frame("événement", b"1")]


def test_invalid_utf8_event_name_replaced() -> None:
    assert decode(b"event: a\xffb\nid: \xfe\ndata: \xff\n\n") == [Frame("a\ufffdb", b"\xff", "\ufffd")]


def test_done_sentinel_is_an_ordinary_frame() -> None:
    frames = decode(b'data: {"a":1}\n\ndata: [DONE]\n\n')
    assert frames == [Frame(None, b'{"a":1}'), Frame(None, DONE)]
    assert frames[-1].data == DONE == b"[DONE]"


# -- end of stream ------------------------------------------------------------------------------------------------


def test_unterminated_final_event_discarded_at_close() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: complete\n\ndata: incomplete\n") == [Frame(None, b"complete")]
    assert decoder.close() == []
    decoder = SSEDecoder()
    assert decoder.feed(b"data: no line end") == []
    assert decoder.close() == []


def test_close_is_idempotent_and_feed_after_close_raises() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: x\n\n")
    assert decoder.close() == []
    assert decoder.close() == []
    with pytest.raises(ValueError):
        decoder.feed(b"data: y\n\n")


def test_empty_chunks_and_empty_stream() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"") == []
    assert decoder.close() == []
    assert decoder.mode is None


# -- JSONL ------------------------------------------------------------------------------------------------------


def test_jsonl_autodetect_real_capture() -> None:
    path = CAPTURES / "openai-issue-11239.1.jsonl"
    raw = path.read_bytes()
    lines = [line for line in raw.split(b"\n") if line]
    assert len(lines) == 9
    decoder = SSEDecoder()
    frames = decoder.feed(raw) + decoder.close()
    assert decoder.mode == "jsonl"
    assert frames == [Frame(None, line) for line in lines]
    assert all(frame.event is None and frame.id is None and frame.retry is None for frame in frames)
    assert decode(raw, list(range(0, len(raw), 61))) == frames


def test_jsonl_every_capture_round_trips() -> None:
    for path in sorted(CAPTURES.glob("*.jsonl")):
        raw = path.read_bytes()
        frames = decode(raw, list(range(0, len(raw), 4096)))
        assert [frame.data for frame in frames] == [line for line in raw.split(b"\n") if line], path.name


def test_jsonl_last_line_without_newline() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'{"a":1}\n{"b":2}') == [Frame(None, b'{"a":1}')]
    assert decoder.close() == [Frame(None, b'{"b":2}')]


def test_jsonl_crlf_blank_lines_and_leading_whitespace() -> None:
    stream = BOM + b' \r\n\n{"a":1}\r\n\r\n  \n{"b":2}\r\n'
    decoder = SSEDecoder()
    assert feed_cuts(decoder, stream, [1, 4, 5, 6]) == [Frame(None, b'{"a":1}'), Frame(None, b'{"b":2}')]
    assert decoder.mode == "jsonl"


def test_mode_detection_and_forcing() -> None:
    decoder = SSEDecoder()
    assert decoder.mode is None
    assert decoder.feed(b"  \n\n") == []
    assert decoder.mode is None  # only whitespace so far
    assert decoder.feed(b"data: x\n\n") == [Frame(None, b"x")]
    assert decoder.mode == "sse"
    assert decode(b'{"a":1}\n', mode="sse") == []  # forced SSE: the line is an unknown field
    assert decode(b"data: x\n", mode="jsonl") == [Frame(None, b"data: x")]
    assert SSEDecoder(mode="jsonl").mode == "jsonl"
    with pytest.raises(ValueError):
        SSEDecoder(mode="json")


# -- size limit ---------------------------------------------------------------------------------------------------


def test_max_event_size_exceeded_raises_with_offset() -> None:
    prefix = b"data: small\n\n: keep-alive\n\n"
    big = b"event: big\ndata: " + b"x" * 60 + b"\ndata: " + b"y" * 60 + b"\n\n"
    stream = prefix + big
    for cuts in ([], list(range(0, len(stream), 7)), [len(prefix) + 20]):
        with pytest.raises(SSEError) as info:
            decode(stream, cuts, max_event_size=100)
        assert info.value.offset == len(prefix)
        assert isinstance(info.value, ProtocolError)
        message = str(info.value)
        assert "max_event_size=100" in message and "121" in message and str(len(prefix)) in message


def test_max_event_size_single_huge_line_raises_while_pending() -> None:
    decoder = SSEDecoder(max_event_size=1000)
    decoder.feed(b"data: ok\n\n")
    with pytest.raises(SSEError) as info:
        for _ in range(100):
            decoder.feed(b"z" * 64)  # no line end ever: must not buffer without bound
    assert info.value.offset == len(b"data: ok\n\n")


def test_max_event_size_not_raised_at_the_limit() -> None:
    limit = 100
    one_line = b"data: " + b"x" * limit + b"\n\n"
    two_lines = b"data: " + b"x" * 49 + b"\ndata: " + b"y" * 50 + b"\n\n"  # 49 + 1 + 50 bytes of data
    for stream in (one_line, two_lines):
        assert [len(f.data) for f in decode(stream, max_event_size=limit)] == [limit]
        assert [len(f.data) for f in bytewise(stream, max_event_size=limit)] == [limit]
    with pytest.raises(SSEError):
        decode(b"data: " + b"x" * (limit + 1) + b"\n\n", max_event_size=limit)


def test_max_event_size_holds_on_the_one_call_path() -> None:
    # A started stream, then chunks of whole common-shape events: over the limit in all (fine: each event is
    # within it) or with one event over it (refused, at that event's offset), as when the stream is fed whole.
    start = b"data: ok\n\n"
    small = b"event: e\ndata: 0123456789\n\n"
    big = b"event: e\ndata: " + b"x" * 65 + b"\n\n"
    decoder = SSEDecoder(max_event_size=64)
    decoder.feed(start)
    assert decoder.feed(small * 10) == [Frame("e", b"0123456789")] * 10
    decoder = SSEDecoder(max_event_size=64)
    decoder.feed(start)
    with pytest.raises(SSEError) as info:
        decoder.feed(small * 3 + big + small)
    assert info.value.offset == len(start) + 3 * len(small)


def test_max_event_size_jsonl() -> None:
    line = b"{" + b"x" * 98 + b"}"
    assert decode(line + b"\r\n", max_event_size=100) == [Frame(None, line)]
    assert bytewise(line + b"\r\n", max_event_size=100) == [Frame(None, line)]
    with pytest.raises(SSEError) as info:
        decode(b"{}\n" + line + b"x\n", max_event_size=100)
    assert info.value.offset == 3
    with pytest.raises(SSEError):
        bytewise(b"{}\n" + line + b"x", max_event_size=100)


def test_long_event_many_small_chunks() -> None:
    # Functional side of the linearity check (timings are in bench/sse_framing_micro.py): a 2 MB event in 64-byte
    # chunks, and a big stream fed at once above the size limit (the region is cut at blank lines).
    payload = b"x" * (2 * 1024 * 1024)
    stream = b"event: big\ndata: " + payload + b"\n\n"
    assert decode(stream, list(range(0, len(stream), 64))) == [Frame("big", payload)]
    many = b"event: e\ndata: 0123456789\n\n" * 1000
    assert decode(many, max_event_size=64) == [Frame("e", b"0123456789")] * 1000
    assert decode(many.replace(b"\n", b"\r\n"), max_event_size=64) == [Frame("e", b"0123456789")] * 1000


def test_region_over_limit_is_cut_at_blank_lines() -> None:
    assert decode(b"data: x\r\n\r\n\r\n", max_event_size=1) == [Frame(None, b"x")]
    assert decode(b"data: x\n\n\n\n\ndata: y\n\n", max_event_size=1) == [Frame(None, b"x"), Frame(None, b"y")]


def test_feed_accepts_bytearray_and_memoryview() -> None:
    decoder = SSEDecoder()
    chunks: list[Any] = [bytearray(b"data: a\n\n"), memoryview(b"data: b\n\n")]
    frames = decoder.feed(chunks[0]) + decoder.feed(chunks[1])
    assert frames == [Frame(None, b"a"), Frame(None, b"b")]
    assert all(type(frame.data) is bytes for frame in frames)


# -- encoder ------------------------------------------------------------------------------------------------------


def test_encode_frame_bytes() -> None:
    assert encode_frame("response.created", b"{}") == b"event: response.created\ndata: {}\n\n"
    assert encode_comment("keep-alive") == b": keep-alive\n\n"


@given(
    events=st.lists(
        st.tuples(
            st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]), min_size=1),
            st.binary().filter(lambda b: b"\n" not in b and b"\r" not in b),
        ),
        max_size=8,
    )
)
def test_encode_then_decode_round_trips(events: list[tuple[str, bytes]]) -> None:
    stream = b"".join(encode_frame(event, data) for event, data in events) + encode_comment("ping")
    decoder = SSEDecoder(mode="sse")
    frames = decoder.feed(stream) + decoder.close()
    assert [(frame.event, frame.data) for frame in frames] == events
    assert decoder.comments == 1


@pytest.mark.parametrize("data", [b"a\nb", b"a\rb", b"\n"])
def test_encode_frame_rejects_line_breaks(data: bytes) -> None:
    with pytest.raises(ValueError):
        encode_frame("e", data)
    with pytest.raises(ValueError):
        encode_frame("a\nb", b"x")
    with pytest.raises(ValueError):
        encode_frame("", b"x")
    with pytest.raises(ValueError):
        encode_comment("a\nb")


# -- properties -----------------------------------------------------------------------------------------------------

EOLS = st.sampled_from([b"\n", b"\r", b"\r\n"])
VALUES = st.text(st.characters(blacklist_characters="\r\n"), max_size=12).map(
    lambda text: text.encode("utf-8", "surrogatepass")
)
NAMES = st.sampled_from(
    [b"data", b"data", b"event", b"event", b"id", b"retry", b"foo", b"Data", b" data", b""]
)
RETRY_VALUES = st.one_of(st.integers(0, 10**6).map(lambda n: str(n).encode()), VALUES)
SEPARATORS = st.sampled_from([b":", b": ", b": ", b":  "])


@st.composite
def field_lines(draw: st.DrawFn) -> bytes:
    name = draw(NAMES)
    if name == b"":  # a comment
        return b":" + draw(VALUES)
    if draw(st.integers(0, 9)) == 0:
        return name  # no colon
    value = draw(RETRY_VALUES if name == b"retry" else VALUES)
    if name == b"id" and draw(st.booleans()):
        value += b"\0"
    return name + draw(SEPARATORS) + value


@st.composite
def sse_streams(draw: st.DrawFn) -> bytes:
    # One kind of line end for the whole stream (the fast paths) or any mix (the general parser).
    eols = draw(st.sampled_from([EOLS, st.just(b"\n"), st.just(b"\n"), st.just(b"\r\n"), st.just(b"\r")]))
    parts = [BOM] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.integers(0, 6))
        if kind <= 1:  # the common shapes
            eol = draw(eols)
            data = draw(VALUES)
            event = b"event: " + draw(VALUES) + eol if kind == 0 else b""
            parts.append(event + b"data: " + data + eol + eol)
        elif kind <= 4:
            parts.append(draw(field_lines()) + draw(eols))
        else:
            parts.append(draw(eols))  # a blank line
    if draw(st.booleans()):
        parts.append(draw(field_lines()))  # unterminated: discarded
    return b"".join(parts)


def _check_against_reference(stream: bytes, cuts: list[int], mode: str | None = None) -> None:
    reference = Reference(stream, mode)
    decoder = SSEDecoder(mode=mode)
    whole = decoder.feed(stream) + decoder.close()
    assert whole == reference.frames
    assert (decoder.comments, decoder.last_event_id, decoder.retry) == (
        reference.comments,
        reference.last_event_id,
        reference.retry,
    )
    assert decoder.mode == reference.mode
    split = SSEDecoder(mode=mode)
    assert feed_cuts(split, stream, cuts) == whole
    assert (split.comments, split.last_event_id, split.retry, split.mode) == (
        decoder.comments,
        decoder.last_event_id,
        decoder.retry,
        decoder.mode,
    )


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), stream=sse_streams())
def test_property_any_chunking_equals_whole_and_reference(data: st.DataObject, stream: bytes) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    _check_against_reference(stream, cuts)
    _check_against_reference(stream, list(range(len(stream))))


TOKENS = st.sampled_from(
    [
        b"data",
        b"event",
        b"id",
        b"retry",
        b":",
        b": ",
        b" ",
        b"\t",
        b"\r",
        b"\n",
        b"\r\n",
        b"\n\n",
        b"x",
        b"7",
        b"{",
        b"\x00",
        BOM,
        b"\xef",
        b"\xc3\xa9",
        b"\xff",
        b"data: ",
        b"event: e\n",
    ]
)


@settings(max_examples=400)
@given(
    data=st.data(), tokens=st.lists(TOKENS, max_size=40), mode=st.sampled_from([None, None, "sse", "jsonl"])
)
def test_property_token_soup(data: st.DataObject, tokens: list[bytes], mode: str | None) -> None:
    stream = b"".join(tokens)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    _check_against_reference(stream, cuts, mode)


@settings(max_examples=200)
@given(data=st.data(), stream=sse_streams(), limit=st.integers(1, 40))
def test_property_size_limit_is_chunking_independent(data: st.DataObject, stream: bytes, limit: int) -> None:
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    outcomes: list[list[Frame] | int] = []  # the frames, or the offset of the SSEError
    for chunks in ([], cuts, list(range(len(stream)))):
        try:
            outcomes.append(decode(stream, chunks, max_event_size=limit))
        except SSEError as exc:
            outcomes.append(exc.offset)
    assert outcomes[0] == outcomes[1] == outcomes[2]
    if isinstance(outcomes[0], list):
        assert all(len(frame.data) <= limit for frame in outcomes[0])


def test_long_whitespace_start_is_taken_as_sse() -> None:
    # Blank lines in SSE, never a LF: the mode stays undecided until a line longer than any allowed one.
    decoder = SSEDecoder(max_event_size=10)
    frames: list[Frame] = []
    for _ in range(100):
        frames += decoder.feed(b"\r")
    assert decoder.mode == "sse"
    assert frames == []
    assert decoder.feed(b"data: x\n\n") == [Frame(None, b"x")]


# -- the fast path of the common shapes (_feed_lines, _scan: event by event over a chunk's lines) -----------------

PERTURBATIONS = st.sampled_from(
    [
        b": keep-alive\n",  # a comment between events
        b"id: 7\n",  # fields that set state visible in the frame or the decoder
        b"retry: 1500\n",
        b"event:x\ndata:y\n\n",  # no space after the colon
        b"event: \ndata: e\n\n",  # an empty event name is absent
        b"\n",  # a blank line with nothing pending
        b"data: c\r\n\r\n",  # a CR: the line-end-checking path
        b"data: lone\rcr\n\n",  # a lone CR ends a line
        b"event: e\nid: 3\ndata: f\n\n",
        b"data: \xef\xbb\xbf{}\n\n",  # a BOM-looking payload (not at the stream start)
    ]
)
# Unusual events whose lines fall on the stride of the shape around them (3 lines an event, or 2): only the
# line-by-line reading tells them apart from that shape.
NAMED_TRAPS = st.sampled_from(
    [
        b"event: a\ndata: b\nid: 1\nevent: c\ndata: d\n\n",
        b"event: a\ndata: b\n: note\nevent: c\ndata: d\n\n",
        b"event: x\nretry: 10\n\n",
        b"event: x\ndata:y\n\n",
        b"event:x\ndata: y\n\n",
        b"event: x\ndata: a\ndata: b\ndata: c\nevent: y\n\n",
        b"id: 5\ndata: y\n\n",
        b": c\ndata: y\n\n",
        b"events: a\ndata: y\n\n",
        # The same name as a run's (so that one prefix starts every block), and a second line end in the block.
        b"event: e\ndata: a\ndata: b\n\n",
        b"event: e\ndata: a\nid: 1\n\n",
        b"event: e\ndata: a\n\n\n",
    ]
)
DATA_TRAPS = st.sampled_from(
    [b"data:y\n\n", b"data: a\ndata: b\ndata: c\n\n", b"data: a\n: note\ndata: b\n\n", b"data: a\nid: 2\n\n"]
)


@st.composite
def uniform_streams(draw: st.DrawFn) -> tuple[bytes, bool]:
    """Runs of the two common shapes (``event: X / data: Y`` and ``data: Y``), one of them for the whole stream or
    a mix, with at most one unusual line or event (often one that falls on the stride of the shape around it);
    and whether the stream holds nothing but those shapes, with LF line ends."""
    parts = [BOM] if draw(st.booleans()) else []
    names = draw(st.lists(st.sampled_from([b"response.output_text.delta", b"e", b"\xc3\xa9t\xc3\xa9"]), min_size=1))
    mixed = draw(st.booleans())
    named = draw(st.booleans())
    runs = draw(st.integers(1, 4))
    odd_one = draw(st.integers(-1, runs - 1))  # after which run the unusual part comes (-1: none)
    for run in range(runs):
        if mixed:
            named = draw(st.booleans())
        for _ in range(draw(st.integers(1, 30))):
            data = b'{"delta":"' + draw(VALUES).replace(b"\\", b"").replace(b'"', b"") + b'"}'
            head = b"event: " + draw(st.sampled_from(names)) + b"\n" if named else b""
            parts.append(head + b"data: " + data + b"\n\n")
        if run == odd_one:
            parts.append(draw(st.one_of(NAMED_TRAPS if named else DATA_TRAPS, PERTURBATIONS)))
    if draw(st.integers(0, 3)) == 0:
        parts.append(b"event: cut\ndata: unterminated")
    return b"".join(parts), odd_one < 0


class _LineParserOnly(SSEDecoder):
    """An SSEDecoder whose LF fast paths (``feed_columns``' one-call path, ``_feed_lines``, and ``_blocks``) are
    the full WHATWG line parser (what the fast paths must equal). A subclass, not patched methods: the compiled build's
    classes take no instance attributes, but call an interpreted subclass's overrides."""

    def _feed_lines(self, chunk: bytes) -> None:
        return None

    def _blocks(self, region: bytes) -> None:
        self._general(region, 0)


class _CountingMixedBlocks(SSEDecoder):
    """An SSEDecoder that records each region its event-by-event path (``_blocks_each``) is given."""

    def __init__(self) -> None:
        super().__init__()
        self.each: list[list[bytes]] = []

    def _blocks_each(self, lines: list[bytes]) -> None:
        self.each.append(lines)
        super()._blocks_each(lines)


def _slow_decoder() -> SSEDecoder:
    return _LineParserOnly()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), case=uniform_streams())
def test_property_column_fast_path_equals_the_line_parser(data: st.DataObject, case: tuple[bytes, bool]) -> None:
    stream, plain = case
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=16))
    slow = _slow_decoder()
    expected = feed_cuts(slow, stream, cuts)
    assert expected == Reference(stream).frames
    fast = _CountingMixedBlocks()
    assert feed_cuts(fast, stream, cuts) == expected
    assert (fast.comments, fast.last_event_id, fast.retry) == (slow.comments, slow.last_event_id, slow.retry)
    if plain and not cuts:
        assert fast.each == []  # fed whole, a stream of the common shapes, in any mix, never leaves the fast path
    columns = SSEDecoder()
    names: list[str | None] = []
    payloads: list[bytes] = []
    start = 0
    for cut in [*sorted(cuts), len(stream)]:
        more_names, more_data = columns.feed_columns(stream[start:cut])
        names += more_names
        payloads += more_data
        start = max(start, cut)
    tail = columns.close()
    assert (names + [f.event for f in tail], payloads + [f.data for f in tail]) == (
        [f.event for f in expected],
        [f.data for f in expected],
    )


def test_column_fast_path_on_a_real_capture_in_4k_chunks() -> None:
    lines = (CAPTURES / "openai-mcp-tool.1.jsonl").read_bytes().splitlines()
    import json

    stream = b"".join(encode_frame(json.loads(line)["type"], line) for line in lines if line.strip())
    cuts = list(range(4096, len(stream), 4096))
    assert feed_cuts(SSEDecoder(), stream, cuts) == feed_cuts(_slow_decoder(), stream, cuts) == Reference(stream).frames


class _GeneralPathWatched(SSEDecoder):
    """An SSEDecoder whose general machinery (``_feed``) fails the test once ``general_allowed`` is False."""

    general_allowed = True

    def _feed(self, chunk: bytes) -> None:
        assert self.general_allowed, "the chunk left feed_columns' one-call path"
        super()._feed(chunk)


@pytest.mark.parametrize("pad", [0, 300])
def test_chunks_of_whole_common_events_take_the_one_call_path(pad: int) -> None:
    # Once the stream has started, every chunk here ends at least one event of the common shapes (after the
    # start of one kept from the chunk before): feed_columns frames each in that one call and never reaches the
    # general machinery (``_feed``), whatever the names. (pad: chunks short enough to be cut with bytes.split,
    # and long enough to be cut one memchr a line, sse._lines.)
    fill = b"x" * pad
    events = [b"event: e%d\ndata: {\"n\":%d,\"f\":\"%s\"}\n\n" % (i % 3, i, fill) for i in range(40)]
    events += [b"data: {\"n\":%d,\"f\":\"%s\"}\n\n" % (i, fill) for i in range(40)]
    stream = b"".join(events)
    ends = [sum(map(len, events[: i + 1])) for i in range(len(events))]
    decoder = _GeneralPathWatched()
    frames = decoder.feed(stream[: ends[0]])  # the start of the stream (BOM, mode) goes the general way
    decoder.general_allowed = False
    start = ends[0]
    for end in ends[2::2]:
        frames += decoder.feed(stream[start : end - 5])  # cut inside every other event
        start = end - 5
    frames += decoder.feed(stream[start:]) + decoder.close()
    assert frames == Reference(stream).frames
    assert [f.event for f in frames[:4]] == ["e0", "e1", "e2", "e0"]
    assert frames[-1] == Frame(None, b'{"n":39,"f":"%s"}' % fill)


@given(st.binary(max_size=600), st.binary(min_size=1, max_size=3).map(lambda b: b.replace(b"\n", b"")))
def test_region_lines_are_split_at_lf_with_the_lfs_kept(body: bytes, filler: bytes) -> None:
    region = body.replace(filler, b"\n") if filler else body
    pieces = region.split(b"\n")
    assert _lines(region) == [piece + b"\n" for piece in pieces[:-1]] + [pieces[-1]]


@pytest.mark.parametrize(
    "tail",
    [
        b"event: e\n",  # the start of an event whose first line is complete: kept whole
        b"event: e\ndata: {\"n\":",  # ... and a partial second line: kept whole
        b"event: e\ndata: {\"n\":9}\n",  # two complete lines: applied now, the blank line comes next chunk
        b"id: 4\n",  # a line that changes visible state: applied now (last_event_id)
        b": ping\n",  # a comment: counted now
        b"data: " + b"x" * 120,  # longer than the kept start may be (max_event_size=160 here)
    ],
)
@pytest.mark.parametrize("events", [3, 30])  # a chunk cut with bytes.split, and one cut by sse._lines
def test_one_call_path_tail_after_whole_events(tail: bytes, events: int) -> None:
    # The chunk completes whole common events and ends inside the next one: feed_columns takes its one-call
    # path and decides there (not in `_rest`) whether to keep that tail whole or apply its lines now.
    head = b"".join(b"event: e\ndata: {\"n\":%d}\n\n" % i for i in range(events))
    stream = head + tail + b"\n\ndata: end\n\n"
    cut = len(head) + len(tail)
    decoder = SSEDecoder(max_event_size=160 if events == 3 else 2000)
    decoder.feed(b"data: first\n\n")  # past the start of the stream: mode known, the fast path ready
    first = decoder.feed(stream[:cut])
    assert [f.data for f in first] == [b'{"n":%d}' % i for i in range(events)]
    if tail.startswith(b"id: "):
        assert decoder.last_event_id == "4"
    assert decoder.comments == (1 if tail.startswith(b":") else 0)
    frames = first + decoder.feed(stream[cut:]) + decoder.close()
    assert frames == Reference(b"data: first\n\n" + stream).frames[1:]
