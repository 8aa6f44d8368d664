"""The connections to one Redis, shared by a backend and its receivers, and the calls on them.

Two pools: one for commands (publish, ack, claim), whose socket timeout is the operation
timeout, and one for blocking XREADGROUP calls, whose socket timeout is the block time
plus the operation timeout, so that redis-py never cuts a read that is still legitimately
blocked on the server. The hot path packs its known commands into RESP once and sends
them on pooled connections (`send_packed_command` / `read_response`): the same sockets,
timeouts and TLS as redis-py's own calls, less work per message.
"""

from __future__ import annotations

import asyncio
import importlib
import ssl
import sys
from collections.abc import Iterable, Sequence
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
from redis.exceptions import MaxConnectionsError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from abe.errors import InvalidKeyError
from abe_mq_redis._errors import reserved_name_error, wrong_type_error
from abe_mq_redis._settings import RedisSettings

__all__ = ["RedisClient", "bulk", "connection_kwargs", "delayed_key", "pack", "reply", "as_text"]

Arg = str | bytes | int

if sys.version_info >= (3, 12):
    from asyncio import timeout as _timeout
else:  # what redis-py itself uses there (asyncio.timeout is sound from 3.11.3)
    _timeout = importlib.import_module(
        "asyncio" if sys.version_info >= (3, 11, 3) else "async_timeout"
    ).timeout


def delayed_key(key: str, group: str) -> str:
    """The sorted set holding `group`'s entries of `key` nacked for longer than the timeout.

    Keys may not contain `{` or `}`, so no key a user publishes to can ever take this
    name; `{<key>}` is a Redis Cluster hash tag, keeping the set in the stream's slot.
    """
    return f"abe:{{{key}}}:delayed:{group}"


def pack(args: Sequence[Arg]) -> bytes:
    """One command as RESP: an array of bulk strings (str as UTF-8, int as decimal)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = (
            arg.encode() if isinstance(arg, str) else arg if isinstance(arg, bytes) else b"%d" % arg
        )
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


def bulk(data: bytes) -> bytes:
    """One RESP bulk string; `pack` for commands assembled from cached parts."""
    return b"$%d\r\n%b\r\n" % (len(data), data)


def as_text(value: Any) -> str:
    """A reply (bytes under RESP2) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


async def reply(connection: AbstractConnection) -> Any:
    """The next reply on `connection`; an error reply is returned as its exception, not raised."""
    try:
        return await connection.read_response()
    except ResponseError as exc:  # the server answered: the connection is still in step
        return exc


class RedisClient:
    """The command and reading pools of one backend, made on first use; the calls on them.

    `call()` sends packed commands on connections of the command pool, at most
    ABE_REDIS_POOL_SIZE at once: connections stay with the client between calls (no pool
    round trip per command), and callers beyond the limit wait for one instead of failing.
    """

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self._commands: Redis | None = None
        self._reads: ConnectionPool | None = None
        self._slots = asyncio.Semaphore(settings.pool_size)
        self._idle: list[AbstractConnection] = []

    @property
    def commands(self) -> Redis:
        """The redis-py client for commands that do not block (timeout: the operation's)."""
        if self._commands is None:
            timeout = self.settings.operation_timeout
            self._commands = Redis(
                connection_pool=ConnectionPool(
                    **connection_kwargs(self.settings, socket_timeout=timeout)
                )
            )
        return self._commands

    @property
    def read_pool(self) -> ConnectionPool:
        """Connections for XREADGROUP BLOCK: their socket timeout outlasts the longest block."""
        if self._reads is None:
            timeout = self.settings.poll_interval + self.settings.operation_timeout
            self._reads = ConnectionPool(**connection_kwargs(self.settings, socket_timeout=timeout))
        return self._reads

    async def call(self, packed: bytes, replies: int = 1) -> list[Any]:
        """Send `packed` (holding `replies` commands) and return every reply, in order.

        A connection that turns out to be broken (the server restarted since its last
        use) is replaced and the commands sent once more, as redis-py itself does; a call
        cut short (cancelled, timed out) drops its connection, since a reply may be coming.
        """
        pool = self.commands.connection_pool
        async with self._slots:
            for attempt in (1, 2):
                connection = self._idle.pop() if self._idle else await pool.get_connection()  # type: ignore[no-untyped-call]
                done = False
                try:
                    await connection.send_packed_command(packed, check_health=False)
                    answers = [await reply(connection) for _ in range(replies)]
                    done = True
                    return answers
                except RedisConnectionError as exc:
                    if attempt == 2 or isinstance(exc, MaxConnectionsError):
                        raise
                finally:
                    if done:
                        self._idle.append(connection)
                    else:
                        await connection.disconnect(nowait=True)
                        await pool.release(connection)
        raise AssertionError("unreachable")  # pragma: no cover

    async def create_groups(self, group: str, keys: Sequence[str]) -> None:
        """XGROUP CREATE <key> <group> 0 MKSTREAM for each key: a new group reads from the start."""
        packed = b"".join(pack(("XGROUP", "CREATE", key, group, "0", "MKSTREAM")) for key in keys)
        replies = await self.call(packed, len(keys))
        await self.raise_first(
            [item for item in replies if not str(item).startswith("BUSYGROUP")], keys
        )

    async def raise_first(
        self, replies: Iterable[Any], keys: Iterable[str], group: str | None = None
    ) -> None:
        """Raise the first error of `replies`; a WRONGTYPE as the error naming the key at fault."""
        for item in replies:
            if isinstance(item, Exception):
                refined = await self.refine(item, tuple(keys), group)
                if refined is item:
                    raise item
                raise refined from item

    async def refine(
        self, error: Exception, keys: Sequence[str], group: str | None = None
    ) -> Exception:
        """For WRONGTYPE, the InvalidKeyError naming the key and the type Redis holds there.

        With `group`, the group's delayed-nack sets of `keys` are suspects too. Any other
        error is returned as it is (the backend translates it).
        """
        if "WRONGTYPE" not in str(error):
            return error
        suspects = [(key, key, "stream") for key in keys]
        if group is not None:
            suspects += [(delayed_key(key, group), key, "zset") for key in keys]
        try:
            found = await self.call(
                b"".join(pack(("TYPE", name)) for name, _, _ in suspects), len(suspects)
            )
        except Exception:
            return error
        for (name, key, expected), kind in zip(suspects, found, strict=False):
            if isinstance(kind, Exception) or as_text(kind) in (expected, "none"):
                continue
            if expected == "stream":
                return wrong_type_error(key, as_text(kind))
            return reserved_name_error(
                name, as_text(kind), f"group {group!r}'s long-delayed nacks of {key!r}"
            )
        return error

    async def delete_keys(self, keys: Sequence[str]) -> None:
        """DEL each stream with the delayed-nack sets of its groups; never a key of another type."""
        client = self.commands
        doomed: list[str] = []
        for key in keys:
            kind = as_text(await client.type(key))
            if kind == "none":
                continue
            if kind != "stream":
                raise InvalidKeyError(
                    f"key {key!r} holds a Redis {kind}, not a stream, so abe did not make it "
                    f"and will not delete it; remove it yourself if nothing needs it"
                )
            groups = await client.xinfo_groups(key)
            doomed += [key, *(delayed_key(key, as_text(group["name"])) for group in groups)]
        if doomed:
            await client.delete(*doomed)

    async def close(self) -> None:
        """Give the connections back and close both pools."""
        idle, self._idle = self._idle, []
        commands, reads = self._commands, self._reads
        self._commands = self._reads = None
        if commands is not None:
            for connection in idle:
                await commands.connection_pool.release(connection)
            await commands.aclose(close_connection_pool=True)
        if reads is not None:
            await reads.disconnect()


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
