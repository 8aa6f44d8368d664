"""The public surface: the backend class, its settings, the version; one entry point."""

from __future__ import annotations

import importlib.metadata

import abe_mq_nats
from abe.backends.message_queue.base.protocol import MessageQueueBackend
from abe_mq_nats import NatsBackend, NatsSettings


def test_all_is_the_two_classes_and_the_version() -> None:
    assert sorted(abe_mq_nats.__all__) == ["NatsBackend", "NatsSettings", "__version__"]
    public = {name for name in dir(abe_mq_nats) if not name.startswith("_")}
    assert public == {"NatsBackend", "NatsSettings"}


def test_version_is_the_distribution_version() -> None:
    assert abe_mq_nats.__version__ == importlib.metadata.version("abe-mq-nats")


def test_one_entry_point() -> None:
    points = [
        point
        for point in importlib.metadata.distribution("abe-mq-nats").entry_points
        if point.group == "abe.backends.message_queue"
    ]
    assert [(point.name, point.value) for point in points] == [("nats", "abe_mq_nats:NatsBackend")]
    assert points[0].load() is NatsBackend


def test_satisfies_the_protocol_without_io() -> None:
    backend = NatsBackend(NatsSettings())
    assert isinstance(backend, MessageQueueBackend)
    assert backend.name == "nats"
    assert repr(backend) == "<NatsBackend nats://127.0.0.1:4222 open>"
    capabilities = backend.capabilities
    assert capabilities.fan_out
    assert capabilities.per_key_ordering
    assert capabilities.persistence
    assert capabilities.native_delay
    assert capabilities.remote
    assert backend.max_payload_bytes == capabilities.max_payload_bytes == 1_048_576 - 8192
