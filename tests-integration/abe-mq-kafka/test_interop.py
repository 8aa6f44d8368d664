"""Interop both ways with raw aiokafka: plain JSON in, and abe's records read without abe."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]

from abe.provider import dead_letter_key
from abe.testing import unique
from abe.testing.helpers import next_delivery, receive
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
    # The user's headers and abe's id; the publish time is the record's timestamp.
    assert headers.keys() == {"abe-id", "trace-id"}
    assert headers["trace-id"] == "t-2"
    assert first.timestamp > 1_600_000_000_000
    assert [name for name, _ in by_n[2].headers] == ["abe-id"]
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


async def test_the_publishers_id_reaches_every_delivery(
    kafka_backend_factory: Callable[..., KafkaBackend],
) -> None:
    """Given ids travel as `abe-id`: on the first delivery, a redelivered copy, a dead letter."""
    key, group = unique("ids"), unique("group")
    async with kafka_backend_factory() as backend:
        await backend.publish(key, {"n": 1}, message_id="order-1")
        await backend.publish_many(key, [{"n": 2}, {"n": 3}], message_ids=["order-2", "order-3"])
        async with backend.subscribe(group=group, keys=[key]) as subscription:
            got = await receive(subscription, 3, ack=False)
            first = {delivery.payload["n"]: delivery for delivery in got}
            await first[1].nack()
            await first[2].dead_letter("testing ids")
            await first[3].ack()
            again = await next_delivery(subscription)
            await again.ack()
        async with backend.subscribe(group=group, keys=[dead_letter_key(key)]) as letters:
            letter = await next_delivery(letters)
            await letter.ack()
    assert [first[n].id for n in (1, 2, 3)] == ["order-1", "order-2", "order-3"]
    assert (again.payload, again.attempt, again.id) == ({"n": 1}, 2, "order-1")
    assert (letter.payload, letter.id) == ({"n": 2}, "order-2")
