"""The memory backend and its in-process broker."""

from abe.backends.message_queue.memory.backend import MemoryBackend, MemorySettings
from abe.backends.message_queue.memory.broker import MemoryBroker

__all__ = ["MemoryBackend", "MemoryBroker", "MemorySettings"]
