"""KafkaClient: the aiokafka clients a backend and its receivers share, and their broker calls."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import ssl
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.errors import KafkaConnectionError, KafkaError, for_code  # type: ignore[import-untyped]

from abe.provider import LazyClient, OncePerKey, close_quietly
from abe_mq_kafka._settings import KafkaSettings

__all__ = ["KafkaClient"]

log = logging.getLogger("abe.kafka")

_TOPIC_ALREADY_EXISTS = 36
_CLOSE_TIMEOUT = 5.0
_BOOTSTRAP_LOG = logging.getLogger("aiokafka")  # where aiokafka.client logs
_TELLING = (KafkaError, KeyError, ValueError, ssl.SSLError)  # bootstrap errors worth raising


class KafkaClient:
    """One producer and one admin client, started on first use, and the calls made with them."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self.connected = False  # whether any client ever started (tells a hung TLS handshake)
        self.producer = self._lazy(lambda: AIOKafkaProducer(**settings.producer_options()))
        self.admin = self._lazy(lambda: AIOKafkaAdminClient(**settings.connection_options()))
        self.topics: OncePerKey[str, None] = OncePerKey(self._create_topic)  # known to exist
        self._member_of: dict[Any, tuple[str, str | None]] = {}
        self._turns: dict[str, int] = {}  # publish_many calls made to each key

    def _lazy(self, make: Callable[[], Any]) -> LazyClient[Any]:
        """A client made and started on first use, shared by the backend and its receivers."""
        timeout, what = self.settings.operation_timeout, "the kafka client"
        return LazyClient(lambda: self.start(make()), _stop, timeout=timeout, what=what)

    async def start(self, client: Any) -> Any:
        """Start an aiokafka client; raise the error its bootstrap only logged (a refused login)."""
        swallowed = _Swallowed()
        _BOOTSTRAP_LOG.filters.insert(0, swallowed)  # before core's filters, which may drop it
        try:
            await client.start()
        except BaseException as exc:
            await close_quietly([_stop(client)], _CLOSE_TIMEOUT, log, "kafka")
            cause, tls = swallowed.error, self.settings.security_protocol.endswith("SSL")
            telling = (*_TELLING, asyncio.TimeoutError) if tls else _TELLING  # TLS may hang
            if isinstance(exc, KafkaConnectionError) and isinstance(cause, telling):
                raise cause from exc
            raise
        finally:
            _BOOTSTRAP_LOG.removeFilter(swallowed)
        self.connected = True
        return client

    async def consumer(self, group: str, keys: Sequence[str], listener: Any) -> Any:
        """A started consumer of `group`; a static member is `name`, `name-2`, ... in a process."""
        base = self.settings.group_instance_id
        used = {name for owner, name in self._member_of.values() if owner == group}
        names = (base if n == 1 else f"{base}-{n}" for n in itertools.count(1))
        member = None if base is None else next(name for name in names if name not in used)
        options = {**self.settings.consumer_options(), "group_instance_id": member}
        consumer = await self.start(AIOKafkaConsumer(group_id=group, **options))
        self._member_of[consumer] = (group, member)
        consumer.subscribe(list(keys), listener=listener)
        return consumer

    async def stop_consumer(self, consumer: Any) -> None:
        """Stop a consumer made by `consumer()` (bounded; a failure is logged) and free its name."""
        group, _ = self._member_of.pop(consumer, ("", ""))
        await close_quietly([consumer.stop()], _CLOSE_TIMEOUT, log, f"kafka group {group!r}")

    async def ensure_topic(self, key: str) -> None:
        """Create topic `key` with the configured partitions unless it exists (cached)."""
        await self.topics.get(key)

    async def _create_topic(self, key: str) -> None:
        admin = await self.admin.get()
        insync = self.settings.min_insync_replicas
        configs = {"min.insync.replicas": str(insync)} if insync else None
        topic = NewTopic(
            key, self.settings.partitions, self.settings.replication_factor, topic_configs=configs
        )
        response = await admin.create_topics([topic])
        for _, code, *rest in response.topic_errors:
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                raise for_code(code)(*[detail for detail in rest[:1] if detail])
        if len(self.topics) > 10_000:
            self.topics.clear()
            self._turns.clear()

    def next_partition(self, key: str, partitions: Collection[int]) -> int:
        """The partition after the one `key` had last (at first a random one): an even spread."""
        turn = self._turns[key] = self._turns.get(key, random.randrange(1 << 16)) + 1
        return sorted(partitions)[turn % len(partitions)]

    async def send_copy(
        self, key: str, body: bytes, headers: Mapping[str, str], *, avoid: frozenset[int]
    ) -> None:
        """Write a copy of a delivered message (a redelivery), away from `avoid` when possible."""
        producer = await self.producer.get()
        partition = None
        if avoid:
            others = sorted(set(await producer.partitions_for(key) or ()) - avoid)
            partition = random.choice(others) if others else None
        encoded = [(name, value.encode()) for name, value in headers.items()]
        await producer.send_and_wait(key, body, headers=encoded, partition=partition)

    async def close(self) -> None:
        """Stop the producer and the admin client; they cannot be used again."""
        await self.producer.close()
        await self.admin.close()


def _stop(client: Any) -> Any:
    """Stop any aiokafka client (the admin client's is called close)."""
    return client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop()


class _Swallowed(logging.Filter):
    """The last exception aiokafka's bootstrap logged and dropped ("Unable connect to ...")."""

    error: BaseException | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        self.error = next((arg for arg in args if isinstance(arg, BaseException)), self.error)
        return True
