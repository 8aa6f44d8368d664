"""The receiver: one member of a group, consuming the group's queue on each key.

RabbitMQ pushes deliveries (basic.consume) up to the channel's prefetch (basic.qos, sized
from the most the consumer asked for at once, shared between the keys: it applies to a
consumer when it starts, so a larger ask restarts them); `fetch` hands them out. A
delivery not acknowledged within the redelivery timeout is returned to the queue
(basic.nack, requeue), and while nobody fetches from this member it also stops consuming,
so that another member gets it.
A nack with a delay holds the delivery back here, then returns it to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial

from abe.provider import IncomingMessage, Receiver, wait_event
from aio_pika import exceptions as amqp
from aio_pika.abc import AbstractChannel
from aiormq.abc import DeliveredMessage

__all__ = ["MARKER", "RabbitmqReceiver", "group_queue"]

MARKER = "x-abe-marker"
"""Header of the records abe writes into a key's log (scan ends, group joins); never delivered."""
_IDLE_TURNS = 3  # turns of the loop a fetch waits for the next delivery of a burst


def group_queue(key: str, group: str) -> str:
    """The quorum queue of `group` on `key` (a group name holds no ':', so this is unambiguous)."""
    return f"{key}:{group}"


@dataclass
class _Held:
    """A delivery this member holds unsettled, and when it goes back to the queue."""

    delivery: DeliveredMessage
    due: float
    handed: bool = False


class RabbitmqReceiver(Receiver):
    """Consumes `queues` (one per key) on its own channel; closing the channel requeues."""

    def __init__(
        self,
        channel: AbstractChannel,
        reopen: Callable[[], Awaitable[AbstractChannel]],
        keys: Sequence[str],
        queues: Sequence[str],
        lease: float,
    ) -> None:
        self._channel, self._reopen, self._lease = channel, reopen, lease
        self._key_of = dict(zip(queues, keys, strict=True))
        self._consumers: dict[str, str] = {}  # queue -> consumer tag
        self._buffer: list[IncomingMessage] = []
        self._arrived = asyncio.Event()
        self._held: dict[int, _Held] = {}
        self._fetching = 0
        self._last_fetch = 0.0
        self._each = 0  # the prefetch of each queue's consumer
        self._timer: asyncio.Task[None] | None = None

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    async def fetch(self, max_messages: int, timeout: float) -> Sequence[IncomingMessage]:
        """1 to `max_messages` deliveries, or none after `timeout`; cancellation loses nothing."""
        self._fetching += 1
        try:
            if self._channel.is_closed:  # the connection was lost: RabbitMQ requeued it all
                self._consumers, self._held, self._buffer = {}, {}, []
                self._channel, self._each = await self._reopen(), 0  # its prefetch: below
            each = max(1, max_messages // len(self._key_of))
            if each > self._each:  # asked for more: a larger prefetch (at most what was asked)
                await self._cancel_consumers()
                await self._channel.set_qos(prefetch_count=each)
                self._each = each
            if not self._consumers:
                await self._consume()
            if not self._buffer:
                self._arrived.clear()
                await wait_event(self._arrived, timeout)
            await self._gather(max_messages)
            taken, self._buffer = self._buffer[:max_messages], self._buffer[max_messages:]
            due = self._now() + self._lease
            for message in taken:
                held = self._held.get(id(message.handle))
                if held is not None:
                    held.handed, held.due = True, due
            return taken
        finally:
            self._fetching -= 1
            self._last_fetch = self._now()

    async def _gather(self, wanted: int) -> None:
        """Let a burst of deliveries arrive, up to half of `wanted`, while the loop brings some.

        Each delivery reaches `_on_delivery` in a task of its own (aiormq's), so a fetch
        woken by the first would hand out a few at a time; one fetch per batch is cheaper,
        and half the prefetch leaves the other half on its way (as an ack per half does).
        """
        idle = 0
        while 0 < len(self._buffer) < (wanted + 1) // 2 and idle < _IDLE_TURNS:
            before = len(self._buffer)
            await asyncio.sleep(0)
            idle = idle + 1 if len(self._buffer) == before else 0

    async def _consume(self) -> None:
        """Start consuming every queue, each with the channel's prefetch (basic.qos)."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().create_task(self._expire_loop())
        channel = await self._channel.get_underlay_channel()
        for name, key in self._key_of.items():  # aiormq's: aio-pika adds a task per delivery
            consuming = await channel.basic_consume(name, partial(self._on_delivery, key))
            self._consumers[name] = consuming.consumer_tag or ""

    async def _on_delivery(self, key: str, delivery: DeliveredMessage) -> None:
        properties = delivery.header.properties
        headers = {name: _text(value) for name, value in (properties.headers or {}).items()}
        if MARKER in headers:  # a record of abe's own copied by a foreign client: drop it
            await delivery.channel.basic_ack(_tag(delivery))
            return
        count = headers.pop("x-delivery-count", "0")
        attempt = 1 + (int(count) if count.isdigit() else 0)
        tag = _tag(delivery)
        headers.setdefault("abe-id", properties.message_id or f"{key}:{tag}")
        message = IncomingMessage(
            key=key,
            body=delivery.body,
            headers=headers,
            attempt=attempt,
            broker_id=properties.message_id or str(tag),
            handle=delivery,
        )
        self._held[id(delivery)] = _Held(delivery, self._now() + self._lease)
        self._buffer.append(message)
        self._arrived.set()

    async def ack(self, messages: Sequence[IncomingMessage]) -> None:
        """One basic.ack (multiple) for those below every delivery still held, one each above.

        `_held` keeps the channel's delivery order, so its first entry bounds what a
        multiple ack may cover; a requeue's nack is written before a later ack (frames go
        out in call order), so nothing settled elsewhere is covered twice.
        """
        settled = [held.delivery for m in messages if (held := self._held.pop(id(m.handle), None))]
        if not settled:
            return
        oldest = next(iter(self._held.values()), None)
        bound = _tag(oldest.delivery) if oldest is not None else None
        below = [d for d in settled if bound is None or _tag(d) < bound]
        above = [d for d in settled if bound is not None and _tag(d) > bound]
        with contextlib.suppress(amqp.ChannelInvalidStateError, amqp.AMQPError):
            if below:  # a closed channel has requeued them already
                last = max(below, key=_tag)
                await last.channel.basic_ack(_tag(last), multiple=True)
            for delivery in above:
                await delivery.channel.basic_ack(_tag(delivery))

    async def nack(self, message: IncomingMessage, delay: float) -> None:
        """Back to the queue no sooner than `delay`: held here until then, unacknowledged."""
        held = self._held.get(id(message.handle))
        if held is None:
            return
        # The timer returns it to the queue once due (at once for no delay); deferring even
        # that lets a closing member cancel its consumers first, so it is not sent back here.
        held.handed, held.due = True, self._now() + delay

    async def extend(self, messages: Sequence[IncomingMessage]) -> None:
        due = self._now() + self._lease
        for message in messages:
            held = self._held.get(id(message.handle))
            if held is not None and held.due < due:
                held.due = due

    async def release(self, messages: Sequence[IncomingMessage]) -> None:
        due = self._now()
        for message in messages:
            held = self._held.get(id(message.handle))
            if held is not None:
                held.handed, held.due = True, due

    async def _requeue(self, held: _Held) -> None:
        self._held.pop(id(held.delivery), None)
        with contextlib.suppress(amqp.ChannelInvalidStateError, amqp.AMQPError):
            await held.delivery.channel.basic_nack(_tag(held.delivery), requeue=True)

    async def _expire_loop(self) -> None:
        """Return what is due to the queue; while nobody fetches, stop consuming first."""
        while True:
            await asyncio.sleep(min(0.1, self._lease / 4))
            now = self._now()
            due = [held for held in self._held.values() if held.handed and held.due <= now]
            idle = not self._fetching and now - self._last_fetch >= self._lease
            if idle and any(held.due <= now for held in self._held.values()):
                await self._cancel_consumers()  # so that another member gets what goes back
                due += [held for held in self._held.values() if not held.handed]
            buffered = {id(held.delivery) for held in due}
            self._buffer = [m for m in self._buffer if id(m.handle) not in buffered]
            for held in due:
                await self._requeue(held)

    async def _cancel_consumers(self) -> None:
        consumers, self._consumers = self._consumers, {}
        for tag in consumers.values():
            with contextlib.suppress(amqp.ChannelInvalidStateError, amqp.AMQPError):
                channel = await self._channel.get_underlay_channel()
                await channel.basic_cancel(tag)  # deliveries sent before it still come

    async def close(self) -> None:
        """Close the channel: RabbitMQ requeues every delivery this member still holds."""
        if self._timer is not None:
            self._timer.cancel()
            await asyncio.gather(self._timer, return_exceptions=True)
        with contextlib.suppress(amqp.AMQPError, amqp.ChannelInvalidStateError):
            await self._cancel_consumers()  # nothing more comes here: what goes back goes on
            await self._channel.close()
        self._held.clear()
        self._buffer.clear()


def _tag(delivery: DeliveredMessage) -> int:
    """The delivery's tag on its channel (aiormq types it optional; a consumed one has it)."""
    return delivery.delivery_tag or 0


def _text(value: object) -> str:
    """An AMQP header value as abe's text."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
