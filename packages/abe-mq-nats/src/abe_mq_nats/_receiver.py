"""Pull consumption: batched pull requests, none of which holds messages back from others.

One receiver serves one group over some keys, each a durable pull consumer. It subscribes
one inbox and sends pull requests with a reply subject each, so the server's status
answers (404 no messages, 408 expired, 409 ...) say which request ended; a delivery's
`$JS.ACK.<stream>.<consumer>.<delivered>.<seq>...` reply names its consumer, its attempt
and how many messages the consumer still holds. A request that waited on the server would
keep taking messages after `fetch()` returned, holding them back from other members, so:

* when the consumer may hold messages: a `no_wait` request for the whole share of the
  credit; the server sends what it has, then ends the request at once;
* otherwise: a request for one message that waits on the server (a few seconds at most,
  under half the redelivery timeout); its message says whether more are waiting.

Each key gets its own request (the credit split between them), so an idle key never
delays a busy one; what is buffered plus what open requests may bring never exceeds the
credit. A lost connection (a new `epoch`) or a request that gets no answer in time makes
the receiver forget its requests, re-create its stream and consumer if gone, and ask again.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription

from abe.errors import BackendUnavailableError
from abe.provider import Deadline, IncomingMessage, Receiver, wait_event
from abe_mq_nats._client import JetStream

__all__ = ["Binding", "NatsReceiver"]

log = logging.getLogger("abe.nats")

_EMPTY: Mapping[str, str] = MappingProxyType({})
_ACK, _NAK, _PROGRESS = b"+ACK", b"-NAK", b"+WPI"
_LONGEST_WAIT = 5.0
"""Longest a single-message request waits on the server (then a new one is sent)."""
_LATE_STATUS = 1.0
"""How long after its expiry a waiting request's 408 may still arrive before it counts as lost."""


@dataclass(eq=False)
class Binding:
    """One key of the receiver: its stream and durable consumer, and its open pull request."""

    key: str
    stream: str = ""
    consumer: str = ""
    needs_setup: bool = True
    maybe_pending: bool = True
    """Whether the consumer may hold messages right now (then: one batched no_wait request)."""
    token: str | None = None
    """The reply token of the pull request the server has not finished answering, if any."""
    remaining: int = 0
    no_wait: bool = False
    lost_at: float = 0.0
    """Loop time after which the request, still unanswered, is taken as lost."""


class NatsReceiver(Receiver):
    """Reads `group` on `keys` through durable pull consumers; `setup()` makes them."""

    def __init__(self, jetstream: JetStream, group: str, keys: Sequence[str]) -> None:
        self._jetstream, self._group = jetstream, group
        self._bindings = [Binding(key) for key in keys]
        self._by_consumer: dict[tuple[str, str], Binding] = {}
        self._pulls: dict[str, Binding] = {}
        self._buffer: deque[IncomingMessage] = deque()
        self._client: NatsClient | None = None
        self._subscription: NatsSubscription | None = None
        self._inbox = ""
        self._epoch = self._counter = self._turn = 0
        self._closed = False
        self._wakeup = asyncio.Event()
        jetstream.wakers.add(self._wakeup)
        settings = jetstream.settings
        self._longest_wait = max(0.05, min(settings.redelivery_timeout / 2, _LONGEST_WAIT))
        self._answer_grace = max(1.0, min(settings.operation_timeout, 5.0))
        self._random = random.Random()

    async def setup(self, deadline: Deadline) -> None:
        """Find (or re-create) the stream and consumer of each key that may lack them."""
        for binding in self._bindings:
            if not binding.needs_setup:
                continue
            refresh = bool(binding.stream)  # set up before: look again, it may have gone
            stream = await self._jetstream.stream_for(binding.key, deadline, refresh=refresh)
            consumer = await self._jetstream.consumer_for(stream, binding.key, self._group)
            self._by_consumer.pop((binding.stream, binding.consumer), None)
            binding.stream, binding.consumer = stream.name, consumer
            self._by_consumer[(stream.name, consumer)] = binding
            binding.needs_setup, binding.maybe_pending = False, True

    # ---- the Receiver interface -----------------------------------------------------------

    async def fetch(self, max_messages: int, timeout: float) -> Sequence[IncomingMessage]:
        loop = asyncio.get_running_loop()
        deadline = Deadline(timeout)
        while not self._closed:
            self._wakeup.clear()
            client = self._client
            if client is None or self._epoch != self._jetstream.epoch or not client.is_connected:
                await self._attach(deadline)
            for binding in [b for b in self._pulls.values() if b.lost_at <= loop.time()]:
                log.debug("nats: no answer to a pull request on %r; checking it", binding.key)
                self._finish(binding)
                binding.needs_setup = True
            draining = any(binding.no_wait for binding in self._pulls.values())
            if self._buffer and (len(self._buffer) >= max_messages or not draining):
                return self._take(max_messages)
            if any(binding.needs_setup for binding in self._bindings):
                await self.setup(deadline)
            await self._request(max_messages, loop.time())
            if deadline.expired:
                return self._take(max_messages)
            until = min([deadline.at, *(binding.lost_at for binding in self._pulls.values())])
            # Until a delivery, a status, a connection change, or the first of those times.
            await wait_event(self._wakeup, until - loop.time())
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
        self._wakeup.set()
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            try:
                await subscription.unsubscribe()
            except Exception as exc:  # the connection may be gone already
                log.debug("nats: unsubscribing %s: %s", self._inbox, exc)
        self._pulls.clear()
        unread = list(self._buffer)
        self._buffer.clear()
        client = self._jetstream.client
        if unread and client is not None and not client.is_closed:
            try:
                for message in unread:
                    await client.publish(message.handle, _NAK)
            except Exception as exc:
                log.info(
                    "nats: %d fetched message(s) will come back after the redelivery timeout (%s)",
                    len(unread),
                    exc,
                )

    # ---- internals --------------------------------------------------------------------------

    def _live_client(self) -> NatsClient:
        client = self._jetstream.client
        if client is None:
            raise BackendUnavailableError("nats: not connected; the message will come back later")
        return client

    async def _attach(self, deadline: Deadline) -> None:
        """Subscribe the inbox on the live client; forget requests a lost connection held."""
        client = await self._jetstream.ready(deadline)
        first = self._client is None
        if client is not self._client:
            self._subscription = None
            self._inbox = client.new_inbox()
            self._subscription = await client.subscribe(f"{self._inbox}.*", cb=self._on_message)
            self._client = client
        if self._epoch != self._jetstream.epoch:
            self._epoch = self._jetstream.epoch
            if not first:  # the server lost the requests it held: forget them, check the keys
                for binding in self._bindings:
                    self._finish(binding)
                    binding.needs_setup = True

    def _take(self, count: int) -> list[IncomingMessage]:
        return [self._buffer.popleft() for _ in range(min(count, len(self._buffer)))]

    def _finish(self, binding: Binding) -> None:
        """Forget the binding's open pull request (answered, ended or lost)."""
        self._pulls.pop(binding.token or "", None)
        binding.token = None

    async def _request(self, max_messages: int, now: float) -> None:
        """Send pull requests for the credit left, split between the keys without one."""
        budget = max_messages - len(self._buffer) - sum(b.remaining for b in self._pulls.values())
        idle = [b for b in self._bindings if b.token is None and not b.needs_setup]
        if budget <= 0 or not idle:
            return
        if len(idle) > 1:
            shift = self._turn % len(idle)
            self._turn += 1
            idle = (idle[shift:] + idle[:shift])[:budget]
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
                batch, request = 1, b'{"batch":1,"expires":%d}' % int(wait * 1e9)
                lost_at = now + wait + _LATE_STATUS
            self._counter += 1
            binding.token, binding.remaining = str(self._counter), batch
            binding.no_wait, binding.lost_at = binding.maybe_pending, lost_at
            self._pulls[binding.token] = binding
            subject = f"$JS.API.CONSUMER.MSG.NEXT.{binding.stream}.{binding.consumer}"
            await client.publish(subject, request, reply=f"{self._inbox}.{binding.token}")

    async def _on_message(self, msg: Msg) -> None:
        if msg.reply:
            self._on_delivery(msg, msg.reply)
        else:
            self._on_status(msg)

    def _on_delivery(self, msg: Msg, reply: str) -> None:
        # $JS.ACK.[<domain>.<hash>.]<stream>.<consumer>.<delivered>.<seq>.<cseq>.<ts>.<pending>
        tokens = reply.split(".")
        at = 2 if len(tokens) == 9 else 4
        if len(tokens) < 9 or len(tokens) == 10:
            log.debug("nats: ignoring a message with reply %r (not a JetStream delivery)", reply)
            return
        stream, consumer, delivered, sequence = tokens[at : at + 4]
        binding = self._by_consumer.get((stream, consumer))
        if binding is None or self._closed:
            # Arrived after close (or for a consumer no longer read): give it back now.
            client = self._jetstream.client
            if client is not None and client.is_connected:
                asyncio.get_running_loop().create_task(_give_back(client, reply))
            return
        if binding.token is not None:
            binding.remaining -= 1
            if binding.remaining <= 0:
                self._finish(binding)
        binding.maybe_pending = tokens[at + 6] != "0"
        headers = msg.headers or _EMPTY
        message = IncomingMessage(
            binding.key, msg.data, headers, int(delivered), f"{stream}:{sequence}", reply
        )
        self._buffer.append(message)
        self._wakeup.set()

    def _on_status(self, msg: Msg) -> None:
        binding = self._pulls.get(msg.subject.rpartition(".")[2])
        headers = msg.headers or _EMPTY
        status = headers.get("Status")
        if binding is None or status == "100":  # unknown request, or an idle heartbeat
            return
        self._finish(binding)
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
        self._wakeup.set()


async def _give_back(client: NatsClient, reply: str) -> None:
    try:
        await client.publish(reply, _NAK)
    except Exception as exc:
        log.debug("nats: giving back a late message: %s", exc)
