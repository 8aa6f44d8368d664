"""Contract 6-8: members of a group compete, different groups each get everything."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from abe.backends.message_queue.base.backend import BaseBackend
from abe.testing.fixtures import Backends, ContractFixtures
from abe.testing.helpers import WAIT, receive, receive_payloads, unique

__all__ = ["GroupContract"]


@pytest.mark.asyncio
class GroupContract(ContractFixtures):
    """Competing consumers within a group, fan-out across groups, the default group."""

    async def test_competing_consumers(self, backends: Backends) -> None:
        members = [backends.new(prefetch=2) for _ in range(3)]
        publisher = backends.new()
        key, group = unique("compete"), unique("workers")
        received: dict[int, list[int]] = {index: [] for index in range(len(members))}
        arrived = asyncio.Event()

        async def work(index: int, backend: BaseBackend) -> None:
            async with backend.subscribe(group=group, keys=[key]) as subscription:
                async for delivery in subscription:
                    received[index].append(delivery.payload["number"])
                    arrived.set()
                    await asyncio.sleep(0.005)  # the work itself: lets other members take some
                    await delivery.ack()

        tasks = [asyncio.ensure_future(work(index, member)) for index, member in enumerate(members)]
        try:
            published = 0
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 2 * WAIT
            # Publish in rounds until at least 60 went out and more than one member got work:
            # brokers that assign partitions to members may give everything to the first
            # member until the group has settled.
            while published < 60 or sum(1 for got in received.values() if got) < 2:
                assert loop.time() < deadline, f"only one member received work: {received}"
                for _ in range(10):
                    await publisher.publish(key, {"number": published})
                    published += 1
                while sum(map(len, received.values())) < published:
                    arrived.clear()
                    await asyncio.wait_for(arrived.wait(), WAIT)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        everything = [number for got in received.values() for number in got]
        duplicates = {number: seen for number, seen in Counter(everything).items() if seen > 1}
        assert not duplicates, f"delivered to more than one member: {duplicates}"
        assert sorted(everything) == list(range(published))
        assert sum(1 for got in received.values() if got) > 1

    async def test_fan_out(self, backends: Backends) -> None:
        backend = backends.new()
        if not backend.capabilities.fan_out:
            pytest.skip(f"{backend.name} declares no fan-out: groups on one key compete")
        key = unique("fan-out")
        await backend.publish_many(key, [{"number": number} for number in range(20)])
        billing = await receive_payloads(backend, [key], unique("billing"), 20)
        shipping = await receive_payloads(backends.new(), [key], unique("shipping"), 20)
        assert sorted(payload["number"] for payload in billing) == list(range(20))
        assert sorted(payload["number"] for payload in shipping) == list(range(20))

    async def test_default_group(self, backends: Backends) -> None:
        backend = backends.new()
        key = unique("default")
        await backend.publish_many(key, [{"number": number} for number in range(10)])
        async with backend.subscribe(keys=[key]) as implicit:
            assert implicit.group == "default"
            first = await receive(implicit, 5)
        async with backends.new().subscribe(group="default", keys=[key]) as explicit:
            rest = await receive(explicit, 5)
        numbers = [delivery.payload["number"] for delivery in first + rest]
        assert sorted(numbers) == list(range(10))
