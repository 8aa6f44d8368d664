"""Redis Cluster through redis-py's cluster client: each command to its slot's primary."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ResponseError, SlotNotCoveredError

from abe.errors import ConfigurationError

__all__ = ["Cluster"]

_RAW: tuple[str, ...] = ("DEL", "EXISTS", "TYPE", "WAIT", "XACK", "XADD", "XAUTOCLAIM", "XCLAIM")
_RAW += ("XGROUP", "XINFO", "XPENDING", "XREADGROUP", "ZADD", "ZRANGEBYSCORE", "ZREM", "ZSCORE")
"""The commands abe sends: their replies are read as the server gives them, as on one node."""


def _client(options: dict[str, Any]) -> RedisCluster:
    """A cluster client with one node's options; its 3.5 s of retries outlast a failover."""
    unknown = sorted({"retry_on_timeout", "ssl_ca_path", "ssl_password"} & set(options))
    if unknown:  # options of one server's connections that redis-py's cluster client lacks
        why = f"has {', '.join(unknown)}, which redis-py's cluster client does not take"
        raise ConfigurationError("redis", {"REDIS_URL": why})
    kind = options.pop("connection_class", None)
    options = {name: value for name, value in options.items() if name not in ("db", "retry")}
    ssl = kind is not None and issubclass(kind, SSLConnection)
    retry = Retry(ExponentialBackoff(cap=1.0, base=0.1), 6)
    client = RedisCluster(**options, ssl=ssl, retry=retry)
    for name in _RAW:
        client.response_callbacks.pop(name, None)
    return client


class Cluster:
    """A backend's two cluster clients (commands, blocking reads), connecting on first use."""

    def __init__(self, commands: dict[str, Any], reads: dict[str, Any]) -> None:
        self.commands, self.reads = _client(commands), _client(reads)

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
    async def connection(self, key: str) -> AsyncIterator[AbstractConnection]:
        """A connection to `key`'s primary (for WAIT, WATCH); after an error, `reroute` runs."""
        await self.commands.initialize()
        node = self.commands.get_node_from_key(key)
        if node is None:
            raise SlotNotCoveredError(f"no primary serves the hash slot of {key!r}")
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
