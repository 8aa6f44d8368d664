"""Helpers for the Redis provider's integration tests: backends that clean up after themselves.

Tests share the Redis on 6379 with other users, so every key is unique, and each test
deletes the streams (and dead-letter and delayed sets) its backends touched, nothing more.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import redis

from abe.provider import OutgoingMessage, Receiver
from abe_mq_redis import RedisBackend, RedisSettings
from abe_mq_redis._client import delayed_key

TOUCHED: set[tuple[str, str]] = set()
"""(url, key) of everything the tests' backends wrote or read, deleted after each test."""


class RecordingRedisBackend(RedisBackend):
    """RedisBackend that remembers the keys it used, so the test can delete them after."""

    async def _send(self, key: str, messages: Sequence[OutgoingMessage]) -> None:
        TOUCHED.add((self.settings.url, key))
        await super()._send(key, messages)

    async def _open_receiver(self, group: str, keys: Sequence[str]) -> Receiver:
        for key in keys:
            TOUCHED.add((self.settings.url, key))
            TOUCHED.add((self.settings.url, delayed_key(key, group)))
        return await super()._open_receiver(group, keys)


def backend_on(url: str, **settings: Any) -> RecordingRedisBackend:
    """A backend on `url` with short timeouts (redelivery 2 s) unless told otherwise."""
    values: dict[str, Any] = {"redelivery_timeout": 2.0, "operation_timeout": 5.0}
    values.update(settings)
    return RecordingRedisBackend(RedisSettings(url=url, **values))


@pytest.fixture
def make_backend() -> Callable[..., RecordingRedisBackend]:
    """`make_backend(url, **settings)`: a backend whose keys are deleted after the test."""
    return backend_on


def forget(url: str, *keys: str) -> None:
    """Delete keys a test created on the server at `url` (a sync client: no event loop needed)."""
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        if keys:
            client.delete(*keys)
    except redis.exceptions.ConnectionError:
        pass  # a test-owned server that is already gone
    finally:
        client.close()


@pytest.fixture(autouse=True)
def delete_touched_keys() -> Iterator[None]:
    """After each test, delete what its backends touched (on servers still running)."""
    TOUCHED.clear()
    yield
    by_url: dict[str, list[str]] = {}
    for url, key in TOUCHED:
        by_url.setdefault(url, []).append(key)
    TOUCHED.clear()
    for url, keys in by_url.items():
        forget(url, *keys)


@pytest.fixture
def remember_keys() -> Callable[..., None]:
    """`remember_keys(url, *keys)`: delete these keys too after the test."""

    def remember(url: str, *keys: str) -> None:
        TOUCHED.update((url, key) for key in keys)

    return remember
