"""A consumer loop that runs a handler on each message, at least once, with retries.

Acknowledges after the handler returns; on failure asks for the message again after
an exponential backoff, and dead-letters it once `max_attempts` is reached. At most
`concurrency` handlers run at once. `shutdown()` stops taking messages and lets the
running handlers finish (for up to `shutdown_timeout`) instead of cancelling them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from time import monotonic
from typing import Protocol, cast

from abe.backends.message_queue.base.backend import BaseBackend
from abe.backends.message_queue.base.deadlines import bounded
from abe.backends.message_queue.base.delivery import Delivery
from abe.backends.message_queue.base.interface import Backend
from abe.backends.message_queue.base.subscription import Subscription
from abe.backends.message_queue.protocol_backend import ProtocolBackend
from abe.errors import AuthenticationError, BackendUnavailableError
from abe.middleware import _INSTALLED, HandleNext, Middleware, chain_handle, installed
from abe.types import (
    ConsumerGroup,
    MessageQueueBackendProtocol,
    MessageQueueKey,
    MessageQueuePayload,
)

__all__ = [
    "HELD_WORK",
    "PREFETCH_MULTIPLIER",
    "AsyncLoopConsumer",
    "ConsumerProtocol",
    "ConsumerStats",
    "Handler",
    "current_delivery",
]

log = logging.getLogger("abe.consumer")

_JOIN_RETRY_FIRST = 0.5
_JOIN_RETRY_MAX = 10.0

Handler = Callable[[MessageQueuePayload], Awaitable[object]]
"""An async function called with each payload; returning means done, raising means retry."""


class ConsumerProtocol(Protocol):
    """A consumer loop: `run(handler)` until `shutdown()`. AsyncLoopConsumer is one."""

    async def run(self, handler: Handler) -> None:
        """Call `handler` with each message until shut down."""
        ...

    async def shutdown(self) -> None:
        """Stop taking messages and let the running handlers finish."""
        ...


PREFETCH_MULTIPLIER = 4
"""With the default prefetch, a consumer may hold at least this many messages per handler
slot (Celery's default multiplier), and starts out so until it has timed its handlers."""

HELD_WORK = 0.1
"""With the default prefetch, a consumer holds, beyond the messages its handlers are running,
about this many seconds of their work: fast handlers get large fetches, slow ones take
little more than they can start, so the other members of the group get the rest."""

_current: contextvars.ContextVar[Delivery] = contextvars.ContextVar("abe_current_delivery")


def current_delivery() -> Delivery:
    """The delivery whose handler is running: its key, id, attempt and headers.

    Only valid inside a handler run by `AsyncLoopConsumer`; raises LookupError elsewhere.
    """
    try:
        return _current.get()
    except LookupError:
        raise LookupError(
            "current_delivery() is only available inside a consumer handler"
        ) from None


@dataclass
class ConsumerStats:
    """What one `run()` did so far."""

    processed: int = 0
    retried: int = 0
    dead_lettered: int = 0
    in_flight: int = 0


class AsyncLoopConsumer:
    """Runs `handler(payload)` for each message of `keys` in `group`, at least once.

    `run(handler)` returns after `shutdown()` (or when the backend is closed) once the
    handlers in flight have finished. It can be called again afterwards.

    Args:
        backend: the backend to read from. One with only the protocol's three methods
            runs at most once (see `ProtocolBackend`), with a `ProtocolOnlyWarning`.
        group: the consumer group; None is the group "default".
        keys: the keys to read; None reads `ABE_MQ_KEYS`.
        concurrency: most handlers running at once.
        max_attempts: attempts before a failing message goes to `<key>-dlq`.
        retry_delay: seconds before the second attempt; doubles per attempt.
        max_retry_delay: the longest wait between attempts.
        prefetch: most messages held at once, fetched or in handlers (at least
            `concurrency`). By default the backend's `ABE_MQ_PREFETCH` (100) or
            `PREFETCH_MULTIPLIER` per slot, whichever is more, bounds them, and within
            that the consumer holds what its handlers finish in about
            `HELD_WORK` seconds: large fetches for fast handlers, and for slow ones little
            more than they can start, so other members of the group get the rest. A number
            fixes it: more is faster (fewer round trips), less is fairer.
        shutdown_timeout: how long `shutdown()` lets running handlers finish before it
            cancels them (their messages are then delivered again).
        middleware: run around each handler call, inside the process's and the
            backend's (see `abe.middleware`).
        on_settled: called with each delivery once it is settled (its `outcome` says
            how), whether by the consumer or by the handler; for metrics. It must not
            block; an exception it raises is logged and otherwise ignored.

    A handler that returns has its message acknowledged; one that raises has it retried
    after a backoff. A handler may settle its own delivery instead, through
    `current_delivery()`: `dead_letter(error)` for an error no retry can fix.
    """

    def __init__(
        self,
        backend: Backend | MessageQueueBackendProtocol,
        group: ConsumerGroup | None = None,
        *,
        keys: Sequence[MessageQueueKey] | MessageQueueKey | None = None,
        concurrency: int = 1,
        max_attempts: int = 5,
        retry_delay: float = 1.0,
        max_retry_delay: float = 300.0,
        prefetch: int | None = None,
        shutdown_timeout: float = 30.0,
        middleware: Sequence[Middleware] = (),
        on_settled: Callable[[Delivery], object] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        if retry_delay < 0 or max_retry_delay < retry_delay:
            raise ValueError("need 0 <= retry_delay <= max_retry_delay")
        if shutdown_timeout < 0:
            raise ValueError("shutdown_timeout must be zero or more seconds")
        if not isinstance(backend, (BaseBackend, MessageQueueBackendProtocol)):
            raise TypeError(
                f"AsyncLoopConsumer needs a message-queue backend (publish, consume and "
                f"from_env), got {type(backend).__name__}"
            )
        if not isinstance(backend, BaseBackend):  # only the protocol: at most once, said once
            backend = ProtocolBackend(backend)
        self.backend: Backend = backend
        self.group = group
        self.keys = keys
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        default = max(backend.settings.prefetch, concurrency * PREFETCH_MULTIPLIER)
        self.prefetch = max(prefetch or default, concurrency)
        self._adaptive = prefetch is None
        self._pace = _Pace(min(self.prefetch, concurrency * PREFETCH_MULTIPLIER))
        self.shutdown_timeout = shutdown_timeout
        self.middleware = list(middleware)
        self.on_settled = on_settled
        self.stats = ConsumerStats()
        self._subscription: Subscription | None = None
        self._stopping = False
        self._stop_requested: asyncio.Event | None = None
        self._finished: asyncio.Event | None = None

    @property
    def running(self) -> bool:
        """Whether `run()` is in progress."""
        return self._finished is not None

    @property
    def ready(self) -> bool:
        """Whether `run()` has joined its group on the broker, still takes messages, and
        its last read from the broker worked: what a readiness probe asks."""
        subscription = self._subscription
        return subscription is not None and not self._stopping and subscription.ready

    def retry_delay_for(self, attempt: int) -> float:
        """Seconds to wait before attempt `attempt + 1`: doubling, capped, with 10% jitter."""
        base = min(self.max_retry_delay, self.retry_delay * 2 ** (attempt - 1))
        return float(base * random.uniform(0.9, 1.0))

    async def run(self, handler: Handler) -> None:
        """Consume until `shutdown()`; returns once in-flight handlers are done.

        A `shutdown()` that comes before this starts (say, right after `create_task`)
        makes it return at once. `concurrency` workers share one subscription: each takes
        the next delivery (from what was prefetched, or with one fetch for all of them)
        and runs the handler, so a message costs no task of its own.
        """
        if self.running:
            raise RuntimeError("this consumer is already running; call shutdown() first")
        finished = self._finished = asyncio.Event()
        self._stop_requested = asyncio.Event()
        if self._stopping:
            self._stop_requested.set()
        self.stats = ConsumerStats()
        self._pace = _Pace(self._pace.start)
        chain = _Chain(handler, self._middlewares)
        loop = asyncio.get_running_loop()
        in_hand: list[Delivery | None] = [None] * self.concurrency  # what each slot runs
        try:
            subscription = await self._join()
            if subscription is None:  # shut down before the broker answered
                return
            async with subscription:
                reading = asyncio.Lock()
                workers = [
                    loop.create_task(self._work(index, subscription, reading, chain, in_hand))
                    for index in range(self.concurrency)
                ]
                keeper = loop.create_task(self._keep_alive(subscription, in_hand))
                try:
                    await self._until_done(workers)
                finally:
                    for worker in workers:  # run() itself was cancelled: give messages back
                        worker.cancel()
                    await asyncio.gather(*workers, return_exceptions=True)
                    keeper.cancel()
                    await asyncio.gather(keeper, return_exceptions=True)
        finally:
            self._stopping = False
            self._stop_requested = None
            self._subscription = None
            self._finished = None
            finished.set()

    async def _join(self) -> Subscription | None:
        """The open subscription; while the broker is away, wait for it (a worker may start
        before its broker, or during a restart), retrying with backoff until shut down."""
        delay = _JOIN_RETRY_FIRST
        while not self._stopping:
            subscription = self.backend.subscribe(
                group=self.group, keys=self.keys, prefetch=self.prefetch
            )
            self._subscription = subscription
            try:
                await subscription.open()
            except BackendUnavailableError as exc:
                if isinstance(exc, AuthenticationError):  # waiting will not fix credentials
                    raise
                log.warning(
                    "cannot join group %r on %s yet (%s); retrying in %.1fs",
                    self.group,
                    ", ".join(subscription.keys),
                    exc,
                    delay,
                )
                assert self._stop_requested is not None
                with contextlib.suppress(asyncio.TimeoutError):
                    await bounded(self._stop_requested.wait(), delay)
                delay = min(_JOIN_RETRY_MAX, delay * 2)
                continue
            return subscription
        return None

    async def _work(
        self,
        index: int,
        subscription: Subscription,
        reading: asyncio.Lock,
        chain: _Chain,
        in_hand: list[Delivery | None],
    ) -> None:
        """One handler slot: take the next delivery, handle it and what follows, until stopped."""
        take = subscription.take_buffered
        while not self._stopping:
            delivery = take()
            if delivery is None:
                delivery = await self._fetch(subscription, reading)
                if delivery is None:
                    return
            await self._handle_run(delivery, take, chain, in_hand, index)

    async def _handle_run(
        self,
        delivery: Delivery | None,
        take: Callable[[], Delivery | None],
        chain: _Chain,
        in_hand: list[Delivery | None],
        index: int,
    ) -> None:
        """Handle `delivery`, then what is buffered, one after another, and settle each.

        This is the consumer's per-message path, so it is written out here rather than
        calling a coroutine per message; in a drain, a run is a whole fetch. Counts and
        timing are kept once a run, not once a message.
        """
        pace, stats, on_settled, handler = self._pace, self.stats, self.on_settled, chain.handler
        max_attempts, registry = self.max_attempts, _INSTALLED
        started = monotonic()
        handled = 0
        stats.in_flight += 1
        try:
            while delivery is not None:
                in_hand[index] = delivery
                handled += 1
                _current.set(delivery)
                try:
                    if chain.generation != registry.changes:  # middleware came or went
                        chain.rebuild()
                    call = chain.built  # None: no middleware between consumer and handler
                    if delivery.message.attempt > max_attempts:
                        await self._dead_letter_unhandled(delivery)
                    else:
                        try:
                            await (handler(delivery.payload) if call is None else call(delivery))
                        except Exception as exc:
                            await self._raised(delivery, exc)
                        else:
                            if delivery.ack_nowait():  # the usual case: queued for the next batch
                                stats.processed += 1
                            else:
                                await self._returned(delivery)
                except asyncio.CancelledError:
                    await self._give_back(delivery)
                    raise
                finally:
                    if on_settled is not None and delivery.settled:
                        _report(on_settled, delivery)
                delivery = None if self._stopping else take()
        finally:
            in_hand[index] = None
            stats.in_flight -= 1
            pace.busy += monotonic() - started
            pace.handled += handled

    async def _fetch(self, subscription: Subscription, reading: asyncio.Lock) -> Delivery | None:
        """The next delivery for a slot that found none buffered; None once stopped.

        One worker fetches for everyone; the others wait for the lock, then take what it
        fetched. With the default prefetch, each fetch first resizes the window to what
        the handlers finish in about `HELD_WORK` seconds.
        """
        async with reading:
            if self._stopping:  # shutdown() came while this one waited
                return None
            delivery = subscription.take_buffered()
            if delivery is not None:
                return delivery
            if self._adaptive:
                subscription.prefetch = self._pace.window(self.concurrency, self.prefetch)
            try:
                return await subscription.__anext__()
            except StopAsyncIteration:
                return None

    async def _until_done(self, workers: list[asyncio.Task[None]]) -> None:
        """Wait until every worker has stopped; after shutdown(), at most shutdown_timeout."""
        pending: set[asyncio.Future[object]] = {cast("asyncio.Future[object]", w) for w in workers}
        assert self._stop_requested is not None
        stop: asyncio.Future[object] = asyncio.ensure_future(self._stop_requested.wait())
        try:
            while pending:
                done, pending = await asyncio.wait(
                    {*pending, stop}, return_when=asyncio.FIRST_COMPLETED
                )
                pending.discard(stop)
                for task in done - {stop}:
                    error = None if task.cancelled() else task.exception()
                    if error is not None:
                        await self._stop_taking()
                        raise error
                if stop in done and pending:
                    await self._drain(pending)
                    return
        finally:
            stop.cancel()

    async def _keep_alive(self, subscription: Subscription, in_hand: list[Delivery | None]) -> None:
        """While a handler still runs, keep its message from being delivered to someone else.

        Every third of the redelivery timeout, the deliveries whose handlers were already
        running at the last look (so have run at least that long) are extended on the
        broker, with those fetched as long ago and still waiting for a free handler slot
        (a periodic timer: there is no event to wait for).
        """
        interval = max(0.05, self.backend.redelivery_timeout / 3)
        last_look: list[Delivery | None] = [None] * len(in_hand)
        while True:
            await asyncio.sleep(interval)
            running = [
                delivery
                for delivery, before in zip(in_hand, last_look, strict=True)
                if delivery is not None and delivery is before
            ]
            last_look[:] = in_hand
            now = monotonic()
            running += [
                delivery
                for delivery in subscription.buffered()
                if now - delivery.message.received_at >= interval
            ]
            if not running:
                continue
            try:
                await subscription.extend(running)
            except Exception as exc:
                log.warning(
                    "could not extend %d message(s) still being handled (%s); another member "
                    "may receive them after the redelivery timeout",
                    len(running),
                    exc,
                )

    async def shutdown(self, timeout: float | None = None) -> None:
        """Stop taking messages; wait for running handlers (up to the timeout) and for run()."""
        if timeout is not None:
            self.shutdown_timeout = timeout
        finished = self._finished
        await self._stop_taking()
        if finished is not None:
            await finished.wait()

    async def _stop_taking(self) -> None:
        """No worker takes another delivery; a fetch waiting for one ends."""
        self._stopping = True
        if self._stop_requested is not None:
            self._stop_requested.set()
        if self._subscription is not None:
            await self._subscription.stop()

    async def _drain(self, handlers: set[asyncio.Future[object]]) -> None:
        if not handlers:
            return
        _, pending = await asyncio.wait(set(handlers), timeout=self.shutdown_timeout)
        if pending:
            log.warning(
                "%d handler(s) still running after %.1fs; cancelling them, their messages "
                "will be delivered again",
                len(pending),
                self.shutdown_timeout,
            )
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _middlewares(self) -> list[Middleware]:
        """Every middleware around this consumer's handler, outermost first."""
        return [*installed(), *self.backend.middleware, *self.middleware]

    async def _give_back(self, delivery: Delivery) -> None:
        """The handler was cancelled (the consumer stops): its message goes back unless settled."""
        if not delivery.settled:
            await self._settle_safely(delivery.nack(0.0), delivery, "give back")

    async def _raised(self, delivery: Delivery, exc: Exception) -> None:
        """The handler raised: retry or dead-letter, unless it settled the delivery itself."""
        if delivery.settled:  # the handler decided itself, e.g. dead_letter(exc)
            self._count(delivery)
        else:
            await self._failed(delivery, exc)

    async def _returned(self, delivery: Delivery) -> None:
        """The handler returned and the ack could not be queued at once: wait for it."""
        if not delivery.settled:
            await self._settle_safely(delivery.ack(), delivery, "acknowledge")
        self._count(delivery)

    async def _dead_letter_unhandled(self, delivery: Delivery) -> None:
        """Dead-letter a message delivered more than max_attempts times, without handling it:
        a handler that never finishes (the worker dies on it) must not loop forever."""
        reason = f"delivered {delivery.attempt} times without finishing"
        log.error(
            "message %s of %r was %s (max_attempts %d) and goes to the dead-letter key "
            "unhandled: workers holding it died or were stopped before finishing it",
            delivery.id,
            delivery.key,
            reason,
            self.max_attempts,
        )
        await self._dead_letter(delivery, reason)

    def _count(self, delivery: Delivery) -> None:
        """Count a delivery the handler returned from (or settled itself) by its outcome."""
        if delivery.outcome == "ack":
            self.stats.processed += 1
        elif delivery.outcome == "nack":
            self.stats.retried += 1
        elif delivery.outcome == "dead-letter":
            self.stats.dead_lettered += 1

    async def _failed(self, delivery: Delivery, exc: Exception) -> None:
        if delivery.attempt >= self.max_attempts:
            log.error(
                "message %s of %r failed on attempt %d of %d and goes to the dead-letter key: %s",
                delivery.id,
                delivery.key,
                delivery.attempt,
                self.max_attempts,
                exc,
                exc_info=exc,
            )
            await self._dead_letter(delivery, exc)
            return
        delay = self.retry_delay_for(delivery.attempt)
        log.warning(
            "message %s of %r failed on attempt %d of %d (%s: %s); retrying in %.2fs",
            delivery.id,
            delivery.key,
            delivery.attempt,
            self.max_attempts,
            type(exc).__name__,
            exc,
            delay,
        )
        self.stats.retried += 1
        await self._settle_safely(delivery.nack(delay), delivery, "retry")

    async def _dead_letter(self, delivery: Delivery, reason: BaseException | str) -> None:
        if await self._settle_safely(delivery.dead_letter(reason), delivery, "dead-letter"):
            self.stats.dead_lettered += 1

    @staticmethod
    async def _settle_safely(action: Awaitable[None], delivery: Delivery, what: str) -> bool:
        """Settle a delivery; a broker failure is logged, and the message comes back later."""
        try:
            await action
        except Exception as exc:
            log.warning(
                "could not %s message %s of %r (%s); it will be delivered again",
                what,
                delivery.id,
                delivery.key,
                exc,
            )
            return False
        return True


class _Pace:
    """How long handlers take, for the default prefetch window; a recent average."""

    __slots__ = ("busy", "current", "handled", "start")

    def __init__(self, start: int) -> None:
        self.start = start
        self.current = start
        self.busy = 0.0
        self.handled = 0.0

    def window(self, concurrency: int, bound: int) -> int:
        """Messages to hold: one per slot plus about HELD_WORK seconds of handling, at most
        `bound`; older timings count half at each call, so the window follows the handlers."""
        if self.handled >= 1:
            mean = self.busy / self.handled
            ahead = bound if mean <= 0 else math.ceil(concurrency * HELD_WORK / mean)
            self.current = max(concurrency, min(bound, concurrency + ahead))
            self.busy /= 2
            self.handled /= 2
        return self.current


class _Chain:
    """The handler behind every middleware: the process's, the backend's, the consumer's.

    Built once, and again whenever the process's middleware changes (an instrumentation
    installed while the consumer runs): the consumer compares `generation` with the
    process's count of changes before each message. With no middleware at all, `built`
    is None and the consumer calls the handler directly.
    """

    __slots__ = ("_middlewares", "built", "generation", "handler")

    def __init__(self, handler: Handler, middlewares: Callable[[], list[Middleware]]) -> None:
        self.handler = handler
        self._middlewares = middlewares
        self.generation = -1
        self.built: HandleNext | None = None

    def rebuild(self) -> None:
        """Build the chain from the middleware in place now."""
        middlewares = self._middlewares()
        self.built = chain_handle(middlewares, self._call) if middlewares else None
        self.generation = _INSTALLED.changes

    async def _call(self, delivery: Delivery) -> None:
        await self.handler(delivery.payload)


def _report(on_settled: Callable[[Delivery], object], delivery: Delivery) -> None:
    """Tell `on_settled` about a settled delivery; what it raises is logged, never raised."""
    try:
        on_settled(delivery)
    except Exception as exc:
        log.warning(
            "on_settled failed for message %s (%s: %s)", delivery.id, type(exc).__name__, exc
        )
