"""The backend class: abe on RabbitMQ through aio-pika.

A key is a durable fanout exchange with a durable stream of the same name bound to it (the
key's log); a group is a durable quorum queue `<key>:<group>` bound to the exchange. A group
made after messages were published gets them copied from the log when it is created, so
every group sees every message of the key, as on a log-based broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar

import aio_pika
from aio_pika import Channel, DeliveryMode, ExchangeType, Message
from aio_pika import exceptions as amqp
from aiormq import exceptions as aiormq_errors
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from abe.errors import PublishError
from abe.provider import (
    BaseBackend,
    Capabilities,
    ErrorMap,
    KeyRules,
    LazyClient,
    OutgoingMessage,
    Receiver,
    bounded,
    dead_letter_key,
    redact_url,
)
from abe_mq_rabbitmq._errors import ERRORS
from abe_mq_rabbitmq._receiver import MARKER, RabbitmqReceiver, group_queue
from abe_mq_rabbitmq._settings import RabbitmqSettings

__all__ = ["RabbitmqBackend"]

_LOCK_RETRY = 0.02  # seconds between tries for a lock another connection holds


@dataclass
class _Client:
    """One robust connection, its confirming publisher channel, and the keys declared on it."""

    connection: AbstractRobustConnection
    channel: AbstractChannel
    declared: set[str] = field(default_factory=set)


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
        connection = await aio_pika.connect_robust(
            str(self.settings.url),
            timeout=self.settings.operation_timeout,
            reconnect_interval=self.settings.reconnect_interval,
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

    async def _send(self, key: str, messages: Sequence[OutgoingMessage]) -> None:
        """Publish in order, confirms pipelined; returns once RabbitMQ confirmed every one."""
        client = await self.client.get()
        try:
            await self._publish(client, key, messages)
        except amqp.ChannelNotFoundEntity:  # the key was deleted since we declared it
            client.declared.discard(key)
            await self._publish(client, key, messages)

    async def _publish(self, client: _Client, key: str, messages: Sequence[OutgoingMessage]) -> None:
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
        """Join `group` on `keys` (a new group gets the key's log first), on a channel of its own."""
        client = await self.client.get()
        try:
            for key in keys:
                await self._join(client, key, group)
            channel = await client.connection.channel(publisher_confirms=True)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or _cancelling(task):
                raise
            # aiormq cancels the calls a closing connection leaves pending: not our cancellation
            raise amqp.ChannelInvalidStateError("the connection closed while joining") from None
        queues = tuple(group_queue(key, group) for key in keys)
        return RabbitmqReceiver(channel, keys, queues, self.settings.redelivery_timeout)

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
        arguments: dict[str, Any] = {"x-queue-type": "quorum"}
        if self.settings.delivery_limit and not key.endswith("-dlq"):
            await self._declare(client, dead_letter_key(key))
            arguments["x-delivery-limit"] = self.settings.delivery_limit
            arguments["x-dead-letter-exchange"] = dead_letter_key(key)
        channel = client.channel
        queue = await channel.declare_queue(name, durable=True, arguments=arguments)
        await queue.bind(key, routing_key=key)
        group = name.rpartition(":")[2]
        join = Message(b"", headers={MARKER: f"join {group}"}, delivery_mode=DeliveryMode.PERSISTENT)
        await channel.default_exchange.publish(join, routing_key=key)  # delete_keys finds it
        await self._copy_log(client, key, name)

    async def _copy_log(self, client: _Client, key: str, name: str) -> None:
        """Copy what the key's log holds up to now into the group's queue (in order)."""

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
            await client.channel.default_exchange.publish(copied, routing_key=name)

        await self._scan(client, key, copy)

    async def _scan(self, client: _Client, key: str, visit: Any) -> list[str]:
        """Read the key's log from its start to a marker written now; each message to `visit`.

        Returns the group names of the join markers met on the way (the groups of the key).
        """
        token = uuid.uuid4().hex
        marker = Message(b"", headers={MARKER: f"scan {token}"}, delivery_mode=DeliveryMode.PERSISTENT)
        await client.channel.default_exchange.publish(marker, routing_key=key)
        groups: list[str] = []
        arrived: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        reader = await _plain_channel(client)
        try:
            await reader.set_qos(prefetch_count=500)
            log = await reader.get_queue(key, ensure=False)

            async def queue(message: AbstractIncomingMessage) -> None:
                arrived.put_nowait(message)  # each callback is a task: visit them in order

            await log.consume(queue, arguments={"x-stream-offset": "first"})
            while True:
                message = await bounded(arrived.get(), self.settings.operation_timeout)
                mark = message.headers.get(MARKER)
                if mark is None:
                    await visit(message)
                elif str(mark) == f"scan {token}":
                    break
                elif str(mark).startswith("join "):
                    groups.append(str(mark)[5:])
                await message.ack()
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
        client = await self.client.get()
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
        client = await self.client.get()
        return [key for key in keys if await self._queue_exists(client, key)]

    async def _delete_group(self, group: str, keys: Sequence[str]) -> None:
        client = await self.client.get()
        for key in keys:
            await client.channel.queue_delete(group_queue(key, group))

    async def _close(self) -> None:
        await self.client.close()

    def _describe(self) -> str:
        return redact_url(str(self.settings.url))


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
