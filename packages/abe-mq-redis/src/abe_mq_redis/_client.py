"""The connections to one Redis, shared by a backend and its receivers, and the calls on them;
in a Redis Cluster, through redis-py's cluster client (each command to its slot's primary)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import sys
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from hiredis import pack_command
from redis import exceptions as redis_errors
from redis.asyncio import ConnectionPool
from redis.asyncio import connection as connections
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AskError, MaxConnectionsError, NoPermissionError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from abe.errors import ConfigurationError, InvalidKeyError
from abe.provider import bounded
from abe_mq_redis._settings import RedisSettings

__all__ = ["Command", "RedisClient", "as_text", "connection_kwargs", "delayed_key", "exchange"]

Command = tuple[str | bytes | int, ...]
"""A Redis command and its arguments (str as UTF-8, int as decimal)."""


def delayed_key(key: str, group: str) -> str:
    """The zset of `group`'s long-delayed nacks of `key`: no key has a `{`; in the stream's slot."""
    return f"abe:{{{key}}}:delayed:{group}"


def as_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def reply(connection: connections.AbstractConnection) -> Any:
    """The next reply on `connection`; an error reply is returned as its exception, not raised."""
    try:
        return await connection.read_response()
    except ResponseError as exc:  # the server answered: the connection is still in step
        return exc


async def exchange(connection: connections.AbstractConnection, commands: Sequence[Command]) -> Any:
    """`commands` in one write on `connection`, their replies; hiredis packs 9 times as fast."""
    packed = [pack_command(command) for command in commands]  # type: ignore[arg-type]
    await connection.send_packed_command(packed, check_health=False)
    return [await reply(connection) for _ in commands]


_RAW: tuple[str, ...] = ("DEL", "EXISTS", "TYPE", "WAIT", "XACK", "XADD", "XAUTOCLAIM", "XCLAIM")
_RAW += ("XGROUP", "XINFO", "XPENDING", "XREADGROUP", "ZADD", "ZRANGEBYSCORE", "ZREM", "ZSCORE")
"""The commands abe sends: their replies are read as the server gives them, as on one node."""


def _cluster_client(options: dict[str, Any]) -> RedisCluster:
    """A cluster client with one node's options; its 3.5 s of retries outlast a failover."""
    unknown = sorted({"retry_on_timeout", "ssl_ca_path", "ssl_password"} & set(options))
    if unknown:  # options of one server's connections that redis-py's cluster client lacks
        why = f"has {', '.join(unknown)}, which redis-py's cluster client does not take"
        raise ConfigurationError("redis", {"REDIS_URL": why})
    kind = options.pop("connection_class", None)
    options = {name: value for name, value in options.items() if name not in ("db", "retry")}
    tls = kind is not None and issubclass(kind, connections.SSLConnection)
    retry = Retry(ExponentialBackoff(cap=1.0, base=0.1), 6)
    client = RedisCluster(**options, ssl=tls, retry=retry)
    for name in _RAW:
        client.response_callbacks.pop(name, None)
    return client


class Cluster:
    """A backend's two cluster clients (commands, blocking reads), connecting on first use."""

    def __init__(self, commands: dict[str, Any], reads: dict[str, Any]) -> None:
        self.commands, self.reads = _cluster_client(commands), _cluster_client(reads)

    async def send(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """`commands` in one pipeline, each to its slot's primary; error replies in place."""
        pipe = self.commands.pipeline()
        for command in commands:
            pipe.execute_command(*command)
        return await pipe.execute(raise_on_error=False)

    async def read(self, command: tuple[Any, ...]) -> Any:
        """One XREADGROUP (its keys in one slot); an error reply is returned, not raised."""
        try:
            return await self.reads.execute_command(*command)
        except ResponseError as exc:
            return exc

    @contextlib.asynccontextmanager
    async def connection(self, key: str) -> AsyncIterator[connections.AbstractConnection]:
        """A connection to `key`'s primary (for WAIT, WATCH); after an error, `reroute` runs."""
        await self.commands.initialize()
        node = self.commands.get_node_from_key(key)
        if node is None:
            raise redis_errors.SlotNotCoveredError(f"no primary serves the hash slot of {key!r}")
        connection = node.acquire_connection()
        try:
            yield connection
        except BaseException as exc:
            await connection.disconnect(nowait=True)
            if isinstance(exc, Exception):
                await self.reroute(key)
            raise
        finally:
            node.release(connection)

    async def reroute(self, key: str) -> None:
        """EXISTS `key` the cluster client's way, which reads a changed slot map; best effort."""
        with contextlib.suppress(Exception):
            await self.send([("EXISTS", key)])

    async def close(self) -> None:
        await self.commands.aclose()
        await self.reads.aclose()


class RedisClient:
    """The command and reading pools of one backend, made on first use, and the calls on them."""

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self._pool: ConnectionPool | None = None
        self._reads: ConnectionPool | None = None
        self._slots = asyncio.Semaphore(settings.pool_size)
        self._idle: list[connections.AbstractConnection] = []
        self.cluster: Cluster | None = None  # set once the server is known to be a cluster node
        self._in_cluster = {"yes": True, "no": False}.get(settings.cluster)  # None: ask it
        self._asking = asyncio.Lock()

    @property
    def pool(self) -> ConnectionPool:
        """Connections for commands that do not block (timeout: the operation's)."""
        if self._pool is None:
            self._pool = ConnectionPool(**self._options(reads=False))
        return self._pool

    @property
    def read_pool(self) -> ConnectionPool:
        """Connections for XREADGROUP BLOCK: their socket timeout outlasts the longest block."""
        if self._reads is None:
            self._reads = ConnectionPool(**self._options(reads=True))
        return self._reads

    def _options(self, reads: bool) -> dict[str, Any]:
        """Connection options; a blocking read's socket timeout outlasts its longest block."""
        block = self.settings.poll_interval if reads else 0.0
        return connection_kwargs(self.settings, block + self.settings.operation_timeout)

    async def send(
        self, commands: Sequence[Command], check: Iterable[str] = (), group: str | None = None
    ) -> list[Any]:
        """`commands` in one write on a kept connection, their replies; `check`: see raise_first."""
        cluster = await self._cluster()
        replies = await (self._send(commands) if cluster is None else cluster.send(commands))
        if check:  # with the slot given back: naming a culprit sends again
            await self.raise_first(replies, check, group)
        return replies

    async def _send(self, commands: Sequence[Command]) -> list[Any]:
        """ABE_REDIS_POOL_SIZE at most; a broken connection is replaced once, a cut one dropped."""
        pool = self.pool
        async with self._slots:
            for attempt in (1, 2):
                connection = self._idle.pop() if self._idle else await pool.get_connection()  # type: ignore[no-untyped-call]
                try:
                    replies: list[Any] = await exchange(connection, commands)
                except BaseException as exc:
                    await connection.disconnect(nowait=True)
                    await pool.release(connection)
                    retry = isinstance(exc, RedisConnectionError) and attempt == 1
                    if not retry or isinstance(exc, MaxConnectionsError):
                        raise
                else:
                    self._idle.append(connection)
                    break
        return replies

    async def _cluster(self) -> Cluster | None:
        """The cluster clients, made on first use, if ABE_REDIS_CLUSTER or INFO cluster says so."""
        if self.cluster is None and self._in_cluster is not False:
            async with self._asking:
                if self._in_cluster is None:
                    info = (await self._send([("INFO", "cluster")]))[0]
                    if isinstance(info, Exception) and not isinstance(info, NoPermissionError):
                        raise info  # an ACL user without INFO is taken to be on one server
                    self._in_cluster = isinstance(info, bytes) and b"cluster_enabled:1" in info
                if self._in_cluster and self.cluster is None:
                    self.cluster = Cluster(self._options(reads=False), self._options(reads=True))
        return self.cluster

    @contextlib.asynccontextmanager
    async def connection(self, key: str) -> AsyncIterator[connections.AbstractConnection]:
        """A connection of its own to `key`'s primary (WATCH needs one), given back after."""
        cluster = await self._cluster()
        if cluster is not None:
            async with cluster.connection(key) as connection:
                yield connection
            return
        pool = self.pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            yield connection
        except BaseException:
            await connection.disconnect(nowait=True)
            raise
        finally:
            await pool.release(connection)

    async def send_to(self, key: str, commands: Sequence[Command]) -> list[Any]:
        """`commands` on one connection to `key`'s primary, as WAIT needs; a redirect: reroute."""
        cluster = await self._cluster()
        if cluster is None:
            return await self.send(commands)
        async with cluster.connection(key) as connection:
            replies: list[Any] = await exchange(connection, commands)
        if any(isinstance(item, AskError) for item in replies):  # MovedError is an AskError
            await cluster.reroute(key)
        return replies

    async def raise_first(
        self, replies: Iterable[Any], keys: Iterable[str], group: str | None = None
    ) -> None:
        """Raise the first error reply; a WRONGTYPE as the InvalidKeyError naming the culprit."""
        error = next((item for item in replies if isinstance(item, Exception)), None)
        if error is None:
            return
        culprit = await self._culprit(tuple(keys), group) if "WRONGTYPE" in str(error) else None
        if culprit is not None:
            raise culprit from error
        raise error

    async def _culprit(self, keys: tuple[str, ...], group: str | None) -> InvalidKeyError | None:
        """Which of `keys` (or, with `group`, of their delayed-nack sets) has another type."""
        suspects = [(key, key, "stream") for key in keys]
        suspects += [(delayed_key(key, group), key, "zset") for key in keys if group is not None]
        try:
            types = await self.send([("TYPE", name) for name, _, _ in suspects])
        except Exception:  # the WRONGTYPE error, translated, says enough
            return None
        for (name, key, expected), found in zip(suspects, types, strict=True):
            kind = as_text(found)
            if isinstance(found, Exception) or kind in (expected, "none"):
                continue
            if expected == "stream":
                return InvalidKeyError(
                    f"key {key!r} holds a Redis {kind}, not a stream, so abe cannot publish to, "
                    f"read or delete it; use another key, or remove that {kind} if nothing needs it"
                )
            return InvalidKeyError(
                f"key {name!r} holds a Redis {kind}, but abe keeps group {group!r}'s long-delayed "
                f"nacks of {key!r} under that name (something else wrote it): remove it (DEL "
                f"{name}) if nothing needs it"
            )
        return None

    async def create_groups(self, group: str, keys: Sequence[str]) -> None:
        """XGROUP CREATE <key> <group> 0 MKSTREAM for each key: a new group reads from the start."""
        found = await self.send([("XGROUP", "CREATE", key, group, "0", "MKSTREAM") for key in keys])
        await self.raise_first([item for item in found if "BUSYGROUP" not in str(item)], keys)

    async def close(self) -> None:
        """Close every connection: the kept ones, both pools', the cluster clients'."""
        pools, cluster = (self._pool, self._reads), self.cluster
        self._idle, self._pool, self._reads, self.cluster = [], None, None, None
        for pool in (pool for pool in pools if pool is not None):
            await pool.disconnect()
        if cluster is not None:
            await cluster.close()


class _CancellableSend(connections.AbstractConnection):
    """redis-py bounds writes with asyncio.wait_for, which before 3.12 can lose a cancellation
    (CPython gh-86296: a consume loop that never stops); these bound them with a timeout."""

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        limit = self.socket_timeout
        if not limit:
            return await super().send_packed_command(command, check_health)
        self.socket_timeout = None  # the parent then writes without asyncio.wait_for
        try:
            await bounded(super().send_packed_command(command, check_health), limit)
        except asyncio.TimeoutError:
            await self.disconnect(nowait=True)
            raise RedisTimeoutError("Timeout writing to socket") from None
        finally:
            self.socket_timeout = limit


@functools.cache
def cancellable(base: type[connections.AbstractConnection]) -> type[Any]:
    """`base`, a redis-py connection class, with cancellable writes: used before Python 3.12."""
    return type(base.__name__, (_CancellableSend, base), {})


def connection_kwargs(settings: RedisSettings, socket_timeout: float) -> dict[str, Any]:
    """Pool options: RESP2, TLS checking host names (5.x does not), 3 reconnects, timeouts never."""
    retry = Retry(
        ExponentialBackoff(cap=0.5, base=0.05), 3, supported_errors=(RedisConnectionError,)
    )
    password = settings.password.reveal() if settings.password else None
    kwargs: dict[str, Any] = {"socket_timeout": socket_timeout, "retry": retry}
    kwargs.update(socket_connect_timeout=settings.operation_timeout, health_check_interval=0)
    kwargs.update(connections.parse_url(settings.url))
    kwargs.update(protocol=2, username=settings.username, password=password)
    kind = kwargs.get("connection_class", connections.Connection)
    if sys.version_info < (3, 12):
        kwargs["connection_class"] = cancellable(kind)
    if kind is not connections.UnixDomainSocketConnection:
        kwargs.setdefault("socket_keepalive", True)
    if kind is connections.SSLConnection:
        cert_reqs = kwargs.setdefault("ssl_cert_reqs", "required")
        kwargs.setdefault("ssl_check_hostname", cert_reqs not in ("none", ssl.CERT_NONE))
        if settings.tls_ca_file is not None:
            kwargs["ssl_ca_certs"] = str(settings.tls_ca_file)
        cert, key = settings.tls_cert_file, settings.tls_key_file
        if cert is not None and key is not None:
            kwargs.update(ssl_certfile=str(cert), ssl_keyfile=str(key))
    return kwargs
