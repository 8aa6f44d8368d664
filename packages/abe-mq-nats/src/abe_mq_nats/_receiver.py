"""Pull consumption: batched pull requests, none of which holds messages back from others.

One receiver serves one group over some keys; each key is a durable pull consumer. The
receiver subscribes one inbox and sends pull requests to each consumer, with a reply
subject per request so the server's status answers (404 no messages, 408 expired,
409 ...) say which request ended. Deliveries are matched to their consumer through
the `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>...` reply subject, which also
gives the attempt (`delivered`) and how many messages the consumer still holds.

A request for many messages that waited on the server would keep taking messages after
`fetch()` returned, while the caller is busy, and hold them back from the other
members. So requests come in two shapes:

* when the consumer may hold messages: a `no_wait` request for the whole share of the
  credit; the server sends what it has, then ends the request at once (one batch);
* otherwise: a request for one message that waits on the server (a few seconds at
  most, less than half the redelivery timeout). It ends with the first message, which
  says whether more are waiting; the next fetch takes those in one batch. It may
  outlive a fetch that timed out, and is simply waited for by the next one.

Several keys each get their own request at the same time (the credit split between
them), so an idle key never delays a busy one. The sum of what is buffered and what the
open requests may still bring never exceeds the credit `fetch()` was given.

A server restart loses the requests it held. The receiver learns it from the
connection (`epoch` changes on disconnect and reconnect) or from a request that gets
no answer in time; it then forgets its requests, re-creates its stream and consumer
if they are gone, and asks again. nats-py resubscribes the inbox by itself.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from abe.backends.message_queue.base.codec import IncomingMessage
from abe.backends.message_queue.base.receiver import Receiver
from abe.errors import BackendUnavailableError
from abe_mq_nats._errors import safe_text

if TYPE_CHECKING:
    from abe_mq_nats._backend import NatsBackend

__all__ = ["Binding", "NatsReceiver"]

log = logging.getLogger("abe.nats")

_EMPTY: Mapping[str, str] = MappingProxyType({})
_ACK = b"+ACK"
_NAK = b"-NAK"
_PROGRESS = b"+WPI"
_LONGEST_WAIT = 5.0
"""Longest a single-message request waits on the server (then a new one is sent)."""
_LATE_STATUS = 1.0
"""How long after its expiry a waiting request's 408 may still arrive before it counts as lost."""


@dataclass(eq=False)
class Binding:
    """One key of the receiver: the stream and durable consumer that serve it."""

    key: str
    stream: str
    consumer: str
    pull: _Pull | None = None
    maybe_pending: bool = True
    """Whether the consumer may hold messages right now (then: one batched no_wait request)."""
    needs_setup: bool = False

    @property
    def next_subject(self) -> str:
        return f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.consumer}"


@dataclass(eq=False)
class _Pull:
    """A pull request the server has not finished answering."""

    token: str
    binding: Binding
    remaining: int
    no_wait: bool
    lost_at: float
    """Loop time after which a request still unanswered is taken as lost."""


class NatsReceiver(Receiver):
    """Reads `group` on the keys of `bindings` through durable pull consumers."""

    def __init__(self, backend: NatsBackend, group: str, bindings: Sequence[Binding]) -> None:
        self._backend = backend
        self._connection = backend._connection
        self._group = group
        self._bindings = list(bindings)
        self._by_consumer = {(b.stream, b.consumer): b for b in self._bindings}
        self._pulls: dict[str, _Pull] = {}
        self._buffer: deque[IncomingMessage] = deque()
        self._client: NatsClient | None = None
        self._subscription: NatsSubscription | None = None
        self._inbox = ""
        self._epoch = -1
        self._counter = 0
        self._turn = 0
        self._waiter: asyncio.Future[None] | None = None
        self._woken = False
        self._closed = False
        settings = backend.settings
        self._longest_wait = max(0.05, min(settings.redelivery_timeout / 2, _LONGEST_WAIT))
        self._answer_grace = max(1.0, min(settings.operation_timeout, 5.0))
        self._random = random.Random()
        self._connection.watch(self)

    # ---- the Receiver interface -----------------------------------------------------------

    async def fetch(self, max_messages: int, timeout: float) -> Sequence[IncomingMessage]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        buffer = self._buffer
        while not self._closed:
            self._woken = False
            client = self._client
            if client is None or self._epoch != self._connection.epoch or not client.is_connected:
                await self._attach(deadline)
            now = loop.time()
            if self._pulls:
                self._expire(now)
            if buffer and (len(buffer) >= max_messages or not self._draining()):
                return self._take(max_messages)
            if any(binding.needs_setup for binding in self._bindings):
                await self._setup(deadline)
            await self._request(max_messages, now)
            now = loop.time()
            if now >= deadline:
                return self._take(max_messages)
            wake_at = deadline
            for pull in self._pulls.values():
                wake_at = min(wake_at, pull.lost_at)
            await self._sleep(wake_at)
        return []

    async def ack(self, messages: Sequence[IncomingMessage]) -> None:
        publish = self._live_client().publish
        for message in messages:
            await publish(message.handle, _ACK)

    async def nack(self, message: IncomingMessage, delay: float) -> None:
        payload = _NAK if delay <= 0 else b'-NAK {"delay":%d}' % int(delay * 1e9)
        await self._live_client().publish(message.handle, payload)

    async def extend(self, messages: Sequence[IncomingMessage]) -> None:
        publish = self._live_client().publish
        for message in messages:
            await publish(message.handle, _PROGRESS)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake()
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            try:
                await subscription.unsubscribe()
            except Exception as exc:  # the connection may be gone already
                log.debug("nats: unsubscribing %s: %s", self._inbox, safe_text(exc))
        self._pulls.clear()
        unread = list(self._buffer)
        self._buffer.clear()
        client = self._connection.client
        if unread and client is not None and not client.is_closed:
            try:
                for message in unread:
                    await client.publish(message.handle, _NAK)
            except Exception as exc:
                log.info(
                    "nats: %d fetched message(s) will come back after the redelivery timeout (%s)",
                    len(unread),
                    safe_text(exc),
                )

    # ---- what the connection tells us ---------------------------------------------------

    def connection_changed(self) -> None:
        """The connection dropped, came back or was replaced: wake a waiting fetch."""
        self._wake()

    # ---- internals --------------------------------------------------------------------------

    def _live_client(self) -> NatsClient:
        client = self._connection.client
        if client is None:
            raise BackendUnavailableError("nats: not connected; the message will come back later")
        return client

    def _wake(self) -> None:
        self._woken = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _sleep(self, until: float) -> None:
        """Wait for a delivery, a status, a connection change, or `until` (loop time)."""
        if self._woken:
            return
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._waiter = waiter
        timer = loop.call_at(until, self._wake)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    async def _attach(self, deadline: float) -> None:
        """Subscribe the inbox on the live client; forget requests a lost connection held."""
        client = await self._connection.ready(deadline)
        first = self._client is None
        if client is not self._client:
            self._subscription = None
            self._inbox = client.new_inbox()
            self._subscription = await client.subscribe(f"{self._inbox}.*", cb=self._on_message)
            self._client = client
        epoch = self._connection.epoch
        if epoch != self._epoch:
            self._epoch = epoch
            if not first:
                self._forget_requests(setup=True)

    def _forget_requests(self, *, setup: bool) -> None:
        for pull in list(self._pulls.values()):
            self._finish(pull)
        if setup:
            for binding in self._bindings:
                binding.needs_setup = True

    async def _setup(self, deadline: float) -> None:
        """Find or re-create the stream and consumer of each key that may have lost them."""
        backend = self._backend
        for binding in self._bindings:
            if not binding.needs_setup:
                continue
            stream = await backend._stream_for(binding.key, deadline, refresh=True)
            consumer = await backend._consumer_for(stream, binding.key, self._group)
            self._by_consumer.pop((binding.stream, binding.consumer), None)
            binding.stream, binding.consumer = stream.name, consumer
            self._by_consumer[(binding.stream, binding.consumer)] = binding
            binding.needs_setup = False
            binding.maybe_pending = True

    def _draining(self) -> bool:
        """Whether a no_wait request is still sending its batch (worth waiting a moment for)."""
        return any(pull.no_wait for pull in self._pulls.values())

    def _take(self, count: int) -> list[IncomingMessage]:
        buffer = self._buffer
        if len(buffer) <= count:
            taken = list(buffer)
            buffer.clear()
            return taken
        return [buffer.popleft() for _ in range(count)]

    def _expire(self, now: float) -> None:
        for pull in list(self._pulls.values()):
            if pull.lost_at <= now:
                log.debug(
                    "nats: no answer to a pull request on %r; checking its consumer",
                    pull.binding.key,
                )
                self._finish(pull)
                pull.binding.needs_setup = True

    def _finish(self, pull: _Pull) -> None:
        self._pulls.pop(pull.token, None)
        if pull.binding.pull is pull:
            pull.binding.pull = None

    async def _request(self, max_messages: int, now: float) -> None:
        """Send pull requests for the credit left, split between the keys without one."""
        budget = max_messages - len(self._buffer)
        for pull in self._pulls.values():
            budget -= pull.remaining
        if budget <= 0:
            return
        idle = [b for b in self._bindings if b.pull is None and not b.needs_setup]
        if not idle:
            return
        if len(idle) > 1:
            shift = self._turn % len(idle)
            idle = idle[shift:] + idle[:shift]
            self._turn += 1
            idle = idle[:budget]
        share, extra = divmod(budget, len(idle))
        client = self._client
        assert client is not None
        for index, binding in enumerate(idle):
            if binding.maybe_pending:
                batch = share + (1 if index < extra else 0)
                request = b'{"batch":%d,"no_wait":true}' % batch
                lost_at = now + self._answer_grace
            else:
                # Random length: nats-server 2.9 loses a redelivery that falls due in the
                # very instant a waiting request expires, so expiries must not fall into
                # step with the redelivery timeout.
                wait = self._longest_wait * self._random.uniform(0.5, 1.0)
                batch = 1
                request = b'{"batch":1,"expires":%d}' % int(wait * 1e9)
                lost_at = now + wait + _LATE_STATUS
            self._counter += 1
            token = str(self._counter)
            pull = _Pull(token, binding, batch, binding.maybe_pending, lost_at)
            self._pulls[token] = pull
            binding.pull = pull
            await client.publish(binding.next_subject, request, reply=f"{self._inbox}.{token}")

    async def _on_message(self, msg: Msg) -> None:
        reply = msg.reply
        if reply:
            self._on_delivery(msg, reply)
        else:
            self._on_status(msg)

    def _on_delivery(self, msg: Msg, reply: str) -> None:
        tokens = reply.split(".")
        if len(tokens) == 9:  # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>
            stream, consumer, delivered, sequence, pending = (
                tokens[2],
                tokens[3],
                tokens[4],
                tokens[5],
                tokens[8],
            )
        elif len(tokens) >= 11:  # with <domain>.<account hash> after $JS.ACK
            stream, consumer, delivered, sequence, pending = (
                tokens[4],
                tokens[5],
                tokens[6],
                tokens[7],
                tokens[10],
            )
        else:
            log.debug("nats: ignoring a message with reply %r (not a JetStream delivery)", reply)
            return
        binding = self._by_consumer.get((stream, consumer))
        if binding is None or self._closed:
            # Arrived after close (or for a consumer we no longer read): give it back now.
            client = self._connection.client
            if client is not None and client.is_connected:
                asyncio.get_running_loop().create_task(_give_back(client, reply))
            return
        pull = binding.pull
        if pull is not None:
            pull.remaining -= 1
            if pull.remaining <= 0:
                self._finish(pull)
        binding.maybe_pending = pending != "0"
        self._buffer.append(
            IncomingMessage(
                binding.key,
                msg.data,
                msg.headers or _EMPTY,
                int(delivered),
                f"{stream}:{sequence}",
                reply,
            )
        )
        self._wake()

    def _on_status(self, msg: Msg) -> None:
        token = msg.subject.rpartition(".")[2]
        pull = self._pulls.get(token)
        if pull is None:
            return
        headers = msg.headers or _EMPTY
        status = headers.get("Status")
        if status == "100":  # idle heartbeat
            return
        self._finish(pull)
        binding = pull.binding
        if status in ("404", "408"):
            binding.maybe_pending = False
        elif status == "409":
            description = str(headers.get("Description", "")).lower()
            if "deleted" in description or "push" in description:
                binding.needs_setup = True
            log.debug("nats: pull on %r ended: 409 %s", binding.key, description)
        else:
            binding.needs_setup = True
            log.debug("nats: pull on %r ended with status %s", binding.key, status)
        self._wake()


async def _give_back(client: NatsClient, reply: str) -> None:
    try:
        await client.publish(reply, _NAK)
    except Exception as exc:
        log.debug("nats: giving back a late message: %s", safe_text(exc))
