"""Message-queue backends: the protocol, the loader, the consumer and the memory backend."""

from abe.backends.message_queue.base import BaseBackend, MessageQueueBackend
from abe.backends.message_queue.consumer import AsyncLoopConsumer
from abe.backends.message_queue.loader import load_backend

__all__ = ["AsyncLoopConsumer", "BaseBackend", "MessageQueueBackend", "load_backend"]
