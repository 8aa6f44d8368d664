"""A live subscription: deliveries for one group over some keys, with a bound on what it holds.

It asks the provider's receiver for at most `prefetch` minus the deliveries not yet
settled, so a slow consumer never piles messages up in memory. A body is decoded when
its delivery is handed out, not when it is fetched: only the payloads in the caller's
hands exist at once, each decoded while its body is fresh in the cache. Bodies that are
not JSON objects go to the dead-letter key when their turn comes and never reach the
caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Sequence
from time import monotonic
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from abe.backends.message_queue.base.acks import AckBatcher
from abe.backends.message_queue.base.codec import IncomingMessage, UndecodableBody, decode_body
from abe.backends.message_queue.base.deadlines import bounded
from abe.backends.message_queue.base.delivery import Delivery
from abe.backends.message_queue.base.receiver import Receiver
from abe.errors import AuthenticationError, BackendUnavailableError, DeliveryStateError
from abe.types import MessageQueuePayload

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["Subscription", "SubscriptionHost"]

T = TypeVar("T")

log = logging.getLogger("abe.subscription")

_RETRY_FIRST = 0.1
_RETRY_MAX = 5.0
_RELEASE_TIMEOUT = 5.0
_TAKING = frozenset({"open", "stopped"})  # states in which buffered deliveries are handed out


class SubscriptionHost(Protocol):
    """What a subscription needs from the backend that made it (BaseBackend provides it)."""

    @property
    def name(self) -> str: ...

    @property
    def max_payload_bytes(self) -> int: ...

    @property
    def redelivery_timeout(self) -> float: ...

    async def _open_receiver_for(self, subscription: Subscription) -> Receiver: ...

    async def _guard(
        self, awaitable: Awaitable[T], action: str, *, scale: int = 1, waits: float = 0.0
    ) -> T: ...

    async def _dead_letter(
        self, message: IncomingMessage, reason: str, *, wrap_body: bool = False
    ) -> None: ...

    def _forget(self, subscription: Subscription) -> None: ...


class Subscription:
    """Deliveries for `group` over `keys`: an async iterator and an async context manager.

    Iterating opens it; `aclose()` (or leaving `async with`) flushes the acknowledgements
    and gives back every delivery that was fetched but never handed out.
    """

    def __init__(
        self,
        backend: SubscriptionHost,
        group: str,
        keys: tuple[str, ...],
        prefetch: int,
        poll_interval: float,
    ) -> None:
        self.group = group
        self.keys = keys
        self.prefetch = prefetch
        self._backend = backend
        self._max_bytes = backend.max_payload_bytes  # read once: decoding runs per message
        self._poll_interval = poll_interval
        self._refresh_after = backend.redelivery_timeout / 3
        self._receiver: Receiver | None = None
        self._buffer: deque[IncomingMessage] = deque()  # a Delivery is made at hand-out
        self._viewed: dict[int, Delivery] = {}  # by id(message): what buffered() showed
        self._unsettled = 0
        self._state = "new"
        self._credit: asyncio.Future[None] | None = None
        self._fetch: asyncio.Task[Sequence[IncomingMessage]] | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._read_failures = 0
        self._refused: tuple[IncomingMessage, str] | None = None  # the last undecodable body
        self._acks: AckBatcher[IncomingMessage] = AckBatcher(self._flush_acks, max_batch=500)

    @property
    def backend_name(self) -> str:
        """The name of the backend this subscription reads from."""
        return self._backend.name

    @property
    def held(self) -> int:
        """Deliveries fetched from the broker and not yet settled (buffered ones included)."""
        return self._unsettled

    @property
    def stopped(self) -> bool:
        """Whether the subscription no longer fetches (after `stop()` or `aclose()`)."""
        return self._state in ("stopped", "closed")

    @property
    def ready(self) -> bool:
        """Joined on the broker, still fetching, and the last read from the broker worked.

        False while opening, after `stop()`, and from a failed read until one succeeds
        (the subscription keeps retrying meanwhile): what a readiness probe asks.
        """
        return self._state == "open" and self._read_failures == 0

    async def open(self) -> None:
        """Join the group on the broker now, rather than on the first iteration."""
        await self._open()

    async def __aenter__(self) -> Subscription:
        await self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> Subscription:
        return self

    async def _open(self) -> None:
        if self._state != "new":
            return
        self._state = "opening"
        self._stopped = asyncio.get_running_loop().create_future()
        try:
            self._receiver = receiver = await self._backend._open_receiver_for(self)
            self._acks = AckBatcher(
                self._flush_acks, max_batch=receiver.ack_batch_size, linger=receiver.ack_linger
            )
        except Exception:
            closed_meanwhile = self._state != "opening"
            self._state = "closed"
            self._backend._forget(self)
            if closed_meanwhile:  # stop() or the backend's close() came first: just end
                return
            raise
        except BaseException:
            self._state = "closed"
            self._backend._forget(self)
            raise
        if self._state == "opening":
            self._state = "open"
        else:  # stopped while the receiver was being opened
            await self._receiver.close()

    async def __anext__(self) -> Delivery:
        delivery = self.take_buffered()  # the usual case: fetched already, fresh and decodable
        return delivery if delivery is not None else await self._next()

    async def _next(self) -> Delivery:
        """`__anext__` when the buffer is empty or its head is old: open, extend or fetch."""
        if self._state == "new":
            await self._open()
        while True:
            if self._buffer:
                if monotonic() - self._buffer[0].received_at > self._refresh_after:
                    await self._extend_buffered()
                if not self._buffer:  # stop() gave the buffer back meanwhile
                    continue
                message = self._buffer.popleft()
                payload = self._payload_or_none(message)
                if payload is not None:
                    return self._hand_out(message, payload)
                await self._dead_letter_refused(message)
                continue
            if self._state != "open":
                raise StopAsyncIteration
            credit = self.prefetch - self._unsettled
            if credit <= 0:
                await self._wait_for_credit()
                continue
            try:
                await self._fill(credit)
                self._read_failures = 0
            except (BackendUnavailableError, OSError, asyncio.TimeoutError) as exc:
                if isinstance(exc, AuthenticationError):
                    raise
                self._read_failures += 1
                delay = min(_RETRY_MAX, _RETRY_FIRST * 2 ** (self._read_failures - 1))
                log.warning(
                    "%s: reading %s for group %r failed (%s); retrying in %.1fs",
                    self._backend.name,
                    ", ".join(self.keys),
                    self.group,
                    exc,
                    delay,
                )
                await self._pause(delay)

    async def _fill(self, credit: int) -> None:
        fetch = asyncio.get_running_loop().create_task(self._fetch_batch(credit))
        self._fetch = fetch
        try:
            messages = await fetch
        except asyncio.CancelledError:
            if fetch.done() and not fetch.cancelled() and fetch.exception() is None:
                # cancelled just as the fetch returned: nobody will see these, give them back
                await asyncio.shield(self._give_back_messages(fetch.result()))
            if self._state == "open" or _cancelled_from_outside():
                raise
            return  # stop() cancelled the fetch: __anext__ ends the iteration
        finally:
            self._fetch = None
        if self._state != "open":  # stopped while the fetch was returning: give them back
            await self._give_back_messages(messages)
            return
        self._buffer.extend(messages)
        self._unsettled += len(messages)

    def _decode(self, message: IncomingMessage) -> MessageQueuePayload:
        """The payload of `message`'s body, or UndecodableBody (what Delivery.payload calls)."""
        return decode_body(message.body, self._max_bytes)

    def _payload_or_none(self, message: IncomingMessage) -> MessageQueuePayload | None:
        """`message`'s payload, or None once its body is found undecodable (`_refused` says why).

        A body refused is remembered, so that asking again on its way to `__anext__`,
        which dead-letters it, does not decode it twice.
        """
        refused = self._refused
        if refused is not None and refused[0] is message:
            return None
        try:
            return decode_body(message.body, self._max_bytes)
        except Exception as exc:
            self._refuse(message, exc)
            return None

    def _refuse(self, message: IncomingMessage, exc: Exception) -> None:
        """Remember that `message`'s body could not be decoded, and why, for `__anext__`."""
        if isinstance(exc, UndecodableBody):
            self._refused = (message, f"undecodable body: {exc}")
        else:  # never expected; a body must not stop the consumer
            self._refused = (message, f"undecodable body: {type(exc).__name__}: {exc}")

    def _hand_out(self, message: IncomingMessage, payload: MessageQueuePayload) -> Delivery:
        """The delivery of a message taken from the buffer (the one `buffered()` showed, if so)."""
        if (shown := self._viewed.pop(id(message), None)) is not None:
            shown._payload = payload  # (it holds the message: its id cannot have been reused)
            return shown
        return Delivery(message, payload, self)

    async def _dead_letter_refused(self, message: IncomingMessage) -> None:
        """Dead-letter a message taken from the buffer whose body `_payload_or_none` refused."""
        assert self._refused is not None
        reason, self._refused = self._refused[1], None
        self._viewed.pop(id(message), None)
        self._release_credit()
        await self._dead_letter_undecodable(message, reason)

    async def _dead_letter_undecodable(self, message: IncomingMessage, reason: str) -> None:
        """Move a body that cannot become a payload to the dead-letter key and acknowledge it."""
        log.warning(
            "%s: message %s on %r cannot be delivered (%s); moving it to the dead-letter key",
            self._backend.name,
            message.broker_id,
            message.key,
            reason,
        )
        try:
            await self._backend._dead_letter(message, reason, wrap_body=True)
            await self._acks.add(message)
        except Exception as exc:
            log.warning("dead-lettering %s failed (%s); it will come back", message.broker_id, exc)

    async def _fetch_batch(self, credit: int) -> Sequence[IncomingMessage]:
        assert self._receiver is not None
        batch = self._receiver.fetch(credit, self._poll_interval)
        return await self._backend._guard(batch, "fetch", waits=self._poll_interval)

    async def _wait_for_credit(self) -> None:
        self._credit = asyncio.get_running_loop().create_future()
        try:
            await self._credit
        finally:
            self._credit = None

    async def _pause(self, seconds: float) -> None:
        assert self._stopped is not None
        with contextlib.suppress(asyncio.TimeoutError):
            await bounded(asyncio.shield(self._stopped), seconds)

    def _release_credit(self) -> None:
        self._unsettled -= 1
        if self._credit is not None and not self._credit.done():
            self._credit.set_result(None)

    def _check_settleable(self, delivery: Delivery) -> Receiver:
        if self._state == "closed" or self._receiver is None:
            raise DeliveryStateError(
                f"message {delivery.id!r} of {delivery.key!r} cannot be settled: its "
                f"subscription is closed; it will be delivered again"
            )
        return self._receiver

    def _ack_message_nowait(self, message: IncomingMessage) -> bool:
        """Queue `message`'s ack without waiting; False when it cannot be now (`ack()` then)."""
        if self._state == "closed" or self._receiver is None:
            return False
        if not self._acks.add_nowait(message):
            return False
        self._unsettled -= 1  # _release_credit, inlined: this runs once per message
        if self._credit is not None and not self._credit.done():
            self._credit.set_result(None)
        return True

    async def _settle_ack(self, delivery: Delivery) -> None:
        self._check_settleable(delivery)
        self._release_credit()
        await self._acks.add(delivery.message)

    async def _settle_nack(self, delivery: Delivery, delay: float) -> None:
        receiver = self._check_settleable(delivery)
        self._release_credit()
        await self._backend._guard(receiver.nack(delivery.message, delay), "nack")
        if receiver.keeps_order(delivery.key):  # what was fetched after it must not overtake it
            later = [queued for queued in self._buffer if queued.key == delivery.key]
            if later:
                self._buffer = deque(
                    queued for queued in self._buffer if queued.key != delivery.key
                )
                self._unsettled -= len(later)
                for message in later:
                    self._viewed.pop(id(message), None)
                await self._give_back_messages(later)

    async def _settle_dead_letter(self, delivery: Delivery, reason: str) -> None:
        self._check_settleable(delivery)
        self._release_credit()
        await self._backend._dead_letter(delivery.message, reason)
        await self._acks.add(delivery.message)

    def take_buffered(self) -> Delivery | None:
        """The next delivery already fetched, without waiting; None when there is none.

        For several readers of one subscription: they take what is buffered without a
        round trip and leave fetching to `__anext__` (one caller at a time).
        """
        payload = self._head_payload()
        if payload is None:
            return None
        head = self._buffer.popleft()
        return self._hand_out(head, payload) if self._viewed else Delivery(head, payload, self)

    def _take_payload(self) -> tuple[IncomingMessage, MessageQueuePayload] | None:
        """The next buffered message and its payload, without waiting; None when there is none.

        `take_buffered` without the Delivery, for `consume()`, which hands out payloads
        (its subscription is its own: `buffered()` never shows one of them).
        """
        payload = self._head_payload()
        return None if payload is None else (self._buffer.popleft(), payload)

    def _head_payload(self) -> MessageQueuePayload | None:
        """The payload of the buffer's head if it can be handed out now, without waiting."""
        buffer = self._buffer
        if not buffer or self._state not in _TAKING:
            return None
        head = buffer[0]
        if monotonic() - head.received_at > self._refresh_after:
            return None  # old enough to extend first: __anext__ does that
        refused = self._refused  # `_payload_or_none`, inline: this runs once per message
        if refused is not None and refused[0] is head:
            return None
        try:
            return decode_body(head.body, self._max_bytes)
        except Exception as exc:
            self._refuse(head, exc)
            return None  # for the dead-letter key, which __anext__ does

    def buffered(self) -> list[Delivery]:
        """Deliveries fetched and waiting to be handed out (not yet seen by the application).

        Their bodies are decoded when they are handed out: reading `payload` here decodes
        one early, and raises UndecodableBody for a body that is headed for the dead letter.
        Each is the very delivery that will be handed out.
        """
        viewed = self._viewed
        for message in self._buffer:
            if id(message) not in viewed:
                viewed[id(message)] = Delivery(message, None, self)
        return [viewed[id(message)] for message in self._buffer]

    async def _extend_buffered(self) -> None:
        """Keep messages waiting in the buffer from being redelivered to other members."""
        try:
            await self._extend_messages(list(self._buffer))
        except Exception as exc:
            log.info("could not extend %d buffered message(s): %s", len(self._buffer), exc)
        now = monotonic()
        for message in self._buffer:
            message.received_at = now

    async def extend(self, deliveries: Sequence[Delivery]) -> None:
        """Tell the broker these deliveries are still being worked on: do not redeliver them yet."""
        await self._extend_messages(
            [delivery.message for delivery in deliveries if not delivery.settled]
        )

    async def _extend_messages(self, messages: Sequence[IncomingMessage]) -> None:
        if messages and self._receiver is not None and self._state != "closed":
            await self._backend._guard(self._receiver.extend(messages), "extend")

    async def _flush_acks(self, messages: Sequence[IncomingMessage]) -> None:
        assert self._receiver is not None
        await self._backend._guard(self._receiver.ack(messages), "ack")

    async def stop(self) -> None:
        """Stop fetching; a pending `__anext__` ends. Settling handed-out deliveries still works.

        Deliveries fetched but never handed out are given back for redelivery at once.
        """
        if self._state in ("stopped", "closed"):
            return
        opening = self._state == "opening"
        self._state = "stopped"
        # A subscription left waiting in an event loop that has since closed has nothing
        # to wake there: touching that loop's futures would raise.
        if _alive(self._stopped):
            self._stopped.set_result(None)  # type: ignore[union-attr]
        if _alive(self._fetch):
            self._fetch.cancel()  # type: ignore[union-attr]
        if _alive(self._credit):
            self._credit.set_result(None)  # type: ignore[union-attr]
        if opening or self._receiver is None:
            return
        await self._give_back_buffer()

    async def _give_back_buffer(self) -> None:
        """Give back what was fetched and never handed out; a body that can never become a
        payload goes to the dead-letter key instead, as `__anext__` would have sent it."""
        buffered = list(self._buffer)
        self._buffer.clear()
        self._viewed.clear()
        self._unsettled -= len(buffered)
        unread: list[IncomingMessage] = []
        poison: list[tuple[IncomingMessage, str]] = []
        for message in buffered:
            if self._payload_or_none(message) is not None:
                unread.append(message)
            else:
                assert self._refused is not None
                poison.append((message, self._refused[1]))
        self._refused = None
        await self._give_back_messages(unread)
        for message, reason in poison:
            await self._dead_letter_undecodable(message, reason)

    async def _give_back_messages(self, messages: Sequence[IncomingMessage]) -> None:
        receiver = self._receiver
        if not messages or receiver is None:
            return
        try:
            await bounded(receiver.release(messages), _RELEASE_TIMEOUT)
        except Exception as exc:
            log.info(
                "%d unread message(s) will come back after the redelivery timeout (%s)",
                len(messages),
                exc,
            )

    async def aclose(self) -> None:
        """Stop, flush acknowledgements, release the receiver. Safe to call more than once."""
        if self._state == "closed":
            return
        await self.stop()
        try:
            if self._receiver is not None:
                await self._give_back_buffer()
                await self._acks.drain()
                await self._receiver.close()
        finally:
            self._receiver = None
            self._state = "closed"
            self._backend._forget(self)

    async def _nack_unfinished(self, delivery: Delivery) -> None:
        """Give back a handed-out delivery whose processing did not finish (best effort)."""
        if delivery.settled or self._receiver is None:
            return
        try:
            await bounded(delivery.nack(0.0), _RELEASE_TIMEOUT)
        except Exception as exc:
            log.info(
                "message %s will come back after the redelivery timeout (%s)", delivery.id, exc
            )

    def __repr__(self) -> str:
        return (
            f"Subscription(group={self.group!r}, keys={list(self.keys)!r}, "
            f"held={self._unsettled}, state={self._state!r})"
        )


def _alive(waiter: asyncio.Future[Any] | None) -> bool:
    """Whether `waiter` is pending in a loop that can still run its callbacks."""
    return waiter is not None and not waiter.done() and not waiter.get_loop().is_closed()


def _cancelled_from_outside() -> bool:
    """Whether the running task itself is being cancelled (Python 3.11+ can tell)."""
    cancelling = getattr(asyncio.current_task(), "cancelling", None)
    return cancelling is not None and cancelling() > 0
