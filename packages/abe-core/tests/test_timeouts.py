"""bounded(): a deadline that never swallows a cancellation (Python 3.10's wait_for can)."""

from __future__ import annotations

import asyncio

import pytest

from abe.backends.message_queue.base.timeouts import bounded


@pytest.mark.asyncio
async def test_returns_what_the_awaitable_returns() -> None:
    async def answer() -> int:
        return 42

    assert await bounded(answer(), 1.0) == 42


@pytest.mark.asyncio
async def test_raises_timeout_error_and_cancels_the_work() -> None:
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    with pytest.raises(asyncio.TimeoutError):
        await bounded(forever(), 0.05)
    assert cancelled.is_set()


@pytest.mark.asyncio
async def test_a_cancellation_that_arrives_as_the_work_finishes_is_not_lost() -> None:
    done = asyncio.get_running_loop().create_future()

    async def wait() -> None:
        await bounded(asyncio.shield(done), 10.0)
        await asyncio.Event().wait()  # only reached if the cancellation was swallowed

    task = asyncio.ensure_future(wait())
    await asyncio.sleep(0)
    done.set_result(None)  # the awaited thing finishes ...
    task.cancel()  # ... in the same turn as the cancellation
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5.0)


@pytest.mark.asyncio
async def test_errors_pass_through() -> None:
    async def fail() -> None:
        raise ValueError("broken")

    with pytest.raises(ValueError, match="broken"):
        await bounded(fail(), 1.0)
