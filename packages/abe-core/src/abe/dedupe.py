"""Handling each message once, by its id, where the broker cannot store a retried publish once.

At-least-once delivery hands a handler a message again after a crash, and a publish that
raised and was retried with the same `message_id` reaches brokers without de-duplication
(Redis, Kafka, SQS standard queues, the memory backend) twice. Both copies carry the same
id. `Deduplicate` is a middleware that remembers the ids a handler finished, per group and
key, and acknowledges a copy of one without running the handler again:

    consumer = AsyncLoopConsumer(backend, "billing", keys=["orders"],
                                 middleware=[Deduplicate(window=100_000, ttl=3600)])

It remembers at most `window` ids for at most `ttl` seconds, in this process: a copy that
arrives at another worker process, or after the window, runs again, so handlers that must
never run twice still need an idempotent effect (a unique key in the database they write).
A copy that arrives while the first is still running waits for it, and runs only if it
failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from abe.middleware import HandleNext, Middleware

if TYPE_CHECKING:
    from abe.backends.message_queue.base.delivery import Delivery

__all__ = ["Deduplicate"]

log = logging.getLogger("abe.dedupe")


class Deduplicate(Middleware):
    """Runs the handler once per (group, key, message id) within a bounded window."""

    def __init__(self, window: int = 10_000, ttl: float = 3_600.0) -> None:
        if window < 1 or ttl <= 0:
            raise ValueError("window must be at least 1 and ttl positive")
        self.window = window
        self.ttl = ttl
        self.skipped = 0
        """Copies acknowledged without running the handler, so far."""
        self._done: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self._running: dict[tuple[str, str, str], asyncio.Event] = {}

    def seen(self, delivery: Delivery) -> bool:
        """Whether a handler finished this message (by group, key and id) within the window."""
        key = (delivery.group, delivery.key, delivery.id)
        finished = self._done.get(key)
        return finished is not None and time.monotonic() - finished < self.ttl

    async def handle(self, delivery: Delivery, call_next: HandleNext) -> None:
        key = (delivery.group, delivery.key, delivery.id)
        while (running := self._running.get(key)) is not None:
            await running.wait()  # a copy of a message being handled now: see how it ends
        if self.seen(delivery):
            self.skipped += 1
            log.info("message %s of %r was handled already; acknowledging the copy", key[2], key[1])
            return
        done = self._running[key] = asyncio.Event()
        try:
            await call_next(delivery)
            self._remember(key)
        finally:
            del self._running[key]
            done.set()

    def _remember(self, key: tuple[str, str, str]) -> None:
        now = time.monotonic()
        self._done[key] = now
        self._done.move_to_end(key)
        while len(self._done) > self.window:
            self._done.popitem(last=False)
        while self._done:
            oldest, at = next(iter(self._done.items()))
            if now - at < self.ttl:
                break
            del self._done[oldest]
