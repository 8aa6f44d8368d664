"""The SQS backend: keys are queues, one aiobotocore client per backend, groups compete.

Core (BaseBackend) validates, encodes, batches acknowledgements, dead-letters, bounds
every call by the operation timeout and runs the consumer; this module moves messages:
SendMessage / SendMessageBatch out, and opens the receivers that read them back.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from abe.errors import InvalidKeyError, PublishError
from abe.provider import (
    DEAD_LETTER_SUFFIX,
    BaseBackend,
    Capabilities,
    ErrorMap,
    OutgoingMessage,
    Receiver,
    SecretFilter,
    redact_url,
)
from abe_mq_sqs._baseline import RawSqsBaseline
from abe_mq_sqs._client import SqsClient
from abe_mq_sqs._errors import CREDENTIAL_PATTERNS, ERRORS, readable, scrub_chain
from abe_mq_sqs._receiver import SqsReceiver
from abe_mq_sqs._settings import DEFAULT_MAX_PAYLOAD, SqsSettings
from abe_mq_sqs._wire import QUEUE_NAME_LIMIT, Entry, SqsKeyRules, entry, is_fifo, split_batches

if TYPE_CHECKING:
    from abe.benchmarking import RawBaseline

__all__ = ["SqsBackend"]

SEND_CONCURRENCY = 8
"""SendMessageBatch calls one publish_many keeps in flight (standard queues)."""


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
    settings_class: ClassVar[type[SqsSettings]] = SqsSettings
    errors: ClassVar[ErrorMap] = ERRORS
    client_loggers: ClassVar[tuple[str, ...]] = ("botocore", "aiobotocore", "abe.sqs")
    """botocore logs requests with their headers at DEBUG; abe.sqs quotes its failures."""
    enforce_operation_timeout: ClassVar[bool] = True
    """botocore retries within its own timeouts, which a long poll makes long: core bounds."""

    def __init__(self, settings: SqsSettings | None = None) -> None:
        settings = settings if settings is not None else SqsSettings()
        super().__init__(settings)
        self.settings: SqsSettings = settings
        # Core's filter knows the settings' secrets; this one also hides, by their header
        # patterns, the credentials botocore's chain finds by itself.
        self.secret_filter.uninstall()
        self.secret_filter = SecretFilter(settings.secrets(), patterns=CREDENTIAL_PATTERNS)
        self.secret_filter.install(*self.client_loggers)
        weakref.finalize(self, self.secret_filter.uninstall)
        # Installed again once connected, on any logger botocore made meanwhile.
        protect = functools.partial(self.secret_filter.install, *self.client_loggers)
        self._sqs = SqsClient(settings, self._describe(), protect)

    @property
    def max_payload_bytes(self) -> int:
        return self.settings.max_payload_bytes

    def raw_baseline(self) -> RawBaseline:
        return RawSqsBaseline(self.settings)

    def _describe(self) -> str:
        settings = self.settings
        endpoint = redact_url(settings.endpoint_url) if settings.endpoint_url else "aws"
        where = f"region={settings.region or '?'} endpoint={endpoint}"
        return where + (f" prefix={settings.queue_prefix!r}" if settings.queue_prefix else "")

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

    def _translate_error(self, error: Exception) -> BaseException:
        """The ErrorMap's abe error; first the client's exception and those it was raised
        from lose their secrets (core chains it as the cause) and any XML error body."""
        scrub_chain(error, lambda text: readable(self.secret_filter.scrub(text)))
        return super()._translate_error(error)

    async def _close(self) -> None:
        await self._sqs.close()

    async def _open_receiver(self, group: str, keys: Sequence[str]) -> Receiver:
        # SQS has no groups: `group` only names the consumers; they all compete.
        await asyncio.gather(*(self._sqs.queue(key) for key in keys))
        return SqsReceiver(self._sqs, tuple(keys))

    async def _delete_keys(self, keys: Sequence[str]) -> None:
        for key in keys:
            await self._sqs.delete_queue(key)

    async def _send(self, key: str, messages: Sequence[OutgoingMessage]) -> None:
        limit = self.settings.max_message_bytes
        entries = [entry(key, index, message, limit) for index, message in enumerate(messages)]
        if len(entries) == 1:
            await self._sqs.call(key, "send_message", **entries[0].params)
        else:
            await self._send_batches(key, split_batches(entries), len(entries))

    async def _send_batches(self, key: str, batches: list[list[Entry]], total: int) -> None:
        """SendMessageBatch for each batch; refused entries become one PublishError.

        Standard queues get several batches in flight at once; a FIFO key's go one after
        another and stop at the first failure, since later ones would overtake it.
        """
        failed: dict[int, str] = {}
        errors: list[Exception] = []
        fifo, gate = is_fifo(key), asyncio.Semaphore(SEND_CONCURRENCY)

        async def one(batch: list[Entry]) -> int:
            if fifo and failed:
                reason = "not sent: an earlier message of this FIFO key failed"
                failed.update((item.index, reason) for item in batch)
                return 0
            try:
                async with gate:
                    refused = await self._send_batch(key, batch)
            except Exception as exc:  # the whole call failed: none of this batch was sent
                errors.append(exc)
                reason = str(self._translate_error(exc))
                failed.update((item.index, reason) for item in batch)
                return 0
            failed.update(refused)
            return len(batch) - len(refused)

        if fifo:
            sent = sum([await one(batch) for batch in batches])
        else:
            sent = sum(await asyncio.gather(*(one(batch) for batch in batches)))
        if not failed:
            return
        if sent == 0 and errors:
            raise errors[0]  # nothing was published: the plain error says why
        raise PublishError(key, dict(sorted(failed.items())), total)

    async def _send_batch(self, key: str, batch: list[Entry]) -> dict[int, str]:
        """One SendMessageBatch call; the indexes SQS refused, with why."""
        entries = [{"Id": str(item.index), **item.params} for item in batch]
        response = await self._sqs.call(key, "send_message_batch", Entries=entries)
        refused: dict[int, str] = {}
        for failure in response.get("Failed", ()):
            try:
                index = int(failure["Id"])
            except (KeyError, TypeError, ValueError):
                continue
            refused[index] = f"{failure.get('Code', 'Failed')}: {failure.get('Message', '')}"
        return refused
