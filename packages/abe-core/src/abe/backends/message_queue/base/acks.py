"""Acknowledgements gathered into batches without adding latency (group commit).

The first ack starts a flush at once; acks that arrive while a flush is on the wire
wait for the next one. Idle consumers ack immediately, busy ones one round trip per
batch. A receiver whose broker charges per request (SQS) may ask for a short linger,
so that the acks of one received batch leave together. A failed flush is logged:
those messages are delivered again, never lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["AckBatcher"]

log = logging.getLogger("abe.acks")
T = TypeVar("T")


class AckBatcher(Generic[T]):
    """Collects items and hands them to `flush` in batches of at most `max_batch`."""

    def __init__(
        self,
        flush: Callable[[Sequence[T]], Awaitable[None]],
        max_batch: int,
        linger: float = 0.0,
    ) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._linger = linger
        self._pending: list[T] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Items added and not yet handed to `flush`."""
        return len(self._pending)

    def add_nowait(self, item: T) -> bool:
        """Queue one item unless a full batch is already waiting; False leaves it to `add`."""
        if self._task is None:
            self._pending.append(item)
            self._task = asyncio.get_running_loop().create_task(self._run())
            return True
        if len(self._pending) + 1 >= 4 * self._max_batch:  # this one would fill the queue
            return False
        self._pending.append(item)
        return True

    async def add(self, item: T) -> None:
        """Queue one item; waits only when a full batch is already waiting (back-pressure)."""
        if not self.add_nowait(item):
            self._pending.append(item)
            assert self._task is not None
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        try:
            while self._pending:
                if self._linger and len(self._pending) < self._max_batch:
                    await asyncio.sleep(self._linger)  # a short timer: let the batch fill up
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                try:
                    await self._flush(batch)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning(
                        "acknowledging %d message(s) failed (%s: %s); they will be delivered again",
                        len(batch),
                        type(exc).__name__,
                        exc,
                    )
        finally:
            self._task = None

    async def drain(self) -> None:
        """Wait until everything added so far has been flushed (or has failed and been logged)."""
        while self._task is not None:
            await asyncio.shield(self._task)
        if self._pending:  # a flush task was cancelled with items left: flush them here
            self._task = asyncio.get_running_loop().create_task(self._run())
            await asyncio.shield(self._task)
