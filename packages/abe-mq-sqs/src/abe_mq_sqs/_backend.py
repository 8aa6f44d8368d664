"""The SQS backend: keys are queues, one aiobotocore client per backend, groups compete.

Core (BaseBackend) validates, encodes, batches acknowledgements, dead-letters and runs
the consumer; this module moves messages: SendMessage / SendMessageBatch out,
ReceiveMessage in, DeleteMessageBatch for acknowledgements and ChangeMessageVisibility
for nacks and for handlers that are still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from abe.backends.message_queue.base.backend import BaseBackend
from abe.backends.message_queue.base.capabilities import Capabilities
from abe.backends.message_queue.base.codec import (
    HEADER_ERROR,
    IncomingMessage,
    OutgoingMessage,
)
from abe.backends.message_queue.base.keys import DEAD_LETTER_SUFFIX
from abe.backends.message_queue.base.receiver import Receiver
from abe.errors import BackendUnavailableError, InvalidKeyError, PayloadError, PublishError
from abe.redaction import redact_url
from abe.settings import Variable
from abe_mq_sqs._baseline import RawSqsBaseline
from abe_mq_sqs._client import sqs_client
from abe_mq_sqs._errors import (
    NONEXISTENT_QUEUE,
    QUEUE_EXISTS,
    STALE_HANDLE,
    error_code,
    scrub_chain,
    translate,
)
from abe_mq_sqs._logs import protect_client_logs, secret_filter
from abe_mq_sqs._receiver import SqsReceiver
from abe_mq_sqs._settings import DEFAULT_MAX_PAYLOAD, MAX_VISIBILITY, VARIABLES, SqsSettings
from abe_mq_sqs._version import __version__
from abe_mq_sqs._wire import (
    BATCH_ENTRIES,
    QUEUE_NAME_LIMIT,
    Entry,
    SqsKeyRules,
    attributes_size,
    body_text,
    encode_attributes,
    headers_of,
    is_fifo,
    queue_name,
    split_batches,
    wire_headers,
)

if TYPE_CHECKING:
    from typing_extensions import Self

    from abe.benchmarking import RawBaseline

__all__ = ["SqsBackend"]

log = logging.getLogger("abe.sqs")
T = TypeVar("T")

SEND_CONCURRENCY = 8
"""SendMessageBatch calls one publish_many keeps in flight (standard queues)."""
_RECEIVE_ATTRIBUTES = ["ApproximateReceiveCount", "SentTimestamp"]


@dataclass(frozen=True, slots=True)
class Queue:
    """A key's queue, resolved once: its name, URL and whether it is FIFO."""

    key: str
    name: str
    url: str
    fifo: bool


class SqsBackend(BaseBackend):
    """Amazon SQS through aiobotocore. Build it with `from_env()` (or `load_backend("sqs")`).

    Each key is a queue (created on first use unless ABE_SQS_AUTO_CREATE=false); a key
    ending in `.fifo` is a FIFO queue. SQS has no consumer groups: every group reading
    a queue competes for its messages. Use `async with`, or `close()` when done.
    """

    name: ClassVar[str] = "sqs"
    capabilities: ClassVar[Capabilities] = Capabilities(
        fan_out=False,
        per_key_ordering=False,
        persistence=True,
        native_delay=True,
        max_payload_bytes=DEFAULT_MAX_PAYLOAD,
        remote=True,
    )
    key_rules: ClassVar[SqsKeyRules] = SqsKeyRules(
        max_length=QUEUE_NAME_LIMIT,
        allowed="A-Za-z0-9_.-",
        described="letters, digits, '_' and '-' (and '.fifo' at the end, for a FIFO queue)",
        broker="SQS",
    )
    variables: ClassVar[tuple[Variable, ...]] = VARIABLES

    def __init__(self, settings: SqsSettings | None = None) -> None:
        settings = settings if settings is not None else SqsSettings()
        super().__init__(settings)
        self.settings: SqsSettings = settings
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._client_lock = asyncio.Lock()
        self._queues: dict[str, Queue] = {}
        self._resolving: dict[str, asyncio.Lock] = {}
        self._where = self._describe()
        self._secrets = secret_filter(settings)

    @classmethod
    def from_env(cls) -> Self:
        """A backend configured by the environment (see the README's table); no I/O."""
        return cls(SqsSettings.from_env())

    @property
    def max_payload_bytes(self) -> int:
        return self.settings.max_payload_bytes

    def raw_baseline(self) -> RawBaseline:
        return RawSqsBaseline(self.settings)

    def _describe(self) -> str:
        settings = self.settings
        endpoint = redact_url(settings.endpoint_url) if settings.endpoint_url else "aws"
        where = f"region={settings.region or '?'} endpoint={endpoint}"
        if settings.queue_prefix:
            where += f" prefix={settings.queue_prefix!r}"
        return where

    def _check_key(self, key: str) -> str:
        """Core's key check, plus room for the queue-name prefix (and the `-dlq` suffix)."""
        super()._check_key(key)
        prefix = self.settings.queue_prefix
        limit = QUEUE_NAME_LIMIT - len(DEAD_LETTER_SUFFIX) - len(prefix)
        if prefix and len(key) > limit:
            raise InvalidKeyError(
                f"key {key[:40]!r}... is {len(key)} characters; with the queue prefix "
                f"{prefix!r} (ABE_SQS_QUEUE_PREFIX) SQS keys may have at most {limit}, "
                f"leaving room for the '-dlq' dead-letter suffix"
            )
        return key

    def _translate_error(self, error: Exception) -> Exception:
        if self._secrets.active:
            scrub_chain(error, self._secrets.scrub)  # core chains it as the cause
        translated = translate(error, where=self._where, scrub=self._secrets.scrub)
        return translated if isinstance(translated, Exception) else error

    # ---- the client ---------------------------------------------------------------------

    async def _sqs(self) -> Any:
        """The backend's one client, created on first use and closed by `close()`."""
        client = self._client
        if client is None:
            async with self._client_lock:
                if self._client is None:
                    self._ensure_open()
                    self._client = await self._create_client()
                client = self._client
        return client

    async def _create_client(self) -> Any:
        protect_client_logs(self._secrets)
        context = sqs_client(self.settings, agent=f"abe-mq-sqs/{__version__}")
        client = await self._stack.enter_async_context(context)
        protect_client_logs(self._secrets)  # loggers of modules botocore imported meanwhile
        return client

    async def _close(self) -> None:
        async with self._client_lock:
            self._client = None
            self._queues.clear()
            try:
                await self._stack.aclose()
            finally:
                self._secrets.uninstall()

    async def _bounded(self, call: Awaitable[T], seconds: float, action: str) -> T:
        """Await a client call for at most `seconds`: a silent endpoint cannot hold us."""
        try:
            if sys.version_info >= (3, 11):
                async with asyncio.timeout(seconds):
                    return await call
            return await asyncio.wait_for(call, seconds)
        except asyncio.TimeoutError:
            raise BackendUnavailableError(
                f"sqs: {action} did not complete within {seconds:g}s ({self._where}); check "
                f"that the endpoint answers, or raise ABE_MQ_OPERATION_TIMEOUT if it is only slow"
            ) from None

    # ---- queues ---------------------------------------------------------------------------

    async def _queue(self, key: str) -> Queue:
        """The queue of `key`, resolved (and created, when allowed) on first use."""
        queue = self._queues.get(key)
        if queue is None:
            queue = await self._resolve(key)
        return queue

    async def _resolve(self, key: str) -> Queue:
        lock = self._resolving.setdefault(key, asyncio.Lock())
        async with lock:
            queue = self._queues.get(key)
            if queue is not None:
                return queue
            name = queue_name(key, self.settings.queue_prefix)
            if len(name) > QUEUE_NAME_LIMIT:
                raise InvalidKeyError(
                    f"key {key!r} makes the queue name {name!r}, {len(name)} characters with "
                    f"the prefix {self.settings.queue_prefix!r}; SQS queue names may have at "
                    f"most {QUEUE_NAME_LIMIT}"
                )
            client = await self._sqs()
            timeout = self.settings.operation_timeout
            try:
                found = await self._bounded(
                    client.get_queue_url(QueueName=name), timeout, "resolve"
                )
                url = found["QueueUrl"]
            except ClientError as exc:
                if error_code(exc) not in NONEXISTENT_QUEUE:
                    raise
                if not self.settings.auto_create:
                    raise InvalidKeyError(
                        f"sqs: the queue {name!r} of key {key!r} does not exist and "
                        f"ABE_SQS_AUTO_CREATE is false; create it"
                        f"{' as a FIFO queue' if is_fifo(key) else ''}, or set "
                        f"ABE_SQS_AUTO_CREATE=true ({self._where})"
                    ) from None
                url = await self._create_queue(client, name, is_fifo(key))
            queue = Queue(key, name, url, is_fifo(key))
            self._queues[key] = queue
            return queue

    async def _create_queue(self, client: Any, name: str, fifo: bool) -> str:
        attributes = {"MaximumMessageSize": str(self.settings.queue_maximum_message_size)}
        if fifo:
            attributes.update(FifoQueue="true", ContentBasedDeduplication="false")
        timeout = self.settings.operation_timeout
        try:
            created = await self._bounded(
                client.create_queue(QueueName=name, Attributes=attributes), timeout, "create"
            )
        except ClientError as exc:
            if error_code(exc) not in QUEUE_EXISTS:  # made meanwhile, with other attributes
                raise
            created = await self._bounded(client.get_queue_url(QueueName=name), timeout, "resolve")
        log.info("sqs: created queue %s", name)
        return str(created["QueueUrl"])

    async def _delete_keys(self, keys: Sequence[str]) -> None:
        """DeleteQueue for each key's queue that exists (AWS keeps the name for 60 s after)."""
        client = await self._sqs()
        timeout = self.settings.operation_timeout
        for key in keys:
            self._queues.pop(key, None)
            name = queue_name(key, self.settings.queue_prefix)
            try:
                found = await self._bounded(
                    client.get_queue_url(QueueName=name), timeout, "resolve"
                )
                await self._bounded(
                    client.delete_queue(QueueUrl=found["QueueUrl"]), timeout, "delete"
                )
            except ClientError as exc:
                if error_code(exc) not in NONEXISTENT_QUEUE:
                    raise
                continue
            log.info("sqs: deleted queue %s", name)

    async def _on_queue(self, key: str, call: Callable[[Queue], Awaitable[T]]) -> T:
        """Run `call` on the key's queue; if the queue vanished (deleted, emulator restarted),
        resolve it again (re-creating it when allowed) and run it once more."""
        queue = await self._queue(key)
        try:
            return await call(queue)
        except ClientError as exc:
            if error_code(exc) not in NONEXISTENT_QUEUE:
                raise
            if self._queues.get(key) is queue:
                del self._queues[key]
            log.warning("sqs: queue %s no longer exists; resolving it again", queue.name)
            return await call(await self._queue(key))

    # ---- publishing -------------------------------------------------------------------------

    def _entry(self, key: str, index: int, message: OutgoingMessage) -> Entry:
        """SendMessage parameters for one message, or PayloadError if SQS could not take it."""
        text, body_size = body_text(message.body)
        headers = wire_headers(message.headers)
        attributes = encode_attributes(headers) if headers else {}
        size = body_size + attributes_size(attributes)
        limit = self.settings.max_message_bytes
        if size > limit and HEADER_ERROR in headers:  # a dead letter: shorten its note
            shorter = dict(headers)
            room = len(shorter[HEADER_ERROR].encode()) - (size - limit)
            note = shorter[HEADER_ERROR].encode()[: max(room, 0)].decode(errors="ignore")
            shorter[HEADER_ERROR] = note or "(see logs)"
            attributes = encode_attributes(shorter)
            size = body_size + attributes_size(attributes)
        if size > limit:
            where = "" if index == 0 else f"payloads[{index}]: "
            raise PayloadError(
                f"{where}the message to {key!r} is {size:,} bytes with its headers (SQS counts "
                f"attribute names and values), over the {limit:,} this backend sends (SQS's "
                f"limit is 1 MiB per message); nothing was published"
            )
        params: dict[str, Any] = {"MessageBody": text}
        if attributes:
            params["MessageAttributes"] = attributes
        if is_fifo(key):
            params["MessageGroupId"] = key
            params["MessageDeduplicationId"] = message.id
        return Entry(index, params, size)

    async def _send(self, key: str, messages: Sequence[OutgoingMessage]) -> None:
        entries = [self._entry(key, index, message) for index, message in enumerate(messages)]
        client = await self._sqs()
        timeout = self.settings.operation_timeout
        if len(entries) == 1:
            params = entries[0].params

            async def send(queue: Queue) -> Any:
                return await self._bounded(
                    client.send_message(QueueUrl=queue.url, **params), timeout, "publish"
                )

            await self._on_queue(key, send)
            return
        await self._send_batches(key, split_batches(entries), len(entries))

    async def _send_batches(self, key: str, batches: list[list[Entry]], total: int) -> None:
        """SendMessageBatch for each batch; refused entries become one PublishError.

        Standard queues get several batches in flight at once; a FIFO key's go one after
        another and stop at the first failure, since later ones would overtake it.
        """
        failed: dict[int, str] = {}
        errors: list[Exception] = []
        sent = 0

        async def one(batch: list[Entry]) -> None:
            nonlocal sent
            try:
                refused = await self._send_batch(key, batch)
            except Exception as exc:  # the whole call failed: none of this batch was sent
                errors.append(exc)
                reason = str(self._translate_error(exc))
                failed.update((entry.index, reason) for entry in batch)
                return
            sent += len(batch) - len(refused)
            failed.update(refused)

        if is_fifo(key):
            for position, batch in enumerate(batches):
                await one(batch)
                if any(entry.index in failed for entry in batch):
                    for later in batches[position + 1 :]:
                        failed.update(
                            (entry.index, "not sent: an earlier message of this FIFO key failed")
                            for entry in later
                        )
                    break
        else:
            gate = asyncio.Semaphore(SEND_CONCURRENCY)

            async def gated(batch: list[Entry]) -> None:
                async with gate:
                    await one(batch)

            await asyncio.gather(*(gated(batch) for batch in batches))
        if not failed:
            return
        if sent == 0 and errors:
            raise errors[0]  # nothing was published: the plain error says why
        raise PublishError(key, dict(sorted(failed.items())), total)

    async def _send_batch(self, key: str, batch: list[Entry]) -> dict[int, str]:
        client = await self._sqs()
        entries = [{"Id": str(entry.index), **entry.params} for entry in batch]
        timeout = self.settings.operation_timeout

        async def send(queue: Queue) -> Any:
            return await self._bounded(
                client.send_message_batch(QueueUrl=queue.url, Entries=entries),
                timeout,
                "publish_many",
            )

        response = await self._on_queue(key, send)
        refused: dict[int, str] = {}
        for failure in response.get("Failed", ()):
            try:
                index = int(failure["Id"])
            except (KeyError, TypeError, ValueError):
                continue
            refused[index] = f"{failure.get('Code', 'Failed')}: {failure.get('Message', '')}"
        return refused

    # ---- receiving ------------------------------------------------------------------------

    async def _open_receiver(self, group: str, keys: Sequence[str]) -> Receiver:
        # SQS has no groups: `group` only names the consumers; they all compete.
        await asyncio.gather(*(self._queue(key) for key in keys))
        return SqsReceiver(self, tuple(keys))

    async def _receive(self, key: str, count: int, wait: int) -> list[IncomingMessage]:
        """One ReceiveMessage on the key's queue: up to `count` messages, long-polling `wait` s."""
        client = await self._sqs()
        settings = self.settings
        bound = wait + settings.operation_timeout

        async def receive(queue: Queue) -> Any:
            return await self._bounded(
                client.receive_message(
                    QueueUrl=queue.url,
                    MaxNumberOfMessages=max(1, min(BATCH_ENTRIES, count)),
                    WaitTimeSeconds=wait,
                    VisibilityTimeout=settings.visibility_timeout,
                    MessageSystemAttributeNames=_RECEIVE_ATTRIBUTES,
                    AttributeNames=_RECEIVE_ATTRIBUTES,  # what older emulators read
                    MessageAttributeNames=["All"],
                ),
                bound,
                "fetch",
            )

        response = await self._on_queue(key, receive)
        messages = []
        for message in response.get("Messages", ()):
            system = message.get("Attributes") or {}
            try:
                attempt = max(1, int(system.get("ApproximateReceiveCount", 1)))
            except (TypeError, ValueError):
                attempt = 1
            messages.append(
                IncomingMessage(
                    key=key,
                    body=str(message.get("Body", "")).encode(),
                    headers=headers_of(message),
                    attempt=attempt,
                    broker_id=str(message.get("MessageId", "")),
                    handle=message["ReceiptHandle"],
                )
            )
        return messages

    async def _delete(self, messages: Sequence[IncomingMessage]) -> None:
        """DeleteMessageBatch, 10 receipt handles a call, the calls of all keys at once."""
        failures = await self._per_handle_batches(messages, "delete_message_batch", {})
        for code, count in failures.items():
            log.warning(
                "sqs: %d acknowledgement(s) were refused (%s); those messages will be "
                "delivered again",
                count,
                code,
            )

    async def _change_visibility(self, messages: Sequence[IncomingMessage], seconds: int) -> None:
        """ChangeMessageVisibilityBatch: hide the messages for `seconds` more from now."""
        failures = await self._per_handle_batches(
            messages, "change_message_visibility_batch", {"VisibilityTimeout": seconds}
        )
        for code, count in failures.items():
            log.debug("sqs: %d visibility change(s) refused (%s)", count, code)

    async def _per_handle_batches(
        self, messages: Sequence[IncomingMessage], method: str, extra: dict[str, Any]
    ) -> dict[str, int]:
        client = await self._sqs()
        timeout = self.settings.operation_timeout
        by_key: dict[str, list[IncomingMessage]] = {}
        for message in messages:
            by_key.setdefault(message.key, []).append(message)
        calls = []
        for key, group in by_key.items():
            for start in range(0, len(group), BATCH_ENTRIES):
                chunk = group[start : start + BATCH_ENTRIES]
                entries = [
                    {"Id": str(index), "ReceiptHandle": message.handle, **extra}
                    for index, message in enumerate(chunk)
                ]
                calls.append(self._handle_batch(client, key, method, entries, timeout))
        failures: dict[str, int] = {}
        for result in await asyncio.gather(*calls):
            for code in result:
                failures[code] = failures.get(code, 0) + 1
        return failures

    async def _handle_batch(
        self, client: Any, key: str, method: str, entries: list[dict[str, Any]], timeout: float
    ) -> list[str]:
        queue = await self._queue(key)
        response = await self._bounded(
            getattr(client, method)(QueueUrl=queue.url, Entries=entries), timeout, method
        )
        return [str(failure.get("Code", "Failed")) for failure in response.get("Failed", ())]

    async def _change_one(self, message: IncomingMessage, delay: float) -> None:
        """ChangeMessageVisibility of one message: back to the queue after `delay` seconds."""
        client = await self._sqs()
        queue = await self._queue(message.key)
        seconds = min(MAX_VISIBILITY, max(0, math.ceil(delay)))
        try:
            await self._bounded(
                client.change_message_visibility(
                    QueueUrl=queue.url, ReceiptHandle=message.handle, VisibilityTimeout=seconds
                ),
                self.settings.operation_timeout,
                "nack",
            )
        except ClientError as exc:
            if error_code(exc) in STALE_HANDLE:  # already visible again, or deleted
                log.debug("sqs: nack of %s skipped: %s", message.broker_id, error_code(exc))
                return
            raise
