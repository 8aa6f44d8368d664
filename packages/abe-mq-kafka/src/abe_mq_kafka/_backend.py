"""KafkaBackend: keys are topics, groups are consumer groups, metadata rides in record headers."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from aiokafka.errors import for_code  # type: ignore[import-untyped]
from aiokafka.protocol.admin import DeleteGroupsRequest  # type: ignore[import-untyped]

from abe.errors import BackendUnavailableError, InvalidKeyError, PublishError
from abe.provider import (
    HEADER_ERROR,
    HEADER_PUBLISHED_AT,
    BaseBackend,
    Capabilities,
    ErrorMap,
    KeyRules,
    OutgoingMessage,
    Receiver,
)
from abe_mq_kafka._baseline import RawKafkaBaseline
from abe_mq_kafka._client import KafkaClient
from abe_mq_kafka._errors import ERRORS, no_tls
from abe_mq_kafka._receiver import KafkaReceiver
from abe_mq_kafka._settings import KafkaSettings

__all__ = ["KafkaBackend"]

_UNKNOWN_TOPIC, _GROUP_ID_NOT_FOUND = 3, 69


class _TopicRules(KeyRules):
    """Kafka's topic rules: [A-Za-z0-9._-], at most 249 characters, and not "." or ".."."""

    def check(self, key: object) -> str:
        checked = super().check(key)
        if checked in (".", ".."):
            raise InvalidKeyError(f"key {checked!r} is not a valid Kafka topic name; pick another")
        return checked


def record_headers(headers: Mapping[str, str]) -> list[tuple[str, bytes]]:
    """A record's headers: all but the publish time (the timestamp), which a dead letter keeps."""
    keep = HEADER_ERROR in headers
    return [(n, v.encode()) for n, v in headers.items() if keep or n != HEADER_PUBLISHED_AT]


class KafkaBackend(BaseBackend):
    """abe on Kafka (aiokafka): keys are topics (made on first use), groups consumer groups."""

    name: ClassVar[str] = "kafka"
    capabilities: ClassVar[Capabilities] = Capabilities(
        fan_out=True,
        per_key_ordering=False,  # order holds per partition; a key spans ABE_KAFKA_PARTITIONS
        persistence=True,
        native_delay=False,
        max_payload_bytes=1_000_000,
        remote=True,
    )
    key_rules: ClassVar[KeyRules] = _TopicRules(
        max_length=249,
        allowed="A-Za-z0-9._-",
        described="letters, digits, '.', '_' and '-' (Kafka's topic characters)",
        broker="Kafka",
    )
    settings_class: ClassVar[type[KafkaSettings]] = KafkaSettings
    errors: ClassVar[ErrorMap] = ERRORS
    client_loggers: ClassVar[tuple[str, ...]] = ("aiokafka", "kafka")
    # every member's heartbeat hears of a rebalance this way: a member came or went
    client_routine_logs: ClassVar[frozenset[str]] = frozenset(
        {"Heartbeat failed for group %s because it is rebalancing"}
    )
    # aiokafka can wait forever on a broker that is away (aio-libs/aiokafka#1101).
    enforce_operation_timeout: ClassVar[bool] = True

    def __init__(self, settings: KafkaSettings | None = None) -> None:
        settings = settings or KafkaSettings()
        super().__init__(settings)
        self.settings: KafkaSettings = settings
        self.client = KafkaClient(settings)

    def _describe(self) -> str:
        return f"bootstrap={','.join(self.settings.bootstrap_servers)}"

    def _translate_error(self, error: Exception) -> BaseException:
        hung = isinstance(error, asyncio.TimeoutError) and not self.client.connected
        if hung and self.settings.security_protocol.endswith("SSL"):  # as a plaintext listener
            return BackendUnavailableError(f"kafka ({self._describe()}): {no_tls(self.settings)}")
        return super()._translate_error(error)

    def raw_baseline(self) -> RawKafkaBaseline:
        return RawKafkaBaseline(self.settings)

    async def _send(self, key: str, messages: Sequence[OutgoingMessage]) -> None:
        producer = await self.client.producer.get()
        await self.client.ensure_topic(key)
        if len(messages) == 1:
            message = messages[0]
            await producer.send_and_wait(key, message.body, headers=record_headers(message.headers))
            return
        # One partition per call (like KIP-480's sticky partitioner), the key's next one each time
        partition = self.client.next_partition(key, await producer.partitions_for(key) or {0})
        futures: list[Any] = []  # for each message, the future of the batch that holds it
        builder, held = producer.create_batch(), 0
        for message in messages:
            record = {"value": message.body, "headers": record_headers(message.headers)}
            if builder.append(timestamp=None, key=None, **record) is None:  # full: send it
                futures += [await producer.send_batch(builder, key, partition=partition)] * held
                builder, held = producer.create_batch(), 0
                builder.append(timestamp=None, key=None, **record)
            held += 1
        futures += [await producer.send_batch(builder, key, partition=partition)] * held
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = {i: error for i, error in enumerate(results) if isinstance(error, Exception)}
        if len(failed) == len(messages):
            raise next(iter(failed.values()))
        if failed:
            reasons = {index: str(self._translate_error(error)) for index, error in failed.items()}
            raise PublishError(key, reasons, len(messages))

    async def _open_receiver(self, group: str, keys: Sequence[str]) -> Receiver:
        await asyncio.gather(*(self.client.ensure_topic(key) for key in keys))  # at once
        receiver = KafkaReceiver(self.client, group, tuple(keys))
        await receiver.start()
        return receiver

    async def _delete_keys(self, keys: Sequence[str]) -> None:
        for key in keys:
            self.client.topics.forget(key)  # a topic that does not exist is skipped
        response = await (await self.client.admin.get()).delete_topics(list(keys))
        for name, code in response.topic_error_codes:
            if code not in (0, _UNKNOWN_TOPIC):
                raise for_code(code)(f"deleting topic {name!r}")

    async def _existing_keys(self, keys: Sequence[str]) -> Sequence[str]:
        # Metadata for all topics: naming none, it cannot auto-create one on any broker.
        topics = set(await (await self.client.admin.get()).list_topics())
        return [key for key in keys if key in topics]

    async def _delete_group(self, group: str, keys: Sequence[str]) -> None:
        """Raw DeleteGroups (aiokafka 0.14 has none) drops offsets on all topics, not just keys."""
        admin = await self.client.admin.get()
        coordinator = await admin.find_coordinator(group)
        response = await admin._send_request(DeleteGroupsRequest([group]), coordinator)
        for _, code in response.results:
            if code not in (0, _GROUP_ID_NOT_FOUND):
                raise for_code(code)(f"deleting group {group!r}")

    async def _close(self) -> None:
        await self.client.close()
