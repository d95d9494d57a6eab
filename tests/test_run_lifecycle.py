"""A run's lifecycle is a table (``runs.run.TRANSITIONS``): the states a real run goes through, in order, and
the moves the table refuses."""

from __future__ import annotations

import asyncio

import pytest

from headwater.protocol.resources import Response
from headwater.protocol.writer import ResponseWriter
from headwater.server.backends.base import ChatMessage, Finish, GenerationRequest, TextDelta
from headwater.server.backends.scripted import Pause, ScriptedBackend
from headwater.server.runs.run import INTERRUPTIBLE, TRANSITIONS, Run, State


class RecordingRun(Run):
    """A real run that also notes each state it enters (a test's window on the lifecycle)."""

    def __init__(self, **options: object) -> None:
        self.visited: list[State] = []
        super().__init__(**options)  # type: ignore[arg-type]

    def _enter(self, state: State) -> None:
        if state is not self.state:
            self.visited.append(state)
        super()._enter(state)


def run_of(script: list[object]) -> RecordingRun:
    request = GenerationRequest(model="m", messages=[ChatMessage("user", "hi")])
    return RecordingRun(writer=ResponseWriter(Response(model="m")), backend=ScriptedBackend(script),
                        request=request, store=None, owner=None, background=False, followed=False)


def test_every_state_can_end_and_only_waits_are_interrupted() -> None:
    assert set(TRANSITIONS) == set(State)
    assert TRANSITIONS[State.FINISHED] == frozenset() and TRANSITIONS[State.ENDING] == frozenset()
    assert {State.QUEUED, State.WAITING} == INTERRUPTIBLE


async def test_a_run_waits_writes_then_ends() -> None:
    run = run_of([TextDelta("a"), TextDelta("b"), Finish("stop")])
    run.start()
    await run.wait()
    assert run.visited[0] is State.WAITING
    assert run.visited[-2:] == [State.ENDING, State.FINISHED]
    assert set(run.visited[:-2]) == {State.WAITING, State.WRITING} and run.finished


async def test_a_cancel_while_waiting_for_the_backend_ends_the_run_at_once() -> None:
    run = run_of([TextDelta("a"), Pause(3600), TextDelta("never")])
    run.start()
    while not (run.steps == 1 and run.state is State.WAITING):
        await asyncio.sleep(0.001)
    run.cancel()
    await run.wait()  # not an hour: the wait for the next step was interrupted
    assert run.visited[-3:] == [State.WRITING, State.ENDING, State.FINISHED]
    assert run.response.status == "cancelled"


async def test_the_table_refuses_a_move_it_does_not_list() -> None:
    run = run_of([Finish("stop")])
    run._enter(State.ENDING)
    with pytest.raises(RuntimeError, match="no move from ending to waiting"):
        run._enter(State.WAITING)


async def test_a_finished_runs_in_process_live_log_is_forgotten_as_its_last_follower_leaves() -> None:
    """In that follower's own call (``MemoryLiveLog.expire_now``), not in a task made for it."""
    run = run_of([TextDelta("a"), Finish("stop")])
    run.start()
    types = [entry.type async for batch in run.follow() for entry in batch]
    assert types[-1] == "response.completed" and run.finished
    assert not run.live.has(run.id)  # (nothing awaited since the follower left)
