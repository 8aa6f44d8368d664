"""KafkaClient: the aiokafka clients a backend and its receivers share, and their broker calls.

When aiokafka only says "Unable to bootstrap", `diagnose()` opens fresh connections to the
bootstrap servers, without SASL and then with it, to tell a broker that is away from a TLS
mismatch and from a refused login.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import ssl
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.conn import create_conn  # type: ignore[import-untyped]
from aiokafka.errors import (  # type: ignore[import-untyped]
    KafkaConnectionError,
    KafkaError,
    UnsupportedSaslMechanismError,
    for_code,
)

from abe.errors import AuthenticationError, BackendUnavailableError
from abe.provider import LazyClient, bounded, close_quietly
from abe_mq_kafka._errors import ERRORS, is_scram_rejection, tidy
from abe_mq_kafka._settings import KafkaSettings

__all__ = ["KafkaClient", "tls_hint"]

log = logging.getLogger("abe.kafka")

_TOPIC_ALREADY_EXISTS = 36
_UNKNOWN_TOPIC = 3
_CLOSE_TIMEOUT = 5.0
_PROBE_TIMEOUT = 5.0
"""Longest one diagnostic connection may take (less when ABE_KAFKA_REQUEST_TIMEOUT is lower)."""
_SASL_VARIABLES = "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD and KAFKA_SASL_MECHANISM"


class KafkaClient:
    """One producer and one admin client, started on first use, and the calls made with them."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self.connected = False
        """Whether any client ever started (a hanging TLS handshake is told apart by it)."""
        timeout = settings.operation_timeout
        self.producer: LazyClient[Any] = LazyClient(
            lambda: self.start(AIOKafkaProducer(**settings.producer_options())),
            _stop,
            timeout=timeout,
            what="the kafka producer",
        )
        self.admin: LazyClient[Any] = LazyClient(
            lambda: self.start(AIOKafkaAdminClient(**settings.connection_options())),
            _stop,
            timeout=timeout,
            what="the kafka admin client",
        )
        self._topics: set[str] = set()
        self._creating: dict[str, asyncio.Task[None]] = {}
        self._members: dict[str, set[str]] = {}
        self._member_of: dict[Any, tuple[str, str]] = {}

    async def start(self, client: Any) -> Any:
        """Start an aiokafka client (stopped again if that fails); say why it could not start."""
        try:
            await client.start()
        except BaseException as exc:
            await close_quietly([_stop(client)], _CLOSE_TIMEOUT, log, "kafka")
            if isinstance(exc, KafkaConnectionError):
                reason = await diagnose(self.settings)
                if reason is not None:
                    raise reason from reason.__cause__
            raise
        self.connected = True
        return client

    async def consumer(self, group: str, keys: Sequence[str], listener: Any) -> Any:
        """A started consumer of `group`, subscribed to `keys` (it joins on its first read).

        With ABE_KAFKA_GROUP_INSTANCE_ID, each consumer of a group in this process gets its
        own static member name (`name`, `name-2`, ...), the same again after a restart.
        """
        base, used = self.settings.group_instance_id, self._members.setdefault(group, set())
        names = (base if n == 1 else f"{base}-{n}" for n in itertools.count(1))
        member = None if base is None else next(name for name in names if name not in used)
        options = {**self.settings.consumer_options(), "group_instance_id": member}
        consumer = await self.start(AIOKafkaConsumer(group_id=group, **options))
        if member is not None:
            used.add(member)
            self._member_of[consumer] = (group, member)
        consumer.subscribe(list(keys), listener=listener)
        return consumer

    async def stop_consumer(self, consumer: Any) -> None:
        """Stop a consumer made by `consumer()` (bounded; a failure is logged) and free its name."""
        group, member = self._member_of.pop(consumer, ("", ""))
        self._members.get(group, set()).discard(member)
        await close_quietly([consumer.stop()], _CLOSE_TIMEOUT, log, f"kafka group {group!r}")

    async def ensure_topic(self, key: str) -> None:
        """Create topic `key` with the configured partitions unless it exists (cached)."""
        creating = self._creating.get(key)
        if key not in self._topics and creating is None:  # one creation, however many wait
            creating = self._creating[key] = asyncio.ensure_future(self._create_topic(key))
            creating.add_done_callback(lambda done: self._forget(key, done))
        if creating is not None:
            await asyncio.shield(creating)

    def _forget(self, key: str, task: asyncio.Task[None]) -> None:
        """A creation ended: the next call may try again (its waiters raised its error)."""
        del self._creating[key]
        if not task.cancelled():
            task.exception()

    async def _create_topic(self, key: str) -> None:
        admin = await self.admin.get()
        topic = NewTopic(key, self.settings.partitions, self.settings.replication_factor)
        response = await admin.create_topics([topic])
        for _, code, *rest in response.topic_errors:
            if code not in (0, _TOPIC_ALREADY_EXISTS):
                raise for_code(code)(*[detail for detail in rest[:1] if detail])
        if len(self._topics) > 10_000:
            self._topics.clear()
        self._topics.add(key)

    async def delete_topics(self, keys: Sequence[str]) -> None:
        """DeleteTopics for `keys`; a topic that does not exist is skipped."""
        admin = await self.admin.get()
        self._topics.difference_update(keys)
        response = await admin.delete_topics(list(keys))
        for name, code in response.topic_error_codes:
            if code not in (0, _UNKNOWN_TOPIC):
                raise for_code(code)(f"deleting topic {name!r}")

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


# ---- why a client could not start --------------------------------------------------------------


async def diagnose(settings: KafkaSettings) -> Exception | None:
    """The abe error saying why no client could bootstrap, or None when no cause shows.

    Each error's `__cause__` is the exception that gave the reason away; none holds a
    secret. Only for SSL and SASL protocols: with PLAINTEXT there is nothing to tell.
    """
    protocol, options = settings.security_protocol, settings.connection_options()
    tls, sasl = protocol.endswith("SSL"), protocol.startswith("SASL_")
    limit = min(settings.request_timeout, _PROBE_TIMEOUT)
    plain = {
        "client_id": settings.client_id,
        "request_timeout_ms": int(limit * 1000),
        "ssl_context": options.get("ssl_context"),
        "security_protocol": "SSL" if tls else "PLAINTEXT",
    }
    login = {**plain, **{name: options[name] for name in options if name.startswith("sasl_")}}
    login["security_protocol"] = protocol
    for server in settings.bootstrap_servers if tls or sasl else ():
        host, _, port = server.rpartition(":")
        address = (host.strip("[]"), int(port))
        try:
            (await bounded(create_conn(*address, **plain), limit)).close()
        except (OSError, KafkaError, asyncio.TimeoutError) as exc:
            if tls and await _reachable(*address, limit):
                return _tls_failed(settings, server, exc)
            continue  # this broker is away; another may answer
        try:
            if sasl:
                (await bounded(create_conn(*address, **login), limit)).close()
        except (OSError, KafkaError, KeyError, ValueError) as exc:
            return _login_refused(settings, server, exc)
        except asyncio.TimeoutError:
            pass  # slow, not refused
        return None  # the connection works now: the failure was passing
    return None


def tls_hint(settings: KafkaSettings) -> str:
    """What to check when a connection with TLS hangs: a plaintext listener never answers."""
    protocol = settings.security_protocol
    return (
        f"with KAFKA_SECURITY_PROTOCOL={protocol}, a listener that does not speak TLS never "
        f"completes the handshake: check that KAFKA_BOOTSTRAP_SERVERS names the brokers' TLS "
        f"listener (or use {'SASL_PLAINTEXT' if protocol == 'SASL_SSL' else 'PLAINTEXT'} for a "
        f"plaintext one), and that the brokers are up"
    )


async def _reachable(host: str, port: int, limit: float) -> bool:
    """Whether a plain TCP connection to host:port opens (a TLS failure, not a broker away)."""
    try:
        _, writer = await bounded(asyncio.open_connection(host, port), limit)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True


def _tls_failed(settings: KafkaSettings, server: str, error: BaseException) -> Exception:
    if isinstance(error, asyncio.TimeoutError):
        what = f"no TLS session within {min(settings.request_timeout, _PROBE_TIMEOUT):g}s"
    else:
        what = f"the TLS handshake failed ({_text(error)})"
    fix = tls_hint(settings)
    if isinstance(error, ssl.SSLCertVerificationError):
        fix = (
            "set KAFKA_SSL_CAFILE to the CA that signed the brokers' certificates, or check "
            "that KAFKA_BOOTSTRAP_SERVERS names the host the certificate is for"
        )
    return _caused(
        BackendUnavailableError(
            f"kafka: {server} accepts connections but {what}; no credentials were sent; {fix}"
        ),
        error,
    )


def _login_refused(settings: KafkaSettings, server: str, error: BaseException) -> Exception:
    mechanism, rule = settings.sasl_mechanism, ERRORS.rule_for(error)
    if isinstance(error, UnsupportedSaslMechanismError):
        why = f"it does not offer SASL {mechanism}"
        if "Enabled mechanisms" in str(error):
            why += f" ({str(error).rsplit('. ', 1)[-1]})"
    elif is_scram_rejection(error):
        why = f"it refused the {mechanism} credentials"
    elif isinstance(error, KafkaConnectionError):
        why = f"it closed the connection during the SASL {mechanism} login"
    elif rule is not None and rule.error is AuthenticationError:
        why = f"it refused the {mechanism} login ({_text(error)})"
    else:
        text = f"the SASL {mechanism} login at {server} failed ({_text(error)})"
        return _caused(BackendUnavailableError(f"kafka: {text}; check {_SASL_VARIABLES}"), error)
    text = f"the broker at {server} refused the login: {why}"
    return _caused(AuthenticationError(f"kafka: {text}; check {_SASL_VARIABLES}"), error)


def _caused(error: Exception, cause: BaseException) -> Exception:
    error.__cause__ = cause
    return error


def _text(error: BaseException) -> str:
    return tidy(f"{type(error).__name__}: {' '.join(str(error).split())}")
