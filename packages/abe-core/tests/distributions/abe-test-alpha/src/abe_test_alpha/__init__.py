"""A working provider for the loader tests: the memory backend under another name."""

from typing import ClassVar

from abe.backends.message_queue.memory import MemoryBackend


class AlphaBackend(MemoryBackend):
    """Registered as 'alpha'."""

    name: ClassVar[str] = "alpha"
