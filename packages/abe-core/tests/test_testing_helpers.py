"""The contract suite's wait for a large workload: it gives up on a stall, not on a slow run."""

from __future__ import annotations

import asyncio

import pytest

from abe.testing.helpers import while_progressing

pytestmark = pytest.mark.asyncio


async def test_a_run_that_keeps_going_past_the_stall_time_ends_when_done() -> None:
    done, count = asyncio.Event(), [0]

    async def slow_work() -> None:  # 6 steps of 0.05 s: longer in all than the 0.2 s stall
        for _ in range(6):
            await asyncio.sleep(0.05)
            count[0] += 1
        done.set()

    worker = asyncio.ensure_future(slow_work())
    await while_progressing(done, lambda: count[0], 0.2, "slow work")
    await worker
    assert count[0] == 6


async def test_a_stall_fails_naming_how_far_it_got() -> None:
    done, count = asyncio.Event(), [0]

    async def stops_short() -> None:
        for _ in range(3):
            await asyncio.sleep(0.01)
            count[0] += 1

    worker = asyncio.ensure_future(stops_short())
    with pytest.raises(AssertionError, match=r"processing 10 messages: stuck at 3, nothing new"):
        await while_progressing(done, lambda: count[0], 0.1, "processing 10 messages")
    await worker


async def test_done_before_the_wait_returns_at_once() -> None:
    done = asyncio.Event()
    done.set()
    await while_progressing(done, lambda: 0, 0.0, "nothing")
