"""Pull consumption: each key a durable pull consumer, read without holding messages back.

A pull request that waited on the server would keep taking messages after `fetch()`
returned, holding them back from other members. So a consumer that may hold messages gets
a `no_wait` request for its share of the credit (answered at once), and an idle one a
request for one message that waits a few seconds at most; its delivery says whether more
wait. Each key has its own request, so an idle key never delays a busy one. A lost
connection or an unanswered request makes the receiver set its consumers up and ask again.
"""

from __future__ import annotations

import asyncio
import contextlib
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

__all__ = ["NatsReceiver"]

log = logging.getLogger("abe.nats")

_EMPTY: Mapping[str, str] = MappingProxyType({})
_NAK = b"-NAK"
_LONGEST_WAIT = 5.0
"""Longest a single-message request waits on the server (then a new one is sent)."""
_LATE_STATUS = 1.0
"""How long after its expiry a waiting request's 408 may still arrive before it counts as lost."""


@dataclass(eq=False)
class _Binding:
    """One key: its stream and durable consumer, and the pull request open on it, if any."""

    key: str
    stream: str = ""
    consumer: str = ""
    needs_setup: bool = True
    maybe_pending: bool = True  # then: a batched no_wait request
    token: str | None = None  # of the open request
    remaining: int = 0  # messages the open request may still bring
    no_wait: bool = False
    lost_at: float = 0.0  # loop time after which the open request, unanswered, is lost


class NatsReceiver(Receiver):
    """Reads `group` on `keys`; `setup()` finds or makes each key's stream and consumer."""

    def __init__(self, jetstream: JetStream, group: str, keys: Sequence[str]) -> None:
        self._jetstream, self._group = jetstream, group
        self._bindings = [_Binding(key) for key in keys]
        self._by_consumer: dict[tuple[str, str], _Binding] = {}
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
        for binding in [binding for binding in self._bindings if binding.needs_setup]:
            refresh = bool(binding.stream)  # set up before: look again, it may have gone
            stream = await self._jetstream.stream_for(binding.key, deadline, refresh=refresh)
            consumer = await self._jetstream.consumer_for(stream, binding.key, self._group)
            self._by_consumer.pop((binding.stream, binding.consumer), None)
            self._by_consumer[stream.name, consumer] = binding
            binding.stream, binding.consumer = stream.name, consumer
            binding.needs_setup, binding.maybe_pending = False, True

    async def fetch(self, max_messages: int, timeout: float) -> Sequence[IncomingMessage]:
        loop = asyncio.get_running_loop()
        deadline = Deadline(timeout)
        while not self._closed:
            self._wakeup.clear()
            client = self._client
            if client is None or self._epoch != self._jetstream.epoch or not client.is_connected:
                await self._attach(deadline)
            open_ = [binding for binding in self._bindings if binding.token is not None]
            for binding in [binding for binding in open_ if binding.lost_at <= loop.time()]:
                log.debug("nats: no answer to a pull request on %r; checking it", binding.key)
                binding.token, binding.needs_setup = None, True
            draining = any(binding.no_wait and binding.token for binding in open_)
            if self._buffer and (len(self._buffer) >= max_messages or not draining):
                return [self._buffer.popleft() for _ in range(min(max_messages, len(self._buffer)))]
            if any(binding.needs_setup for binding in self._bindings):
                await self.setup(deadline)
            await self._request(max_messages, loop.time())
            if deadline.expired:
                return [self._buffer.popleft() for _ in range(min(max_messages, len(self._buffer)))]
            lost_at = [binding.lost_at for binding in self._bindings if binding.token is not None]
            # Until a delivery, a status, a connection change, the deadline or a request's loss.
            await wait_event(self._wakeup, min([deadline.at, *lost_at]) - loop.time())
        return []

    async def ack(self, messages: Sequence[IncomingMessage]) -> None:
        await self._settle(messages, b"+ACK")

    async def nack(self, message: IncomingMessage, delay: float) -> None:
        await self._settle(
            [message], b'-NAK {"delay":%d}' % int(delay * 1e9) if delay > 0 else _NAK
        )

    async def extend(self, messages: Sequence[IncomingMessage]) -> None:
        await self._settle(messages, b"+WPI")

    async def _settle(self, messages: Sequence[IncomingMessage], payload: bytes) -> None:
        client = self._jetstream.client
        if client is None:
            raise BackendUnavailableError("nats: not connected; the message will come back later")
        for message in messages:
            await client.publish(message.handle, payload)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wakeup.set()
        subscription, self._subscription = self._subscription, None
        unread = list(self._buffer)
        self._buffer.clear()
        if subscription is not None:
            with contextlib.suppress(Exception):  # the connection may be gone already
                await subscription.unsubscribe()
        try:
            if unread and self._jetstream.client and not self._jetstream.client.is_closed:
                await self._settle(unread, _NAK)
        except Exception as exc:
            log.info(
                "nats: %d fetched message(s) will come back after the redelivery timeout (%s)",
                len(unread),
                exc,
            )

    async def _attach(self, deadline: Deadline) -> None:
        """Subscribe the inbox on the live client; forget requests a lost connection held."""
        client = await self._jetstream.ready(deadline)
        first = self._client is None
        if client is not self._client:
            self._subscription = None
            self._inbox = client.new_inbox()
            self._subscription = await client.subscribe(f"{self._inbox}.*.*", cb=self._on_message)
            self._client = client
        if self._epoch != self._jetstream.epoch:
            self._epoch = self._jetstream.epoch
            for binding in [] if first else self._bindings:  # the server lost the requests
                binding.token, binding.needs_setup = None, True

    async def _request(self, max_messages: int, now: float) -> None:
        """Send pull requests for the credit left, split between the keys without one."""
        open_ = [binding for binding in self._bindings if binding.token is not None]
        budget = max_messages - len(self._buffer) - sum(binding.remaining for binding in open_)
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
        for position, binding in enumerate(idle):
            if binding.maybe_pending:
                batch = share + (1 if position < extra else 0)
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
            subject = f"$JS.API.CONSUMER.MSG.NEXT.{binding.stream}.{binding.consumer}"
            index = self._bindings.index(binding)
            await client.publish(subject, request, reply=f"{self._inbox}.{index}.{binding.token}")

    async def _on_message(self, msg: Msg) -> None:
        """A delivery (on its own subject), or a status on `<inbox>.<binding>.<request>`."""
        if msg.reply:
            self._on_delivery(msg, msg.reply)
            return
        head, token = msg.subject.rsplit(".", 1)
        binding = self._bindings[int(head.rsplit(".", 1)[1])]
        headers = msg.headers or _EMPTY
        status = headers.get("Status")
        if token != binding.token or status == "100":  # an old request, or an idle heartbeat
            return
        binding.token = None
        if status in ("404", "408"):
            binding.maybe_pending = False
        else:
            description = str(headers.get("Description", "")).lower()
            deleted = status == "409" and ("deleted" in description or "push" in description)
            binding.needs_setup = status != "409" or deleted
            log.debug("nats: pull on %r ended: %s %s", binding.key, status, description)
        self._wakeup.set()

    def _on_delivery(self, msg: Msg, reply: str) -> None:
        # $JS.ACK.[<domain>.<hash>.]<stream>.<consumer>.<delivered>.<seq>.<cseq>.<ts>.<pending>
        tokens = reply.split(".")
        if len(tokens) < 9 or len(tokens) == 10:
            log.debug("nats: ignoring a message with reply %r (not a JetStream delivery)", reply)
            return
        at = 2 if len(tokens) == 9 else 4
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
            binding.token = binding.token if binding.remaining > 0 else None
        binding.maybe_pending = tokens[at + 6] != "0"
        headers = msg.headers or _EMPTY
        message = IncomingMessage(
            binding.key, msg.data, headers, int(delivered), f"{stream}:{sequence}", reply
        )
        self._buffer.append(message)
        self._wakeup.set()


async def _give_back(client: NatsClient, reply: str) -> None:
    try:
        await client.publish(reply, _NAK)
    except Exception as exc:
        log.debug("nats: giving back a late message: %s", exc)
