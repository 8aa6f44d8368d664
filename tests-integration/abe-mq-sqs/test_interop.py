"""abe and plain aiobotocore on the same queues, both ways: the wire format of the README.

A raw producer's plain JSON body (with or without attributes) is consumed by abe; abe's
messages, read with the raw client, are the payload's JSON with abe's metadata in
String message attributes.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from abe.testing.helpers import next_delivery, receive, unique
from abe_mq_sqs import SqsBackend

pytestmark = pytest.mark.asyncio


async def _url(raw: Any, name: str) -> str:
    try:
        return str((await raw.get_queue_url(QueueName=name))["QueueUrl"])
    except raw.exceptions.QueueDoesNotExist:
        return str((await raw.create_queue(QueueName=name))["QueueUrl"])


async def _raw_receive(raw: Any, url: str, count: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    for _ in range(50):
        response = await raw.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            MessageAttributeNames=["All"],
            MessageSystemAttributeNames=["All"],
        )
        got.extend(response.get("Messages", []))
        if len(got) >= count:
            break
    return got


async def test_raw_producer_abe_consumer(sqs_settings: Any, raw_sqs: Any) -> None:
    key = unique("raw-to-abe")
    url = await _url(raw_sqs, key)
    sent = await raw_sqs.send_message(
        QueueUrl=url,
        MessageBody=json.dumps({"order": 7, "items": ["a", "b"], "note": "héllo"}),
        MessageAttributes={
            "trace-id": {"DataType": "String", "StringValue": "t-1"},
            "priority": {"DataType": "Number", "StringValue": "5"},
            "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
        },
    )
    await raw_sqs.send_message(QueueUrl=url, MessageBody='{"plain": true}')
    async with (
        SqsBackend(sqs_settings()) as backend,
        backend.subscribe(group=unique("group"), keys=[key]) as subscription,
    ):
        deliveries = await receive(subscription, 2)
    first = next(d for d in deliveries if "order" in d.payload)
    assert first.payload == {"order": 7, "items": ["a", "b"], "note": "héllo"}
    assert first.headers["trace-id"] == "t-1"
    assert first.headers["priority"] == "5"
    assert first.headers["blob"] == "AAE="
    assert first.id == sent["MessageId"]
    assert first.attempt == 1
    assert first.published_at is not None  # SQS's SentTimestamp
    plain = next(d for d in deliveries if "plain" in d.payload)
    assert plain.payload == {"plain": True}
    assert set(plain.headers) == {"abe-id", "abe-published-at"}


async def test_abe_producer_raw_consumer(sqs_settings: Any, raw_sqs: Any) -> None:
    key = unique("abe-to-raw")
    payload = {"order": 8, "total": 9.5, "text": "日本語 ✓", "nested": {"list": [1, None]}}
    async with SqsBackend(sqs_settings()) as backend:
        await backend.publish(
            key, payload, headers={"trace-id": "t-2", "tenant": "acme"}, message_id="order-8"
        )
        await backend.publish_many(key, [{"n": n} for n in range(15)])
    url = await _url(raw_sqs, key)
    messages = await _raw_receive(raw_sqs, url, 16)
    assert len(messages) == 16
    single = next(m for m in messages if "order" in m["Body"])
    # The body is the payload's JSON and nothing else: compact, UTF-8 text.
    assert single["Body"] == json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    assert json.loads(single["Body"]) == payload
    # abe's id is the abe-id attribute (the caller's, when given), the publish time SQS's
    # SentTimestamp; headers are String attributes of their own names.
    assert single["MessageAttributes"] == {
        "abe-id": {"DataType": "String", "StringValue": "order-8"},
        "trace-id": {"DataType": "String", "StringValue": "t-2"},
        "tenant": {"DataType": "String", "StringValue": "acme"},
    }
    assert single["MessageId"]
    assert single["Attributes"]["SentTimestamp"].isdigit()
    numbers = sorted(json.loads(m["Body"])["n"] for m in messages if '"n"' in m["Body"])
    assert numbers == list(range(15))
    many = [m["MessageAttributes"] for m in messages if '"n"' in m["Body"]]
    assert all(set(attributes) == {"abe-id"} for attributes in many)


async def test_abe_reads_id_and_publish_time_from_sqs(sqs_settings: Any, raw_sqs: Any) -> None:
    key = unique("native-meta")
    url = await _url(raw_sqs, key)
    sent = await raw_sqs.send_message(QueueUrl=url, MessageBody='{"from": "raw"}')
    async with (
        SqsBackend(sqs_settings()) as backend,
        backend.subscribe(group=unique("group"), keys=[key]) as subscription,
    ):
        delivery = await next_delivery(subscription)
        await delivery.ack()
    assert delivery.id == sent["MessageId"]
    assert delivery.headers["abe-id"] == sent["MessageId"]
    assert delivery.published_at is not None
    assert abs(delivery.published_at - time.time()) < 60


async def test_headers_beyond_ten_attributes_travel_packed(sqs_settings: Any, raw_sqs: Any) -> None:
    key = unique("packed")
    headers = {f"h-{n}": f"value {n}" for n in range(12)}
    headers["empty"] = ""  # SQS refuses empty attribute values: it travels packed
    async with SqsBackend(sqs_settings()) as backend:
        await backend.publish(key, {"many": "headers"}, headers=headers)
        async with backend.subscribe(group=unique("group"), keys=[key]) as subscription:
            delivery = await next_delivery(subscription)
            await delivery.nack()  # leave it for the raw reader below
            for name, value in headers.items():
                assert delivery.headers[name] == value
    url = await _url(raw_sqs, key)
    [message] = await _raw_receive(raw_sqs, url, 1)
    attributes = message["MessageAttributes"]
    assert set(attributes) == {"abe-id", "abe-headers"}  # abe's own travel natively
    assert json.loads(attributes["abe-headers"]["StringValue"]) == headers


async def test_dead_letters_are_readable_raw(sqs_settings: Any, raw_sqs: Any) -> None:
    key = unique("dlq-raw")
    async with SqsBackend(sqs_settings()) as backend:
        await backend.publish(key, {"doomed": True}, headers={"trace-id": "t-3"})
        async with backend.subscribe(group=unique("group"), keys=[key]) as subscription:
            delivery = await next_delivery(subscription)
            await delivery.dead_letter(ValueError("no such warehouse"))
    url = await _url(raw_sqs, f"{key}-dlq")
    [message] = await _raw_receive(raw_sqs, url, 1)
    assert json.loads(message["Body"]) == {"doomed": True}
    attributes = {name: a["StringValue"] for name, a in message["MessageAttributes"].items()}
    assert attributes["abe-error"] == "ValueError: no such warehouse"
    assert attributes["abe-attempts"] == "1"
    assert attributes["abe-original-key"] == key
    assert attributes["trace-id"] == "t-3"
    assert attributes["abe-id"] == delivery.id


async def test_raw_fifo_producer_abe_consumer(sqs_settings: Any, raw_sqs: Any) -> None:
    key = unique("raw-fifo") + ".fifo"
    created = await raw_sqs.create_queue(
        QueueName=key, Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"}
    )
    for number in range(20):
        await raw_sqs.send_message(
            QueueUrl=created["QueueUrl"],
            MessageBody=json.dumps({"number": number}),
            MessageGroupId="group-one",
        )
    async with (
        SqsBackend(sqs_settings()) as backend,
        backend.subscribe(group=unique("group"), keys=[key]) as subscription,
    ):
        deliveries = await receive(subscription, 20)
    assert [d.payload["number"] for d in deliveries] == list(range(20))
