"""`Backend`: everything an application calls on what `load_backend()` returns, as one type.

The protocol page's `MessageQueueBackendProtocol` has three methods; the backends abe
builds have the whole interface the documentation shows. This protocol names it, so
`async with load_backend() as backend: await backend.publish_many(...)` type-checks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from abe.types import ConsumerGroup, MessageQueueKey, MessageQueueMessage, MessageQueuePayload

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self

    from abe.backends.message_queue.base.capabilities import Capabilities
    from abe.backends.message_queue.base.subscription import Subscription
    from abe.middleware import Middleware

__all__ = ["Backend"]


class Backend(Protocol):
    """A configured backend: publish, consume, subscribe, clean up and close."""

    @property
    def name(self) -> str:
        """The entry-point name of the backend, e.g. "redis"."""
        ...

    @property
    def capabilities(self) -> Capabilities:
        """What the broker can and cannot do."""
        ...

    @property
    def closed(self) -> bool:
        """Whether `close()` has been called."""
        ...

    @property
    def max_payload_bytes(self) -> int:
        """The largest JSON body `publish` accepts."""
        ...

    @property
    def middleware(self) -> list[Middleware]:
        """Middleware around this backend's publishes and its consumers' handlers."""
        ...

    @property
    def redelivery_timeout(self) -> float:
        """Seconds after which an unsettled delivery is delivered again."""
        ...

    async def publish(
        self,
        key: MessageQueueKey,
        payload: MessageQueuePayload,
        *,
        headers: Mapping[str, str] | None = None,
        message_id: str | None = None,
    ) -> None:
        """Publish one payload to `key` (with the caller's id, for retries without duplicates)."""
        ...

    async def publish_many(
        self,
        key: MessageQueueKey,
        payloads: Iterable[MessageQueuePayload],
        *,
        headers: Mapping[str, str] | None = None,
        message_ids: Sequence[str] | None = None,
    ) -> None:
        """Publish many payloads to `key`, in order, through the broker's batch path."""
        ...

    def consume(
        self,
        *,
        group: ConsumerGroup | None = None,
        keys: Sequence[MessageQueueKey] | MessageQueueKey | None = None,
    ) -> AsyncIterator[MessageQueueMessage]:
        """Payloads of `keys` for `group`; each is acknowledged when the next is asked for."""
        ...

    def subscribe(
        self,
        *,
        group: ConsumerGroup | None = None,
        keys: Sequence[MessageQueueKey] | MessageQueueKey | None = None,
        prefetch: int | None = None,
    ) -> Subscription:
        """Deliveries for `group` over `keys`, each settled by the caller."""
        ...

    async def delete_keys(self, keys: Sequence[MessageQueueKey] | MessageQueueKey) -> None:
        """Delete `keys` and their dead-letter keys from the broker."""
        ...

    async def close(self) -> None:
        """Stop every subscription and release the connections."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...
