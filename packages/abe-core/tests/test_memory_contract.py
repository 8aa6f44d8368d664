"""The memory backend against the whole contract suite: the first user of abe.testing."""

from __future__ import annotations

import pytest

from abe import MemoryBackend, MemoryBroker
from abe.backends.message_queue.base.codec import OutgoingMessage
from abe.backends.message_queue.memory import MemorySettings
from abe.testing import BackendFactory, CoreContract, EnvironmentCase, RawWriter


class TestMemoryContract(CoreContract):
    """Every contract test that applies to an in-process broker (all but RemoteBrokerContract)."""

    @pytest.fixture
    def broker(self) -> MemoryBroker:
        return MemoryBroker()

    @pytest.fixture
    def backend_factory(self, broker: MemoryBroker) -> BackendFactory:
        def build(*, prefetch: int | None = None) -> MemoryBackend:
            settings = MemorySettings(redelivery_timeout=1.0, prefetch=prefetch or 100)
            return MemoryBackend(settings, broker=broker)

        return build

    @pytest.fixture
    def write_raw(self, broker: MemoryBroker) -> RawWriter:
        async def write(key: str, body: bytes) -> None:
            broker.append(key, [OutgoingMessage("raw", body, {})])

        return write

    @pytest.fixture
    def invalid_environments(self) -> list[EnvironmentCase]:
        return [
            EnvironmentCase(
                {"ABE_MQ_PREFETCH": "lots", "ABE_MEMORY_MAX_PAYLOAD_BYTES": "-1"},
                ("ABE_MQ_PREFETCH", "ABE_MEMORY_MAX_PAYLOAD_BYTES"),
            ),
            EnvironmentCase(
                {"ABE_MQ_REDELIVERY_TIMEOUT": "soon", "ABE_MQ_OPERATION_TIMEOUT": "0"},
                ("ABE_MQ_REDELIVERY_TIMEOUT", "ABE_MQ_OPERATION_TIMEOUT"),
            ),
        ]
