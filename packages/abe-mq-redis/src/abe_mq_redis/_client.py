"""redis.asyncio clients built from RedisSettings: one place decides every connection option.

Two pools per backend: one for commands (publish, ack, claim), whose socket timeout is
the operation timeout, and one for blocking XREADGROUP calls, whose socket timeout is
the block time plus the operation timeout, so that redis-py never cuts a read that is
still legitimately blocked on the server (its default socket timeout would).
"""

from __future__ import annotations

import asyncio
import importlib
import ssl
import sys
from collections.abc import Iterable
from typing import Any

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
    parse_url,
)
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from abe_mq_redis._settings import RedisSettings

__all__ = ["connection_kwargs", "make_client"]

if sys.version_info >= (3, 12):
    from asyncio import timeout as _timeout
else:  # what redis-py itself uses there (asyncio.timeout is sound from 3.11.3)
    _timeout = importlib.import_module(
        "asyncio" if sys.version_info >= (3, 11, 3) else "async_timeout"
    ).timeout

_WAIT_FOR_KEEPS_CANCELLATION = sys.version_info >= (3, 12)
"""Before 3.12, asyncio.wait_for loses a cancellation that arrives as its awaitable ends.

redis-py bounds every socket write with `asyncio.wait_for` when a socket timeout is set,
so a task cancelled just as its command was written would carry on as if nothing had
happened (a consume loop that never stops: CPython gh-86296). On those versions abe's
connections bound the write with a timeout context instead.
"""


class _CancellableSend(AbstractConnection):
    """A connection whose writes never swallow a cancellation (see above)."""

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        limit = self.socket_timeout
        if not limit:
            return await super().send_packed_command(command, check_health)
        self.socket_timeout = None  # the parent then writes without asyncio.wait_for
        try:
            async with _timeout(limit):
                await super().send_packed_command(command, check_health)
        except asyncio.TimeoutError:
            await self.disconnect(nowait=True)
            raise RedisTimeoutError("Timeout writing to socket") from None
        finally:
            self.socket_timeout = limit


class _TcpConnection(_CancellableSend, Connection):
    """redis-py's TCP connection, with cancellable writes."""


class _TlsConnection(_CancellableSend, SSLConnection):
    """redis-py's TLS connection, with cancellable writes."""


class _UnixConnection(_CancellableSend, UnixDomainSocketConnection):
    """redis-py's Unix-socket connection, with cancellable writes."""


_SAFE_CLASSES: dict[type[AbstractConnection], type[AbstractConnection]] = {
    Connection: _TcpConnection,
    SSLConnection: _TlsConnection,
    UnixDomainSocketConnection: _UnixConnection,
}


def connection_kwargs(settings: RedisSettings, *, socket_timeout: float) -> dict[str, Any]:
    """Keyword arguments for a redis.asyncio ConnectionPool reaching `settings.url`.

    Options in the URL's query string (redis-py's own, e.g. `?ssl_cert_reqs=none`) are
    honoured; credentials and TLS files come from the settings; RESP2 is always used.
    TLS verifies the certificate and the host name unless the URL turns that off: redis-py
    5.x does not check the host name by default, 8.x does, and abe must not depend on which.
    A connection error is retried 3 times on a fresh connection (a server restart leaves
    stale pooled sockets); a timeout is not, so no call outlives its timeout by much.
    """
    kwargs: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": settings.operation_timeout,
        "retry": Retry(
            ExponentialBackoff(cap=0.5, base=0.05), 3, supported_errors=(RedisConnectionError,)
        ),
        "health_check_interval": 0,
    }
    kwargs.update(parse_url(settings.url))
    kwargs["protocol"] = 2
    kwargs["username"] = settings.username
    kwargs["password"] = settings.password.reveal() if settings.password else None
    connection_class = kwargs.get("connection_class", Connection)
    if not _WAIT_FOR_KEEPS_CANCELLATION:
        kwargs["connection_class"] = _SAFE_CLASSES.get(connection_class, connection_class)
    if connection_class is not UnixDomainSocketConnection:
        kwargs.setdefault("socket_keepalive", True)
    if connection_class is SSLConnection:
        cert_reqs = kwargs.setdefault("ssl_cert_reqs", "required")
        verifies = cert_reqs not in ("none", ssl.CERT_NONE)  # no name check without a chain
        kwargs.setdefault("ssl_check_hostname", verifies)
        if settings.tls_ca_file is not None:
            kwargs["ssl_ca_certs"] = str(settings.tls_ca_file)
        if settings.tls_cert_file is not None and settings.tls_key_file is not None:
            kwargs["ssl_certfile"] = str(settings.tls_cert_file)
            kwargs["ssl_keyfile"] = str(settings.tls_key_file)
    return kwargs


def make_client(settings: RedisSettings, *, socket_timeout: float) -> Redis:
    """A redis.asyncio client with its own connection pool (no limit: callers bound it)."""
    pool = ConnectionPool(**connection_kwargs(settings, socket_timeout=socket_timeout))
    return Redis(connection_pool=pool)
