"""Reading SQS queues for one subscription: long polls, visibility, batched deletes.

Each queue has one ReceiveMessage long poll in flight at most, and the first poll to bring
messages ends the fetch, so an idle queue never holds back another's; polls still running
carry over to the next fetch, and together they never ask for more than the credit the
subscription gave. A FIFO queue hands out nothing more of a key while some of it is in
flight, so while this reader holds a FIFO key's messages it first waits (up to 1 s) for
them to be settled, then polls briefly rather than long (moto, for one, keeps a long poll
that began meanwhile waiting to its end).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import ClassVar

from abe.provider import IncomingMessage, Receiver, bounded, wait_event
from abe_mq_sqs._client import BATCH_ENTRIES, SqsClient, is_fifo

log = logging.getLogger("abe.sqs")

_RELEASE_TIMEOUT = 5.0
_STARVED_RETURN = 1.0
"""Longest a fetch waits when some queue got no poll: the credit may be freed meanwhile."""
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
        self._held = dict.fromkeys(filter(is_fifo, keys), 0)
        """Messages of each FIFO key fetched by this reader and not yet settled."""
        self._settled = {key: asyncio.Event() for key in self._held}
        self._next_receive = 0.0

    async def fetch(self, max_messages: int, timeout: float) -> Sequence[IncomingMessage]:
        wait = min(self._sqs.settings.wait_time_seconds, max(0, int(timeout)))
        if self._next_receive > time.monotonic():
            # The last receive did not fill a batch, so the queue was all but drained: a
            # moment's pause lets the next take a fuller one (SQS bills requests).
            await asyncio.sleep(self._next_receive - time.monotonic())
        if len(self._keys) == 1 and self._held.get(self._keys[0]):
            await wait_event(self._settled[self._keys[0]], min(1.0, timeout))
        limit = min(timeout, _STARVED_RETURN) if self._start_polls(max_messages, wait) else timeout
        polls = set(self._polls.values())
        await asyncio.wait(polls, timeout=max(limit, 0.0), return_when=asyncio.FIRST_COMPLETED)
        messages, error = self._collect()
        if error is not None and not messages:
            raise error
        if error is not None:
            log.debug("sqs: one queue's poll failed (%s); polling it again", error)
        self._count(messages, 1)
        if 0 < len(messages) < min(max_messages, BATCH_ENTRIES):
            self._next_receive = time.monotonic() + _SHORT_RECEIVE_PAUSE
        if not messages and wait == 0 and timeout > 0:
            await asyncio.sleep(timeout)  # short polling: once per poll interval, not a spin
        return messages

    def _start_polls(self, max_messages: int, wait: int) -> int:
        """Start a poll on each queue without one, all of them asking for `max_messages` at
        most; with less credit than queues, short ones (1 s), so that none holds it long.
        Returns how many queues got no poll for want of credit."""
        credit = max_messages - sum(self._asked.values())
        keys = self._keys[self._turn :] + self._keys[: self._turn]  # take turns at the credit
        self._turn = (self._turn + 1) % len(self._keys)
        idle = [key for key in keys if key not in self._polls]
        wait = min(wait, 1) if credit < len(idle) else wait
        for position, key in enumerate(idle):
            if credit <= 0:
                return len(idle) - position
            share = max(1, min(BATCH_ENTRIES, credit // (len(idle) - position)))
            short = self._held.get(key)  # a FIFO key with messages in flight
            receive = self._sqs.receive(key, share, min(wait, 1) if short else wait)
            self._polls[key] = asyncio.get_running_loop().create_task(receive)
            self._asked[key] = share
            credit -= share
        return 0

    def _collect(self) -> tuple[list[IncomingMessage], BaseException | None]:
        """Take the finished polls: their messages, and the first error one of them raised."""
        messages: list[IncomingMessage] = []
        error: BaseException | None = None
        for key, task in list(self._polls.items()):
            if task.done():
                del self._polls[key], self._asked[key]
                if not task.cancelled() and task.exception() is not None:
                    error = error or task.exception()
                elif not task.cancelled():
                    messages.extend(task.result())
        return messages, error

    def _count(self, messages: Sequence[IncomingMessage], change: int) -> None:
        """Count the FIFO keys' messages fetched (+1) or settled (-1); none held is `settled`."""
        for message in messages:
            if message.key in self._held:
                held = self._held[message.key] = max(0, self._held[message.key] + change)
                (self._settled[message.key].clear if held else self._settled[message.key].set)()

    async def ack(self, messages: Sequence[IncomingMessage]) -> None:
        try:
            await self._sqs.settle(messages)
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
            await self._sqs.settle(messages, hide=0)
        finally:
            self._count(messages, -1)

    async def extend(self, messages: Sequence[IncomingMessage]) -> None:
        await self._sqs.settle(messages, hide=self._sqs.settings.visibility_timeout)

    async def close(self) -> None:
        """Stop the polls in flight; messages they already brought are made visible again."""
        for task in self._polls.values():
            task.cancel()
        await asyncio.gather(*self._polls.values(), return_exceptions=True)
        unread, _ = self._collect()
        if unread:
            with contextlib.suppress(Exception):
                await bounded(self._sqs.settle(unread, hide=0), _RELEASE_TIMEOUT)
