"""abe: one message-queue protocol for asyncio services, with interchangeable brokers behind it.

backend = load_backend()                 # QUEUE_BACKEND picks the broker
await backend.publish("orders", {"id": 1})
async for payload in backend.consume(group="billing", keys=["orders"]):
    ...
"""

from abe._version import __version__
from abe.backends.message_queue.base import (
    Capabilities,
    Delivery,
    MessageQueueBackend,
    Subscription,
)
from abe.backends.message_queue.base.interface import Backend
from abe.backends.message_queue.consumer import AsyncLoopConsumer, ConsumerStats, current_delivery
from abe.backends.message_queue.loader import (
    MemoryFallbackWarning,
    available_backends,
    load_backend,
)
from abe.backends.message_queue.memory import MemoryBackend, MemoryBroker
from abe.dedupe import Deduplicate
from abe.errors import (
    AbeError,
    AuthenticationError,
    BackendClosedError,
    BackendNotFoundError,
    BackendUnavailableError,
    ConfigurationError,
    DeliveryStateError,
    InvalidKeyError,
    PayloadError,
    PublishError,
)
from abe.middleware import Middleware, Publication
from abe.types import (
    ConsumerGroup,
    MessageQueueBackendProtocol,
    MessageQueueKey,
    MessageQueueMessage,
    MessageQueuePayload,
)

__all__ = [
    "AbeError",
    "AsyncLoopConsumer",
    "AuthenticationError",
    "Backend",
    "BackendClosedError",
    "BackendNotFoundError",
    "BackendUnavailableError",
    "Capabilities",
    "ConfigurationError",
    "ConsumerGroup",
    "ConsumerStats",
    "Deduplicate",
    "Delivery",
    "DeliveryStateError",
    "InvalidKeyError",
    "MemoryBackend",
    "MemoryBroker",
    "MemoryFallbackWarning",
    "MessageQueueBackend",
    "MessageQueueBackendProtocol",
    "MessageQueueKey",
    "MessageQueueMessage",
    "MessageQueuePayload",
    "Middleware",
    "PayloadError",
    "Publication",
    "PublishError",
    "Subscription",
    "__version__",
    "available_backends",
    "current_delivery",
    "load_backend",
]
