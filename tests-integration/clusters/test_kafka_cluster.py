"""Three Tansu brokers on one S3 bucket: the whole contract suite, and failover without loss.

Topics are created with replication factor 3 and the producer asks for acks=all; Tansu
brokers keep nothing of their own (records, offsets and groups are in the bucket), so a
broker killed with SIGKILL takes nothing confirmed with it. aiokafka keeps to the brokers
metadata names and never returns to its bootstrap list, and a Tansu broker names only
itself: each worker therefore bootstraps from a different broker, and the failover run
kills the broker one worker uses (not the producer's), keeps it down until a message
published after the kill has been handled by the others, then starts it again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from abe_brokers import KafkaCluster
from abe_crash.run import Target
from abe_crash.sizes import Sizes
from abe_crash.verdict import Verdict
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from cluster_testing import hold_down, load_suite
from kafka_testing import TEST_ENV, backend_factory_for, settings_for

from abe.settings import Secret
from abe.testing import BackendFactory, RawWriter, RestartableBroker, TlsMismatch
from abe_mq_kafka import KafkaBackend

_suite = load_suite("abe-mq-kafka", "abe_cluster_kafka_contract")


def _factory(cluster: KafkaCluster, **overrides: Any) -> BackendFactory:
    return backend_factory_for(cluster.bootstrap, replication_factor=cluster.size, **overrides)


class TestKafkaClusterContract(_suite.TestKafkaContract):  # type: ignore[misc,name-defined]
    @pytest.fixture
    def backend_factory(self, kafka_cluster: KafkaCluster) -> BackendFactory:
        return _factory(kafka_cluster)

    @pytest.fixture
    def write_raw(self, kafka_cluster: KafkaCluster) -> RawWriter:
        async def write(key: str, body: bytes) -> None:
            # through another broker than abe's backends use
            bootstrap = kafka_cluster.bootstrap_from(1)
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

        async def restart() -> None:
            await asyncio.to_thread(kafka_cluster.kill)
            await asyncio.to_thread(kafka_cluster.start)

        return RestartableBroker(_factory(kafka_cluster), restart)

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


class _OneWorkersBroker:
    """The crash a failover run does: kill the broker worker 1 bootstraps from, then start it."""

    def __init__(self, cluster: KafkaCluster, index: int) -> None:
        self.cluster = cluster
        self.index = index

    def kill(self) -> None:
        self.cluster.kill_node(self.index)

    def start(self) -> None:
        self.cluster.start_node(self.index)


def test_kafka_cluster_loses_nothing_when_a_broker_dies(
    kafka_cluster: KafkaCluster, failover: Callable[[Target, str], Verdict], failover_sizes: Sizes
) -> None:
    size = kafka_cluster.size
    # the producer uses broker 0; worker n uses broker n % size; broker 1 is killed
    env = {**kafka_cluster.env(0), **TEST_ENV}

    def worker_env(number: int) -> dict[str, str]:
        return {"KAFKA_BOOTSTRAP_SERVERS": kafka_cluster.bootstrap_from(number % size)}

    target = Target(
        "kafka",
        env,
        _OneWorkersBroker(kafka_cluster, 1),
        f"{kafka_cluster.describe()}, acks=all, replication factor {size}",
        hold_down=hold_down(failover_sizes),
        worker_env=lambda number: {
            "KAFKA_BOOTSTRAP_SERVERS": kafka_cluster.bootstrap_from(number % size)
        },
    )
    verdict = failover(target, "kafka-cluster")
    assert verdict.ok, "\n".join([verdict.summary(), *verdict.problems])
    assert verdict.figures["lost"] == 0
