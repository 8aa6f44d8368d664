"""One aiobotocore client per backend, shared with its receivers, and the SQS calls they make.

The backend creates an `SqsClient` and hands it to every receiver it opens. It connects
on first use, resolves each key's queue once (GetQueueUrl, then CreateQueue when missing
and allowed), and runs every call on a queue again once if the queue vanished meanwhile
(deleted, or an emulator restarted). Core bounds each operation by its timeout.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
from aiobotocore.session import AioSession  # type: ignore[import-untyped]
from botocore.exceptions import ClientError, SSLError  # type: ignore[import-untyped]

from abe.errors import InvalidKeyError
from abe.provider import IncomingMessage, LazyClient
from abe_mq_sqs._errors import NONEXISTENT_QUEUE, QUEUE_EXISTS, STALE_HANDLE, error_code
from abe_mq_sqs._settings import MAX_VISIBILITY, SqsSettings
from abe_mq_sqs._version import __version__
from abe_mq_sqs._wire import BATCH_ENTRIES, incoming, is_fifo, queue_name

__all__ = ["SqsClient", "connect"]

log = logging.getLogger("abe.sqs")

MAX_CONNECTIONS = 64
"""aiohttp connections per client: long polls hold one each, sends must still find one."""
_RECEIVE_ATTRIBUTES = ["ApproximateReceiveCount", "SentTimestamp"]


async def connect(settings: SqsSettings, agent: str) -> Any:
    """An aiobotocore SQS client for `settings`; `client.__aexit__(None, None, None)` ends it.

    Explicit keys win over the profile; without either, botocore's credential chain (web
    identity, containers, instance metadata...) resolves them on the first call. The read
    timeout leaves room for a long poll; the standard retry mode makes `max_attempts`
    attempts of a throttled or failed call, but not of a failed TLS handshake, which fails
    the same way every time (retrying would only let the operation timeout hide why).
    """
    access_key, secret_key = settings.access_key_id, settings.secret_access_key
    keys = access_key is not None and secret_key is not None and bool(access_key and secret_key)
    session = AioSession(profile=settings.profile if settings.profile and not keys else None)
    config = AioConfig(
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.wait_time_seconds + settings.operation_timeout,
        retries={"max_attempts": settings.max_attempts, "mode": "standard"},
        max_pool_connections=MAX_CONNECTIONS,
        user_agent_extra=agent,
    )
    arguments: dict[str, Any] = {"region_name": settings.region, "config": config}
    if settings.endpoint_url:
        arguments["endpoint_url"] = settings.endpoint_url
    if keys and access_key is not None and secret_key is not None:
        arguments["aws_access_key_id"] = access_key.reveal()
        arguments["aws_secret_access_key"] = secret_key.reveal()
        if settings.session_token:
            arguments["aws_session_token"] = settings.session_token.reveal()
    client = await session.create_client("sqs", **arguments).__aenter__()
    client.meta.events.register_first("needs-retry.sqs", _tls_failure_is_final)
    return client


def _tls_failure_is_final(caught_exception: BaseException | None = None, **_: Any) -> None:
    """A needs-retry handler that raises a failed TLS handshake at once instead of retrying."""
    if isinstance(caught_exception, SSLError):
        raise caught_exception


@dataclass(frozen=True, slots=True)
class Queue:
    """A key's queue, resolved once: its name and URL."""

    name: str
    url: str


class SqsClient:
    """The connection and the queues of one backend; its receivers use the same ones.

    `where` describes the endpoint for error messages (never with a secret); `on_connect`
    runs once a client exists (the backend filters the loggers botocore made meanwhile).
    """

    def __init__(self, settings: SqsSettings, where: str, on_connect: Callable[[], None]) -> None:
        self.settings = settings
        self._where = where
        self._on_connect = on_connect
        self._client: LazyClient[Any] = LazyClient(
            self._connect,
            lambda client: client.__aexit__(None, None, None),
            timeout=settings.operation_timeout,
            what="this SQS backend's client",
        )
        self._queues: dict[str, Queue] = {}
        self._resolving: dict[str, asyncio.Lock] = {}

    async def _connect(self) -> Any:
        client = await connect(self.settings, f"abe-mq-sqs/{__version__}")
        self._on_connect()
        return client

    async def close(self) -> None:
        """Close the client for good (the queues it resolved are forgotten)."""
        self._queues.clear()
        await self._client.close()

    async def queue(self, key: str) -> Queue:
        """The queue of `key`, resolved (and created, when allowed) on first use."""
        queue = self._queues.get(key)
        if queue is None:
            async with self._resolving.setdefault(key, asyncio.Lock()):
                queue = self._queues.get(key) or await self._resolve(key)
                self._queues[key] = queue
        return queue

    async def _resolve(self, key: str) -> Queue:
        client = await self._client.get()
        name, fifo = queue_name(key, self.settings.queue_prefix), is_fifo(key)
        try:
            url = (await client.get_queue_url(QueueName=name))["QueueUrl"]
        except ClientError as exc:
            if error_code(exc) not in NONEXISTENT_QUEUE:
                raise
            if not self.settings.auto_create:
                raise InvalidKeyError(
                    f"sqs: the queue {name!r} of key {key!r} does not exist and "
                    f"ABE_SQS_AUTO_CREATE is false; create it{' as a FIFO queue' if fifo else ''}"
                    f", or set ABE_SQS_AUTO_CREATE=true ({self._where})"
                ) from None
            attributes = {"MaximumMessageSize": str(self.settings.queue_maximum_message_size)}
            if fifo:
                attributes.update(FifoQueue="true", ContentBasedDeduplication="false")
            try:
                url = (await client.create_queue(QueueName=name, Attributes=attributes))["QueueUrl"]
            except ClientError as exists:  # made meanwhile, perhaps with other attributes
                if error_code(exists) not in QUEUE_EXISTS:
                    raise
                url = (await client.get_queue_url(QueueName=name))["QueueUrl"]
            log.info("sqs: created queue %s", name)
        return Queue(name, str(url))

    async def call(self, key: str, method: str, *, again: bool = True, **params: Any) -> Any:
        """The client's `method` on the key's queue. If the queue vanished and `again`, it is
        resolved again (created, when allowed) and the call made once more."""
        client = await self._client.get()
        queue = await self.queue(key)
        try:
            return await getattr(client, method)(QueueUrl=queue.url, **params)
        except ClientError as exc:
            if not again or error_code(exc) not in NONEXISTENT_QUEUE:
                raise
            if self._queues.get(key) is queue:
                del self._queues[key]
            log.warning("sqs: queue %s no longer exists; resolving it again", queue.name)
            queue = await self.queue(key)
            return await getattr(client, method)(QueueUrl=queue.url, **params)

    async def delete_queue(self, key: str) -> None:
        """DeleteQueue for the key's queue if it exists (AWS keeps the name for 60 s after)."""
        self._queues.pop(key, None)
        client = await self._client.get()
        name = queue_name(key, self.settings.queue_prefix)
        try:
            found = await client.get_queue_url(QueueName=name)
            await client.delete_queue(QueueUrl=found["QueueUrl"])
        except ClientError as exc:
            if error_code(exc) not in NONEXISTENT_QUEUE:
                raise
            return
        log.info("sqs: deleted queue %s", name)

    async def receive(self, key: str, count: int, wait: int) -> list[IncomingMessage]:
        """One ReceiveMessage on the key's queue: up to `count` messages, long-polling `wait` s."""
        response = await self.call(
            key,
            "receive_message",
            MaxNumberOfMessages=max(1, min(BATCH_ENTRIES, count)),
            WaitTimeSeconds=wait,
            VisibilityTimeout=self.settings.visibility_timeout,
            MessageSystemAttributeNames=_RECEIVE_ATTRIBUTES,
            AttributeNames=_RECEIVE_ATTRIBUTES,  # what older emulators read
            MessageAttributeNames=["All"],
        )
        return [incoming(key, message) for message in response.get("Messages", ())]

    async def delete(self, messages: Sequence[IncomingMessage]) -> None:
        """DeleteMessageBatch, 10 receipt handles a call, the calls of all keys at once."""
        for code, count in (await self._per_handle(messages, "delete_message_batch")).items():
            log.warning(
                "sqs: %d acknowledgement(s) were refused (%s); those messages will be "
                "delivered again",
                count,
                code,
            )

    async def change_visibility(self, messages: Sequence[IncomingMessage], seconds: int) -> None:
        """ChangeMessageVisibilityBatch: hide the messages for `seconds` more from now."""
        extra = {"VisibilityTimeout": seconds}
        failures = await self._per_handle(messages, "change_message_visibility_batch", extra)
        for code, count in failures.items():
            log.debug("sqs: %d visibility change(s) refused (%s)", count, code)

    async def _per_handle(
        self, messages: Sequence[IncomingMessage], method: str, extra: dict[str, Any] | None = None
    ) -> dict[str, int]:
        """`method` on every message in batches of 10 per queue; refusals counted by code."""
        by_key: dict[str, list[IncomingMessage]] = {}
        for message in messages:
            by_key.setdefault(message.key, []).append(message)
        calls = [
            self.call(
                key,
                method,
                again=False,
                Entries=[
                    {"Id": str(index), "ReceiptHandle": message.handle, **(extra or {})}
                    for index, message in enumerate(group[start : start + BATCH_ENTRIES])
                ],
            )
            for key, group in by_key.items()
            for start in range(0, len(group), BATCH_ENTRIES)
        ]
        failures: dict[str, int] = {}
        for response in await asyncio.gather(*calls):
            for failure in response.get("Failed", ()):
                code = str(failure.get("Code", "Failed"))
                failures[code] = failures.get(code, 0) + 1
        return failures

    async def change_one(self, message: IncomingMessage, delay: float) -> None:
        """ChangeMessageVisibility of one message: back in the queue after `delay` seconds."""
        seconds = min(MAX_VISIBILITY, max(0, math.ceil(delay)))
        try:
            await self.call(
                message.key,
                "change_message_visibility",
                again=False,
                ReceiptHandle=message.handle,
                VisibilityTimeout=seconds,
            )
        except ClientError as exc:
            if error_code(exc) not in STALE_HANDLE:
                raise
            log.debug("sqs: nack of %s skipped: %s", message.broker_id, error_code(exc))
