"""Interop both ways with raw aiokafka: plain JSON in, and abe's records read without abe."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]

from abe.testing import unique
from abe.testing.helpers import next_delivery
from abe_mq_kafka import KafkaBackend

pytestmark = pytest.mark.asyncio


async def test_raw_producer_json_is_consumed_by_abe(
    kafka_backend_factory: Callable[..., KafkaBackend], raw_producer: Any
) -> None:
    key = unique("raw-in")
    body = json.dumps({"order": 7, "items": ["a", "b"]}).encode()
    metadata = await raw_producer.send_and_wait(key, body, headers=[("trace-id", b"t-1")])
    async with (
        kafka_backend_factory() as backend,
        backend.subscribe(group=unique("group"), keys=[key]) as subscription,
    ):
        delivery = await next_delivery(subscription)
        await delivery.ack()
    assert delivery.payload == {"order": 7, "items": ["a", "b"]}
    assert delivery.attempt == 1
    assert delivery.headers["trace-id"] == "t-1"
    # Any record's id and time are its position and timestamp, abe's or not.
    assert delivery.id == f"{key}:{metadata.partition}:{metadata.offset}"
    assert delivery.published_at == metadata.timestamp / 1000


async def _read_raw(bootstrap: str, key: str, count: int) -> list[Any]:
    """At least `count` records of topic `key`, read from the start by a plain aiokafka consumer."""
    consumer = AIOKafkaConsumer(
        key,
        bootstrap_servers=bootstrap,
        group_id=unique("raw"),
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        while len(records) < count:
            batches = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 30)
            for batch in batches.values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


async def test_abe_records_are_plain_json_with_header_metadata(
    kafka_broker: Any, kafka_backend_factory: Callable[..., KafkaBackend]
) -> None:
    key = unique("raw-out")
    async with kafka_backend_factory() as backend:
        await backend.publish(key, {"hello": "wörld", "n": 1}, headers={"trace-id": "t-2"})
        await backend.publish_many(key, [{"n": 2}, {"n": 3}])
    records = await _read_raw(kafka_broker.bootstrap, key, 3)
    by_n = {json.loads(record.value)["n"]: record for record in records}
    first = by_n[1]
    assert first.value == '{"hello":"wörld","n":1}'.encode()
    assert first.key is None
    headers = {name: value.decode() for name, value in first.headers}
    # Only the user's headers: the id and the time are the record's position and timestamp.
    assert headers == {"trace-id": "t-2"}
    assert first.timestamp > 1_600_000_000_000
    assert not by_n[2].headers
    # a publish_many batch lands on one partition, in order
    assert by_n[2].partition == by_n[3].partition
    assert by_n[2].offset < by_n[3].offset


async def test_redelivery_copy_carries_attempt_header(
    kafka_broker: Any, kafka_backend_factory: Callable[..., KafkaBackend]
) -> None:
    key, group = unique("copy"), unique("group")
    async with kafka_backend_factory() as backend:
        await backend.publish(key, {"retry": True}, headers={"trace-id": "t-3"})
        async with backend.subscribe(group=group, keys=[key]) as subscription:
            delivery = await next_delivery(subscription)
            await delivery.nack(delay=0.2)
            again = await next_delivery(subscription)
            await again.ack()
    assert (again.attempt, again.id, again.headers) == (2, delivery.id, delivery.headers)
    assert "abe-attempt" not in again.headers  # abe's redelivery bookkeeping stays inside
    records = await _read_raw(kafka_broker.bootstrap, key, 2)
    copy = next(record for record in records if ("abe-attempt", b"2") in record.headers)
    headers = dict(copy.headers)
    assert headers["abe-id"].decode() == delivery.id
    assert int(headers["abe-not-before"]) > int(headers["abe-published-at"])
    assert copy.value == b'{"retry":true}'
