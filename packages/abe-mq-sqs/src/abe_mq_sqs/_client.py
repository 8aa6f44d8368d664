"""SQS for the backend: one aiobotocore client, the calls, the wire format and the receiver.

The body is the payload's JSON; abe's id travels as the `abe-id` attribute (a retry with the
caller's id keeps it; FIFO queues deduplicate on it), the publish time is `SentTimestamp` (a
dead letter carries its original's). Headers are String attributes, or when SQS cannot carry
them so (over 10, names or values it refuses), one JSON object in `abe-headers`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

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
    OncePerKey,
    OutgoingMessage,
    Receiver,
    bounded,
    wait_event,
)
from abe_mq_sqs._errors import NONEXISTENT_QUEUE, QUEUE_EXISTS, STALE_HANDLE, error_code
from abe_mq_sqs._settings import MAX_VISIBILITY, SQS_MESSAGE_LIMIT, SqsSettings
from abe_mq_sqs._version import __version__

log = logging.getLogger("abe.sqs")

BATCH_ENTRIES = 10  # the most entries of SendMessageBatch, DeleteMessageBatch...
FIFO = ".fifo"
_NAME = re.compile(r"(?!(?i:aws|amazon)\.)(?!.*\.\.)[\w-](?:[\w.-]{0,254}[\w-])?", re.ASCII)
_REFUSED_TEXT = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")  # not XML 1.0
_GENERATED = (HEADER_PUBLISHED_AT,)
_RELEASE_TIMEOUT = 5.0
_STARVED_RETURN = 1.0  # the longest wait while a queue has no poll: credit may come back
_SHORT_RECEIVE_PAUSE = 0.01  # after a receive that did not fill a batch (SQS bills requests)
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


def encode_attributes(headers: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """The message attributes carrying `headers`: native, or packed (see the module docstring)."""

    def _native(name: str, value: str) -> bool:  # whether it can be a String attribute itself
        return bool(value and _NAME.fullmatch(name) and not _REFUSED_TEXT.search(value))

    native = len(headers) <= 10 and all(map(_native, headers, headers.values()))
    own = {n: v for n, v in headers.items() if n.startswith(HEADER_PREFIX) and _native(n, v)}
    shown = dict(headers) if native else own  # abe's own headers travel natively if they can
    packed = {name: value for name, value in headers.items() if name not in shown}
    if packed:
        text = json.dumps(packed, ensure_ascii=False, separators=(",", ":"))
        if _REFUSED_TEXT.search(text) is not None:  # U+FFFE / U+FFFF: escape everything
            text = json.dumps(packed, separators=(",", ":"))
        shown[HEADER_PACKED] = text
    return {name: {"DataType": "String", "StringValue": value} for name, value in shown.items()}


def decode_attributes(attributes: Mapping[str, Mapping[str, Any]] | None) -> dict[str, str]:
    """Headers from any producer's attributes: Binary ones in base64, `abe-headers` unpacked."""
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
    """A received message for core: its attempt is SQS's `ApproximateReceiveCount`."""
    headers = decode_attributes(message.get("MessageAttributes"))  # a dead letter's own first
    system = message.get("Attributes") or {}
    sqs = {HEADER_ID: message.get("MessageId"), HEADER_PUBLISHED_AT: system.get("SentTimestamp")}
    headers = {name: str(value) for name, value in sqs.items() if value} | headers
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
    """SendMessage parameters, or PayloadError over `limit` bytes; a dead letter's note is cut."""
    # U+FFFE and U+FFFF, which SQS refuses, become JSON escapes (the same JSON value)
    text = message.body.decode().replace("\ufffe", "\\ufffe").replace("\uffff", "\\uffff")
    forwarded = HEADER_ORIGINAL_KEY in message.headers  # a dead letter: its original's id, time
    headers = {n: v for n, v in message.headers.items() if forwarded or n not in _GENERATED}
    attributes = encode_attributes(headers) if headers else {}

    def size() -> int:  # as SQS counts it: the body, each attribute's name, type and value
        sizes = (len(f"{n}String{a['StringValue']}".encode()) for n, a in attributes.items())
        return len(text.encode()) + sum(sizes)

    if size() > limit and HEADER_ERROR in headers:
        room = len(headers[HEADER_ERROR].encode()) - (size() - limit)
        note = headers[HEADER_ERROR].encode()[: max(room, 0)].decode(errors="ignore")
        attributes = encode_attributes({**headers, HEADER_ERROR: note or "(see logs)"})
    if size() > limit:
        raise PayloadError(
            f"{f'payloads[{index}]: ' if index else ''}the message to {key!r} is {size():,} bytes "
            f"with its headers (SQS counts attribute names and values), over the {limit:,} this "
            f"backend sends (SQS's limit is 1 MiB per message); nothing was published"
        )
    params: dict[str, Any] = {"MessageBody": text}
    if attributes:
        params["MessageAttributes"] = attributes
    if is_fifo(key):
        params.update(MessageGroupId=key, MessageDeduplicationId=message.id)
    return Entry(index, params, size())


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
    """An aiobotocore SQS client: keys, else the profile, else botocore's chain of sources."""
    key, secret, token = settings.access_key_id, settings.secret_access_key, settings.session_token
    keys: dict[str, Any] = {}
    if key and secret:
        keys = {"aws_access_key_id": key.reveal(), "aws_secret_access_key": secret.reveal()}
        keys["aws_session_token"] = token.reveal() if token else None
    config = AioConfig(
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.wait_time_seconds + settings.operation_timeout,  # a long poll
        retries={"max_attempts": settings.max_attempts, "mode": "standard"},
        max_pool_connections=64,  # long polls hold one each; sends must still find one
        user_agent_extra=agent,
    )
    session, url = AioSession(profile=None if keys else settings.profile), settings.endpoint_url
    context = session.create_client("sqs", settings.region, endpoint_url=url, config=config, **keys)
    client = await context.__aenter__()

    def tls_failure_is_final(caught_exception: BaseException | None = None, **_: Any) -> None:
        if isinstance(caught_exception, SSLError):  # it fails the same way every time
            raise caught_exception

    client.meta.events.register_first("needs-retry.sqs", tls_failure_is_final)
    return client


class SqsClient:
    """A backend's client, made on first use, and its queues' URLs, shared with its receivers."""

    def __init__(self, settings: SqsSettings, where: str, on_connect: Callable[[], None]) -> None:
        self.settings = settings
        self._where = where
        self._on_connect = on_connect
        close = lambda client: client.__aexit__(None, None, None)  # noqa: E731
        timeout = settings.operation_timeout
        self._client = LazyClient(self._connect, close, timeout=timeout, what="the SQS client")
        self._urls: OncePerKey[str, str] = OncePerKey(self._resolve)

    async def _connect(self) -> Any:
        client = await connect(self.settings, f"abe-mq-sqs/{__version__}")
        self._on_connect()
        return client

    async def close(self) -> None:
        await self._client.close()

    async def url(self, key: str) -> str:
        """The URL of the key's queue, resolved (and the queue created, if allowed) on first use."""
        return await self._urls.get(key)

    async def exists(self, key: str) -> bool:
        """Whether the key's queue exists now, by GetQueueUrl: never creates it."""
        return await self._lookup(queue_name(key, self.settings.queue_prefix)) is not None

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
        if (url := await self._lookup(name)) is not None:
            return url
        if not self.settings.auto_create:
            raise InvalidKeyError(
                f"sqs: key {key!r} has no queue {name!r} ({self._where}) and ABE_SQS_AUTO_CREATE "
                f"is false; create it{' as FIFO' if fifo else ''} or set ABE_SQS_AUTO_CREATE=true"
            )
        attributes = {"MaximumMessageSize": str(self.settings.max_message_bytes)}
        attributes |= {"FifoQueue": "true", "ContentBasedDeduplication": "false"} if fifo else {}
        try:
            client = await self._client.get()
            url = (await client.create_queue(QueueName=name, Attributes=attributes))["QueueUrl"]
        except ClientError as exc:  # made meanwhile, perhaps with other attributes
            if error_code(exc) not in QUEUE_EXISTS:
                raise
            url = (await client.get_queue_url(QueueName=name))["QueueUrl"]
        log.info("sqs: created queue %s", name)
        return str(url)

    async def call(self, key: str, method: str, *, again: bool = True, **params: Any) -> Any:
        """The client's `method` on the key's queue, made again once if the queue vanished."""
        client = await self._client.get()
        url = await self.url(key)
        try:
            return await getattr(client, method)(QueueUrl=url, **params)
        except ClientError as exc:
            if not again or error_code(exc) not in NONEXISTENT_QUEUE:
                raise
            self._urls.forget(key, url)  # unless resolved again meanwhile
            log.warning("sqs: the queue of %s no longer exists; resolving it again", key)
            return await getattr(client, method)(QueueUrl=await self.url(key), **params)

    async def delete_queue(self, key: str) -> None:
        """DeleteQueue for the key's queue if it exists (AWS keeps the name for 60 s after)."""
        self._urls.forget(key)
        name = queue_name(key, self.settings.queue_prefix)
        if (url := await self._lookup(name)) is not None:
            await (await self._client.get()).delete_queue(QueueUrl=url)
            log.info("sqs: deleted queue %s", name)

    async def receive(self, key: str, count: int, wait: int) -> list[IncomingMessage]:
        """One ReceiveMessage on the key's queue: up to `count` messages, long-polling `wait` s."""
        visibility, count = self.settings.visibility_timeout, max(1, min(BATCH_ENTRIES, count))
        params = {"WaitTimeSeconds": wait, "VisibilityTimeout": visibility, **_RECEIVE}
        response = await self.call(key, "receive_message", MaxNumberOfMessages=count, **params)
        return [incoming(key, message) for message in response.get("Messages", ())]

    async def settle(self, messages: Sequence[IncomingMessage], hide: int | None = None) -> None:
        """Delete the messages (`hide` None) or hide them `hide` more seconds: in batches of 10."""
        method = "delete_message_batch" if hide is None else "change_message_visibility_batch"
        extra = {} if hide is None else {"VisibilityTimeout": hide}
        calls = []
        for key in dict.fromkeys(message.key for message in messages):
            mine = [message for message in messages if message.key == key]
            for start in range(0, len(mine), BATCH_ENTRIES):
                chunk = enumerate(mine[start : start + BATCH_ENTRIES])
                entries = [{"Id": str(n), "ReceiptHandle": m.handle, **extra} for n, m in chunk]
                calls.append(self.call(key, method, again=False, Entries=entries))
        failed = [
            f for response in await asyncio.gather(*calls) for f in response.get("Failed", ())
        ]
        for code, count in Counter(str(f.get("Code", "Failed")) for f in failed).items():
            if hide is None:
                log.warning(
                    "sqs: %d acknowledgement(s) refused (%s): delivered again later", count, code
                )
            else:
                log.debug("sqs: %d visibility change(s) refused (%s)", count, code)

    async def change_one(self, message: IncomingMessage, delay: float) -> None:
        """One message back in the queue after `delay` s (unless already visible or deleted)."""
        seconds = min(MAX_VISIBILITY, max(0, math.ceil(delay)))
        params = {"ReceiptHandle": message.handle, "VisibilityTimeout": seconds}
        try:
            await self.call(message.key, "change_message_visibility", again=False, **params)
        except ClientError as exc:
            if error_code(exc) not in STALE_HANDLE:
                raise
            log.debug("sqs: nack of %s skipped: %s", message.broker_id, error_code(exc))


class SqsReceiver(Receiver):
    """A long poll per queue: the first to bring messages ends the fetch, the others carry over.
    While it holds a FIFO key's messages (SQS sends no more meanwhile) it polls briefly."""

    ack_batch_size: ClassVar[int] = BATCH_ENTRIES  # DeleteMessageBatch takes 10 handles
    ack_linger = 0.005  # SQS charges per request: one delete per batch read

    def keeps_order(self, key: str) -> bool:
        return is_fifo(key)

    def __init__(self, sqs: SqsClient, keys: tuple[str, ...]) -> None:
        self._sqs = sqs
        self._keys = keys
        self._polls: dict[str, asyncio.Task[list[IncomingMessage]]] = {}
        self._asked: dict[str, int] = {}
        self._turn = 0
        self._held = dict.fromkeys(filter(is_fifo, keys), 0)  # FIFO messages not yet settled
        self._settled = {key: asyncio.Event() for key in self._held}
        self._next_receive = 0.0

    async def fetch(self, max_messages: int, timeout: float) -> Sequence[IncomingMessage]:
        wait = min(self._sqs.settings.wait_time_seconds, max(0, int(timeout)))
        if self._next_receive > time.monotonic():  # let a fuller batch gather after a short one
            await asyncio.sleep(self._next_receive - time.monotonic())
        if len(self._keys) == 1 and self._held.get(self._keys[0]):
            await wait_event(self._settled[self._keys[0]], min(1.0, timeout))
        limit = min(timeout, _STARVED_RETURN) if self._start_polls(max_messages, wait) else timeout
        polls = set(self._polls.values())
        await asyncio.wait(polls, timeout=max(limit, 0.0), return_when=asyncio.FIRST_COMPLETED)
        messages, error = self._collect()
        if error is not None and not messages:
            raise error
        if error is not None:
            log.debug("sqs: one queue's poll failed (%s); polling it again", error)
        self._count(messages, 1)
        if 0 < len(messages) < min(max_messages, BATCH_ENTRIES):
            self._next_receive = time.monotonic() + _SHORT_RECEIVE_PAUSE
        if not messages and wait == 0 and timeout > 0:
            await asyncio.sleep(timeout)  # short polling: once per poll interval, not a spin
        return messages

    def _start_polls(self, max_messages: int, wait: int) -> int:
        """Start a poll on each queue without one, within the credit (short ones when it is
        scarce); returns how many queues got no poll for want of it."""
        credit = max_messages - sum(self._asked.values())
        keys = self._keys[self._turn :] + self._keys[: self._turn]  # take turns at the credit
        self._turn = (self._turn + 1) % len(self._keys)
        idle = [key for key in keys if key not in self._polls]
        wait = min(wait, 1) if credit < len(idle) else wait
        for position, key in enumerate(idle):
            if credit <= 0:
                return len(idle) - position
            share = max(1, min(BATCH_ENTRIES, credit // (len(idle) - position)))
            short = self._held.get(key)  # a FIFO key with messages in flight
            receive = self._sqs.receive(key, share, min(wait, 1) if short else wait)
            self._polls[key] = asyncio.get_running_loop().create_task(receive)
            self._asked[key] = share
            credit -= share
        return 0

    def _collect(self) -> tuple[list[IncomingMessage], BaseException | None]:
        """Take the finished polls: their messages, and the first error one of them raised."""
        messages: list[IncomingMessage] = []
        error: BaseException | None = None
        for key, task in [(key, task) for key, task in self._polls.items() if task.done()]:
            del self._polls[key], self._asked[key]
            if not task.cancelled() and task.exception() is not None:
                error = error or task.exception()
            elif not task.cancelled():
                messages.extend(task.result())
        return messages, error

    def _count(self, messages: Sequence[IncomingMessage], change: int) -> None:
        """Count the FIFO keys' messages fetched (+1) or settled (-1); none held is `settled`."""
        for key in (message.key for message in messages if message.key in self._held):
            held = self._held[key] = max(0, self._held[key] + change)
            (self._settled[key].clear if held else self._settled[key].set)()

    async def ack(self, messages: Sequence[IncomingMessage]) -> None:
        try:
            await self._sqs.settle(messages)
        finally:  # settled either way: deleted, or back in the queue after the timeout
            self._count(messages, -1)

    async def nack(self, message: IncomingMessage, delay: float) -> None:
        try:
            await self._sqs.change_one(message, delay)
        finally:
            self._count((message,), -1)

    async def release(self, messages: Sequence[IncomingMessage]) -> None:
        """Never handed out: visible again at once, 10 a call (SQS still counts the receipt)."""
        try:
            await self._sqs.settle(messages, hide=0)
        finally:
            self._count(messages, -1)

    async def extend(self, messages: Sequence[IncomingMessage]) -> None:
        await self._sqs.settle(messages, hide=self._sqs.settings.visibility_timeout)

    async def close(self) -> None:
        """Stop the polls in flight; messages they already brought are made visible again."""
        for task in self._polls.values():
            task.cancel()
        await asyncio.gather(*self._polls.values(), return_exceptions=True)
        unread, _ = self._collect()
        if unread:
            with contextlib.suppress(Exception):
                await bounded(self._sqs.settle(unread, hide=0), _RELEASE_TIMEOUT)
