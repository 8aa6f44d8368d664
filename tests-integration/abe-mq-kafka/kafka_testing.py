"""Helpers for the Kafka integration tests: settings and backends for a Tansu broker.

Tansu (the broker the shared fixtures start when no Kafka runs) fails InitProducerId, so
every backend here turns the idempotent producer off (ABE_KAFKA_IDEMPOTENT=false) and uses
a short session timeout, so that a group join takes about a second instead of five.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from abe_mq_kafka import KafkaBackend, KafkaSettings

SESSION_TIMEOUT = 2.0
"""Seconds; Tansu completes a join after about half of it."""
REDELIVERY_TIMEOUT = 2.0

TEST_ENV = {"ABE_KAFKA_IDEMPOTENT": "false", "ABE_KAFKA_SESSION_TIMEOUT": str(SESSION_TIMEOUT)}
"""What every environment-built backend in these tests adds for Tansu."""


def settings_for(bootstrap: str, **overrides: Any) -> KafkaSettings:
    """Settings for the test broker: idempotence off (Tansu), short session and redelivery."""
    values: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "idempotent": False,
        "session_timeout": SESSION_TIMEOUT,
        "redelivery_timeout": REDELIVERY_TIMEOUT,
        "operation_timeout": 10.0,
    }
    values.update({name: value for name, value in overrides.items() if value is not None})
    return KafkaSettings(**values)


def backend_factory_for(bootstrap: str, **overrides: Any) -> Callable[..., KafkaBackend]:
    def factory(*, prefetch: int | None = None) -> KafkaBackend:
        return KafkaBackend(settings_for(bootstrap, prefetch=prefetch, **overrides))

    return factory
