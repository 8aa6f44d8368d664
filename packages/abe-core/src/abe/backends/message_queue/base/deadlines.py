"""Deadlines and cancellation, owned by abe-core so that no provider calls `asyncio.wait_for`.

`asyncio.wait_for` on Python 3.10 and 3.11 can swallow a cancellation that arrives as the
awaited thing finishes (CPython gh-86296), leaving a loop that was told to stop running
for ever. Everything here waits with `asyncio.timeout` where it is sound (3.11+) and with
`asyncio.wait` on 3.10, which never swallows one:

- `bounded(awaitable, seconds)`: the result, or asyncio.TimeoutError;
- `Deadline(seconds)`: one limit for several steps (`remaining`, `await deadline.run(step)`);
- `wait_event(event, seconds)`: whether an event was set in time (no exception);
- `settle(futures, seconds, late)`: await every future; those pending after `seconds` fail;
- `until_stopped(awaitable, stop)`: the result, or `Stopped` as soon as `stop` is set;
- `close_quietly(closers, seconds, log)`: close several things, each bounded, errors logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import weakref
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any, TypeVar

__all__ = [
    "Deadline",
    "Stopped",
    "bounded",
    "close_quietly",
    "settle",
    "until_stopped",
    "wait_event",
]

T = TypeVar("T")


async def bounded(awaitable: Awaitable[T], seconds: float) -> T:
    """`await awaitable`, or raise asyncio.TimeoutError after `seconds`.

    On 3.11+ this keeps `asyncio.timeout`'s rules (the task is cancelled at the deadline,
    and the cancellation becomes TimeoutError unless another one was also asked for), but
    not its timer per call: the calls in flight on a loop share one (see `_Watch`).
    """
    if sys.version_info >= (3, 11):
        task = asyncio.current_task()
        if task is None:  # asyncio.timeout says why it needs a task
            async with asyncio.timeout(seconds):
                return await awaitable
        loop = task.get_loop()
        watch = _WATCH
        if watch is None or watch.loop() is not loop:
            watch = _new_watch(loop)
        call = _Call(task, loop.time() + seconds, task.cancelling())
        watch.add(call, loop)
        try:
            result = await awaitable
        except asyncio.CancelledError as exc:
            watch.calls.discard(call)
            if call.expired and task.uncancel() <= call.cancelling:
                raise TimeoutError from exc
            raise
        except BaseException:
            watch.calls.discard(call)
            if call.expired:
                task.uncancel()
            raise
        watch.calls.discard(call)
        if call.expired:
            task.uncancel()
        return result
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except asyncio.CancelledError:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise
    if not done:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise asyncio.TimeoutError
    return task.result()


class _Call:
    """One bounded call in flight: its task, its deadline, and whether the deadline passed."""

    __slots__ = ("cancelling", "deadline", "expired", "task")

    def __init__(self, task: asyncio.Task[Any], deadline: float, cancelling: int) -> None:
        self.task = task
        self.deadline = deadline
        self.cancelling = cancelling  # cancellations asked for before this call
        self.expired = False


class _Watch:
    """The bounded calls in flight on one event loop, and the one timer they share.

    `asyncio.timeout` schedules a timer per call, and the loop keeps each one, cancelled,
    in its heap until its time comes round: for a Kafka publish that was about 29,000
    instructions of 90,000 in abe's own work (valgrind). Here a call only joins a set. The
    timer is set for the earliest deadline; when it fires it cancels the calls that are
    due, as `asyncio.timeout` would, and is set again for the next.
    """

    __slots__ = ("__weakref__", "calls", "loop", "timer", "when")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = weakref.ref(loop)  # the loop holds the watch (through its timer), not back
        self.calls: set[_Call] = set()
        self.timer: asyncio.TimerHandle | None = None
        self.when = math.inf

    def add(self, call: _Call, loop: asyncio.AbstractEventLoop) -> None:
        """Watch `call`; the timer is brought forward if it is due first."""
        self.calls.add(call)
        if call.deadline < self.when:
            if self.timer is not None:
                self.timer.cancel()
            self.when = call.deadline
            self.timer = loop.call_at(call.deadline, self._fire, loop)

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Cancel the tasks of the calls due by now; set the timer for the next deadline."""
        due, self.timer, self.when = self.when, None, math.inf
        for call in [call for call in self.calls if call.deadline <= due]:
            self.calls.discard(call)
            call.expired = True
            call.task.cancel()
        if self.calls:
            self.add(min(self.calls, key=_deadline), loop)


def _deadline(call: _Call) -> float:
    return call.deadline


_WATCH: _Watch | None = None
"""The watch of the loop that made the last bounded call (a process usually has one loop;
a call on another makes that loop's, and calls in flight keep the watch they joined)."""


def _new_watch(loop: asyncio.AbstractEventLoop) -> _Watch:
    global _WATCH  # noqa: PLW0603 (one per process, replaced when another loop calls)
    _WATCH = _Watch(loop)
    return _WATCH


class Deadline:
    """A point in time several steps share: each step gets what is left of it."""

    __slots__ = ("at",)

    def __init__(self, seconds: float) -> None:
        self.at = asyncio.get_running_loop().time() + seconds

    @property
    def remaining(self) -> float:
        """Seconds left (0 once it has passed)."""
        return max(0.0, self.at - asyncio.get_running_loop().time())

    @property
    def expired(self) -> bool:
        """Whether the deadline has passed."""
        return self.remaining <= 0

    async def run(self, awaitable: Awaitable[T]) -> T:
        """`await awaitable` within what is left, or asyncio.TimeoutError."""
        return await bounded(awaitable, max(self.remaining, 0.001))


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Whether `event` is set within `seconds` (it is waited for, never raised about)."""
    if event.is_set():
        return True
    try:
        await bounded(event.wait(), seconds)
    except asyncio.TimeoutError:
        return False
    return True


async def settle(
    futures: Collection[asyncio.Future[Any]], seconds: float, late: Callable[[], BaseException]
) -> None:
    """Await every one of `futures`; those still pending after `seconds` fail with `late()`.

    Each is awaited as it is, under one timer: a broker's acknowledgements reach the caller a
    turn of the event loop sooner than through `asyncio.wait`, which matters one message at
    a time. Outcomes stay on the futures (read them with `exception()`); nothing is raised
    but a cancellation, which leaves the futures as they are.
    """
    expiry = asyncio.get_running_loop().call_later(max(0.0, seconds), _fail_pending, futures, late)
    try:
        for future in futures:
            if not future.done():
                with contextlib.suppress(Exception):
                    await future
    finally:
        expiry.cancel()


def _fail_pending(
    futures: Iterable[asyncio.Future[Any]], late: Callable[[], BaseException]
) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(late())


class Stopped(Exception):
    """`until_stopped` gave up because its stop signal was set."""


async def until_stopped(awaitable: Awaitable[T], stop: asyncio.Event) -> T:
    """`await awaitable`, or cancel it and raise Stopped as soon as `stop` is set."""
    if stop.is_set():
        if asyncio.iscoroutine(awaitable):
            awaitable.close()
        raise Stopped
    task = asyncio.ensure_future(awaitable)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not task.done():
            task.cancel()
        await asyncio.gather(task, stopping, return_exceptions=True)
    if task.cancelled():
        raise Stopped
    return task.result()


async def close_quietly(
    closers: Iterable[Awaitable[object]], seconds: float, log: logging.Logger, what: str
) -> None:
    """Await each closer within `seconds`; a failure or a timeout is logged, never raised."""
    for closer in closers:
        try:
            await bounded(closer, seconds)
        except Exception as exc:  # closing is best effort: the process may be going away
            log.debug("%s: closing did not finish cleanly: %s: %s", what, type(exc).__name__, exc)
