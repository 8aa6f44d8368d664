"""Acknowledgements gathered into batches without adding latency (group commit).

The first ack starts a flush at once; acks that arrive while a flush is on the wire
wait for the next one. Idle consumers ack immediately, busy ones one round trip per
batch. A receiver whose broker charges per request (SQS) may ask for a short linger,
so that the acks of one received batch leave together; a full batch ends the linger
early, so lingering never caps how fast acks can go. A failed flush is logged: those
messages are delivered again, never lost.
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
        self._limit = 4 * max_batch  # back-pressure: add() waits once this many are pending
        self._linger = linger
        self._pending: list[T] = []
        self._task: asyncio.Task[None] | None = None
        self._filled: asyncio.Future[None] | None = None  # ends a linger once a batch is full
        self._room: asyncio.Future[None] | None = None  # wakes add() once under the limit

    @property
    def pending(self) -> int:
        """Items added and not yet handed to `flush`."""
        return len(self._pending)

    def add_nowait(self, item: T) -> bool:
        """Queue one item unless a full batch is already waiting; False leaves it to `add`."""
        pending = self._pending
        if self._task is None:
            pending.append(item)
            self._task = asyncio.get_running_loop().create_task(self._run())
            return True
        if len(pending) + 1 >= self._limit:  # this one would fill the queue
            return False
        pending.append(item)
        if self._filled is not None and len(pending) >= self._max_batch:
            _wake(self._filled)  # a full batch: stop lingering
        return True

    async def add(self, item: T) -> None:
        """Queue one item; waits only when a full batch is already waiting (back-pressure).

        The wait ends as soon as a flush has taken the pending items back under the limit.
        """
        if not self.add_nowait(item):
            self._pending.append(item)
            if self._filled is not None:
                _wake(self._filled)
            if self._room is None or self._room.done():
                self._room = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._room)

    async def _linger_for_more(self) -> None:
        """Sleep up to the linger, or less: until `add` fills a batch."""
        loop = asyncio.get_running_loop()
        self._filled = filled = loop.create_future()
        timer = loop.call_later(self._linger, _wake, filled)
        try:
            await filled
        finally:
            timer.cancel()
            self._filled = None

    def _wake_adders(self) -> None:
        if self._room is not None and len(self._pending) < self._limit:
            _wake(self._room)
            self._room = None

    async def _run(self) -> None:
        try:
            while self._pending:
                if self._linger and len(self._pending) < self._max_batch:
                    await self._linger_for_more()  # a short timer: let the batch fill up
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                self._wake_adders()
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
            if self._room is not None:  # stopped with items left (cancelled): drain() has them
                _wake(self._room)
                self._room = None

    async def drain(self) -> None:
        """Wait until everything added so far has been flushed (or has failed and been logged)."""
        while self._task is not None:
            await asyncio.shield(self._task)
        if self._pending:  # a flush task was cancelled with items left: flush them here
            self._task = asyncio.get_running_loop().create_task(self._run())
            await asyncio.shield(self._task)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
