"""Work done once per key and remembered: a topic created, a queue's URL resolved.

A provider does such work the first time a key is used. `OncePerKey.get(key)` runs it once
however many callers ask meanwhile; they all await that one run. A failure reaches every
one of them and is not remembered (the next call runs again); a caller cancelled while it
waits does not cancel the run the others wait for; `forget()` drops a key (its queue was
deleted), so the next call runs again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["OncePerKey"]

K = TypeVar("K")
V = TypeVar("V")

_ANY: object = object()


class OncePerKey(Generic[K, V]):
    """Values made by `make(key)`, one run at a time per key, kept until forgotten."""

    def __init__(self, make: Callable[[K], Awaitable[V]]) -> None:
        self._make = make
        self._values: dict[K, V] = {}
        self._running: dict[K, asyncio.Future[V]] = {}

    def __contains__(self, key: object) -> bool:
        """Whether the key's value is known (a run still in flight does not count)."""
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)

    async def get(self, key: K) -> V:
        """The key's value: remembered, else the result of the one run made for it."""
        if key in self._values:
            return self._values[key]
        running = self._running.get(key)
        if running is None:
            running = self._running[key] = asyncio.ensure_future(self._run(key))
            running.add_done_callback(lambda _: self._running.pop(key))  # then runs again
        # A waiter's cancellation stays its own; shield marks a failure nobody awaits seen.
        return await asyncio.shield(running)

    async def _run(self, key: K) -> V:
        value = await self._make(key)
        self._values[key] = value
        return value

    def remember(self, key: K, value: V) -> None:
        """Take `value` as the key's, without a run (it is known some other way)."""
        self._values[key] = value

    def forget(self, key: K, value: object = _ANY) -> None:
        """Drop the key's value, or only if it is still `value` when that is given (a caller
        that found it stale must not drop the one another caller has just made)."""
        if key in self._values and (value is _ANY or self._values[key] == value):
            del self._values[key]

    def clear(self) -> None:
        """Forget every key (runs in flight still remember theirs when they end)."""
        self._values.clear()
