"""Reading SQS queues for one subscription: long polls, visibility, batched deletes.

One key: each fetch is one ReceiveMessage long poll. Several keys: each queue has its
own poll in flight and the first one to bring messages ends the fetch, so an idle
queue's long poll never holds back another queue's messages; polls still running carry
over to the next fetch. The messages asked for across all polls in flight never exceed
the credit the subscription gave, so its prefetch bound holds.

A FIFO queue hands out nothing more of a message group while some of it is in flight
(abe writes each FIFO key as one group), so while this reader holds messages of a FIFO
key it first waits (up to 1 s) for them to be settled, then polls briefly rather than
long: the next batch comes right after the held ones are deleted (moto, for one, keeps
a long poll that started while the group was in flight waiting to its end).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import ClassVar

from abe.provider import IncomingMessage, Receiver, bounded, wait_event
from abe_mq_sqs._client import SqsClient
from abe_mq_sqs._wire import BATCH_ENTRIES, is_fifo

__all__ = ["SqsReceiver"]

log = logging.getLogger("abe.sqs")

_RELEASE_TIMEOUT = 5.0
_STARVED_RETURN = 1.0
_SHORT_RECEIVE_PAUSE = 0.01
"""Seconds between a receive that returned less than a full batch and the next one."""


class SqsReceiver(Receiver):
    """The reader of one subscription over a fixed set of keys (queues)."""

    ack_batch_size: ClassVar[int] = BATCH_ENTRIES  # DeleteMessageBatch takes 10 handles
    ack_linger: ClassVar[float] = 0.005  # SQS charges per request: one delete per batch read

    def __init__(self, sqs: SqsClient, keys: tuple[str, ...]) -> None:
        self._sqs = sqs
        self._keys = keys
        self._polls: dict[str, asyncio.Task[list[IncomingMessage]]] = {}
        self._asked: dict[str, int] = {}
        self._turn = 0
        self._held: dict[str, int] = dict.fromkeys(filter(is_fifo, keys), 0)
        """Messages of each FIFO key fetched by this reader and not yet settled."""
        self._settled = {key: asyncio.Event() for key in self._held}
        self._next_receive = 0.0
        """After a receive that came back short, the earliest time for the next one."""

    async def fetch(self, max_messages: int, timeout: float) -> Sequence[IncomingMessage]:
        wait = min(self._sqs.settings.wait_time_seconds, max(0, int(timeout)))
        pause = self._next_receive - time.monotonic()
        if pause > 0:
            # The last receive did not fill a batch, so the queue was all but drained: a
            # moment's pause lets the next receive take a fuller batch (SQS bills requests).
            await asyncio.sleep(pause)
        if len(self._keys) == 1:
            key = self._keys[0]
            if self._held.get(key):
                await wait_event(self._settled[key], min(1.0, timeout))
            messages = await self._sqs.receive(key, max_messages, self._wait(key, wait))
        else:
            messages = await self._fetch_many(max_messages, timeout)
        self._count(messages, 1)
        if 0 < len(messages) < min(max_messages, BATCH_ENTRIES):
            self._next_receive = time.monotonic() + _SHORT_RECEIVE_PAUSE
        if not messages and wait == 0 and timeout > 0:
            await asyncio.sleep(timeout)  # short polling: once per poll interval, not a spin
        return messages

    def _wait(self, key: str, wait: int) -> int:
        """The long-poll wait for `key`: short while this reader holds messages of a FIFO key."""
        return min(wait, 1) if self._held.get(key) else wait

    def _count(self, messages: Sequence[IncomingMessage], change: int) -> None:
        """Count the FIFO keys' messages fetched (+1) or settled (-1); 0 held sets `settled`."""
        for message in messages:
            if message.key in self._held:
                held = self._held[message.key] = max(0, self._held[message.key] + change)
                if held:
                    self._settled[message.key].clear()
                else:
                    self._settled[message.key].set()

    async def _fetch_many(self, max_messages: int, timeout: float) -> list[IncomingMessage]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        first = True
        while True:
            remaining = deadline - loop.time()
            if remaining >= 1.0 or first:
                wait = min(self._sqs.settings.wait_time_seconds, max(0, int(remaining)))
                if self._start_polls(max_messages, wait):
                    # Some queue got no poll: the credit is out with the others. Come back
                    # within a second, with the credit the consumer has freed meanwhile.
                    deadline = min(deadline, loop.time() + _STARVED_RETURN)
                    remaining = deadline - loop.time()
            elif not self._polls:
                return []
            first = False
            if not self._polls:
                await asyncio.sleep(max(remaining, 0.0))
                return []
            done, _ = await asyncio.wait(
                set(self._polls.values()),
                timeout=max(remaining, 0.0),
                return_when=asyncio.FIRST_COMPLETED,
            )
            messages, error = self._collect()
            if messages:
                if error is not None:
                    log.debug("sqs: one queue's poll failed (%s); polling it again", error)
                return messages
            if error is not None:
                raise error
            if not done or loop.time() >= deadline:
                return []

    def _start_polls(self, max_messages: int, wait: int) -> int:
        """Start a poll on each queue without one, within the credit the polls may ask for.

        The polls in flight never ask for more than `max_messages` together. With less
        credit than queues, the polls are short (1 s), so that none holds it for long.
        Returns how many queues got no poll for want of credit.
        """
        credit = max_messages - sum(self._asked.values())
        keys = self._keys[self._turn :] + self._keys[: self._turn]  # take turns at the credit
        self._turn = (self._turn + 1) % len(self._keys)
        idle = [key for key in keys if key not in self._polls]
        if credit < len(idle):
            wait = min(wait, 1)
        loop = asyncio.get_running_loop()
        started = 0
        for position, key in enumerate(idle):
            if credit <= 0:
                break
            share = max(1, min(BATCH_ENTRIES, credit // (len(idle) - position)))
            receive = self._sqs.receive(key, share, self._wait(key, wait))
            self._polls[key] = loop.create_task(receive)
            self._asked[key] = share
            credit -= share
            started += 1
        return len(idle) - started

    def _collect(self) -> tuple[list[IncomingMessage], BaseException | None]:
        """Take the finished polls: their messages, and the first error one of them raised."""
        messages: list[IncomingMessage] = []
        error: BaseException | None = None
        for key, task in list(self._polls.items()):
            if not task.done():
                continue
            del self._polls[key]
            del self._asked[key]
            if task.cancelled():
                continue
            if task.exception() is not None:
                error = error or task.exception()
                continue
            messages.extend(task.result())
        return messages, error

    async def ack(self, messages: Sequence[IncomingMessage]) -> None:
        try:
            await self._sqs.delete(messages)
        finally:  # settled either way: deleted, or back in the queue after the timeout
            self._count(messages, -1)

    async def nack(self, message: IncomingMessage, delay: float) -> None:
        try:
            await self._sqs.change_one(message, delay)
        finally:
            self._count((message,), -1)

    async def release(self, messages: Sequence[IncomingMessage]) -> None:
        """Never handed out: visible again at once, 10 a call (SQS still counts the receipt)."""
        try:
            await self._sqs.change_visibility(messages, 0)
        finally:
            self._count(messages, -1)

    async def extend(self, messages: Sequence[IncomingMessage]) -> None:
        await self._sqs.change_visibility(messages, self._sqs.settings.visibility_timeout)

    async def close(self) -> None:
        """Stop the polls in flight; messages they already brought are made visible again."""
        polls = list(self._polls.values())
        for task in polls:
            task.cancel()
        await asyncio.gather(*polls, return_exceptions=True)
        unread, _ = self._collect()
        self._polls.clear()
        self._asked.clear()
        if unread:
            with contextlib.suppress(Exception):
                await bounded(self._sqs.change_visibility(unread, 0), _RELEASE_TIMEOUT)
