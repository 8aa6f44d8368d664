"""NatsBackend: abe on NATS JetStream through nats-py. Keys are subjects, each stored in the
stream covering it or one abe creates; groups are durable pull consumers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from typing import ClassVar

import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from abe.errors import BackendUnavailableError, PayloadError, PublishError
from abe.provider import (
    BaseBackend,
    Capabilities,
    Deadline,
    KeyRules,
    OutgoingMessage,
    Receiver,
    Stopped,
    redact_url,
    settle,
    until_stopped,
)
from abe_mq_nats._baseline import RawNatsBaseline
from abe_mq_nats._client import DEFAULT_MAX_PAYLOAD, JetStream, NatsReceiver, consumer_name
from abe_mq_nats._errors import ERRORS
from abe_mq_nats._settings import NatsSettings

__all__ = ["HEADER_ROOM", "MAX_HEADERS", "MSG_ID", "WINDOW", "NatsBackend"]

log = logging.getLogger("abe.nats")

MSG_ID = "Nats-Msg-Id"  # JetStream deduplicates on it: a retried publish is stored once
HEADER_ROOM = 8192  # bytes of max_payload kept for headers (an eighth at most, on small servers)
MAX_HEADERS = 65535  # the largest header block JetStream stores (err_code 10097 beyond)
WINDOW = 1000  # most publishes awaiting their acknowledgement at once
_Message = tuple[bytes, dict[str, str]]  # a body and its NATS headers


class NatsBackend(BaseBackend):
    """NATS JetStream: durable, fan-out across groups, competing members within a group."""

    name: ClassVar[str] = "nats"
    capabilities: ClassVar[Capabilities] = Capabilities(
        native_delay=True, deduplication=True, max_payload_bytes=DEFAULT_MAX_PAYLOAD - HEADER_ROOM
    )
    key_rules: ClassVar[KeyRules] = KeyRules(
        max_length=200,
        allowed="A-Za-z0-9._-",
        described="letters, digits, '_', '-' and '.' between tokens (NATS subjects without "
        "wildcards '*' '>', spaces or '$')",
        broker="NATS",
        dotted=True,
    )
    settings_class: ClassVar[type[NatsSettings]] = NatsSettings
    errors = ERRORS
    client_loggers = ("nats", "abe.nats")

    def __init__(self, settings: NatsSettings | None = None) -> None:
        settings = settings or NatsSettings()
        super().__init__(settings)
        self.settings: NatsSettings = settings
        self._jetstream = JetStream(settings, self._describe(), self.secret_filter.scrub)
        self._publisher = _Publisher()

    @property
    def max_payload_bytes(self) -> int:
        """The server's max_payload (1 MiB until connected) less room for the headers."""
        limit = self._jetstream.max_payload
        return limit - min(HEADER_ROOM, limit // 8)

    def _describe(self) -> str:
        return redact_url(",".join(self.settings.servers))

    def raw_baseline(self) -> RawNatsBaseline:
        """The bench workloads written directly with nats-py, on the same servers."""
        return RawNatsBaseline(self.settings)

    async def _send(self, key: str, messages: Sequence[OutgoingMessage]) -> None:
        """Sizes are checked once connected (max_payload known), before the stream is made."""
        deadline = Deadline(self.settings.operation_timeout * (1 + len(messages) // 1000))
        client = await self._jetstream.ready(deadline)
        limit, single = self._jetstream.max_payload, len(messages) == 1
        batch = [
            (message.body, _headers(message, limit, None if single else index))
            for index, message in enumerate(messages)
        ]
        await self._jetstream.stream_for(key, deadline)
        failed = await self._publisher.publish(client, key, batch, deadline)
        # No stream answered: gone, lost in a restart, or just made and without a leader yet.
        gone = nats.js.errors.NoStreamResponseError
        while len(failed) == len(batch) and deadline.remaining > 0.1:
            if not all(isinstance(error, gone) for error in failed.values()):
                break
            await asyncio.sleep(0.1)
            await self._jetstream.stream_for(key, deadline, refresh=True)
            failed = await self._publisher.publish(client, key, batch, deadline)
        if len(failed) == len(batch):
            raise next(iter(failed.values()))
        if failed:
            reasons = {index: str(self._translate_error(error)) for index, error in failed.items()}
            raise PublishError(key, reasons, len(batch))

    async def _open_receiver(self, group: str, keys: Sequence[str]) -> Receiver:
        receiver = NatsReceiver(self._jetstream, group, keys)
        deadline = Deadline(self.settings.operation_timeout * len(keys))
        # close() called while joining: the subscription is stopped and only needs a receiver.
        with contextlib.suppress(Stopped):
            await until_stopped(receiver.setup(deadline), self._jetstream.stopped)
        return receiver

    async def _delete_keys(self, keys: Sequence[str]) -> None:
        """Delete the streams abe made for `keys`; purge other streams of just those keys."""
        ask, js = self._jetstream.ask, JetStreamContext  # js: its methods are the requests
        gone = contextlib.suppress(nats.js.errors.NotFoundError)
        for key in keys:  # a delete asked again may find it done: not found is what it wants
            self._jetstream.streams.pop(key, None)
            stream = await self._jetstream.existing_stream(key)
            if stream is not None and stream.own:
                with gone:
                    await ask(None, js.delete_stream, stream.name)
                log.info("nats: deleted stream %r of key %r", stream.name, key)
            elif stream is not None:
                consumers: list[api.ConsumerInfo] = []  # the server lists them a page at a time
                while page := await ask(
                    None, js.consumers_info, stream.name, offset=len(consumers) or None
                ):
                    consumers += page
                for consumer in consumers:
                    config = consumer.config
                    if (config.filter_subjects or [config.filter_subject or ">"]) == [key]:
                        with gone:
                            await ask(None, js.delete_consumer, stream.name, consumer.name)
                await ask(None, js.purge_stream, stream.name, subject=key)

    async def _existing_keys(self, keys: Sequence[str]) -> Sequence[str]:
        """The keys a stream covers now (a lookup: no stream is created)."""
        return [key for key in keys if await self._jetstream.existing_stream(key)]

    async def _delete_group(self, group: str, keys: Sequence[str]) -> None:
        """Delete the durable consumer of `group` on each key's stream; the messages stay."""
        for key in keys:
            if stream := await self._jetstream.existing_stream(key):
                durable = consumer_name(group, key, dedicated=stream.dedicated)
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await self._jetstream.ask(
                        None, JetStreamContext.delete_consumer, stream.name, durable
                    )

    async def _close(self) -> None:
        await self._jetstream.close()


def _headers(message: OutgoingMessage, limit: int, index: int | None) -> dict[str, str]:
    """The NATS headers of `message`, or PayloadError if the server would refuse its size.
    A dead letter's `Nats-*` headers (core refuses them from users) go: JetStream acts on them."""
    headers = {
        name: value for name, value in message.headers.items() if name[:5].lower() != "nats-"
    }
    headers[MSG_ID] = message.id
    # "NATS/1.0\r\n", then "name: value\r\n" for each header, then "\r\n".
    block = 12 + sum(len(name) + 4 + len(value.encode()) for name, value in headers.items())
    where = "the message" if index is None else f"payloads[{index}]"
    if block > MAX_HEADERS:
        raise PayloadError(
            f"{where} has {block:,} bytes of NATS headers, over the {MAX_HEADERS:,} JetStream "
            f"stores (a dead letter keeps those it copies); send fewer or smaller headers"
        )
    if len(message.body) + block > limit:
        raise PayloadError(
            f"{where} is {len(message.body) + block:,} bytes with its headers, over the NATS "
            f"server's max_payload of {limit:,}; send less, or raise max_payload on the server"
        )
    return headers


class _Publisher:
    """JetStream publishes acknowledged on one inbox of the client, each of which ends: stored,
    refused or timed out (nats-py's `publish_async()` never ends a refused one, issue #985)."""

    def __init__(self) -> None:
        self._client: NatsClient | None = None
        self._prefix = ""
        self._pending: dict[str, asyncio.Future[None]] = {}
        self._counter = 0

    async def publish(
        self, client: NatsClient, subject: str, messages: Sequence[_Message], deadline: Deadline
    ) -> dict[int, Exception]:
        """Publish `(body, headers)` pairs in order, a window of them awaiting acknowledgements
        at a time; the failures by index (empty: all stored)."""
        if client is not self._client:  # a new connection: an inbox for the replies on it
            self._prefix = f"{client.new_inbox()}."
            await client.subscribe(f"{self._prefix}*", cb=self._on_reply)
            self._client = client
        failed: dict[int, Exception] = {}
        for start in range(0, len(messages), WINDOW):
            end = min(start + WINDOW, len(messages))
            if failed:  # something is wrong (refusals, or no answer): do not send the rest
                later = BackendUnavailableError("nats: not sent after earlier failures")
                failed.update(dict.fromkeys(range(start, len(messages)), later))
                break
            sent: dict[str, asyncio.Future[None]] = {}
            try:
                for index, (body, headers) in enumerate(messages[start:end], start):
                    self._counter += 1
                    token = str(self._counter)
                    sent[token] = self._pending[token] = asyncio.get_running_loop().create_future()
                    try:
                        await client.publish(
                            subject, body, reply=self._prefix + token, headers=headers
                        )
                    except Exception as exc:  # not sent: this message and the rest of the window
                        sent[token].set_exception(exc)
                        failed.update(dict.fromkeys(range(index + 1, end), exc))
                        break
                await settle(sent.values(), deadline.remaining, _unacknowledged)
            finally:
                for token in sent:
                    self._pending.pop(token, None)
            for index, future in enumerate(sent.values(), start):
                if isinstance(error := future.exception(), Exception):
                    failed[index] = error
        return failed

    async def _on_reply(self, msg: Msg) -> None:
        future = self._pending.get(msg.subject.rpartition(".")[2])
        if future is None or future.done():
            return
        try:
            if msg.headers and msg.headers.get("Status") == "503":
                raise nats.js.errors.NoStreamResponseError
            if error := json.loads(msg.data).get("error"):
                nats.js.errors.APIError.from_error(error)  # raises the matching APIError subclass
            future.set_result(None)
        except nats.js.errors.Error as refused:
            future.set_exception(refused)
        except (ValueError, AttributeError):
            odd = BackendUnavailableError("nats: JetStream answered a publish with something odd")
            future.set_exception(odd)


def _unacknowledged() -> BackendUnavailableError:
    return BackendUnavailableError("nats: JetStream did not acknowledge the message in time")
