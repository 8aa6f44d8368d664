"""Interop both ways with a plain aio-pika client: the wire format in the README holds."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import aio_pika
import pytest
from abe_brokers import RabbitmqBroker, unique_name
from abe_mq_rabbitmq_testing import declare_key

from abe.testing.helpers import next_delivery


@pytest.mark.asyncio
async def test_a_plain_client_publishes_to_every_group(
    rabbitmq_broker: RabbitmqBroker, make_backend: Callable[..., Any], remember_keys: Any
) -> None:
    key = unique_name("abe-interop")
    remember_keys(rabbitmq_broker.url, key)
    connection = await aio_pika.connect(rabbitmq_broker.url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await declare_key(channel, key)
        body = json.dumps({"order": 7}).encode()
        message = aio_pika.Message(body, headers={"trace-id": "t-1"}, message_id="plain-1")
        await exchange.publish(message, routing_key=key)
    finally:
        await connection.close()
    backend = make_backend(rabbitmq_broker.url)
    try:
        for group in ("billing", "shipping"):  # groups made after the publish get it too
            async with backend.subscribe(group=group, keys=[key]) as subscription:
                delivery = await next_delivery(subscription)
                assert delivery.payload == {"order": 7}
                assert delivery.headers["trace-id"] == "t-1"
                assert delivery.id == "plain-1"
                assert delivery.attempt == 1
                await delivery.ack()
    finally:
        await backend.close()


@pytest.mark.asyncio
async def test_a_plain_client_reads_what_abe_publishes(
    rabbitmq_broker: RabbitmqBroker, make_backend: Callable[..., Any]
) -> None:
    key = unique_name("abe-interop")
    backend = make_backend(rabbitmq_broker.url)
    connection = await aio_pika.connect(rabbitmq_broker.url)
    try:
        channel = await connection.channel()
        await backend.publish(key, {"warmup": True})  # abe declares the key
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(key, routing_key=key)
        await backend.publish(key, {"order": 8}, headers={"trace-id": "t-2"}, message_id="abe-8")
        got = await queue.get(timeout=5, fail=True)
        assert got is not None
        assert json.loads(got.body) == {"order": 8}
        assert got.content_type == "application/json"
        assert got.message_id == "abe-8"
        assert got.timestamp is not None
        assert got.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert got.headers["trace-id"] == "t-2"
        assert got.headers["abe-id"] == "abe-8"
        await got.ack()
    finally:
        await connection.close()
        await backend.close()
