"""The contract suite (shared/CONTRACT.md) against a real Kafka-protocol broker."""

from __future__ import annotations

from typing import Any

import pytest
from abe_brokers import KafkaServerFactory, free_port, rerun_on_tansu_fault
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from kafka_testing import TEST_ENV, backend_factory_for, settings_for

from abe.settings import Secret
from abe.testing import (
    BackendContract,
    BackendFactory,
    EnvironmentCase,
    RawWriter,
    RestartableBroker,
    SecretCase,
    TlsMismatch,
)
from abe_mq_kafka import KafkaBackend


# Tansu on memory storage too: its faults are named (tansu_fault.py) and only they run again
@rerun_on_tansu_fault
class TestKafkaContract(BackendContract):
    @pytest.fixture
    def backend_factory(self, kafka_broker: Any) -> BackendFactory:
        return backend_factory_for(kafka_broker.bootstrap)

    @pytest.fixture
    def write_raw(self, kafka_broker: Any) -> RawWriter:
        async def write(key: str, body: bytes) -> None:
            producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
            await producer.start()
            try:
                await producer.send_and_wait(key, body)
            finally:
                await producer.stop()

        return write

    @pytest.fixture
    def invalid_environments(self) -> list[EnvironmentCase]:
        return [
            EnvironmentCase({"KAFKA_BOOTSTRAP_SERVERS": "broker"}, ("KAFKA_BOOTSTRAP_SERVERS",)),
            EnvironmentCase(
                {
                    "KAFKA_BOOTSTRAP_SERVERS": "kafka://broker:9092",
                    "KAFKA_SECURITY_PROTOCOL": "TLS",
                    "ABE_KAFKA_PARTITIONS": "0",
                    "ABE_KAFKA_SESSION_TIMEOUT": "soon",
                    "ABE_MQ_PREFETCH": "-1",
                },
                (
                    "KAFKA_BOOTSTRAP_SERVERS",
                    "KAFKA_SECURITY_PROTOCOL",
                    "ABE_KAFKA_PARTITIONS",
                    "ABE_KAFKA_SESSION_TIMEOUT",
                    "ABE_MQ_PREFETCH",
                ),
            ),
            EnvironmentCase(
                {"KAFKA_BOOTSTRAP_SERVERS": "b:9092", "KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
                ("KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"),
            ),
            EnvironmentCase(
                {
                    "KAFKA_BOOTSTRAP_SERVERS": "b:99999",
                    "KAFKA_SSL_CAFILE": "/nonexistent/ca.pem",
                    "KAFKA_SASL_MECHANISM": "GSSAPI",
                    "ABE_KAFKA_IDEMPOTENT": "maybe",
                },
                (
                    "KAFKA_BOOTSTRAP_SERVERS",
                    "KAFKA_SSL_CAFILE",
                    "KAFKA_SASL_MECHANISM",
                    "ABE_KAFKA_IDEMPOTENT",
                ),
            ),
        ]

    @pytest.fixture
    def refused_keys(self) -> tuple[str, ...]:
        return (".", "..", "a/b", "a:b", "ümlaut", "comma,key")

    @pytest.fixture
    def restartable_broker(self, kafka_server_factory: KafkaServerFactory) -> RestartableBroker:
        server = kafka_server_factory(storage="s3")

        async def restart() -> None:  # a crash, not a clean stop: kill -9, then start
            await server.akill()
            await server.astart()

        return RestartableBroker(backend_factory_for(server.bootstrap), restart)

    @pytest.fixture
    def unreachable_backend_factory(self) -> BackendFactory:
        return backend_factory_for(f"127.0.0.1:{free_port()}", operation_timeout=3.0)

    @pytest.fixture
    def tls_mismatch(self, kafka_broker: Any) -> TlsMismatch:
        secret = "tls-0nly-kafka-password"

        def backend_at(host: str, port: int) -> KafkaBackend:
            settings = settings_for(
                f"{host}:{port}",
                security_protocol="SASL_SSL",
                sasl_username="abe",
                sasl_password=Secret(secret),
                operation_timeout=5.0,
            )
            return KafkaBackend(settings)

        host, port = kafka_broker.bootstrap.rsplit(":", 1)
        return TlsMismatch(backend_at, (host, int(port)), secret)

    @pytest.fixture
    def secret_environment(self, kafka_server_factory: KafkaServerFactory) -> SecretCase:
        server = kafka_server_factory(storage="memory", extra_args=["--authentication"])
        secret = "s3cr3t-kafka-password-do-not-show"
        return SecretCase(
            {
                **TEST_ENV,
                "KAFKA_BOOTSTRAP_SERVERS": server.bootstrap,
                "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
                "KAFKA_SASL_USERNAME": "abe",
                "KAFKA_SASL_PASSWORD": secret,
                "ABE_MQ_OPERATION_TIMEOUT": "5",
            },
            secret,
        )
