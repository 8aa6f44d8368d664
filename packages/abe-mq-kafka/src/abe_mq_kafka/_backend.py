"""KafkaBackend: keys are topics, groups are consumer groups, metadata rides in record headers."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.errors import (  # type: ignore[import-untyped]
    KafkaConnectionError,
    UnknownError,
    for_code,
)

from abe.backends.message_queue.base import (
    BaseBackend,
    Capabilities,
    KeyRules,
    OutgoingMessage,
    Receiver,
)
from abe.backends.message_queue.base.codec import HEADER_ERROR, HEADER_ID, HEADER_PUBLISHED_AT
from abe.backends.message_queue.base.timeouts import bounded
from abe.errors import BackendUnavailableError, InvalidKeyError, PublishError
from abe.redaction import SecretFilter
from abe.settings import Variable
from abe_mq_kafka._baseline import RawKafkaBaseline
from abe_mq_kafka._connect import diagnose, tls_hint
from abe_mq_kafka._errors import translate
from abe_mq_kafka._receiver import KafkaReceiver
from abe_mq_kafka._settings import VARIABLES, KafkaSettings

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["KafkaBackend"]

log = logging.getLogger("abe.kafka")

_TOPIC_ALREADY_EXISTS = 36
_UNKNOWN_TOPIC = 3
_CLOSE_TIMEOUT = 5.0
_CLIENT_LOGGERS = ("aiokafka", "kafka")
"""Loggers of the client library (and of kafka-python, whose names older aiokafka used)."""


class _TopicRules(KeyRules):
    """Kafka's topic rules: [A-Za-z0-9._-], at most 249 characters, and not "." or ".."."""

    def check(self, key: object) -> str:
        checked = super().check(key)
        if checked in (".", ".."):
            raise InvalidKeyError(f"key {checked!r} is not a valid Kafka topic name; pick another")
        return checked


Header = tuple[str, bytes]


def encode_headers(headers: Mapping[str, str]) -> list[Header]:
    """abe's headers as Kafka record headers: the same names, UTF-8 values."""
    return [(name, value.encode()) for name, value in headers.items()]


def record_headers(headers: Mapping[str, str]) -> list[Header] | None:
    """The headers a newly published record carries: only the user's.

    A new message's id and publish time are the record's own (topic, partition and
    offset; timestamp), which the receiver turns back into `abe-id` and
    `abe-published-at`. Sending them as headers would cost nothing on the wire but
    about 10% of a publish in aiokafka, which builds records with headers in Python.
    Dead letters carry their original's metadata, so they keep every header.
    """
    if HEADER_ERROR in headers:
        return encode_headers(headers)
    own = (HEADER_ID, HEADER_PUBLISHED_AT)
    sent = [(name, value.encode()) for name, value in headers.items() if name not in own]
    return sent or None


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
    variables: ClassVar[tuple[Variable, ...]] = VARIABLES
    # aiokafka can wait forever on a broker that is away (aio-libs/aiokafka#1101). Instead of
    # core's per-call timer (measured at ~5% of a publish to Tansu), sends are bounded by
    # _Deadlines below, and the rarer calls (join, commit, copies) by their own timeouts.
    enforce_operation_timeout: ClassVar[bool] = False

    def __init__(self, settings: KafkaSettings | None = None) -> None:
        settings = settings or KafkaSettings()
        super().__init__(settings)
        self.settings: KafkaSettings = settings
        self._producer: Any = None
        self._admin: Any = None
        self._producer_lock: asyncio.Lock | None = None
        self._admin_lock: asyncio.Lock | None = None
        self._topics: set[str] = set()
        self._creating: dict[str, asyncio.Future[None]] = {}
        self._deadlines = _Deadlines()
        self._secret_filter = SecretFilter(settings.secrets())
        self._connected = False  # whether any client ever started (for the TLS hint)

    @classmethod
    def from_env(cls) -> Self:
        """A backend configured by KAFKA_*, ABE_KAFKA_* and ABE_MQ_* variables; no I/O."""
        return cls(KafkaSettings.from_env())

    @property
    def max_payload_bytes(self) -> int:
        return self.settings.max_payload_bytes

    def _describe(self) -> str:
        return f"bootstrap={','.join(self.settings.bootstrap_servers)}"

    def _translate_error(self, error: Exception) -> Exception:
        if (
            isinstance(error, asyncio.TimeoutError)
            and not self._connected
            and self.settings.security_protocol.endswith("SSL")
        ):
            return BackendUnavailableError(
                f"kafka: no connection to {','.join(self.settings.bootstrap_servers)} within "
                f"the time allowed (ABE_MQ_OPERATION_TIMEOUT={self.settings.operation_timeout:g}"
                f"s); {tls_hint(self.settings)}"
            )
        translated = translate(error, ",".join(self.settings.bootstrap_servers))
        unavailable = isinstance(translated, BackendUnavailableError)
        if unavailable and isinstance(error, UnknownError) and self.settings.idempotent:
            # What Tansu and other brokers without InitProducerId answer an idempotent producer.
            return BackendUnavailableError(
                f"{translated}; if the broker does not support idempotent producers "
                f"(InitProducerId), set ABE_KAFKA_IDEMPOTENT=false"
            )
        return translated

    def raw_baseline(self) -> RawKafkaBaseline:
        return RawKafkaBaseline(self.settings)

    async def start_client(self, client: Any) -> None:
        """Start an aiokafka client with the secrets kept out of its logs; say why it failed.

        The SecretFilter goes on the library's loggers before the first connection (and
        again after, for loggers its modules made meanwhile). When aiokafka only says
        "Unable to bootstrap", `diagnose` finds the refused login or TLS mismatch it logged.
        """
        self._secret_filter.install(*_CLIENT_LOGGERS)
        try:
            await client.start()
        except KafkaConnectionError:
            reason = await diagnose(self.settings)
            if reason is None:
                raise
            raise reason from reason.__cause__
        finally:
            self._secret_filter.install(*_CLIENT_LOGGERS)
        self._connected = True

    # ---- publishing ---------------------------------------------------------------------------

    async def _send(self, key: str, messages: Sequence[OutgoingMessage]) -> None:
        deadlines = self._deadlines
        token = deadlines.start(self.settings.operation_timeout * (1 + len(messages) // 1000))
        try:
            await self._write(key, messages)
        except asyncio.CancelledError:
            deadlines.check(token)  # raises asyncio.TimeoutError when the deadline cancelled it
            raise
        finally:
            deadlines.finish(token)

    async def _write(self, key: str, messages: Sequence[OutgoingMessage]) -> None:
        producer = self._producer or await self._start_producer()
        if key not in self._topics:
            await self.ensure_topic(key)
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
        builder = producer.create_batch()
        first = 0
        for index, message in enumerate(messages):
            headers = record_headers(message.headers) or []
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
        if not failed:
            return
        if len(failed) == len(messages):
            raise next(iter(failed.values()))
        reasons = {index: str(self._translate_error(error)) for index, error in failed.items()}
        raise PublishError(key, reasons, len(messages))

    async def send_copy(
        self, key: str, body: bytes, headers: Mapping[str, str], *, avoid: frozenset[int]
    ) -> None:
        """Write a copy of a delivered message (a redelivery), away from `avoid` when possible."""
        producer = self._producer or await self._start_producer()
        partition = None
        if avoid:
            partitions = await producer.partitions_for(key)
            others = sorted(set(partitions or ()) - avoid)
            if others:
                partition = random.choice(others)
        await asyncio.wait_for(
            producer.send_and_wait(key, body, headers=encode_headers(headers), partition=partition),
            self.settings.operation_timeout,
        )

    async def _start_producer(self) -> Any:
        if self._producer_lock is None:
            self._producer_lock = asyncio.Lock()
        async with self._producer_lock:
            if self._producer is not None:
                return self._producer
            self._ensure_open()
            producer = AIOKafkaProducer(**self.settings.producer_options())
            try:
                await self.start_client(producer)
            except BaseException:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(producer.stop(), _CLOSE_TIMEOUT)
                raise
            self._producer = producer
            return producer

    async def ensure_topic(self, key: str) -> None:
        """Create topic `key` with the configured partitions unless it exists (cached)."""
        pending = self._creating.get(key)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._creating[key] = pending
            try:
                await self._create_topic(key)
            except BaseException as exc:
                del self._creating[key]
                if isinstance(exc, Exception):
                    pending.set_exception(exc)
                    pending.exception()  # retrieved here: the waiters re-raise their own copy
                else:
                    pending.cancel()
                raise
            self._topics.add(key)
            pending.set_result(None)
            if len(self._topics) > 10_000:
                self._topics.clear()
            del self._creating[key]
            return
        await asyncio.shield(pending)

    async def _create_topic(self, key: str) -> None:
        admin = self._admin or await self._start_admin()
        topic = NewTopic(key, self.settings.partitions, self.settings.replication_factor)
        response = await admin.create_topics([topic])
        for name, code, *rest in response.topic_errors:
            if code in (0, _TOPIC_ALREADY_EXISTS):
                continue
            detail = rest[0] if rest and rest[0] else ""
            error = for_code(code)(detail) if detail else for_code(code)()
            log.debug("creating topic %r failed: %r", name, error)
            raise error

    async def _delete_keys(self, keys: Sequence[str]) -> None:
        """DeleteTopics for the keys' topics; a topic that does not exist is skipped."""
        admin = self._admin or await self._start_admin()
        self._topics.difference_update(keys)
        response = await admin.delete_topics(list(keys))
        for name, code in response.topic_error_codes:
            if code in (0, _UNKNOWN_TOPIC):
                continue
            log.debug("deleting topic %r failed with error code %d", name, code)
            raise for_code(code)(f"deleting topic {name!r}")

    async def _start_admin(self) -> Any:
        if self._admin_lock is None:
            self._admin_lock = asyncio.Lock()
        async with self._admin_lock:
            if self._admin is not None:
                return self._admin
            self._ensure_open()
            admin = AIOKafkaAdminClient(**self.settings.connection_options())
            try:
                await self.start_client(admin)
            except BaseException:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(admin.close(), _CLOSE_TIMEOUT)
                raise
            self._admin = admin
            return admin

    # ---- consuming ---------------------------------------------------------------------------

    async def _open_receiver(self, group: str, keys: Sequence[str]) -> Receiver:
        for key in keys:
            if key not in self._topics:  # bounded: a TLS handshake to a plaintext port hangs
                await bounded(self.ensure_topic(key), self.settings.operation_timeout)
        receiver = KafkaReceiver(self, group, tuple(keys))
        await asyncio.wait_for(receiver.start(), self.settings.operation_timeout)
        return receiver

    async def _close(self) -> None:
        await self._deadlines.close()
        producer, self._producer = self._producer, None
        admin, self._admin = self._admin, None
        if producer is not None:
            await _stop_quietly(producer.stop(), "producer")
        if admin is not None:
            await _stop_quietly(admin.close(), "admin client")
        self._secret_filter.uninstall()


async def _stop_quietly(closing: Any, what: str) -> None:
    """Close a client, bounded: aiokafka's stop() can wait forever on a broker that is down."""
    try:
        await asyncio.wait_for(closing, _CLOSE_TIMEOUT)
    except asyncio.TimeoutError:
        log.warning("kafka: closing the %s took over %.0fs; abandoned it", what, _CLOSE_TIMEOUT)
    except Exception as exc:
        log.debug("kafka: closing the %s failed: %r", what, exc)


class _Deadlines:
    """Bounds many short calls with one sweeping timer instead of one timer per call.

    `start(seconds)` registers the running task with its deadline; a sweeper task, alive
    only while calls are registered, wakes a few times a second and cancels the tasks past
    their deadline. The caller turns that cancellation into asyncio.TimeoutError with
    `check()` (core words it as BackendUnavailableError) and unregisters with `finish()`.
    A call is given up within its limit plus one sweep (at most a quarter of the limit).
    """

    def __init__(self) -> None:
        self._calls: dict[int, tuple[float, asyncio.Task[Any]]] = {}
        self._expired: set[int] = set()
        self._tokens = itertools.count()
        self._sweeper: asyncio.Task[None] | None = None
        self._granularity = 0.25

    def start(self, seconds: float) -> int:
        task = asyncio.current_task()
        assert task is not None
        token = next(self._tokens)
        self._calls[token] = (time.monotonic() + seconds, task)
        if self._sweeper is None:
            self._granularity = min(0.25, max(0.01, seconds / 4))
            self._sweeper = task.get_loop().create_task(self._sweep())
        return token

    def check(self, token: int) -> None:
        """After a CancelledError: raise asyncio.TimeoutError if the deadline caused it alone."""
        if token not in self._expired:
            return
        task = self._calls[token][1]
        uncancel = getattr(task, "uncancel", None)  # Python 3.11+ counts cancellations
        if uncancel is not None and uncancel() > 0:
            return  # cancelled from outside as well: that cancellation wins
        raise asyncio.TimeoutError

    def finish(self, token: int) -> None:
        del self._calls[token]
        if self._expired:
            self._expired.discard(token)

    async def _sweep(self) -> None:
        try:
            while self._calls:
                await asyncio.sleep(self._granularity)
                now = time.monotonic()
                for token, (deadline, task) in list(self._calls.items()):
                    if deadline <= now and token not in self._expired:
                        self._expired.add(token)
                        task.cancel()
        finally:
            self._sweeper = None

    async def close(self) -> None:
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)
