"""The memory backend: the embedded default, and the place tests of applications run."""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from abe.backends.message_queue.base.backend import BaseBackend
from abe.backends.message_queue.base.capabilities import Capabilities
from abe.backends.message_queue.base.codec import IncomingMessage, OutgoingMessage
from abe.backends.message_queue.base.keys import KeyRules
from abe.backends.message_queue.base.receiver import Receiver
from abe.backends.message_queue.base.settings import BackendSettings, setting
from abe.backends.message_queue.memory.broker import MemoryBroker

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["MemoryBackend", "MemorySettings"]


@dataclass(frozen=True, kw_only=True)
class MemorySettings(BackendSettings):
    """Settings of the memory backend: which in-process broker, and the payload limit."""

    broker: str = setting(
        "ABE_MEMORY_BROKER",
        "default",
        "Name of the in-process broker; backends built with the same name share messages.",
    )
    max_payload_bytes: int = setting(
        "ABE_MEMORY_MAX_PAYLOAD_BYTES",
        1_048_576,
        "Largest JSON body accepted, in bytes.",
        minimum=1,
        maximum=1 << 30,
    )

    backend_name: ClassVar[str] = "memory"


class MemoryBackend(BaseBackend):
    """A backend whose broker lives in this process: same semantics, no network, no persistence.

    `MemoryBackend()` gets a private broker; `from_env()` (what `load_backend()` calls)
    shares the named broker of `ABE_MEMORY_BROKER`, so separately built producers and
    consumers meet. Inspect what was published with `backend.broker.messages(key)`.
    """

    name: ClassVar[str] = "memory"
    capabilities: ClassVar[Capabilities] = Capabilities(
        fan_out=True,
        per_key_ordering=True,
        persistence=False,
        native_delay=True,
        max_payload_bytes=1_048_576,
        remote=False,
    )
    key_rules: ClassVar[KeyRules] = KeyRules(
        max_length=200,
        allowed="A-Za-z0-9._-",
        described="letters, digits, '_', '-' and '.' between tokens (the rules every broker "
        "with fan-out shares)",
        broker="memory",
        dotted=True,
    )
    settings_class: ClassVar[type[MemorySettings]] = MemorySettings

    def __init__(
        self, settings: MemorySettings | None = None, *, broker: MemoryBroker | None = None
    ) -> None:
        settings = settings or MemorySettings()
        super().__init__(settings)
        self.settings: MemorySettings = settings
        self.broker = broker if broker is not None else MemoryBroker()

    @classmethod
    def from_env(cls) -> Self:
        """A backend on the shared broker named by ABE_MEMORY_BROKER (default "default")."""
        settings = MemorySettings.from_env()
        return cls(settings, broker=MemoryBroker.named(settings.broker))

    async def _send(self, key: str, messages: Sequence[OutgoingMessage]) -> None:
        self.broker.append(key, messages)

    async def _open_receiver(self, group: str, keys: Sequence[str]) -> Receiver:
        for key in keys:
            self.broker.join(key, group)
        return _MemoryReceiver(self.broker, group, tuple(keys), self.settings.redelivery_timeout)

    async def _delete_keys(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.broker.delete(key)

    async def _existing_keys(self, keys: Sequence[str]) -> Sequence[str]:
        return [key for key in keys if self.broker.exists(key)]

    async def _delete_group(self, group: str, keys: Sequence[str]) -> None:
        for key in keys:
            self.broker.leave(key, group)

    def _describe(self) -> str:
        return f"broker={self.settings.broker!r}"


class _MemoryReceiver(Receiver):
    def __init__(
        self, broker: MemoryBroker, group: str, keys: tuple[str, ...], lease: float
    ) -> None:
        self._broker = broker
        self._group = group
        self._keys = keys
        self._lease = lease
        self._turn = itertools.count()

    async def fetch(self, max_messages: int, timeout: float) -> Sequence[IncomingMessage]:
        remaining = timeout
        while True:
            taken = self._broker.take(
                self._group, self._keys, max_messages, self._lease, next(self._turn)
            )
            if taken or remaining <= 0:
                return taken
            started = time.monotonic()
            await self._broker.wait(self._group, self._keys, remaining)
            remaining -= time.monotonic() - started

    async def ack(self, messages: Sequence[IncomingMessage]) -> None:
        self._broker.ack(self._group, messages)

    async def nack(self, message: IncomingMessage, delay: float) -> None:
        self._broker.nack(self._group, message, delay)

    async def extend(self, messages: Sequence[IncomingMessage]) -> None:
        self._broker.extend(self._group, messages, self._lease)

    async def release(self, messages: Sequence[IncomingMessage]) -> None:
        self._broker.release(self._group, messages)
