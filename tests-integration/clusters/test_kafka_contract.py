"""The whole contract suite against three Tansu brokers on one S3 bucket (moto).

Topics are created with replication factor 3 and the producer asks for acks=all; the
broker restart of the suite crashes every broker. The failover run is in
test_failover.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from abe_brokers import KafkaCluster, rerun_on_tansu_fault
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from cluster_testing import load_suite, whole_cluster_crash
from kafka_testing import backend_factory_for, settings_for

from abe.settings import Secret
from abe.testing import BackendFactory, RawWriter, RestartableBroker, TlsMismatch
from abe_mq_kafka import KafkaBackend

_suite = load_suite("abe-mq-kafka", "abe_cluster_kafka_contract")


def _factory(cluster: KafkaCluster, **overrides: Any) -> BackendFactory:
    return backend_factory_for(cluster.bootstrap, replication_factor=cluster.size, **overrides)


@rerun_on_tansu_fault
class TestKafkaClusterContract(_suite.TestKafkaContract):  # type: ignore[misc,name-defined]
    @pytest.fixture
    def backend_factory(self, kafka_cluster: KafkaCluster) -> BackendFactory:
        return _factory(kafka_cluster)

    @pytest.fixture
    def write_raw(self, kafka_cluster: KafkaCluster) -> RawWriter:
        async def write(key: str, body: bytes) -> None:
            # through another broker than abe's backends use
            bootstrap = kafka_cluster.bootstrap_at(1)
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
            await producer.start()
            try:
                await producer.send_and_wait(key, body)
            finally:
                await producer.stop()

        return write

    @pytest.fixture
    def restartable_broker(self, kafka_cluster: KafkaCluster) -> RestartableBroker:
        """The whole cluster crashes (every broker SIGKILLed) and comes back on its bucket."""

        return RestartableBroker(_factory(kafka_cluster), whole_cluster_crash(kafka_cluster))

    @pytest.fixture
    def tls_mismatch(self, kafka_cluster: KafkaCluster) -> TlsMismatch:
        secret = "tls-0nly-kafka-password"
        node = kafka_cluster.nodes[0]

        def backend_at(host: str, port: int) -> KafkaBackend:
            settings = settings_for(
                f"{host}:{port}",
                security_protocol="SASL_SSL",
                sasl_username="abe",
                sasl_password=Secret(secret),
                operation_timeout=5.0,
            )
            return KafkaBackend(settings)

        return TlsMismatch(backend_at, (node.host, node.port), secret)
