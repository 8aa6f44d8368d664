"""FIFO keys: a key ending in `.fifo` is a FIFO queue, ordered per key and deduplicated by id."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from abe.backends.message_queue.base.codec import OutgoingMessage
from abe.backends.message_queue.consumer import AsyncLoopConsumer, current_delivery
from abe.testing.helpers import WAIT, next_delivery, nothing_arrives, receive, unique
from abe_mq_sqs import SqsBackend

pytestmark = pytest.mark.asyncio


async def test_fifo_key_keeps_publish_order(sqs_settings: Any, raw_sqs: Any) -> None:
    key = unique("ordered") + ".fifo"
    async with SqsBackend(sqs_settings()) as backend:
        for number in range(30):
            await backend.publish(key, {"number": number})
        await backend.publish_many(key, [{"number": number} for number in range(30, 130)])
        async with backend.subscribe(group=unique("group"), keys=[key]) as subscription:
            deliveries = await receive(subscription, 130)
    assert [delivery.payload["number"] for delivery in deliveries] == list(range(130))
    attributes = await raw_sqs.get_queue_attributes(
        QueueUrl=(await raw_sqs.get_queue_url(QueueName=key))["QueueUrl"],
        AttributeNames=["FifoQueue", "ContentBasedDeduplication"],
    )
    assert attributes["Attributes"]["FifoQueue"] == "true"
    assert attributes["Attributes"]["ContentBasedDeduplication"] == "false"


async def test_fifo_deduplicates_by_abe_message_id(sqs_settings: Any, raw_sqs: Any) -> None:
    """A message sent twice with the same abe id (a retried send, a dead letter written twice)
    is stored once; a raw producer reusing that id as its deduplication id is dropped too."""
    key = unique("dedup") + ".fifo"
    message = OutgoingMessage("dedup-id-1", b'{"once":true}', {"abe-id": "dedup-id-1"})
    other = OutgoingMessage("dedup-id-2", b'{"other":true}', {"abe-id": "dedup-id-2"})
    async with SqsBackend(sqs_settings()) as backend:
        await backend._send(key, [message])
        await backend._send(key, [message, other, message])
        url = (await raw_sqs.get_queue_url(QueueName=key))["QueueUrl"]
        await raw_sqs.send_message(
            QueueUrl=url,
            MessageBody='{"raw":"duplicate"}',
            MessageGroupId=key,
            MessageDeduplicationId="dedup-id-2",
        )
        async with backend.subscribe(group=unique("group"), keys=[key]) as subscription:
            deliveries = await receive(subscription, 2)
            await nothing_arrives(subscription, 2.0)
    assert [delivery.payload for delivery in deliveries] == [{"once": True}, {"other": True}]


async def test_fifo_dead_letters_go_to_a_fifo_queue(sqs_settings: Any, raw_sqs: Any) -> None:
    key = unique("fifo-dlq") + ".fifo"
    base = key.removesuffix(".fifo")
    async with SqsBackend(sqs_settings()) as backend:
        await backend.publish(key, {"bad": True})
        await backend.publish(key, {"good": True})
        done = asyncio.Event()
        good: list[int] = []

        async def handler(payload: dict[str, Any]) -> None:
            if payload.get("bad"):
                raise ValueError(f"attempt {current_delivery().attempt} failed")
            good.append(1)
            done.set()

        consumer = AsyncLoopConsumer(backend, "g", keys=[key], max_attempts=2, retry_delay=0.1)
        running = asyncio.ensure_future(consumer.run(handler))
        try:
            await asyncio.wait_for(done.wait(), WAIT)
        finally:
            await consumer.shutdown()
            await running
        # core names the dead-letter key `<key>-dlq`; its queue is `<name>-dlq.fifo`
        async with backend.subscribe(group="dlq", keys=[f"{key}-dlq"]) as dead:
            letter = await next_delivery(dead)
            await letter.ack()
    assert letter.payload == {"bad": True}
    assert letter.headers["abe-attempts"] == "2"
    assert good == [1]  # the good message came after the bad one was dead-lettered
    url = (await raw_sqs.get_queue_url(QueueName=f"{base}-dlq.fifo"))["QueueUrl"]
    attributes = await raw_sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["FifoQueue"])
    assert attributes["Attributes"]["FifoQueue"] == "true"


async def test_fifo_group_id_is_the_key(sqs_settings: Any, raw_sqs: Any) -> None:
    key = unique("group-id") + ".fifo"
    async with SqsBackend(sqs_settings()) as backend:
        await backend.publish(key, {"x": 1})
    url = (await raw_sqs.get_queue_url(QueueName=key))["QueueUrl"]
    response = await raw_sqs.receive_message(
        QueueUrl=url, MessageSystemAttributeNames=["All"], MessageAttributeNames=["All"]
    )
    [message] = response["Messages"]
    assert message["Attributes"]["MessageGroupId"] == key
    # abe's message id: 16 hex digits for the process, then a counter
    assert re.fullmatch(r"[0-9a-f]{16}-[0-9a-f]+", message["Attributes"]["MessageDeduplicationId"])
    assert json.loads(message["Body"]) == {"x": 1}
