"""Small waits and names the contract tests share: every wait is for an event, with a deadline."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from abe.backends.message_queue.base.backend import BaseBackend
from abe.backends.message_queue.base.delivery import Delivery
from abe.backends.message_queue.base.subscription import Subscription

__all__ = [
    "WAIT",
    "eventually",
    "next_delivery",
    "nothing_arrives",
    "receive",
    "receive_payloads",
    "unique",
    "while_progressing",
]

T = TypeVar("T")

WAIT = 30.0
"""Longest the suite waits for something that should happen (a broker may be slow to join)."""


def unique(kind: str) -> str:
    """A name no other test uses: valid as a key and a group on every broker abe supports."""
    return f"abe-t-{kind}-{uuid.uuid4().hex[:12]}"


async def next_delivery(subscription: Subscription, timeout: float = WAIT) -> Delivery:
    """The next delivery, or a test failure saying how long it waited."""
    try:
        return await asyncio.wait_for(subscription.__anext__(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(
            f"no message arrived on {list(subscription.keys)} for group "
            f"{subscription.group!r} within {timeout:g}s"
        ) from None


async def receive(
    subscription: Subscription, count: int, timeout: float = WAIT, *, ack: bool = True
) -> list[Delivery]:
    """Exactly `count` deliveries (acked unless `ack=False`), or a failure saying how many."""
    got: list[Delivery] = []

    async def take() -> None:
        while len(got) < count:
            delivery = await subscription.__anext__()
            got.append(delivery)
            if ack:
                await delivery.ack()

    try:
        await asyncio.wait_for(take(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(
            f"received {len(got)} of {count} messages on {list(subscription.keys)} "
            f"within {timeout:g}s"
        ) from None
    return got


async def receive_payloads(
    backend: BaseBackend, keys: list[str], group: str, count: int, timeout: float = WAIT
) -> list[dict[str, Any]]:
    """Subscribe, take `count` payloads with acks, and close the subscription."""
    async with backend.subscribe(group=group, keys=keys) as subscription:
        deliveries = await receive(subscription, count, timeout)
    return [delivery.payload for delivery in deliveries]


async def nothing_arrives(subscription: Subscription, within: float) -> None:
    """Fail if any delivery arrives within `within` seconds (waiting out a redelivery window)."""
    try:
        delivery = await asyncio.wait_for(subscription.__anext__(), within)
    except asyncio.TimeoutError:
        return
    except StopAsyncIteration:
        return
    raise AssertionError(f"expected nothing, but got {delivery!r} with {delivery.payload!r}")


async def eventually(check: Callable[[], bool], timeout: float = WAIT, what: str = "") -> None:
    """Wait until `check()` holds, re-checking as the event loop turns (for counters of tasks)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what or check!r}")
        await asyncio.sleep(0.01)


async def while_progressing(
    done: asyncio.Event, progress: Callable[[], int], stall: float, what: str
) -> None:
    """Wait for `done` as long as `progress()` keeps growing: fail after `stall` seconds without.

    For a large workload on a broker whose speed varies (an emulated cluster on a loaded
    machine): a lost message still fails, as the count stops short of the end, but a slow
    run that keeps going does not.
    """
    reached = progress()
    while not done.is_set():
        try:
            await asyncio.wait_for(done.wait(), stall)
        except asyncio.TimeoutError:
            now = progress()
            if now == reached:
                raise AssertionError(
                    f"{what}: stuck at {now}, nothing new for {stall:g}s"
                ) from None
            reached = now


async def iterate(iterator: AsyncIterator[T], count: int, timeout: float = WAIT) -> list[T]:
    """The first `count` items of an async iterator, or a failure saying how many came."""
    got: list[T] = []

    async def take() -> None:
        async for item in iterator:
            got.append(item)
            if len(got) == count:
                return

    try:
        await asyncio.wait_for(take(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"got {len(got)} of {count} items within {timeout:g}s") from None
    return got


async def gather_all(*awaitables: Awaitable[Any]) -> list[Any]:
    """Run awaitables together; the first failure cancels the rest and is raised."""
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
