"""The `abe` command on Kafka: `abe check`, `abe demo` and `abe bench` (raw aiokafka beside
abe) succeed, and leave no topic of theirs on the broker; `abe consume` leaves no group."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from abe_brokers import OWN_KEY_PREFIXES, run_abe
from aiokafka.admin import AIOKafkaAdminClient
from kafka_testing import TEST_ENV, settings_for

from abe.testing import unique
from abe_mq_kafka import KafkaBackend


async def _own_topics(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = await admin.list_topics()
    finally:
        await admin.close()
    return sorted(topic for topic in topics if topic.startswith(OWN_KEY_PREFIXES))


async def _groups(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {group for group, *_ in await admin.list_consumer_groups()}
    finally:
        await admin.close()


async def _publish(bootstrap: str, key: str, payloads: list[Any]) -> None:
    backend = KafkaBackend(settings_for(bootstrap))
    try:
        await backend.publish_many(key, payloads)
    finally:
        await backend.close()


async def _delete(bootstrap: str, key: str) -> None:
    backend = KafkaBackend(settings_for(bootstrap))
    try:
        await backend.delete_keys(key)
    finally:
        await backend.close()


def test_abe_consume_deletes_its_temporary_group(kafka_broker: Any) -> None:
    bootstrap, key = kafka_broker.bootstrap, unique("consume")
    asyncio.run(_publish(bootstrap, key, [{"n": 1}, {"n": 2}]))
    try:
        # Only what the command made: the broker is shared and may hold other runs' groups.
        before = asyncio.run(_groups(bootstrap))
        env = {**kafka_broker.env(), **TEST_ENV}
        output = run_abe("kafka", env, "consume", key, "--count", "2", "--timeout", "60")
        assert '{"n": 1}' in output
        assert '{"n": 2}' in output
        made = re.search(r"as group (abe-consume-[0-9a-f]+)", output)
        assert made is not None, output
        after = asyncio.run(_groups(bootstrap))
        assert made.group(1) not in after
        assert after - before == set()
    finally:
        asyncio.run(_delete(bootstrap, key))


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        (("check",), "OK: kafka round trip"),
        (("demo", "--quiet"), "OK: all 39 good orders were packed"),
        (("bench", "--messages", "200"), "aiokafka"),
    ],
)
def test_abe_command_cleans_up(kafka_broker: Any, arguments: tuple[str, ...], said: str) -> None:
    output = run_abe("kafka", {**kafka_broker.env(), **TEST_ENV}, *arguments)
    assert said in output
    assert asyncio.run(_own_topics(kafka_broker.bootstrap)) == []
