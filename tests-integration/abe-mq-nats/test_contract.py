"""The whole contract suite (CONTRACT.md) against NATS JetStream.

The shared JetStream server (`nats_broker`, 4222 here) serves everything except the
broker restart (contract 22) and the leaked-secret check, which each get a
`nats-server -js` of their own with a file store on a free port.
"""

from __future__ import annotations

from typing import Any

import pytest
from abe_brokers import NatsServerFactory, free_port
from abe_mq_nats_testing import Janitor, raw_client, settings_for

from abe.testing import (
    BackendContract,
    BackendFactory,
    EnvironmentCase,
    RawWriter,
    RestartableBroker,
    SecretCase,
    TlsMismatch,
)
from abe_mq_nats import NatsBackend, NatsSettings
from abe_mq_nats._client import stream_name

WRONG_TOKEN = "wr0ng-t0ken-Zq81x"


class TestNatsContract(BackendContract):
    @pytest.fixture
    def backend_factory(self, nats_broker: Any, nats_janitor: Janitor) -> BackendFactory:
        def make(*, prefetch: int | None = None) -> NatsBackend:
            overrides = {} if prefetch is None else {"prefetch": prefetch}
            return nats_janitor.track(NatsBackend(settings_for(nats_broker.url, **overrides)))

        return make

    @pytest.fixture
    def write_raw(self, nats_broker: Any, nats_janitor: Janitor) -> RawWriter:
        async def write(key: str, body: bytes) -> None:
            async with raw_client(nats_broker.url) as (_, js):
                try:
                    await js.find_stream_name_by_subject(key)
                except Exception:
                    name = f"raw-{stream_name(key)}"
                    await js.add_stream(name=name, subjects=[key])
                    nats_janitor.streams.add(name)
                await js.publish(key, body)

        return write

    @pytest.fixture
    def invalid_environments(self) -> list[EnvironmentCase]:
        return [
            EnvironmentCase({"NATS_URL": "http://127.0.0.1:4222"}, ("NATS_URL",)),
            EnvironmentCase({"NATS_URL": "nats://127.0.0.1:port"}, ("NATS_URL",)),
            EnvironmentCase({"NATS_USER": "abe"}, ("NATS_PASSWORD",)),
            EnvironmentCase(
                {"NATS_TOKEN": "t", "NATS_USER": "abe", "NATS_PASSWORD": "p"}, ("NATS_TOKEN",)
            ),
            EnvironmentCase(
                {"NATS_URL": "nats://tok@127.0.0.1:4222", "NATS_TOKEN": "other"}, ("NATS_URL",)
            ),
            EnvironmentCase({"NATS_CREDS": "/nonexistent/abe.creds"}, ("NATS_CREDS",)),
            EnvironmentCase({"NATS_NKEY_SEED": "not-a-seed"}, ("NATS_NKEY_SEED",)),
            EnvironmentCase(
                {"NATS_TLS_CA": "/nonexistent/ca.pem", "NATS_TLS_CERT": "/nonexistent/c.pem"},
                ("NATS_TLS_CA", "NATS_TLS_CERT", "NATS_TLS_KEY"),
            ),
            EnvironmentCase(
                {
                    "ABE_NATS_STORAGE": "disk",
                    "ABE_NATS_RETENTION": "workqueue",
                    "ABE_NATS_REPLICAS": "0",
                    "ABE_NATS_MAX_AGE": "-1",
                    "ABE_NATS_STREAM": "has.dot",
                    "ABE_NATS_CONNECT_TIMEOUT": "soon",
                    "ABE_MQ_PREFETCH": "0",
                    "ABE_MQ_REDELIVERY_TIMEOUT": "-3",
                },
                (
                    "ABE_NATS_STORAGE",
                    "ABE_NATS_RETENTION",
                    "ABE_NATS_REPLICAS",
                    "ABE_NATS_MAX_AGE",
                    "ABE_NATS_STREAM",
                    "ABE_NATS_CONNECT_TIMEOUT",
                    "ABE_MQ_PREFETCH",
                    "ABE_MQ_REDELIVERY_TIMEOUT",
                ),
            ),
        ]

    @pytest.fixture
    def refused_keys(self) -> tuple[str, ...]:
        return (
            "orders.*",
            "orders.>",
            ">",
            "*",
            "orders..created",
            ".orders",
            "orders.",
            "$JS.API.INFO",
            "orders/created",
            "ordérs",
        )

    @pytest.fixture
    def restartable_broker(self, nats_server_factory: NatsServerFactory) -> RestartableBroker:
        server = nats_server_factory()

        def make(*, prefetch: int | None = None) -> NatsBackend:
            overrides: dict[str, Any] = {"operation_timeout": 3.0}
            if prefetch is not None:
                overrides["prefetch"] = prefetch
            return NatsBackend(settings_for(server.url, **overrides))

        return RestartableBroker(make, server.arestart)

    @pytest.fixture
    def unreachable_backend_factory(self) -> BackendFactory:
        port = free_port()

        def make(*, prefetch: int | None = None) -> NatsBackend:
            return NatsBackend(
                NatsSettings(
                    servers=(f"nats://127.0.0.1:{port}",),
                    operation_timeout=2.0,
                    connect_timeout=1.0,
                    prefetch=prefetch or 100,
                )
            )

        return make

    @pytest.fixture
    def tls_mismatch(self, nats_broker: Any, nats_janitor: Janitor) -> TlsMismatch:
        def backend_at(host: str, port: int) -> NatsBackend:
            url = f"tls://{WRONG_TOKEN}@{host}:{port}"
            return nats_janitor.track(NatsBackend(settings_for(url, operation_timeout=3.0)))

        return TlsMismatch(backend_at, (nats_broker.host, nats_broker.port), WRONG_TOKEN)

    @pytest.fixture
    def secret_environment(self, nats_server_factory: NatsServerFactory) -> SecretCase:
        server = nats_server_factory(token="the-right-token")
        return SecretCase(
            env={
                "NATS_URL": f"nats://{WRONG_TOKEN}@{server.host}:{server.port}",
                "ABE_MQ_OPERATION_TIMEOUT": "3",
            },
            secret=WRONG_TOKEN,
        )
