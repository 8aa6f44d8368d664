"""The SQS backend: keys are queues, one aiobotocore client per backend, groups compete.

Core validates, encodes, batches acknowledgements, dead-letters, bounds every call by the
operation timeout and runs the consumer; this class sends, and opens the receivers.
"""

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
from abe_mq_sqs._client import Entry, SqsClient, entry, is_fifo, split_batches
from abe_mq_sqs._errors import CREDENTIAL_PATTERNS, ERRORS, readable, scrub_chain
from abe_mq_sqs._receiver import SqsReceiver
from abe_mq_sqs._settings import DEFAULT_MAX_PAYLOAD, SqsSettings

if TYPE_CHECKING:
    from abe.benchmarking import RawBaseline

SEND_CONCURRENCY = 8
"""SendMessageBatch calls one publish_many keeps in flight (standard queues)."""
_OVERTAKEN = "not sent: an earlier message of this FIFO key failed"
_FIFO_KEY = re.compile(r"[A-Za-z0-9_-]+\.fifo(?:-dlq)*")


class SqsKeyRules(KeyRules):
    """SQS queue names: letters, digits, '_' and '-', and '.fifo' only to end a FIFO queue's
    (`orders.fifo`, whose dead-letter keys `orders.fifo-dlq`... name FIFO queues too)."""

    def check(self, key: object) -> str:
        checked = super().check(key)
        if "." in checked and _FIFO_KEY.fullmatch(checked) is None:
            raise InvalidKeyError(
                f"key {checked!r} contains '.'; SQS queue names may only contain letters, "
                f"digits, '_' and '-', and end in '.fifo' for a FIFO queue (e.g. 'orders.fifo')"
            )
        return checked


class SqsBackend(BaseBackend):
    """Amazon SQS through aiobotocore: each key is a queue (a `.fifo` key a FIFO queue),
    made on first use unless ABE_SQS_AUTO_CREATE=false; every group reading it competes."""

    name: ClassVar[str] = "sqs"
    capabilities: ClassVar[Capabilities] = Capabilities(
        fan_out=False,
        per_key_ordering=False,
        native_delay=True,
        max_payload_bytes=DEFAULT_MAX_PAYLOAD,
    )
    key_rules: ClassVar[SqsKeyRules] = SqsKeyRules(
        max_length=80,  # SQS queue names, the `.fifo` suffix included
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
        # patterns, credentials that botocore's chain finds by itself.
        self.secret_filter.uninstall()
        self.secret_filter = SecretFilter(settings.secrets(), patterns=CREDENTIAL_PATTERNS)
        self.secret_filter.install(*self.client_loggers)
        weakref.finalize(self, self.secret_filter.uninstall)
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
        """Core's key check, and room for the queue-name prefix (and the `-dlq` suffix)."""
        super()._check_key(key)
        prefix = self.settings.queue_prefix
        if prefix and len(key) > (limit := 80 - len("-dlq") - len(prefix)):
            raise InvalidKeyError(
                f"key {key[:40]!r}... is {len(key)} characters; with the queue prefix {prefix!r} "
                f"(ABE_SQS_QUEUE_PREFIX) SQS keys may have at most {limit}, leaving room for the "
                f"'-dlq' dead-letter suffix"
            )
        return key

    def _translate_error(self, error: Exception) -> BaseException:
        """The ErrorMap's abe error, once the client's exception and those it was raised from
        lose their secrets (core chains it as the cause) and any XML error body."""
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

    async def _send(self, key: str, messages: Sequence[OutgoingMessage]) -> None:
        limit = self.settings.max_message_bytes
        entries = [entry(key, index, message, limit) for index, message in enumerate(messages)]
        if len(entries) == 1:
            await self._sqs.call(key, "send_message", **entries[0].params)
        else:
            await self._send_batches(key, split_batches(entries), len(entries))

    async def _send_batches(self, key: str, batches: list[list[Entry]], total: int) -> None:
        """SendMessageBatch for each batch, several at once; a FIFO key's one after another,
        stopping at the first failure (later ones would overtake it). What SQS refuses, or
        what a failed call did not send, becomes one PublishError naming each index."""
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

        if fifo:
            sent = sum([await one(batch) for batch in batches])
        else:
            sent = sum(await asyncio.gather(*(one(batch) for batch in batches)))
        if sent == 0 and errors:
            raise errors[0]  # nothing was published: the plain error says why
        if failed:
            raise PublishError(key, dict(sorted(failed.items())), total)
