"""One message handed to a consumer, with its metadata and the three ways to settle it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from abe.backends.message_queue.base.codec import (
    HEADER_ID,
    HEADER_PUBLISHED_AT,
    IncomingMessage,
)
from abe.errors import DeliveryStateError
from abe.types import MessageQueuePayload

__all__ = ["Delivery"]


class _Settler(Protocol):
    group: str

    @property
    def backend_name(self) -> str: ...

    def _decode(self, message: IncomingMessage) -> MessageQueuePayload: ...
    def _ack_message_nowait(self, message: IncomingMessage) -> bool: ...
    async def _settle_ack(self, delivery: Delivery) -> None: ...
    async def _settle_nack(self, delivery: Delivery, delay: float) -> None: ...
    async def _settle_dead_letter(self, delivery: Delivery, reason: str) -> None: ...


class Delivery:
    """A received message: payload, key, id, attempt and headers; settle it exactly once.

    `ack()` marks it done; `nack(delay)` asks for it again after `delay` seconds;
    `dead_letter(reason)` moves it to `<key>-dlq`. One that is never settled is
    delivered again after the backend's redelivery timeout.
    """

    __slots__ = ("_outcome", "_payload", "_settler", "message")

    def __init__(
        self, message: IncomingMessage, payload: MessageQueuePayload | None, settler: _Settler
    ) -> None:
        self.message = message
        self._payload = payload  # None: decoded when first needed (when it is handed out)
        self._settler = settler
        self._outcome: str | None = None

    @property
    def payload(self) -> MessageQueuePayload:
        """The message's JSON object."""
        payload = self._payload
        if payload is None:
            payload = self._payload = self._settler._decode(self.message)
        return payload

    @property
    def key(self) -> str:
        """The key (stream, topic, subject, queue) the message was read from."""
        return self.message.key

    @property
    def id(self) -> str:
        """abe's message id, or the broker's id for a message a foreign producer wrote."""
        return self.message.headers.get(HEADER_ID) or self.message.broker_id

    @property
    def backend(self) -> str:
        """The name of the backend it was delivered by, e.g. "redis"."""
        return self._settler.backend_name

    @property
    def group(self) -> str:
        """The consumer group it was delivered to."""
        return self._settler.group

    @property
    def attempt(self) -> int:
        """1 on the first delivery, 2 on the first redelivery, and so on."""
        return self.message.attempt

    @property
    def headers(self) -> Mapping[str, str]:
        """Every header the message carries, abe's own (`abe-*`) included."""
        return self.message.headers

    @property
    def published_at(self) -> float | None:
        """When it was published, in seconds since the Unix epoch; None if unknown."""
        text = self.message.headers.get(HEADER_PUBLISHED_AT)
        try:
            return int(text) / 1000 if text else None
        except ValueError:
            return None

    @property
    def settled(self) -> bool:
        """Whether ack, nack or dead_letter has been called."""
        return self._outcome is not None

    @property
    def outcome(self) -> str | None:
        """How it was settled: "ack", "nack" or "dead-letter"; None while unsettled."""
        return self._outcome

    def _claim(self, action: str) -> None:
        if self._outcome is not None:
            raise DeliveryStateError(
                f"cannot {action} message {self.id!r} of {self.key!r}: it was already settled "
                f"({self._outcome})"
            )
        self._outcome = action

    async def ack(self) -> None:
        """Mark the message done; it is not delivered to this group again."""
        self._claim("ack")
        await self._settler._settle_ack(self)

    def ack_nowait(self) -> bool:
        """Acknowledge without waiting, if its subscription can queue the ack now.

        False means nothing was done (the subscription is closed, or its acks are backed
        up): call `await ack()`, which waits or raises. The consumer's fast path.
        """
        if self._outcome is not None:
            return False
        self._outcome = "ack"
        if self._settler._ack_message_nowait(self.message):
            return True
        self._outcome = None
        return False

    async def nack(self, delay: float = 0.0) -> None:
        """Give the message back to be delivered again, no sooner than `delay` seconds."""
        if delay < 0:
            raise ValueError(f"delay must be zero or more seconds, got {delay}")
        self._claim("nack")
        await self._settler._settle_nack(self, delay)

    async def dead_letter(self, reason: BaseException | str) -> None:
        """Move the message to `<key>-dlq` with headers naming `reason` and the attempts."""
        self._claim("dead-letter")
        text = reason if isinstance(reason, str) else f"{type(reason).__name__}: {reason}"
        await self._settler._settle_dead_letter(self, text)

    def __repr__(self) -> str:
        return f"Delivery(key={self.key!r}, id={self.id!r}, attempt={self.attempt})"
