"""ScriptedBackend, the test double: steps played in order, pauses, failure mid-stream, what it records (requests,
steps yielded, early close), JSON scripts, replay of real captures, and ``create_backend``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from headwater.server.backends import create_backend
from headwater.server.backends.base import (
    Backend,
    BackendError,
    ChatMessage,
    Finish,
    GenerationRequest,
    ReasoningDelta,
    Step,
    TextDelta,
    ToolCallDelta,
    UsageStep,
)
from headwater.server.backends.scripted import Fail, Pause, ScriptedBackend, _pacer, steps_from_capture

CAPTURES = Path(__file__).parent / "fixtures" / "captures" / "openai"
HELLO: list[Step] = [TextDelta("Hel"), TextDelta("lo"), UsageStep(3, 2), Finish("stop")]


def request(text: str = "hi", model: str = "scripted") -> GenerationRequest:
    return GenerationRequest(model=model, messages=[ChatMessage("user", text)])


async def collect(backend: Backend, req: GenerationRequest | None = None) -> list[Step]:
    return [step async for step in backend.generate(req or request())]


async def test_plays_the_steps_in_order_and_records_the_request() -> None:
    backend = ScriptedBackend(HELLO)
    req = request("hello?")
    assert await collect(backend, req) == HELLO
    assert backend.requests == [req]
    assert backend.steps_yielded == 4
    assert backend.runs[0].completed and not backend.closed_early
    assert await collect(backend) == HELLO  # the script plays again for every request
    assert len(backend.requests) == 2 and backend.steps_yielded == 8


async def test_a_function_script_sees_the_request() -> None:
    def echo(req: GenerationRequest) -> list[Step]:
        return [TextDelta(req.messages[-1].content.upper()), Finish("stop")]

    backend = ScriptedBackend(echo)
    assert await collect(backend, request("shout")) == [TextDelta("SHOUT"), Finish("stop")]


async def test_failure_mid_stream_raises_after_the_steps_before_it() -> None:
    error = BackendError("upstream went away", code="server_error", status=502)
    backend = ScriptedBackend([TextDelta("par"), Fail(error), TextDelta("never")])
    seen: list[Step] = []
    with pytest.raises(BackendError) as caught:
        async for step in backend.generate(request()):
            seen.append(step)
    assert caught.value is error
    assert seen == [TextDelta("par")]
    run = backend.runs[0]
    assert run.failed is error and not run.completed and not run.closed_early and run.steps_yielded == 1


async def test_pauses_and_delay_take_time() -> None:
    backend = ScriptedBackend([Pause(0.05), TextDelta("a"), Finish("stop")], delay=0.02)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await collect(backend)
    assert loop.time() - start >= 0.06


async def test_a_paced_stream_keeps_its_deadlines_when_its_consumer_is_late() -> None:
    backend = ScriptedBackend([TextDelta(str(i)) for i in range(100)], delay=0.01)
    stream = backend.generate(request())
    assert await anext(stream) == TextDelta("0")
    await asyncio.sleep(0.2)  # the consumer is late: about twenty more steps are due by now
    for i in range(1, 6):  # steps already due come at once: the pace is not restarted after each step
        step = stream.__anext__()
        assert step.send(None) is None  # a bare yield to the loop (a wait for the pace would yield a timer)
        with pytest.raises(StopIteration) as got:
            step.send(None)
        assert got.value.value == TextDelta(str(i))
    await stream.aclose()  # type: ignore[attr-defined]


async def test_aclose_after_two_steps_is_recorded_as_closed_early() -> None:
    backend = ScriptedBackend([TextDelta(str(i)) for i in range(10)])
    stream = backend.generate(request())
    assert [await anext(stream), await anext(stream)] == [TextDelta("0"), TextDelta("1")]
    await stream.aclose()  # type: ignore[attr-defined]
    assert backend.closed_early
    assert backend.steps_yielded == 2
    assert not backend.runs[0].completed


async def test_a_cancelled_consumer_is_recorded_as_closed_early() -> None:
    backend = ScriptedBackend([TextDelta("a"), Pause(10), TextDelta("b")])
    got: list[Step] = []

    async def consume() -> None:
        async for step in backend.generate(request()):
            got.append(step)

    task = asyncio.create_task(consume())
    while not got:
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert got == [TextDelta("a")]
    assert backend.closed_early and backend.steps_yielded == 1


async def test_models_are_open_unless_strict() -> None:
    assert await collect(ScriptedBackend(HELLO), request(model="anything")) == HELLO
    strict = ScriptedBackend(HELLO, models=["m1"], strict_models=True)
    with pytest.raises(BackendError) as caught:
        await collect(strict, request(model="m2"))
    assert (
        caught.value.status == 400 and caught.value.code == "model_not_found" and "m1" in caught.value.message
    )
    assert strict.models() == ["m1"]
    assert "test double" in strict.describe()


async def test_from_capture_text_stream() -> None:
    # openai-issue-11239.2: three output_text deltas "blue", "-", "42" and usage 91 in / 7 out.
    backend = ScriptedBackend.from_capture(CAPTURES / "openai-issue-11239.2.jsonl")
    assert await collect(backend) == [
        TextDelta("blue"),
        TextDelta("-"),
        TextDelta("42"),
        UsageStep(input_tokens=91, output_tokens=7, reasoning_tokens=0, cached_tokens=0),
        Finish("stop"),
    ]


async def test_from_capture_function_call() -> None:
    # openai-issue-11239.1: a reasoning item (encrypted, no text), then a lookupCode call with arguments "{}".
    steps = await collect(ScriptedBackend.from_capture(CAPTURES / "openai-issue-11239.1.jsonl"))
    assert steps[:2] == [
        ToolCallDelta(0, "", call_id="call_LUBOONF2cY8HDQdBwiEQ9fk1", name="lookupCode"),
        ToolCallDelta(0, "{}"),
    ]
    assert isinstance(steps[2], UsageStep) and steps[2].input_tokens > 0
    assert steps[-1] == Finish("tool_calls")


def test_from_capture_reasoning_summary_and_text() -> None:
    path = CAPTURES / "azure-gpt5-reasoning-multi-summary-no-encryption.jsonl"
    steps = steps_from_capture(path.open(encoding="utf-8"))
    events = [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]
    summary = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_summary_text.delta")
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert "".join(s.text for s in steps if isinstance(s, ReasoningDelta)) == summary != ""
    assert "".join(s.text for s in steps if isinstance(s, TextDelta)) == text != ""
    usage = events[-1]["response"]["usage"]
    assert steps[-2] == UsageStep(
        usage["input_tokens"],
        usage["output_tokens"],
        reasoning_tokens=usage["output_tokens_details"]["reasoning_tokens"],
        cached_tokens=usage["input_tokens_details"]["cached_tokens"],
    )


def test_from_capture_one_response_of_several() -> None:
    # Four responses in one file: three calculator calls streamed in pieces, then a text answer.
    path = CAPTURES / "openai-reasoning-encrypted-content.1.jsonl"
    for i in range(3):
        steps = steps_from_capture(path.open(encoding="utf-8"), response=i)
        calls = [s for s in steps if isinstance(s, ToolCallDelta)]
        assert calls[0].name == "calculator" and calls[0].call_id and {c.index for c in calls} == {0}
        assert set(json.loads("".join(c.arguments for c in calls))) == {"a", "b", "op"}
        assert steps[-1] == Finish("tool_calls")
    last = steps_from_capture(path.open(encoding="utf-8"), response=3)
    assert any(isinstance(s, TextDelta) for s in last) and last[-1] == Finish("stop")
    with pytest.raises(ValueError, match="4 response"):
        steps_from_capture(path.open(encoding="utf-8"), response=4)


def test_from_capture_numbers_calls_in_order() -> None:
    def call(n: int, kind: str) -> str:
        item = {
            "type": "function_call",
            "id": f"fc_{n}",
            "call_id": f"call_{n}",
            "name": f"f{n}",
            "arguments": "",
        }
        return json.dumps({"type": f"response.output_item.{kind}", "output_index": n, "item": item})

    def delta(n: int, text: str) -> str:
        event = {"type": "response.function_call_arguments.delta", "item_id": f"fc_{n}", "output_index": n}
        return json.dumps({**event, "delta": text})

    lines = [call(0, "added"), call(1, "added"), delta(1, "{}"), delta(0, '{"x"'), delta(0, ":1}")]
    lines.append(
        json.dumps({"type": "response.completed", "response": {"status": "completed", "usage": None}})
    )
    assert steps_from_capture(lines) == [
        ToolCallDelta(0, "", call_id="call_0", name="f0"),
        ToolCallDelta(1, "", call_id="call_1", name="f1"),
        ToolCallDelta(1, "{}"),
        ToolCallDelta(0, '{"x"'),
        ToolCallDelta(0, ":1}"),
        Finish("tool_calls"),
    ]


async def test_from_capture_failed_response_raises() -> None:
    backend = ScriptedBackend.from_capture(CAPTURES / "openai-error.1.jsonl")
    with pytest.raises(BackendError) as caught:
        await collect(backend)
    assert caught.value.code == "insufficient_quota"


async def test_create_backend_from_a_json_script(tmp_path: Path) -> None:
    script = tmp_path / "hello.json"
    script.write_text(
        json.dumps(
            [
                {"reasoning": "thinking"},
                {"text": "Hel"},
                {"pause": 0.001},
                {"text": "lo"},
                {"tool_call": {"call_id": "c1", "name": "f", "arguments": "{}"}},
                {"usage": {"input_tokens": 3, "output_tokens": 2}},
                {"finish": "stop"},
            ]
        )
    )
    backend = create_backend("scripted", script=str(script))
    assert await collect(backend) == [
        ReasoningDelta("thinking"),
        TextDelta("Hel"),
        TextDelta("lo"),
        ToolCallDelta(0, "{}", call_id="c1", name="f"),
        UsageStep(3, 2),
        Finish("stop"),
    ]
    failing = tmp_path / "fail.json"
    failing.write_text(
        json.dumps([{"text": "a"}, {"error": {"message": "boom", "code": "x", "status": 504}}])
    )
    with pytest.raises(BackendError) as caught:
        await collect(create_backend("scripted", script=failing))
    assert (caught.value.message, caught.value.code, caught.value.status) == ("boom", "x", 504)


async def test_create_backend_from_a_capture_and_a_list() -> None:
    backend = create_backend("scripted", script=CAPTURES / "openai-issue-11239.2.jsonl")
    assert isinstance(backend, ScriptedBackend)
    assert [s for s in await collect(backend) if isinstance(s, TextDelta)] == [
        TextDelta("blue"),
        TextDelta("-"),
        TextDelta("42"),
    ]
    assert "openai-issue-11239.2.jsonl" in backend.describe()
    assert await collect(create_backend("scripted", script=HELLO)) == HELLO


def test_create_backend_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"known backends: local, scripted"):
        create_backend("nope")
    with pytest.raises(ValueError, match="scripted"):
        create_backend("scripted", script=HELLO, colour="blue")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"txt": "typo"}]))
    with pytest.raises(ValueError, match="txt"):
        create_backend("scripted", script=bad)


def test_a_replayed_capture_keeps_reasoning_refusals_and_cost() -> None:
    # The drift the server review found: the scripted replay used to drop all three, which the Responses
    # backend keeps. Both now go through one events->steps core.
    lines = [
        json.dumps({"type": "response.reasoning.delta", "item_id": "rs_1", "output_index": 0, "content_index": 0,
                    "delta": "think", "sequence_number": 0}),
        json.dumps({"type": "response.refusal.delta", "item_id": "msg_1", "output_index": 1, "content_index": 0,
                    "delta": "no", "sequence_number": 1}),
        json.dumps({"type": "response.completed", "sequence_number": 2, "response": {
            "status": "completed",
            "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5, "cost": 0.5,
                      "input_tokens_details": {"cached_tokens": 1},
                      "output_tokens_details": {"reasoning_tokens": 1}},
        }}),
    ]
    assert steps_from_capture(lines) == [
        ReasoningDelta("think"),
        TextDelta("no"),
        UsageStep(3, 2, reasoning_tokens=1, cached_tokens=1, cost=0.5),
        Finish("stop"),
    ]


def test_a_capture_that_ends_in_an_error_event_replays_as_a_failure() -> None:
    lines = [
        json.dumps({"type": "response.output_text.delta", "item_id": "m", "output_index": 0, "content_index": 0,
                    "delta": "par"}),
        json.dumps({"type": "error", "code": "rate_limit", "message": "slow down", "param": None}),
    ]
    steps = steps_from_capture(lines)
    assert steps[0] == TextDelta("par")
    assert isinstance(steps[-1], Fail) and steps[-1].error.code == "rate_limit"


async def test_paced_streams_due_together_share_one_timer_and_a_cancelled_one_leaves_the_others_be() -> None:
    # Each paced stream keeps its own deadlines; the steps of all streams due within one PACE_TICK slice wait
    # on one timer of the loop's _Pacer (not a timer each). A stream cancelled while it waits is skipped.
    backend = ScriptedBackend([TextDelta("a"), TextDelta("b"), Finish("stop")], delay=0.05)
    got: list[list[Step]] = [[] for _ in range(50)]

    async def consume(n: int) -> None:
        async for step in backend.generate(request()):
            got[n].append(step)

    tasks = [asyncio.create_task(consume(n)) for n in range(50)]  # (all started in one turn of the loop)
    await asyncio.sleep(0)
    pacer = _pacer(asyncio.get_running_loop())
    waiting = [w for waiters in pacer._slices.values() for w in waiters if not w.done()]
    assert len(waiting) == 50 and len(pacer._slices) <= 2  # (one slice, or two when a tick boundary fell between)
    tasks[0].cancel()
    await asyncio.gather(*tasks[1:])
    assert got[0] == [] and all(steps == [TextDelta("a"), TextDelta("b"), Finish("stop")] for steps in got[1:])
    assert pacer._slices == {}  # (every slice's timer fired and was forgotten)
    with pytest.raises(asyncio.CancelledError):
        await tasks[0]
