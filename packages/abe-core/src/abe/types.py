"""The types of the message-queue protocol, at the import path the protocol page gives.

Application code and providers type against these names; they never change shape
without a major release.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol, TypeAlias, runtime_checkable

__all__ = [
    "ConsumerGroup",
    "MessageQueueBackendProtocol",
    "MessageQueueKey",
    "MessageQueueMessage",
    "MessageQueuePayload",
]

MessageQueueKey: TypeAlias = str
"""The routing key: a topic, stream, subject or queue name, depending on the broker."""

MessageQueuePayload: TypeAlias = dict[str, Any]
"""A message body: a dict whose JSON encoding round-trips."""

MessageQueueMessage: TypeAlias = dict[str, Any]
"""What `consume()` yields: the payload as it was published."""

ConsumerGroup: TypeAlias = str | None
"""A group name; None is the group named `default`.

Consumers sharing a group compete for its messages; different groups each get them all.
"""


@runtime_checkable
class MessageQueueBackendProtocol(Protocol):
    """What every backend registered under `abe.backends.message_queue` provides."""

    async def publish(self, key: MessageQueueKey, payload: MessageQueuePayload) -> None:
        """Send `payload` to the stream, topic, subject or queue named `key`."""
        ...

    def consume(self, *, group: ConsumerGroup | None = None) -> AsyncIterator[MessageQueueMessage]:
        """Yield payloads until cancelled; `group=None` is the group named `default`."""
        ...

    @classmethod
    def from_env(cls) -> MessageQueueBackendProtocol:
        """Build a configured backend from environment variables, without connecting."""
        ...
