"""The reading half of the small interface a provider implements: one group, some keys.

abe-core drives it: it asks for at most as many messages as the consumer may still
hold, batches acknowledgements, decodes bodies and dead-letters the ones it cannot.
A provider only moves messages between the broker and these calls.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence
from typing import ClassVar

from abe.backends.message_queue.base.codec import IncomingMessage

__all__ = ["Receiver"]


class Receiver(abc.ABC):
    """A provider's reader for one consumer group over a fixed set of keys."""

    ack_batch_size: ClassVar[int] = 500
    """Most messages core hands to one `ack()` call (the broker's batch limit, if it has one)."""
    ack_linger: float = 0.0
    """Seconds core waits for more acks before calling `ack()` with fewer than a full batch.

    0 acknowledges as soon as nothing else is on the wire (lowest latency); a few
    milliseconds suit brokers that charge per request, so one received batch is
    acknowledged in one call. A receiver may set its own in `__init__` (from settings).
    """

    @abc.abstractmethod
    async def fetch(self, max_messages: int, timeout: float) -> Sequence[IncomingMessage]:
        """Return 1 to `max_messages` messages, or none once `timeout` seconds pass.

        Messages whose earlier delivery was not acknowledged within the redelivery
        timeout, or that were nacked and whose delay has passed, come back here with
        their attempt number raised. Cancellation must leave the receiver usable.
        """

    @abc.abstractmethod
    async def ack(self, messages: Sequence[IncomingMessage]) -> None:
        """Mark messages done so they are never delivered to this group again.

        Called with batches; use the broker's batch path rather than one call each.
        """

    @abc.abstractmethod
    async def nack(self, message: IncomingMessage, delay: float) -> None:
        """Deliver `message` again, to any member of the group, no sooner than `delay` seconds."""

    async def extend(self, messages: Sequence[IncomingMessage]) -> None:  # noqa: B027
        """Push back the redelivery of messages a handler is still working on.

        Optional: the consumer calls it every third of the redelivery timeout for
        deliveries whose handlers still run. Brokers that redeliver only when a member
        leaves (Kafka) need nothing here.
        """

    def keeps_order(self, key: str) -> bool:
        """Whether the broker holds `key`'s later messages back while one is retried.

        Override where it does (an SQS FIFO queue). A nack then also gives back the later
        messages of `key` that were fetched but not handed out, so that they follow the
        retried one instead of overtaking it, as the broker would have them.
        """
        return False

    async def release(self, messages: Sequence[IncomingMessage]) -> None:
        """Give back messages that were fetched but never handed to the application.

        They should come back as if never delivered. The default nacks each with no
        delay; override when the broker can do better (not raising the attempt count,
        or, on Kafka, simply not committing them).
        """
        await asyncio.gather(*(self.nack(message, 0.0) for message in messages))

    async def close(self) -> None:  # noqa: B027  (optional hook; most receivers have state to free)
        """Release what the receiver holds. Unacknowledged messages are delivered again later."""
