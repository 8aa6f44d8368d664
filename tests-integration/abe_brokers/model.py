"""What the session broker fixtures yield: one frozen record per broker kind.

Provider tests code against these fields, so they stay small and stable: an address,
how the broker was obtained (``source``), and ``env()`` giving the conventional
variables (``REDIS_URL``, ``NATS_URL``, ...) a provider's ``from_env()`` reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

Kind = Literal[
    "redis", "nats", "kafka", "sqs", "rabbitmq", "redis-cluster", "nats-cluster", "kafka-cluster"
]
Source = Literal["env", "running", "container", "process"]

KINDS: tuple[Kind, ...] = ("redis", "nats", "kafka", "sqs", "rabbitmq")
"""Every single-broker kind the fixtures know, in the order reports list them."""

CLUSTER_KINDS: tuple[Kind, ...] = ("redis-cluster", "nats-cluster", "kafka-cluster")
"""Clusters the fixtures start themselves (never found in the environment): the tests kill
their nodes. ``ABE_REQUIRE_BROKERS`` names them like the single kinds."""

ENV_ADDRESS_VARS: dict[Kind, str] = {
    "redis": "ABE_TEST_REDIS_URL",
    "nats": "ABE_TEST_NATS_URL",
    "kafka": "ABE_TEST_KAFKA_BOOTSTRAP",
    "sqs": "ABE_TEST_SQS_ENDPOINT",
    "rabbitmq": "ABE_TEST_RABBITMQ_URL",
}
"""The variable that names an existing broker for each kind (resolution step 1)."""


@dataclass(frozen=True, kw_only=True)
class RedisBroker:
    """A reachable Redis (5+, streams) at ``url``; shared, so use unique keys and never flush."""

    url: str
    source: Source
    detail: str = ""

    @property
    def host(self) -> str:
        """Host part of ``url``."""
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        """Port part of ``url`` (6379 when the URL has none)."""
        return urlsplit(self.url).port or 6379

    def env(self) -> dict[str, str]:
        """The variables abe-mq-redis reads to reach this broker."""
        return {"REDIS_URL": self.url}


@dataclass(frozen=True, kw_only=True)
class NatsBroker:
    """A reachable NATS server with JetStream at ``url``; shared, so use unique stream names."""

    url: str
    source: Source
    detail: str = ""

    @property
    def host(self) -> str:
        """Host part of ``url``."""
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        """Port part of ``url`` (4222 when the URL has none)."""
        return urlsplit(self.url).port or 4222

    def env(self) -> dict[str, str]:
        """The variables abe-mq-nats reads to reach this broker."""
        return {"NATS_URL": self.url}


@dataclass(frozen=True, kw_only=True)
class KafkaBroker:
    """A reachable Kafka-protocol broker; ``bootstrap`` is ``host:port[,host:port...]``."""

    bootstrap: str
    source: Source
    detail: str = ""

    def env(self) -> dict[str, str]:
        """The variables abe-mq-kafka reads to reach this broker."""
        return {"KAFKA_BOOTSTRAP_SERVERS": self.bootstrap}


@dataclass(frozen=True, kw_only=True)
class SqsBroker:
    """An SQS-compatible endpoint (moto, LocalStack, ...) with the region and dummy credentials."""

    endpoint_url: str
    source: Source
    region: str = "us-east-1"
    access_key_id: str = "testing"
    secret_access_key: str = "testing"
    detail: str = ""

    def client_kwargs(self) -> dict[str, str]:
        """Keyword arguments for aiobotocore/botocore ``create_client("sqs", **kwargs)``."""
        return {
            "endpoint_url": self.endpoint_url,
            "region_name": self.region,
            "aws_access_key_id": self.access_key_id,
            "aws_secret_access_key": self.secret_access_key,
        }

    def env(self) -> dict[str, str]:
        """The standard ``AWS_*`` variables abe-mq-sqs reads to reach this endpoint."""
        return {
            "AWS_ENDPOINT_URL_SQS": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
        }


@dataclass(frozen=True, kw_only=True)
class RabbitmqBroker:
    """A reachable RabbitMQ (3.10+, quorum queues and streams) at ``url``; shared: unique names."""

    url: str
    source: Source
    detail: str = ""

    @property
    def host(self) -> str:
        """Host part of ``url``."""
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        """Port part of ``url`` (5672 when the URL has none)."""
        return urlsplit(self.url).port or 5672

    def env(self) -> dict[str, str]:
        """The variables abe-mq-rabbitmq reads to reach this broker."""
        return {"RABBITMQ_URL": self.url}


Broker = RedisBroker | NatsBroker | KafkaBroker | SqsBroker | RabbitmqBroker


def broker_address(broker: Broker) -> str:
    """The one-line address of any broker record, for reports."""
    if isinstance(broker, KafkaBroker):
        return broker.bootstrap
    if isinstance(broker, SqsBroker):
        return broker.endpoint_url
    return broker.url
