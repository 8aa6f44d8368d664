"""The `abe` command on Kafka: `abe check`, `abe demo` and `abe bench` (raw aiokafka beside
abe) succeed, and leave no topic of theirs on the broker."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from abe_brokers import OWN_KEY_PREFIXES, run_abe
from aiokafka.admin import AIOKafkaAdminClient
from kafka_testing import TEST_ENV


async def _own_topics(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = await admin.list_topics()
    finally:
        await admin.close()
    return sorted(topic for topic in topics if topic.startswith(OWN_KEY_PREFIXES))


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
