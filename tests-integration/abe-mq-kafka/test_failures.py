"""Bad input and failures: refused credentials, no broker, refused names and sizes, restarts."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Any, ClassVar

import pytest
from abe_brokers import KafkaServerFactory, free_port
from kafka_testing import backend_factory_for, settings_for

from abe.backends.message_queue.base import Capabilities
from abe.errors import (
    AuthenticationError,
    BackendUnavailableError,
    InvalidKeyError,
    PayloadError,
)
from abe.settings import Secret
from abe.testing import BackendFactory, RoundTripContract, unique
from abe.testing.helpers import next_delivery, nothing_arrives, receive
from abe_mq_kafka import KafkaBackend, KafkaSettings

pytestmark = pytest.mark.asyncio

SECRET = "correct-horse-battery-staple-not-shown"


async def test_refused_scram_credentials(kafka_server_factory: KafkaServerFactory) -> None:
    server = kafka_server_factory(storage="memory", extra_args=["--authentication"])
    for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
        backend = KafkaBackend(
            settings_for(
                server.bootstrap,
                security_protocol="SASL_PLAINTEXT",
                sasl_mechanism=mechanism,
                sasl_username="nobody",
                sasl_password=Secret(SECRET),
                operation_timeout=5.0,
            )
        )
        started = time.monotonic()
        try:
            with pytest.raises(AuthenticationError) as refused:
                await backend.publish(unique("auth"), {"x": 1})
            with pytest.raises(AuthenticationError):
                await backend.subscribe(group=unique("g"), keys=[unique("auth")]).open()
        finally:
            await backend.close()
        assert time.monotonic() - started < 10
        assert "SCRAM" in str(refused.value)
        assert SECRET not in str(refused.value)
        assert SECRET not in repr(backend.settings)


async def test_unreachable_bootstrap_fails_fast_everywhere() -> None:
    backend = KafkaBackend(settings_for(f"127.0.0.1:{free_port()}", operation_timeout=3.0))
    try:
        for attempt in (
            lambda: backend.publish(unique("down"), {"x": 1}),
            lambda: backend.subscribe(group=unique("g"), keys=[unique("down")]).open(),
        ):
            started = time.monotonic()
            with pytest.raises(BackendUnavailableError) as failed:
                await asyncio.wait_for(attempt(), 20)
            assert time.monotonic() - started < 8
            assert "127.0.0.1" in str(failed.value)
    finally:
        await asyncio.wait_for(backend.close(), 20)


async def test_refused_topic_names_never_reach_the_broker() -> None:
    backend = KafkaBackend(settings_for(f"127.0.0.1:{free_port()}"))  # nothing listens there
    try:
        for key in ("..", "a b", "x" * 250, "topic/1", "ünï"):
            with pytest.raises(InvalidKeyError) as refused:
                await backend.publish(key, {"x": 1})
            assert "Kafka" in str(refused.value) or "Kafka topic" in str(refused.value)
    finally:
        await backend.close()


async def _only_record_is(backend: KafkaBackend, key: str, marker: dict[str, Any]) -> None:
    """Publish `marker` and read `key` from its start: it must be the first and only record."""
    await backend.publish(key, marker)
    subscription = backend.subscribe(group=unique("g"), keys=[key])
    async with subscription:
        deliveries = await receive(subscription, 1)
        assert [delivery.payload for delivery in deliveries] == [marker]


async def test_oversized_headers_are_refused_before_anything_is_written(kafka_broker: Any) -> None:
    """Core's 4 KiB limit on user headers speaks before the producer's request limit could.

    One partition, so the marker published after the refusal is the topic's first record
    only if the refused message never reached the broker.
    """
    factory = backend_factory_for(kafka_broker.bootstrap, max_payload_bytes=1000, partitions=1)
    async with factory() as backend:
        key = unique("big")
        with pytest.raises(PayloadError) as refused:
            await backend.publish(key, {"x": 1}, headers={"huge": "h" * 200_000})
        assert "4,096" in str(refused.value)
        with pytest.raises(PayloadError) as too_big:
            await backend.publish(key, {"x": "y" * 2000})
        assert "1,000" in str(too_big.value)
        await _only_record_is(backend, key, {"after": "refusal"})  # the producer still works


async def test_a_lone_surrogate_in_a_header_is_refused_before_anything_is_written(
    kafka_broker: Any,
) -> None:
    """Kafka header values are UTF-8: a lone surrogate would fail in aiokafka mid-send."""
    async with backend_factory_for(kafka_broker.bootstrap, partitions=1)() as backend:
        key = unique("surrogate")
        with pytest.raises(PayloadError) as refused:
            await backend.publish(key, {"x": 1}, headers={"trace": "bad \ud800 value"})
        assert "trace" in str(refused.value)
        with pytest.raises(PayloadError):
            await backend.publish_many(key, [{"x": 1}, {"x": 2}], headers={"t": "\udfff"})
        await _only_record_is(backend, key, {"after": "refusal"})


async def test_a_broker_without_idempotent_producers_names_the_setting(
    kafka_server_factory: KafkaServerFactory,
) -> None:
    server = kafka_server_factory()  # Tansu, which answers InitProducerId with an error
    settings = settings_for(server.bootstrap, idempotent=True, operation_timeout=5.0)
    async with KafkaBackend(settings) as backend:
        with pytest.raises(BackendUnavailableError) as refused:
            await backend.publish(unique("idempotent"), {"x": 1})
    assert "set ABE_KAFKA_IDEMPOTENT=false" in str(refused.value)


async def test_committed_offsets_survive_a_broker_crash(
    kafka_server_factory: KafkaServerFactory,
) -> None:
    server = kafka_server_factory(storage="s3")
    factory = backend_factory_for(server.bootstrap)
    key, group = unique("crash"), unique("group")
    async with factory() as backend:
        await backend.publish_many(key, [{"n": n} for n in range(10)])
        async with backend.subscribe(group=group, keys=[key]) as subscription:
            first = await receive(subscription, 6)
    await server.akill()
    await server.astart()
    async with factory() as backend:
        await backend.publish(key, {"n": 10})
        async with backend.subscribe(group=group, keys=[key]) as subscription:
            rest = await receive(subscription, 5)
            await nothing_arrives(subscription, 3.0)
    numbers = sorted(d.payload["n"] for d in first + rest)
    assert numbers == list(range(11))


async def test_member_that_stops_reading_hands_its_partitions_on(kafka_broker: Any) -> None:
    """A member holding a message whose task hangs leaves; the message reaches the other.

    The session timeout is longer than the other tests' 2 s: on a loaded machine a missed
    heartbeat would let the group drop the stuck member before it hands its message on
    (the next owner would then read the original record, with attempt 1).
    """
    factory = backend_factory_for(kafka_broker.bootstrap, session_timeout=8.0)
    stuck, other = factory(), factory()
    key, group = unique("stuck"), unique("group")
    try:
        await stuck.publish(key, {"job": 1})
        hung = stuck.subscribe(group=group, keys=[key])
        held = await next_delivery(hung)  # and then nobody reads `hung` again
        async with other.subscribe(group=group, keys=[key]) as subscription:
            again = await next_delivery(subscription, 30)
            await again.ack()
        assert (again.payload, again.attempt, again.id) == ({"job": 1}, 2, held.id)
    finally:
        await stuck.close()
        await other.close()


class _Heard(logging.Handler):
    """Sets `heard` when a record with the format string `msg` is handled."""

    def __init__(self, msg: str) -> None:
        super().__init__()
        self.msg = msg
        self.heard = asyncio.Event()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == self.msg:
            self.records.append(record)
            self.heard.set()


async def test_a_rebalance_is_not_reported_as_an_outage(
    kafka_broker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A member joining makes the group rebalance, and the member already in it hears of
    that from a heartbeat, which aiokafka logs as a warning. abe shows that line at INFO
    and says nothing of the broker being away: a deploy or a scale-out is not an outage."""
    caplog.set_level(logging.INFO)
    routine = "Heartbeat failed for group %s because it is rebalancing"
    heard = _Heard(routine)
    logging.getLogger("aiokafka").addHandler(heard)
    factory = backend_factory_for(kafka_broker.bootstrap)
    first, second = factory(), factory()
    key, group = unique("rebalance"), unique("group")
    try:
        await first.publish(key, {"n": 1})
        async with first.subscribe(group=group, keys=[key]) as one:
            await (await next_delivery(one)).ack()  # a member of the group, with partitions
            async with second.subscribe(group=group, keys=[key]):
                await asyncio.wait_for(heard.heard.wait(), 60)
    finally:
        logging.getLogger("aiokafka").removeHandler(heard)
        await first.close()
        await second.close()
    assert {record.levelname for record in heard.records} == {"INFO"}
    outage = [r.getMessage() for r in caplog.records if r.name == "abe.outage"]
    assert outage == []


class _SinglePartitionKafka(KafkaBackend):
    """With one partition per topic a key is one log, so one consumer sees it in order."""

    capabilities: ClassVar[Capabilities] = replace(KafkaBackend.capabilities, per_key_ordering=True)


class TestSinglePartitionOrder(RoundTripContract):
    """ABE_KAFKA_PARTITIONS=1 gives per-key order: the round-trip contract holds it to that."""

    @pytest.fixture
    def backend_factory(self, kafka_broker: Any) -> BackendFactory:
        def factory(*, prefetch: int | None = None) -> KafkaBackend:
            settings: KafkaSettings = settings_for(
                kafka_broker.bootstrap, prefetch=prefetch, partitions=1
            )
            return _SinglePartitionKafka(settings)

        return factory
