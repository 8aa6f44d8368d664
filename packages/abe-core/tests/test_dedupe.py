"""Deduplicate: a handler runs once per message id within its window, in this process."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from abe import AsyncLoopConsumer, Deduplicate, MemoryBackend
from abe.testing.helpers import eventually


async def _consume(backend: MemoryBackend, dedupe: Deduplicate, handler: Any, until: Any) -> None:
    consumer = AsyncLoopConsumer(backend, "g", keys="k", middleware=[dedupe], retry_delay=0.01)
    running = asyncio.ensure_future(consumer.run(handler))
    try:
        await eventually(until, 10)
    finally:
        await consumer.shutdown()
        await running


@pytest.mark.asyncio
async def test_copies_of_a_retried_publish_run_the_handler_once() -> None:
    backend = MemoryBackend()
    for _ in range(3):
        await backend.publish("k", {"n": 1}, message_id="m-1")
    await backend.publish("k", {"n": 2}, message_id="m-2")
    handled: list[int] = []
    dedupe = Deduplicate()

    async def handler(payload: dict[str, Any]) -> None:
        handled.append(payload["n"])

    await _consume(backend, dedupe, handler, lambda: dedupe.skipped == 2 and len(handled) == 2)
    assert sorted(handled) == [1, 2]


@pytest.mark.asyncio
async def test_a_copy_arriving_while_the_first_runs_waits_and_runs_only_if_it_failed() -> None:
    backend = MemoryBackend()
    await backend.publish_many("k", [{"n": 1}, {"n": 1}], message_ids=["same", "same"])
    started: list[int] = []
    release = asyncio.Event()

    async def handler(payload: dict[str, Any]) -> None:
        started.append(len(started))
        if len(started) == 1:
            await release.wait()
            raise RuntimeError("the first attempt fails")

    dedupe = Deduplicate()
    consumer = AsyncLoopConsumer(backend, "g", keys="k", concurrency=4, middleware=[dedupe])
    running = asyncio.ensure_future(consumer.run(handler))
    try:
        await eventually(lambda: len(started) == 1)
        await asyncio.sleep(0.05)  # the copy is in hand meanwhile, and must wait
        assert len(started) == 1
        release.set()
        await eventually(lambda: len(started) >= 2)
        await eventually(lambda: consumer.stats.processed >= 2)
    finally:
        await consumer.shutdown()
        await running
    assert dedupe.skipped >= 1


def test_the_window_is_bounded_by_count_and_age() -> None:
    dedupe = Deduplicate(window=2, ttl=60)
    for key in (("g", "k", "a"), ("g", "k", "b"), ("g", "k", "c")):
        dedupe._remember(key)
    assert list(dedupe._done) == [("g", "k", "b"), ("g", "k", "c")]
    with pytest.raises(ValueError, match="window"):
        Deduplicate(window=0)
