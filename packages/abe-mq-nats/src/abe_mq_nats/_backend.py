"""NatsBackend: abe on NATS JetStream through nats-py.

Keys are subjects. Each key is stored in a stream: the one ABE_NATS_STREAM names when
it covers the key, else whichever stream already covers it, else a stream abe creates
on first use (named after the key). Groups are durable pull consumers with explicit
acknowledgement, starting at the first message, whose ack wait is the redelivery
timeout. The abe message id travels as `Nats-Msg-Id`, so JetStream stores a retried
publish once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import nats.js.errors
from nats.js import JetStreamContext, api

from abe.backends.message_queue.base.backend import BaseBackend
from abe.backends.message_queue.base.capabilities import Capabilities
from abe.backends.message_queue.base.codec import OutgoingMessage
from abe.backends.message_queue.base.keys import KeyRules
from abe.backends.message_queue.base.receiver import Receiver
from abe.errors import (
    AbeError,
    BackendUnavailableError,
    ConfigurationError,
    PayloadError,
    PublishError,
)
from abe.redaction import redact_url
from abe.settings import Variable
from abe_mq_nats._baseline import RawNatsBaseline
from abe_mq_nats._connection import DEFAULT_MAX_PAYLOAD, Connection, ConnectionClosing
from abe_mq_nats._errors import safe_text, translate
from abe_mq_nats._publisher import BatchPublisher
from abe_mq_nats._receiver import Binding, NatsReceiver
from abe_mq_nats._settings import REPLICAS, VARIABLES, NatsSettings
from abe_mq_nats._subjects import (
    KEY_RULES,
    consumer_name,
    hashed_stream_name,
    stream_name,
    subject_matches,
)

if TYPE_CHECKING:
    from typing_extensions import Self

    from abe.benchmarking import RawBaseline

__all__ = ["HEADER_ROOM", "MAX_HEADERS", "MSG_ID", "NatsBackend", "StreamRef"]

log = logging.getLogger("abe.nats")

MSG_ID = "Nats-Msg-Id"
"""The NATS header JetStream deduplicates on; abe sends its message id in it."""
HEADER_ROOM = 8192
"""Bytes of max_payload kept for headers (at most an eighth of it on servers with a small one)."""
MAX_HEADERS = 65535
"""The largest header block JetStream stores (it refuses more with err_code 10097)."""

_STREAM_DESCRIPTION = "abe key {key}"
"""The description of a stream abe created for a key: such streams are abe's to delete."""
_NAME_IN_USE = 10058
_SUBJECTS_OVERLAP = 10065
_NO_CLUSTER = 10074


@dataclass(frozen=True)
class StreamRef:
    """The stream that stores a key."""

    name: str
    dedicated: bool
    """Whether the stream holds this key alone (then consumers are named after the group)."""
    created: bool
    """Whether this backend created it."""


class NatsBackend(BaseBackend):
    """NATS JetStream: durable, fan-out across groups, competing members within a group.

    Build it with `NatsBackend.from_env()` (what `load_backend("nats")` does) or with
    `NatsBackend(NatsSettings(servers=("nats://host:4222",), ...))`. It connects on first
    use and reconnects by itself after a server restart.
    """

    name: ClassVar[str] = "nats"
    capabilities: ClassVar[Capabilities] = Capabilities(
        fan_out=True,
        per_key_ordering=True,
        persistence=True,
        native_delay=True,
        max_payload_bytes=DEFAULT_MAX_PAYLOAD - HEADER_ROOM,
        remote=True,
    )
    key_rules: ClassVar[KeyRules] = KEY_RULES
    variables: ClassVar[tuple[Variable, ...]] = VARIABLES

    def __init__(self, settings: NatsSettings | None = None) -> None:
        settings = settings or NatsSettings()
        super().__init__(settings)
        self.settings: NatsSettings = settings
        self._connection = Connection(settings, self._describe)
        self._streams: dict[str, StreamRef] = {}
        self._publisher = BatchPublisher()
        self._configured: list[str] | None = None  # subjects of ABE_NATS_STREAM, once read

    @classmethod
    def from_env(cls) -> Self:
        """A backend configured by NATS_*, ABE_NATS_* and ABE_MQ_* variables (no I/O)."""
        return cls(NatsSettings.from_env())

    @property
    def max_payload_bytes(self) -> int:
        """The server's max_payload (1 MiB until connected) less room for the headers."""
        limit = self._connection.max_payload
        return limit - min(HEADER_ROOM, limit // 8)

    def _describe(self) -> str:
        return redact_url(",".join(self.settings.servers))

    def _translate_error(self, error: Exception) -> Exception:
        return translate(error, self._describe())

    def raw_baseline(self) -> RawBaseline:
        """The bench workloads written directly with nats-py, on the same servers."""
        return RawNatsBaseline(self.settings)

    # ---- publishing ---------------------------------------------------------------------------

    async def _send(self, key: str, messages: Sequence[OutgoingMessage]) -> None:
        connection = self._connection
        client = connection.client
        if (
            len(messages) == 1
            and client is not None
            and client.is_connected
            and key in self._streams
        ):
            # The common case, kept short: connected, the stream known, one message.
            message = messages[0]
            headers = _headers(message, connection.max_payload, None)
            try:
                await self._publisher.publish_one(
                    client, key, message.body, headers, self.settings.operation_timeout
                )
                return
            except nats.js.errors.NoStreamResponseError:
                pass  # the stream is gone (deleted, or a memory stream lost in a restart)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.settings.operation_timeout
            await self._stream_for(key, deadline, refresh=True)
            await self._publisher.publish_one(
                client, key, message.body, headers, max(deadline - loop.time(), 0.001)
            )
            return
        await self._send_slow(key, messages)

    async def _send_slow(self, key: str, messages: Sequence[OutgoingMessage]) -> None:
        """Connect and find the stream first if need be; batches go without waiting for acks.

        Sizes are checked as soon as the server's max_payload is known, before the stream
        is looked up or created.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.operation_timeout * (1 + len(messages) // 1000)
        connection = self._connection
        client = await connection.ready(deadline)
        limit = connection.max_payload
        if len(messages) == 1:
            message = messages[0]
            headers = _headers(message, limit, None)
            if key not in self._streams:
                await self._stream_for(key, deadline)
            publish = self._publisher.publish_one
            try:
                await publish(
                    client, key, message.body, headers, max(deadline - loop.time(), 0.001)
                )
            except nats.js.errors.NoStreamResponseError:
                await self._stream_for(key, deadline, refresh=True)
                await publish(
                    client, key, message.body, headers, max(deadline - loop.time(), 0.001)
                )
            return
        batch = [
            (message.body, _headers(message, limit, index))
            for index, message in enumerate(messages)
        ]
        if key not in self._streams:
            await self._stream_for(key, deadline)
        failed = await self._publisher.publish(client, key, batch, deadline)
        if (
            failed
            and all(
                isinstance(error, nats.js.errors.NoStreamResponseError) for error in failed.values()
            )
            and len(failed) == len(messages)
        ):
            await self._stream_for(key, deadline, refresh=True)
            failed = await self._publisher.publish(client, key, batch, deadline)
        if not failed:
            return
        if len(failed) == len(messages):
            first = next(iter(failed.values()))
            raise first
        reasons = {
            index: safe_text(self._translate_error(error)) for index, error in failed.items()
        }
        raise PublishError(key, reasons, len(messages))

    # ---- streams and consumers -----------------------------------------------------------------

    async def _stream_for(self, key: str, deadline: float, *, refresh: bool = False) -> StreamRef:
        """The stream storing `key`: the configured one, an existing one, or a new one."""
        if not refresh:
            known = self._streams.get(key)
            if known is not None:
                return known
        connection = self._connection
        await connection.ready(deadline)
        js = connection.js
        assert js is not None
        configured = self.settings.stream
        if configured is not None:
            if self._configured is None or refresh:
                try:
                    info = await js.stream_info(configured)
                except nats.js.errors.NotFoundError:
                    raise ConfigurationError(
                        self.name,
                        {"ABE_NATS_STREAM": f"names {configured!r}, a stream that does not exist"},
                    ) from None
                self._configured = list(info.config.subjects or [])
            if any(subject_matches(pattern, key) for pattern in self._configured):
                ref = StreamRef(configured, self._configured == [key], created=False)
                self._streams[key] = ref
                return ref
        ref = await self._existing_stream(js, key) or await self._create_stream(js, key)
        self._streams[key] = ref
        return ref

    async def _existing_stream(self, js: JetStreamContext, key: str) -> StreamRef | None:
        try:
            name = await js.find_stream_name_by_subject(key)
        except nats.js.errors.NotFoundError:
            return None
        info = await js.stream_info(name)
        known = self._streams.get(key)
        created = known is not None and known.created and known.name == name
        return StreamRef(name, list(info.config.subjects or []) == [key], created)

    async def _create_stream(self, js: JetStreamContext, key: str) -> StreamRef:
        settings = self.settings
        config = api.StreamConfig(
            name=stream_name(key),
            description=_STREAM_DESCRIPTION.format(key=key),
            subjects=[key],
            retention=api.RetentionPolicy(settings.retention),
            storage=api.StorageType(settings.storage),
            num_replicas=settings.replicas,
            max_age=settings.max_age,
            max_bytes=settings.max_bytes,
            duplicate_window=settings.duplicate_window,
            discard=api.DiscardPolicy.OLD,
        )
        for name in (stream_name(key), hashed_stream_name(key)):
            try:
                await js.add_stream(config.evolve(name=name))
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code == _NO_CLUSTER:
                    raise ConfigurationError(
                        self.name,
                        {REPLICAS.name: f"is {settings.replicas}, but {exc.description}"},
                    ) from None
                if exc.err_code not in (_NAME_IN_USE, _SUBJECTS_OVERLAP):
                    raise AbeError(
                        f"nats: JetStream refused to create the stream {name!r} for key "
                        f"{key!r}: {exc.description} (err_code {exc.err_code}); check the "
                        f"ABE_NATS_* stream settings"
                    ) from exc
                # Someone created a stream for this key meanwhile, or the name is taken.
                existing = await self._existing_stream(js, key)
                if existing is not None:
                    return existing
                continue
            log.info("nats: created stream %r for key %r", name, key)
            return StreamRef(name, dedicated=True, created=True)
        raise AbeError(
            f"nats: cannot create a stream for key {key!r}: the names {stream_name(key)!r} and "
            f"{hashed_stream_name(key)!r} are taken by streams for other subjects"
        )

    async def _consumer_for(self, stream: StreamRef, key: str, group: str) -> str:
        """Create (or update, or adopt) the durable pull consumer of `group` on `key`."""
        js = self._connection.js
        if js is None:
            raise BackendUnavailableError("nats: not connected")
        durable = consumer_name(group, key, dedicated=stream.dedicated)
        config = api.ConsumerConfig(
            name=durable,
            durable_name=durable,
            description=f"abe group {group} on {key}",
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.settings.redelivery_timeout,
            max_deliver=-1,
            filter_subject=key,
            max_ack_pending=-1,
            replay_policy=api.ReplayPolicy.INSTANT,
        )
        try:
            await js.add_consumer(stream.name, config)
        except nats.js.errors.BadRequestError as exc:
            # It exists with settings that cannot be changed in place: use it as it is.
            try:
                info = await js.consumer_info(stream.name, durable)
            except nats.js.errors.NotFoundError:
                raise exc from None
            if info.config.deliver_subject:
                raise AbeError(
                    f"nats: consumer {durable!r} on stream {stream.name!r} is a push consumer; "
                    f"abe groups are pull consumers. Delete it or use another group name"
                ) from exc
            log.info("nats: using the existing consumer %r on %r as it is", durable, stream.name)
        return durable

    async def _delete_keys(self, keys: Sequence[str]) -> None:
        """Delete the streams abe made for `keys`; in any other stream, purge just those keys.

        A stream abe created holds one key and says so in its description; a stream an
        operator made (or ABE_NATS_STREAM names) is kept, losing only the key's messages
        and the consumers that read it.
        """
        loop = asyncio.get_running_loop()
        await self._connection.ready(loop.time() + self.settings.operation_timeout)
        js = self._connection.js
        assert js is not None
        for key in keys:
            self._streams.pop(key, None)
            try:
                name = await js.find_stream_name_by_subject(key)
            except nats.js.errors.NotFoundError:
                continue
            info = await js.stream_info(name)
            if info.config.description == _STREAM_DESCRIPTION.format(key=key):
                await js.delete_stream(name)
                log.info("nats: deleted stream %r of key %r", name, key)
                continue
            for consumer in await _consumers(js, name):
                config = consumer.config
                filters = config.filter_subjects or [config.filter_subject or ">"]
                if filters == [key]:
                    await js.delete_consumer(name, consumer.name)
            await js.purge_stream(name, subject=key)

    # ---- consuming ---------------------------------------------------------------------------

    async def _open_receiver(self, group: str, keys: Sequence[str]) -> Receiver:
        try:
            bindings = await self._connection.unless_closed(self._bind(group, keys))
        except ConnectionClosing:
            # close() was called while joining: the subscription is stopped already and
            # only needs a receiver it can close.
            bindings = []
        return NatsReceiver(self, group, bindings)

    async def _bind(self, group: str, keys: Sequence[str]) -> list[Binding]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.operation_timeout * len(keys)
        await self._connection.ready(deadline)
        bindings = []
        for key in keys:
            stream = await self._stream_for(key, deadline)
            consumer = await self._consumer_for(stream, key, group)
            bindings.append(Binding(key, stream.name, consumer))
        return bindings

    async def _close(self) -> None:
        await self._connection.close()


async def _consumers(js: JetStreamContext, stream: str) -> list[api.ConsumerInfo]:
    """Every consumer of `stream` (the server lists them a page at a time)."""
    found: list[api.ConsumerInfo] = []
    while True:
        page = await js.consumers_info(stream, offset=len(found) or None)
        found += page
        if not page:
            return found


def _headers(message: OutgoingMessage, limit: int, index: int | None) -> dict[str, str]:
    """The NATS headers of `message`, or PayloadError if the server would refuse its size.

    abe adds `Nats-Msg-Id`, and drops any other `Nats-*` header: core refuses them from
    users, so they come from a foreign message being dead-lettered, where JetStream would
    act on them (`Nats-Rollup` would purge the dead-letter key).
    """
    headers = message.headers.copy()
    for name in [name for name in headers if name[:5].lower() == "nats-"]:
        del headers[name]
    headers[MSG_ID] = message.id
    characters = 0
    for name, value in headers.items():
        characters += len(name) + len(value)
    # "NATS/1.0\r\n", ": " and "\r\n" per header, the closing "\r\n"; UTF-8 takes at
    # most 4 bytes a character, so only a message near a limit needs an exact count.
    block = 12 + 4 * len(headers) + characters
    if len(message.body) + block + 3 * characters > limit or block + 3 * characters > MAX_HEADERS:
        block = 12
        for name, value in headers.items():
            block += len(name) + 4 + len(value.encode())
        where = "the message" if index is None else f"payloads[{index}]"
        if block > MAX_HEADERS:
            raise PayloadError(
                f"{where} has {block:,} bytes of NATS headers, over the {MAX_HEADERS:,} "
                f"JetStream stores (a dead letter keeps the headers of the message it copies); "
                f"send fewer or smaller headers"
            )
        size = len(message.body) + block
        if size > limit:
            raise PayloadError(
                f"{where} is {size:,} bytes with its headers, over the NATS server's "
                f"max_payload of {limit:,}; send less (or fewer headers), or raise max_payload "
                f"on the server"
            )
    return headers
