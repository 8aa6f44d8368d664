"""The base class of every first-party backend: the shared behaviour, written once.

A provider subclasses `BaseBackend` and fills in four small hooks: `_send` (write
encoded messages), `_open_receiver` (read for a group), `_close`, and `from_env`;
`_delete_keys` is optional.
Everything else (validation, encoding, ids, ack-on-next, batching acknowledgements,
dead letters, error translation) lives here, so every broker behaves the same.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
import weakref
from collections.abc import AsyncGenerator, Awaitable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar, TypeVar

from abe.backends.message_queue.base.capabilities import Capabilities
from abe.backends.message_queue.base.codec import (
    HEADER_ATTEMPTS,
    HEADER_ERROR,
    HEADER_ID,
    HEADER_ORIGINAL_KEY,
    HEADER_PUBLISHED_AT,
    IncomingMessage,
    OutgoingMessage,
    check_message_id,
    encode_payload,
    new_message_id,
    wrap_undecodable,
)
from abe.backends.message_queue.base.deadlines import bounded
from abe.backends.message_queue.base.delivery import Delivery
from abe.backends.message_queue.base.error_map import ErrorMap
from abe.backends.message_queue.base.headers import check_user_headers, header_text
from abe.backends.message_queue.base.keys import KeyRules, dead_letter_key
from abe.backends.message_queue.base.outage import OutageLog
from abe.backends.message_queue.base.receiver import Receiver
from abe.backends.message_queue.base.settings import BackendSettings
from abe.backends.message_queue.base.subscription import Subscription
from abe.errors import (
    AbeError,
    BackendClosedError,
    BackendUnavailableError,
    ConfigurationError,
    PayloadError,
)
from abe.middleware import Middleware, Publication, chain_publish, installed
from abe.redaction import SecretFilter
from abe.settings import KEYS, Environment, Variable
from abe.types import ConsumerGroup, MessageQueueKey, MessageQueueMessage, MessageQueuePayload

if TYPE_CHECKING:
    from types import TracebackType

    from typing_extensions import Self

    from abe.backends.message_queue.base.bench_protocol import RawBaseline

__all__ = ["DEFAULT_GROUP", "BaseBackend"]

log = logging.getLogger("abe.backend")
T = TypeVar("T")

DEFAULT_GROUP = "default"
"""The group `consume()` and `subscribe()` join when given `group=None`."""

_GROUP_RULES = KeyRules(
    max_length=200,
    allowed="A-Za-z0-9_-",
    described="letters, digits, '_' and '-'",
    broker="abe",
    kind="group",
)


class BaseBackend(abc.ABC):
    """Shared behaviour of all backends; subclasses supply the broker calls.

    Use it with `async with`, or call `close()` when done. `publish` and `consume` are
    the protocol; `publish_many` and `subscribe` are the richer interface that the
    consumer uses (deliveries with key, id, attempt, headers and ack / nack / dead-letter).
    """

    name: ClassVar[str]
    """The entry-point name this backend is registered under, e.g. "redis"."""
    capabilities: ClassVar[Capabilities]
    """What the broker can and cannot do; the contract suite holds the class to it."""
    key_rules: ClassVar[KeyRules]
    """Which keys the broker accepts."""
    group_rules: ClassVar[KeyRules] = _GROUP_RULES
    """Which group names the broker accepts."""
    settings_class: ClassVar[type[BackendSettings]] = BackendSettings
    """The settings dataclass `from_env()` reads (fields declared with `setting()`)."""
    variables: ClassVar[tuple[Variable, ...]] = ()
    """Every environment variable the backend reads, for `abe backends` and the docs.

    Derived from `settings_class` (plus ABE_MQ_KEYS, which `consume()` reads).
    """
    errors: ClassVar[ErrorMap | None] = None
    """The client library's exceptions and the abe errors they become."""
    client_loggers: ClassVar[tuple[str, ...]] = ()
    """Logger names of the client library (with their children), kept free of secrets."""
    client_routine_logs: ClassVar[frozenset[str]] = frozenset()
    """Format strings of client warnings that report the group's routine (a rebalance), not a
    broker away: shown at INFO, and no outage is said (see OutageLog)."""
    reserved_headers: ClassVar[frozenset[str]] = frozenset()
    """Header names the broker's wire format uses itself (Redis: "data"), refused in publish."""
    reserved_header_prefixes: ClassVar[tuple[str, ...]] = ()
    """Lower-case header prefixes the broker acts on, beyond those every backend refuses."""
    enforce_operation_timeout: ClassVar[bool] = False
    """Set True when the client library can block forever: core then bounds each call."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "variables" not in cls.__dict__ and cls.settings_class is not BackendSettings:
            declared = cls.settings_class.variables()
            common = {variable.name for variable in BackendSettings.variables()}
            own = tuple(variable for variable in declared if variable.name not in common)
            rest = tuple(variable for variable in declared if variable.name in common)
            cls.variables = (*own, KEYS, *rest)

    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings
        self._closed = False
        self._valid_keys: set[str] = set()
        self._subscriptions: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self.middleware: list[Middleware] = []
        """Middleware around this backend's publishes and its consumers' handlers."""
        self.secret_filter = SecretFilter(settings.secrets())
        """Keeps this backend's secrets out of logs and error text; on `client_loggers`."""
        self.outage = OutageLog(
            self.name, self._describe, self.secret_filter.scrub, self.client_routine_logs
        )
        """Says once when the broker goes away and once when it is back (see OutageLog)."""
        if self.client_loggers:
            self.outage.install(*self.client_loggers)
            weakref.finalize(self, self.outage.uninstall)
        if self.secret_filter.active and self.client_loggers:
            self.secret_filter.install(*self.client_loggers)
            weakref.finalize(self, self.secret_filter.uninstall)

    # ---- what a provider implements ---------------------------------------------------

    @classmethod
    def from_env(cls) -> Self:
        """Build a backend from environment variables, validating all of them, without I/O."""
        return cls(cls.settings_class.from_env())

    @abc.abstractmethod
    async def _send(self, key: str, messages: Sequence[OutgoingMessage]) -> None:
        """Write messages to `key`, in order, through the broker's batch path when there are many.

        Raise `PublishError` naming the refused indexes when the broker refuses part of
        a batch; any other exception means none can be assumed written.
        """

    @abc.abstractmethod
    async def _open_receiver(self, group: str, keys: Sequence[str]) -> Receiver:
        """Join `group` on `keys` (creating what the broker needs) and return the reader."""

    async def _close(self) -> None:  # noqa: B027  (optional hook)
        """Release the broker connections. Called once, after every subscription is closed."""

    async def _delete_keys(self, keys: Sequence[str]) -> None:
        """Remove `keys` from the broker with their messages and every group's state on them.

        Optional: the default says this backend cannot. A key that does not exist is not an
        error. Raise `NotImplementedError` when the broker cannot delete what abe made.
        """
        raise NotImplementedError(f"the {self.name} backend cannot delete keys")

    async def _delete_group(self, group: str, keys: Sequence[str]) -> None:
        """Remove what `group` keeps on `keys` (read position, pending entries), not the messages.

        Optional: the default says this backend cannot. A group or key that does not exist
        is not an error; a broker without per-group state has nothing to do.
        """
        raise NotImplementedError(f"the {self.name} backend cannot delete a group")

    async def _existing_keys(self, keys: Sequence[str]) -> Sequence[str]:
        """Which of `keys` exist on the broker now, without creating any.

        Optional: the default says this backend cannot tell.
        """
        raise NotImplementedError(f"the {self.name} backend cannot tell which keys exist")

    def _translate_error(self, error: Exception) -> BaseException:
        """The most specific abe error for a client-library exception, through `errors`."""
        self.secret_filter.scrub_chain(error)  # the cause prints in tracebacks too
        if self.errors is None:
            return error
        return self.errors.translate(
            error, self._describe(), scrub=self.secret_filter.scrub, settings=self.settings
        )

    def _describe(self) -> str:
        """Where the broker is, for reprs and errors; never includes a secret."""
        return ""

    def raw_baseline(self) -> RawBaseline | None:
        """The `abe bench` workloads written with the client library directly, or None.

        Optional. A provider that returns an `abe.benchmarking.RawBaseline` (built from
        `self.settings`, so it reaches the same broker) lets `abe bench` report abe's cost
        over the raw client. None, the default, is reported as "no raw client".
        """
        return None

    # ---- the protocol ---------------------------------------------------------------------

    async def publish(
        self,
        key: MessageQueueKey,
        payload: MessageQueuePayload,
        *,
        headers: Mapping[str, str] | None = None,
        message_id: str | None = None,
    ) -> None:
        """Publish one payload to `key`. Refused input raises before any network I/O.

        `message_id` names the message for good: give the same id when retrying a publish
        that raised, and brokers that de-duplicate (NATS, SQS FIFO) store it once; every
        delivery carries it as `Delivery.id`. Without one, abe makes a new id.
        """
        self._ensure_open()
        self._check_key(key)
        ids = [new_message_id() if message_id is None else check_message_id(message_id)]
        middlewares = self._middlewares()
        if middlewares:
            publication = Publication(
                self.name,
                key,
                [payload],
                dict(headers or {}),
                ids,
                False,
                self.capabilities.headers,
            )
            await chain_publish(middlewares, self._publish_now)(publication)
            return
        message = self._prepare(payload, self._check_headers(headers), ids[0])
        await self._guard(self._send(key, (message,)), "publish")

    async def publish_many(
        self,
        key: MessageQueueKey,
        payloads: Iterable[MessageQueuePayload],
        *,
        headers: Mapping[str, str] | None = None,
        message_ids: Sequence[str] | None = None,
    ) -> None:
        """Publish many payloads to `key` in order, through the broker's batch path.

        Every payload is checked before anything is sent, so one bad payload publishes none.
        `message_ids`, one per payload, work as `publish`'s `message_id` does.
        """
        self._ensure_open()
        self._check_key(key)
        batch = list(payloads)
        if message_ids is None:
            ids = [new_message_id() for _ in batch]
        else:
            ids = [check_message_id(message_id) for message_id in message_ids]
            if len(ids) != len(batch):
                raise ValueError(
                    f"message_ids has {len(ids)} ids for {len(batch)} payloads; give one each"
                )
        publication = Publication(
            self.name, key, batch, dict(headers or {}), ids, True, self.capabilities.headers
        )
        middlewares = self._middlewares()
        if middlewares:
            await chain_publish(middlewares, self._publish_now)(publication)
        else:
            await self._publish_now(publication)

    async def _publish_now(self, publication: Publication) -> None:
        """Check, encode and send a publication (the innermost step of the middleware chain)."""
        self._ensure_open()
        key = self._check_key(publication.key)
        checked = self._check_headers(publication.headers)
        if not publication.many:
            (payload,), (message_id,) = publication.payloads, publication.message_ids
            message = self._prepare(payload, checked, message_id)
            await self._guard(self._send(key, (message,)), "publish")
            return
        messages = []
        published_at = str(int(time.time() * 1000))
        limit = self.max_payload_bytes  # read once: the loop runs per message
        for index, (payload, message_id) in enumerate(
            zip(publication.payloads, publication.message_ids, strict=True)
        ):
            try:
                messages.append(self._prepare(payload, checked, message_id, published_at, limit))
            except PayloadError as exc:
                raise PayloadError(f"payloads[{index}]: {exc}; nothing was published") from None
        if messages:
            chunks = 1 + len(messages) // 1000
            await self._guard(self._send(key, messages), "publish_many", scale=chunks)

    def _middlewares(self) -> list[Middleware]:
        """The middleware around this backend's calls: the process's, then its own."""
        process = installed()
        return [*process, *self.middleware] if process or self.middleware else []

    async def consume(
        self,
        *,
        group: ConsumerGroup | None = None,
        keys: Sequence[MessageQueueKey] | MessageQueueKey | None = None,
    ) -> AsyncGenerator[MessageQueueMessage, None]:
        """Yield payloads; each is acknowledged when the caller asks for the next one.

        A payload whose processing does not finish (the caller raises, is cancelled or
        closes the iterator) is delivered again. `keys=None` reads `ABE_MQ_KEYS`.
        """
        subscription = self.subscribe(group=group, keys=keys)
        take = subscription._take_payload
        async with subscription:
            while True:
                # what is buffered needs no coroutine nor Delivery; __anext__ fetches (or ends)
                taken = take()
                if taken is None:
                    try:
                        delivery = await subscription.__anext__()
                    except StopAsyncIteration:
                        return
                    taken = delivery.message, delivery.payload
                message, payload = taken
                try:
                    yield payload
                except BaseException:
                    await subscription._nack_unfinished(Delivery(message, payload, subscription))
                    raise
                if not subscription._ack_message_nowait(message):  # the usual case: queued
                    await Delivery(message, payload, subscription).ack()

    def subscribe(
        self,
        *,
        group: ConsumerGroup | None = None,
        keys: Sequence[MessageQueueKey] | MessageQueueKey | None = None,
        prefetch: int | None = None,
    ) -> Subscription:
        """Deliveries for `group` over `keys`, holding at most `prefetch` unsettled at once."""
        self._ensure_open()
        resolved_keys = self._resolve_keys(keys)
        resolved_group = DEFAULT_GROUP if group is None else group
        self.group_rules.check(resolved_group)
        bound = self.settings.prefetch if prefetch is None else prefetch
        if bound < 1:
            raise ValueError(f"prefetch must be at least 1, got {bound}")
        subscription = Subscription(
            self, resolved_group, resolved_keys, bound, self.settings.poll_interval
        )
        self._subscriptions.add(subscription)
        return subscription

    async def delete_keys(self, keys: Sequence[MessageQueueKey] | MessageQueueKey) -> None:
        """Delete `keys` and their dead-letter keys from the broker: messages and groups alike.

        For keys a tool or a test made for itself (`abe check`, `abe demo` and `abe bench`
        clean up with it); close the subscriptions reading them first. Keys that do not
        exist are skipped. Raises `NotImplementedError` when the backend cannot delete keys.
        """
        self._ensure_open()
        if isinstance(keys, str):
            keys = (keys,)
        targets = dict.fromkeys(
            name for key in keys for name in (self._check_key(key), dead_letter_key(key))
        )
        if targets:
            await self._guard(self._delete_keys(tuple(targets)), "delete_keys", scale=len(targets))

    async def delete_group(self, group: str, keys: Sequence[MessageQueueKey]) -> None:
        """Delete what `group` keeps on `keys` (its position, pending entries); messages stay.

        For a group a tool made for itself (`abe consume` reads in a temporary group and
        removes it after); close its subscriptions first. Raises `NotImplementedError`
        when the backend cannot.
        """
        self._ensure_open()
        checked = tuple(dict.fromkeys(self._check_key(key) for key in keys))
        if checked:
            await self._guard(
                self._delete_group(group, checked), "delete_group", scale=len(checked)
            )

    async def existing_keys(self, keys: Sequence[MessageQueueKey]) -> list[MessageQueueKey]:
        """Those of `keys` that exist on the broker now, in the order given; creates nothing.

        Raises `NotImplementedError` when the backend cannot tell.
        """
        self._ensure_open()
        checked = tuple(dict.fromkeys(self._check_key(key) for key in keys))
        found = set(await self._guard(self._existing_keys(checked), "existing_keys"))
        return [key for key in checked if key in found]

    # ---- lifecycle --------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether `close()` has been called."""
        return self._closed

    @property
    def held_messages(self) -> int:
        """Deliveries fetched by this backend's subscriptions and not yet settled."""
        return sum(subscription.held for subscription in list(self._subscriptions))

    @property
    def max_payload_bytes(self) -> int:
        """The largest JSON body `publish` accepts: the settings' `max_payload_bytes` when
        they declare one (a provider's limit variable), else the capabilities' figure."""
        limit = getattr(self.settings, "max_payload_bytes", None)
        return limit if isinstance(limit, int) else self.capabilities.max_payload_bytes

    @property
    def redelivery_timeout(self) -> float:
        """Seconds after which an unsettled delivery is delivered again."""
        return self.settings.redelivery_timeout

    async def close(self) -> None:
        """Stop every subscription, flush acknowledgements, release connections. Idempotent."""
        if self._closed:
            return
        self._closed = True
        subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            await subscription.stop()
        results = await asyncio.gather(
            *(subscription.aclose() for subscription in subscriptions), return_exceptions=True
        )
        for result in results:
            if isinstance(result, Exception):
                log.warning("%s: closing a subscription failed: %s", self.name, result)
        try:
            await self._close()
        finally:
            self.secret_filter.uninstall()
            self.outage.uninstall()

    async def __aenter__(self) -> Self:
        self._ensure_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        where = self._describe()
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {where + ' ' if where else ''}{state}>"

    # ---- shared machinery (used by Subscription and by providers) -----------------------------

    def _ensure_open(self) -> None:
        if self._closed:
            raise BackendClosedError(
                f"this {self.name} backend is closed; create a new one with load_backend()"
            )

    def _check_key(self, key: str) -> str:
        if key not in self._valid_keys:
            self.key_rules.check(key)
            if len(self._valid_keys) < 10_000:
                self._valid_keys.add(key)
        return key

    def _resolve_keys(self, keys: Sequence[str] | str | None) -> tuple[str, ...]:
        if isinstance(keys, str):
            keys = (keys,)
        if keys is None:
            keys = Environment().keys()
            if keys is None:
                raise ConfigurationError(
                    self.name,
                    {
                        KEYS.name: "is not set and consume() was given no keys; pass "
                        "keys=[...] or set ABE_MQ_KEYS=orders,payments"
                    },
                )
        resolved = tuple(dict.fromkeys(self._check_key(key) for key in keys))
        if not resolved:
            raise ValueError("keys must name at least one key")
        return resolved

    def _check_headers(self, headers: Mapping[str, str] | None) -> dict[str, str] | None:
        """The user's headers if every one may travel (abe.headers' rules), else PayloadError."""
        if not headers:
            return None
        return check_user_headers(
            headers,
            reserved=self.reserved_headers,
            prefixes=self.reserved_header_prefixes,
            backend=self.name,
        )

    def _prepare(
        self,
        payload: MessageQueuePayload,
        headers: dict[str, str] | None,
        message_id: str,
        published_at: str | None = None,
        limit: int | None = None,
    ) -> OutgoingMessage:
        """The encoded message for `payload`; `headers` were checked by `_check_headers`."""
        body = encode_payload(payload, self.max_payload_bytes if limit is None else limit)
        wire = {
            HEADER_ID: message_id,
            HEADER_PUBLISHED_AT: published_at or str(int(time.time() * 1000)),
        }
        if headers:
            wire.update(headers)
        return OutgoingMessage(message_id, body, wire)

    async def _guard(
        self, awaitable: Awaitable[T], action: str, *, scale: int = 1, waits: float = 0.0
    ) -> T:
        """Await a broker call, translating client errors and, if enforced, bounding its time.

        `waits` is how long the call may legitimately block on its own (a long poll), added
        to the operation timeout.
        """
        limit = self.settings.operation_timeout * scale + waits
        try:
            if self.enforce_operation_timeout:
                result = await bounded(awaitable, limit)
            else:
                result = await awaitable
        except BackendUnavailableError as exc:
            self.outage.failed(str(exc))
            raise
        except AbeError:
            raise
        except asyncio.TimeoutError as exc:
            translated = self._translate_error(exc)
            if translated is exc:
                translated = BackendUnavailableError(
                    f"{self.name}: {action} did not complete within {limit:g}s"
                    f"{' (' + self._describe() + ')' if self._describe() else ''}; check that "
                    f"the broker is up, or raise ABE_MQ_OPERATION_TIMEOUT if it is only slow"
                )
            self._note_failure(translated)
            raise translated from exc
        except Exception as exc:
            translated = self._translate_error(exc)
            self._note_failure(translated)
            if translated is exc:
                raise
            raise translated from exc
        if self.outage.down:
            self.outage.recovered()
        return result

    def _note_failure(self, error: BaseException) -> None:
        """An outage starts (once) when a call fails because the broker is away."""
        if isinstance(error, BackendUnavailableError):
            self.outage.failed(str(error))

    async def _open_receiver_for(self, subscription: Subscription) -> Receiver:
        self._ensure_open()
        return await self._guard(
            self._open_receiver(subscription.group, subscription.keys), "subscribe"
        )

    async def _dead_letter(
        self, message: IncomingMessage, reason: str, *, wrap_body: bool = False
    ) -> None:
        """Write `message` to `<key>-dlq` with headers saying why.

        The body is the original one, except for a body that was not a JSON object
        (`wrap_body`): it is wrapped as `{"undecodable_body": text}` (or
        `{"undecodable_body_base64": ...}` when not UTF-8), so that reading the
        dead-letter key with abe shows it instead of dead-lettering it again.
        """
        headers = dict(message.headers)
        headers.setdefault(HEADER_ID, message.broker_id or new_message_id())
        headers[HEADER_ERROR] = header_text(reason)  # one line: some brokers fold them
        headers[HEADER_ATTEMPTS] = str(message.attempt)
        headers[HEADER_ORIGINAL_KEY] = message.key
        body = wrap_undecodable(message.body, self.max_payload_bytes) if wrap_body else message.body
        letter = OutgoingMessage(headers[HEADER_ID], body, headers)
        await self._guard(self._send(dead_letter_key(message.key), (letter,)), "dead-letter")

    def _forget(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)
