"""One NATS connection per backend: opened within a deadline, reconnected while the backend lives.

nats-py's own `connect()` retries forever once reconnection is allowed, and an
authorisation failure is only reported to its error callback. This module bounds the
first connect by the caller's deadline, turns a refused credential into
AuthenticationError at once, keeps reconnecting in the background after a server
restart, and builds a new client if the old one was closed for good (a server closes
the connection on some protocol errors). Receivers watch `epoch` to learn that their
pull requests were lost with the old connection.

When TLS was asked for, nothing is sent to a server that did not switch the connection
to TLS: nats-py upgrades only when the server's INFO requires it, and would otherwise
send CONNECT, credentials included, in clear text. `_TlsOnlyClient` refuses to build
that CONNECT, on the first connection and on every reconnection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from abe.errors import AuthenticationError, BackendUnavailableError
from abe_mq_nats._errors import is_auth_error, safe_text
from abe_mq_nats._settings import NatsSettings

__all__ = ["DEFAULT_MAX_PAYLOAD", "Connection", "ConnectionClosing"]

log = logging.getLogger("abe.nats")

T = TypeVar("T")

DEFAULT_MAX_PAYLOAD = 1_048_576
"""nats-server's default max_payload, assumed until a server says otherwise."""


class ConnectionClosing(Exception):
    """The backend was closed while an operation waited."""


class _TlsOnlyClient(NatsClient):
    """nats-py's client that never builds CONNECT (which carries every credential: token,
    user/password, NKey signature, JWT) on a connection that is not encrypted."""

    def _connect_command(self) -> bytes:
        if not _encrypted(self):
            # A nats.errors.Error: nats-py reports it to error_cb and tries the next server.
            raise nats.errors.SecureConnWantedError
        return super()._connect_command()


def _encrypted(client: NatsClient) -> bool:
    """Whether what `client` writes now goes through TLS (False when that cannot be told)."""
    writer = getattr(getattr(client, "_transport", None), "_io_writer", None)
    get_extra_info = getattr(writer, "get_extra_info", None)
    return get_extra_info is not None and get_extra_info("ssl_object") is not None


class Connection:
    """The backend's NATS client, created on first use and shared by publishers and readers."""

    def __init__(self, settings: NatsSettings, describe: Callable[[], str]) -> None:
        self._settings = settings
        self._describe = describe
        self.client: NatsClient | None = None
        self.js: JetStreamContext | None = None
        self.epoch = 0
        """Bumped whenever the server side of the connection was lost (disconnect, new client)."""
        self.max_payload = DEFAULT_MAX_PAYLOAD
        self._lock: asyncio.Lock | None = None
        self._changed: asyncio.Event | None = None
        self._last_error: BaseException | None = None
        self._closed = False
        self._closing: asyncio.Future[None] | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._listeners: weakref.WeakSet[Any] = weakref.WeakSet()
        self._warned_plain = False

    def watch(self, listener: Any) -> None:
        """Call `listener.connection_changed()` when the connection drops or comes back."""
        self._listeners.add(listener)

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
        for listener in list(self._listeners):
            listener.connection_changed()

    @property
    def connected(self) -> bool:
        """Whether the client is connected right now."""
        return self.client is not None and self.client.is_connected

    async def ready(self, deadline: float) -> NatsClient:
        """The connected client: connects, or awaits a reconnection, until `deadline`."""
        client = self.client
        if client is not None and client.is_connected:
            return client
        return await self._slow_ready(deadline)

    async def _slow_ready(self, deadline: float) -> NatsClient:
        loop = asyncio.get_running_loop()
        if self._lock is None:
            self._lock = asyncio.Lock()
        if self._changed is None:
            self._changed = asyncio.Event()
        while True:
            if self._closed:
                raise BackendUnavailableError("nats: the connection was closed")
            client = self.client
            if client is not None and client.is_connected:
                return client
            remaining = deadline - loop.time()
            if client is None or client.is_closed:
                async with self._lock:
                    if not self._closed and (self.client is None or self.client.is_closed):
                        await self._connect(deadline)
                continue
            # Reconnecting in the background: wait for it, or for the deadline.
            if remaining <= 0:
                raise self._unavailable("is reconnecting and did not come back in time")
            self._changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def _unavailable(self, what: str) -> BackendUnavailableError:
        error = self._last_error
        cause = f"; last error: {safe_text(error)}" if error is not None else ""
        where = self._describe()
        text = (
            f"nats: the connection to {where} {what}{cause}. Check that the server is up "
            f"and reachable, or raise ABE_MQ_OPERATION_TIMEOUT if it is only slow"
        )
        if isinstance(error, nats.errors.SecureConnWantedError):
            return BackendUnavailableError(
                f"nats: TLS was asked for (a tls:// URL in NATS_URL, or NATS_TLS_CA / "
                f"NATS_TLS_CERT / NATS_TLS_KEY), but {where} did not offer it, so nothing was "
                f"sent to it (no credentials either); enable TLS on the server, or, on a "
                f"trusted network only, use a nats:// URL and unset NATS_TLS_*"
            )
        if error is not None and is_auth_error(error):
            return AuthenticationError(
                f"nats: {where} refused the credentials ({safe_text(error)}); check "
                f"NATS_TOKEN, NATS_USER/NATS_PASSWORD, NATS_NKEY_SEED or NATS_CREDS"
            )
        return BackendUnavailableError(text)

    async def _connect(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise self._unavailable("could not be opened in time")
        settings = self._settings
        refused: asyncio.Future[BaseException] = loop.create_future()
        client = _TlsOnlyClient() if settings.tls else NatsClient()

        async def on_error(error: Exception) -> None:
            self._last_error = error
            log.debug("nats: %s: %s", type(error).__name__, safe_text(error))
            plain = isinstance(error, nats.errors.SecureConnWantedError)
            if (plain or is_auth_error(error)) and not refused.done():
                refused.set_result(error)
            elif plain and client is self.client and not self._warned_plain:
                self._warned_plain = True
                log.warning(
                    "nats: a server of %s did not offer TLS on reconnection; nothing was sent "
                    "to it, trying again",
                    self._describe(),
                )

        async def on_disconnected() -> None:
            if client is self.client and not client.is_closed:
                log.warning("nats: disconnected from %s; reconnecting", self._describe())
            self.epoch += 1
            self._notify()

        async def on_reconnected() -> None:
            log.warning("nats: reconnected to %s", self._describe())
            self._warned_plain = False
            self.epoch += 1
            self.max_payload = client.max_payload or DEFAULT_MAX_PAYLOAD
            self._notify()

        async def on_closed() -> None:
            self.epoch += 1
            self._notify()

        options: dict[str, Any] = {
            "servers": list(settings.servers),
            "name": "abe",
            "error_cb": on_error,
            "disconnected_cb": on_disconnected,
            "reconnected_cb": on_reconnected,
            "closed_cb": on_closed,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": settings.reconnect_wait,
            "connect_timeout": max(0.1, min(settings.connect_timeout, remaining)),
            "tls": settings.tls_context(),
        }
        options.update(settings.credentials())
        connecting = loop.create_task(client.connect(**options))
        self._connecting = connecting
        try:
            await asyncio.wait(
                (connecting, refused), timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            await _abandon(connecting, client)
            raise
        self._connecting = None
        succeeded = (
            connecting.done() and not connecting.cancelled() and connecting.exception() is None
        )
        if succeeded and self._closed:  # close() came first: do not keep this connection
            refused.cancel()
            await _abandon(connecting, client)
            raise BackendUnavailableError("nats: the connection was closed")
        if succeeded:
            if not refused.done():
                refused.cancel()
            self.client = client
            self.js = client.jetstream(timeout=settings.operation_timeout)
            self.max_payload = client.max_payload or DEFAULT_MAX_PAYLOAD
            self.epoch += 1
            self._last_error = None
            self._notify()
            return
        if connecting.done() and not connecting.cancelled():
            error = connecting.exception()
            if error is not None:
                self._last_error = error
        if refused.done() and not refused.cancelled():
            self._last_error = refused.result()
        else:
            refused.cancel()
        await _abandon(connecting, client)
        raise self._unavailable(
            f"could not be opened within {max(remaining, 0):.1f}s"
        ) from self._last_error

    async def unless_closed(self, awaitable: Awaitable[T]) -> T:
        """Await `awaitable`, or raise ConnectionClosing as soon as `close()` is called."""
        if self._closed:
            raise ConnectionClosing
        loop = asyncio.get_running_loop()
        if self._closing is None:
            self._closing = loop.create_future()
        task = asyncio.ensure_future(awaitable)
        try:
            await asyncio.wait((task, self._closing), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if task.cancelled():
            raise ConnectionClosing
        return task.result()

    async def close(self) -> None:
        """Close the client (sending what is buffered first). Idempotent."""
        self._closed = True
        if self._closing is not None and not self._closing.done():
            self._closing.set_result(None)
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        client, self.client, self.js = self.client, None, None
        if client is not None and not client.is_closed:
            try:
                await asyncio.wait_for(client.close(), self._settings.operation_timeout)
            except (asyncio.TimeoutError, nats.errors.Error, OSError) as exc:
                log.debug("nats: closing the connection: %s", safe_text(exc))


async def _abandon(connecting: asyncio.Task[None], client: NatsClient) -> None:
    """Stop a connect that did not finish and release whatever it opened."""
    connecting.cancel()
    await asyncio.gather(connecting, return_exceptions=True)
    with contextlib.suppress(Exception):
        await client.close()
