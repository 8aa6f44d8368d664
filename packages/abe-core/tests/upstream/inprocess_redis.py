"""A client with the shape the protocol page's skeleton calls, kept in this process.

It stands in for Redis in the skeleton: `AsyncRedis.from_url(url)`, `xadd(key, fields)`,
and `xreadgroup(group, ...)` as an async iterator of entries, each group reading every
entry once (in the order they were added), waiting for new ones. The page leaves which
streams `xreadgroup` reads as `...`: a URL with a path (`inprocess://name/orders`) reads
only that key's entries, as reading one stream would; without one, every key's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, ClassVar
from urllib.parse import urlsplit


class AsyncRedis:
    """Streams shared by every client made from the same URL."""

    _servers: ClassVar[dict[str, AsyncRedis]] = {}

    def __init__(self, reads: str = "") -> None:
        self.reads = reads
        self.entries: list[tuple[str, dict[str, str]]] = []
        self._cursors: dict[str, int] = {}
        self._added = asyncio.Condition()

    @classmethod
    def from_url(cls, url: str) -> AsyncRedis:
        return cls._servers.setdefault(url, cls(urlsplit(url).path.strip("/")))

    async def xadd(self, key: str, fields: dict[str, str]) -> None:
        self.entries.append((key, fields))
        async with self._added:
            self._added.notify_all()

    async def entry_on(self, key: str) -> None:
        """Wait until some entry has been added to `key` (for tests)."""
        async with self._added:
            await self._added.wait_for(lambda: any(added == key for added, _ in self.entries))

    async def xreadgroup(self, group: str, *_: Any) -> AsyncIterator[dict[str, str]]:
        while True:
            cursor = self._cursors.get(group, 0)
            if cursor < len(self.entries):
                self._cursors[group] = cursor + 1
                key, fields = self.entries[cursor]
                if not self.reads or key == self.reads:
                    yield fields
                continue
            async with self._added:
                await self._added.wait()
