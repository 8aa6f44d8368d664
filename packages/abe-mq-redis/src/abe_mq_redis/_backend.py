"""RedisBackend: abe on Redis Streams. Keys are streams, groups are consumer groups.

Wire format (README "Wire format"): one stream entry per message, with the field
`data` holding the payload's JSON and one more field per header (`abe-id`,
`abe-published-at`, the user's own). Everything else (validation, ids, ack-on-next,
dead letters, retries) is abe-core's; this module only moves entries.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from abe.backends.message_queue.base.backend import BaseBackend
from abe.backends.message_queue.base.capabilities import Capabilities
from abe.backends.message_queue.base.codec import OutgoingMessage
from abe.backends.message_queue.base.error_map import ErrorMap
from abe.backends.message_queue.base.keys import KeyRules
from abe.backends.message_queue.base.receiver import Receiver
from abe.errors import InvalidKeyError, PublishError
from abe_mq_redis._client import make_client
from abe_mq_redis._errors import ERRORS, error_map, reserved_name_error, wrong_type_error
from abe_mq_redis._receiver import RedisReceiver, delayed_key
from abe_mq_redis._settings import RedisSettings
from abe_mq_redis._wire import Lane, bulk, pack

if TYPE_CHECKING:
    from abe.benchmarking import RawBaseline

__all__ = ["DATA_FIELD", "RedisBackend"]

DATA_FIELD = "data"
"""The stream entry field holding the payload's JSON (the message body, byte for byte)."""

_CONSUMERS = itertools.count(1)


class RedisBackend(BaseBackend):
    """abe on Redis Streams (Redis 6.2 or later), through redis.asyncio.

    `RedisBackend()` reaches redis://localhost:6379/0; `RedisBackend(RedisSettings(...))`
    anywhere else; `from_env()` (what `load_backend()` calls) reads REDIS_URL and the
    rest. Nothing connects until the first publish or subscription.
    """

    name: ClassVar[str] = "redis"
    capabilities: ClassVar[Capabilities] = Capabilities(
        fan_out=True,
        per_key_ordering=True,
        persistence=True,
        native_delay=False,
        max_payload_bytes=1_048_576,
        remote=True,
    )
    key_rules: ClassVar[KeyRules] = KeyRules(
        max_length=1024,
        allowed="A-Za-z0-9._:-",
        described="letters, digits, '.', '_', ':' and '-'",
        broker="redis",
    )
    settings_class: ClassVar[type[RedisSettings]] = RedisSettings
    reserved_headers: ClassVar[frozenset[str]] = frozenset({DATA_FIELD})
    errors: ClassVar[ErrorMap] = ERRORS
    client_loggers: ClassVar[tuple[str, ...]] = ("redis",)

    def __init__(self, settings: RedisSettings | None = None) -> None:
        settings = settings or RedisSettings()
        super().__init__(settings)
        self.settings: RedisSettings = settings
        self._errors = error_map(tls=settings.tls, timeout=settings.operation_timeout)
        self._command_client: Redis | None = None
        self._reader_client: Redis | None = None
        self._command_lane: Lane | None = None
        maxlen = settings.maxlen
        self._trim: tuple[str, ...] = ("MAXLEN", "~", str(maxlen)) if maxlen else ()
        self._xadd_size = 5 + len(self._trim)  # arguments before the headers
        self._xadd_heads: dict[str, bytes] = {}  # packed "XADD <key> ... data" per key

    @property
    def max_payload_bytes(self) -> int:
        return self.settings.max_payload_bytes

    # ---- clients ------------------------------------------------------------------------

    def _commands(self) -> Redis:
        """The client for commands that do not block on the server (timeout: the operation's)."""
        if self._command_client is None:
            self._command_client = make_client(
                self.settings, socket_timeout=self.settings.operation_timeout
            )
            self._command_lane = Lane(self._command_client.connection_pool, self.settings.pool_size)
        return self._command_client

    @property
    def _lane(self) -> Lane:
        """Packed commands on the command client's pool, at most ABE_REDIS_POOL_SIZE at once."""
        if self._command_lane is None:
            self._commands()
        assert self._command_lane is not None
        return self._command_lane

    def _reader(self) -> Redis:
        """The client for XREADGROUP BLOCK: its socket timeout outlasts the longest block."""
        if self._reader_client is None:
            self._reader_client = make_client(
                self.settings,
                socket_timeout=self.settings.poll_interval + self.settings.operation_timeout,
            )
        return self._reader_client

    # ---- the hooks ------------------------------------------------------------------------

    def _xadd(self, key: str, message: OutgoingMessage) -> bytes:
        """XADD <key> [MAXLEN ~ n] * data <body> <header> <value> ..., packed as RESP."""
        head = self._xadd_heads.get(key)
        if head is None:
            head = pack(("XADD", key, *self._trim, "*", DATA_FIELD)).partition(b"\r\n")[2]
            if len(self._xadd_heads) < 1024:
                self._xadd_heads[key] = head
        headers = message.headers
        parts = [b"*%d\r\n" % (self._xadd_size + 2 * len(headers)), head, bulk(message.body)]
        for name, value in headers.items():
            parts.append(bulk(name.encode()))
            parts.append(bulk(value.encode()))
        return b"".join(parts)

    async def _send(self, key: str, messages: Sequence[OutgoingMessage]) -> None:
        if len(messages) == 1:
            packed = self._xadd(key, messages[0])
        else:
            packed = b"".join([self._xadd(key, message) for message in messages])
        results = await self._lane.call(packed, len(messages))
        failed = {
            index: str(result)
            for index, result in enumerate(results)
            if isinstance(result, Exception)
        }
        if not failed:
            return
        first: BaseException = next(result for result in results if isinstance(result, Exception))
        if isinstance(first, ResponseError) and "WRONGTYPE" in str(first):
            raise await self._refine(first, (key,)) from first
        if len(failed) == len(messages):
            raise first
        raise PublishError(key, failed, len(messages))

    async def _open_receiver(self, group: str, keys: Sequence[str]) -> Receiver:
        await self._create_groups(group, keys)
        consumer = f"{socket.gethostname()}-{os.getpid()}-{next(_CONSUMERS)}"
        receiver = RedisReceiver(self, group, tuple(keys), consumer)
        await receiver.tidy(include_self=False)
        return receiver

    async def _create_groups(self, group: str, keys: Sequence[str]) -> None:
        """XGROUP CREATE <key> <group> 0 MKSTREAM for each key: a new group reads from the start."""
        packed = b"".join(pack(("XGROUP", "CREATE", key, group, "0", "MKSTREAM")) for key in keys)
        for result in await self._lane.call(packed, len(keys)):
            if isinstance(result, ResponseError) and str(result).startswith("BUSYGROUP"):
                continue  # the group exists already: join it where it is
            if isinstance(result, ResponseError) and "WRONGTYPE" in str(result):
                raise await self._refine(result, keys) from result
            if isinstance(result, Exception):
                raise result

    async def _refine(
        self, error: ResponseError, keys: Sequence[str], *, group: str | None = None
    ) -> BaseException:
        """For WRONGTYPE, the InvalidKeyError naming the key and the type Redis holds there.

        With `group`, the group's delayed-nack sets of `keys` are suspects too.
        """
        if "WRONGTYPE" not in str(error):
            return error
        suspects = [(key, key, "stream") for key in keys]
        if group is not None:
            suspects += [(delayed_key(key, group), key, "zset") for key in keys]
        packed = b"".join(pack(("TYPE", name)) for name, _, _ in suspects)
        try:
            found = await self._lane.call(packed, len(suspects))
        except Exception:
            return self._translate_error(error)
        for (name, key, expected), kind in zip(suspects, found, strict=False):
            text = kind.decode() if isinstance(kind, bytes) else str(kind)
            if isinstance(kind, Exception) or text in (expected, "none"):
                continue
            if expected == "stream":
                return wrong_type_error(key, text)
            return reserved_name_error(
                name, text, f"group {group!r}'s long-delayed nacks of {key!r}"
            )
        return self._translate_error(error)

    async def _delete_keys(self, keys: Sequence[str]) -> None:
        """DEL each stream with the delayed-nack sets of its groups; never a key of another type."""
        client = self._commands()
        doomed: list[str] = []
        for key in keys:
            kind = _text(await client.type(key))
            if kind == "none":
                continue
            if kind != "stream":
                raise InvalidKeyError(
                    f"key {key!r} holds a Redis {kind}, not a stream, so abe did not make it "
                    f"and will not delete it; remove it yourself if nothing needs it"
                )
            groups = await client.xinfo_groups(key)
            doomed += [key, *(delayed_key(key, _text(group["name"])) for group in groups)]
        if doomed:
            await client.delete(*doomed)

    async def _close(self) -> None:
        clients = [self._command_client, self._reader_client]
        lane = self._command_lane
        self._command_client = self._reader_client = None
        self._command_lane = None
        if lane is not None:
            await lane.close()
        for client in clients:
            if client is not None:
                await client.aclose(close_connection_pool=True)

    def _translate_error(self, error: Exception) -> BaseException:
        """Through this backend's own table: its hints name its timeout and its scheme."""
        return self._errors.translate(error, self._describe(), scrub=self.secret_filter.scrub)

    def _describe(self) -> str:
        return self.settings.address

    def raw_baseline(self) -> RawBaseline:
        """The `abe bench` workloads written with redis-py alone, on the same server."""
        from abe_mq_redis._baseline import RawRedisBaseline  # noqa: PLC0415  (only for bench)

        return RawRedisBaseline(self.settings)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
