"""The reader of one consumer group over some streams: XREADGROUP, XAUTOCLAIM, XACK, XCLAIM.

Reading. Every fetch first does the work that is due (at most every quarter of the
redelivery timeout, at least every second, and at once when a nacked entry comes due):
entries whose delivery was not acknowledged within the redelivery timeout are reclaimed
with XAUTOCLAIM, which raises their delivery count (the attempt number, read back with
XPENDING for those entries only). Then new entries are read with one XREADGROUP over
every key, blocking on the server at most the block time, on a connection this member
keeps for itself (its socket timeout outlasts the block).

Acknowledging. `ack()` sends XACK per key, one round trip for all keys. When a fetch is
about to start, its XREADGROUP carries the XACKs in the same write instead: a consumer
that acks and asks for more costs one round trip, not two.

Delays. nack(delay) leaves the entry in the group's pending list (so nothing is lost if
this process dies) and sets its idle time so that XAUTOCLAIM takes it exactly when the
delay has passed: `XCLAIM ... IDLE <redelivery timeout - delay> JUSTID`. A delay longer
than the redelivery timeout is also written to the sorted set `abe:{<key>}:delayed:<group>`
(score = due time, ms since the epoch): until it is due, the member holding the entry
keeps resetting its idle time, and a member that reclaims it early (its holder died)
sees the score and holds it in turn; once it is due within one redelivery timeout, any
member arms it as above and removes it from the set.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, WatchError

from abe.provider import IncomingMessage, Receiver, bounded
from abe_mq_redis._client import RedisClient, as_text, bulk, delayed_key, pack, reply

__all__ = ["RedisReceiver"]

log = logging.getLogger("abe.redis")

_DATA = b"data"
_MAX_TICK = 1.0
"""Longest time between two reclaim rounds, whatever the redelivery timeout."""
_ARM_BATCH = 100
"""Most delayed entries one reclaim round arms per key."""
_SLACK = 0.005
"""Seconds past an entry's due time to look for it, so the server sees it idle enough."""
_CLIENT_ID = pack(("CLIENT", "ID"))


def _message(key: str, entry_id: bytes, fields: Sequence[bytes], attempt: int) -> IncomingMessage:
    """An IncomingMessage from a stream entry: `data` is the body, other fields headers."""
    body = b""
    headers: dict[str, str] = {}
    pairs = iter(fields)
    for name, value in zip(pairs, pairs, strict=False):
        if name == _DATA:
            body = value
        else:
            headers[name.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    broker_id = entry_id.decode()
    return IncomingMessage(key, body, headers, attempt, broker_id, broker_id)


def _by_key(messages: Iterable[IncomingMessage]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for message in messages:
        grouped.setdefault(message.key, []).append(message.broker_id)
    return grouped


_Carried = tuple[str, list[str], "_PendingAck"]


class _PendingAck:
    """Entries `ack()` was given, waiting one turn of the loop for a fetch to carry them."""

    __slots__ = ("by_key", "done")

    def __init__(self, by_key: dict[str, list[str]]) -> None:
        self.by_key = by_key
        self.done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def settle(self, acked: bool) -> None:
        if not self.done.done():
            self.done.set_result(acked)


class RedisReceiver(Receiver):
    """One member (Redis consumer) of a group, reading `keys`."""

    def __init__(
        self, client: RedisClient, group: str, keys: tuple[str, ...], consumer: str
    ) -> None:
        settings = client.settings
        self._client = client
        self._read_pool = client.read_pool
        self._connection: AbstractConnection | None = None
        self.group = group
        self.keys = keys
        self.consumer = consumer
        self._lease = settings.redelivery_timeout
        self._lease_ms = max(1, round(settings.redelivery_timeout * 1000))
        self._max_block = settings.poll_interval
        self._idle_limit_ms = round(settings.consumer_idle_timeout * 1000)
        self._tick = min(_MAX_TICK, max(0.05, self._lease / 4))
        self._next_tick = 0.0  # the first fetch reclaims what earlier members left
        self._wakeups: list[float] = []  # when entries nacked with a delay come due
        self._cursors = dict.fromkeys(keys, "0-0")
        self._held: dict[tuple[str, str], int] = {}  # (key, id) -> due (ms since epoch)
        self._held_refreshed = 0.0
        self._turn = 0
        self._acks: list[_PendingAck] = []
        self._reads: dict[tuple[tuple[str, ...], int], tuple[int, bytes, bytes]] = {}
        self._xack_heads: dict[str, bytes] = {}
        self._client_id: int | None = None  # of the reading connection, for CLIENT UNBLOCK
        self._blocked_until: float | None = None  # while a blocking read is on the wire

    # ---- reading ----------------------------------------------------------------------

    async def fetch(self, max_messages: int, timeout: float) -> Sequence[IncomingMessage]:
        now = time.monotonic()
        if now >= self._next_tick or (self._wakeups and self._wakeups[0] <= now):
            reclaimed = await self._maintain(max_messages, now)
            if reclaimed:
                return reclaimed
        block = min(timeout, self._max_block, self._next_due() - time.monotonic())
        return await self._read(max_messages, block)

    def _next_due(self) -> float:
        if self._wakeups:
            return min(self._next_tick, self._wakeups[0])
        return self._next_tick

    def _share(self, credit: int) -> tuple[tuple[str, ...], int]:
        """Which keys to read and how many from each, so that the total stays within credit."""
        keys = self.keys
        if credit >= len(keys):
            return keys, credit // len(keys)
        start = self._turn % len(keys)
        self._turn += credit
        return (keys[start:] + keys[:start])[:credit], 1

    async def _read(self, credit: int, block: float) -> list[IncomingMessage]:
        keys, count = self._share(credit)
        block_ms = int(block * 1000)
        carried, self._acks = self._acks, []
        acks = [(key, entry_ids, ack) for ack in carried for key, entry_ids in ack.by_key.items()]
        parts = [self._xack(key, entry_ids) for key, entry_ids, _ in acks]
        parts.append(self._xreadgroup(keys, count, block_ms))
        packed = b"".join(parts)
        self._blocked_until = time.monotonic() + block_ms / 1000 if block_ms > 0 else None
        try:
            result = await self._roundtrip(packed, acks)
        finally:
            self._blocked_until = None
            for ack in carried:  # not carried through: ack() sends them itself
                ack.settle(False)
        if isinstance(result, ResponseError):
            if str(result).startswith("NOGROUP"):
                await self._recreate(result)
                return []
            await self._client.raise_first((result,), keys)
        if not result:
            return []
        messages: list[IncomingMessage] = []
        for stream, entries in result:
            key = stream.decode()
            for entry_id, fields in entries:
                messages.append(_message(key, entry_id, fields, 1))
        return messages

    def _xreadgroup(self, keys: tuple[str, ...], count: int, block_ms: int) -> bytes:
        """XREADGROUP GROUP <group> <me> COUNT n [BLOCK ms] STREAMS <keys> > ..., as RESP."""
        cached = self._reads.get((keys, count))
        if cached is None:
            head = pack(("XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count))
            tail = pack(("STREAMS", *keys, *(">" for _ in keys)))
            size = 6 + 1 + 2 * len(keys)
            cached = (size, head.partition(b"\r\n")[2], tail.partition(b"\r\n")[2])
            if len(self._reads) < 256:
                self._reads[keys, count] = cached
        size, head, tail = cached
        if block_ms <= 0:  # BLOCK 0 would wait forever: do not block at all
            return b"*%d\r\n%b%b" % (size, head, tail)
        block = b"$5\r\nBLOCK\r\n" + bulk(b"%d" % block_ms)
        return b"*%d\r\n%b%b%b" % (size + 2, head, block, tail)

    def _xack(self, key: str, entry_ids: list[str]) -> bytes:
        head = self._xack_heads.get(key)
        if head is None:
            head = self._xack_heads[key] = pack(("XACK", key, self.group)).partition(b"\r\n")[2]
        ids = b"".join([bulk(entry_id.encode()) for entry_id in entry_ids])
        return b"*%d\r\n%b%b" % (3 + len(entry_ids), head, ids)

    async def _roundtrip(self, packed: bytes, acks: list[_Carried]) -> Any:
        """Send the XACKs and the XREADGROUP on this member's connection; the read's reply.

        On a new connection, CLIENT ID goes first: `_wake()` needs it to cut a block short.
        """
        for attempt in (1, 2):
            connection = self._connection
            if connection is None:
                connection = await self._read_pool.get_connection()  # type: ignore[no-untyped-call]
                self._connection = connection
            try:
                if not connection.is_connected:
                    self._client_id = None
                    await connection.connect()
                ask_id = self._client_id is None
                if ask_id:
                    await connection.send_packed_command(_CLIENT_ID + packed, check_health=False)
                    client_id = await reply(connection)  # refused (ACL): 0, do not ask again
                    self._client_id = client_id if isinstance(client_id, int) else 0
                else:
                    await connection.send_packed_command(packed, check_health=False)
                failed: set[int] = set()
                for _key, _ids, ack in acks:
                    if isinstance(await reply(connection), Exception):
                        failed.add(id(ack))
                for _key, _ids, ack in acks:
                    ack.settle(id(ack) not in failed)
                return await reply(connection)
            except RedisConnectionError:
                self._client_id = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _wake(self, at: float) -> None:
        """Cut a blocking read short if it would outlast `at` (CLIENT UNBLOCK; best effort)."""
        until, client_id = self._blocked_until, self._client_id
        if until is None or not client_id or at >= until - _SLACK:
            return
        try:
            await self._client.call(pack(("CLIENT", "UNBLOCK", client_id)))
        except Exception as exc:  # e.g. an ACL user without CLIENT: it wakes at block end
            log.debug("redis: CLIENT UNBLOCK failed (%s); the read ends on its own", exc)

    async def _recreate(self, error: ResponseError) -> None:
        log.warning(
            "redis: group %r is missing on %s (%s); creating it again from the start of the "
            "stream (did the server restart without persistence, or was the key deleted?)",
            self.group,
            ", ".join(self.keys),
            error,
        )
        await self._client.create_groups(self.group, self.keys)
        self._cursors = dict.fromkeys(self.keys, "0-0")

    async def _raise_first(self, replies: Iterable[Any], keys: Iterable[str]) -> None:
        """Raise the first error of `replies`; a WRONGTYPE as the error naming the key at fault."""
        await self._client.raise_first(replies, keys, self.group)

    # ---- redelivery -------------------------------------------------------------------

    async def _maintain(self, credit: int, now: float) -> list[IncomingMessage]:
        """The periodic work: keep held entries, arm delayed ones, reclaim the unfinished."""
        self._next_tick = now + self._tick
        while self._wakeups and self._wakeups[0] <= now:
            heapq.heappop(self._wakeups)
        now_ms = int(time.time() * 1000)
        if self._held:
            await self._keep_held(now, now_ms)
        keys, count = self._share(credit)
        commands = []
        for key in keys:
            delayed = delayed_key(key, self.group)
            window = now_ms + self._lease_ms
            commands.append(
                pack(
                    ("ZRANGEBYSCORE", delayed, "-inf", window, "WITHSCORES", "LIMIT", 0, _ARM_BATCH)
                )
            )
            cursor = self._cursors[key]
            commands.append(
                pack(
                    (
                        *("XAUTOCLAIM", key, self.group, self.consumer, self._lease_ms, cursor),
                        *("COUNT", count),
                    )
                )
            )
        replies = await self._client.call(b"".join(commands), len(commands))
        for item in replies:
            if isinstance(item, ResponseError) and str(item).startswith("NOGROUP"):
                await self._recreate(item)
                return []
        await self._raise_first(replies, keys)
        due: dict[str, list[tuple[str, int]]] = {}
        gone: dict[str, list[str]] = {}
        claimed: list[IncomingMessage] = []
        for index, key in enumerate(keys):
            delayed_reply, auto = replies[2 * index], replies[2 * index + 1]
            pairs = iter(delayed_reply)
            due[key] = [
                (as_text(member), int(float(score)))
                for member, score in zip(pairs, pairs, strict=False)
            ]
            cursor = as_text(auto[0])
            self._cursors[key] = cursor
            if cursor != "0-0":  # more of the pending list to scan: go on at the next fetch
                self._next_tick = now
            for entry in auto[1]:
                if entry is not None and entry[1] is not None:  # Redis 6.2: nil if deleted
                    claimed.append(_message(key, entry[0], entry[1], 0))
            if len(auto) > 2 and auto[2]:  # entries deleted from the stream (Redis 7)
                gone[key] = [as_text(entry_id) for entry_id in auto[2]]
        armed = await self._arm(due, gone, now, now_ms) if any(due.values()) or gone else set()
        claimed = [message for message in claimed if (message.key, message.broker_id) not in armed]
        if not claimed:
            return []
        return await self._settle_claimed(claimed, now, now_ms)

    async def _arm(
        self,
        due: dict[str, list[tuple[str, int]]],
        gone: dict[str, list[str]],
        now: float,
        now_ms: int,
    ) -> set[tuple[str, str]]:
        """Make delayed entries claimable exactly when due; forget those that are gone.

        Returns the entries armed, which a reclaim of the same round must not deliver.
        """
        armed: set[tuple[str, str]] = set()
        commands = []
        for key, entries in due.items():
            for entry_id, due_ms in entries:
                remaining = due_ms - now_ms
                idle = max(0, self._lease_ms - remaining)
                commands.append(
                    pack(
                        (
                            *("XCLAIM", key, self.group, self.consumer, 0, entry_id),
                            *("IDLE", idle, "JUSTID"),
                        )
                    )
                )
                self._held.pop((key, entry_id), None)
                armed.add((key, entry_id))
                heapq.heappush(self._wakeups, now + max(0, remaining) / 1000 + _SLACK)
            if entries:
                ids = [entry_id for entry_id, _ in entries]
                commands.append(pack(("ZREM", delayed_key(key, self.group), *ids)))
        for key, entry_ids in gone.items():
            commands.append(pack(("ZREM", delayed_key(key, self.group), *entry_ids)))
            for entry_id in entry_ids:
                self._held.pop((key, entry_id), None)
        if commands:
            await self._client.call(b"".join(commands), len(commands))
        return armed

    async def _settle_claimed(
        self, claimed: list[IncomingMessage], now: float, now_ms: int
    ) -> list[IncomingMessage]:
        """Attempt numbers for reclaimed entries; hold back those nacked until later.

        An entry is in the delayed set only if its holder died before it came due (its
        holder keeps resetting its idle time): this member then holds it, or arms it.
        """
        by_key = _by_key(claimed)
        commands = [
            pack(("XPENDING", message.key, self.group, message.broker_id, message.broker_id, 1))
            for message in claimed
        ]
        commands += [
            pack(("ZMSCORE", delayed_key(key, self.group), *entry_ids))
            for key, entry_ids in by_key.items()
        ]
        replies = await self._client.call(b"".join(commands), len(commands))
        scores: dict[tuple[str, str], int] = {}
        for offset, (key, entry_ids) in enumerate(by_key.items(), start=len(claimed)):
            found = replies[offset]
            if isinstance(found, Exception):
                continue
            for entry_id, score in zip(entry_ids, found, strict=False):
                if score is not None:
                    scores[key, entry_id] = int(float(score))
        ready: list[IncomingMessage] = []
        to_arm: dict[str, list[tuple[str, int]]] = {}
        past: dict[str, list[str]] = {}
        await self._raise_first(replies[: len(claimed)], by_key)
        for message, pending in zip(claimed, replies, strict=False):
            if not pending:  # acknowledged meanwhile by its earlier holder: done
                continue
            entry = (message.key, message.broker_id)
            due = scores.get(entry)
            if due is not None and due - now_ms > self._lease_ms:
                self._held[entry] = due
            elif due is not None and due > now_ms:
                to_arm.setdefault(message.key, []).append((message.broker_id, due))
            else:
                if due is not None:
                    past.setdefault(message.key, []).append(message.broker_id)
                message.attempt = int(pending[0][3])
                ready.append(message)
        if to_arm or past:
            await self._arm(to_arm, past, now, now_ms)
        return ready

    async def _keep_held(self, now: float, now_ms: int) -> None:
        """Reset the idle time of entries nacked until later than one timeout from now."""
        if now - self._held_refreshed < self._lease / 3:
            return
        self._held_refreshed = now
        keep: dict[str, list[str]] = {}
        for (key, entry_id), due_ms in list(self._held.items()):
            if due_ms - now_ms <= self._lease_ms:
                del self._held[key, entry_id]  # within reach: the sorted set arms it now
            else:
                keep.setdefault(key, []).append(entry_id)
        if keep:
            await self._claim(keep)

    async def _claim(self, by_key: dict[str, list[str]], *options: str | int) -> None:
        """XCLAIM to this consumer with JUSTID: resets idle time, leaves the count alone."""
        commands = [
            pack(("XCLAIM", key, self.group, self.consumer, 0, *entry_ids, *options, "JUSTID"))
            for key, entry_ids in by_key.items()
        ]
        await self._raise_first(await self._client.call(b"".join(commands), len(commands)), by_key)

    # ---- settling ---------------------------------------------------------------------

    async def ack(self, messages: Sequence[IncomingMessage]) -> None:
        pending = _PendingAck(_by_key(messages))
        self._acks.append(pending)
        await asyncio.sleep(0)  # one turn: a fetch starting now carries them
        if pending in self._acks:
            self._acks.remove(pending)
        elif await pending.done:
            return
        commands = [self._xack(key, entry_ids) for key, entry_ids in pending.by_key.items()]
        replies = await self._client.call(b"".join(commands), len(commands))
        await self._raise_first(replies, pending.by_key)

    async def nack(self, message: IncomingMessage, delay: float) -> None:
        key, entry_id = message.key, message.broker_id
        if delay <= self._lease:
            idle = max(0, self._lease_ms - round(delay * 1000))
            await self._claim({key: [entry_id]}, "IDLE", idle)
            due = time.monotonic() + delay + _SLACK
            heapq.heappush(self._wakeups, due)
            await self._wake(due)
            return
        due_ms = int((time.time() + delay) * 1000)
        commands = [
            pack(("ZADD", delayed_key(key, self.group), due_ms, entry_id)),
            pack(("XCLAIM", key, self.group, self.consumer, 0, entry_id, "JUSTID")),
        ]
        await self._raise_first(await self._client.call(b"".join(commands), len(commands)), [key])
        self._held[key, entry_id] = due_ms

    async def extend(self, messages: Sequence[IncomingMessage]) -> None:
        await self._claim(_by_key(messages))

    # ---- membership -------------------------------------------------------------------

    async def close(self) -> None:
        """Give back the reading connection; delete this consumer if it owns no pending entry."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.disconnect()  # a read cut short may have left a reply unread
            await self._read_pool.release(connection)
        for ack in self._acks:
            ack.settle(False)
        timeout = self._client.settings.operation_timeout
        try:
            await bounded(self.tidy(include_self=True), timeout)
        except Exception as exc:
            log.debug("redis: could not tidy the consumers of group %r: %s", self.group, exc)

    async def tidy(self, *, include_self: bool) -> None:
        """Delete consumers of the group that own no pending entry and are idle (best effort).

        Other members go once idle for ABE_REDIS_CONSUMER_IDLE_TIMEOUT; this one, when
        `include_self`, at once. A consumer that owns pending entries is never deleted
        (that would drop them); each deletion runs in WATCH/MULTI, so an XADD that could
        hand a blocked read new entries in between cancels it.
        """
        commands = [pack(("XINFO", "CONSUMERS", key, self.group)) for key in self.keys]
        try:
            replies = await self._client.call(b"".join(commands), len(commands))
        except Exception as exc:
            log.debug("redis: XINFO CONSUMERS failed: %s", exc)
            return
        for key, found in zip(self.keys, replies, strict=True):
            if not isinstance(found, Exception) and self._doomed(found, include_self):
                await self._delete_consumers(key, include_self)

    def _doomed(self, consumers: Sequence[Sequence[Any]], include_self: bool) -> list[str]:
        names = []
        for consumer in consumers:
            pairs = iter(consumer)
            info = {as_text(name): value for name, value in zip(pairs, pairs, strict=False)}
            name = as_text(info.get("name", b""))
            if int(info.get("pending", 1)) != 0:
                continue
            if name == self.consumer:
                if include_self:
                    names.append(name)
            elif int(info.get("idle", 0)) >= self._idle_limit_ms:
                names.append(name)
        return names

    async def _delete_consumers(self, key: str, include_self: bool) -> None:
        client = self._client.commands
        doomed: list[str] = []
        async with client.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(key)
                consumers: Any = await pipe.execute_command("XINFO", "CONSUMERS", key, self.group)
                doomed = self._doomed(consumers, include_self)
                if not doomed:
                    return
                pipe.multi()  # type: ignore[no-untyped-call]
                for name in doomed:
                    pipe.execute_command("XGROUP", "DELCONSUMER", key, self.group, name)
                await pipe.execute()
            except WatchError:
                log.debug("redis: %r changed while tidying its consumers; left for later", key)
                return
            except ResponseError as exc:
                log.debug("redis: tidying the consumers of %r failed: %s", key, exc)
                return
        log.debug("redis: deleted idle consumers %s of group %r on %r", doomed, self.group, key)
