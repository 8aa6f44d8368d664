"""The Kafka receiver: one consumer-group member over some topics, with abe's settlement rules.

Kafka keeps one committed offset per partition, no per-message acknowledgement and no
delivery count. This receiver adds them:

- Commits: per partition it remembers the records it read, in offset order, and
  commits the offset of the first record that is not finished yet (acknowledged,
  dead-lettered or handed on as a copy). Acks arrive in batches; each batch is one
  commit. Before partitions are revoked in a rebalance it waits (bounded) for the
  deliveries still in progress, then commits; a commit that fails is never retried
  past an unfinished record, so nothing is skipped: the next owner reads again from
  the last committed offset.
- Redelivery: a message handed back (nack, or a delivery whose lease ran out, or one
  still held when the partition is revoked or the receiver closes) is written again
  to its topic as a copy with `abe-attempt` raised by one (and `abe-not-before` for a
  delay), and the original then counts as finished. The copy keeps every header,
  `abe-id` included. A copy read before its time is held here, without blocking
  anything else, until it is due.
- A member that stops reading (no fetch, ack, nack or extend for a redelivery
  timeout, as when its task was cancelled mid-message) leaves the group, like
  Kafka's max.poll.interval, so that its partitions go to members that still read;
  it joins again on its next fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections import deque
from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from aiokafka import (  # type: ignore[import-untyped]
    AIOKafkaConsumer,
    ConsumerRebalanceListener,
    OffsetAndMetadata,
)
from aiokafka.errors import CommitFailedError, IllegalStateError  # type: ignore[import-untyped]

from abe.backends.message_queue.base import IncomingMessage, Receiver
from abe.backends.message_queue.base.codec import HEADER_ID, HEADER_PUBLISHED_AT
from abe.errors import BackendUnavailableError

if TYPE_CHECKING:
    from abe_mq_kafka._backend import KafkaBackend

__all__ = ["HEADER_ATTEMPT", "HEADER_NOT_BEFORE", "KafkaReceiver"]

log = logging.getLogger("abe.kafka")

HEADER_ATTEMPT = "abe-attempt"
"""On a copy written for a redelivery: the attempt number its next delivery has (2, 3, ...)."""
HEADER_NOT_BEFORE = "abe-not-before"
"""On a copy written by nack(delay): milliseconds since the Unix epoch before which it waits."""
_OWN_HEADERS = (HEADER_ATTEMPT, HEADER_NOT_BEFORE)
_STOP_TIMEOUT = 5.0


class _Partition:
    """What this member read from one assigned partition and has not yet committed past."""

    __slots__ = ("committed", "current", "entries", "position", "tp")

    def __init__(self, tp: Any) -> None:
        self.tp = tp
        self.entries: deque[_Entry] = deque()
        self.position: int | None = None
        self.committed = -1
        self.current = True

    def commit_point(self) -> int | None:
        """The offset to commit: the first unfinished record's, or past the last one read."""
        entries = self.entries
        while entries and entries[0].settled:
            entries.popleft()
        if entries:
            return entries[0].offset
        return self.position


class _Entry:
    """One record read from a partition: settled once finished or handed on as a copy."""

    __slots__ = ("deadline", "message", "moving", "offset", "partition", "settled")

    def __init__(self, partition: _Partition, offset: int) -> None:
        self.partition = partition
        self.offset = offset
        self.settled = False
        self.moving: asyncio.Task[None] | None = None
        """The copy of this record being written (by a nack, a lease check or a release)."""
        self.deadline = 0.0
        self.message: IncomingMessage | None = None


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, receiver: KafkaReceiver) -> None:
        self._receiver = receiver

    async def on_partitions_revoked(self, revoked: Collection[Any]) -> None:
        await self._receiver._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Collection[Any]) -> None:
        self._receiver._on_assigned(assigned)


class KafkaReceiver(Receiver):
    """A member of consumer group `group` reading `keys` (topics)."""

    def __init__(self, backend: KafkaBackend, group: str, keys: tuple[str, ...]) -> None:
        settings = backend.settings
        self._backend = backend
        self._group = group
        self._keys = keys
        self._lease = settings.redelivery_timeout
        self._commit_interval = settings.commit_interval
        self._to_commit: set[_Partition] = set()
        self._commit_timer: asyncio.Task[None] | None = None
        self._operation_timeout = settings.operation_timeout
        self._revoke_wait = max(0.0, settings.rebalance_timeout - settings.session_timeout)
        self._consumer: Any = None
        self._partitions: dict[Any, _Partition] = {}
        self._held: dict[_Entry, None] = {}
        self._delayed: list[tuple[float, int, _Entry]] = []
        self._order = itertools.count()
        self._fetching = 0
        self._last_active = time.monotonic()
        self._closed = False
        self._joined: asyncio.Event | None = None
        self._settled: asyncio.Event | None = None
        self._revoking: asyncio.Event | None = None  # set once a running revoke has committed
        self._commit_lock = asyncio.Lock()
        self._membership = asyncio.Lock()
        self._watchdog: asyncio.Task[None] | None = None

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Join the group and wait (bounded) for the first assignment; start the lease watchdog."""
        try:
            await self._start_consumer(wait=True)
        except BaseException:
            consumer, self._consumer = self._consumer, None
            if consumer is not None:  # joined, then cancelled (the open timed out)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(consumer.stop(), _STOP_TIMEOUT)
            raise
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def _start_consumer(self, *, wait: bool) -> Any:
        options = self._backend.settings.consumer_options()
        consumer = AIOKafkaConsumer(group_id=self._group, **options)
        try:
            await self._backend.start_client(consumer)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(consumer.stop(), _STOP_TIMEOUT)
            raise
        joined = self._joined = asyncio.Event()
        consumer.subscribe(list(self._keys), listener=_Listener(self))
        self._consumer = consumer
        self._last_active = time.monotonic()
        if wait:  # the first join; a slow group is no error: fetch waits for it too
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(joined.wait(), self._operation_timeout / 2)
        return consumer

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)
        timer = self._commit_timer
        if timer is not None:  # leaving commits every partition anyway
            timer.cancel()
            await asyncio.gather(timer, return_exceptions=True)
        async with self._membership:
            await self._leave("closing")

    async def _leave(self, why: str) -> None:
        """Hand on what is held, commit, and stop the consumer (leaving the group)."""
        revoking = self._revoking
        if revoking is not None:  # a rebalance is handing on and committing: let it finish
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(
                    revoking.wait(), self._revoke_wait + 2 * self._operation_timeout
                )
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        partitions = list(self._partitions.values())
        try:
            await self._release(partitions, why, consumer)
        finally:
            self._drop(partitions)
            try:
                await asyncio.wait_for(consumer.stop(), _STOP_TIMEOUT)
            except Exception as exc:  # includes the timeout of a broker that is away
                log.debug("kafka: stopping the consumer of group %r failed: %r", self._group, exc)

    # ---- reading ------------------------------------------------------------------------------

    async def fetch(self, max_messages: int, timeout: float) -> Sequence[IncomingMessage]:
        self._last_active = time.monotonic()
        consumer = self._consumer
        if consumer is None:
            if self._closed:
                raise BackendUnavailableError("kafka: fetch: this receiver is closed")
            async with self._membership:
                consumer = self._consumer or await self._start_consumer(wait=False)
        out = self._take_due(max_messages, [])
        if out:
            return out
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            wait = deadline - loop.time()
            if self._delayed:
                wait = min(wait, self._delayed[0][0] - time.monotonic())
            self._fetching += 1
            try:
                batches = await consumer.getmany(
                    timeout_ms=max(0, int(wait * 1000)), max_records=max_messages
                )
            finally:
                self._fetching -= 1
                self._last_active = time.monotonic()
            out = self._accept(batches, max_messages)
            self._take_due(max_messages - len(out), out)
            if out or loop.time() >= deadline or self._consumer is not consumer:
                return out

    def _accept(self, batches: dict[Any, list[Any]], limit: int) -> list[IncomingMessage]:
        """Record what getmany returned; messages that are due now go out, copies early wait."""
        out: list[IncomingMessage] = []
        now = time.monotonic()
        wall = time.time() * 1000
        lease = now + self._lease
        for tp, records in batches.items():
            partition = self._partitions.get(tp)
            if partition is None:
                partition = self._partitions[tp] = _Partition(tp)
            for record in records:
                offset = record.offset
                if partition.position is None:
                    partition.committed = offset  # where the group's committed offset stands
                elif offset < partition.position:
                    continue  # read again after a seek: already known
                partition.position = offset + 1
                headers: dict[str, str] = {}
                attempt = 1
                not_before = 0.0
                for name, value in record.headers or ():
                    text = value.decode("utf-8", "replace") if value is not None else ""
                    if name == HEADER_ATTEMPT:
                        attempt = _number(text, 1)
                    elif name == HEADER_NOT_BEFORE:
                        not_before = _number(text, 0)
                    else:
                        headers[name] = text
                # A new message travels without these: its id and time are the record's.
                if HEADER_ID not in headers:
                    headers[HEADER_ID] = f"{tp.topic}:{tp.partition}:{offset}"
                if HEADER_PUBLISHED_AT not in headers and record.timestamp is not None:
                    headers[HEADER_PUBLISHED_AT] = str(record.timestamp)
                entry = _Entry(partition, offset)
                entry.message = IncomingMessage(
                    key=tp.topic,
                    body=record.value if record.value is not None else b"",
                    headers=headers,
                    attempt=max(1, attempt),
                    broker_id=f"{tp.partition}@{offset}",
                    handle=entry,
                )
                partition.entries.append(entry)
                if not_before > wall or len(out) >= limit:
                    due = now + max(0.0, (not_before - wall) / 1000)
                    heapq.heappush(self._delayed, (due, next(self._order), entry))
                else:
                    entry.deadline = lease
                    self._held[entry] = None
                    out.append(entry.message)
        return out

    def _take_due(self, limit: int, out: list[IncomingMessage]) -> list[IncomingMessage]:
        """Move held-back copies whose time has come into `out` (at most `limit`)."""
        delayed = self._delayed
        now = time.monotonic()
        while delayed and limit > 0 and delayed[0][0] <= now:
            _, _, entry = heapq.heappop(delayed)
            if entry.settled or not entry.partition.current or entry.message is None:
                continue
            entry.deadline = now + self._lease
            self._held[entry] = None
            out.append(entry.message)
            limit -= 1
        return out

    # ---- settling -----------------------------------------------------------------------------

    async def ack(self, messages: Sequence[IncomingMessage]) -> None:
        self._last_active = time.monotonic()
        touched = self._settle(message.handle for message in messages)
        if not touched:
            return
        if self._commit_interval <= 0:
            await self._commit(touched)
            return
        # Kafka redelivers uncommitted records only to the next owner of a partition, and a
        # rebalance or close commits first; so finished offsets can wait a moment and go in
        # one commit, instead of one commit round trip per acknowledgement.
        self._to_commit |= touched
        if self._commit_timer is None:
            self._commit_timer = asyncio.get_running_loop().create_task(self._commit_soon())

    async def _commit_soon(self) -> None:
        """Commit what was acknowledged, at most once per commit interval, until nothing is left."""
        try:
            while self._to_commit:
                await asyncio.sleep(self._commit_interval)  # a timer: acks gather meanwhile
                partitions, self._to_commit = self._to_commit, set()
                try:
                    await self._commit(partitions)
                except Exception as exc:
                    log.warning(
                        "kafka: committing offsets of group %r failed (%s); finished messages "
                        "may be read again by the next owner of their partitions",
                        self._group,
                        exc,
                    )
        finally:
            self._commit_timer = None

    async def nack(self, message: IncomingMessage, delay: float) -> None:
        self._last_active = time.monotonic()
        entry: _Entry = message.handle
        if entry.settled or entry.moving is not None:
            return  # already handed on (its lease ran out) or its partition went elsewhere
        await asyncio.shield(self._hand_on(entry, delay=delay))

    async def extend(self, messages: Sequence[IncomingMessage]) -> None:
        now = time.monotonic()
        self._last_active = now
        for message in messages:
            entry: _Entry = message.handle
            if entry in self._held:
                entry.deadline = now + self._lease

    def _settle(self, entries: Iterable[_Entry]) -> set[_Partition]:
        touched: set[_Partition] = set()
        for entry in entries:
            if entry.settled:
                continue
            entry.settled = True
            self._held.pop(entry, None)
            if entry.partition.current:
                touched.add(entry.partition)
        if self._settled is not None:
            self._settled.set()
        return touched

    def _hand_on(
        self, entry: _Entry, *, delay: float = 0.0, away: bool = False
    ) -> asyncio.Task[None]:
        """The one copy of `entry` in flight, started if there is none: written, then settled.

        Whoever else wants the record handed on (a release before a rebalance or a close,
        the lease check) awaits the same task, so a release never commits and lets go of
        a partition while a copy of one of its records is still being written.
        """
        task = entry.moving
        if task is None:
            task = entry.moving = asyncio.get_running_loop().create_task(
                self._copy_then_settle(entry, delay, away)
            )
        return task

    async def _copy_then_settle(self, entry: _Entry, delay: float, away: bool) -> None:
        try:
            await asyncio.wait_for(
                self._copy(entry, delay=delay, away=away), self._operation_timeout
            )
        finally:
            entry.moving = None
        self._settle((entry,))

    async def _copy(self, entry: _Entry, *, delay: float = 0.0, away: bool = False) -> None:
        """Write `entry` again, as its next attempt: the redelivery."""
        message = entry.message
        assert message is not None
        headers = dict(message.headers)
        headers[HEADER_ATTEMPT] = str(message.attempt + 1)
        if delay > 0:
            headers[HEADER_NOT_BEFORE] = str(int(time.time() * 1000 + delay * 1000))
        avoid: frozenset[int] = frozenset()
        consumer = self._consumer
        if away and consumer is not None:
            avoid = frozenset(
                tp.partition for tp in consumer.assignment() if tp.topic == message.key
            )
        await self._backend.send_copy(message.key, message.body, headers, avoid=avoid)

    async def _commit(self, partitions: Iterable[_Partition], consumer: Any = None) -> None:
        """Commit each partition's commit point if it moved; only while the partition is ours."""
        async with self._commit_lock:
            consumer = consumer or self._consumer
            offsets = {}
            moved = []
            for partition in partitions:
                point = partition.commit_point()
                if partition.current and point is not None and point > partition.committed:
                    offsets[partition.tp] = OffsetAndMetadata(point, "")
                    moved.append((partition, point))
            if not offsets or consumer is None:
                return
            try:
                await asyncio.wait_for(consumer.commit(offsets), self._operation_timeout)
            except (CommitFailedError, IllegalStateError) as exc:
                # A rebalance took these partitions: the revoke handler committed what was
                # finished, and the new owner reads the rest again. Nothing is skipped.
                log.debug("kafka: commit for group %r skipped (%s)", self._group, exc)
                return
            for partition, point in moved:
                partition.committed = max(partition.committed, point)

    # ---- rebalances, leases and members that stopped reading --------------------------------

    def _on_assigned(self, assigned: Collection[Any]) -> None:
        for tp in assigned:
            if tp not in self._partitions:
                self._partitions[tp] = _Partition(tp)
        if self._joined is not None:
            self._joined.set()

    async def _on_revoked(self, revoked: Collection[Any]) -> None:
        partitions = [self._partitions[tp] for tp in revoked if tp in self._partitions]
        if not partitions:
            return
        consumer = self._consumer
        done = self._revoking = asyncio.Event()
        try:
            await self._wait_for_settlement(partitions)
            await self._release(partitions, "rebalance", consumer)
        except Exception as exc:
            log.warning(
                "kafka: settling partitions of group %r before a rebalance failed (%s); their "
                "unfinished messages are read again by the next owner",
                self._group,
                exc,
            )
        finally:
            self._drop(partitions)
            done.set()
            if self._revoking is done:
                self._revoking = None

    async def _wait_for_settlement(self, partitions: list[_Partition]) -> None:
        """Give deliveries in progress on revoked partitions time to finish (or their lease end)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._revoke_wait
        chosen = set(partitions)
        while not self._closed and not self._stalled():
            now = time.monotonic()
            live = [
                entry.deadline
                for entry in self._held
                if entry.partition in chosen and entry.deadline > now
            ]
            remaining = give_up - loop.time()
            if not live or remaining <= 0:
                return
            settled = self._settled = asyncio.Event()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(settled.wait(), min(remaining, min(live) - now))

    async def _release(self, partitions: list[_Partition], why: str, consumer: Any) -> None:
        """Hand on the deliveries still held on `partitions` as copies, then commit them."""
        chosen = set(partitions)
        held = [e for e in self._held if e.partition in chosen]  # copies in flight included
        if held:
            results = await asyncio.gather(
                *(asyncio.shield(self._hand_on(entry)) for entry in held), return_exceptions=True
            )
            failed = sum(isinstance(result, BaseException) for result in results)
            if failed:
                log.info(
                    "kafka: %d unfinished message(s) of group %r could not be handed on (%s); "
                    "the next owner of their partitions reads them again",
                    failed,
                    self._group,
                    why,
                )
        await self._commit(partitions, consumer)

    def _drop(self, partitions: list[_Partition]) -> None:
        """Forget partitions that are no longer ours: later acks of their messages commit none."""
        for partition in partitions:
            partition.current = False
            if self._partitions.get(partition.tp) is partition:
                del self._partitions[partition.tp]
        for entry in [entry for entry in self._held if not entry.partition.current]:
            del self._held[entry]
        if self._delayed:
            self._delayed = [item for item in self._delayed if item[2].partition.current]
            heapq.heapify(self._delayed)

    def _stalled(self) -> bool:
        """No fetch running and no fetch, ack, nack or extend for a whole redelivery timeout."""
        return self._fetching == 0 and time.monotonic() - self._last_active > self._lease

    async def _watch(self) -> None:
        """Redeliver messages whose lease ran out; leave the group when nobody reads any more."""
        interval = max(0.05, min(1.0, self._lease / 4))
        while not self._closed:
            await asyncio.sleep(interval)
            try:
                if self._consumer is not None and self._stalled():
                    async with self._membership:
                        if self._consumer is not None and self._stalled():
                            log.info(
                                "kafka: no reads for group %r in %.1fs; leaving the group so "
                                "that other members take its partitions",
                                self._group,
                                self._lease,
                            )
                            await self._leave("the member stopped reading")
                    continue
                await self._expire()
            except Exception as exc:
                log.warning("kafka: lease check for group %r failed: %s", self._group, exc)

    async def _expire(self) -> None:
        now = time.monotonic()
        expired = [e for e in self._held if e.deadline <= now and e.moving is None]
        if not expired:
            return
        results = await asyncio.gather(
            *(asyncio.shield(self._hand_on(entry, away=True)) for entry in expired),
            return_exceptions=True,
        )
        for entry, result in zip(expired, results, strict=True):
            if isinstance(result, Exception):
                log.info("kafka: redelivering %s failed (%s); retrying", entry.message, result)
        touched = {
            entry.partition for entry in expired if entry.settled and entry.partition.current
        }
        if touched:
            await self._commit(touched)


def _number(text: str, default: float) -> int:
    try:
        return int(text)
    except ValueError:
        return int(default)
