"""The contract suite (shared/CONTRACT.md) against Redis: 6379, and our own server for restarts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis.asyncio
from abe_brokers import RedisBroker, RedisServerFactory, free_port

from abe.backends.message_queue.base import BaseBackend
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


class TestRedisContract(BackendContract):
    @pytest.fixture
    def backend_factory(self, redis_broker: RedisBroker, make_backend: Make) -> BackendFactory:
        def factory(*, prefetch: int | None = None) -> BaseBackend:
            return make_backend(redis_broker.url, **_prefetch(prefetch))

        return factory

    @pytest.fixture
    def write_raw(self, redis_broker: RedisBroker) -> RawWriter:
        async def write(key: str, body: bytes) -> None:
            client = redis.asyncio.Redis.from_url(redis_broker.url)
            try:
                await client.xadd(key, {"data": body})
            finally:
                await client.aclose()

        return write

    @pytest.fixture
    def invalid_environments(self, tmp_path: Path) -> list[EnvironmentCase]:
        certificate = tmp_path / "client.pem"
        certificate.write_text("-----BEGIN CERTIFICATE-----\n")
        return [
            EnvironmentCase({"REDIS_URL": "http://localhost:6379"}, ("REDIS_URL",)),
            EnvironmentCase({"REDIS_URL": "redis://localhost:port/0"}, ("REDIS_URL",)),
            EnvironmentCase(
                {"REDIS_URL": "redis://localhost:6379/0?socket_timeout=soon"}, ("REDIS_URL",)
            ),
            EnvironmentCase(
                {
                    "ABE_REDIS_POOL_SIZE": "0",
                    "ABE_REDIS_BLOCK_TIME": "soon",
                    "ABE_REDIS_MAXLEN": "-5",
                    "ABE_MQ_REDELIVERY_TIMEOUT": "never",
                    "ABE_MQ_PREFETCH": "0",
                },
                (
                    "ABE_REDIS_POOL_SIZE",
                    "ABE_REDIS_BLOCK_TIME",
                    "ABE_REDIS_MAXLEN",
                    "ABE_MQ_REDELIVERY_TIMEOUT",
                    "ABE_MQ_PREFETCH",
                ),
            ),
            EnvironmentCase(
                {"REDIS_URL": "rediss://localhost:6379", "REDIS_TLS_CA_FILE": "/nope/ca.pem"},
                ("REDIS_TLS_CA_FILE",),
            ),
            EnvironmentCase(
                {"REDIS_URL": "redis://localhost:6379", "REDIS_TLS_CERT_FILE": str(certificate)},
                ("REDIS_TLS_CERT_FILE", "REDIS_TLS_KEY_FILE"),
            ),
        ]

    @pytest.fixture
    def refused_keys(self) -> tuple[str, ...]:
        return ("a/b", "ключ", "a*b", "{tag}", "semi;colon")

    @pytest.fixture
    def restartable_broker(
        self, redis_server_factory: RedisServerFactory, make_backend: Make
    ) -> RestartableBroker:
        server = redis_server_factory()  # append-only, fsync always: acknowledged means kept

        def factory(*, prefetch: int | None = None) -> BaseBackend:
            return make_backend(server.url, operation_timeout=2.0, **_prefetch(prefetch))

        return RestartableBroker(backend_factory=factory, restart=server.arestart)

    @pytest.fixture
    def unreachable_backend_factory(self, make_backend: Make) -> BackendFactory:
        port = free_port()  # nothing listens there

        def factory(*, prefetch: int | None = None) -> BaseBackend:
            url = f"redis://127.0.0.1:{port}/0"
            return make_backend(url, operation_timeout=2.0, **_prefetch(prefetch))

        return factory

    @pytest.fixture
    def tls_mismatch(self, redis_broker: RedisBroker, make_backend: Make) -> TlsMismatch:
        secret = "Tls-0nly-Pa55word"

        def backend_at(host: str, port: int) -> BaseBackend:
            return make_backend(f"rediss://:{secret}@{host}:{port}/0", operation_timeout=3.0)

        where = urlsplit(redis_broker.url)
        return TlsMismatch(backend_at, (where.hostname or "127.0.0.1", where.port or 6379), secret)

    @pytest.fixture
    def secret_environment(self, redis_server_factory: RedisServerFactory) -> SecretCase:
        server = redis_server_factory(password="the-right-password")
        secret = "Wr0ng-Pa55word-Never-Shown"
        return SecretCase(
            env={
                "REDIS_URL": f"redis://:{secret}@127.0.0.1:{server.port}/0",
                "ABE_MQ_OPERATION_TIMEOUT": "3",
            },
            secret=secret,
        )


def _prefetch(prefetch: int | None) -> dict[str, Any]:
    return {} if prefetch is None else {"prefetch": prefetch}
