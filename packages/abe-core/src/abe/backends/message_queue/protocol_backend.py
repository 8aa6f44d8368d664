"""A backend that has only the protocol's three methods, behind the whole abe interface.

Code written for the protocol page implements `publish`, `consume(*, group)` and
`from_env`, nothing more. `ProtocolBackend` wraps such a backend so that
`AsyncLoopConsumer`, `load_backend()` and the command line can use it, and says once,
with a `ProtocolOnlyWarning`, what it cannot give:

- **at most once**: the wrapped `consume()` acknowledges a message when it hands it out,
  so a crash while handling loses it, and nothing is redelivered after the redelivery
  timeout;
- **retries in this process**: a nack holds the message here and hands it out again
  after its delay, with its attempt raised; a restart forgets it;
- **dead letters through `publish`**: to `<key>-dlq`, the key being the first of `keys`
  (the protocol's `consume` does not say which key a message came from) or else the
  group's name; the payload as it was, without headers (the protocol has none);
- no headers, no keys chosen by the consumer (the wrapped backend reads what it reads),
  no `delete_keys()`.

Backends built on `abe.provider.BaseBackend` keep every guarantee and are never wrapped.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import time
import warnings
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, ClassVar

from abe.backends.message_queue.base.backend import BaseBackend
from abe.backends.message_queue.base.capabilities import Capabilities
from abe.backends.message_queue.base.codec import IncomingMessage, OutgoingMessage
from abe.backends.message_queue.base.deadlines import bounded
from abe.backends.message_queue.base.keys import KeyRules
from abe.backends.message_queue.base.receiver import Receiver
from abe.backends.message_queue.base.settings import BackendSettings
from abe.errors import PayloadError
from abe.types import MessageQueueBackendProtocol

__all__ = ["ProtocolBackend", "ProtocolOnlyWarning"]


class ProtocolOnlyWarning(UserWarning):
    """A backend with only the protocol's methods runs with weaker guarantees (at most once)."""


class ProtocolBackend(BaseBackend):
    """The whole backend interface over a backend that has only `publish` and `consume`."""

    name: ClassVar[str] = "protocol"
    capabilities: ClassVar[Capabilities] = Capabilities(
        fan_out=False, per_key_ordering=False, persistence=False, native_delay=False, headers=False
    )
    key_rules: ClassVar[KeyRules] = KeyRules(
        max_length=1024,
        allowed="^\\s",
        described="anything but whitespace (the wrapped backend has its own rules)",
        broker="the wrapped backend",
    )

    def __init__(self, wrapped: MessageQueueBackendProtocol) -> None:
        super().__init__(BackendSettings())
        self.wrapped = wrapped
        """The backend that has only the protocol's three methods."""
        warnings.warn(  # shown once per place it is built from, by Python's default filter
            f"{type(wrapped).__name__} has only the protocol's publish/consume, so abe runs "
            f"it at most once: a message is acknowledged when consume() hands it out, a "
            f"crash loses the one being handled, retries happen in this process and dead "
            f"letters are published to <key>-dlq. Build the backend on "
            f"abe.provider.BaseBackend for at-least-once delivery",
            ProtocolOnlyWarning,
            stacklevel=3,
        )

    @classmethod
    def from_env(cls) -> ProtocolBackend:
        raise TypeError("wrap a protocol backend: ProtocolBackend(TheirBackend.from_env())")

    def _check_headers(self, headers: Mapping[str, str] | None) -> dict[str, str] | None:
        if headers:
            raise PayloadError(
                f"{type(self.wrapped).__name__} has only the protocol's publish(key, payload), "
                f"which carries no headers; send them in the payload"
            )
        return None

    def _resolve_keys(self, keys: Sequence[str] | str | None) -> tuple[str, ...]:
        if keys is None:
            return ()  # the wrapped backend reads the keys it reads
        return super()._resolve_keys(keys)

    async def _send(self, key: str, messages: Sequence[OutgoingMessage]) -> None:
        for message in messages:
            await self.wrapped.publish(key, json.loads(message.body))

    async def _open_receiver(self, group: str, keys: Sequence[str]) -> Receiver:
        home = keys[0] if keys else group
        return _ProtocolReceiver(self.wrapped.consume(group=group), home)

    async def _close(self) -> None:
        for name in ("close", "aclose"):
            close = getattr(self.wrapped, name, None)
            if callable(close):
                result = close()
                if asyncio.iscoroutine(result):
                    await result
                return

    def _describe(self) -> str:
        return type(self.wrapped).__name__


class _ProtocolReceiver(Receiver):
    """Payloads of the wrapped `consume()`, one at a time; nacks held here until they are due."""

    def __init__(self, source: AsyncIterator[Any], key: str) -> None:
        self._source = source
        self._key = key
        self._next: asyncio.Task[Any] | None = None
        self._held: list[tuple[float, int, IncomingMessage]] = []
        self._order = itertools.count()
        self._ids = itertools.count(1)

    async def fetch(self, max_messages: int, timeout: float) -> Sequence[IncomingMessage]:
        due = self._due()
        if due:
            return due[:max_messages]
        if self._next is None:
            self._next = asyncio.ensure_future(anext(self._source))
        wait = timeout if not self._held else min(timeout, self._held[0][0] - time.monotonic())
        with contextlib.suppress(asyncio.TimeoutError):
            await bounded(asyncio.shield(self._next), max(wait, 0.0))
        if not self._next.done():
            return self._due()[:max_messages]
        task, self._next = self._next, None
        payload = task.result()  # StopAsyncIteration ends the subscription's reading
        body = json.dumps(payload, separators=(",", ":")).encode()
        return [IncomingMessage(self._key, body, {}, 1, f"{self._key}:{next(self._ids)}")]

    def _due(self) -> list[IncomingMessage]:
        now, due = time.monotonic(), []
        while self._held and self._held[0][0] <= now:
            due.append(heapq.heappop(self._held)[2])
        return due

    async def ack(self, messages: Sequence[IncomingMessage]) -> None:
        """Nothing to do: the wrapped `consume()` acknowledged them when it handed them out."""

    async def nack(self, message: IncomingMessage, delay: float) -> None:
        again = IncomingMessage(
            message.key, message.body, message.headers, message.attempt + 1, message.broker_id
        )
        heapq.heappush(self._held, (time.monotonic() + delay, next(self._order), again))

    async def release(self, messages: Sequence[IncomingMessage]) -> None:
        for message in messages:  # handed out again next, as if never delivered
            heapq.heappush(self._held, (0.0, next(self._order), message))

    async def close(self) -> None:
        if self._next is not None:
            self._next.cancel()
            await asyncio.gather(self._next, return_exceptions=True)
        close = getattr(self._source, "aclose", None)
        if callable(close):
            with contextlib.suppress(Exception):
                await close()
