"""Subscriptions and the shared publish path of BaseBackend, driven through the memory backend.

Redelivery timeouts here are long on purpose: a message that comes back within a test's
few seconds came back because abe gave it back, not because its lease ran out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from abe.backends.message_queue.base import DEFAULT_GROUP, Receiver
from abe.backends.message_queue.base.codec import IncomingMessage, OutgoingMessage
from abe.backends.message_queue.consumer import AsyncLoopConsumer
from abe.backends.message_queue.memory import MemoryBackend, MemoryBroker, MemorySettings
from abe.errors import (
    BackendClosedError,
    ConfigurationError,
    DeliveryStateError,
    InvalidKeyError,
    PayloadError,
)
from abe.testing.helpers import next_delivery, receive

WAIT = 5.0


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker()


@pytest.fixture
def backend(broker: MemoryBroker) -> MemoryBackend:
    # A long poll interval: a fetch that stop() failed to interrupt would block the test.
    return MemoryBackend(MemorySettings(redelivery_timeout=30, poll_interval=30), broker=broker)


async def spin(turns: int = 20) -> None:
    """Let the event loop run everything that is ready, a few times over."""
    for _ in range(turns):
        await asyncio.sleep(0)


# ---- the prefetch bound ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_subscription_never_holds_more_than_its_prefetch(backend: MemoryBackend) -> None:
    await backend.publish_many("k", [{"i": i} for i in range(10)])
    async with backend.subscribe(group="g", keys="k", prefetch=3) as first:
        held = []
        for _ in range(3):
            held.append(await next_delivery(first, WAIT))
            assert first.held <= 3
        assert first.held == 3
        fourth = asyncio.ensure_future(first.__anext__())
        await spin()
        assert not fourth.done(), "a fourth delivery was handed out with nothing settled"
        assert first.held == 3

        # What the first subscription did not take is still on the broker, for others.
        async with backend.subscribe(group="g", keys="k") as second:
            others = await receive(second, 7, WAIT)
        assert sorted(d.payload["i"] for d in held + others) == list(range(10))

        await backend.publish("k", {"i": 10})
        await spin()
        assert not fourth.done()
        await held[0].ack()  # settling frees one unit of credit
        late = await asyncio.wait_for(fourth, WAIT)
        assert late.payload == {"i": 10}
        assert first.held == 3
        for delivery in (*held[1:], late):
            await delivery.ack()
        assert first.held == 0
    assert backend.broker.pending("k", "g") == 0


@pytest.mark.asyncio
async def test_backend_held_messages_counts_every_subscription(backend: MemoryBackend) -> None:
    await backend.publish_many("a", [{"i": i} for i in range(2)])
    await backend.publish_many("b", [{"i": i} for i in range(3)])
    async with (
        backend.subscribe(group="g", keys="a") as on_a,
        backend.subscribe(group="g", keys="b") as on_b,
    ):
        await receive(on_a, 2, WAIT, ack=False)
        await receive(on_b, 3, WAIT, ack=False)
        assert backend.held_messages == 5


@pytest.mark.asyncio
async def test_prefetch_below_one_is_refused(backend: MemoryBackend) -> None:
    with pytest.raises(ValueError, match="prefetch must be at least 1, got 0"):
        backend.subscribe(group="g", keys="k", prefetch=0)


# ---- stop and close --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_stop_ends_a_pending_next(backend: MemoryBackend) -> None:
    subscription = backend.subscribe(group="g", keys="k")
    await subscription.open()
    waiting = asyncio.ensure_future(subscription.__anext__())
    await spin()
    assert not waiting.done()
    await subscription.stop()
    assert subscription.stopped
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, WAIT)
    await subscription.aclose()


@pytest.mark.asyncio
async def test_stop_gives_back_buffered_deliveries_at_once(backend: MemoryBackend) -> None:
    await backend.publish_many("k", [{"i": i} for i in range(5)])
    first = backend.subscribe(group="g", keys="k", prefetch=5)
    handed_out = await next_delivery(first, WAIT)
    assert first.held == 5, "the first fetch should have buffered all five"
    await first.stop()
    assert first.held == 1

    async with backend.subscribe(group="g", keys="k") as second:
        given_back = await receive(second, 4, WAIT)
    assert sorted(d.payload["i"] for d in given_back) == [1, 2, 3, 4]
    assert {d.attempt for d in given_back} == {1}, "never handed out, so not a new attempt"

    await handed_out.ack()  # settling what was handed out still works after stop()
    assert first.held == 0
    await first.aclose()
    assert backend.broker.pending("k", "g") == 0


class _OrderedMemory(MemoryBackend):
    """The memory backend as a broker that holds a key back while a message is retried."""

    async def _open_receiver(self, group: str, keys: Sequence[str]) -> Receiver:
        receiver = await super()._open_receiver(group, keys)
        receiver.keeps_order = lambda key: key == "ordered"  # type: ignore[method-assign]
        return receiver


@pytest.mark.asyncio
async def test_a_nack_gives_back_what_would_overtake_it_where_order_is_kept(
    broker: MemoryBroker,
) -> None:
    backend = _OrderedMemory(MemorySettings(redelivery_timeout=30), broker=broker)
    await backend.publish_many("ordered", [{"i": i} for i in range(3)])
    await backend.publish("other", {"i": 9})
    subscription = backend.subscribe(group="g", keys=["ordered", "other"], prefetch=4)
    first = await next_delivery(subscription, WAIT)
    assert first.key == "ordered"
    assert subscription.held == 4
    await first.nack(delay=5)
    assert [d.key for d in subscription.buffered()] == ["other"]  # the other key is untouched
    assert subscription.held == 1
    assert broker.pending("ordered", "g") == 3  # all three are the broker's again
    await subscription.aclose()
    await backend.close()


@pytest.mark.asyncio
async def test_stop_gives_back_a_batch_whose_fetch_just_finished(backend: MemoryBackend) -> None:
    # The race: the fetch task has returned its batch, but __anext__ has not resumed to
    # buffer it when stop() runs. Nothing may be handed out after stop(), and the whole
    # batch must go back to the group at once.
    first = backend.subscribe(group="g", keys="k", prefetch=5)
    await first.open()
    waiting = asyncio.ensure_future(first.__anext__())
    await spin()
    fetch = first._fetch
    assert fetch is not None, "the subscription is not fetching"
    await backend.publish_many("k", [{"i": i} for i in range(5)])
    for _ in range(100):  # until the fetch has its batch, before __anext__ resumes
        if fetch.done():
            break
        await asyncio.sleep(0)
    assert fetch.done()
    assert first.held == 0, "__anext__ resumed before stop(): the race was missed"
    await first.stop()
    outcome = await asyncio.gather(asyncio.wait_for(waiting, WAIT), return_exceptions=True)
    await first.aclose()
    assert first.held == 0
    assert isinstance(outcome[0], StopAsyncIteration), "a delivery was handed out after stop()"
    async with backend.subscribe(group="g", keys="k") as second:
        given_back = await receive(second, 5, WAIT)
    assert sorted(d.payload["i"] for d in given_back) == list(range(5))


@pytest.mark.asyncio
async def test_a_stopped_subscription_ends_iteration(backend: MemoryBackend) -> None:
    await backend.publish("k", {"i": 1})
    subscription = backend.subscribe(group="g", keys="k")
    await subscription.stop()
    assert subscription.stopped
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(subscription.__anext__(), WAIT)
    await subscription.aclose()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(subscription.__anext__(), WAIT)


@pytest.mark.asyncio
async def test_aclose_is_idempotent_and_forgets_the_subscription(backend: MemoryBackend) -> None:
    subscription = backend.subscribe(group="g", keys="k")
    await subscription.open()
    await subscription.aclose()
    await subscription.aclose()
    assert subscription.stopped
    assert backend.held_messages == 0
    assert "state='closed'" in repr(subscription)


# ---- settling ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_settling_after_aclose_is_a_delivery_state_error(backend: MemoryBackend) -> None:
    await backend.publish("k", {"i": 1})
    async with backend.subscribe(group="g", keys="k") as subscription:
        delivery = await next_delivery(subscription, WAIT)
    with pytest.raises(DeliveryStateError, match="its subscription is closed") as refused:
        await delivery.ack()
    assert delivery.id in str(refused.value)
    assert "'k'" in str(refused.value)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("first", "second", "verb"),
    [
        ("ack", "ack", "ack"),
        ("ack", "nack", "nack"),
        ("nack", "ack", "ack"),
        ("dead_letter", "nack", "nack"),
        ("ack", "dead_letter", "dead-letter"),
    ],
)
async def test_settling_twice_is_a_delivery_state_error(
    backend: MemoryBackend, first: str, second: str, verb: str
) -> None:
    await backend.publish("k", {"i": 1})
    async with backend.subscribe(group="g", keys="k") as subscription:
        delivery = await next_delivery(subscription, WAIT)
        args = ("reason",) if first == "dead_letter" else ()
        await getattr(delivery, first)(*args)
        assert delivery.settled
        again = ("reason",) if second == "dead_letter" else ()
        with pytest.raises(DeliveryStateError, match="it was already settled") as refused:
            await getattr(delivery, second)(*again)
        assert f"cannot {verb} message {delivery.id!r} of 'k'" in str(refused.value)
        assert subscription.held == 0, "the second settle released credit again"


@pytest.mark.asyncio
async def test_nack_with_a_negative_delay_is_a_value_error(backend: MemoryBackend) -> None:
    await backend.publish("k", {"i": 1})
    async with backend.subscribe(group="g", keys="k") as subscription:
        delivery = await next_delivery(subscription, WAIT)
        with pytest.raises(ValueError, match="delay must be zero or more seconds, got -1"):
            await delivery.nack(-1)
        assert not delivery.settled
        await delivery.ack()  # the refused nack left it unsettled


@pytest.mark.asyncio
async def test_a_nack_comes_back_to_the_group_with_a_higher_attempt(
    backend: MemoryBackend,
) -> None:
    await backend.publish("k", {"i": 1})
    async with backend.subscribe(group="g", keys="k") as subscription:
        delivery = await next_delivery(subscription, WAIT)
        assert delivery.attempt == 1
        await delivery.nack()
        again = await next_delivery(subscription, WAIT)
        assert (again.id, again.attempt, again.payload) == (delivery.id, 2, {"i": 1})
        await again.ack()


@pytest.mark.asyncio
async def test_delivery_carries_key_id_attempt_headers_and_publish_time(
    backend: MemoryBackend,
) -> None:
    before = time.time()
    await backend.publish("k", {"i": 1})
    async with backend.subscribe(group="g", keys="k") as subscription:
        delivery = await next_delivery(subscription, WAIT)
        assert delivery.key == "k"
        assert delivery.id == delivery.headers["abe-id"]
        assert delivery.attempt == 1
        assert delivery.published_at is not None
        assert before - 0.01 <= delivery.published_at <= time.time() + 0.01
        assert repr(delivery) == f"Delivery(key='k', id={delivery.id!r}, attempt=1)"
        await delivery.ack()


@pytest.mark.asyncio
async def test_a_foreign_message_uses_the_broker_id(
    backend: MemoryBackend, broker: MemoryBroker
) -> None:
    broker.append("k", [OutgoingMessage("ignored", b'{"from": "elsewhere"}', {})])
    async with backend.subscribe(group="g", keys="k") as subscription:
        delivery = await next_delivery(subscription, WAIT)
        assert delivery.payload == {"from": "elsewhere"}
        assert delivery.id == delivery.message.broker_id
        assert delivery.published_at is None
        await delivery.ack()


@pytest.mark.asyncio
async def test_a_body_that_is_not_an_object_goes_to_the_dead_letter_key_wrapped(
    backend: MemoryBackend, broker: MemoryBroker
) -> None:
    broker.append("k", [OutgoingMessage("raw", b"[1, 2]", {})])
    await backend.publish("k", {"after": True})
    async with backend.subscribe(group="g", keys="k") as subscription:
        delivery = await next_delivery(subscription, WAIT)
        assert delivery.payload == {"after": True}
        await delivery.ack()
    async with backend.subscribe(group="g", keys="k-dlq") as letters:
        letter = await next_delivery(letters, WAIT)
        assert letter.payload == {"undecodable_body": "[1, 2]"}
        assert "the body is JSON but a list" in letter.headers["abe-error"]
        assert letter.headers["abe-original-key"] == "k"
        assert letter.headers["abe-attempts"] == "1"
        await letter.ack()
    assert broker.pending("k", "g") == 0


HOSTILE_BODIES = [
    b"[" * 1000 + b"]" * 1000,
    b"[" * 100_000 + b"]" * 100_000,
    b"\xff\xfe not json",
    b"",
    b"null",
    b'{"x": NaN}',
    b"{" + b'"k": 1, ' * 10 + b"}",
]


@pytest.mark.asyncio
async def test_every_hostile_body_goes_to_the_dead_letter_key_and_the_rest_are_delivered(
    backend: MemoryBackend, broker: MemoryBroker
) -> None:
    await backend.publish("k", {"before": True})
    broker.append(
        "k", [OutgoingMessage(f"raw-{i}", body, {}) for i, body in enumerate(HOSTILE_BODIES)]
    )
    await backend.publish("k", {"after": True})
    consumed = []
    async for payload in backend.consume(group="g", keys="k"):
        consumed.append(payload)
        if len(consumed) == 2:
            break
    assert consumed == [{"before": True}, {"after": True}]
    async with backend.subscribe(group="g", keys="k-dlq") as letters:
        got = await receive(letters, len(HOSTILE_BODIES), WAIT)
    reasons = [letter.headers["abe-error"] for letter in got]
    assert all(reason.startswith("undecodable body: the body ") for reason in reasons), reasons
    assert "the body is JSON nested too deeply to read" in reasons[1]
    assert "not UTF-8 text" in reasons[2]
    assert "utf-16" not in " ".join(reasons)
    assert broker.pending("k", "g") == 1  # only "after": the loop left before finishing it


@pytest.mark.asyncio
async def test_a_hostile_body_never_stops_the_consumer_loop(
    backend: MemoryBackend, broker: MemoryBroker
) -> None:
    broker.append("k", [OutgoingMessage("raw", b"[" * 5000 + b"]" * 5000, {})])
    await backend.publish("k", {"after": True})
    handled: list[dict[str, object]] = []
    done = asyncio.Event()

    async def handler(payload: dict[str, object]) -> None:
        handled.append(payload)
        done.set()

    consumer = AsyncLoopConsumer(backend, "g", keys=["k"])
    running = asyncio.ensure_future(consumer.run(handler))
    await asyncio.wait_for(done.wait(), WAIT)
    await consumer.shutdown()
    await running
    assert handled == [{"after": True}]
    assert len(broker.messages("k-dlq")) == 1


@pytest.mark.asyncio
async def test_bodies_are_decoded_when_handed_out_not_when_fetched(
    backend: MemoryBackend,
) -> None:
    await backend.publish_many("k", [{"i": i} for i in range(5)])
    async with backend.subscribe(group="g", keys="k", prefetch=5) as subscription:
        first = await next_delivery(subscription, WAIT)
        assert first.payload == {"i": 0}
        waiting = subscription.buffered()
        assert len(waiting) == 4
        assert all(delivery._payload is None for delivery in waiting)  # not decoded yet
        assert waiting[0].payload == {"i": 1}  # reading it early decodes it
        rest = [await next_delivery(subscription, WAIT) for _ in range(4)]
        assert [delivery.payload for delivery in rest] == [{"i": i} for i in range(1, 5)]
        assert rest[0] is waiting[0]


@pytest.mark.asyncio
async def test_a_body_between_good_ones_is_dead_lettered_in_its_turn_and_releases_its_slot(
    backend: MemoryBackend, broker: MemoryBroker
) -> None:
    await backend.publish("k", {"before": True})
    broker.append("k", [OutgoingMessage("raw", b"not json", {})])
    await backend.publish("k", {"after": True})
    async with backend.subscribe(group="g", keys="k", prefetch=3) as subscription:
        before = await next_delivery(subscription, WAIT)
        assert subscription.held == 3  # the undecodable one is held until its turn
        assert broker.messages("k-dlq") == []
        after = await next_delivery(subscription, WAIT)
        assert after.payload == {"after": True}
        assert subscription.held == 2  # it went to the dead-letter key and was acknowledged
        assert broker.messages("k-dlq") == [{"undecodable_body": "not json"}]
        await before.ack()
        await after.ack()
    assert broker.pending("k", "g") == 0


@pytest.mark.asyncio
async def test_stop_dead_letters_an_undecodable_body_it_buffered_and_gives_back_the_rest(
    backend: MemoryBackend, broker: MemoryBroker
) -> None:
    # Kafka fetches several partitions at once: a poison body can sit behind the last message
    # a reader takes before it stops. It must not go back for another member to trip on.
    await backend.publish("k", {"before": True})
    broker.append("k", [OutgoingMessage("raw", b"not json", {})])
    await backend.publish("k", {"after": True})
    subscription = backend.subscribe(group="g", keys="k", prefetch=3)
    before = await next_delivery(subscription, WAIT)
    assert broker.messages("k-dlq") == []
    await subscription.stop()
    assert broker.messages("k-dlq") == [{"undecodable_body": "not json"}]
    assert subscription.held == 1  # only the one handed out
    await before.ack()
    await subscription.aclose()
    async with backend.subscribe(group="g", keys="k") as second:
        [given_back] = await receive(second, 1, WAIT)
        assert given_back.payload == {"after": True}
    assert broker.pending("k", "g") == 0  # the poison was acknowledged when dead-lettered


@pytest.mark.asyncio
async def test_an_undecodable_body_at_the_head_is_left_to_anext_by_take_buffered(
    backend: MemoryBackend, broker: MemoryBroker
) -> None:
    await backend.publish("k", {"before": True})
    broker.append("k", [OutgoingMessage("raw", b"[1]", {})])
    await backend.publish("k", {"after": True})
    async with backend.subscribe(group="g", keys="k", prefetch=3) as subscription:
        await next_delivery(subscription, WAIT)
        assert subscription.take_buffered() is None  # its dead-lettering needs an await
        assert len(subscription.buffered()) == 2
        after = await next_delivery(subscription, WAIT)
        assert after.payload == {"after": True}
        assert len(broker.messages("k-dlq")) == 1


@pytest.mark.asyncio
async def test_a_dead_letter_reason_of_any_text_is_written_as_one_valid_line(
    backend: MemoryBackend,
) -> None:
    await backend.publish("k", {"i": 1})
    async with backend.subscribe(group="g", keys="k") as subscription:
        delivery = await next_delivery(subscription, WAIT)
        await delivery.dead_letter("bad \ud800 value\r\nInjected: yes\x00")
    async with backend.subscribe(group="g", keys="k-dlq") as letters:
        letter = await next_delivery(letters, WAIT)
        assert letter.headers["abe-error"] == "bad \\ud800 value Injected: yes"
        await letter.ack()


# ---- keys and groups -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_consume_without_keys_or_abe_mq_keys_is_a_configuration_error(
    backend: MemoryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ABE_MQ_KEYS", raising=False)
    with pytest.raises(ConfigurationError) as refused:
        await anext(backend.consume(group="g"))
    assert refused.value.variables == ("ABE_MQ_KEYS",)
    assert "ABE_MQ_KEYS" in str(refused.value)
    assert "keys=[...]" in str(refused.value)
    with pytest.raises(ConfigurationError):
        backend.subscribe(group="g")


@pytest.mark.asyncio
async def test_abe_mq_keys_names_the_keys_when_none_are_given(
    backend: MemoryBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ABE_MQ_KEYS", " first , second ")
    subscription = backend.subscribe(group="g")
    assert subscription.keys == ("first", "second")
    await subscription.aclose()
    await backend.publish("second", {"on": "second"})
    consuming = backend.consume(group="g")
    try:
        assert await asyncio.wait_for(anext(consuming), WAIT) == {"on": "second"}
    finally:
        await consuming.aclose()


@pytest.mark.asyncio
async def test_a_str_of_keys_is_one_key_and_duplicates_are_dropped(
    backend: MemoryBackend,
) -> None:
    assert backend.subscribe(group="g", keys="orders").keys == ("orders",)
    assert backend.subscribe(group="g", keys=["b", "a", "b"]).keys == ("b", "a")
    with pytest.raises(ValueError, match="keys must name at least one key"):
        backend.subscribe(group="g", keys=[])
    with pytest.raises(InvalidKeyError):
        backend.subscribe(group="g", keys=["fine", "not fine"])


@pytest.mark.asyncio
async def test_group_none_is_the_default_group(
    backend: MemoryBackend, broker: MemoryBroker
) -> None:
    assert DEFAULT_GROUP == "default"
    assert backend.subscribe(keys="k").group == "default"
    await backend.publish_many("k", [{"i": 1}, {"i": 2}])
    consuming = backend.consume(keys="k")
    try:
        assert await asyncio.wait_for(anext(consuming), WAIT) == {"i": 1}
        assert await asyncio.wait_for(anext(consuming), WAIT) == {"i": 2}  # acks the first
    finally:
        await consuming.aclose()
    assert broker.pending("k", "default") == 1  # the second was never finished


@pytest.mark.asyncio
@pytest.mark.parametrize("group", ["", "has space", "dots.not.allowed", "x" * 300, "ü"])
async def test_a_bad_group_name_is_refused(backend: MemoryBackend, group: str) -> None:
    with pytest.raises(InvalidKeyError):
        backend.subscribe(group=group, keys="k")
    with pytest.raises(InvalidKeyError):
        await anext(backend.consume(group=group, keys="k"))


@pytest.mark.asyncio
async def test_a_bad_group_name_is_reported_as_a_group(backend: MemoryBackend) -> None:
    with pytest.raises(InvalidKeyError) as refused:
        backend.subscribe(group="has space", keys="k")
    assert "group" in str(refused.value)


# ---- a closed backend ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_closed_backend_refuses_every_use(backend: MemoryBackend) -> None:
    await backend.close()
    await backend.close()  # idempotent
    assert backend.closed
    assert repr(backend) == "<MemoryBackend broker='default' closed>"
    attempts = [
        lambda: backend.publish("k", {"i": 1}),
        lambda: backend.publish_many("k", [{"i": 1}]),
        lambda: anext(backend.consume(group="g", keys="k")),
        backend.__aenter__,
    ]
    for attempt in attempts:
        with pytest.raises(BackendClosedError) as refused:
            await attempt()
        assert str(refused.value) == (
            "this memory backend is closed; create a new one with load_backend()"
        )
    with pytest.raises(BackendClosedError):
        backend.subscribe(group="g", keys="k")
    assert backend.broker.messages("k") == []


@pytest.mark.asyncio
async def test_close_stops_open_subscriptions(backend: MemoryBackend) -> None:
    subscription = backend.subscribe(group="g", keys="k")
    await subscription.open()
    waiting = asyncio.ensure_future(subscription.__anext__())
    await spin()
    await asyncio.wait_for(backend.close(), WAIT)
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, WAIT)
    assert subscription.stopped


# ---- publishing ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_publish_many_with_one_bad_payload_publishes_nothing(
    backend: MemoryBackend, broker: MemoryBroker
) -> None:
    payloads: list[Any] = [{"i": 0}, {"i": 1}, {"i": {1, 2}}, {"i": 3}]
    with pytest.raises(PayloadError) as refused:
        await backend.publish_many("k", payloads)
    message = str(refused.value)
    assert message.startswith("payloads[2]: payload['i'] is a set")
    assert message.endswith("nothing was published")
    assert broker.messages("k") == []


@pytest.mark.asyncio
async def test_publish_many_checks_payloads_from_a_generator(
    backend: MemoryBackend, broker: MemoryBroker
) -> None:
    payloads: Iterator[Any] = ({"i": i} if i != 3 else [i] for i in range(5))
    with pytest.raises(PayloadError, match=r"^payloads\[3\]: payload must be a dict"):
        await backend.publish_many("k", payloads)
    assert broker.messages("k") == []


@pytest.mark.asyncio
async def test_publish_many_of_nothing_publishes_nothing(
    backend: MemoryBackend, broker: MemoryBroker
) -> None:
    await backend.publish_many("k", [])
    assert broker.messages("k") == []


@pytest.mark.asyncio
async def test_a_payload_over_the_backends_limit_is_refused_before_sending(
    broker: MemoryBroker,
) -> None:
    backend = MemoryBackend(MemorySettings(max_payload_bytes=20), broker=broker)
    assert backend.max_payload_bytes == 20
    fits = {"s": "x" * (20 - len('{"s":""}'))}
    await backend.publish("k", fits)
    with pytest.raises(PayloadError, match="over this backend's limit of 20"):
        await backend.publish("k", {"s": "x" * 13})
    assert broker.messages("k") == [fits]


@pytest.mark.asyncio
async def test_user_headers_round_trip(backend: MemoryBackend) -> None:
    await backend.publish("k", {"i": 1}, headers={"trace-id": "abc", "tenant": "ü"})
    await backend.publish_many("k", [{"i": 2}, {"i": 3}], headers={"batch": "7"})
    async with backend.subscribe(group="g", keys="k") as subscription:
        first, *rest = await receive(subscription, 3, WAIT)
    assert first.headers["trace-id"] == "abc"
    assert first.headers["tenant"] == "ü"
    assert [d.headers["batch"] for d in rest] == ["7", "7"]
    assert len({d.id for d in (first, *rest)}) == 3


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("headers", "complaint"),
    [
        ({"abe-id": "mine"}, "header name 'abe-id' starts with 'abe-'"),
        ({"ABE-anything": "x"}, "which abe keeps for itself"),
        ({"": "x"}, "a header name must not be empty"),
        ({1: "x"}, "header names must be str, got int"),
        ({"count": 1}, "header 'count' must have a str value, got int"),
        ({"raw": b"x"}, "header 'raw' must have a str value, got bytes"),
        ({"two words": "x"}, "may only contain letters, digits"),
        ({"a:b": "x"}, "(no spaces, ':' or control characters)"),
        ({"crlf\r\n": "x"}, "may only contain letters, digits"),
        ({"Nats-Rollup": "all"}, "starts with 'nats-', which a broker acts on"),
        ({"nats-expected-last-sequence": "1"}, "which a broker acts on"),
        ({"AWS.TraceHeader": "x"}, "starts with 'aws.'"),
        ({"x-death": "x"}, "starts with 'x-death'"),
        ({"x": "line\r\nInjected: yes"}, "control character in its value"),
        ({"x": "nul\x00"}, "control character in its value"),
        ({"x": "lone \ud800"}, "not valid Unicode text"),
        ({"x": " padded"}, "starts or ends with whitespace"),
        ({"x": "padded\u3000"}, "starts or ends with whitespace"),
        ({"n" * 257: "x"}, "is over 256 characters"),
        ({f"h{i}": "v" * 100 for i in range(1000)}, "over the limit of 4,096"),
    ],
)
async def test_bad_headers_are_refused_and_nothing_is_published(
    backend: MemoryBackend, broker: MemoryBroker, headers: dict[object, object], complaint: str
) -> None:
    with pytest.raises(PayloadError) as refused:
        await backend.publish("k", {"i": 1}, headers=headers)  # type: ignore[arg-type]
    assert complaint in str(refused.value)
    with pytest.raises(PayloadError) as refused_batch:
        await backend.publish_many("k", [{"i": 1}], headers=headers)  # type: ignore[arg-type]
    assert complaint in str(refused_batch.value)
    assert broker.messages("k") == []


@pytest.mark.asyncio
async def test_headers_every_broker_carries_are_accepted(backend: MemoryBackend) -> None:
    headers = {"x-request-id": "r-1", "traceparent": "00-ab-cd-01", "Tab": "a\tb c", "ü": "ü"}
    with pytest.raises(PayloadError):  # a name must be ASCII (an HTTP token)
        await backend.publish("k", {"i": 1}, headers=headers)
    del headers["ü"]
    headers["tenant"] = "ü" * 100
    await backend.publish("k", {"i": 1}, headers=headers)
    async with backend.subscribe(group="g", keys="k") as subscription:
        delivery = await next_delivery(subscription, WAIT)
        assert {name: delivery.headers[name] for name in headers} == headers
        await delivery.ack()


@pytest.mark.asyncio
async def test_an_invalid_key_is_refused_before_sending(
    backend: MemoryBackend, broker: MemoryBroker
) -> None:
    for bad in ("", "has space", "x" * 246):
        with pytest.raises(InvalidKeyError):
            await backend.publish(bad, {"i": 1})
        with pytest.raises(InvalidKeyError):
            await backend.publish_many(bad, [{"i": 1}])
    assert broker.keys() == []


@pytest.mark.asyncio
async def test_a_dead_letter_keeps_the_body_and_a_bounded_reason(backend: MemoryBackend) -> None:
    await backend.publish("k", {"order": 1}, headers={"tenant": "acme"})
    async with backend.subscribe(group="g", keys="k") as subscription:
        delivery = await next_delivery(subscription, WAIT)
        await delivery.dead_letter("x" * 5000)
    async with backend.subscribe(group="g", keys="k-dlq") as letters:
        letter = await next_delivery(letters, WAIT)
        await letter.ack()
    assert letter.payload == {"order": 1}
    assert letter.id == delivery.id
    assert letter.headers["abe-error"] == "x" * 1000
    assert letter.headers["tenant"] == "acme"
    assert backend.broker.pending("k", "g") == 0


@pytest.mark.asyncio
async def test_a_fetch_that_finishes_as_next_is_cancelled_gives_its_batch_back() -> None:
    broker = MemoryBroker()
    backend = MemoryBackend(MemorySettings(redelivery_timeout=30.0), broker=broker)
    subscription = backend.subscribe(group="g", keys="k", prefetch=10)
    await subscription.open()
    waiting = asyncio.ensure_future(subscription.__anext__())
    await spin()  # the fetch is now waiting for messages
    fetch = subscription._fetch
    assert fetch is not None
    await backend.publish_many("k", [{"i": i} for i in range(3)])
    # Step the loop one turn at a time: the fetch must finish, its waiter must not resume.
    while not fetch.done():  # noqa: ASYNC110
        await asyncio.sleep(0)
    assert not waiting.done()
    waiting.cancel()  # cancelled after its fetch returned a batch, before it saw it
    with pytest.raises(asyncio.CancelledError):
        await waiting
    async with backend.subscribe(group="g", keys="k") as other:
        again = await receive(other, 3, 5.0)  # long before the 30 s redelivery timeout
    assert sorted(d.payload["i"] for d in again) == [0, 1, 2]
    await subscription.aclose()
    await backend.close()


@pytest.mark.asyncio
async def test_buffered_deliveries_are_kept_from_other_members_while_they_wait() -> None:
    broker = MemoryBroker()
    settings = MemorySettings(redelivery_timeout=0.6)
    slow, other = MemoryBackend(settings, broker=broker), MemoryBackend(settings, broker=broker)
    await slow.publish_many("k", [{"i": i} for i in range(3)])
    subscription = slow.subscribe(group="g", keys="k", prefetch=3)
    seen: list[int] = []
    delivery = await next_delivery(subscription, WAIT)  # buffers all three
    async with other.subscribe(group="g", keys="k") as rival:
        stolen = asyncio.ensure_future(rival.__anext__())  # another member, asking all along
        for _ in range(3):
            seen.append(delivery.payload["i"])
            await asyncio.sleep(0.4)  # slow work: the buffered ones wait past a third of 0.6 s
            await delivery.ack()
            if len(seen) < 3:
                delivery = await next_delivery(subscription, WAIT)
        assert not stolen.done(), f"another member got a buffered message: {stolen.result()!r}"
        stolen.cancel()
        await asyncio.gather(stolen, return_exceptions=True)
    assert seen == [0, 1, 2]
    await subscription.aclose()
    await slow.close()
    await other.close()


class _SlowToJoin(MemoryBackend):
    """Joins the group only when the test says so, then fails as a closed client would."""

    gate: asyncio.Event

    async def _open_receiver(self, group: str, keys: Sequence[str]) -> Receiver:
        await self.gate.wait()
        raise ConnectionError("the client was closed while joining")


@pytest.mark.asyncio
async def test_closing_while_the_subscription_opens_ends_the_iteration() -> None:
    backend = _SlowToJoin(MemorySettings(), broker=MemoryBroker())
    backend.gate = asyncio.Event()
    stream = backend.consume(group="g", keys="k")
    waiting = asyncio.ensure_future(stream.__anext__())
    await spin()
    await backend.close()
    backend.gate.set()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, WAIT)


@pytest.mark.asyncio
async def test_a_failure_to_open_is_raised_when_nobody_closed_anything() -> None:
    backend = _SlowToJoin(MemorySettings(), broker=MemoryBroker())
    backend.gate = asyncio.Event()
    backend.gate.set()
    with pytest.raises(ConnectionError, match="closed while joining"):
        await anext(backend.consume(group="g", keys="k"))
    await backend.close()


class _WithReservedHeader(MemoryBackend):
    reserved_headers = frozenset({"data"})


@pytest.mark.asyncio
async def test_headers_the_wire_format_reserves_are_refused_before_io() -> None:
    backend = _WithReservedHeader(MemorySettings(), broker=MemoryBroker())
    with pytest.raises(PayloadError, match="'data' is reserved by the memory wire format"):
        await backend.publish("k", {"x": 1}, headers={"data": "oops"})
    assert backend.broker.messages("k") == []
    await backend.close()


class _Unreachable(MemoryBackend):
    """Its reads fail with a connection error while `down` is set, as an unreachable broker's."""

    down = False
    failed: asyncio.Event

    async def _open_receiver(self, group: str, keys: Sequence[str]) -> Receiver:
        receiver = await super()._open_receiver(group, keys)
        fetch = receiver.fetch

        async def flaky(max_messages: int, timeout: float) -> Sequence[IncomingMessage]:
            if self.down:
                self.failed.set()
                raise ConnectionError("connection refused")
            return await fetch(max_messages, timeout)

        receiver.fetch = flaky  # type: ignore[method-assign]
        return receiver


@pytest.mark.asyncio
async def test_ready_while_open_and_reading_not_after_a_failed_read_until_one_works() -> None:
    backend = _Unreachable(MemorySettings(poll_interval=0.05), broker=MemoryBroker())
    backend.failed = asyncio.Event()
    subscription = backend.subscribe(group="g", keys="k")
    assert not subscription.ready  # not joined yet
    await subscription.open()
    assert subscription.ready
    backend.down = True
    waiting = asyncio.ensure_future(subscription.__anext__())
    await asyncio.wait_for(backend.failed.wait(), WAIT)
    await spin()  # the failure travels from the fetch task to the waiting __anext__
    assert not subscription.ready  # still retrying, but the broker is not answering
    backend.down = False
    await backend.publish("k", {"i": 1})
    delivery = await asyncio.wait_for(waiting, WAIT)
    assert subscription.ready
    await delivery.ack()
    await subscription.stop()
    assert not subscription.ready
    await subscription.aclose()
    await backend.close()
