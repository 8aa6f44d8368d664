"""Backends on every broker kind for the instrumentation's integration tests.

Backends come from `load_backend(kind)` with only environment variables configuring
them (each broker fixture's `env()` and short timeouts), as a service deployed under
`opentelemetry-instrument` would build them; the keys a test used are deleted after it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest

from abe import load_backend
from abe.provider import BaseBackend

BROKERS = ("redis", "nats", "kafka", "sqs")

TEST_ENV = {
    "ABE_MQ_REDELIVERY_TIMEOUT": "2",
    "ABE_MQ_OPERATION_TIMEOUT": "10",
    # Tansu (the Kafka the fixtures start) fails InitProducerId and joins groups slowly.
    "ABE_KAFKA_IDEMPOTENT": "false",
    "ABE_KAFKA_SESSION_TIMEOUT": "2",
}
"""What every backend here runs with, beside its broker's address."""

_PROVIDER_VARIABLES = ("ABE_", "QUEUE_BACKEND", "REDIS_", "NATS_", "KAFKA_", "AWS_")


@pytest.fixture
def broker_env(request: pytest.FixtureRequest) -> Callable[[str], dict[str, str]]:
    """`broker_env(kind)`: the variables that point abe at the session's broker of `kind`."""

    def env(kind: str) -> dict[str, str]:
        broker = request.getfixturevalue(f"{kind}_broker")
        return {**TEST_ENV, **broker.env(), "QUEUE_BACKEND": kind}

    return env


@pytest.fixture
def clean_environ() -> Callable[[dict[str, str]], dict[str, str]]:
    """`clean_environ(env)`: this process's environment without abe's variables, plus `env`."""

    def build(env: dict[str, str]) -> dict[str, str]:
        kept = {k: v for k, v in os.environ.items() if not k.startswith(_PROVIDER_VARIABLES)}
        return {**kept, **env}

    return build


@pytest.fixture
def backend_on(
    broker_env: Callable[[str], dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> Callable[[str, list[str]], AbstractAsyncContextManager[BaseBackend]]:
    """`async with backend_on(kind, keys) as backend`: deletes `keys` when it leaves."""

    @asynccontextmanager
    async def open_backend(kind: str, keys: list[str]) -> AsyncIterator[Any]:
        for name, value in broker_env(kind).items():
            monkeypatch.setenv(name, value)
        async with load_backend(kind) as backend:
            try:
                yield backend
            finally:
                await backend.delete_keys(keys)

    return open_backend
