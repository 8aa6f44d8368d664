"""The backend class: abe on RabbitMQ through aio-pika.

A key is a durable fanout exchange with a durable stream of the same name bound to it (the
key's log); a group is a durable quorum queue `<key>:<group>` bound to the exchange. A group
made after messages were published gets them copied from the log when it is created, so
every group sees every message of the key, as on a log-based broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, ClassVar

import aio_pika
from abe.errors import PublishError
from abe.provider import (
    BaseBackend,
    Capabilities,
    Deadline,
    ErrorMap,
    KeyRules,
    LazyClient,
    OutgoingMessage,
    Receiver,
    bounded,
    dead_letter_key,
    redact_url,
)
from aio_pika import Channel, DeliveryMode, ExchangeType, Message
from aio_pika import exceptions as amqp
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from aiormq import exceptions as aiormq_errors

from abe_mq_rabbitmq._errors import ERRORS
from abe_mq_rabbitmq._receiver import MARKER, RabbitmqReceiver, group_queue
from abe_mq_rabbitmq._settings import RabbitmqSettings

if TYPE_CHECKING:
    from abe.benchmarking import RawBaseline

__all__ = ["RabbitmqBackend"]

_COPY_BATCH = 500  # messages copied from a log per round of confirms
_COPY_WINDOW = 4  # rounds of confirms awaited behind the copying (a quorum queue's are slow)
_SCAN_ACK = 100  # a log's messages read per basic.ack (multiple): its credit comes back
_LOCK_RETRY = 0.02  # seconds between tries for a lock another connection holds


@dataclass
class _Client:
    """One connection, its confirming publisher channel, and the keys declared on it."""

    connection: AbstractConnection
    channel: AbstractChannel
    declared: set[str] = field(default_factory=set)
    reopening: asyncio.Lock = field(default_factory=asyncio.Lock)


class RabbitmqBackend(BaseBackend):
    """abe on RabbitMQ; building one does no I/O."""

    name: ClassVar[str] = "rabbitmq"
    capabilities: ClassVar[Capabilities] = Capabilities(
        fan_out=True, per_key_ordering=True, persistence=True, native_delay=False
    )
    # Queue names are at most 255 bytes: `<key>:<group>` must fit.
    key_rules: ClassVar[KeyRules] = KeyRules(
        max_length=120,
        allowed="A-Za-z0-9._-",
        described="letters, digits, '.', '_' and '-'",
        broker="RabbitMQ",
    )
    group_rules: ClassVar[KeyRules] = KeyRules(
        max_length=120,
        allowed="A-Za-z0-9_-",
        described="letters, digits, '_' and '-'",
        broker="RabbitMQ",
        kind="group",
    )
    reserved_headers: ClassVar[frozenset[str]] = frozenset({MARKER})
    settings_class: ClassVar[type[RabbitmqSettings]] = RabbitmqSettings
    errors: ClassVar[ErrorMap] = ERRORS
    client_loggers: ClassVar[tuple[str, ...]] = ("aio_pika", "aiormq")

    def __init__(self, settings: RabbitmqSettings | None = None) -> None:
        super().__init__(settings or RabbitmqSettings())
        self.settings: RabbitmqSettings = settings or RabbitmqSettings()
        self.client: LazyClient[_Client] = LazyClient(
            self._connect, self._disconnect, timeout=self.settings.operation_timeout, what=self.name
        )

    async def _connect(self) -> _Client:
        connection = await aio_pika.connect(
            str(self.settings.url),
            timeout=self.settings.operation_timeout,
            client_properties={"connection_name": "abe-mq-rabbitmq"},
        )
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        except BaseException:
            await connection.close()
            raise
        return _Client(connection, channel)

    async def _disconnect(self, client: _Client) -> None:
        await client.connection.close()

    async def _client(self) -> _Client:
        """The connected client: a lost connection is made again, a closed channel reopened.

        (RabbitMQ closes a channel on a refused command, e.g. a publish to a deleted key.)
        """
        client = await self.client.get()
        if _lost(client.connection):
            if self.client.current is client:
                await self.client.discard()
            client = await self.client.get()
        async with client.reopening:
            if client.channel.is_closed:
                client.channel = await client.connection.channel(on_return_raises=True)
        return client

    async def _channel(self) -> AbstractChannel:
        """A new channel for a receiver (its deliveries and prefetch are its own)."""
        client = await self._client()
        channel: AbstractChannel = await client.connection.channel(publisher_confirms=True)
        return channel

    async def _send(self, key: str, messages: Sequence[OutgoingMessage]) -> None:
        """Publish in order, confirms pipelined; returns once RabbitMQ confirmed every one."""
        client = await self._client()
        try:
            await self._publish(client, key, messages)
        except amqp.ChannelNotFoundEntity:  # the key was deleted since we declared it
            client.declared.discard(key)
            await self._publish(await self._client(), key, messages)

    async def _publish(
        self, client: _Client, key: str, messages: Sequence[OutgoingMessage]
    ) -> None:
        exchange = await self._declare(client, key)
        now = datetime.now(timezone.utc)
        sent = [
            exchange.publish(
                Message(
                    message.body,
                    headers=dict(message.headers),
                    content_type="application/json",
                    delivery_mode=DeliveryMode.PERSISTENT,
                    message_id=message.id,
                    timestamp=now,
                ),
                routing_key=key,
                mandatory=True,
            )
            for message in messages
        ]
        results = await asyncio.gather(*sent, return_exceptions=True)
        refused = {i: str(r) for i, r in enumerate(results) if isinstance(r, amqp.DeliveryError)}
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, amqp.DeliveryError):
                raise result
        if refused:
            raise PublishError(key, refused, len(messages))

    async def _declare(self, client: _Client, key: str) -> aio_pika.abc.AbstractExchange:
        """The key's exchange, with its log stream bound (declared once per connection)."""
        channel = client.channel
        if key in client.declared:
            return await channel.get_exchange(key, ensure=False)
        arguments: dict[str, Any] = {"x-queue-type": "stream"}
        if self.settings.max_age:
            arguments["x-max-age"] = self.settings.max_age
        # One declarer at a time: RabbitMQ 3.10 answers a second declare of a stream that is
        # still starting at once, and a publish to it then closes the connection.
        async with self._lock(client, f"{key}:declaring"):
            exchange = await channel.declare_exchange(key, ExchangeType.FANOUT, durable=True)
            log = await channel.declare_queue(key, durable=True, arguments=arguments)
            await log.bind(exchange, routing_key=key)
        client.declared.add(key)
        return exchange

    async def _open_receiver(self, group: str, keys: Sequence[str]) -> Receiver:
        """Join `group` on `keys` (a new group gets the key's log first); its own channel."""
        client = await self._client()
        try:
            for key in keys:
                await self._join(client, key, group)
            channel = await self._channel()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or _cancelling(task):
                raise
            # aiormq cancels the calls a closing connection leaves pending: not our cancellation
            raise amqp.ChannelInvalidStateError("the connection closed while joining") from None
        queues = tuple(group_queue(key, group) for key in keys)
        lease = self.settings.redelivery_timeout
        return RabbitmqReceiver(channel, self._channel, keys, queues, lease)

    async def _join(self, client: _Client, key: str, group: str) -> None:
        """Create the group's queue on `key` if missing, copying the key's log into it."""
        await self._declare(client, key)
        name = group_queue(key, group)
        async with self._lock(client, f"{name}:joining"):  # one member creates the group
            if not await self._queue_exists(client, name):
                await self._create_group_queue(client, key, name)

    @contextlib.asynccontextmanager
    async def _lock(self, client: _Client, name: str) -> AsyncIterator[None]:
        """Hold `name` against other connections: an exclusive queue, deleted after."""
        channel = await _plain_channel(client)
        try:
            while True:
                try:
                    await channel.declare_queue(name, exclusive=True, auto_delete=True)
                    break
                except aiormq_errors.ChannelLockedResource:  # another holds it: wait
                    channel = await _plain_channel(client)
                    await asyncio.sleep(_LOCK_RETRY)
            yield
            await channel.queue_delete(name)
        finally:
            await channel.close()

    async def _create_group_queue(self, client: _Client, key: str, name: str) -> None:
        """Make the group's queue and give it the key's log: each message once, in order.

        The queue is bound first, then a marker goes through the exchange; what reached the
        queue before the marker is taken out of it again, and the log up to the marker
        (which holds those too) is copied in.
        """
        arguments: dict[str, Any] = {"x-queue-type": "quorum"}
        if self.settings.delivery_limit and not key.endswith("-dlq"):
            await self._declare(client, dead_letter_key(key))
            arguments["x-delivery-limit"] = self.settings.delivery_limit
            arguments["x-dead-letter-exchange"] = dead_letter_key(key)
        channel = client.channel
        queue = await channel.declare_queue(name, durable=True, arguments=arguments)
        await queue.bind(key, routing_key=key)
        group = name.rpartition(":")[2]
        await channel.default_exchange.publish(_marker(f"join {group}"), routing_key=key)
        token = f"scan {uuid.uuid4().hex}"
        exchange = await channel.get_exchange(key, ensure=False)
        await exchange.publish(_marker(token), routing_key=key)  # to the log and every group
        await self._drain(client, name, token)
        pending: list[Awaitable[Any]] = []
        confirming: deque[asyncio.Future[Any]] = deque()  # batches whose confirms are due

        async def copy(message: AbstractIncomingMessage) -> None:
            headers = dict(message.headers)
            headers.pop("x-stream-offset", None)  # the log's, not the message's
            copied = Message(
                message.body,
                headers=headers,
                content_type=message.content_type,
                delivery_mode=DeliveryMode.PERSISTENT,
                message_id=message.message_id,
                timestamp=message.timestamp,
            )
            pending.append(channel.default_exchange.publish(copied, routing_key=name))
            if len(pending) >= _COPY_BATCH:  # confirms pipelined, a few batches in flight
                confirming.append(asyncio.gather(*pending))
                pending.clear()
                if len(confirming) > _COPY_WINDOW:
                    await confirming.popleft()

        try:
            await self._scan(client, key, copy, token)
        finally:
            confirming.append(asyncio.gather(*pending))
            results = await asyncio.gather(*confirming, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _drain(self, client: _Client, name: str, token: str) -> None:
        """Take out of the new queue what reached it up to the marker `token` (basic.get)."""
        channel = await _plain_channel(client)
        try:
            queue = await channel.get_queue(name, ensure=False)
            deadline = Deadline(self.settings.operation_timeout)
            while not deadline.expired:
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    await asyncio.sleep(0.005)  # the marker is on its way
                    continue
                await message.ack()
                if message.headers.get(MARKER) == token:
                    return
            raise asyncio.TimeoutError
        finally:
            await channel.close()

    async def _scan(
        self, client: _Client, key: str, visit: Any, token: str | None = None
    ) -> list[str]:
        """Read the key's log from its start to the marker `token` (written now if None).

        Each message goes to `visit`; returns the group names of the join markers met (the
        groups of the key).
        """
        if token is None:
            token = f"scan {uuid.uuid4().hex}"
            await client.channel.default_exchange.publish(_marker(token), routing_key=key)
        groups: list[str] = []
        arrived: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        reader = await _plain_channel(client)
        try:
            await reader.set_qos(prefetch_count=_COPY_BATCH)
            log = await reader.get_queue(key, ensure=False)

            async def queue(message: AbstractIncomingMessage) -> None:
                arrived.put_nowait(message)  # each callback is a task: visit them in order

            await log.consume(queue, arguments={"x-stream-offset": "first"})
            for read in itertools.count(1):
                message = await bounded(arrived.get(), self.settings.operation_timeout)
                mark = message.headers.get(MARKER)
                if mark is None:
                    await visit(message)
                elif str(mark) == token:
                    break
                elif str(mark).startswith("join "):
                    groups.append(str(mark)[5:])
                if read % _SCAN_ACK == 0:
                    await message.ack(multiple=True)
        finally:
            await reader.close()
        return groups

    async def _queue_exists(self, client: _Client, name: str) -> bool:
        channel = await _plain_channel(client)
        try:
            await channel.declare_queue(name, passive=True)
        except amqp.ChannelNotFoundEntity:
            return False
        finally:
            await channel.close()
        return True

    async def _delete_keys(self, keys: Sequence[str]) -> None:
        """Delete each key's exchange, log and the group queues abe made on it."""
        client = await self._client()
        for key in keys:
            if not await self._queue_exists(client, key):
                continue
            client.declared.add(key)  # it exists: the scan may publish its marker to it
            groups = await self._scan(client, key, _ignore)
            for group in dict.fromkeys(groups):
                await client.channel.queue_delete(group_queue(key, group))
            await client.channel.queue_delete(key)
            await client.channel.exchange_delete(key)
            client.declared.discard(key)

    async def _existing_keys(self, keys: Sequence[str]) -> Sequence[str]:
        client = await self._client()
        return [key for key in keys if await self._queue_exists(client, key)]

    async def _delete_group(self, group: str, keys: Sequence[str]) -> None:
        client = await self._client()
        for key in keys:
            await client.channel.queue_delete(group_queue(key, group))

    async def _close(self) -> None:
        await self.client.close()

    def _describe(self) -> str:
        return redact_url(str(self.settings.url))

    def raw_baseline(self) -> RawBaseline:
        """The `abe bench` workloads written with aio-pika alone, on the same broker."""
        from abe_mq_rabbitmq._baseline import RawRabbitmqBaseline  # noqa: PLC0415  (bench only)

        return RawRabbitmqBaseline(self.settings)


def _marker(text: str) -> Message:
    """A record of abe's own in a key's log (a group's join, the end of a scan)."""
    return Message(b"", headers={MARKER: text}, delivery_mode=DeliveryMode.PERSISTENT)


def _lost(connection: AbstractConnection) -> bool:
    """Whether the connection is gone (aio-pika marks only a close of ours as closed)."""
    transport = connection.transport
    return connection.is_closed or transport is None or transport.connection.is_closed


async def _plain_channel(client: _Client) -> AbstractChannel:
    """A channel for one short step that the broker may close (a passive declare, a lock).

    Not a robust one: a robust channel reopens itself when the broker closes it, and the
    reopening races with our own close.
    """
    channel = Channel(client.connection, publisher_confirms=False)
    await channel.initialize()
    return channel


def _cancelling(task: asyncio.Task[Any]) -> bool:
    """Whether someone asked to cancel `task` (Python 3.10 cannot tell: assume so)."""
    cancelling = getattr(task, "cancelling", None)
    return cancelling is None or bool(cancelling())


async def _ignore(message: AbstractIncomingMessage) -> None:
    """A scan's visitor that only walks past the messages."""
