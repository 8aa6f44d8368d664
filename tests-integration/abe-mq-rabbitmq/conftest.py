"""Helpers for the RabbitMQ provider's integration tests: backends that clean up after themselves.

Tests share the RabbitMQ on 5672 with other users, so every key is unique, and each test
deletes the keys (exchange, log, group queues) its backends touched, nothing more.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from abe.errors import BackendUnavailableError
from abe.provider import OutgoingMessage, Receiver
from abe_mq_rabbitmq import RabbitmqBackend, RabbitmqSettings

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # for abe_mq_rabbitmq_testing, beside this file
    sys.path.insert(0, _HERE)

TOUCHED: set[tuple[str, str]] = set()
"""(url, key) of everything the tests' backends wrote or read, deleted after each test."""


class RecordingRabbitmqBackend(RabbitmqBackend):
    """RabbitmqBackend that remembers the keys it used, so the test can delete them after."""

    async def _send(self, key: str, messages: Sequence[OutgoingMessage]) -> None:
        TOUCHED.add((str(self.settings.url), key))
        await super()._send(key, messages)

    async def _open_receiver(self, group: str, keys: Sequence[str]) -> Receiver:
        for key in keys:
            TOUCHED.add((str(self.settings.url), key))
        return await super()._open_receiver(group, keys)


def backend_on(url: str, **settings: Any) -> RecordingRabbitmqBackend:
    """A backend on `url` with short timeouts (redelivery 2 s) unless told otherwise."""
    values: dict[str, Any] = {"redelivery_timeout": 2.0, "operation_timeout": 5.0}
    values.update(settings)
    return RecordingRabbitmqBackend(RabbitmqSettings(url=url, **values))


@pytest.fixture
def make_backend() -> Callable[..., RecordingRabbitmqBackend]:
    """`make_backend(url, **settings)`: a backend whose keys are deleted after the test."""
    return backend_on


@pytest_asyncio.fixture(autouse=True)
async def delete_touched_keys() -> AsyncIterator[None]:
    """After each test, delete what its backends touched (on brokers still running)."""
    TOUCHED.clear()
    yield
    by_url: dict[str, list[str]] = {}
    for url, key in TOUCHED:
        by_url.setdefault(url, []).append(key)
    TOUCHED.clear()
    for url, keys in by_url.items():
        cleaner = RabbitmqBackend(RabbitmqSettings(url=url, operation_timeout=5.0))
        try:
            # delete_keys() takes each key's dead-letter key along
            bases = [key for key in keys if not key.endswith("-dlq") or key[:-4] not in keys]
            await cleaner.delete_keys(sorted(bases))
        except BackendUnavailableError:  # a test-owned broker that is already gone
            pass
        finally:
            await cleaner.close()


@pytest.fixture
def remember_keys() -> Callable[..., None]:
    """`remember_keys(url, *keys)`: delete these keys too after the test."""

    def remember(url: str, *keys: str) -> None:
        TOUCHED.update((url, key) for key in keys)

    return remember
