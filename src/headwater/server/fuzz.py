"""Fuzzing a running Headwater server: hypothesis strategies for request bodies, query strings and WebSocket
messages, schemathesis cases from the server's own ``/openapi.json``, and the checks every answer must pass (no
5xx, every error in the spec's shape, every stream conformant). Needs the dev extra (hypothesis, schemathesis).

``tests/test_fuzz_server.py`` runs it with bounded example counts in CI; ``bench/fuzz_server.py`` is the long run.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from headwater.protocol.conformance import check
from headwater.protocol.errors import ProtocolError
from headwater.protocol.stream import iter_events

__all__ = ["Fuzzer", "bodies", "json_values", "mutate", "openapi_cases", "queries", "ws_messages"]

MODEL = "scripted-1"
TERMINAL = ("response.completed", "response.incomplete", "response.failed")

# Strings that broke, or could break, a server: digits that are not ASCII, control characters, lone surrogates,
# very long and near-limit values, and the words the protocol gives meaning to.
ODD_STRINGS = [
    "", " ", "٣", "1_0", "+3", " 5", "-1", "0", "9223372036854775808", "1e3", "true", "yes", "null",
    "\x00", "\r\n", "a\r\nx-injected: 1", "é", "\ud800", "\u202e", "\U0001f600", "x" * 65, "x" * 300,
    "function", "message", "auto", "required", "none", "allowed_tools", "web_search", "input_text", "user",
    "assistant", "call_1", "resp_missing", "scripted-1",
]
KEYS = ["type", "name", "role", "content", "text", "tools", "call_id", "output", "arguments", "id", "mode",
        "parameters", "schema", "format", "annotations", "status", "a"]


def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Any JSON value, with a bias towards the odd strings and edge integers."""
    scalars = (
        st.none() | st.booleans() | st.sampled_from(ODD_STRINGS) | st.text(max_size=12)
        | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False, allow_infinity=False)
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8),
                                                                     inner, max_size=4),
        max_leaves=max_leaves,
    )


_DEEP = re.compile(rb'"@@deep:([0-9]+)@@"')


def _nested(levels: int) -> bytes:
    return b'{"a":[' * (levels // 2) + b"1" + b"]}" * (levels // 2)


def _deep() -> st.SearchStrategy[str]:
    """A value nested 55 to 3,000 levels deep: past the limit (64), and past what a decoder can follow (~1,000).
    It stands as a placeholder string until ``_encoded`` writes it out (no encoder can recurse that far)."""
    return st.integers(min_value=55, max_value=3_000).map(lambda n: f"@@deep:{n}@@")


def _sometimes(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly a well-formed value, sometimes any JSON or a value of the wrong type."""
    return st.one_of(good, good, json_values(), st.sampled_from([None, [], {}, "", 0, [1], {"a": 1}]))


_text = st.one_of(st.text(max_size=30), st.sampled_from(ODD_STRINGS))
_part = st.fixed_dictionaries(
    {"type": st.sampled_from(["input_text", "output_text", "refusal", "input_image", "input_file", "summary_text",
                              "nope"])},
    optional={"text": _sometimes(_text), "refusal": _text, "annotations": _sometimes(st.lists(json_values(6),
                                                                                                 max_size=2)),
              "image_url": _text},
)
_content = _sometimes(st.one_of(_text, st.lists(_part, max_size=3)))
_call_id = st.one_of(st.sampled_from(["call_1", "call_2", "call_9"]), _text)
_item = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "developer", "robot"]),
                           "content": _content},
                          optional={"type": st.just("message"), "id": _text, "status": _text, "phase": _text}),
    st.fixed_dictionaries({"type": st.just("function_call"), "call_id": _sometimes(_call_id),
                           "name": _sometimes(st.sampled_from(["weather", "f", "has space", ""])),
                           "arguments": _sometimes(st.just('{"city": "Oslo"}'))}),
    st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": _sometimes(_call_id),
                           "output": _content}),
    st.fixed_dictionaries({"type": st.sampled_from(["reasoning", "compaction", "item_reference", "bogus"])},
                          optional={"summary": st.lists(_part, max_size=2), "encrypted_content": _text,
                                    "id": _text}),
    json_values(6),
)
_function_tool = st.fixed_dictionaries(
    {"type": st.just("function"), "name": _sometimes(st.sampled_from(["weather", "f", "lookup_2", "bad name"]))},
    optional={"description": _sometimes(_text), "parameters": st.one_of(
        st.just({"type": "object", "properties": {"city": {"type": "string"}}}), json_values(8), _deep()),
              "strict": _sometimes(st.booleans())},
)
_tool = st.one_of(_function_tool, _function_tool, st.fixed_dictionaries({"type": _text}), json_values(6))
_tool_choice = st.one_of(
    st.sampled_from(["auto", "none", "required", "sometimes"]),
    st.fixed_dictionaries({"type": st.just("function"), "name": _sometimes(st.just("weather"))}),
    st.fixed_dictionaries({"type": st.just("allowed_tools"), "mode": _sometimes(st.just("auto")),
                           "tools": _sometimes(st.lists(st.fixed_dictionaries(
                               {"type": _sometimes(st.just("function")), "name": _sometimes(st.just("f"))}),
                               max_size=3))}),
    json_values(6),
)
_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "model": _sometimes(st.just(MODEL)),
    "input": _sometimes(st.one_of(_text, st.lists(_item, max_size=4))),
    "instructions": _sometimes(_text),
    "previous_response_id": _sometimes(st.sampled_from(["resp_missing", "resp_1", ""])),
    "store": _sometimes(st.booleans()),
    "stream": _sometimes(st.booleans()),
    "background": _sometimes(st.booleans()),
    "stream_options": _sometimes(st.fixed_dictionaries({"include_obfuscation": st.booleans()})),
    "max_output_tokens": _sometimes(st.integers(min_value=-5, max_value=5000)),
    "max_tool_calls": _sometimes(st.integers(min_value=-1, max_value=5)),
    "temperature": _sometimes(st.floats(min_value=-1, max_value=3)),
    "top_p": _sometimes(st.floats(min_value=-1, max_value=2)),
    "tools": _sometimes(st.lists(_tool, max_size=4)),
    "tool_choice": _tool_choice,
    "parallel_tool_calls": _sometimes(st.booleans()),
    "metadata": _sometimes(st.dictionaries(_text, _text, max_size=3)),
    "text": _sometimes(st.fixed_dictionaries({}, optional={"format": st.one_of(
        st.just({"type": "text"}), st.fixed_dictionaries({"type": st.just("json_schema"), "name": _text,
                                                          "schema": json_values(8)}), json_values(4)),
        "verbosity": _text})),
    "reasoning": _sometimes(st.fixed_dictionaries({}, optional={"effort": _text, "summary": _text})),
    "truncation": _sometimes(st.sampled_from(["auto", "disabled"])),
    "include": _sometimes(st.lists(_text, max_size=3)),
    "service_tier": _sometimes(st.sampled_from(["auto", "default", "flex"])),
    "unknown_field": json_values(6),
}


# Values that pass validation, so that a good share of requests reach the model, the store and the chain.
_GOOD: dict[str, st.SearchStrategy[Any]] = {
    "instructions": _text,
    "previous_response_id": st.just("resp_1"),
    "store": st.booleans(),
    "stream": st.booleans(),
    "background": st.just(False),
    "max_output_tokens": st.integers(min_value=16, max_value=64),
    "temperature": st.floats(min_value=0, max_value=2),
    "tools": st.lists(_function_tool, max_size=2),
    "tool_choice": st.sampled_from(["auto", "none"]),
    "metadata": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=2),
}


def _body_objects() -> st.SearchStrategy[dict[str, Any]]:
    anything = st.fixed_dictionaries({}, optional=_FIELDS)
    mostly_good = st.fixed_dictionaries(
        {"model": st.just(MODEL), "input": st.one_of(_text, st.lists(_item, min_size=1, max_size=3))},
        optional=_GOOD)
    return st.one_of(anything, mostly_good, mostly_good)


def _encoded(obj: Any) -> bytes:
    data = json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return _DEEP.sub(lambda match: _nested(int(match.group(1))), data)


def bodies() -> st.SearchStrategy[bytes]:
    """``POST /v1/responses`` bodies: mostly objects of known fields with good and bad values, some nested very
    deeply, some not JSON at all (truncated, invalid UTF-8, random bytes)."""
    objects = _body_objects()
    deep_field = st.tuples(st.sampled_from(sorted(_FIELDS)), _deep()).map(
        lambda pair: {"model": MODEL, "input": "hi", pair[0]: pair[1]})
    broken = st.one_of(
        st.binary(max_size=64),
        objects.map(_encoded).flatmap(lambda data: st.integers(0, max(len(data) - 1, 0)).map(lambda n: data[:n])),
        objects.map(_encoded).map(lambda data: data.replace(b"\"", b"\xff\"", 1)),
        json_values().map(_encoded),
    )
    return st.one_of(objects.map(_encoded), objects.map(_encoded), objects.map(_encoded), deep_field.map(_encoded),
                     broken)


def _sendable(text: str) -> str:
    """``text`` without lone surrogates (which no client can put in a URL)."""
    return text.encode("utf-8", "replace").decode("utf-8")


_ODD_VALUES: list[Any] = [None, True, 0, -1, 2**63, 1.5, "", [], {}, [1], {"a": 1}, *ODD_STRINGS]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One cheap variant of a generated body, for the long run to send many per generated one: a field replaced,
    dropped or duplicated at a random place (when ``data`` is JSON), else bytes flipped, cut or repeated."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):  # not JSON, or too deep for json to read back
        obj = None
    if isinstance(obj, dict | list) and obj and rng.random() < 0.8:
        node: Any = obj
        for _ in range(rng.randrange(1, 5)):  # walk down a few levels
            children = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
            containers = [(k, v) for k, v in children if isinstance(v, dict | list) and v]
            if not containers or rng.random() < 0.3:
                break
            node = rng.choice(containers)[1]
        keys: list[Any] = list(node) if isinstance(node, dict) else list(range(len(node)))
        if keys:
            key = rng.choice(keys)
            action = rng.random()
            if action < 0.6:
                node[key] = rng.choice(_ODD_VALUES)
            elif action < 0.8:
                del node[key]
            elif isinstance(node, list):
                node.append(node[key])
            else:
                node[key + "_"] = node[key]
        return _encoded(obj)
    if not data:
        return bytes([rng.randrange(256)])
    cut = rng.randrange(len(data))
    action = rng.random()
    if action < 0.4:
        return data[:cut] + bytes([rng.randrange(256)]) + data[cut + 1:]
    if action < 0.7:
        return data[:cut]
    return data[:cut] + data[cut:cut + 16] * rng.randrange(2, 8) + data[cut:]


@dataclass(frozen=True)
class Query:
    method: str
    path: str  # with {id} where a response id goes
    params: dict[str, str]


_query_value = st.one_of(st.sampled_from(ODD_STRINGS), st.text(max_size=12),
                         st.integers(min_value=-3, max_value=2**65).map(str))
queries: st.SearchStrategy[Query] = st.one_of(
    st.builds(Query, st.just("GET"), st.just("/v1/responses/{id}"),
              st.fixed_dictionaries({}, optional={"stream": st.one_of(st.sampled_from(["true", "false"]),
                                                                         _query_value),
                                                  "starting_after": _query_value})),
    st.builds(Query, st.just("GET"), st.just("/v1/responses/{id}/input_items"),
              st.fixed_dictionaries({}, optional={"limit": _query_value, "after": _query_value,
                                                  "order": st.one_of(st.sampled_from(["asc", "desc"]),
                                                                     _query_value)})),
    st.builds(Query, st.sampled_from(["GET", "DELETE", "POST"]), st.sampled_from(
        ["/v1/responses/{random}", "/v1/responses/{random}/cancel", "/v1/models", "/v1/nothing"]),
        st.dictionaries(_text, _text, max_size=2)),
)


def ws_messages() -> st.SearchStrategy[str | bytes]:
    """WebSocket messages: ``response.create`` with good and bad bodies, other types, not JSON at all."""
    creates = _body_objects().map(lambda body: {k: v for k, v in body.items()
                                                if k not in ("stream", "background", "stream_options")})
    typed = st.tuples(st.one_of(st.just("response.create"), st.just("response.create"), json_values(3)),
                      creates).map(lambda pair: {"type": pair[0], **pair[1]})
    deep = _deep().map(lambda value: {"type": "response.create", "model": MODEL, "input": "hi",
                                      "tools": [{"type": "function", "name": "f", "parameters": value}]})
    return st.one_of(typed.map(lambda o: _encoded(o).decode("utf-8", "replace")),
                     typed.map(lambda o: _encoded(o).decode("utf-8", "replace")),
                     deep.map(lambda o: _encoded(o).decode()), st.binary(max_size=64), st.text(max_size=64), json_values().map(json.dumps))


@functools.cache
def openapi_cases(*, negative: bool) -> st.SearchStrategy[Any]:
    """schemathesis cases for ``POST /responses`` and ``/responses/compact`` of the server's own
    ``/openapi.json``: valid bodies (positive) or bodies that break the schema (negative)."""
    import schemathesis
    from schemathesis import GenerationMode

    spec = json.loads(importlib.resources.files("headwater.server").joinpath("openapi.json").read_bytes())
    schema = schemathesis.openapi.from_dict(spec)
    mode = GenerationMode.NEGATIVE if negative else GenerationMode.POSITIVE
    return st.one_of(schema["/responses"]["POST"].as_strategy(generation_mode=mode),
                     schema["/responses/compact"]["POST"].as_strategy(generation_mode=mode))


# --- the checks ---------------------------------------------------------------------------------------------


def error_problem(obj: Any, status: int) -> str | None:
    """What is wrong with an HTTP error body (None: the spec's shape)."""
    if not isinstance(obj, dict) or set(obj) != {"error"} or not isinstance(obj["error"], dict):
        return f"{status}: the body is not {{'error': {{...}}}}"
    error = obj["error"]
    if set(error) != {"type", "code", "message", "param"}:
        return f"{status}: the error has fields {sorted(error)}"
    if not isinstance(error["message"], str) or not isinstance(error["code"], str):
        return f"{status}: the error's message or code is not a string"
    if not (error["param"] is None or isinstance(error["param"], str)):
        return f"{status}: the error's param is neither a string nor null"
    if "Traceback (most recent call last)" in error["message"]:  # (a client's own word may be echoed)
        return f"{status}: a traceback in the message"
    return None


def stream_problem(body: bytes, *, whole: bool = True) -> str | None:
    """What is wrong with an SSE body (None: readable and, when it is a ``whole`` stream, conformant)."""
    try:
        events = list(iter_events([body]))
    except ProtocolError as exc:
        return f"an unreadable stream: {exc}"
    if not whole:
        return None
    findings = check(events)
    if findings:
        return f"a non-conformant stream: {findings[0]}"
    if not events or events[-1].type not in TERMINAL:
        return "a stream without a terminal event"
    return None


@dataclass
class Fuzzer:
    """Sends generated requests to one server and checks every answer. ``problems`` collects what failed (with
    the request that caused it); ``counts`` the requests sent and answers seen, by kind and status."""

    base_url: str
    strict: bool = False  # raise AssertionError at the first problem (for hypothesis to shrink it)
    timeout: float = 30.0
    counts: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    response_ids: list[str] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)  # error codes seen, HTTP and WebSocket
    _ws: ClientConnection | None = None

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.base_url, timeout=self.timeout)
        self.ws_url = "ws" + self.base_url.removeprefix("http") + "/v1/responses"

    def close(self) -> None:
        self.http.close()
        if self._ws is not None:
            self._ws.close()

    def problem(self, what: str, request: object) -> None:
        text = f"{what} <- {str(request)[:300]}"
        self.problems.append(text)
        self.counts["problems"] += 1
        if self.strict:
            raise AssertionError(text)

    def seed(self, n: int = 3) -> None:
        """A few stored responses for queries and continuations to name."""
        for _ in range(n):
            response = self.http.post("/v1/responses", json={"model": MODEL, "input": "hi"})
            response.raise_for_status()
            self.response_ids.append(response.json()["id"])

    # --- HTTP ---------------------------------------------------------------------------------------------

    def answer(self, response: httpx.Response, request: object, *, whole: bool = True) -> None:
        status = response.status_code
        self.counts[f"http {status // 100}xx"] += 1
        if status >= 500:
            self.problem(f"HTTP {status}: {response.text[:200]}", request)
        elif status >= 400:
            try:
                obj = response.json()
            except ValueError:
                self.problem(f"HTTP {status} with a body that is not JSON", request)
                return
            problem = error_problem(obj, status)
            if problem:
                self.problem(problem, request)
            else:
                self.codes[obj["error"]["code"]] += 1
        elif response.headers.get("content-type", "").startswith("text/event-stream"):
            problem = stream_problem(response.content, whole=whole)
            if problem:
                self.problem(problem, request)

    def post(self, body: bytes, path: str = "/v1/responses") -> None:
        body = body.replace(b"resp_1", (self.response_ids[0] if self.response_ids else "resp_1").encode())
        self.counts["requests"] += 1
        response = self.http.post(path, content=body, headers={"content-type": "application/json"})
        self.answer(response, body[:300])

    def query(self, query: Query) -> None:
        response_id = self.response_ids[self.counts["requests"] % len(self.response_ids)] if self.response_ids \
            else "resp_missing"
        path = query.path.replace("{id}", response_id).replace("{random}", "resp_nope")
        self.counts["requests"] += 1
        params = {_sendable(k): _sendable(v) for k, v in query.params.items()}
        response = self.http.request(query.method, path, params=params)
        # A resumed stream (starting_after) is a tail: readable, not a whole conformant stream.
        self.answer(response, (query.method, path, query.params), whole=params.get("starting_after", "-1") == "-1")

    def case(self, case: Any) -> None:
        """One schemathesis case, sent with this fuzzer's client (the spec's paths are under ``/v1``)."""
        from schemathesis.core import NotSet

        self.counts["requests"] += 1
        kwargs: dict[str, Any] = {"params": case.query or None}
        body = case.body
        if isinstance(body, bytes):
            kwargs["content"] = body
        elif isinstance(body, str):
            kwargs["content"] = body.encode("utf-8", "replace")
        elif not isinstance(body, NotSet):
            kwargs["content"] = _encoded(body)
        headers = {k: v for k, v in (case.headers or {}).items() if isinstance(v, str) and v.isascii()
                   and "\n" not in v and "\r" not in v}
        headers.setdefault("content-type", case.media_type or "application/json")
        response = self.http.request(case.method, "/v1" + case.formatted_path, headers=headers, **kwargs)
        self.answer(response, (case.method, case.formatted_path, repr(case.body)[:200]))

    def healthy(self) -> bool:
        try:
            return self.http.get("/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    # --- WebSocket ----------------------------------------------------------------------------------------

    def ws(self) -> ClientConnection:
        if self._ws is None:
            self._ws = connect(self.ws_url, open_timeout=self.timeout, close_timeout=5, max_size=None)
        return self._ws

    def ws_send(self, message: str | bytes) -> None:
        """Send one message and read what it brings: one error message, or one response's events."""
        self.counts["requests"] += 1
        self.counts["ws messages"] += 1
        ws = self.ws()
        try:
            ws.send(message)
            self._ws_answer(ws, message)
        except ConnectionClosed as closed:
            self._ws = None
            code = closed.rcvd.code if closed.rcvd is not None else None
            self.counts[f"ws closed {code}"] += 1
            if code is None or code >= 1011 or code == 1006:
                self.problem(f"the WebSocket closed without a proper close frame ({code})", message[:300])
        except TimeoutError:
            self._ws = None
            self.problem("no answer on the WebSocket", message[:300])

    def _ws_answer(self, ws: ClientConnection, sent: str | bytes) -> None:
        events: list[str] = []
        while True:
            received = ws.recv(timeout=self.timeout)
            if not isinstance(received, str):
                self.problem("a binary WebSocket message", sent[:300])
                return
            text = received
            try:
                obj = json.loads(text)
            except ValueError:
                self.problem("a WebSocket message that is not JSON", sent[:300])
                return
            if not isinstance(obj, dict):
                self.problem("a WebSocket message that is not an object", sent[:300])
                return
            if obj.get("type") == "error" and "status" in obj:
                status = obj["status"]
                self.counts[f"ws error {status // 100 if isinstance(status, int) else '?'}xx"] += 1
                problem = error_problem({"error": obj.get("error")}, status) if isinstance(status, int) \
                    else "a WebSocket error without an integer status"
                if isinstance(status, int) and status >= 500:
                    problem = f"WebSocket error status {status}: {obj['error'].get('message')}"
                if problem:
                    self.problem(problem, sent[:300])
                else:
                    self.codes[obj["error"]["code"]] += 1
                return
            events.append(f"event: {obj.get('type')}\ndata: {text}\n\n")
            if obj.get("type") in TERMINAL:
                self.counts["ws responses"] += 1
                body = "".join(events).encode()
                problem = stream_problem(body)
                if problem:
                    self.problem(problem, sent[:300])
                return

