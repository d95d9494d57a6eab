"""The client's API against a real headwater server on loopback (scripted backend), and against canned answers for
what a healthy headwater never says (429, 5xx, odd error bodies): typed responses and events, live snapshots,
answers that are not crashes, typed errors, retries with ``Retry-After``, every endpoint, sync and async."""

from __future__ import annotations

import email.utils
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from headwater.client import (
    APIConnectionError,
    APITimeoutError,
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    Client,
    NotFoundError,
    RateLimitError,
    ServerError,
    StreamError,
)
from headwater.protocol.conformance import check
from headwater.protocol.events import ErrorEvent, ResponseFailed, ResponseOutputTextDelta
from headwater.protocol.resources import Response
from headwater.server.app import create_app
from headwater.server.backends.base import BackendError, Finish, TextDelta, ToolCallDelta, UsageStep
from headwater.server.backends.scripted import Fail, Pause, ScriptedBackend, ScriptItem
from headwater.server.config import ServerConfig
from headwater.server.store import MemoryStore
from test_client_harness import Canned, CannedServer, Recorded, canned_servers, json_answer, sse

HELLO: list[ScriptItem] = [TextDelta("Hello"), TextDelta(", "), TextDelta("world"), UsageStep(7, 3), Finish("stop")]
Serve = Callable[[Callable[[Recorded, int], Canned]], CannedServer]


@pytest.fixture
def canned() -> Iterator[Serve]:
    yield from canned_servers()


@pytest.fixture
def headwater(serve: Callable[[Any], Any]) -> Callable[..., tuple[str, ScriptedBackend]]:
    """``headwater(steps, api_keys=...)``: a real server playing ``steps``; returns its /v1 URL and backend."""

    def start(steps: list[ScriptItem] | None = None, *, api_keys: tuple[str, ...] = ()) -> tuple[str, ScriptedBackend]:
        backend = ScriptedBackend(HELLO if steps is None else steps, models=["scripted-1"])
        config = ServerConfig.with_keys(api_keys, store="memory")
        live = serve(create_app(config, backend=backend, store=MemoryStore()))
        return live.url + "/v1", backend

    return start


class RecordingClient(Client):
    """A client that records the waits it decides on instead of sleeping them."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.slept: list[float] = []

    def _sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


# --- responses -----------------------------------------------------------------------------------------------


def test_create_returns_a_typed_response(headwater: Callable[..., tuple[str, ScriptedBackend]]) -> None:
    url, _ = headwater()
    with Client(base_url=url) as client:
        response = client.responses.create(model="scripted-1", input="hi")
    assert isinstance(response, Response)
    assert response.status == "completed" and response.usage is not None and response.usage.output_tokens == 3
    assert response.output[0].content[0].text == "Hello, world"  # type: ignore[union-attr]


def test_every_response_has_output_text_as_in_openai_python(
    headwater: Callable[..., tuple[str, ScriptedBackend]],
) -> None:
    url, _ = headwater()
    with Client(base_url=url) as client:
        created = client.responses.create(model="scripted-1", input="hi")
        retrieved = client.responses.retrieve(created.id)
        with client.responses.stream(model="scripted-1", input="hi") as stream:
            streamed = stream.get_final_response()
    assert created.output_text == retrieved.output_text == streamed.output_text == "Hello, world"


def test_a_stream_asked_for_after_its_last_event_is_empty_not_an_error(
    headwater: Callable[..., tuple[str, ScriptedBackend]],
) -> None:
    url, _ = headwater()
    with Client(base_url=url) as client:
        with client.responses.stream(model="scripted-1", input="hi") as stream:
            stream.get_final_response()
            last = stream.last_sequence_number
        assert last is not None
        after_the_end = client.responses.retrieve(stream.response_id, stream=True, starting_after=last)
        assert list(after_the_end) == []
        assert after_the_end.resumes == 0 and after_the_end.retries == 0  # no rounds of resume attempts


async def test_async_a_stream_asked_for_after_its_last_event_is_empty(
    headwater: Callable[..., tuple[str, ScriptedBackend]],
) -> None:
    url, _ = headwater()
    async with AsyncClient(base_url=url) as client:
        response = await client.responses.create(model="scripted-1", input="hi")
        events = [event async for event in await client.responses.retrieve(response.id, stream=True)]
        tail = await client.responses.retrieve(response.id, stream=True, starting_after=events[-1].sequence_number)
        assert [event async for event in tail] == [] and tail.resumes == 0


def test_stream_shows_the_snapshot_as_it_grows(headwater: Callable[..., tuple[str, ScriptedBackend]]) -> None:
    url, _ = headwater()
    texts = []
    with Client(base_url=url) as client, client.responses.stream(model="scripted-1", input="hi") as stream:
        events = []
        for event in stream:
            events.append(event)
            if isinstance(event, ResponseOutputTextDelta):
                texts.append(stream.output_text)
        final = stream.get_final_response()
    assert texts == ["Hello", "Hello, ", "Hello, world"]
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert check(events) == [] and final.status == "completed" and stream.snapshot is final
    assert (stream.resumes, stream.retries, stream.repairs) == (0, 0, [])


def test_function_calls_so_far(headwater: Callable[..., tuple[str, ScriptedBackend]]) -> None:
    url, _ = headwater([ToolCallDelta(0, '{"city":', call_id="c1", name="weather"), ToolCallDelta(0, '"Oslo"}'),
                        Finish("tool_calls")])
    with Client(base_url=url) as client:
        stream = client.responses.create(model="scripted-1", input="hi", stream=True)
        seen = [[call.arguments for call in stream.function_calls] for _ in stream]
    assert ['{"city":'] in seen
    assert stream.function_calls[0].name == "weather" and stream.function_calls[0].arguments == '{"city":"Oslo"}'


def test_incomplete_is_an_answer_with_its_reason(headwater: Callable[..., tuple[str, ScriptedBackend]]) -> None:
    url, _ = headwater([TextDelta("Hel"), Finish("length")])
    with Client(base_url=url) as client:
        final = client.responses.create(model="scripted-1", input="hi", stream=True).get_final_response()
    assert final.status == "incomplete" and final.incomplete_details is not None
    assert final.incomplete_details.reason == "max_output_tokens"


def test_an_error_event_raises_stream_error_at_the_end(headwater: Callable[..., tuple[str, ScriptedBackend]]) -> None:
    url, _ = headwater([TextDelta("partial"), Fail(BackendError("the upstream fell over", code="upstream_error"))])
    events = []
    with Client(base_url=url) as client:
        stream = client.responses.create(model="scripted-1", input="hi", stream=True)
        with pytest.raises(StreamError) as caught:
            for event in stream:
                events.append(event)
    # Every event was delivered first, the terminal one included; the error carries the final response.
    assert isinstance(events[-2], ErrorEvent) and isinstance(events[-1], ResponseFailed)
    error = caught.value
    assert error.code == "upstream_error" and error.message == "the upstream fell over"
    assert error.response is not None and error.response.status == "failed"
    assert error.response.output[0].content[0].text == "partial"  # type: ignore[union-attr]
    with pytest.raises(StreamError):
        stream.get_final_response()


async def test_async_client_streams_and_creates(headwater: Callable[..., tuple[str, ScriptedBackend]]) -> None:
    url, _ = headwater()
    async with AsyncClient(base_url=url) as client:
        response = await client.responses.create(model="scripted-1", input="hi")
        async with client.responses.stream(model="scripted-1", input="hi") as stream:
            deltas = [delta async for delta in stream.text_deltas()]
            final = await stream.get_final_response()
        again = await client.responses.retrieve(final.id)
        models = await client.models.list()
    assert response.status == "completed" and deltas == ["Hello", ", ", "world"]
    assert again.output == final.output and [m.id for m in models.data] == ["scripted-1"]


def test_retrieve_delete_input_items_models(headwater: Callable[..., tuple[str, ScriptedBackend]]) -> None:
    url, _ = headwater()
    with Client(base_url=url) as client:
        first = client.responses.create(model="scripted-1", input=[
            {"type": "message", "role": "user", "content": f"message {i}"} for i in range(3)
        ])
        assert client.responses.retrieve(first.id).output == first.output
        page = client.responses.input_items.list(first.id, limit=2, order="asc")
        assert len(page.data) == 2 and page.has_more
        rest = client.responses.input_items.list(first.id, after=page.last_id, order="asc")
        assert len(rest.data) == 1 and not rest.has_more
        assert [m.id for m in client.models.list().data] == ["scripted-1"]
        events = list(client.responses.retrieve(first.id, stream=True, starting_after=3))
        assert events[0].sequence_number == 4 and events[-1].type == "response.completed"
        assert client.responses.delete(first.id).deleted
        with pytest.raises(NotFoundError) as caught:
            client.responses.retrieve(first.id)
    assert caught.value.status_code == 404 and caught.value.code == "not_found" and first.id in caught.value.message


def test_cancel_a_background_response(headwater: Callable[..., tuple[str, ScriptedBackend]]) -> None:
    url, _ = headwater([TextDelta("slow"), Pause(30), TextDelta("never"), Finish("stop")])
    with Client(base_url=url) as client:
        started = client.responses.create(model="scripted-1", input="hi", background=True)
        cancelled = client.responses.cancel(started.id)
        assert cancelled.status == "cancelled"
        final = client.responses.retrieve(started.id, stream=True).get_final_response()
    # Known by its status; no incomplete reason OpenAI's types would refuse.
    assert final.status == "cancelled" and final.incomplete_details is None


# --- errors --------------------------------------------------------------------------------------------------


def test_bad_request_carries_message_code_and_param(headwater: Callable[..., tuple[str, ScriptedBackend]]) -> None:
    url, _ = headwater()
    with Client(base_url=url) as client, pytest.raises(BadRequestError) as caught:
        client.responses.create(model="scripted-1", input="hi", temperature="hot")
    error = caught.value
    assert error.status_code == 400 and error.param == "temperature" and error.message
    assert error.type == "invalid_request_error"


def test_wrong_api_key_is_an_authentication_error(headwater: Callable[..., tuple[str, ScriptedBackend]]) -> None:
    url, _ = headwater(api_keys=("right",))
    with Client(base_url=url, api_key="wrong") as client, pytest.raises(AuthenticationError) as caught:
        client.responses.create(model="scripted-1", input="hi", stream=True)
    assert caught.value.code == "invalid_api_key"
    with Client(base_url=url, api_key="right") as client:
        assert client.responses.create(model="scripted-1", input="hi").status == "completed"


def test_a_retrieve_stream_refused_before_any_event_raises_the_status_error(
    headwater: Callable[..., tuple[str, ScriptedBackend]],
) -> None:
    url, _ = headwater(api_keys=("right",))
    with Client(base_url=url, api_key="right") as client, pytest.raises(NotFoundError):
        client.responses.retrieve("resp_nope", stream=True)
    with Client(base_url=url, api_key="wrong") as client, pytest.raises(AuthenticationError):
        client.responses.retrieve("resp_nope", stream=True)


def test_api_key_and_base_url_come_from_the_environment(canned: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    server = canned(lambda request, n: json_answer(200, b'{"object": "list", "data": []}'))
    monkeypatch.setenv("HEADWATER_BASE_URL", server.url + "/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "from-openai")
    Client().models.list()
    monkeypatch.setenv("HEADWATER_API_KEY", "from-headwater")
    Client().models.list()
    Client(api_key="explicit").models.list()
    assert [r.headers["authorization"] for r in server.requests] == [
        "Bearer from-openai", "Bearer from-headwater", "Bearer explicit"]
    assert server.requests[0].path == "/v1/models"


def test_cannot_connect_is_a_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = RecordingClient(base_url=f"http://127.0.0.1:{port}/v1", max_retries=2)
    with pytest.raises(APIConnectionError) as caught:
        client.responses.create(model="m", input="hi", stream=True)
    assert f"cannot connect to http://127.0.0.1:{port}/v1/responses" in str(caught.value)
    assert len(client.slept) == 2  # two retries, with backoff


def test_a_silent_server_is_a_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        client = RecordingClient(base_url=f"http://127.0.0.1:{port}/v1", timeout=0.2, max_retries=1)
        with pytest.raises(APITimeoutError):
            client.responses.create(model="m", input="hi")
        assert len(client.slept) == 1


def rate_limited_once(retry_after: str, then: Canned) -> Callable[[Recorded, int], Canned]:
    def answer(request: Recorded, n: int) -> Canned:
        if n == 0:
            return json_answer(429, b'{"error": {"type": "rate_limit_error", "code": "rate_limited", '
                                    b'"message": "slow down", "param": null}}', **{"retry-after": retry_after})
        return then

    return answer


def test_429_with_retry_after_seconds_is_retried_after_that_wait(canned: Serve) -> None:
    ok = json_answer(200, b'{"id": "resp_1", "object": "response", "status": "completed", "output": []}')
    server = canned(rate_limited_once("1", ok))
    client = RecordingClient(base_url=server.url + "/v1")
    assert client.responses.create(model="m", input="hi").id == "resp_1"
    assert client.slept == [1.0] and len(server.requests) == 2


def test_429_with_retry_after_as_a_date_on_a_stream(canned: Serve) -> None:
    body = (__import__("pathlib").Path(__file__).parent / "fixtures/sloppy/mismatched-event-names.sse").read_bytes()
    when = email.utils.formatdate(time.time() + 3, usegmt=True)
    server = canned(rate_limited_once(when, sse(body)))
    client = RecordingClient(base_url=server.url + "/v1")
    stream = client.responses.create(model="m", input="hi", stream=True)
    assert stream.get_final_response().status == "completed" and stream.retries == 1
    assert len(client.slept) == 1 and 0 <= client.slept[0] <= 3  # the date, less the time already passed


def test_a_retry_after_beyond_the_limit_is_raised_not_waited(canned: Serve) -> None:
    server = canned(rate_limited_once("3600", json_answer(200, b"{}")))
    client = RecordingClient(base_url=server.url + "/v1")
    with pytest.raises(RateLimitError) as caught:
        client.responses.create(model="m", input="hi")
    assert caught.value.retry_after == 3600 and caught.value.message == "slow down" and client.slept == []


def test_5xx_is_retried_then_raised_as_server_error(canned: Serve) -> None:
    server = canned(lambda request, n: Canned(502, {"content-type": "text/plain"}, b"bad gateway"))
    client = RecordingClient(base_url=server.url + "/v1", max_retries=3, backoff=0.5, backoff_max=1.0)
    with pytest.raises(ServerError) as caught:
        client.responses.create(model="m", input="hi", stream=True)
    assert caught.value.status_code == 502 and caught.value.message == "bad gateway"
    assert len(server.requests) == 4
    # Exponential backoff with up to 25% jitter, capped.
    assert 0.375 <= client.slept[0] <= 0.5 and 0.75 <= client.slept[1] <= 1.0 and 0.75 <= client.slept[2] <= 1.0


# --- dedup, with an injected transport ---------------------------------------------------------------------


def test_events_replayed_after_a_reconnect_are_dropped() -> None:
    """A server that ignores ``starting_after`` and replays from the start: the caller still sees each event once."""
    body = (__import__("pathlib").Path(__file__).parent / "fixtures/sloppy/no-terminal-event.sse").read_bytes()
    completed = (b'event: response.completed\ndata: {"type":"response.completed","sequence_number":10,"response":'
                 b'{"id":"resp_sloppy1","status":"completed","output":[]}}\n\n')
    seen: list[httpx.Request] = []

    def broken(data: bytes) -> Iterator[bytes]:
        yield data[: len(data) // 2]
        raise httpx.ReadError("connection reset by peer")

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST":
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=broken(body))
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body + completed)

    with Client(base_url="http://provider.test/v1", transport=httpx.MockTransport(handler), backoff=0.001) as client:
        stream = client.responses.create(model="m", input="hi", stream=True)
        events = list(stream)
    assert [e.sequence_number for e in events] == list(range(11))
    assert stream.resumes == 1 and stream._machine.duplicates_dropped > 0
    assert seen[1].url.params["starting_after"] == str(stream._machine.duplicates_dropped - 1)


def test_an_injected_http_client_is_used_and_left_open() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(200, json={"object": "list", "data": [{"id": "m1", "object": "model"}]})

    http = httpx.Client(transport=httpx.MockTransport(handler))
    with Client(base_url="http://x.test/v1", http_client=http) as client:
        assert client.models.list().data[0].id == "m1"
    assert calls == ["/v1/models"] and not http.is_closed
    http.close()


