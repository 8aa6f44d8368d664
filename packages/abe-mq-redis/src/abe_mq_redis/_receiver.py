"""One consumer group's reader over some streams (README "Operating notes": reclaim, ack, delay)."""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from hiredis import pack_command
from redis.asyncio.connection import AbstractConnection
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from abe.provider import IncomingMessage, Receiver, close_quietly
from abe_mq_redis._client import Command, RedisClient, as_text, delayed_key, exchange, reply

__all__ = ["RedisReceiver"]

log = logging.getLogger("abe.redis")
_MAX_TICK = 1.0  # the longest time between two reclaim rounds, whatever the timeout
_ARM_BATCH = 100  # the most delayed entries one reclaim round arms per key
_SLACK = 0.005  # seconds past an entry's due time to look for it: the server sees it idle enough


def _message(key: str, entry: Sequence[Any], attempt: int) -> IncomingMessage:
    """A stream entry, [id, fields], as a message: `data` is the body, other fields headers."""
    fields, body, headers = iter(entry[1]), b"", {}
    for name, value in zip(fields, fields, strict=False):  # once per message: a plain loop
        if name == b"data":
            body = value
        else:  # as text
            headers[name.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    entry_id = entry[0].decode()
    return IncomingMessage(key, body, headers, attempt, entry_id, entry_id)


def _grouped(entries: Iterable[tuple[str, str] | IncomingMessage]) -> dict[str, list[str]]:
    """Entry ids by key, from (key, entry id) pairs or messages."""
    grouped: dict[str, list[str]] = {}
    for key, entry_id in (e if isinstance(e, tuple) else (e.key, e.broker_id) for e in entries):
        grouped.setdefault(key, []).append(entry_id)
    return grouped


def _settle(done: asyncio.Future[bool], acked: bool) -> None:
    if not done.done():
        done.set_result(acked)


class RedisReceiver(Receiver):
    """One member (Redis consumer) of a group, reading `keys`."""

    def __init__(
        self, client: RedisClient, group: str, keys: tuple[str, ...], consumer: str
    ) -> None:
        self._client, self._read_pool = client, client.read_pool
        self.group, self.keys, self.consumer = group, keys, consumer
        self._lease = client.settings.redelivery_timeout
        self._lease_ms = max(1, round(self._lease * 1000))
        self._idle_limit_ms = round(client.settings.consumer_idle_timeout * 1000)
        self._tick = min(_MAX_TICK, max(0.05, self._lease / 4))
        self._next_tick = 0.0  # the first fetch reclaims what earlier members left
        self._wakeups: list[float] = []  # a heap: when entries nacked with a delay come due
        self._cursors = dict.fromkeys(keys, "0-0")
        self._held: dict[tuple[str, str], int] = {}  # (key, id): due, in ms since the epoch
        self._held_refreshed, self._turn = 0.0, 0
        self._acks: dict[asyncio.Future[bool], list[Command]] = {}  # XACKs for a read to carry
        self._connection: AbstractConnection | None = None  # this member's, for blocking reads
        self._client_id: int | None = None  # that connection's, for CLIENT UNBLOCK
        self._blocked_until: float | None = None  # while a blocking read is on the wire

    async def fetch(self, max_messages: int, timeout: float) -> Sequence[IncomingMessage]:
        now = time.monotonic()
        maintain = now >= self._next_tick or (self._wakeups and self._wakeups[0] <= now)
        if maintain and (reclaimed := await self._maintain(max_messages, now)):
            return reclaimed
        due = min([self._next_tick, *self._wakeups[:1]]) - time.monotonic()
        block = min(timeout, self._client.settings.poll_interval, due)
        return await self._read(max_messages, int(block * 1000))

    def _share(self, credit: int) -> tuple[tuple[str, ...], int]:
        """Which keys to read and how many from each, so that the total stays within credit."""
        keys = self.keys
        if credit >= len(keys):
            return keys, credit // len(keys)
        start = self._turn % len(keys)
        self._turn += credit
        return (keys[start:] + keys[:start])[:credit], 1

    def _xreadgroup(self, keys: tuple[str, ...], count: int, block_ms: int) -> Command:
        block = ("BLOCK", block_ms) if block_ms > 0 else ()  # BLOCK 0 would wait forever
        streams = ("STREAMS", *keys, *(">" for _ in keys))
        return ("XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count, *block, *streams)

    async def _read(self, credit: int, block_ms: int) -> list[IncomingMessage]:
        keys, count = self._share(credit)
        carried, self._acks = self._acks, {}
        xacks = [xack for commands in carried.values() for xack in commands]
        dones = [done for done, commands in carried.items() for _ in commands]
        self._blocked_until = time.monotonic() + block_ms / 1000 if block_ms > 0 else None
        try:
            if self._client.cluster is None:
                read = self._xreadgroup(keys, count, block_ms)
                results = [await self._roundtrip([*xacks, read], dones)]
            else:
                results = await self._cluster_read(xacks, dones, keys, count, block_ms)
        finally:
            self._blocked_until = None
            for done in carried:  # not carried through: ack() sends them itself
                _settle(done, False)
        if await self._recreated(results):
            return []
        await self._client.raise_first(results, keys)
        found = ((as_text(key), entries) for result in results for key, entries in result or ())
        return [_message(key, entry, 1) for key, entries in found for entry in entries]

    async def _cluster_read(self, xacks: list[Command], dones: list[Any], *read: Any) -> Any:
        """In a cluster: the XACKs, then one XREADGROUP per hash slot of the keys, at once."""
        for done, answer in zip(dones, await self._client.send(xacks), strict=True):
            _settle(done, not isinstance(answer, Exception))
        keys, count, block_ms = read
        slots = {key: key_slot(key.encode()) for key in keys}
        groups = (tuple(k for k in keys if slots[k] == s) for s in dict.fromkeys(slots.values()))
        assert self._client.cluster is not None
        reads = [self._xreadgroup(group, count, block_ms) for group in groups]
        return await asyncio.gather(*map(self._client.cluster.read, reads), return_exceptions=True)

    async def _roundtrip(self, commands: list[Command], acks: list[asyncio.Future[bool]]) -> Any:
        """XACKs (settling `acks`) and the read on this member's connection (CLIENT ID if new)."""
        for attempt in (1, 2):
            if self._connection is None:
                self._connection = await self._read_pool.get_connection()  # type: ignore[no-untyped-call]
            connection = self._connection
            try:
                if not connection.is_connected:
                    self._client_id = None
                    await connection.connect()
                ask: list[Command] = [("CLIENT", "ID")] if self._client_id is None else []
                packed = [pack_command(command) for command in (*ask, *commands)]  # type: ignore[arg-type]
                await connection.send_packed_command(packed, check_health=False)
                if ask:  # refused (an ACL user without CLIENT): 0, and never asked again
                    client_id = await reply(connection)
                    self._client_id = client_id if isinstance(client_id, int) else 0
                failed = {done for done in acks if isinstance(await reply(connection), Exception)}
                for done in acks:
                    _settle(done, done not in failed)
                return await reply(connection)
            except RedisConnectionError:
                self._client_id = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _wake(self, at: float) -> None:
        """Cut a blocking read short if it would outlast `at` (CLIENT UNBLOCK; best effort)."""
        until, client_id = self._blocked_until, self._client_id
        if until is not None and client_id and at < until - _SLACK:
            try:
                await self._client.send([("CLIENT", "UNBLOCK", client_id)])
            except Exception as exc:  # e.g. an ACL user without CLIENT: it wakes at block end
                log.debug("redis: CLIENT UNBLOCK failed (%s); the read ends on its own", exc)

    async def _recreated(self, replies: list[Any]) -> bool:
        """Whether a reply says the group is missing; it is then created again, from the start."""
        missing = [e for e in replies if isinstance(e, Exception) and str(e).startswith("NOGROUP")]
        if missing:  # only errors are made text: str() of a read's reply would copy its data
            log.warning(
                "redis: group %r is missing on %s (%s); creating it again from the start of the "
                "stream (did the server restart without persistence, or was the key deleted?)",
                *(self.group, ", ".join(self.keys), missing[0]),
            )
            await self._client.create_groups(self.group, self.keys)
            self._cursors = dict.fromkeys(self.keys, "0-0")
        return bool(missing)

    async def _maintain(self, credit: int, now: float) -> list[IncomingMessage]:
        """The periodic work: keep held entries, arm delayed ones, reclaim the unfinished."""
        self._next_tick = now + self._tick
        while self._wakeups and self._wakeups[0] <= now:
            heapq.heappop(self._wakeups)
        now_ms = int(time.time() * 1000)
        if self._held:
            await self._keep_held(now, now_ms)
        keys, count = self._share(credit)
        group, me, window = self.group, self.consumer, now_ms + self._lease_ms
        commands: list[Command] = []
        for key in keys:
            delayed = delayed_key(key, group)
            commands += [
                ("ZRANGEBYSCORE", delayed, "-inf", window, "WITHSCORES", "LIMIT", 0, _ARM_BATCH),
                ("XAUTOCLAIM", key, group, me, self._lease_ms, self._cursors[key], "COUNT", count),
            ]
        got = await self._client.send(commands)
        if await self._recreated(got):
            return []
        await self._client.raise_first(got, keys, group)
        due: list[tuple[str, str, int]] = []
        gone: list[tuple[str, str]] = []
        claimed: list[IncomingMessage] = []
        for key, found, (cursor, entries, *deleted) in zip(keys, got[::2], got[1::2], strict=True):
            scores = zip(found[::2], found[1::2], strict=True)
            due += [(key, as_text(entry_id), int(float(score))) for entry_id, score in scores]
            self._cursors[key] = as_text(cursor)
            if self._cursors[key] != "0-0":  # more of the pending list to scan: next fetch
                self._next_tick = now
            # an entry deleted from the stream: nil on Redis 6.2, listed apart on Redis 7
            claimed += [_message(key, e, 0) for e in entries if e is not None and e[1] is not None]
            gone += [(key, as_text(entry_id)) for entry_id in (deleted[0] if deleted else ())]
        armed = await self._arm(due, gone, now, now_ms) if due or gone else set()
        claimed = [message for message in claimed if (message.key, message.broker_id) not in armed]
        return await self._settle_claimed(claimed, now, now_ms) if claimed else []

    async def _arm(
        self, due: list[tuple[str, str, int]], gone: list[tuple[str, str]], now: float, now_ms: int
    ) -> set[tuple[str, str]]:
        """Make delayed entries claimable when due, forget the gone; the armed (not to deliver)."""
        commands: list[Command] = []
        group, me = self.group, self.consumer
        for key, entry_id, due_ms in due:
            idle = max(0, self._lease_ms - (due_ms - now_ms))
            commands.append(("XCLAIM", key, group, me, 0, entry_id, "IDLE", idle, "JUSTID"))
            heapq.heappush(self._wakeups, now + max(0, due_ms - now_ms) / 1000 + _SLACK)
        armed = {(key, entry_id) for key, entry_id, _ in due}
        for entry in (*armed, *gone):
            self._held.pop(entry, None)
        for key, ids in _grouped(sorted({*armed, *gone})).items():
            commands.append(("ZREM", delayed_key(key, group), *ids))
        await self._client.send(commands)
        return armed

    async def _settle_claimed(
        self, claimed: list[IncomingMessage], now: float, now_ms: int
    ) -> list[IncomingMessage]:
        """Attempt numbers for reclaimed entries; one still in the delayed set is held or armed."""
        group = self.group
        commands: list[Command] = []
        for message in claimed:
            key, entry_id = message.key, message.broker_id
            commands.append(("XPENDING", key, group, entry_id, entry_id, 1))
            commands.append(("ZSCORE", delayed_key(key, group), entry_id))  # nil: not delayed
        replies = await self._client.send(commands)
        await self._client.raise_first(replies[::2], {message.key for message in claimed}, group)
        ready: list[IncomingMessage] = []
        to_arm: list[tuple[str, str, int]] = []
        past: list[tuple[str, str]] = []
        for message, pending, score in zip(claimed, replies[::2], replies[1::2], strict=True):
            entry = (message.key, message.broker_id)
            due = int(float(score)) if isinstance(score, bytes) else None
            if not pending:  # acknowledged meanwhile by its earlier holder: done
                continue
            if due is not None and due - now_ms > self._lease_ms:
                self._held[entry] = due
            elif due is not None and due > now_ms:
                to_arm.append((*entry, due))
            else:
                past += [entry] if due is not None else []  # due by now: out of the set
                message.attempt = int(pending[0][3])
                ready.append(message)
        if to_arm or past:
            await self._arm(to_arm, past, now, now_ms)
        return ready

    async def _keep_held(self, now: float, now_ms: int) -> None:
        """Reset the idle time of entries nacked until later than one timeout from now."""
        if now - self._held_refreshed >= self._lease / 3:
            self._held_refreshed = now  # those within reach go: the sorted set arms them now
            self._held = {e: due for e, due in self._held.items() if due - now_ms > self._lease_ms}
            if self._held:
                await self._claim(_grouped(self._held))

    async def _claim(self, by_key: dict[str, list[str]], *options: str | int) -> None:
        """XCLAIM to this consumer with JUSTID: resets idle time, leaves the count alone."""
        claims: list[Command] = [
            ("XCLAIM", key, self.group, self.consumer, 0, *ids, *options, "JUSTID")
            for key, ids in by_key.items()
        ]
        await self._client.send(claims, by_key, self.group)

    async def ack(self, messages: Sequence[IncomingMessage]) -> None:
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        by_key = _grouped(messages)
        xacks = self._acks[done] = [("XACK", key, self.group, *ids) for key, ids in by_key.items()]
        await asyncio.sleep(0)  # one turn: a fetch starting now carries them
        if self._acks.pop(done, None) is None and await done:
            return
        await self._client.send(xacks, by_key, self.group)

    async def nack(self, message: IncomingMessage, delay: float) -> None:
        key, entry_id = message.key, message.broker_id
        if delay <= self._lease:
            idle = max(0, self._lease_ms - round(delay * 1000))  # claimable after `delay`
            await self._claim({key: [entry_id]}, "IDLE", idle)
            heapq.heappush(self._wakeups, time.monotonic() + delay + _SLACK)
            await self._wake(self._wakeups[0])
            return
        due_ms = int((time.time() + delay) * 1000)
        commands: list[Command] = [
            ("ZADD", delayed_key(key, self.group), due_ms, entry_id),
            ("XCLAIM", key, self.group, self.consumer, 0, entry_id, "JUSTID"),
        ]
        await self._client.send(commands, [key], self.group)
        self._held[key, entry_id] = due_ms

    async def extend(self, messages: Sequence[IncomingMessage]) -> None:
        await self._claim(_grouped(messages))

    async def close(self) -> None:
        """Give back the reading connection; delete this consumer if it owns no pending entry."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.disconnect()  # a read cut short may have left a reply unread
            await self._read_pool.release(connection)
        for done in self._acks:
            _settle(done, False)
        tidy, timeout = self.tidy(include_self=True), self._client.settings.operation_timeout
        await close_quietly([tidy], timeout, log, f"redis: tidying group {self.group!r}")

    async def tidy(self, *, include_self: bool) -> None:
        """Delete idle consumers that own nothing (this one if `include_self`); best effort."""
        for key in self.keys:
            xinfo: Command = ("XINFO", "CONSUMERS", key, self.group)
            try:
                async with self._client.connection(key) as connection:
                    _, consumers = await exchange(connection, [("WATCH", key), xinfo])
                    if isinstance(consumers, Exception):
                        raise consumers
                    doomed = self._doomed(key, consumers, include_self)
                    # under WATCH, EXEC does nothing if a read changed the key: left for later
                    end = [("MULTI",), *doomed, ("EXEC",)] if doomed else [("UNWATCH",)]
                    await exchange(connection, end)
            except Exception as exc:
                log.debug("redis: tidying the consumers of %r failed: %r", key, exc)

    def _doomed(self, key: str, consumers: Sequence[Any], include_self: bool) -> list[Command]:
        """XGROUP DELCONSUMER for the idle without pending entries; this one only when leaving."""
        doomed: list[Command] = []
        for consumer in consumers:
            info = {as_text(k): v for k, v in zip(consumer[::2], consumer[1::2], strict=True)}
            name = as_text(info.get("name", b""))
            idle = int(info.get("idle", 0)) >= self._idle_limit_ms
            free = int(info.get("pending", 1)) == 0
            if free and (include_self if name == self.consumer else idle):
                doomed.append(("XGROUP", "DELCONSUMER", key, self.group, name))
        return doomed
