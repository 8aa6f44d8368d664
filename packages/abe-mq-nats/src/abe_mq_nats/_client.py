"""The backend's NATS connection, the JetStream calls on it, and the receivers that pull from it.
`epoch` is bumped whenever the connection was lost, so receivers learn their requests were too."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.js import JetStreamContext, api

from abe.errors import AbeError, BackendUnavailableError, ConfigurationError
from abe.provider import Deadline, IncomingMessage, Receiver, close_quietly, wait_event
from abe_mq_nats._errors import refused_credentials
from abe_mq_nats._settings import NatsSettings

__all__ = ["DEFAULT_MAX_PAYLOAD", "JetStream", "NatsReceiver", "StreamRef", "stream_name"]

log = logging.getLogger("abe.nats")
T = TypeVar("T")

DEFAULT_MAX_PAYLOAD = 1_048_576  # nats-server's default, assumed until a server says otherwise
STREAM_DESCRIPTION = "abe key {key}"  # of the streams abe creates, which are abe's to delete
_NAME_IN_USE, _SUBJECTS_OVERLAP, _NO_CLUSTER = 10058, 10065, 10074
_EMPTY: Mapping[str, str] = MappingProxyType({})
_NAK = b"-NAK"
_LONGEST_WAIT = 5.0  # longest a single-message request waits on the server
_LATE_STATUS = 1.0  # how late after its expiry a request's 408 may come before it counts as lost
_MIN_BATCH = 10  # a backlog is pulled in requests of at least this many, when the credit allows
_ASK_WAIT = 0.5  # the shortest wait for an API answer before asking (or looking) again
_CHECK = "Check that the server is up and reachable, or raise ABE_MQ_OPERATION_TIMEOUT if slow"


class _TlsOnlyClient(NatsClient):
    """nats-py's client that never builds CONNECT (it carries every credential) unencrypted."""

    def _connect_command(self) -> bytes:
        writer = getattr(getattr(self, "_transport", None), "_io_writer", None)
        if getattr(writer, "get_extra_info", lambda _: None)("ssl_object") is None:
            raise nats.errors.SecureConnWantedError  # to error_cb; nats-py tries the next server
        return super()._connect_command()


@dataclass(frozen=True)
class StreamRef:
    """The stream that stores a key: `dedicated` to that key alone, `own` when abe made it."""

    name: str
    dedicated: bool
    own: bool = False


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def stream_name(key: str, *, hashed: bool = False) -> str:
    """The stream abe creates for `key` ('.' written '_'; `hashed` when that name is taken)."""
    return key.replace(".", "_") + (f"-{_digest(key)}" if hashed else "")


def consumer_name(group: str, key: str, *, dedicated: bool) -> str:
    """The group's durable consumer: the group's name, plus a digest of `key` in shared streams."""
    return group if dedicated else f"{group}-{_digest(key)}"


def _refusal(error: BaseException) -> bool:
    """Whether `error` refuses this client (credentials, or no TLS where it was asked for)."""
    return isinstance(error, nats.errors.SecureConnWantedError) or refused_credentials(error)


class JetStream:
    """One NATS client per backend, made on first use, and the stream and consumer calls."""

    def __init__(self, settings: NatsSettings, where: str, scrub: Callable[[str], str]) -> None:
        self.settings, self.where, self._scrub = settings, where, scrub
        self.client: NatsClient | None = None
        self.epoch = 0
        self.max_payload = DEFAULT_MAX_PAYLOAD
        self.streams: dict[str, StreamRef] = {}
        self._finding: dict[str, asyncio.Lock] = {}  # one lookup or create per key at a time
        self.stopped = asyncio.Event()  # set by close(): waits bounded by it end
        self.wakers: weakref.WeakSet[asyncio.Event] = weakref.WeakSet()  # set on any change
        self._changed, self._lock = asyncio.Event(), asyncio.Lock()
        self._connecting: asyncio.Future[None] | None = None
        self._last_error: BaseException | None = None
        self._warned_plain = False

    async def ask(
        self,
        deadline: Deadline | None,
        request: Callable[..., Awaitable[T]],  # a JetStreamContext method
        *args: Any,
        **kwargs: Any,
    ) -> T:
        """A repeatable JetStream API request, asked again while `deadline` allows if unanswered
        (a 2.9 cluster electing a leader, or racing creates: nats-io/nats-server#3677)."""
        deadline = deadline or Deadline(self.settings.operation_timeout)
        while True:
            wait = max(_ASK_WAIT, deadline.remaining / 3)
            client = await self.ready(deadline)
            try:
                return await request(client.jetstream(timeout=wait), *args, **kwargs)
            except nats.errors.TimeoutError:
                if deadline.expired:
                    raise

    def _bump(self) -> None:
        """The connection dropped, came back or was replaced: wake whoever waits on it."""
        self.epoch += 1
        for event in (self._changed, *self.wakers):
            event.set()

    async def ready(self, deadline: Deadline) -> NatsClient:
        """The connected client: connects, or awaits a reconnection, until `deadline`."""
        while (client := self.client) is None or not client.is_connected:
            if self.stopped.is_set():
                raise BackendUnavailableError("nats: the connection was closed")
            if client is None or client.is_closed:
                async with self._lock:
                    if self.client is None or self.client.is_closed:
                        await self._connect(deadline)
            else:  # reconnecting in the background: wait for it
                self._changed.clear()
                if not await wait_event(self._changed, deadline.remaining):
                    raise self._unavailable("is reconnecting and did not come back in time")
        return client

    def _unavailable(self, what: str) -> BaseException:
        """A refusal as nats-py raised it (the error map words it), else BackendUnavailableError."""
        error = self._last_error
        if error is not None and _refusal(error):
            return error
        cause = f"; last error: {type(error).__name__}: {error}" if error is not None else ""
        text = f"nats: the connection to {self.where} {what}{cause}. {_CHECK}"
        unavailable = BackendUnavailableError(self._scrub(text))
        unavailable.__cause__ = error
        return unavailable

    async def _connect(self, deadline: Deadline) -> None:
        """Connect within `deadline` (each server twice at most); nats-py then reconnects."""
        if (remaining := deadline.remaining) <= 0:
            raise self._unavailable("could not be opened in time")
        client, self._last_error = _TlsOnlyClient() if self.settings.tls else NatsClient(), None
        timeout = max(0.1, min(self.settings.connect_timeout, remaining))
        self._connecting = connecting = asyncio.ensure_future(
            client.connect(**self._options(client), connect_timeout=timeout)  # type: ignore[arg-type]
        )
        try:
            await asyncio.wait({connecting}, timeout=remaining)
        except asyncio.CancelledError:
            await _abandon(connecting, client)
            raise
        connected = connecting.done() and not connecting.cancelled()
        if connected and (error := connecting.exception()) is not None:
            connected = False
            if not isinstance(error, nats.errors.NoServersError):  # else on_error saw why
                self._last_error = error
        if not connected or self.stopped.is_set():
            late = "" if connecting.done() else f" within {remaining:.1f}s"
            await _abandon(connecting, client)
            if self.stopped.is_set():
                raise BackendUnavailableError("nats: the connection was closed")
            raise self._unavailable(f"could not be opened{late}")
        client.options["max_reconnect_attempts"] = -1
        self.client, self._last_error = client, None
        self.max_payload = client.max_payload or DEFAULT_MAX_PAYLOAD
        self._bump()

    def _options(self, client: NatsClient) -> dict[str, Any]:
        """nats-py's `connect()` arguments, with callbacks that keep `epoch` current and warn of a
        server without TLS on reconnection (nats-py tells only `on_error`, and retries)."""

        async def on_error(error: Exception) -> None:
            if self._last_error is None or not _refusal(self._last_error):  # that says most
                self._last_error = error
            log.debug("nats: %s: %s", type(error).__name__, error)
            plain = isinstance(error, nats.errors.SecureConnWantedError)
            if plain and client is self.client and not self._warned_plain:
                self._warned_plain = True
                log.warning("nats: %s did not offer TLS on reconnection; retrying", self.where)

        async def on_change() -> None:  # disconnected, reconnected or closed
            if client.is_connected:
                self._warned_plain, self._last_error = False, None
                self.max_payload = client.max_payload or DEFAULT_MAX_PAYLOAD
            self._bump()

        return {
            "servers": list(self.settings.servers),
            "name": "abe",
            "error_cb": on_error,
            "disconnected_cb": on_change,
            "reconnected_cb": on_change,
            "closed_cb": on_change,
            "allow_reconnect": True,
            "max_reconnect_attempts": 1,  # for the first connect: then -1, for ever
            "reconnect_time_wait": self.settings.reconnect_wait,
            "tls": self.settings.tls_context(),
            **self.settings.credentials(),
        }

    async def close(self) -> None:
        """Close the client (sending what is buffered first). Idempotent."""
        self.stopped.set()
        if self._connecting is not None:
            self._connecting.cancel()
        client, self.client = self.client, None
        if client is not None and not client.is_closed:
            await close_quietly([client.close()], self.settings.operation_timeout, log, "nats")

    async def stream_for(self, key: str, deadline: Deadline, *, refresh: bool = False) -> StreamRef:
        """The stream storing `key`: the one covering it (ABE_NATS_STREAM's or another), or new."""
        if (known := self.streams.get(key)) is not None and not refresh:
            return known
        async with self._finding.setdefault(key, asyncio.Lock()):
            latest = self.streams.get(key)
            if latest is not None and (not refresh or latest is not known):
                return latest  # found (or found again) by the caller this one waited for
            if (configured := self.settings.stream) is not None:  # it must exist
                try:
                    await self.ask(deadline, JetStreamContext.stream_info, configured)
                except nats.js.errors.NotFoundError:
                    problem = f"names {configured!r}, a stream that does not exist"
                    raise ConfigurationError("nats", {"ABE_NATS_STREAM": problem}) from None
            ref = await self.existing_stream(key, deadline) or await self._create(key, deadline)
            self.streams[key] = ref
            return ref

    async def existing_stream(self, key: str, deadline: Deadline | None = None) -> StreamRef | None:
        """The stream covering `key`, or None (a lookup: it creates nothing)."""
        try:
            name = await self.ask(deadline, JetStreamContext.find_stream_name_by_subject, key)
        except nats.js.errors.NotFoundError:
            return None
        config = (await self.ask(deadline, JetStreamContext.stream_info, name)).config
        own = config.description == STREAM_DESCRIPTION.format(key=key)
        return StreamRef(name, dedicated=list(config.subjects or []) == [key], own=own)

    async def _create(self, key: str, deadline: Deadline) -> StreamRef:
        settings = self.settings
        config = api.StreamConfig(
            description=STREAM_DESCRIPTION.format(key=key),
            subjects=[key],
            retention=api.RetentionPolicy(settings.retention),
            storage=api.StorageType(settings.storage),
            num_replicas=settings.replicas,
            max_age=settings.max_age,
            max_bytes=settings.max_bytes,
            duplicate_window=settings.duplicate_window,
            discard=api.DiscardPolicy.OLD,
        )
        names = (stream_name(key), stream_name(key, hashed=True))
        for name in names:
            try:
                await self.ask(deadline, JetStreamContext.add_stream, config.evolve(name=name))
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code == _NO_CLUSTER:
                    problem = f"is {settings.replicas}, but {exc.description}"
                    raise ConfigurationError("nats", {"ABE_NATS_REPLICAS": problem}) from None
                if exc.err_code not in (_NAME_IN_USE, _SUBJECTS_OVERLAP):
                    raise AbeError(
                        f"nats: JetStream refused to create the stream {name!r} for key {key!r}: "
                        f"{exc.description} (err_code {exc.err_code}); check the ABE_NATS_* "
                        f"stream settings"
                    ) from exc
                # Someone created a stream for this key meanwhile, or the name is taken.
                if (existing := await self.existing_stream(key, deadline)) is not None:
                    return existing
                continue
            log.info("nats: created stream %r for key %r", name, key)
            return StreamRef(name, dedicated=True, own=True)
        raise AbeError(
            f"nats: cannot create a stream for key {key!r}: the names {names[0]!r} and "
            f"{names[1]!r} are taken by streams for other subjects"
        )

    async def consumer_for(self, ref: StreamRef, key: str, group: str, deadline: Deadline) -> str:
        """Create (or update, or adopt) the durable pull consumer of `group` on `key`."""
        durable = consumer_name(group, key, dedicated=ref.dedicated)
        config = api.ConsumerConfig(
            name=durable,
            durable_name=durable,
            description=f"abe group {group} on {key}",
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.settings.redelivery_timeout,
            filter_subject=key,
            max_ack_pending=-1,
        )
        try:
            await self.ask(deadline, JetStreamContext.add_consumer, ref.name, config)
        except nats.js.errors.BadRequestError as exc:
            # It exists with settings that cannot be changed in place: use it as it is.
            try:
                info = await self.ask(deadline, JetStreamContext.consumer_info, ref.name, durable)
            except nats.js.errors.NotFoundError:
                raise exc from None
            if info.config.deliver_subject:
                raise AbeError(
                    f"nats: consumer {durable!r} on stream {ref.name!r} is a push consumer; "
                    f"abe groups are pull consumers. Delete it or use another group name"
                ) from exc
            log.info("nats: using the existing consumer %r on %r as it is", durable, ref.name)
        return durable


async def _abandon(connecting: asyncio.Future[None], client: NatsClient) -> None:
    """Stop a connect that did not finish and release whatever it opened."""
    connecting.cancel()
    await asyncio.gather(connecting, return_exceptions=True)
    with contextlib.suppress(Exception):
        await client.close()


@dataclass(eq=False)
class _Binding:
    """One key: its stream and durable consumer, and the pull request open on it, if any."""

    key: str
    stream: str = ""
    consumer: str = ""
    needs_setup: bool = True
    maybe_pending: bool = True  # then: a batched no_wait request
    token: str | None = None  # of the open request
    remaining: int = 0  # messages the open request may still bring
    no_wait: bool = False
    lost_at: float = 0.0  # loop time after which the open request, unanswered, is lost


class NatsReceiver(Receiver):
    """Reads `group` on `keys` with a pull request per key: `no_wait` batches while a key may hold
    messages, else one message that waits a few seconds (so none is held from other members)."""

    def __init__(self, jetstream: JetStream, group: str, keys: Sequence[str]) -> None:
        self._jetstream, self._group = jetstream, group
        self._bindings = [_Binding(key) for key in keys]
        self._by_consumer: dict[tuple[str, str], _Binding] = {}
        self._buffer: deque[IncomingMessage] = deque()
        self._client: NatsClient | None = None
        self._subscription: NatsSubscription | None = None
        self._inbox = ""
        self._epoch = self._counter = self._turn = 0
        self._closed = False
        self._wakeup = asyncio.Event()
        jetstream.wakers.add(self._wakeup)
        settings = jetstream.settings
        self._longest_wait = max(0.05, min(settings.redelivery_timeout / 2, _LONGEST_WAIT))
        self._answer_grace = max(1.0, min(settings.operation_timeout, 5.0))

    async def setup(self, deadline: Deadline) -> None:
        """Find (or re-create) the stream and consumer of each key that may lack them."""
        for binding in [binding for binding in self._bindings if binding.needs_setup]:
            refresh = bool(binding.stream)  # set up before: look again, it may have gone
            stream = await self._jetstream.stream_for(binding.key, deadline, refresh=refresh)
            durable = await self._jetstream.consumer_for(stream, binding.key, self._group, deadline)
            self._by_consumer.pop((binding.stream, binding.consumer), None)
            self._by_consumer[stream.name, durable] = binding
            binding.stream, binding.consumer = stream.name, durable
            binding.needs_setup, binding.maybe_pending = False, True

    async def fetch(self, max_messages: int, timeout: float) -> Sequence[IncomingMessage]:
        loop = asyncio.get_running_loop()
        deadline = Deadline(timeout)
        while not self._closed:
            self._wakeup.clear()
            await self._attach(deadline)  # at once when nothing changed
            open_ = [binding for binding in self._bindings if binding.token is not None]
            for binding in [binding for binding in open_ if binding.lost_at <= loop.time()]:
                log.debug("nats: no answer to a pull request on %r; checking it", binding.key)
                binding.token, binding.needs_setup = None, True
            draining = any(binding.no_wait and binding.token for binding in open_)
            if self._buffer and (len(self._buffer) >= max_messages or not draining):
                return [self._buffer.popleft() for _ in range(min(max_messages, len(self._buffer)))]
            await self.setup(deadline)  # the keys that need it, if any
            await self._request(max_messages, loop.time())
            if deadline.expired:
                return [self._buffer.popleft() for _ in range(min(max_messages, len(self._buffer)))]
            lost_at = [binding.lost_at for binding in self._bindings if binding.token is not None]
            # Until a delivery, a status, a connection change, the deadline or a request's loss.
            await wait_event(self._wakeup, min([deadline.at, *lost_at]) - loop.time())
        return []

    async def ack(self, messages: Sequence[IncomingMessage]) -> None:
        await self._settle(messages, b"+ACK")

    async def nack(self, message: IncomingMessage, delay: float) -> None:
        later = b'-NAK {"delay":%d}' % int(delay * 1e9)
        await self._settle([message], later if delay > 0 else _NAK)

    async def extend(self, messages: Sequence[IncomingMessage]) -> None:
        await self._settle(messages, b"+WPI")

    async def _settle(self, messages: Sequence[IncomingMessage], payload: bytes) -> None:
        if (client := self._jetstream.client) is None:
            raise BackendUnavailableError("nats: not connected; the message will come back later")
        for message in messages:
            await client.publish(message.handle, payload)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wakeup.set()
        subscription, self._subscription = self._subscription, None
        unread, self._buffer = list(self._buffer), deque()
        if subscription is not None:
            with contextlib.suppress(Exception):  # the connection may be gone already
                await subscription.unsubscribe()
        try:
            if unread and self._jetstream.client and not self._jetstream.client.is_closed:
                await self._settle(unread, _NAK)
        except Exception as exc:
            log.info("nats: %d unread message(s) come back after redelivery: %s", len(unread), exc)

    async def _attach(self, deadline: Deadline) -> None:
        """Subscribe the inbox on the live client; forget requests a lost connection held."""
        client = await self._jetstream.ready(deadline)
        first = self._client is None
        if client is not self._client:
            self._subscription = None
            self._inbox = client.new_inbox()
            self._subscription = await client.subscribe(f"{self._inbox}.*.*", cb=self._on_message)
            self._client = client
        if self._epoch != self._jetstream.epoch:
            self._epoch = self._jetstream.epoch
            for binding in [] if first else self._bindings:  # the server lost the requests
                binding.token, binding.needs_setup = None, True

    async def _request(self, max_messages: int, now: float) -> None:
        """Send pull requests for the credit left: keys with a backlog share it in batches of
        `_MIN_BATCH` or more, keys without one get one message each from half of it at most."""
        held = sum(binding.remaining for binding in self._bindings if binding.token is not None)
        budget = max_messages - len(self._buffer) - held
        idle = [b for b in self._bindings if b.token is None and not b.needs_setup]
        if budget <= 0 or not idle:
            return
        if len(idle) > 1:
            shift = self._turn % len(idle)
            self._turn += 1
            idle = idle[shift:] + idle[:shift]
        backlog = [binding for binding in idle if binding.maybe_pending]
        waiting = [b for b in idle if not b.maybe_pending][: budget // 2 if backlog else budget]
        backlog = backlog[: max(1, (budget - len(waiting)) // _MIN_BATCH)]
        share, extra = divmod(budget - len(waiting), len(backlog) or 1)
        client = self._client
        assert client is not None
        for position, binding in enumerate(backlog + waiting):
            if binding.maybe_pending:
                batch = share + (1 if position < extra else 0)
                request = b'{"batch":%d,"no_wait":true}' % batch
                lost_at = now + self._answer_grace
            else:
                # Random length: nats-server 2.9 loses a redelivery falling due as a waiting
                # request expires, so expiries must not fall into step with redeliveries.
                wait = self._longest_wait * random.uniform(0.5, 1.0)
                batch, request = 1, b'{"batch":1,"expires":%d}' % int(wait * 1e9)
                lost_at = now + wait + _LATE_STATUS
            self._counter += 1
            binding.token, binding.remaining = str(self._counter), batch
            binding.no_wait, binding.lost_at = binding.maybe_pending, lost_at
            subject = f"$JS.API.CONSUMER.MSG.NEXT.{binding.stream}.{binding.consumer}"
            index = self._bindings.index(binding)
            await client.publish(subject, request, reply=f"{self._inbox}.{index}.{binding.token}")

    async def _on_message(self, msg: Msg) -> None:
        """A delivery (on its own subject), or a status on `<inbox>.<binding>.<request>`."""
        if msg.reply:
            await self._on_delivery(msg, msg.reply)
            return
        _, index, token = msg.subject.rsplit(".", 2)
        binding = self._bindings[int(index)]
        headers = msg.headers or _EMPTY
        status = headers.get("Status")
        if token != binding.token or status == "100":  # an old request, or an idle heartbeat
            return
        binding.token = None
        if status in ("404", "408"):
            binding.maybe_pending = False
        else:
            description = str(headers.get("Description", "")).lower()
            deleted = status == "409" and ("deleted" in description or "push" in description)
            binding.needs_setup = status != "409" or deleted
            log.debug("nats: pull on %r ended: %s %s", binding.key, status, description)
        self._wakeup.set()

    async def _on_delivery(self, msg: Msg, reply: str) -> None:
        # $JS.ACK.[<domain>.<hash>.]<stream>.<consumer>.<delivered>.<seq>.<cseq>.<ts>.<pending>
        tokens = reply.split(".")
        if len(tokens) < 9 or len(tokens) == 10:
            log.debug("nats: ignoring a message with reply %r (not a JetStream delivery)", reply)
            return
        at = 2 if len(tokens) == 9 else 4
        stream, consumer, delivered, sequence = tokens[at : at + 4]
        binding = self._by_consumer.get((stream, consumer))
        if binding is None or self._closed:  # after close, or for a consumer no longer read
            if (client := self._jetstream.client) is not None and client.is_connected:
                with contextlib.suppress(Exception):  # given back now, not after redelivery
                    await client.publish(reply, _NAK)
            return
        if binding.token is not None:
            binding.remaining -= 1
            binding.token = binding.token if binding.remaining > 0 else None
        binding.maybe_pending = tokens[at + 6] != "0"
        headers = msg.headers or _EMPTY
        message = IncomingMessage(
            binding.key, msg.data, headers, int(delivered), f"{stream}:{sequence}", reply
        )
        self._buffer.append(message)
        self._wakeup.set()
