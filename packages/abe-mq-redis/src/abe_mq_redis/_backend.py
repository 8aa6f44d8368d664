"""RedisBackend: keys are streams, groups are consumer groups, a message is one stream entry:
its JSON in the field `data`, each header in a field of its own (README "Wire format")."""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from abe.errors import BackendUnavailableError, PublishError
from abe.provider import BaseBackend, Capabilities, ErrorMap, KeyRules, OutgoingMessage, Receiver
from abe_mq_redis._client import Command, RedisClient, as_text, delayed_key
from abe_mq_redis._errors import ERRORS
from abe_mq_redis._receiver import RedisReceiver
from abe_mq_redis._settings import RedisSettings

if TYPE_CHECKING:
    from abe.benchmarking import RawBaseline

__all__ = ["DATA_FIELD", "RedisBackend"]

DATA_FIELD = "data"
"""The stream entry field holding the payload's JSON (the message body, byte for byte)."""

_CONSUMERS = itertools.count(1)


def _unconfirmed(key: str, count: int, confirmed: object, wait: tuple[str, int, int]) -> str:
    """Why a publish is not confirmed (`wait`: the WAIT sent), and what a retry risks."""
    got = f"only {confirmed} of" if isinstance(confirmed, int) else f"none ({confirmed}) of"
    return (
        f"{count} message(s) to {key!r} were stored on the Redis primary, but {got} the "
        f"{wait[1]} replicas ABE_REDIS_WAIT_REPLICAS asks for confirmed them within {wait[2]} ms. "
        "They may still be delivered (or be lost if the primary fails now): a retry may "
        "publish them twice, so retry with the same message_id (publish(..., message_id=...)) "
        "and let consumers drop the duplicate"
    )


class RedisBackend(BaseBackend):
    """abe on Redis Streams (6.2 or later) through redis.asyncio, connecting on first use."""

    name: ClassVar[str] = "redis"
    capabilities: ClassVar[Capabilities] = Capabilities(native_delay=False, persistence=True)
    key_rules: ClassVar[KeyRules] = KeyRules(
        max_length=1024,
        allowed="A-Za-z0-9._:-",
        described="letters, digits, '.', '_', ':' and '-'",
        broker="redis",
    )
    settings_class: ClassVar[type[RedisSettings]] = RedisSettings
    errors: ClassVar[ErrorMap] = ERRORS
    client_loggers: ClassVar[tuple[str, ...]] = ("redis",)
    reserved_headers: ClassVar[frozenset[str]] = frozenset({DATA_FIELD})

    def __init__(self, settings: RedisSettings | None = None) -> None:
        settings = settings or RedisSettings()
        super().__init__(settings)
        self.settings: RedisSettings = settings
        self.client = RedisClient(settings)  # shared with every receiver this backend opens
        self._trim = ("MAXLEN", "~", settings.maxlen) if settings.maxlen else ()
        self._wait = ("WAIT", settings.wait_replicas, round(settings.operation_timeout * 500))

    def _xadd(self, key: str, message: OutgoingMessage) -> Command:
        """XADD <key> [MAXLEN ~ n] * data <body> <header> <value> ..."""
        headers = (text for header in message.headers.items() for text in header)
        return ("XADD", key, *self._trim, "*", DATA_FIELD, message.body, *headers)

    async def _send(self, key: str, messages: Sequence[OutgoingMessage]) -> None:
        commands, wanted = [self._xadd(key, message) for message in messages], self._wait[1]
        if wanted:  # WAIT on the connection of the XADDs: it counts the replicas that have them
            *results, confirmed = await self.client.send_to(key, [*commands, self._wait])
        else:
            results = await self.client.send(commands)
        failed = {i: str(error) for i, error in enumerate(results) if isinstance(error, Exception)}
        if len(failed) == len(messages) or "WRONGTYPE" in failed.get(min(failed, default=0), ""):
            await self.client.raise_first(results, (key,))  # none stored, or a key of another type
        if wanted and not (isinstance(confirmed, int) and confirmed >= wanted):
            raise BackendUnavailableError(_unconfirmed(key, len(messages), confirmed, self._wait))
        if failed:
            raise PublishError(key, failed, len(messages))

    async def _open_receiver(self, group: str, keys: Sequence[str]) -> Receiver:
        await self.client.create_groups(group, keys)
        consumer = f"{socket.gethostname()}-{os.getpid()}-{next(_CONSUMERS)}"
        receiver = RedisReceiver(self.client, group, tuple(keys), consumer)
        await receiver.tidy(include_self=False)
        return receiver

    async def _delete_keys(self, keys: Sequence[str]) -> None:
        """DEL each stream with the delayed-nack sets of its groups; never a key of another type."""
        found = await self.client.send([("XINFO", "GROUPS", key) for key in keys])
        await self.client.raise_first([item for item in found if "WRONGTYPE" in str(item)], keys)
        doomed = list(keys)
        for key, groups in zip(keys, found, strict=True):  # a missing key: an error reply
            if isinstance(groups, list):  # each group: [b"name", <name>, b"consumers", ...]
                doomed += [delayed_key(key, as_text(group[1])) for group in groups]
        await self.client.send([("DEL", name) for name in doomed], keys)

    async def _existing_keys(self, keys: Sequence[str]) -> Sequence[str]:
        """EXISTS on each key: a lookup, so nothing is created (a non-stream is named later)."""
        found = await self.client.send([("EXISTS", key) for key in keys], keys)
        return [key for key, exists in zip(keys, found, strict=True) if exists]

    async def _delete_group(self, group: str, keys: Sequence[str]) -> None:
        """XGROUP DESTROY and DEL its delayed-nack sets; entries stay, a missing key is no error."""
        commands: list[Command] = [("XGROUP", "DESTROY", key, group) for key in keys]
        replies = await self.client.send(commands + [("DEL", delayed_key(k, group)) for k in keys])
        missing = "requires the key to exist"
        await self.client.raise_first([r for r in replies if missing not in str(r)], keys, group)

    async def _close(self) -> None:
        await self.client.close()

    def _describe(self) -> str:
        return self.settings.address

    def raw_baseline(self) -> RawBaseline:
        from abe_mq_redis._baseline import RawRedisBaseline  # noqa: PLC0415  (only for bench)

        return RawRedisBaseline(self.settings)
