"""Contract 20-24: closing releases everything, brokers come and go, memory stays bounded;
and keys can be deleted again."""

from __future__ import annotations

import asyncio
import gc
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from abe.backends.message_queue.base.backend import BaseBackend
from abe.backends.message_queue.base.codec import IncomingMessage
from abe.backends.message_queue.base.delivery import Delivery
from abe.backends.message_queue.base.keys import dead_letter_key
from abe.testing.fixtures import (
    BackendFactory,
    Backends,
    ContractFixtures,
)
from abe.testing.helpers import WAIT, next_delivery, receive_payloads, unique

__all__ = ["LifecycleContract"]


@contextmanager
def _resource_warnings_fail() -> Iterator[list[str]]:
    """Collect ResourceWarnings, raised or reported from `__del__`, so the test can fail on them."""
    seen: list[str] = []
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, ResourceWarning):
            seen.append(str(unraisable.exc_value))
        else:
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            yield seen
            gc.collect()
        seen.extend(str(w.message) for w in caught if issubclass(w.category, ResourceWarning))
    finally:
        sys.unraisablehook = previous


async def _settle_loop() -> None:
    """Let callbacks scheduled by closing (transport teardown, finalizers) run."""
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.asyncio
class LifecycleContract(ContractFixtures):
    """close(), cancellation, broker restarts, unreachable brokers, bounded prefetch."""

    async def test_close_releases(self, backend_factory: BackendFactory) -> None:
        before = asyncio.all_tasks()
        with _resource_warnings_fail() as leaks:
            key = unique("close")
            got_one = asyncio.Event()

            async def consume(backend: BaseBackend) -> None:
                async for _ in backend.consume(group=unique("group"), keys=[key]):
                    got_one.set()

            async with backend_factory() as backend:
                await backend.publish_many(key, [{"number": number} for number in range(3)])
                task = asyncio.ensure_future(consume(backend))
                await asyncio.wait_for(got_one.wait(), WAIT)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            assert backend.closed
            del backend, task
            await _settle_loop()
            left = asyncio.all_tasks() - before - {asyncio.current_task()}
            assert not left, f"tasks left running after close: {left}"
        assert not leaks, f"resources not released: {leaks}"

    async def test_close_is_idempotent(self, backend_factory: BackendFactory) -> None:
        backend = backend_factory()
        await backend.close()
        await backend.close()

        backend = backend_factory()
        key = unique("idle")
        subscription = backend.subscribe(group=unique("group"), keys=[key])
        await subscription.open()
        waiting = asyncio.ensure_future(subscription.__anext__())
        stream = backend.consume(group=unique("other"), keys=[key])
        streaming = asyncio.ensure_future(stream.__anext__())
        await _settle_loop()
        assert not waiting.done()
        await asyncio.wait_for(backend.close(), WAIT)
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(waiting, WAIT)
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(streaming, WAIT)
        await asyncio.wait_for(backend.close(), WAIT)

    async def test_slow_consumer_is_bounded(self, backends: Backends) -> None:
        prefetch = 5
        backend = backends.new(prefetch=prefetch)
        key = unique("slow")
        await backend.publish_many(key, [{"number": number} for number in range(60)])
        most_held = 0
        async with backend.subscribe(group=unique("group"), keys=[key]) as subscription:
            for _ in range(30):
                delivery = await next_delivery(subscription)
                most_held = max(most_held, backend.held_messages, subscription.held)
                await asyncio.sleep(0.01)  # the slow handler's work
                most_held = max(most_held, backend.held_messages)
                await delivery.ack()
        assert most_held <= prefetch, f"held {most_held} messages with prefetch {prefetch}"
        assert most_held >= 1

    async def test_consumed_messages_are_freed_at_once(self, backends: Backends) -> None:
        """A message consumed and acknowledged is freed by reference counting: none is left in
        a reference cycle for the garbage collector (a drain of millions would carry them)."""
        backend, key, total, warm_up = backends.new(), unique("freed"), 300, 50
        await backend.publish_many(key, [{"n": n} for n in range(total)])
        stream = backend.consume(group=unique("group"), keys=[key])
        consumed, was_enabled, kept = 0, gc.isenabled(), len(gc.garbage)
        try:
            async for _ in stream:
                consumed += 1
                if consumed == warm_up:  # connected and joined: only the messages from here
                    gc.collect()
                    gc.disable()
                if consumed == total:
                    break
            await stream.aclose()  # acknowledged and let go: nothing of them is reachable
            gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds goes to gc.garbage
            gc.collect()
            cycled = [o for o in gc.garbage[kept:] if isinstance(o, IncomingMessage | Delivery)]
        finally:
            gc.set_debug(0)
            del gc.garbage[kept:]
            if was_enabled:
                gc.enable()
            await stream.aclose()
        assert not cycled, f"{len(cycled)} messages were freed only by the garbage collector"

    async def test_delete_keys_starts_them_afresh(self, backends: Backends) -> None:
        backend = backends.new()
        try:
            await backend.delete_keys([unique("never-used")])
        except NotImplementedError:
            pytest.skip(f"the {backend.name} backend does not delete keys")
        key, group = unique("deleted"), unique("group")
        await backend.publish_many(key, [{"old": number} for number in range(3)])
        await backend.publish(dead_letter_key(key), {"old": "letter"})
        assert await receive_payloads(backend, [key], group, 1) == [{"old": 0}]

        await backend.delete_keys(key)
        await backend.delete_keys([key])  # deleting what is gone already is fine

        await backend.publish(key, {"new": 1})
        await backend.publish(dead_letter_key(key), {"new": "letter"})
        assert await receive_payloads(backend, [key], group, 1) == [{"new": 1}]
        if backend.capabilities.fan_out:  # else groups compete, and `group` took it
            assert await receive_payloads(backend, [key], unique("fresh"), 1) == [{"new": 1}]
        letters = await receive_payloads(backend, [dead_letter_key(key)], group, 1)
        assert letters == [{"new": "letter"}]
        await backend.delete_keys(key)

    async def test_delete_group_keeps_the_messages(self, backends: Backends) -> None:
        backend = backends.new()
        try:
            await backend.delete_group(unique("never-used"), [unique("never-used")])
        except NotImplementedError:
            pytest.skip(f"the {backend.name} backend does not delete groups")
        key, group = unique("group-deleted"), unique("group")
        published = [{"number": number} for number in range(3)]
        await backend.publish_many(key, published)
        # With fan-out the group reads (and acknowledges) all three, so none is handed back
        # at close (Kafka hands a message back by writing a copy of it to the topic).
        read = 3 if backend.capabilities.fan_out else 1
        assert await receive_payloads(backend, [key], group, read) == published[:read]
        await backend.delete_group(group, [key])
        await backend.delete_group(group, [key])  # deleting what is gone already is fine
        # With fan-out the group starts afresh, from the oldest message; without, there is no
        # per-group state: what was not acknowledged is still there.
        expected = published if backend.capabilities.fan_out else published[1:]
        assert await receive_payloads(backend, [key], group, len(expected)) == expected

    async def test_existing_keys_creates_nothing(self, backends: Backends) -> None:
        backend = backends.new()
        present, absent = unique("present"), unique("absent")
        try:
            assert await backend.existing_keys([absent]) == []
        except NotImplementedError:
            pytest.skip(f"the {backend.name} backend cannot tell which keys exist")
        await backend.publish(present, {"here": True})
        assert await backend.existing_keys([absent, present, absent]) == [present]
        assert await backend.existing_keys([absent]) == []  # asking did not create it
