"""The name the protocol page gives the backend contract, at the path it gives."""

from abe.types import MessageQueueBackendProtocol

MessageQueueBackend = MessageQueueBackendProtocol

__all__ = ["MessageQueueBackend", "MessageQueueBackendProtocol"]
