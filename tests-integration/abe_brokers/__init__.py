"""Brokers for abe's integration tests: find one, or start one, and say which.

Session fixtures (``redis_broker``, ``nats_broker``, ``kafka_broker``, ``sqs_broker``,
``rabbitmq_broker``) resolve each kind in the order DESIGN.md gives: an address in the
environment, a broker already on its usual loopback port, a testcontainers container, a
process of our own. Factory fixtures (``redis_server_factory``, ``nats_server_factory``,
``kafka_server_factory``, ``rabbitmq_server_factory``) make restartable servers a failure
test owns. Cluster fixtures (``redis_cluster``: six nodes, three masters with a replica
each; ``nats_cluster``, ``kafka_cluster``: three nodes) start nodes of our own for the
session, any one of which a test may kill and restart. What to install is in
``tests-integration/requirements.txt``; the variables are:

- ``ABE_TEST_REDIS_URL``, ``ABE_TEST_NATS_URL``, ``ABE_TEST_KAFKA_BOOTSTRAP``,
  ``ABE_TEST_SQS_ENDPOINT``, ``ABE_TEST_RABBITMQ_URL``: use this broker; if it does not
  answer, tests fail.
- ``ABE_REQUIRE_BROKERS``: comma-separated kinds (or ``all``) that must not be skipped,
  ``redis-cluster``, ``nats-cluster`` and ``kafka-cluster`` included.
- ``ABE_TEST_BROKER_STEPS``: the steps to try (default ``env,running,container,process``).
- ``ABE_TEST_CONTAINERS=0``: skip the container step; ``ABE_TEST_<KIND>_IMAGE``: its image.
- ``ABE_TEST_REDIS_SERVER``, ``ABE_TEST_REDIS_CLI``, ``ABE_TEST_NATS_SERVER``,
  ``ABE_TEST_TANSU_BIN``: binaries.
"""

from __future__ import annotations

import uuid

from .cli import OWN_KEY_PREFIXES, run_abe
from .clusters import KafkaCluster, NatsCluster, RedisCluster
from .model import (
    CLUSTER_KINDS,
    KINDS,
    KafkaBroker,
    Kind,
    NatsBroker,
    RabbitmqBroker,
    RedisBroker,
    Source,
    SqsBroker,
)
from .probes import ProbeError
from .procs import ServerStartError, ToolMissing, free_port
from .selection import REQUIRE_VAR, Attempt, Resolution, required_kinds, resolve
from .servers import (
    KafkaServer,
    KafkaServerFactory,
    MotoServer,
    NatsServer,
    NatsServerFactory,
    RabbitmqServer,
    RabbitmqServerFactory,
    RedisServer,
    RedisServerFactory,
    RedisUser,
)
from .tansu_fault import TANSU_FAULT_SIGNS, rerun_on_tansu_fault
from .tls import TlsFiles, make_tls_files

__all__ = [
    "TANSU_FAULT_SIGNS",
    "rerun_on_tansu_fault",
    "KINDS",
    "CLUSTER_KINDS",
    "OWN_KEY_PREFIXES",
    "Kind",
    "Source",
    "RedisBroker",
    "NatsBroker",
    "KafkaBroker",
    "SqsBroker",
    "RabbitmqBroker",
    "RedisServer",
    "RedisUser",
    "NatsServer",
    "KafkaServer",
    "MotoServer",
    "RedisServerFactory",
    "NatsServerFactory",
    "RabbitmqServer",
    "RabbitmqServerFactory",
    "KafkaServerFactory",
    "RedisCluster",
    "NatsCluster",
    "KafkaCluster",
    "TlsFiles",
    "make_tls_files",
    "ServerStartError",
    "ToolMissing",
    "ProbeError",
    "REQUIRE_VAR",
    "Attempt",
    "Resolution",
    "required_kinds",
    "resolve",
    "run_abe",
    "free_port",
    "unique_name",
]


def unique_name(prefix: str = "abe-test") -> str:
    """A fresh key/stream/topic/queue name, so tests sharing a session broker never collide.

    Letters, digits and ``-`` only: valid as a Redis key, Kafka topic, SQS queue name and
    NATS stream name (NATS subjects may use it as one token).
    """
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
