"""KafkaBackend: keys are topics, groups are consumer groups, metadata rides in record headers."""

from __future__ import annotations

import asyncio
import random
import ssl
from collections.abc import Mapping, Sequence
from typing import ClassVar

from aiokafka.errors import UnknownError, for_code  # type: ignore[import-untyped]
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
from abe_mq_kafka._errors import ERRORS, tidy
from abe_mq_kafka._receiver import KafkaReceiver
from abe_mq_kafka._settings import KafkaSettings

__all__ = ["KafkaBackend"]

Header = tuple[str, bytes]
_GROUP_ID_NOT_FOUND = 69


class _TopicRules(KeyRules):
    """Kafka's topic rules: [A-Za-z0-9._-], at most 249 characters, and not "." or ".."."""

    def check(self, key: object) -> str:
        checked = super().check(key)
        if checked in (".", ".."):
            raise InvalidKeyError(f"key {checked!r} is not a valid Kafka topic name; pick another")
        return checked


def record_headers(headers: Mapping[str, str]) -> list[Header]:
    """The headers a record carries: all but the publish time, which is the record's timestamp.

    `abe-id` always travels, so every delivery (copies and dead letters too) has the id
    the publisher gave or abe made, as on every other broker. It costs about 5% of a
    publish and 15% of a publish_many (aiokafka builds headers in Python), measured on
    Tansu; a dead letter keeps every header of its original.
    """
    keep = HEADER_ERROR in headers
    return [(n, v.encode()) for n, v in headers.items() if keep or n != HEADER_PUBLISHED_AT]


class KafkaBackend(BaseBackend):
    """abe on Kafka (aiokafka): each key is a topic, each group a Kafka consumer group.

    Topics are created on first use with `ABE_KAFKA_PARTITIONS` partitions; records carry
    the payload's JSON as their value and abe's metadata as record headers. Offsets are
    committed only below messages that are finished (acknowledged or dead-lettered).
    """

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
    # aiokafka can wait forever on a broker that is away (aio-libs/aiokafka#1101).
    enforce_operation_timeout: ClassVar[bool] = True

    def __init__(self, settings: KafkaSettings | None = None) -> None:
        settings = settings or KafkaSettings()
        super().__init__(settings)
        self.settings: KafkaSettings = settings
        self.client = KafkaClient(settings)

    @property
    def max_payload_bytes(self) -> int:
        return self.settings.max_payload_bytes

    def _describe(self) -> str:
        return f"bootstrap={','.join(self.settings.bootstrap_servers)}"

    def _translate_error(self, error: Exception) -> BaseException:
        settings, where = self.settings, ",".join(self.settings.bootstrap_servers)
        protocol = settings.security_protocol
        if isinstance(error, ssl.SSLCertVerificationError):
            return BackendUnavailableError(
                f"kafka: the certificate of {where} is not trusted ({error.verify_message}): set "
                f"KAFKA_SSL_CAFILE to the CA that signed it, or check that KAFKA_BOOTSTRAP_SERVERS "
                f"names the host the certificate is for"
            )
        hung = isinstance(error, asyncio.TimeoutError) and not self.client.connected
        if protocol.endswith("SSL") and (hung or isinstance(error, ssl.SSLError)):
            what = tidy(f"{type(error).__name__}: {error}")
            return BackendUnavailableError(  # what a plaintext listener does to a TLS client
                f"kafka: no TLS session with {where} ({what}); with KAFKA_SECURITY_PROTOCOL="
                f"{protocol}, check that KAFKA_BOOTSTRAP_SERVERS names the brokers' TLS listener "
                f"(or use {protocol.replace('SSL', 'PLAINTEXT')} for a plaintext one), and that "
                f"the brokers are up"
            )
        scrub = self.secret_filter.scrub
        translated = ERRORS.translate(error, self._describe(), scrub=lambda text: scrub(tidy(text)))
        if isinstance(error, UnknownError) and settings.idempotent and translated is not error:
            # What Tansu and other brokers without InitProducerId answer an idempotent producer.
            return BackendUnavailableError(
                f"{translated}; if the broker does not support idempotent producers "
                f"(InitProducerId), set ABE_KAFKA_IDEMPOTENT=false"
            )
        return translated

    def raw_baseline(self) -> RawKafkaBaseline:
        return RawKafkaBaseline(self.settings)

    async def _send(self, key: str, messages: Sequence[OutgoingMessage]) -> None:
        producer = await self.client.producer.get()
        await self.client.ensure_topic(key)
        if len(messages) == 1:
            message = messages[0]
            await producer.send_and_wait(key, message.body, headers=record_headers(message.headers))
            return
        # One partition per call, like Kafka's sticky partitioner (KIP-480): the records go
        # out as ready-made record batches (aiokafka's batch API) and are read back in order.
        partitions = await producer.partitions_for(key)
        partition = random.choice(sorted(partitions)) if partitions else 0
        spans: list[tuple[int, int]] = []
        futures = []
        builder, first = producer.create_batch(), 0
        for index, message in enumerate(messages):
            headers = record_headers(message.headers)
            if builder.append(timestamp=None, key=None, value=message.body, headers=headers):
                continue
            futures.append(await producer.send_batch(builder, key, partition=partition))
            spans.append((first, index))
            builder, first = producer.create_batch(), index
            builder.append(timestamp=None, key=None, value=message.body, headers=headers)
        futures.append(await producer.send_batch(builder, key, partition=partition))
        spans.append((first, len(messages)))
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = {
            index: result
            for (start, end), result in zip(spans, results, strict=True)
            if isinstance(result, Exception)
            for index in range(start, end)
        }
        if len(failed) == len(messages):
            raise next(iter(failed.values()))
        if failed:
            reasons = {index: str(self._translate_error(error)) for index, error in failed.items()}
            raise PublishError(key, reasons, len(messages))

    async def _open_receiver(self, group: str, keys: Sequence[str]) -> Receiver:
        for key in keys:
            await self.client.ensure_topic(key)
        receiver = KafkaReceiver(self.client, group, tuple(keys))
        await receiver.start()
        return receiver

    async def _delete_keys(self, keys: Sequence[str]) -> None:
        await self.client.delete_topics(keys)

    async def _existing_keys(self, keys: Sequence[str]) -> Sequence[str]:
        # Metadata for all topics: naming none, it cannot auto-create one on any broker.
        topics = set(await (await self.client.admin.get()).list_topics())
        return [key for key in keys if key in topics]

    async def _delete_group(self, group: str, keys: Sequence[str]) -> None:
        """DeleteGroups at the group's coordinator: Kafka drops the group's offsets on every
        topic, not only `keys` (aiokafka 0.14 has no call for it, hence the raw request)."""
        admin = await self.client.admin.get()
        coordinator = await admin.find_coordinator(group)
        response = await admin._send_request(DeleteGroupsRequest([group]), coordinator)
        for _, code in response.results:
            if code not in (0, _GROUP_ID_NOT_FOUND):
                raise for_code(code)(f"deleting group {group!r}")

    async def _close(self) -> None:
        await self.client.close()
