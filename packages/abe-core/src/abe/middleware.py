"""Middleware: one small, ordered, async interface around publishing and around handling.

A middleware overrides `publish` (around every `publish` and `publish_many`) and/or
`handle` (around every handler call of `AsyncLoopConsumer`), and calls `call_next` to go
on. Tracing, metrics and logging context are built on it:

    class CorrelationId(Middleware):
        async def publish(self, publication, call_next):
            publication.headers.setdefault("correlation-id", uuid.uuid4().hex)
            await call_next(publication)

        async def handle(self, delivery, call_next):
            token = correlation.set(delivery.headers.get("correlation-id"))
            try:
                await call_next(delivery)
            finally:
                correlation.reset(token)

Order: middleware installed for the process (`install()`, what an instrumentation uses)
runs outermost, then the backend's (`backend.middleware`), then the consumer's
(`AsyncLoopConsumer(middleware=[...])`). A handler's exception passes out through
`handle`, which may look at it; the consumer settles the delivery after the chain
returns or raises. With no middleware at all, nothing is added to the path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from abe.types import MessageQueuePayload

if TYPE_CHECKING:
    from abe.backends.message_queue.base.delivery import Delivery

__all__ = [
    "HandleNext",
    "changes",
    "chain_handle",
    "chain_publish",
    "Middleware",
    "PublishNext",
    "Publication",
    "install",
    "installed",
    "uninstall",
]


@dataclass
class Publication:
    """One `publish` (one payload) or `publish_many` (several), on its way to the broker.

    Middleware may add to `headers` (they go with every payload) before calling on;
    `message_ids` has one id per payload, the caller's or abe's.
    """

    backend: str
    """The backend's name, e.g. "redis" (messaging.system)."""
    key: str
    payloads: list[MessageQueuePayload]
    headers: dict[str, str]
    message_ids: list[str]
    many: bool
    """Whether this is a `publish_many`."""
    carries_headers: bool = True
    """Whether the backend can carry headers at all (one with only the protocol's methods
    cannot: it refuses any)."""


PublishNext = Callable[[Publication], Awaitable[None]]
HandleNext = Callable[["Delivery"], Awaitable[None]]


class Middleware:
    """Hooks around publishing and handling; each default just calls on."""

    async def publish(self, publication: Publication, call_next: PublishNext) -> None:
        """Around one publish or publish_many: call `call_next(publication)` to send it."""
        await call_next(publication)

    async def handle(self, delivery: Delivery, call_next: HandleNext) -> None:
        """Around one handler call: `call_next(delivery)` runs the handler (and may raise)."""
        await call_next(delivery)


class _Installed:
    """The process's middleware, and a count of the changes made to it."""

    def __init__(self) -> None:
        self.middlewares: list[Middleware] = []
        self.changes = 0


_INSTALLED = _Installed()


def install(middleware: Middleware) -> None:
    """Run `middleware` around every publish and handler in this process (outermost first).

    Consumers already running pick it up at their next message.
    """
    if middleware not in _INSTALLED.middlewares:
        _INSTALLED.middlewares.append(middleware)
        _INSTALLED.changes += 1


def uninstall(middleware: Middleware) -> None:
    """Stop running `middleware` process-wide (nothing happens if it was not installed)."""
    if middleware in _INSTALLED.middlewares:
        _INSTALLED.middlewares.remove(middleware)
        _INSTALLED.changes += 1


def changes() -> int:
    """A number that changes whenever `install` or `uninstall` changes the process's list."""
    return _INSTALLED.changes


def installed() -> tuple[Middleware, ...]:
    """The middleware installed for the process, outermost first."""
    return tuple(_INSTALLED.middlewares)


def chain_publish(middlewares: Sequence[Middleware], last: PublishNext) -> PublishNext:
    """`last`, wrapped by each middleware's `publish`, the first outermost."""
    call = last
    for middleware in reversed(middlewares):
        call = _publish_step(middleware, call)
    return call


def chain_handle(middlewares: Sequence[Middleware], last: HandleNext) -> HandleNext:
    """`last`, wrapped by each middleware's `handle`, the first outermost."""
    call = last
    for middleware in reversed(middlewares):
        call = _handle_step(middleware, call)
    return call


def _publish_step(middleware: Middleware, call_next: PublishNext) -> PublishNext:
    async def step(publication: Publication) -> None:
        await middleware.publish(publication, call_next)

    return step


def _handle_step(middleware: Middleware, call_next: HandleNext) -> HandleNext:
    async def step(delivery: Delivery) -> None:
        await middleware.handle(delivery, call_next)

    return step
