"""The fuzz suite, bounded for CI: schemathesis against the server's own ``/openapi.json`` and hypothesis
strategies for bodies, query strings and WebSocket messages (``headwater.server.fuzz``), sent over real sockets to
a real uvicorn (scripted backend, SQLite store). No answer is a 5xx, every error is in the spec's shape, every
stream is conformant, the server still answers afterwards and logs no error. ``bench/fuzz_server.py`` is the
long run of the same.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater.server.app import create_app
from headwater.server.backends.base import Finish, TextDelta, ToolCallDelta, UsageStep
from headwater.server.backends.scripted import ScriptedBackend
from headwater.server.config import ServerConfig
from headwater.server.fuzz import MODEL, Fuzzer, Query, bodies, mutate, openapi_cases, queries, ws_messages
from headwater.server.testing import LiveServer

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


class ErrorLog(logging.Handler):
    """Every ERROR (or worse) record of the server's and uvicorn's loggers, tracebacks included."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def fuzzer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzer]:
    script = [TextDelta("Hel"), TextDelta("lo"), ToolCallDelta(0, '{"city": "Oslo"}', call_id="call_1",
                                                               name="weather"), UsageStep(3, 2), Finish("stop")]
    backend = ScriptedBackend(script, models=[MODEL])
    config = ServerConfig(store="sqlite", data_dir=tmp_path_factory.mktemp("fuzz"))
    errors = ErrorLog()
    loggers = [logging.getLogger(name) for name in ("headwater", "uvicorn", "uvicorn.error", "starlette")]
    for logger in loggers:
        logger.addHandler(errors)
    live = LiveServer(create_app(config, backend=backend)).start()
    fuzz = Fuzzer(live.url, strict=True)
    fuzz.seed()
    try:
        yield fuzz
        assert fuzz.healthy(), "the server no longer answers /healthz"
        assert [r.getMessage() for r in errors.records] == []
    finally:
        fuzz.close()
        live.stop()
        for logger in loggers:
            logger.removeHandler(errors)
        backend.runs.clear()


def after(fuzz: Fuzzer) -> None:
    assert fuzz.problems == []
    assert fuzz.healthy()


@FUZZ
@given(body=bodies())
def test_fuzzed_bodies_get_no_5xx_and_spec_shaped_errors(fuzzer: Fuzzer, body: bytes) -> None:
    fuzzer.post(body)


@settings(FUZZ, max_examples=100)
@given(body=bodies(), rng=st.randoms(use_true_random=False))
def test_mutated_bodies_get_no_5xx(fuzzer: Fuzzer, body: bytes, rng: random.Random) -> None:
    fuzzer.post(mutate(body, rng))


@settings(FUZZ, max_examples=40)
@given(body=bodies())
def test_fuzzed_compact_bodies_get_no_5xx(fuzzer: Fuzzer, body: bytes) -> None:
    fuzzer.post(body, "/v1/responses/compact")


@FUZZ
@given(query=queries)
def test_fuzzed_query_strings_get_no_5xx(fuzzer: Fuzzer, query: Query) -> None:
    fuzzer.query(query)


@settings(FUZZ, max_examples=120)
@given(message=ws_messages())
def test_fuzzed_websocket_messages_get_spec_shaped_errors_and_a_usable_connection(
    fuzzer: Fuzzer, message: str | bytes
) -> None:
    fuzzer.ws_send(message)


@settings(FUZZ, max_examples=60)
@given(case=openapi_cases(negative=False))
def test_schemathesis_valid_bodies_from_openapi_get_no_5xx(fuzzer: Fuzzer, case: Any) -> None:
    fuzzer.case(case)


@settings(FUZZ, max_examples=60)
@given(case=openapi_cases(negative=True))
def test_schemathesis_invalid_bodies_from_openapi_get_4xx_in_the_error_shape(fuzzer: Fuzzer, case: Any) -> None:
    fuzzer.case(case)


def test_the_server_still_answers_after_the_fuzzing(fuzzer: Fuzzer) -> None:
    after(fuzzer)
    assert fuzzer.counts["requests"] > 0
    assert fuzzer.counts["http 2xx"] > 0, "some fuzzed requests must get through validation"
