"""Interop both ways with raw nats-py: plain JSON in, plain JSON out, metadata in NATS headers."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from abe_mq_nats_testing import Janitor, raw_client

from abe.backends.message_queue.base.codec import OutgoingMessage
from abe.backends.message_queue.consumer import AsyncLoopConsumer
from abe.testing import unique
from abe.testing.helpers import eventually, receive

pytestmark = pytest.mark.asyncio


async def test_a_raw_producer_is_consumed_by_abe(
    nats_broker: Any, nats_janitor: Janitor, make_backend: Any
) -> None:
    key = f"{unique('interop')}.raw"
    stream = unique("raw-stream")
    async with raw_client(nats_broker.url) as (_, js):
        await js.add_stream(name=stream, subjects=[key])
        nats_janitor.streams.add(stream)
        await js.publish(key, b'{"order": 1, "note": "plain json"}')
        await js.publish(key, json.dumps({"order": 2}).encode(), headers={"trace-id": "t-2"})
    backend = make_backend()
    async with backend.subscribe(group=unique("group"), keys=[key]) as subscription:
        first, second = await receive(subscription, 2)
    assert first.payload == {"order": 1, "note": "plain json"}
    assert first.id == f"{stream}:1", "no abe-id: the id is the stream sequence"
    assert first.attempt == 1
    assert first.published_at is None
    assert second.payload == {"order": 2}
    assert second.headers["trace-id"] == "t-2"
    assert backend._jetstream.streams[key].name == stream, "abe used the stream covering the key"


async def test_abe_messages_read_by_a_raw_consumer(nats_broker: Any, make_backend: Any) -> None:
    backend = make_backend()
    key = unique("interop")
    payload = {"order": 7, "items": ["a", "b"], "text": "héllo"}
    before = int(time.time() * 1000)
    await backend.publish(key, payload, headers={"trace-id": "t-7"})
    stream = backend._jetstream.streams[key].name
    async with raw_client(nats_broker.url) as (_, js):
        subscription = await js.pull_subscribe(key, durable=unique("raw"), stream=stream)
        [message] = await subscription.fetch(1, timeout=10)
        await message.ack()
    assert json.loads(message.data) == payload
    assert message.data == json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    headers = message.headers or {}
    assert headers["abe-id"] == headers["Nats-Msg-Id"]
    assert before <= int(headers["abe-published-at"]) <= int(time.time() * 1000)
    assert headers["trace-id"] == "t-7"
    assert message.subject == key
    assert message.metadata.num_delivered == 1


async def test_a_retried_publish_is_stored_once(nats_broker: Any, make_backend: Any) -> None:
    backend = make_backend()
    key = unique("dedup")
    message = OutgoingMessage("fixed-id-1", b'{"n":1}', {"abe-id": "fixed-id-1"})
    await backend._send(key, [message])
    await backend._send(key, [message])  # the same message again, as a retry would send it
    await backend._send(key, [message, OutgoingMessage("fixed-id-2", b'{"n":2}', {})])
    async with raw_client(nats_broker.url) as (_, js):
        info = await js.stream_info(backend._jetstream.streams[key].name)
    assert info.state.messages == 2


async def test_dead_letters_read_by_a_raw_consumer(nats_broker: Any, make_backend: Any) -> None:
    backend = make_backend()
    key, group = unique("interop-dlq"), unique("group")
    await backend.publish(key, {"doomed": True}, headers={"trace-id": "t-9"})
    consumer = AsyncLoopConsumer(backend, group, keys=[key], max_attempts=1)
    failed = asyncio.Event()

    async def handler(payload: dict[str, Any]) -> None:
        failed.set()
        raise ValueError("no such warehouse")

    running = asyncio.ensure_future(consumer.run(handler))
    await asyncio.wait_for(failed.wait(), 30)
    await eventually(lambda: consumer.stats.dead_lettered >= 1, what="the dead letter")
    await consumer.shutdown()
    await running
    dead = f"{key}-dlq"
    async with raw_client(nats_broker.url) as (_, js):
        subscription = await js.pull_subscribe(
            dead, durable=unique("raw"), stream=backend._jetstream.streams[dead].name
        )
        [letter] = await subscription.fetch(1, timeout=10)
        await letter.ack()
    headers = letter.headers or {}
    assert json.loads(letter.data) == {"doomed": True}
    assert headers["abe-error"] == "ValueError: no such warehouse"
    assert headers["abe-attempts"] == "1"
    assert headers["abe-original-key"] == key
    assert headers["trace-id"] == "t-9"
    assert headers["Nats-Msg-Id"] == headers["abe-id"]


async def test_a_raw_worker_can_share_an_abe_group(nats_broker: Any, make_backend: Any) -> None:
    """The group is a plain durable pull consumer: a non-abe worker pulls and acks from it."""
    backend = make_backend()
    key, group = unique("shared-group"), unique("group")
    async with backend.subscribe(group=group, keys=[key]):
        pass  # joins the group: creates the consumer
    await backend.publish_many(key, [{"n": n} for n in range(3)])
    async with raw_client(nats_broker.url) as (_, js):
        subscription = await js.pull_subscribe_bind(
            group, stream=backend._jetstream.streams[key].name
        )
        messages = await subscription.fetch(3, timeout=10)
        for message in messages:
            await message.ack()
    assert [json.loads(message.data)["n"] for message in messages] == [0, 1, 2]
    async with backend.subscribe(group=group, keys=[key]) as subscription:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(subscription.__anext__(), 3)
