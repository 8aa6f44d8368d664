"""The Kafka receiver: a group member with the acks, attempts and leases Kafka lacks (commits
below each partition's first unfinished record; a message handed back is written as a copy)."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from aiokafka import ConsumerRebalanceListener, OffsetAndMetadata  # type: ignore[import-untyped]
from aiokafka.errors import CommitFailedError, IllegalStateError  # type: ignore[import-untyped]

from abe.errors import BackendUnavailableError
from abe.provider import (
    HEADER_ATTEMPT,
    HEADER_ID,
    HEADER_NOT_BEFORE,
    HEADER_PUBLISHED_AT,
    IncomingMessage,
    Receiver,
    bounded,
    wait_event,
)
from abe_mq_kafka._client import KafkaClient

__all__ = ["KafkaReceiver"]

log = logging.getLogger("abe.kafka")
_Failures = list[tuple["_Message", BaseException]]


@dataclass(slots=True, eq=False)
class _Run:
    """The next `count` items of `partition`'s queue, taken in one go when their turn comes."""

    partition: _Partition
    count: int


@dataclass(eq=False)
class _Partition:
    """What this member read from one assigned partition and has not yet committed past."""

    tp: Any
    unsettled: dict[int, _Message] = field(default_factory=dict)  # read, not settled: by offset
    queued: deque[Any] = field(default_factory=deque)  # records unread, delayed copies come due
    position: int | None = None
    committed: int = -1
    current: bool = True  # still ours: its acks commit
    handing_out: bool = True  # not being revoked: its records may be handed out

    def commit_point(self) -> int | None:
        """The offset to commit: the first unfinished record's, the first unread one's, or next."""
        unread = self.queued[0].offset if self.queued else self.position  # (copies: unsettled)
        return next(iter(self.unsettled), unread)  # read in offset order, so the first is least


class _Message(IncomingMessage):
    """A record read, its own handle; its partition holds it only while unsettled (no cycle).

    Its headers and broker id are made on first use (the base's slots for them go unused):
    a drain through `consume()` never asks for them, and abe's usual record (its id the only
    header) needs nothing more read to be handed out. That halves the receiver's work a record.
    """

    __slots__ = (
        "_broker_id",
        "_headers",
        "_record",
        "deadline",
        "due",
        "moving",
        "offset",
        "partition",
        "settled",
    )

    def __init__(
        self,
        partition: _Partition,
        record: Any,
        now: float,
        deadline: float,  # the lease's end once handed out (0: not yet handed out)
        *,
        headers: dict[str, str] | None = None,  # None: decoded from `record` on first use
        attempt: int = 1,
    ) -> None:
        self.key, self.body, self.attempt = partition.tp.topic, record.value or b"", attempt
        self.handle, self.received_at = None, now
        self.partition, self.offset = partition, record.offset
        self.deadline = deadline
        self.due = 0.0  # a copy read before its time: when it may be handed out
        self.settled = False  # finished or handed on
        self.moving: asyncio.Task[None] | None = None  # its copy being written
        self._record, self._headers, self._broker_id = record, headers, ""

    @property
    def headers(self) -> Mapping[str, str]:
        """Its headers, with the record's timestamp as the publish time."""
        if self._headers is None:
            self._headers = _headers(self._record)
        return self._headers

    @headers.setter
    def headers(self, headers: Mapping[str, str]) -> None:
        self._headers = dict(headers)

    @property
    def broker_id(self) -> str:
        """Its partition and offset, "3@1041", made on first use."""
        if not self._broker_id:
            self._broker_id = f"{self.partition.tp.partition}@{self.offset}"
        return self._broker_id

    @broker_id.setter
    def broker_id(self, broker_id: str) -> None:
        self._broker_id = broker_id


class KafkaReceiver(Receiver, ConsumerRebalanceListener):  # type: ignore[misc]
    """A member of consumer group `group` reading `keys` (topics); its own rebalance listener."""

    def __init__(self, client: KafkaClient, group: str, keys: tuple[str, ...]) -> None:
        settings = client.settings
        self._client, self._group, self._keys = client, group, keys
        self._commit_interval = settings.commit_interval  # acks settle at once, commit this often
        self._saving: asyncio.Task[None] | None = None  # the commit waiting for the interval
        self._lease, self._timeout = settings.redelivery_timeout, settings.operation_timeout
        self._revoke_wait = max(0.0, settings.rebalance_wait - settings.session_timeout)
        self._consumer: Any = None
        self._partitions: dict[Any, _Partition] = {}
        self._ready: deque[_Run] = deque()  # whose queued records or copies are next, in turn
        self._delayed: list[tuple[float, int, _Message]] = []  # delayed copies, by due
        self._order = itertools.count()
        self._fetching, self._closed = 0, False
        self._last_active = self._received = time.monotonic()
        self._starved_after, self._fetch_wait = 30.0, settings.fetch_max_wait  # lag warning
        self._joined, self._settled = asyncio.Event(), asyncio.Event()
        self._revoking: asyncio.Event | None = None  # set once a running revoke has committed
        self._commit_lock, self._membership = asyncio.Lock(), asyncio.Lock()
        self._watchdog: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Join the group and wait (bounded) for the first assignment; start the lease watchdog."""
        try:
            await self._start_consumer(wait=True)
        except BaseException:
            consumer, self._consumer = self._consumer, None
            if consumer is not None:  # joined, then cancelled (the open timed out)
                await self._client.stop_consumer(consumer)
            raise
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def _start_consumer(self, *, wait: bool) -> Any:
        joined = self._joined = asyncio.Event()
        consumer = self._consumer = await self._client.consumer(self._group, self._keys, self)
        self._last_active = time.monotonic()
        if wait:  # the first join; a slow group is no error: fetch waits for it too
            await wait_event(joined, self._timeout / 2)
        return consumer

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in (self._watchdog, self._saving):  # leaving commits what is finished
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        async with self._membership:
            await self._leave("closing")

    async def _leave(self, why: str) -> None:
        """Hand on what is held, commit, and stop the consumer (leaving the group)."""
        if self._revoking is not None:  # a rebalance is handing on and committing: let it end
            await wait_event(self._revoking, self._revoke_wait + 2 * self._timeout)
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        partitions = list(self._partitions.values())
        try:
            await self._release(partitions, why, consumer)
        finally:
            self._drop(partitions)
            await self._client.stop_consumer(consumer)

    async def fetch(self, max_messages: int, timeout: float) -> Sequence[IncomingMessage]:
        self._last_active = time.monotonic()
        if (consumer := self._consumer) is None:
            if self._closed:
                raise BackendUnavailableError("kafka: fetch: this receiver is closed")
            async with self._membership:
                consumer = self._consumer or await self._start_consumer(wait=False)
        out = self._take_due(max_messages, [])
        deadline = time.monotonic() + timeout
        while not out:
            until = min(deadline, self._delayed[0][0]) if self._delayed else deadline
            self._fetching += 1
            try:
                wait_ms = max(0, int((until - time.monotonic()) * 1000))  # or a delayed copy is due
                batches = await consumer.getmany(timeout_ms=wait_ms)  # all it holds (README)
            finally:
                self._fetching -= 1
                self._last_active = time.monotonic()
            self._accept(batches)
            if self._take_due(max_messages, out):
                self._received = time.monotonic()
            if time.monotonic() >= deadline or self._consumer is not consumer:
                break
        return out

    def _accept(self, batches: dict[Any, list[Any]]) -> None:
        """Queue the records getmany returned, unread, but not those read again after a seek."""
        for tp, records in batches.items():  # never an empty list
            partition = self._partitions.setdefault(tp, _Partition(tp))
            if partition.position is None:  # where the group's offset stands
                partition.committed = partition.position = records[0].offset
            fresh = [record for record in records if record.offset >= partition.position]
            partition.position = max(partition.position, records[-1].offset + 1)
            if fresh:
                partition.queued.extend(fresh)
                self._ready.append(_Run(partition, len(fresh)))

    def _take_due(self, limit: int, out: list[IncomingMessage]) -> list[IncomingMessage]:
        """Move what is due into `out` (at most `limit`), reading records only now (shorter GCs)."""
        delayed, ready, now = self._delayed, self._ready, time.monotonic()
        while delayed and delayed[0][0] <= now:  # a delayed copy come due: behind the queue
            copy = heapq.heappop(delayed)[2]
            copy.partition.queued.append(copy)
            ready.append(_Run(copy.partition, 1))
        while ready and len(out) < limit:
            run = ready[0]
            count = min(run.count, limit - len(out))
            run.count -= count
            if not run.count:
                ready.popleft()
            self._take_run(run.partition, count, out, now)
        return out

    def _take_run(
        self, partition: _Partition, count: int, out: list[IncomingMessage], now: float
    ) -> None:
        """Hand out the next `count` items of `partition`'s queue, leased from `now` (records
        are read here, as they are handed out)."""
        queued, unsettled = partition.queued, partition.unsettled
        deadline = now + self._lease if partition.handing_out else 0.0  # 0: left for the next owner
        for _ in range(count):
            record = queued.popleft()
            if type(record) is _Message:  # a delayed copy come due
                record.deadline, record.received_at = deadline, now
                message = record
            else:  # a record, read now: abe's usual one (only its id in headers) needs no more
                headers = record.headers
                if headers and len(headers) == 1 and headers[0][0] == HEADER_ID:
                    message = _Message(partition, record, now, deadline)
                else:  # a copy, a foreign producer's record or one with headers of its own
                    message = _read(partition, record, now, deadline)
                unsettled[record.offset] = message
                if message.due > now:  # a copy read before its time: it waits in the heap
                    heapq.heappush(self._delayed, (message.due, next(self._order), message))
                    continue
            if deadline:
                out.append(message)

    async def ack(self, messages: Sequence[IncomingMessage]) -> None:
        self._last_active = time.monotonic()
        if touched := self._settle(cast("Sequence[_Message]", messages)):
            if self._commit_interval <= 0:
                await self._commit(touched)
            elif self._saving is None:  # core need not hold acked messages (GC work) until then
                self._saving = asyncio.get_running_loop().create_task(self._save())

    async def _save(self) -> None:
        """One commit for the acks of a commit interval (a failed one: the next covers them)."""
        await asyncio.sleep(self._commit_interval)
        self._saving = None
        try:
            await self._commit(list(self._partitions.values()))
        except Exception as exc:
            log.warning(f"kafka: committing group {self._group!r}'s offsets failed ({exc!r})")

    async def nack(self, message: IncomingMessage, delay: float) -> None:
        self._last_active = time.monotonic()
        if not (held := cast(_Message, message)).settled and held.moving is None:  # else handed on
            await asyncio.shield(self._hand_on(held, delay, False))

    async def extend(self, messages: Sequence[IncomingMessage]) -> None:
        self._last_active = now = time.monotonic()
        for message in cast("Sequence[_Message]", messages):
            if not message.settled and message.partition.current:  # still held
                message.deadline = now + self._lease

    def _settle(self, messages: Iterable[_Message]) -> set[_Partition]:
        touched: set[_Partition] = set()
        for message in messages:
            if not message.settled:
                message.settled = True
                message.partition.unsettled.pop(message.offset, None)  # (dropped: cleared)
                if message.partition.current:
                    touched.add(message.partition)
        self._settled.set()
        return touched

    def _hand_on(self, message: _Message, delay: float, away: bool) -> asyncio.Task[None]:
        """The one copy of `message` being written; all who hand it on await it (a revoke too)."""
        if message.moving is None:
            copy = self._copy(message, delay, away)
            message.moving = asyncio.get_running_loop().create_task(copy)
        return message.moving

    async def _hand_on_all(self, messages: list[_Message], away: bool) -> _Failures:
        """Hand each message on (their copies written at once); the ones that failed, and why."""
        copies = (asyncio.shield(self._hand_on(message, 0, away)) for message in messages)
        results = await asyncio.gather(*copies, return_exceptions=True)
        failed = zip(messages, results, strict=True)
        return [(message, error) for message, error in failed if isinstance(error, BaseException)]

    async def _copy(self, message: _Message, delay: float, away: bool) -> None:
        """Write `message` again as its next attempt (`away` from this member's partitions)."""
        headers = {**message.headers, HEADER_ATTEMPT: str(message.attempt + 1)}
        if delay > 0:
            headers[HEADER_NOT_BEFORE] = str(int(time.time() * 1000 + delay * 1000))
        assigned = self._consumer.assignment() if away and self._consumer is not None else ()
        avoid = frozenset(tp.partition for tp in assigned if tp.topic == message.key)
        copy = self._client.send_copy(message.key, message.body, headers, avoid=avoid)
        try:
            await bounded(copy, self._timeout)
        finally:
            message.moving = None
        self._settle((message,))

    async def _commit(self, partitions: Iterable[_Partition], consumer: Any = None) -> None:
        """Commit each partition's commit point if it moved; only while the partition is ours."""
        async with self._commit_lock:
            consumer = consumer or self._consumer
            points = {part: part.commit_point() for part in partitions if part.current}
            moved = {part: p for part, p in points.items() if p is not None and p > part.committed}
            if not moved or consumer is None:
                return
            try:
                offsets = {part.tp: OffsetAndMetadata(point, "") for part, point in moved.items()}
                await bounded(consumer.commit(offsets), self._timeout)
            except (CommitFailedError, IllegalStateError) as exc:
                # a rebalance took them: the revoke committed what was finished, nothing skipped
                log.debug("kafka: commit for group %r skipped (%s)", self._group, exc)
                return
            for partition, point in moved.items():
                partition.committed = max(partition.committed, point)

    async def on_partitions_assigned(self, assigned: Collection[Any]) -> None:
        """aiokafka's callback: the group gave this member `assigned`."""
        for tp in assigned:
            self._partitions.setdefault(tp, _Partition(tp))
        self._joined.set()

    async def on_partitions_revoked(self, revoked: Collection[Any]) -> None:
        """aiokafka's callback before a rebalance: settle, hand on and commit `revoked`."""
        partitions = [self._partitions[tp] for tp in revoked if tp in self._partitions]
        if not partitions:
            return
        consumer = self._consumer
        done = self._revoking = asyncio.Event()
        for partition in partitions:  # what is queued stays for the next owner to read
            partition.handing_out = False
        try:
            await self._wait_for_settlement(partitions)
            await self._release(partitions, "rebalance", consumer)
        except Exception as exc:
            log.warning(
                f"kafka: settling partitions of group {self._group!r} before a rebalance failed "
                f"({exc}); their unfinished messages are read again by the next owner"
            )
        finally:
            self._drop(partitions)
            done.set()
            if self._revoking is done:
                self._revoking = None

    async def _wait_for_settlement(self, chosen: list[_Partition]) -> None:
        """Give deliveries in progress on revoked partitions time to finish (or their lease end)."""
        give_up = time.monotonic() + self._revoke_wait
        while not self._closed and not self._stalled():
            now = time.monotonic()
            live = [m.deadline for p in chosen for m in p.unsettled.values() if m.deadline > now]
            if not live or now >= give_up:
                return
            self._settled = asyncio.Event()
            await wait_event(self._settled, min(give_up, *live) - now)

    async def _release(self, partitions: list[_Partition], why: str, consumer: Any) -> None:
        """Hand on the deliveries still held on `partitions` as copies, then commit them."""
        held = [m for p in partitions for m in p.unsettled.values() if m.deadline]  # moving too
        if failed := len(await self._hand_on_all(held, away=False)):
            log.info(
                f"kafka: {failed} unfinished message(s) of group {self._group!r} could not be "
                f"handed on ({why}); the next owner of their partitions reads them again"
            )
        await self._commit(partitions, consumer)

    def _drop(self, partitions: list[_Partition]) -> None:
        """Forget partitions that are no longer ours: later acks of their messages commit none."""
        for partition in partitions:
            partition.current = partition.handing_out = False
            partition.unsettled.clear()  # what is held of it no longer counts (nor is a cycle)
            if self._partitions.get(partition.tp) is partition:
                del self._partitions[partition.tp]
        self._ready = deque(run for run in self._ready if run.partition.current)
        self._delayed = [item for item in self._delayed if item[2].partition.current]
        heapq.heapify(self._delayed)

    def _stalled(self) -> bool:
        """No fetch running and no fetch, ack, nack or extend for a whole redelivery timeout."""
        return self._fetching == 0 and time.monotonic() - self._last_active > self._lease

    async def _watch(self) -> None:
        """Redeliver messages whose lease ran out; leave the group when nobody reads any more."""
        while not self._closed:
            await asyncio.sleep(max(0.05, min(1.0, self._lease / 4)))
            try:
                if self._consumer is None or not self._stalled():
                    await self._expire()
                    await self._check_starving()
                    continue
                async with self._membership:
                    if self._consumer is not None and self._stalled():
                        log.info(
                            f"kafka: no reads for group {self._group!r} in {self._lease:.1f}s; "
                            f"leaving the group so that other members take its partitions"
                        )
                        await self._leave("the member stopped reading")
            except Exception as exc:
                log.warning("kafka: lease check for group %r failed: %s", self._group, exc)

    async def _check_starving(self) -> None:
        """Warn, once per quiet spell, when records wait on this member's partitions unread."""
        consumer, now = self._consumer, time.monotonic()
        if consumer is None or not self._fetching or now - self._received < self._starved_after:
            return
        self._received = now
        try:
            assigned = list(consumer.assignment())
            ends = await bounded(consumer.end_offsets(assigned), self._timeout) if assigned else {}
            positions = {tp: await bounded(consumer.position(tp), self._timeout) for tp in ends}
            waiting = [max(0, end - positions[tp]) for tp, end in ends.items()]
        except Exception as exc:  # only a diagnosis: the next spell tries again
            log.debug("kafka: measuring the lag of group %r failed: %s", self._group, exc)
            return
        if sum(waiting) > 0:
            log.warning(
                f"kafka: group {self._group!r}: this member holds {sum(map(bool, waiting))} "
                f"partition(s) with {sum(waiting)} message(s) waiting but has received none for "
                f"{self._starved_after:.0f}s; raise ABE_KAFKA_FETCH_MAX_WAIT (now "
                f"{self._fetch_wait:g}s): brokers slower to read a long partition answer empty"
            )

    async def _expire(self) -> None:
        now = time.monotonic()
        held = (m for p in self._partitions.values() for m in p.unsettled.values() if m.deadline)
        expired = [m for m in held if m.deadline <= now and m.moving is None]
        for message, failure in await self._hand_on_all(expired, away=True):
            log.info(f"kafka: redelivering {message} failed ({failure}); retrying")
        if touched := {m.partition for m in expired if m.settled}:  # _commit checks
            await self._commit(touched)


def _headers(record: Any) -> dict[str, str]:
    """`record`'s headers as text, with its timestamp as the publish time if it has none."""
    try:  # every header value UTF-8, as abe's own are (twice as fast)
        headers = {name: value.decode() for name, value in record.headers}
    except (UnicodeDecodeError, AttributeError, TypeError):  # a foreign producer's bytes, None
        headers = {n: v.decode("utf-8", "replace") if v else "" for n, v in record.headers or ()}
    if HEADER_PUBLISHED_AT not in headers and record.timestamp is not None:
        headers[HEADER_PUBLISHED_AT] = str(record.timestamp)
    return headers


def _read(partition: _Partition, record: Any, now: float, deadline: float) -> _Message:
    """A record read in full: a copy (its attempt, and its time if delayed) or a foreign one."""
    headers = _headers(record)
    attempt, not_before = headers.pop(HEADER_ATTEMPT, ""), headers.pop(HEADER_NOT_BEFORE, "")
    if HEADER_ID not in headers:  # a foreign producer's record: named by its position
        tp = partition.tp
        headers[HEADER_ID] = f"{tp.topic}:{tp.partition}:{record.offset}"
    tries = max(1, int(attempt)) if attempt.isdigit() else 1
    wait = int(not_before) / 1000 - time.time() if not_before.isdigit() else 0.0
    lease = 0.0 if wait > 0 else deadline
    message = _Message(partition, record, now, lease, headers=headers, attempt=tries)
    if wait > 0:  # not yet: no lease until it is handed out
        message.due = now + wait
    return message
