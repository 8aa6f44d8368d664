"""Interop both ways with raw redis-py: the wire format is the payload's JSON in `data`.

A producer that is not abe (an existing abe-redis service, a script) writes entries
with the JSON in the field `data`; abe reads them. abe's entries, read by plain
redis-py, are that same JSON plus one field per header.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
import redis.asyncio
from abe_brokers import RedisBroker

from abe.backends.message_queue.base import BaseBackend
from abe.errors import PayloadError
from abe.testing import unique
from abe.testing.helpers import next_delivery, receive

Make = Callable[..., BaseBackend]
pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def raw(redis_broker: RedisBroker) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_broker.url)
    try:
        yield client
    finally:
        await client.aclose()


async def test_abe_reads_a_raw_producers_entries(
    raw: redis.asyncio.Redis, redis_broker: RedisBroker, make_backend: Make
) -> None:
    key = unique("raw-in")
    payload = {"order": 7, "lines": [{"sku": "w-1", "qty": 2}], "note": "héllo"}
    first = await raw.xadd(key, {"data": json.dumps(payload)})
    await raw.xadd(key, {"data": json.dumps({"second": True}), "source": "legacy-service"})
    backend = make_backend(redis_broker.url)
    async with backend, backend.subscribe(group=unique("g"), keys=[key]) as subscription:
        one, two = await receive(subscription, 2)
    assert one.payload == payload
    assert one.attempt == 1
    assert one.id == first.decode()  # no abe-id: the stream entry id stands in
    assert dict(one.headers) == {}
    assert two.payload == {"second": True}
    assert dict(two.headers) == {"source": "legacy-service"}
    assert two.published_at is None


async def test_raw_clients_read_abes_entries(
    raw: redis.asyncio.Redis, redis_broker: RedisBroker, make_backend: Make
) -> None:
    key = unique("raw-out")
    payload = {"total": 9.5, "items": ["a", "b"], "unicode": "✓"}
    backend = make_backend(redis_broker.url)
    async with backend:
        await backend.publish(key, payload, headers={"trace-id": "t-1"})
        await backend.publish_many(key, [{"n": 1}, {"n": 2}])
    entries = await raw.xrange(key)
    assert len(entries) == 3
    _, fields = entries[0]
    assert json.loads(fields[b"data"]) == payload
    assert (
        fields[b"data"] == json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    )  # exactly the body: compact JSON, UTF-8
    assert fields[b"trace-id"] == b"t-1"
    assert fields[b"abe-id"]
    assert int(fields[b"abe-published-at"]) > 1_600_000_000_000
    assert set(fields) == {b"data", b"trace-id", b"abe-id", b"abe-published-at"}
    assert [json.loads(f[b"data"]) for _, f in entries[1:]] == [{"n": 1}, {"n": 2}]

    # a raw consumer group reads them like any other entries, and its acks are plain XACKs
    group = unique("raw-group")
    await raw.xgroup_create(key, group, id="0")
    reply = await raw.xreadgroup(group, "raw-consumer", {key: ">"}, count=10)
    [(_, read)] = reply
    assert [json.loads(f[b"data"]) for _, f in read] == [payload, {"n": 1}, {"n": 2}]
    assert await raw.xack(key, group, *(entry_id for entry_id, _ in read)) == 3


async def test_an_abe_group_is_a_redis_consumer_group(
    raw: redis.asyncio.Redis, redis_broker: RedisBroker, make_backend: Make
) -> None:
    key, group = unique("group"), unique("g")
    backend = make_backend(redis_broker.url)
    async with backend:
        await backend.publish(key, {"n": 1})
        async with backend.subscribe(group=group, keys=[key]) as subscription:
            delivery = await next_delivery(subscription)
            pending = await raw.xpending(key, group)
            assert pending["pending"] == 1  # delivered, not yet acknowledged
            await delivery.ack()
        assert (await raw.xpending(key, group))["pending"] == 0
        [info] = [g for g in await raw.xinfo_groups(key) if g["name"].decode() == group]
        assert info["last-delivered-id"] == (await raw.xrange(key))[0][0]


async def test_foreign_entries_without_data_are_dead_lettered_with_their_fields(
    raw: redis.asyncio.Redis, redis_broker: RedisBroker, make_backend: Make
) -> None:
    key = unique("foreign")
    await raw.xadd(key, {"payload": "not where abe looks", "kind": "legacy"})
    backend = make_backend(redis_broker.url)
    async with backend:
        await backend.publish(key, {"after": "it"})
        async with backend.subscribe(group=unique("g"), keys=[key]) as subscription:
            delivery = await next_delivery(subscription)
            assert delivery.payload == {"after": "it"}
            await delivery.ack()
        [(_, letter)] = await raw.xrange(f"{key}-dlq")
    assert json.loads(letter[b"data"]) == {"undecodable_body": ""}
    assert letter[b"payload"] == b"not where abe looks"
    assert letter[b"kind"] == b"legacy"
    assert letter[b"abe-original-key"] == key.encode()
    assert b"undecodable" in letter[b"abe-error"]


async def test_a_lone_surrogate_in_a_header_is_refused_and_nothing_is_written(
    raw: redis.asyncio.Redis, redis_broker: RedisBroker, make_backend: Make
) -> None:
    key = unique("surrogate")
    backend = make_backend(redis_broker.url)
    async with backend:
        with pytest.raises(PayloadError, match="trace-id"):
            await backend.publish(key, {"n": 1}, headers={"trace-id": "t-\ud800"})
        with pytest.raises(PayloadError, match="trace-id"):
            await backend.publish_many(
                key, [{"n": 2}, {"n": 3}], headers={"trace-id": "\udfff-half"}
            )
        await backend.publish(key, {"n": 4}, headers={"trace-id": "t-4"})  # still usable
    entries = await raw.xrange(key)
    assert [json.loads(fields[b"data"]) for _, fields in entries] == [{"n": 4}]
