"""Helpers of abe-mq-nats' integration tests: settings for a URL, raw clients, stream cleanup.

The session broker (`nats_broker`, 4222 here) is shared with other people: every test
uses unique keys, and the `nats_janitor` fixture (conftest.py) deletes the streams that
the test's backends or raw clients created, and nothing else. conftest.py puts this
folder on sys.path (pytest runs with --import-mode=importlib), so tests import this
module by its unique name.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any
from unittest import mock

import nats
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from abe_mq_nats import NatsBackend, NatsSettings

REDELIVERY = 2.0
"""The contract's short redelivery timeout (seconds)."""


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Run with exactly these NATS/ABE variables set (every other one of the backend unset)."""
    names = {variable.name for variable in NatsBackend.variables}
    clean = {name: value for name, value in os.environ.items() if name not in names}
    with mock.patch.dict(os.environ, {**clean, **values}, clear=True):
        yield


def settings_for(url: str, **overrides: Any) -> NatsSettings:
    """Settings reaching `url` (credentials in it are honoured), with fields replaced."""
    with environment({"NATS_URL": url}):
        settings = NatsSettings.from_env()
    defaults: dict[str, Any] = {"redelivery_timeout": REDELIVERY, "operation_timeout": 5.0}
    return dataclasses.replace(settings, **{**defaults, **overrides})


@asynccontextmanager
async def raw_client(
    url: str, **options: Any
) -> AsyncIterator[tuple[NatsClient, JetStreamContext]]:
    """A plain nats-py connection, as a foreign producer or consumer would have."""
    client = await nats.connect(url, connect_timeout=5, allow_reconnect=False, **options)
    try:
        yield client, client.jetstream(timeout=10)
    finally:
        await client.close()


class Janitor:
    """Remembers the backends and raw streams of one test; deletes the streams they created."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.backends: list[NatsBackend] = []
        self.streams: set[str] = set()

    def track(self, backend: NatsBackend) -> NatsBackend:
        self.backends.append(backend)
        return backend

    async def clean(self) -> None:
        """Delete the raw streams, and those the backends used that abe created for a key."""
        used = {
            ref.name for backend in self.backends for ref in backend._jetstream.streams.values()
        }
        if not used and not self.streams:
            return
        async with raw_client(self.url) as (_, js):
            for name in sorted(used - self.streams):
                with suppress(nats.js.errors.NotFoundError):
                    if await created_by_abe(js, name):
                        await js.delete_stream(name)
            for name in sorted(self.streams):
                with suppress(nats.js.errors.NotFoundError):
                    await js.delete_stream(name)


async def created_by_abe(js: JetStreamContext, stream: str) -> bool:
    """Whether abe created `stream` for a key (it says so in the description)."""
    description = (await js.stream_info(stream)).config.description or ""
    return description.startswith("abe key ")
