"""A working provider for the loader tests: the memory backend under another name."""

from typing import ClassVar

from abe.backends.message_queue.memory import MemoryBackend


class BetaBackend(MemoryBackend):
    """Registered as 'beta'."""

    name: ClassVar[str] = "beta"
