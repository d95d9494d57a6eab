"""Compatibility mode on hand-written sloppy streams (tests/fixtures/sloppy), served over real HTTP from a loopback
server: the repaired stream passes ``headwater.check`` with zero findings and ``repairs`` says what was fixed.
Without compatibility mode the same streams are refused or fail the checker, so each fixture is really sloppy."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from headwater.client import AsyncClient, Client, StreamInterruptedError
from headwater.client.compat import Repairer
from headwater.protocol.conformance import check
from headwater.protocol.errors import DecodeError
from headwater.protocol.events import Event
from test_client_harness import Canned, CannedServer, Recorded, canned_servers, json_answer, sse

SLOPPY = Path(__file__).parent / "fixtures" / "sloppy"

Serve = Callable[[Callable[[Recorded, int], Canned]], CannedServer]


@pytest.fixture
def canned() -> Iterator[Serve]:
    yield from canned_servers()


def serving(canned: Serve, name: str) -> CannedServer:
    body = (SLOPPY / name).read_bytes()
    return canned(lambda request, n: sse(body) if request.method == "POST" else json_answer(404, b'{"error": {}}'))


def repaired(server: CannedServer, **options: object) -> tuple[list[Event], list[str], str]:
    with Client(base_url=server.url + "/v1", backoff=0.001, **options) as client:  # type: ignore[arg-type]
        stream = client.responses.create(model="llama3.2:3b", input="hi", stream=True, compat=True)
        events = list(stream)
        final = stream.get_final_response()
    findings = check(events)
    assert findings == [], "\n".join(map(str, findings))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    return events, stream.repairs, final.status


def test_missing_sequence_numbers_are_assigned(canned: Serve) -> None:
    events, repairs, status = repaired(serving(canned, "no-sequence-numbers.sse"))
    assert status == "completed" and len(events) == 11
    assert repairs == ["11 event(s) had no sequence_number: numbered in stream order"]


def test_mismatched_sse_event_names_trust_the_data_type(canned: Serve) -> None:
    events, repairs, status = repaired(serving(canned, "mismatched-event-names.sse"))
    assert status == "completed"
    assert [e.type for e in events][4:7] == ["response.output_text.delta"] * 3
    assert repairs == [
        "5 event(s) had an SSE event name differing from data.type (first: `event: message` for data.type "
        "'response.in_progress'): data.type trusted"
    ]


def test_missing_output_index_is_inferred_from_item_id(canned: Serve) -> None:
    events, repairs, status = repaired(serving(canned, "no-output-index.sse"))
    assert status == "completed"
    indexes = {getattr(e, "item_id", None): getattr(e, "output_index", None) for e in events}
    assert indexes["msg_1"] == 0 and indexes["fc_1"] == 1
    assert len(repairs) == 1 and repairs[0].startswith("9 event(s) had no output_index (first: ")


def test_a_stream_without_terminal_event_gets_one_from_the_snapshot(canned: Serve) -> None:
    events, repairs, status = repaired(serving(canned, "no-terminal-event.sse"))
    assert status == "completed" and events[-1].type == "response.completed"
    final = events[-1].response  # type: ignore[union-attr]
    assert final.id == "resp_sloppy1" and [item.id for item in final.output] == ["msg_1"]
    assert repairs == [
        "the stream ended without a terminal event: synthesized response.completed from the accumulated snapshot"
    ]


def test_a_stream_cut_mid_message_is_closed_as_incomplete(canned: Serve) -> None:
    events, repairs, status = repaired(serving(canned, "cut-mid-message.sse"))
    assert status == "incomplete"
    assert [e.type for e in events[6:]] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    final = events[-1].response  # type: ignore[union-attr]
    assert final.incomplete_details.reason == "interrupted"
    assert final.output[0].content[0].text == "Hello, "  # what arrived, nothing invented
    assert repairs == [
        "1 item(s) were still open when the stream ended (first: item 'msg_1' at output_index 0): closed as "
        "incomplete",
        "the stream ended without a terminal event: synthesized response.incomplete from the accumulated snapshot",
    ]


async def test_the_async_client_repairs_the_same_way(canned: Serve) -> None:
    server = serving(canned, "no-output-index.sse")
    async with AsyncClient(base_url=server.url + "/v1", compat=True) as client:
        stream = await client.responses.create(model="m", input="hi", stream=True)
        events = [event async for event in stream]
    assert check(events) == [] and stream.repairs and stream.function_calls[0].arguments == '{"city":"Oslo"}'


# --- without compatibility mode, each fixture is what it claims to be ----------------------------------------


@pytest.mark.parametrize(
    ("name", "rules"),
    [
        ("no-sequence-numbers.sse", {"SEQ-PRESENT"}),
        ("mismatched-event-names.sse", {"SSE-NAME"}),
    ],
)
def test_strict_mode_delivers_sloppy_streams_as_they_are(canned: Serve, name: str, rules: set[str]) -> None:
    with Client(base_url=serving(canned, name).url + "/v1") as client:
        events = list(client.responses.create(model="m", input="hi", stream=True))
    assert {finding.rule_id for finding in check(events)} == rules


def test_strict_mode_refuses_events_missing_required_fields(canned: Serve) -> None:
    with Client(base_url=serving(canned, "no-output-index.sse").url + "/v1") as client, pytest.raises(DecodeError):
        list(client.responses.create(model="m", input="hi", stream=True))


def test_strict_mode_treats_a_missing_terminal_event_as_a_drop(canned: Serve) -> None:
    server = serving(canned, "no-terminal-event.sse")
    with Client(base_url=server.url + "/v1", backoff=0.001) as client, pytest.raises(StreamInterruptedError) as caught:
        list(client.responses.create(model="m", input="hi", stream=True))
    # It tried to resume after the last event it had, and the server does not keep responses.
    assert server.requests[1].method == "GET"
    assert server.requests[1].path == "/v1/responses/resp_sloppy1?stream=true&starting_after=9"
    assert "no longer has it" in str(caught.value)


def test_repairs_are_reported_once_per_kind_with_counts() -> None:
    repairer = Repairer()
    for _ in range(3):
        repairer.repair(None, {"type": "response.output_text.delta", "item_id": "m", "delta": "x"})
    assert repairer.repairs[0] == "3 event(s) had no output_index (first: response.output_text.delta -> " \
        "output_index 0 (as the latest item)): inferred from the item"
    assert len(repairer.repairs) == 3  # output_index, content_index, sequence_number
