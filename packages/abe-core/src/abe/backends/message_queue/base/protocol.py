"""The name the protocol page gives the backend contract, at the path it gives."""

from abe.types import MessageQueueBackendProtocol

MessageQueueBackend = MessageQueueBackendProtocol
"""The protocol every backend satisfies, under the name the protocol page gives it."""

__all__ = ["MessageQueueBackend", "MessageQueueBackendProtocol"]
