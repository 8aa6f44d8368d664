"""The hot path to Redis: commands packed once into RESP and sent on pooled redis-py connections.

redis-py's `execute_command` and pipelines are general (any argument type, response
callbacks, per-command retries and metrics); publishing and reading are a handful of
known commands, so abe packs them itself and sends them with the pool's connections
(`send_packed_command` / `read_response`): the same sockets, timeouts and TLS, less
work per message. Everything else goes through the ordinary redis-py client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

__all__ = ["Lane", "bulk", "pack", "reply"]

Arg = str | bytes | int

try:  # redis-py 5.3+
    from redis.exceptions import MaxConnectionsError as _PoolExhausted
except ImportError:  # pragma: no cover - older redis-py says "Too many connections" plainly
    _PoolExhausted = RedisConnectionError  # type: ignore[assignment,misc]


def pack(args: Sequence[Arg]) -> bytes:
    """One command as RESP: an array of bulk strings (str as UTF-8, int as decimal)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bytes):
            data = arg
        else:
            data = b"%d" % arg
        parts.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(parts)


def bulk(data: bytes) -> bytes:
    """One RESP bulk string; `pack` for commands assembled from cached parts."""
    return b"$%d\r\n%b\r\n" % (len(data), data)


async def reply(connection: AbstractConnection) -> Any:
    """The next reply on `connection`; an error reply is returned as its exception, not raised."""
    try:
        return await connection.read_response()
    except ResponseError as exc:  # the server answered: the connection is still in step
        return exc


class Lane:
    """Sends packed commands on connections of one pool, at most `size` at once.

    Connections stay with the lane between calls (no pool round trip per command);
    callers beyond `size` wait for one instead of failing. A connection that turns out
    to be broken (the server restarted since its last use) is replaced and the commands
    sent once more, as redis-py itself does; a call cut short (cancelled, timed out)
    drops its connection, since a reply may still be on its way.
    """

    def __init__(self, pool: ConnectionPool, size: int) -> None:
        self.pool = pool
        self._slots = asyncio.Semaphore(size)
        self._idle: list[AbstractConnection] = []

    async def call(self, packed: bytes, replies: int = 1) -> list[Any]:
        """Send `packed` (holding `replies` commands) and return every reply, in order."""
        async with self._slots:
            for attempt in (1, 2):
                if self._idle:
                    connection = self._idle.pop()
                else:
                    connection = await self.pool.get_connection()  # type: ignore[no-untyped-call]
                done = False
                try:
                    await connection.send_packed_command(packed, check_health=False)
                    answers = [await reply(connection) for _ in range(replies)]
                    done = True
                    return answers
                except RedisConnectionError as exc:
                    if attempt == 2 or isinstance(exc, _PoolExhausted):
                        raise
                finally:
                    if done:
                        self._idle.append(connection)
                    else:
                        await connection.disconnect(nowait=True)
                        await self.pool.release(connection)
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        """Give the connections back to the pool (which the client then closes)."""
        idle, self._idle = self._idle, []
        for connection in idle:
            await self.pool.release(connection)
