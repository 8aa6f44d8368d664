"""The contract suite (shared/CONTRACT.md) against RabbitMQ on 5672, and a node of our own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aio_pika
import pytest
from abe_brokers import RabbitmqBroker, RabbitmqServerFactory, free_port
from abe_mq_rabbitmq_testing import declare_key

from abe.provider import BaseBackend
from abe.testing import (
    BackendContract,
    BackendFactory,
    EnvironmentCase,
    RawWriter,
    RestartableBroker,
    SecretCase,
    TlsMismatch,
)

Make = Callable[..., BaseBackend]


class TestRabbitmqContract(BackendContract):
    @pytest.fixture
    def backend_factory(
        self, rabbitmq_broker: RabbitmqBroker, make_backend: Make
    ) -> BackendFactory:
        def factory(*, prefetch: int | None = None) -> BaseBackend:
            return make_backend(rabbitmq_broker.url, **_prefetch(prefetch))

        return factory

    @pytest.fixture
    def write_raw(self, rabbitmq_broker: RabbitmqBroker, remember_keys: Any) -> RawWriter:
        async def write(key: str, body: bytes) -> None:
            remember_keys(rabbitmq_broker.url, key)
            connection = await aio_pika.connect(rabbitmq_broker.url)
            try:
                channel = await connection.channel(publisher_confirms=True)
                exchange = await declare_key(channel, key)
                await exchange.publish(aio_pika.Message(body), routing_key=key)
            finally:
                await connection.close()

        return write

    @pytest.fixture
    def invalid_environments(self) -> list[EnvironmentCase]:
        return [
            EnvironmentCase({"RABBITMQ_URL": "http://localhost:5672"}, ("RABBITMQ_URL",)),
            EnvironmentCase({"RABBITMQ_URL": "amqp://localhost:port/"}, ("RABBITMQ_URL",)),
            EnvironmentCase(
                {
                    "ABE_RABBITMQ_DELIVERY_LIMIT": "0",
                    "ABE_MQ_REDELIVERY_TIMEOUT": "never",
                    "ABE_MQ_PREFETCH": "0",
                },
                (
                    "ABE_RABBITMQ_DELIVERY_LIMIT",
                    "ABE_MQ_REDELIVERY_TIMEOUT",
                    "ABE_MQ_PREFETCH",
                ),
            ),
        ]

    @pytest.fixture
    def refused_keys(self) -> tuple[str, ...]:
        return ("a/b", "a:b", "ключ", "a*b", "semi;colon")

    @pytest.fixture
    def restartable_broker(
        self, rabbitmq_server_factory: RabbitmqServerFactory, make_backend: Make
    ) -> RestartableBroker:
        server = rabbitmq_server_factory()  # its own node and data directory, kept on restart

        def factory(*, prefetch: int | None = None) -> BaseBackend:
            return make_backend(server.url, operation_timeout=3.0, **_prefetch(prefetch))

        return RestartableBroker(backend_factory=factory, restart=server.arestart)

    @pytest.fixture
    def unreachable_backend_factory(self, make_backend: Make) -> BackendFactory:
        port = free_port()  # nothing listens there

        def factory(*, prefetch: int | None = None) -> BaseBackend:
            url = f"amqp://guest:guest@127.0.0.1:{port}/"
            return make_backend(url, operation_timeout=2.0, **_prefetch(prefetch))

        return factory

    @pytest.fixture
    def tls_mismatch(self, rabbitmq_broker: RabbitmqBroker, make_backend: Make) -> TlsMismatch:
        secret = "Tls-0nly-Pa55word"

        def backend_at(host: str, port: int) -> BaseBackend:
            return make_backend(f"amqps://guest:{secret}@{host}:{port}/", operation_timeout=3.0)

        where = (rabbitmq_broker.host, rabbitmq_broker.port)
        return TlsMismatch(backend_at, where, secret)

    @pytest.fixture
    def secret_environment(self, rabbitmq_broker: RabbitmqBroker) -> SecretCase:
        secret = "Wr0ng-Pa55word-Never-Shown"
        return SecretCase(
            env={
                "RABBITMQ_URL": f"amqp://guest:{secret}@{rabbitmq_broker.host}:{rabbitmq_broker.port}/",
                "ABE_MQ_OPERATION_TIMEOUT": "3",
            },
            secret=secret,
        )


def _prefetch(prefetch: int | None) -> dict[str, Any]:
    return {} if prefetch is None else {"prefetch": prefetch}
