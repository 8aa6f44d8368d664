"""SQS for the backend and its receivers: one aiobotocore client, the calls, the wire format.

On the wire the body is the payload's JSON text and nothing else. abe's message id and
publish time are SQS's `MessageId` and `SentTimestamp`: only a forwarded message (a dead
letter) keeps its original's as `abe-id` and `abe-published-at`. Other headers travel as
String message attributes of the same name, or, when SQS cannot carry them so (more than
10, a name or value it refuses), the user headers together as JSON in `abe-headers`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
from aiobotocore.session import AioSession  # type: ignore[import-untyped]
from botocore.exceptions import ClientError, SSLError  # type: ignore[import-untyped]

from abe.errors import InvalidKeyError, PayloadError
from abe.provider import (
    DEAD_LETTER_SUFFIX,
    HEADER_ERROR,
    HEADER_ID,
    HEADER_ORIGINAL_KEY,
    HEADER_PACKED,
    HEADER_PREFIX,
    HEADER_PUBLISHED_AT,
    IncomingMessage,
    LazyClient,
    OutgoingMessage,
)
from abe_mq_sqs._errors import NONEXISTENT_QUEUE, QUEUE_EXISTS, STALE_HANDLE, error_code
from abe_mq_sqs._settings import MAX_VISIBILITY, SQS_MESSAGE_LIMIT, SqsSettings
from abe_mq_sqs._version import __version__

log = logging.getLogger("abe.sqs")

BATCH_ENTRIES = 10
"""SendMessageBatch, DeleteMessageBatch and ChangeMessageVisibilityBatch take at most 10."""
FIFO = ".fifo"
_ATTRIBUTE_NAME = re.compile(r"[A-Za-z0-9_-](?:[A-Za-z0-9_.-]{0,254}[A-Za-z0-9_-])?")
_REFUSED_TEXT = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
"""Characters SQS refuses in a body or attribute value (XML 1.0's character set)."""
_GENERATED = (HEADER_ID, HEADER_PUBLISHED_AT)
_READ = ["ApproximateReceiveCount", "SentTimestamp"]
_RECEIVE: dict[str, Any] = {"MessageSystemAttributeNames": _READ, "AttributeNames": _READ}
_RECEIVE["MessageAttributeNames"] = ["All"]  # AttributeNames: what older emulators read


def queue_name(key: str, prefix: str = "") -> str:
    """The SQS queue name of `key`: `orders.fifo-dlq` becomes `orders-dlq.fifo`, others stay."""
    base, fifo, dead_letters = key.partition(FIFO)
    return prefix + (base + dead_letters + FIFO if fifo and dead_letters else key)


def is_fifo(key: str) -> bool:
    """Whether `key` names a FIFO queue (ordered per key, deduplicated by abe's message id)."""
    _, fifo, dead_letters = key.partition(FIFO)
    return bool(fifo) and dead_letters.replace(DEAD_LETTER_SUFFIX, "") == ""


def _native(name: str, value: str) -> bool:
    """Whether a header can travel as its own String attribute."""
    valid = bool(value) and _ATTRIBUTE_NAME.fullmatch(name) is not None and ".." not in name
    return (
        valid
        and not name.lower().startswith(("aws.", "amazon."))
        and not _REFUSED_TEXT.search(value)
    )


def encode_attributes(headers: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """The message attributes carrying `headers` (see the module docstring for the layout)."""
    native = len(headers) <= 10 and all(_native(name, value) for name, value in headers.items())
    packed = {
        name: value
        for name, value in headers.items()
        if not native and not (name.startswith(HEADER_PREFIX) and _native(name, value))
    }
    shown = {name: value for name, value in headers.items() if name not in packed}
    if packed:
        text = json.dumps(packed, ensure_ascii=False, separators=(",", ":"))
        if _REFUSED_TEXT.search(text) is not None:  # U+FFFE / U+FFFF: escape everything
            text = json.dumps(packed, separators=(",", ":"))
        shown[HEADER_PACKED] = text
    return {name: {"DataType": "String", "StringValue": value} for name, value in shown.items()}


def wire_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    """The headers a message carries as attributes: a published one neither `abe-id` nor
    `abe-published-at` (SQS's own stand for them), a forwarded one (a dead letter) both."""
    if HEADER_ORIGINAL_KEY in headers or HEADER_ID not in headers:
        return headers
    return {name: value for name, value in headers.items() if name not in _GENERATED}


def attributes_size(attributes: Mapping[str, Mapping[str, str]]) -> int:
    """What the attributes add to a message's size as SQS counts it: name, type and value bytes."""
    return sum(
        len(f"{name}String{item['StringValue']}".encode()) for name, item in attributes.items()
    )


def decode_attributes(attributes: Mapping[str, Mapping[str, Any]] | None) -> dict[str, str]:
    """Headers from the attributes of a received message, whoever wrote them: String and
    Number ones as text, Binary ones in base64, `abe-headers` unpacked if it is JSON."""
    headers: dict[str, str] = {}
    for name, attribute in (attributes or {}).items():
        if "StringValue" in attribute:
            headers[name] = str(attribute["StringValue"])
        elif "BinaryValue" in attribute:
            headers[name] = base64.b64encode(bytes(attribute["BinaryValue"])).decode()
    packed = headers.pop(HEADER_PACKED, None)
    try:
        unpacked = json.loads(packed) if packed is not None else {}
    except ValueError:
        unpacked = None
    if isinstance(unpacked, dict) and all(isinstance(v, str) for v in unpacked.values()):
        return headers | {name: value for name, value in unpacked.items() if name not in headers}
    return headers | {HEADER_PACKED: str(packed)}  # not a JSON object of strings: as it came


def incoming(key: str, message: Mapping[str, Any]) -> IncomingMessage:
    """A received message for core: attempt from `ApproximateReceiveCount`, and abe's id and
    publish time from `MessageId` and `SentTimestamp` unless it carries its own."""
    headers = decode_attributes(message.get("MessageAttributes"))
    system = message.get("Attributes") or {}
    if HEADER_ID not in headers and message.get("MessageId"):
        headers[HEADER_ID] = str(message["MessageId"])
    if HEADER_PUBLISHED_AT not in headers and system.get("SentTimestamp"):
        headers[HEADER_PUBLISHED_AT] = str(system["SentTimestamp"])
    count = str(system.get("ApproximateReceiveCount", ""))
    attempt = max(1, int(count)) if count.isdigit() else 1
    body, broker_id = str(message.get("Body", "")).encode(), str(message.get("MessageId", ""))
    return IncomingMessage(key, body, headers, attempt, broker_id, message.get("ReceiptHandle"))


@dataclass(frozen=True, slots=True)
class Entry:
    """One message ready for SendMessage(Batch): its index in the batch, parameters and size."""

    index: int
    params: dict[str, Any]
    size: int


def entry(key: str, index: int, message: OutgoingMessage, limit: int) -> Entry:
    """SendMessage parameters for one message, or PayloadError if it is over `limit` bytes.

    U+FFFE and U+FFFF, which SQS refuses, are written as JSON escapes (the same JSON value);
    a dead letter's note is shortened to fit rather than the letter refused.
    """
    text = message.body.decode().replace("\ufffe", "\\ufffe").replace("\uffff", "\\uffff")
    headers = dict(wire_headers(message.headers))
    attributes = encode_attributes(headers) if headers else {}
    size = len(text.encode()) + attributes_size(attributes)
    if size > limit and HEADER_ERROR in headers:
        room = len(headers[HEADER_ERROR].encode()) - (size - limit)
        note = headers[HEADER_ERROR].encode()[: max(room, 0)].decode(errors="ignore")
        attributes = encode_attributes({**headers, HEADER_ERROR: note or "(see logs)"})
        size = len(text.encode()) + attributes_size(attributes)
    if size > limit:
        raise PayloadError(
            f"{f'payloads[{index}]: ' if index else ''}the message to {key!r} is {size:,} bytes "
            f"with its headers (SQS counts attribute names and values), over the {limit:,} this "
            f"backend sends (SQS's limit is 1 MiB per message); nothing was published"
        )
    params: dict[str, Any] = {"MessageBody": text}
    if attributes:
        params["MessageAttributes"] = attributes
    if is_fifo(key):
        params.update(MessageGroupId=key, MessageDeduplicationId=message.id)
    return Entry(index, params, size)


def split_batches(entries: Sequence[Entry]) -> list[list[Entry]]:
    """Consecutive runs of entries, each within SendMessageBatch's count and total-size limits."""
    batches: list[list[Entry]] = []
    for item in entries:
        size = sum(done.size for done in batches[-1]) if batches else 0
        if not batches or len(batches[-1]) >= BATCH_ENTRIES or size + item.size > SQS_MESSAGE_LIMIT:
            batches.append([])
        batches[-1].append(item)
    return batches


async def connect(settings: SqsSettings, agent: str) -> Any:
    """An aiobotocore SQS client for `settings`; `client.__aexit__(None, None, None)` ends it.

    Explicit keys win over the profile; without either, botocore's chain (web identity,
    containers, instance metadata...) finds credentials on the first call. The standard
    retry mode retries a throttled or failed call, but not a failed TLS handshake.
    """
    arguments: dict[str, Any] = {"region_name": settings.region}
    if settings.endpoint_url:
        arguments["endpoint_url"] = settings.endpoint_url
    key, secret, token = settings.access_key_id, settings.secret_access_key, settings.session_token
    if key and secret:
        arguments.update(aws_access_key_id=key.reveal(), aws_secret_access_key=secret.reveal())
        arguments["aws_session_token"] = token.reveal() if token else None
    config = AioConfig(
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.wait_time_seconds + settings.operation_timeout,  # a long poll
        retries={"max_attempts": settings.max_attempts, "mode": "standard"},
        max_pool_connections=64,  # long polls hold one each; sends must still find one
        user_agent_extra=agent,
    )
    session = AioSession(profile=None if key and secret else settings.profile)
    client = await session.create_client("sqs", config=config, **arguments).__aenter__()
    client.meta.events.register_first("needs-retry.sqs", _tls_failure_is_final)
    return client


def _tls_failure_is_final(caught_exception: BaseException | None = None, **_: Any) -> None:
    """A needs-retry handler: a failed TLS handshake fails the same way every time."""
    if isinstance(caught_exception, SSLError):
        raise caught_exception


class SqsClient:
    """One backend's client, made on first use, and its queues, resolved once (GetQueueUrl,
    then CreateQueue when allowed); its receivers use them too. `where` describes the
    endpoint for errors; `on_connect` runs once connected (to filter new loggers)."""

    def __init__(self, settings: SqsSettings, where: str, on_connect: Callable[[], None]) -> None:
        self.settings = settings
        self._where = where
        self._on_connect = on_connect
        close = lambda client: client.__aexit__(None, None, None)  # noqa: E731
        timeout = settings.operation_timeout
        self._client = LazyClient(self._connect, close, timeout=timeout, what="the SQS client")
        self._urls: dict[str, str] = {}
        self._resolving: dict[str, asyncio.Lock] = {}

    async def _connect(self) -> Any:
        client = await connect(self.settings, f"abe-mq-sqs/{__version__}")
        self._on_connect()
        return client

    async def close(self) -> None:
        """Close the client for good (the queue URLs it resolved are forgotten)."""
        self._urls.clear()
        await self._client.close()

    async def url(self, key: str) -> str:
        """The URL of the key's queue, resolved (and the queue created, if allowed) on first use."""
        if key not in self._urls:
            async with self._resolving.setdefault(key, asyncio.Lock()):
                if key not in self._urls:
                    self._urls[key] = await self._resolve(key)
        return self._urls[key]

    async def _lookup(self, name: str) -> str | None:
        """GetQueueUrl, or None when there is no such queue."""
        try:
            return str((await (await self._client.get()).get_queue_url(QueueName=name))["QueueUrl"])
        except ClientError as exc:
            if error_code(exc) in NONEXISTENT_QUEUE:
                return None
            raise

    async def _resolve(self, key: str) -> str:
        name, fifo = queue_name(key, self.settings.queue_prefix), is_fifo(key)
        url = await self._lookup(name)
        if url is not None:
            return url
        if not self.settings.auto_create:
            raise InvalidKeyError(
                f"sqs: the queue {name!r} of key {key!r} does not exist and ABE_SQS_AUTO_CREATE "
                f"is false; create it{' as a FIFO queue' if fifo else ''}, or set "
                f"ABE_SQS_AUTO_CREATE=true ({self._where})"
            )
        attributes = {"MaximumMessageSize": str(self.settings.max_message_bytes)}
        if fifo:
            attributes.update(FifoQueue="true", ContentBasedDeduplication="false")
        try:
            client = await self._client.get()
            url = (await client.create_queue(QueueName=name, Attributes=attributes))["QueueUrl"]
        except ClientError as exc:  # made meanwhile, perhaps with other attributes
            if error_code(exc) not in QUEUE_EXISTS:
                raise
            url = await self._lookup(name)
        log.info("sqs: created queue %s", name)
        return str(url)

    async def call(self, key: str, method: str, *, again: bool = True, **params: Any) -> Any:
        """The client's `method` on the key's queue; if the queue vanished and `again`, it is
        resolved again (created, when allowed) and the call made once more."""
        client = await self._client.get()
        url = await self.url(key)
        try:
            return await getattr(client, method)(QueueUrl=url, **params)
        except ClientError as exc:
            if not again or error_code(exc) not in NONEXISTENT_QUEUE:
                raise
            if self._urls.get(key) == url:
                del self._urls[key]
            log.warning("sqs: the queue of %s no longer exists; resolving it again", key)
            return await getattr(client, method)(QueueUrl=await self.url(key), **params)

    async def delete_queue(self, key: str) -> None:
        """DeleteQueue for the key's queue if it exists (AWS keeps the name for 60 s after)."""
        self._urls.pop(key, None)
        name = queue_name(key, self.settings.queue_prefix)
        url = await self._lookup(name)
        if url is not None:
            await (await self._client.get()).delete_queue(QueueUrl=url)
            log.info("sqs: deleted queue %s", name)

    async def receive(self, key: str, count: int, wait: int) -> list[IncomingMessage]:
        """One ReceiveMessage on the key's queue: up to `count` messages, long-polling `wait` s."""
        visibility, count = self.settings.visibility_timeout, max(1, min(BATCH_ENTRIES, count))
        params = {"WaitTimeSeconds": wait, "VisibilityTimeout": visibility, **_RECEIVE}
        response = await self.call(key, "receive_message", MaxNumberOfMessages=count, **params)
        return [incoming(key, message) for message in response.get("Messages", ())]

    async def settle(self, messages: Sequence[IncomingMessage], hide: int | None = None) -> None:
        """Delete the messages (`hide` None), or hide them for `hide` more seconds from now:
        DeleteMessageBatch or ChangeMessageVisibilityBatch, 10 a call, all calls at once."""
        method = "delete_message_batch" if hide is None else "change_message_visibility_batch"
        extra = {} if hide is None else {"VisibilityTimeout": hide}
        calls = []
        for key in dict.fromkeys(message.key for message in messages):
            mine = [message for message in messages if message.key == key]
            for start in range(0, len(mine), BATCH_ENTRIES):
                chunk = enumerate(mine[start : start + BATCH_ENTRIES])
                entries = [{"Id": str(n), "ReceiptHandle": m.handle, **extra} for n, m in chunk]
                calls.append(self.call(key, method, again=False, Entries=entries))
        responses = await asyncio.gather(*calls)
        for code, count in Counter(
            str(failure.get("Code", "Failed")) for r in responses for failure in r.get("Failed", ())
        ).items():
            if hide is None:
                log.warning("sqs: %d acknowledgement(s) were refused (%s); %s", count, code, _AGAIN)
            else:
                log.debug("sqs: %d visibility change(s) refused (%s)", count, code)

    async def change_one(self, message: IncomingMessage, delay: float) -> None:
        """ChangeMessageVisibility of one message: back in the queue after `delay` seconds
        (skipped when its receipt handle is stale: it is visible again, or deleted)."""
        seconds = min(MAX_VISIBILITY, max(0, math.ceil(delay)))
        params = {"ReceiptHandle": message.handle, "VisibilityTimeout": seconds}
        try:
            await self.call(message.key, "change_message_visibility", again=False, **params)
        except ClientError as exc:
            if error_code(exc) not in STALE_HANDLE:
                raise
            log.debug("sqs: nack of %s skipped: %s", message.broker_id, error_code(exc))


_AGAIN = "those messages will be delivered again"
