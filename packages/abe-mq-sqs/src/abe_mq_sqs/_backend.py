"""The SQS backend: keys are queues, one aiobotocore client per backend, groups compete."""

from __future__ import annotations

import asyncio
import functools
import re
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from abe.errors import InvalidKeyError, PublishError
from abe.provider import (
    BaseBackend,
    Capabilities,
    ErrorMap,
    KeyRules,
    OutgoingMessage,
    Receiver,
    SecretFilter,
    redact_url,
)
from abe_mq_sqs._baseline import RawSqsBaseline
from abe_mq_sqs._client import Entry, SqsClient, SqsReceiver, entry, is_fifo, split_batches
from abe_mq_sqs._errors import CREDENTIAL_PATTERNS, ERRORS, readable, scrub_chain
from abe_mq_sqs._settings import DEFAULT_MAX_PAYLOAD, SqsSettings

if TYPE_CHECKING:
    from abe.benchmarking import RawBaseline

SEND_CONCURRENCY = 8  # SendMessageBatch calls in flight for one publish_many
_OVERTAKEN = "not sent: an earlier message of this FIFO key failed"
_FIFO_KEY = re.compile(r"[A-Za-z0-9_-]+\.fifo(?:-dlq)*")  # a FIFO key and its dead-letter keys


class SqsBackend(BaseBackend):
    """Amazon SQS via aiobotocore: each key is a queue (`.fifo`: FIFO); every group competes."""

    name: ClassVar[str] = "sqs"
    capabilities: ClassVar[Capabilities] = Capabilities(
        fan_out=False,
        per_key_ordering=False,
        native_delay=True,
        max_payload_bytes=DEFAULT_MAX_PAYLOAD,
    )
    key_rules: ClassVar[KeyRules] = KeyRules(
        max_length=80,  # SQS queue names, the `.fifo` suffix included
        allowed="A-Za-z0-9_.-",
        described="letters, digits, '_' and '-' (and '.fifo' at the end, for a FIFO queue)",
        broker="SQS",
    )
    settings_class: ClassVar[type[SqsSettings]] = SqsSettings
    errors: ClassVar[ErrorMap] = ERRORS
    client_loggers: ClassVar[tuple[str, ...]] = ("botocore", "aiobotocore", "abe.sqs")
    enforce_operation_timeout: ClassVar[bool] = True  # botocore's own timeouts fit long polls

    def __init__(self, settings: SqsSettings | None = None) -> None:
        super().__init__(settings := settings or SqsSettings())
        self.settings: SqsSettings = settings
        # Core's filter, with patterns for the credentials botocore's chain finds by itself.
        self.secret_filter.uninstall()
        self.secret_filter = SecretFilter(settings.secrets(), patterns=CREDENTIAL_PATTERNS)
        self.secret_filter.install(*self.client_loggers)
        weakref.finalize(self, self.secret_filter.uninstall)
        protect = functools.partial(self.secret_filter.install, *self.client_loggers)
        self._sqs = SqsClient(settings, self._describe(), protect)

    def raw_baseline(self) -> RawBaseline:
        return RawSqsBaseline(self.settings)

    def _describe(self) -> str:
        endpoint = redact_url(self.settings.endpoint_url) if self.settings.endpoint_url else "aws"
        prefix = f" prefix={self.settings.queue_prefix!r}" if self.settings.queue_prefix else ""
        return f"region={self.settings.region or '?'} endpoint={endpoint}{prefix}"

    def _check_key(self, key: str) -> str:
        """Core's key check; '.' only in '.fifo' (and its `-dlq`s); room for the prefix."""
        super()._check_key(key)
        if "." in key and _FIFO_KEY.fullmatch(key) is None:
            raise InvalidKeyError(
                f"key {key!r} contains '.'; SQS queue names may only contain letters, digits, "
                f"'_' and '-', and end in '.fifo' for a FIFO queue (e.g. 'orders.fifo')"
            )
        prefix = self.settings.queue_prefix
        if prefix and len(key) > (limit := 80 - len("-dlq") - len(prefix)):
            raise InvalidKeyError(
                f"key {key[:40]!r}... is {len(key)} characters; with the queue prefix {prefix!r} "
                f"(ABE_SQS_QUEUE_PREFIX) SQS keys may have at most {limit}, leaving room for '-dlq'"
            )
        return key

    def _translate_error(self, error: Exception) -> BaseException:
        """The ErrorMap's abe error, its cause chain rid of secrets and of XML error bodies."""
        scrub_chain(error, lambda text: readable(self.secret_filter.scrub(text)))
        return super()._translate_error(error)

    async def _close(self) -> None:
        await self._sqs.close()

    async def _open_receiver(self, group: str, keys: Sequence[str]) -> Receiver:
        # SQS has no groups: `group` only names the consumers; they all compete.
        await asyncio.gather(*(self._sqs.url(key) for key in keys))
        return SqsReceiver(self._sqs, tuple(keys))

    async def _delete_keys(self, keys: Sequence[str]) -> None:
        for key in keys:
            await self._sqs.delete_queue(key)

    async def _existing_keys(self, keys: Sequence[str]) -> Sequence[str]:
        found = await asyncio.gather(*(self._sqs.exists(key) for key in keys))
        return [key for key, exists in zip(keys, found, strict=True) if exists]

    async def _delete_group(self, group: str, keys: Sequence[str]) -> None:
        """Nothing to delete: SQS keeps no state per group (every group competes on the queue)."""

    async def _send(self, key: str, messages: Sequence[OutgoingMessage]) -> None:
        limit = self.settings.max_message_bytes
        entries = [entry(key, index, message, limit) for index, message in enumerate(messages)]
        if len(entries) == 1:
            await self._sqs.call(key, "send_message", **entries[0].params)
        else:
            await self._send_batches(key, split_batches(entries), len(entries))

    async def _send_batches(self, key: str, batches: list[list[Entry]], total: int) -> None:
        """SendMessageBatch per batch, concurrently (FIFO: in turn, stopping at a failure)."""
        failed: dict[int, str] = {}
        errors: list[Exception] = []
        fifo, gate = is_fifo(key), asyncio.Semaphore(SEND_CONCURRENCY)

        async def one(batch: list[Entry]) -> int:
            if fifo and failed:
                failed.update((item.index, _OVERTAKEN) for item in batch)
                return 0
            entries = [{"Id": str(item.index), **item.params} for item in batch]
            try:
                async with gate:
                    response = await self._sqs.call(key, "send_message_batch", Entries=entries)
            except Exception as exc:  # the whole call failed: none of this batch was sent
                errors.append(exc)
                reason = str(self._translate_error(exc))
                failed.update((item.index, reason) for item in batch)
                return 0
            refused = response.get("Failed", ())
            for item in refused:  # SQS names each refused entry by the Id given above
                failed[int(item["Id"])] = f"{item.get('Code', 'Failed')}: {item.get('Message', '')}"
            return len(batch) - len(refused)

        await self._sqs.url(key)  # looked up (or made) first, so the batches leave in their order
        sent = [await one(b) for b in batches] if fifo else await asyncio.gather(*map(one, batches))
        if sum(sent) == 0 and errors:
            raise errors[0]  # nothing was published: the plain error says why
        if failed:
            raise PublishError(key, dict(sorted(failed.items())), total)
