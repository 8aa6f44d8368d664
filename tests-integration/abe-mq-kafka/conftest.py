"""Fixtures of the Kafka integration tests; the helpers live in kafka_testing.py beside this.

Pytest runs with --import-mode=importlib, which does not put test folders on sys.path,
so this file adds its own folder (as tests-integration/conftest.py does for abe_brokers).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from kafka_testing import backend_factory_for  # noqa: E402

from abe_mq_kafka import KafkaBackend  # noqa: E402


@pytest_asyncio.fixture
async def raw_producer(kafka_broker: Any) -> AsyncIterator[Any]:
    """A plain aiokafka producer on the session broker, as a foreign application would use."""
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


@pytest.fixture
def kafka_backend_factory(kafka_broker: Any) -> Callable[..., KafkaBackend]:
    return backend_factory_for(kafka_broker.bootstrap)
