"""A client library's connection, made on first use and shared by a backend and its receivers.

The backend creates one `LazyClient` and hands it to every receiver it opens, so readers
and writers share a connection without a receiver ever calling into the backend (and
without the import cycle that would take). The first `get()` connects, bounded by the
operation timeout; concurrent callers wait for that one attempt; `close()` ends it once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from abe.backends.message_queue.base.deadlines import bounded
from abe.errors import BackendClosedError

__all__ = ["LazyClient"]

C = TypeVar("C")
log = logging.getLogger("abe.client")


class LazyClient(Generic[C]):
    """Connects with `open()` on first use; `close(client)` releases it at the end.

    `timeout` bounds one connection attempt (asyncio.TimeoutError, which the backend turns
    into BackendUnavailableError); `what` names the client in messages.
    """

    def __init__(
        self,
        open: Callable[[], Awaitable[C]],
        close: Callable[[C], Awaitable[object]],
        *,
        timeout: float,
        what: str,
    ) -> None:
        self._open = open
        self._close = close
        self._timeout = timeout
        self._what = what
        self._client: C | None = None
        self._lock: asyncio.Lock | None = None
        self._closed = False

    @property
    def current(self) -> C | None:
        """The client if connected, else None (never connects)."""
        return self._client

    @property
    def closed(self) -> bool:
        """Whether `close()` was called."""
        return self._closed

    async def get(self) -> C:
        """The connected client, connecting first if need be."""
        client = self._client
        if client is not None:
            return client
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._closed:
                raise BackendClosedError(f"{self._what} is closed")
            if self._client is None:
                self._client = await bounded(self._open(), self._timeout)
            return self._client

    async def discard(self) -> None:
        """Close the current client (it broke); the next `get()` makes a new one."""
        client, self._client = self._client, None
        if client is not None:
            await self._release(client)

    async def close(self) -> None:
        """Close the client for good. Idempotent."""
        self._closed = True
        await self.discard()

    async def _release(self, client: C) -> None:
        try:
            await bounded(self._close(client), self._timeout)
        except Exception as exc:  # closing is best effort
            log.debug(
                "%s: closing did not finish cleanly: %s: %s", self._what, type(exc).__name__, exc
            )
