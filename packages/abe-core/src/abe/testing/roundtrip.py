"""Contract 1-5: what is published comes back equal, to the right key, in order where promised."""

from __future__ import annotations

import json
from typing import Any

import pytest

from abe.testing.fixtures import Backends, ContractFixtures
from abe.testing.helpers import next_delivery, receive, receive_payloads, unique

__all__ = ["RoundTripContract"]

ROUND_TRIP_PAYLOADS: list[dict[str, Any]] = [
    {},
    {"order_id": 1001, "items": [{"sku": "w-1", "qty": 3}, {"sku": "g-2", "qty": 1}]},
    {"nested": {"deeper": {"deepest": [1, [2, [3, {"four": 4}]]]}}},
    {"text": "héllo wörld ✓ 日本語 🚀", "empty": "", "quote": "\"'\\\n\t"},
    {"floats": [0.1, -0.0, 1e-300, 1.7976931348623157e308, 3.141592653589793]},
    {"big": 2**70, "negative": -(2**63), "zero": 0},
    {"none": None, "true": True, "false": False, "list_of_nulls": [None, None]},
    {"empty_list": [], "empty_object": {}},
]


def _canonical(payload: dict[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True)


@pytest.mark.asyncio
class RoundTripContract(ContractFixtures):
    """Payloads round-trip; keys are isolated; order holds where the broker promises it."""

    async def test_round_trip(self, backends: Backends) -> None:
        backend = backends.new()
        key = unique("round-trip")
        for payload in ROUND_TRIP_PAYLOADS:
            await backend.publish(key, payload)
        got = await receive_payloads(backend, [key], unique("group"), len(ROUND_TRIP_PAYLOADS))
        assert sorted(map(_canonical, got)) == sorted(map(_canonical, ROUND_TRIP_PAYLOADS))
        for payload in got:  # equal means equal types too: 0.1 stays a float, 2**70 an int
            original = next(p for p in ROUND_TRIP_PAYLOADS if _canonical(p) == _canonical(payload))
            assert payload == original
            assert json.dumps(payload) == json.dumps(original)

    async def test_publish_before_consume(self, backends: Backends) -> None:
        publisher, consumer = backends.new(), backends.new()
        key = unique("early")
        for number in range(5):
            await publisher.publish(key, {"number": number})
        got = await receive_payloads(consumer, [key], unique("late-group"), 5)
        assert sorted(payload["number"] for payload in got) == [0, 1, 2, 3, 4]

    async def test_key_isolation(self, backends: Backends) -> None:
        backend = backends.new()
        key_a, key_b = unique("key-a"), unique("key-b")
        for number in range(10):
            await backend.publish(key_a, {"key": "a", "number": number})
            await backend.publish(key_b, {"key": "b", "number": number})
        await backend.publish(key_a, {"key": "a", "sentinel": True})
        only_a = await receive_payloads(backend, [key_a], unique("group-a"), 11)
        assert {payload["key"] for payload in only_a} == {"a"}
        assert any(payload.get("sentinel") for payload in only_a)
        async with backend.subscribe(group=unique("group-b"), keys=[key_b]) as subscription:
            deliveries = await receive(subscription, 10)
        assert {delivery.key for delivery in deliveries} == {key_b}

        # Several keys at once (fresh keys, so no fan-out is needed): each its own messages.
        key_c, key_d = unique("key-c"), unique("key-d")
        await backend.publish_many(key_c, [{"key": "c", "number": n} for n in range(7)])
        await backend.publish_many(key_d, [{"key": "d", "number": n} for n in range(5)])
        async with backend.subscribe(group=unique("group-cd"), keys=[key_c, key_d]) as both:
            mixed = await receive(both, 12)
        for delivery in mixed:
            assert delivery.key == {"c": key_c, "d": key_d}[delivery.payload["key"]]
        assert sum(delivery.key == key_c for delivery in mixed) == 7
        assert sum(delivery.key == key_d for delivery in mixed) == 5

    async def test_per_key_order(self, backends: Backends) -> None:
        backend = backends.new()
        if not backend.capabilities.per_key_ordering:
            pytest.skip(f"{backend.name} declares no per-key ordering")
        key = unique("order")
        for number in range(100):
            await backend.publish(key, {"number": number})
        got = await receive_payloads(backend, [key], unique("group"), 100)
        assert [payload["number"] for payload in got] == list(range(100))

    async def test_publish_many(self, backends: Backends) -> None:
        backend = backends.new()
        key = unique("batch")
        await backend.publish_many(key, ({"number": number} for number in range(500)))
        got = await receive_payloads(backend, [key], unique("group"), 500)
        numbers = [payload["number"] for payload in got]
        assert sorted(numbers) == list(range(500))
        if backend.capabilities.per_key_ordering:
            assert numbers == list(range(500))

    async def test_delivery_metadata(self, backends: Backends) -> None:
        backend = backends.new()
        key = unique("meta")
        await backend.publish(key, {"hello": "world"}, headers={"trace-id": "t-42"})
        async with backend.subscribe(group=unique("group"), keys=[key]) as subscription:
            delivery = await next_delivery(subscription)
            assert delivery.key == key
            assert delivery.attempt == 1
            assert delivery.headers.get("trace-id") == "t-42"
            assert delivery.id
            assert delivery.published_at is not None
            await delivery.ack()
