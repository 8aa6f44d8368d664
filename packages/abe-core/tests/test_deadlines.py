"""Deadlines and cancellation: the helpers providers use instead of asyncio.wait_for.

The lost-cancellation cases (CPython gh-86296): a task cancelled at the very moment what
it awaits finishes must still end cancelled, on every supported Python.
"""

from __future__ import annotations

import asyncio
import sys

import pytest

from abe.provider import (
    Deadline,
    Stopped,
    bounded,
    close_quietly,
    settle,
    until_stopped,
    wait_event,
)


async def _cancel_as_it_finishes(make: object) -> asyncio.Task[object]:
    """Run `make(done)` in a task, then finish `done` and cancel the task in the same turn."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(make(done))  # type: ignore[operator]
    await asyncio.sleep(0)  # the task is now waiting on `done`
    done.set_result(None)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return task


@pytest.mark.asyncio
async def test_bounded_keeps_a_cancellation_that_arrives_as_the_work_finishes() -> None:
    task = await _cancel_as_it_finishes(lambda done: bounded(asyncio.shield(done), 10.0))
    assert task.cancelled()


@pytest.mark.asyncio
async def test_a_deadline_step_keeps_a_cancellation_that_arrives_as_the_step_finishes() -> None:
    async def step(done: asyncio.Future[None]) -> None:
        await Deadline(10.0).run(asyncio.shield(done))

    task = await _cancel_as_it_finishes(step)
    assert task.cancelled()


@pytest.mark.asyncio
async def test_until_stopped_keeps_a_cancellation_that_arrives_as_the_work_finishes() -> None:
    stop = asyncio.Event()
    task = await _cancel_as_it_finishes(lambda done: until_stopped(asyncio.shield(done), stop))
    assert task.cancelled()


@pytest.mark.asyncio
async def test_wait_event_keeps_a_cancellation() -> None:
    event = asyncio.Event()
    task = asyncio.ensure_future(wait_event(event, 10.0))
    await asyncio.sleep(0)
    event.set()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()


@pytest.mark.asyncio
async def test_settle_keeps_each_outcome_and_fails_what_is_late() -> None:
    loop = asyncio.get_running_loop()
    answered, refused, late = (loop.create_future() for _ in range(3))
    loop.call_soon(answered.set_result, "stored")
    loop.call_soon(refused.set_exception, ValueError("refused"))
    started = loop.time()
    await settle([answered, refused, late], 0.1, lambda: TimeoutError("no answer"))
    assert loop.time() - started < 5  # the late one failed at its deadline, not never
    assert answered.result() == "stored"
    assert isinstance(refused.exception(), ValueError)
    assert isinstance(late.exception(), TimeoutError)


@pytest.mark.asyncio
async def test_settle_keeps_a_cancellation() -> None:
    pending: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(settle([pending], 0.05, lambda: TimeoutError("late")))
    await asyncio.sleep(0)  # the task now awaits `pending`
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert pending.cancelled()  # with the task that awaited it, as a bare await would


@pytest.mark.asyncio
async def test_a_deadline_shares_one_limit_between_steps() -> None:
    deadline = Deadline(0.2)
    assert 0 < deadline.remaining <= 0.2
    await deadline.run(asyncio.sleep(0.05))
    assert deadline.remaining < 0.16
    with pytest.raises(asyncio.TimeoutError):
        await deadline.run(asyncio.Event().wait())
    assert deadline.expired
    with pytest.raises(asyncio.TimeoutError):  # nothing left: the next step fails at once
        await deadline.run(asyncio.Event().wait())


@pytest.mark.asyncio
async def test_wait_event_says_whether_the_event_came_in_time() -> None:
    event = asyncio.Event()
    assert await wait_event(event, 0.01) is False
    asyncio.get_running_loop().call_soon(event.set)
    assert await wait_event(event, 5.0) is True


@pytest.mark.asyncio
async def test_until_stopped_returns_the_result_or_stops_and_cancels_the_work() -> None:
    stop = asyncio.Event()

    async def answer() -> int:
        return 42

    assert await until_stopped(answer(), stop) == 42
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    asyncio.get_running_loop().call_soon(stop.set)
    with pytest.raises(Stopped):
        await until_stopped(forever(), stop)
    assert cancelled.is_set()
    with pytest.raises(Stopped):  # already stopped: the work never starts
        await until_stopped(forever(), stop)


@pytest.mark.asyncio
async def test_close_quietly_bounds_and_logs_each_closer(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    closed: list[str] = []

    async def fine() -> None:
        closed.append("fine")

    async def broken() -> None:
        raise OSError("socket gone")

    caplog.set_level(logging.DEBUG)
    await close_quietly(
        [broken(), asyncio.Event().wait(), fine()], 0.05, logging.getLogger("abe.test"), "test"
    )
    assert closed == ["fine"]
    assert "socket gone" in caplog.text
    assert "TimeoutError" in caplog.text


async def _still_uncancelled() -> None:
    """Nothing is left asking to cancel the running task: it can still await."""
    task = asyncio.current_task()
    assert task is not None
    if sys.version_info >= (3, 11):
        assert task.cancelling() == 0
    await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_bounded_times_out_at_its_deadline_and_leaves_its_task_uncancelled() -> None:
    never = asyncio.get_running_loop().create_future()
    with pytest.raises(asyncio.TimeoutError):
        await bounded(never, 0.02)
    await _still_uncancelled()
    assert await bounded(asyncio.sleep(0, "still running"), 1.0) == "still running"


@pytest.mark.asyncio
async def test_calls_in_flight_time_out_each_at_its_own_deadline() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    ended: dict[float, float] = {}

    async def call(seconds: float) -> None:
        with pytest.raises(asyncio.TimeoutError):
            await bounded(loop.create_future(), seconds)
        ended[seconds] = loop.time() - started

    # the longest first, so that the shared timer has to be brought forward twice
    await asyncio.gather(call(0.3), call(0.15), call(0.05))
    assert sorted(ended, key=ended.__getitem__) == [0.05, 0.15, 0.3]
    assert all(ended[seconds] >= seconds - 0.001 for seconds in ended)


@pytest.mark.asyncio
async def test_calls_that_finish_leave_nothing_to_fire_later() -> None:
    for _ in range(1000):
        await bounded(asyncio.sleep(0), 0.01)
    await asyncio.sleep(0.03)  # the deadlines pass: nothing may cancel this task
    await _still_uncancelled()


@pytest.mark.asyncio
async def test_bounded_keeps_a_cancellation_from_outside() -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(bounded(loop.create_future(), 10.0))
    await asyncio.sleep(0)  # the task is now waiting
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()


@pytest.mark.asyncio
async def test_nested_bounds_each_report_their_own_deadline() -> None:
    loop = asyncio.get_running_loop()

    async def inner(seconds: float) -> None:
        await bounded(loop.create_future(), seconds)

    with pytest.raises(asyncio.TimeoutError):  # the outer one is due first
        await bounded(inner(10.0), 0.02)
    with pytest.raises(asyncio.TimeoutError):  # the inner one is due first, and says so
        await bounded(inner(0.02), 10.0)
    await _still_uncancelled()
