"""AckBatcher: group commit of acknowledgements, without added latency and without losing any."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest

from abe.backends.message_queue.base.acks import AckBatcher

WAIT = 5.0


class Recorder:
    """A flush that records each batch and, while `gate` is closed, holds it on the wire."""

    def __init__(self, *, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.called = asyncio.Event()
        self.fail_on = fail_on

    async def __call__(self, batch: Sequence[int]) -> None:
        self.batches.append(list(batch))
        self.called.set()
        await self.gate.wait()
        if self.fail_on is not None and self.fail_on in batch:
            raise RuntimeError(f"broker refused the batch holding {self.fail_on}")

    async def next_call(self) -> list[int]:
        """Wait for the next flush to start and return its batch."""
        self.called.clear()
        await asyncio.wait_for(self.called.wait(), WAIT)
        return self.batches[-1]


def flat(batches: list[list[int]]) -> list[int]:
    return [item for batch in batches for item in batch]


@pytest.mark.asyncio
async def test_the_first_add_flushes_at_once_as_a_batch_of_one() -> None:
    flush = Recorder()
    batcher = AckBatcher(flush, max_batch=100)
    await batcher.add(1)
    for _ in range(3):  # no timer, no lingering for more: a few loop turns are enough
        await asyncio.sleep(0)
    assert flush.batches == [[1]]
    await asyncio.wait_for(batcher.drain(), WAIT)
    assert flush.batches == [[1]]
    assert batcher.pending == 0


@pytest.mark.asyncio
async def test_adds_during_a_flush_are_batched_into_the_next_one() -> None:
    flush = Recorder()
    flush.gate.clear()
    batcher = AckBatcher(flush, max_batch=100)
    await batcher.add(1)
    assert await flush.next_call() == [1]
    for item in (2, 3, 4):
        await batcher.add(item)
    assert batcher.pending == 3
    assert flush.batches == [[1]], "a second flush started while the first was in flight"
    flush.gate.set()
    await asyncio.wait_for(batcher.drain(), WAIT)
    assert flush.batches == [[1], [2, 3, 4]]


@pytest.mark.asyncio
async def test_batches_never_exceed_max_batch() -> None:
    flush = Recorder()
    flush.gate.clear()
    batcher = AckBatcher(flush, max_batch=3)
    await batcher.add(0)
    await flush.next_call()
    for item in range(1, 11):
        await batcher.add(item)
    flush.gate.set()
    await asyncio.wait_for(batcher.drain(), WAIT)
    assert flush.batches == [[0], [1, 2, 3], [4, 5, 6], [7, 8, 9], [10]]


@pytest.mark.asyncio
async def test_add_waits_when_four_batches_are_already_waiting() -> None:
    flush = Recorder()
    flush.gate.clear()
    batcher = AckBatcher(flush, max_batch=2)
    await batcher.add(0)
    await flush.next_call()
    for item in range(1, 8):  # 7 pending: under 4 * max_batch
        await asyncio.wait_for(batcher.add(item), WAIT)
    blocked = asyncio.ensure_future(batcher.add(8))  # the 8th pending one
    for _ in range(20):
        await asyncio.sleep(0)
    assert not blocked.done(), "add() did not apply back-pressure"
    flush.gate.set()
    await asyncio.wait_for(blocked, WAIT)  # room again: the next batch left the queue
    assert batcher.pending < 8
    await asyncio.wait_for(batcher.drain(), WAIT)
    assert batcher.pending == 0
    assert flat(flush.batches) == list(range(9))


@pytest.mark.asyncio
async def test_add_nowait_queues_until_add_would_wait() -> None:
    flush = Recorder()
    flush.gate.clear()
    batcher = AckBatcher(flush, max_batch=2)
    assert batcher.add_nowait(0)
    await flush.next_call()
    assert all(batcher.add_nowait(item) for item in range(1, 8))  # 7 pending
    assert not batcher.add_nowait(8), "the 8th would fill four batches: left to add()"
    assert batcher.pending == 7
    flush.gate.set()
    await asyncio.wait_for(batcher.drain(), WAIT)
    assert flat(flush.batches) == list(range(8))


@pytest.mark.asyncio
async def test_a_failing_flush_is_logged_and_later_items_still_flush(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flush = Recorder(fail_on=1)
    flush.gate.clear()
    batcher = AckBatcher(flush, max_batch=100)
    await batcher.add(1)
    await flush.next_call()
    await batcher.add(2)
    with caplog.at_level(logging.WARNING, logger="abe.acks"):
        flush.gate.set()
        await asyncio.wait_for(batcher.drain(), WAIT)
    assert flush.batches == [[1], [2]]
    [record] = caplog.records
    assert record.name == "abe.acks"
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "acknowledging 1 message(s) failed" in message
    assert "RuntimeError: broker refused the batch holding 1" in message
    assert "delivered again" in message


@pytest.mark.asyncio
async def test_after_a_failure_the_batcher_keeps_working() -> None:
    flush = Recorder(fail_on=1)
    batcher = AckBatcher(flush, max_batch=100)
    await batcher.add(1)
    await asyncio.wait_for(batcher.drain(), WAIT)
    await batcher.add(2)
    await asyncio.wait_for(batcher.drain(), WAIT)
    assert flush.batches == [[1], [2]]


@pytest.mark.asyncio
async def test_drain_waits_for_everything_added() -> None:
    flush = Recorder()
    flush.gate.clear()
    batcher = AckBatcher(flush, max_batch=2)
    for item in range(5):
        await batcher.add(item)
    drained = asyncio.ensure_future(batcher.drain())
    await flush.next_call()
    assert not drained.done()
    flush.gate.set()
    await asyncio.wait_for(drained, WAIT)
    assert sorted(flat(flush.batches)) == list(range(5))
    assert batcher.pending == 0


@pytest.mark.asyncio
async def test_drain_with_nothing_added_returns_at_once() -> None:
    flush = Recorder()
    batcher = AckBatcher(flush, max_batch=10)
    await asyncio.wait_for(batcher.drain(), WAIT)
    assert flush.batches == []


@pytest.mark.asyncio
async def test_each_item_is_flushed_exactly_once_under_a_steady_stream() -> None:
    flush = Recorder()
    batcher = AckBatcher(flush, max_batch=7)
    for item in range(200):
        await batcher.add(item)
        if item % 13 == 0:
            await asyncio.sleep(0)
    await asyncio.wait_for(batcher.drain(), WAIT)
    flushed = flat(flush.batches)
    assert flushed == list(range(200))
    assert all(1 <= len(batch) <= 7 for batch in flush.batches)
    assert len(flush.batches) < 200, "nothing was batched"


@pytest.mark.asyncio
async def test_a_linger_gathers_acks_that_arrive_together_into_one_flush() -> None:
    flushed: list[list[int]] = []

    async def flush(batch: Sequence[int]) -> None:
        flushed.append(list(batch))

    batcher: AckBatcher[int] = AckBatcher(flush, max_batch=10, linger=0.02)
    for item in range(4):  # e.g. the acks of one received batch, a moment apart
        await batcher.add(item)
        await asyncio.sleep(0)
    await batcher.drain()
    assert flushed == [[0, 1, 2, 3]]


@pytest.mark.asyncio
async def test_a_full_batch_does_not_wait_for_the_linger() -> None:
    flushed: list[list[int]] = []

    async def flush(batch: Sequence[int]) -> None:
        flushed.append(list(batch))

    batcher: AckBatcher[int] = AckBatcher(flush, max_batch=3, linger=60.0)
    for item in range(3):
        await batcher.add(item)
    await asyncio.wait_for(batcher.drain(), 1.0)
    assert flushed == [[0, 1, 2]]


@pytest.mark.asyncio
async def test_a_batch_filled_during_the_linger_ends_it() -> None:
    flushed: list[list[int]] = []

    async def flush(batch: Sequence[int]) -> None:
        flushed.append(list(batch))

    batcher: AckBatcher[int] = AckBatcher(flush, max_batch=3, linger=60.0)
    await batcher.add(0)
    for _ in range(3):  # the flush task is lingering now
        await asyncio.sleep(0)
    assert flushed == []
    await batcher.add(1)
    await batcher.add(2)  # a full batch: no reason to wait out the 60 s
    await asyncio.wait_for(batcher.drain(), 1.0)
    assert flushed == [[0, 1, 2]]


@pytest.mark.asyncio
async def test_a_fast_adder_under_a_linger_keeps_going_while_batches_flush() -> None:
    flushed: list[list[int]] = []

    async def flush(batch: Sequence[int]) -> None:
        await asyncio.sleep(0)  # a round trip
        flushed.append(list(batch))

    batcher: AckBatcher[int] = AckBatcher(flush, max_batch=5, linger=60.0)
    for item in range(100):  # far more than 4 batches: back-pressure, never the linger
        await batcher.add(item)
    await asyncio.wait_for(batcher.drain(), 1.0)
    assert flat(flushed) == list(range(100))
    assert all(len(batch) <= 5 for batch in flushed)
