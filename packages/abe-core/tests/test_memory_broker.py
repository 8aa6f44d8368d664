"""The in-process broker: state that outlives event loops, named brokers, introspection,
leases, redelivery and groups, checked at the broker's own level where timing allows.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from abe.backends.message_queue.base.codec import IncomingMessage, OutgoingMessage
from abe.backends.message_queue.memory import MemoryBackend, MemoryBroker, MemorySettings
from abe.testing.helpers import next_delivery, receive

WAIT = 5.0
LONG = 60.0  # a lease that never runs out during a test


def out(*payloads: str) -> list[OutgoingMessage]:
    return [
        OutgoingMessage(f"id-{index}", body.encode(), {}) for index, body in enumerate(payloads)
    ]


def bodies(messages: list[IncomingMessage]) -> list[bytes]:
    return [message.body for message in messages]


# ---- several event loops, one after another --------------------------------------------------


def test_publish_in_one_loop_and_consume_in_the_next() -> None:
    backend = MemoryBackend(MemorySettings(redelivery_timeout=30))

    async def produce() -> None:
        await backend.publish_many("k", [{"i": 1}, {"i": 2}])

    async def consume() -> list[int]:
        async with backend.subscribe(group="g", keys="k") as subscription:
            got = await receive(subscription, 2, WAIT)
        await backend.close()
        return [delivery.payload["i"] for delivery in got]

    asyncio.run(produce())
    assert asyncio.run(consume()) == [1, 2]
    assert backend.broker.pending("k", "g") == 0


def test_a_consumer_waiting_when_its_loop_ended_does_not_break_the_next_loop() -> None:
    backend = MemoryBackend(MemorySettings(redelivery_timeout=30))

    async def wait_in_vain() -> None:
        subscription = backend.subscribe(group="g", keys="k")
        waiting = asyncio.ensure_future(subscription.__anext__())
        for _ in range(20):
            await asyncio.sleep(0)
        assert not waiting.done()
        # asyncio.run() cancels `waiting` as this loop ends.

    async def carry_on() -> dict[str, int]:
        await backend.publish("k", {"i": 1})
        async with backend.subscribe(group="g", keys="k") as subscription:
            delivery = await next_delivery(subscription, WAIT)
            await delivery.ack()
        await asyncio.wait_for(backend.close(), WAIT)
        return delivery.payload

    asyncio.run(wait_in_vain())
    assert asyncio.run(carry_on()) == {"i": 1}


def test_a_message_held_when_its_loop_ended_comes_back_in_the_next() -> None:
    backend = MemoryBackend(MemorySettings(redelivery_timeout=0.3))

    async def take_and_abandon() -> None:
        await backend.publish("k", {"i": 1})
        subscription = backend.subscribe(group="g", keys="k")
        assert (await next_delivery(subscription, WAIT)).attempt == 1

    async def take_again() -> int:
        async with backend.subscribe(group="g", keys="k") as subscription:
            delivery = await next_delivery(subscription, WAIT)
            await delivery.ack()
        await backend.close()
        return delivery.attempt

    asyncio.run(take_and_abandon())
    assert asyncio.run(take_again()) == 2


def _abandon_in_a_closed_loop(backend: MemoryBackend) -> list[asyncio.Task[object]]:
    """Leave a subscription waiting for messages in a loop closed without cancelling it."""
    left: list[asyncio.Task[object]] = []

    async def leave_waiting() -> None:
        subscription = backend.subscribe(group="g", keys="k")
        left.append(asyncio.ensure_future(subscription.__anext__()))
        for _ in range(20):
            await asyncio.sleep(0)
        assert subscription._fetch is not None, "the subscription is not waiting"
        left.append(subscription._fetch)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(leave_waiting())
    finally:
        loop.close()  # as some runners do: the waiting task is never cancelled
    return left


def _bury(orphans: list[asyncio.Task[object]]) -> None:
    """Close the orphaned coroutines of a closed loop, so that garbage collection is quiet."""
    for task in orphans:
        task._log_destroy_pending = False  # type: ignore[attr-defined]
        task.get_coro().close()


def test_the_broker_skips_a_waiter_whose_loop_was_closed() -> None:
    backend = MemoryBackend(MemorySettings(redelivery_timeout=30))
    orphans = _abandon_in_a_closed_loop(backend)

    async def publish_and_consume() -> dict[str, object]:
        await backend.publish("k", {"i": 1})
        other = MemoryBackend(MemorySettings(redelivery_timeout=30), broker=backend.broker)
        async with other, other.subscribe(group="g", keys="k") as subscription:
            delivery = await next_delivery(subscription, WAIT)
            await delivery.ack()
        return delivery.payload

    try:
        assert asyncio.run(publish_and_consume()) == {"i": 1}
    finally:
        _bury(orphans)


def test_close_in_a_later_loop_survives_a_subscription_left_in_a_closed_loop() -> None:
    backend = MemoryBackend(MemorySettings(redelivery_timeout=30))
    orphans = _abandon_in_a_closed_loop(backend)
    try:
        asyncio.run(backend.close())
    finally:
        _bury(orphans)


# ---- named brokers ---------------------------------------------------------------------------


def _from_env(monkeypatch: pytest.MonkeyPatch, name: str) -> MemoryBackend:
    for variable in MemoryBackend.variables:
        monkeypatch.delenv(variable.name, raising=False)
    monkeypatch.setenv("ABE_MEMORY_BROKER", name)
    return MemoryBackend.from_env()


@pytest.mark.asyncio
async def test_from_env_backends_share_the_named_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"shared-{uuid.uuid4().hex}"
    producer = _from_env(monkeypatch, name)
    consumer = _from_env(monkeypatch, name)
    assert producer is not consumer
    assert producer.broker is consumer.broker is MemoryBroker.named(name)
    assert repr(producer) == f"<MemoryBackend broker={name!r} open>"
    await producer.publish("k", {"hello": "there"})
    async with consumer.subscribe(group="g", keys="k") as subscription:
        delivery = await next_delivery(subscription, WAIT)
        await delivery.ack()
    assert delivery.payload == {"hello": "there"}


@pytest.mark.asyncio
async def test_differently_named_brokers_do_not_share(monkeypatch: pytest.MonkeyPatch) -> None:
    first = _from_env(monkeypatch, f"one-{uuid.uuid4().hex}")
    second = _from_env(monkeypatch, f"two-{uuid.uuid4().hex}")
    assert first.broker is not second.broker
    await first.publish("k", {"i": 1})
    assert second.broker.messages("k") == []
    assert second.broker.keys() == []


def test_memory_backends_built_directly_get_private_brokers() -> None:
    assert MemoryBackend().broker is not MemoryBackend().broker
    shared = MemoryBroker()
    assert MemoryBackend(broker=shared).broker is shared


def test_from_env_reads_the_memory_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in MemoryBackend.variables:
        monkeypatch.delenv(variable.name, raising=False)
    monkeypatch.setenv("ABE_MEMORY_MAX_PAYLOAD_BYTES", "2048")
    monkeypatch.setenv("ABE_MQ_REDELIVERY_TIMEOUT", "1.5")
    backend = MemoryBackend.from_env()
    assert backend.max_payload_bytes == 2048
    assert backend.redelivery_timeout == 1.5
    assert backend.settings.broker == "default"
    assert backend.broker is MemoryBroker.named("default")


# ---- introspection ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_messages_pending_and_keys() -> None:
    backend = MemoryBackend(MemorySettings(redelivery_timeout=30))
    broker = backend.broker
    assert broker.keys() == []
    assert broker.messages("b") == []
    assert broker.pending("b", "g") == 0

    await backend.publish_many("b", [{"i": 1}, {"i": 2}, {"i": 3}])
    assert broker.messages("b") == [{"i": 1}, {"i": 2}, {"i": 3}]
    assert broker.pending("b", "g") == 3, "a group that never joined has everything pending"

    async with backend.subscribe(group="g", keys=["b", "a"]) as subscription:
        assert broker.keys() == ["a", "b"], "subscribing makes a key known"
        first, second = await receive(subscription, 2, WAIT, ack=False)
        assert broker.pending("b", "g") == 3, "delivered but unacknowledged is still pending"
        await first.ack()
        await second.nack(LONG)
    assert broker.pending("b", "g") == 2
    assert broker.pending("b", "other") == 3
    assert broker.messages("b") == [{"i": 1}, {"i": 2}, {"i": 3}], "acked messages are kept"


def test_messages_is_a_copy() -> None:
    broker = MemoryBroker()
    broker.append("k", out('{"i": 1}'))
    broker.messages("k")[0]["i"] = 99
    assert broker.messages("k") == [{"i": 1}]


# ---- leases, nacks and redelivery, at the broker's level -------------------------------------


def test_a_stale_nack_does_not_disturb_the_new_holder() -> None:
    broker = MemoryBroker()
    broker.join("k", "g")
    broker.append("k", out('{"i": 1}'))
    [stale] = broker.take("g", ["k"], 10, 0.05, 0)
    time.sleep(0.1)  # the window under test: the first holder's lease runs out
    [current] = broker.take("g", ["k"], 10, LONG, 0)
    assert (current.broker_id, current.attempt) == (stale.broker_id, 2)

    broker.nack("g", stale, 0.0)  # the first holder gives up late
    assert broker.take("g", ["k"], 10, LONG, 0) == [], "the message was handed out twice"

    broker.nack("g", current, 0.0)  # the holder's own nack still works
    [again] = broker.take("g", ["k"], 10, LONG, 0)
    assert again.attempt == 3


def test_an_unsettled_message_comes_back_after_its_lease_with_a_higher_attempt() -> None:
    broker = MemoryBroker()
    broker.join("k", "g")
    broker.append("k", out('{"i": 1}'))
    [first] = broker.take("g", ["k"], 10, 0.05, 0)
    assert first.attempt == 1
    assert broker.take("g", ["k"], 10, LONG, 0) == [], "redelivered before the lease ran out"
    time.sleep(0.1)  # the window under test
    [second] = broker.take("g", ["k"], 10, LONG, 0)
    assert (second.broker_id, second.body, second.attempt) == (first.broker_id, first.body, 2)


def test_an_acked_message_never_comes_back() -> None:
    broker = MemoryBroker()
    broker.join("k", "g")
    broker.append("k", out('{"i": 1}'))
    taken = broker.take("g", ["k"], 10, 0.05, 0)
    broker.ack("g", taken)
    time.sleep(0.1)  # past the lease it had
    assert broker.take("g", ["k"], 10, LONG, 0) == []
    assert broker.pending("k", "g") == 0


def test_a_nack_with_a_delay_holds_the_message_back() -> None:
    broker = MemoryBroker()
    broker.join("k", "g")
    broker.append("k", out('{"i": 1}'))
    [taken] = broker.take("g", ["k"], 10, LONG, 0)
    broker.nack("g", taken, 0.15)
    assert broker.take("g", ["k"], 10, LONG, 0) == []
    time.sleep(0.2)  # the window under test
    [again] = broker.take("g", ["k"], 10, LONG, 0)
    assert again.attempt == 2


@pytest.mark.asyncio
async def test_redelivery_through_a_backend_waits_for_the_timeout() -> None:
    backend = MemoryBackend(MemorySettings(redelivery_timeout=0.3))
    await backend.publish("k", {"i": 1})
    async with backend.subscribe(group="g", keys="k") as subscription:
        first = await next_delivery(subscription, WAIT)
        taken_at = time.monotonic()
        second = await next_delivery(subscription, WAIT)
        waited = time.monotonic() - taken_at
        await second.ack()
    assert (second.id, second.attempt) == (first.id, 2)
    assert 0.25 <= waited < 0.3 + 1.0


# ---- groups ----------------------------------------------------------------------------------


def test_fan_out_each_group_gets_every_message() -> None:
    broker = MemoryBroker()
    for group in ("billing", "audit"):
        broker.join("k", group)
    broker.append("k", out(*(f'{{"i": {i}}}' for i in range(10))))
    billing = broker.take("billing", ["k"], 100, LONG, 0)
    audit = broker.take("audit", ["k"], 100, LONG, 0)
    assert bodies(billing) == bodies(audit)
    assert len(billing) == 10


def test_members_of_one_group_compete() -> None:
    broker = MemoryBroker()
    broker.join("k", "workers")
    broker.append("k", out(*(f'{{"i": {i}}}' for i in range(10))))
    first = broker.take("workers", ["k"], 4, LONG, 0)
    second = broker.take("workers", ["k"], 4, LONG, 0)
    third = broker.take("workers", ["k"], 4, LONG, 0)
    assert [len(batch) for batch in (first, second, third)] == [4, 4, 2]
    ids = [message.broker_id for message in first + second + third]
    assert len(set(ids)) == 10
    assert broker.take("workers", ["k"], 4, LONG, 0) == []


def test_a_group_that_joins_late_starts_from_the_oldest_message() -> None:
    broker = MemoryBroker()
    broker.append("k", out('{"i": 0}', '{"i": 1}'))
    broker.join("k", "late")
    assert bodies(broker.take("late", ["k"], 10, LONG, 0)) == [b'{"i": 0}', b'{"i": 1}']


def test_joining_twice_keeps_the_groups_place() -> None:
    broker = MemoryBroker()
    broker.join("k", "g")
    broker.append("k", out('{"i": 0}'))
    broker.ack("g", broker.take("g", ["k"], 10, LONG, 0))
    broker.join("k", "g")
    assert broker.take("g", ["k"], 10, LONG, 0) == []


def test_take_starts_with_a_different_key_each_turn() -> None:
    broker = MemoryBroker()
    for key in ("a", "b"):
        broker.join(key, "g")
        broker.append(key, out(*(f'{{"key": "{key}"}}' for _ in range(5))))
    first = broker.take("g", ["a", "b"], 3, LONG, 0)
    second = broker.take("g", ["a", "b"], 3, LONG, 1)
    assert {message.key for message in first} == {"a"}
    assert {message.key for message in second} == {"b"}


# ---- waiting ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_wait_returns_when_a_message_arrives() -> None:
    broker = MemoryBroker()
    broker.join("k", "g")
    waiting = asyncio.ensure_future(broker.wait("g", ["k"], LONG))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiting.done()
    broker.append("k", out('{"i": 1}'))
    await asyncio.wait_for(waiting, WAIT)


@pytest.mark.asyncio
async def test_wait_returns_when_a_lease_runs_out() -> None:
    broker = MemoryBroker()
    broker.join("k", "g")
    broker.append("k", out('{"i": 1}'))
    broker.take("g", ["k"], 10, 0.1, 0)
    started = time.monotonic()
    await asyncio.wait_for(broker.wait("g", ["k"], LONG), WAIT)
    assert 0.08 <= time.monotonic() - started < 2.0
    assert len(broker.take("g", ["k"], 10, LONG, 0)) == 1


@pytest.mark.asyncio
async def test_wait_gives_up_after_its_timeout() -> None:
    broker = MemoryBroker()
    broker.join("k", "g")
    started = time.monotonic()
    await asyncio.wait_for(broker.wait("g", ["k"], 0.1), WAIT)
    assert time.monotonic() - started >= 0.09
