"""The receiver's bookkeeping, offline: commit points, rebalances, copies and their headers.

A fake consumer stands in for aiokafka's: it hands out the records a test gives it and
records (or refuses) commits, so the rules are checked without a broker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import TopicPartition  # type: ignore[import-untyped]
from aiokafka.errors import CommitFailedError  # type: ignore[import-untyped]

from abe.provider import HEADER_ATTEMPT, HEADER_NOT_BEFORE, IncomingMessage
from abe_mq_kafka import KafkaSettings
from abe_mq_kafka._receiver import KafkaReceiver

pytestmark = pytest.mark.asyncio

TP0 = TopicPartition("orders", 0)
TP1 = TopicPartition("orders", 1)


@dataclass
class Record:
    offset: int
    value: bytes = b'{"n": 1}'
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp: int = 1_764_300_000_000


@dataclass
class FakeConsumer:
    batches: list[dict[Any, list[Record]]] = field(default_factory=list)
    commits: list[dict[Any, int]] = field(default_factory=list)
    refuse_commits: bool = False
    assigned: set[Any] = field(default_factory=lambda: {TP0, TP1})
    ends: dict[Any, int] = field(default_factory=dict)
    positions: dict[Any, int] = field(default_factory=dict)

    async def getmany(self, *, timeout_ms: int) -> dict[Any, list[Record]]:
        if self.batches:
            return self.batches.pop(0)
        await asyncio.sleep(timeout_ms / 1000)
        return {}

    async def commit(self, offsets: dict[Any, Any]) -> None:
        if self.refuse_commits:
            raise CommitFailedError("the group rebalanced")
        self.commits.append({tp: value.offset for tp, value in offsets.items()})

    def assignment(self) -> set[Any]:
        return self.assigned

    async def end_offsets(self, partitions: list[Any]) -> dict[Any, int]:
        return {tp: self.ends.get(tp, 0) for tp in partitions}

    async def position(self, tp: Any) -> int:
        return self.positions.get(tp, 0)

    async def stop(self) -> None:
        pass


@dataclass
class FakeClient:
    settings: KafkaSettings
    copies: list[tuple[str, bytes, dict[str, str], frozenset[int]]] = field(default_factory=list)

    async def send_copy(
        self, key: str, body: bytes, headers: Mapping[str, str], *, avoid: frozenset[int]
    ) -> None:
        self.copies.append((key, body, dict(headers), avoid))

    async def stop_consumer(self, consumer: FakeConsumer) -> None:
        await consumer.stop()


async def make(lease: float = 30.0) -> tuple[KafkaReceiver, FakeConsumer, FakeClient]:
    settings = KafkaSettings(redelivery_timeout=lease, session_timeout=1.0, commit_interval=0)
    client = FakeClient(settings)
    receiver = KafkaReceiver(client, "group", ("orders",))  # type: ignore[arg-type]
    consumer = FakeConsumer()
    receiver._consumer = consumer
    await receiver.on_partitions_assigned({TP0, TP1})
    return receiver, consumer, client


async def fetch(receiver: KafkaReceiver, count: int = 100) -> list[IncomingMessage]:
    return list(await receiver.fetch(count, 0.05))


async def test_commits_stop_at_the_first_unfinished_record() -> None:
    receiver, consumer, _ = await make()
    consumer.batches.append({TP0: [Record(0), Record(1), Record(2)], TP1: [Record(7)]})
    first, second, third, other = await fetch(receiver)
    assert [m.broker_id for m in (first, second, third, other)] == ["0@0", "0@1", "0@2", "1@7"]
    await receiver.ack([second, third, other])
    assert consumer.commits == [{TP1: 8}]  # partition 0 waits for offset 0
    await receiver.ack([first])
    assert consumer.commits[-1] == {TP0: 3}
    await receiver.ack([first])  # settling twice commits nothing more
    assert len(consumer.commits) == 2


async def test_a_failed_commit_skips_nothing_and_the_revoke_hands_on_the_rest() -> None:
    receiver, consumer, backend = await make(lease=0.2)
    consumer.batches.append({TP0: [Record(0), Record(1), Record(2, headers=(("k", b"v"),))]})
    first, second, third = await fetch(receiver)
    consumer.refuse_commits = True
    await receiver.ack([first])  # refused: a rebalance is under way; no error, nothing lost
    assert consumer.commits == []
    consumer.refuse_commits = False
    await receiver.ack([third])
    assert consumer.commits == [{TP0: 1}]  # offset 1 is unfinished: nothing past it
    # waits out the lease of offset 1, then hands it on
    await receiver.on_partitions_revoked({TP0, TP1})
    assert [(key, headers[HEADER_ATTEMPT]) for key, _, headers, _ in backend.copies] == [
        ("orders", "2")
    ]
    assert consumer.commits[-1] == {TP0: 3}
    await receiver.ack([second])  # a late ack of a revoked partition's message commits nothing
    assert consumer.commits[-1] == {TP0: 3}
    assert len(consumer.commits) == 2


async def test_revoke_waits_for_deliveries_that_finish() -> None:
    receiver, consumer, backend = await make(lease=5.0)
    consumer.batches.append({TP0: [Record(0)]})
    (message,) = await fetch(receiver)

    async def finish_soon() -> None:
        await asyncio.sleep(0.1)
        await receiver.ack([message])

    started = time.monotonic()
    await asyncio.gather(receiver.on_partitions_revoked({TP0, TP1}), finish_soon())
    assert time.monotonic() - started < 2
    assert backend.copies == []
    assert consumer.commits[-1] == {TP0: 1}


async def test_a_queued_record_is_received_when_handed_out() -> None:
    receiver, consumer, _ = await make()
    consumer.batches.append({TP0: [Record(0), Record(1)]})
    await fetch(receiver, 1)  # offset 1 waits in the queue
    handed_out_after = time.monotonic()
    (queued,) = await fetch(receiver, 1)
    assert queued.received_at >= handed_out_after  # core refreshes leases from this time


async def test_records_still_queued_hold_the_commit_point() -> None:
    receiver, consumer, _ = await make()
    consumer.batches.append({TP0: [Record(0), Record(1), Record(2), Record(3)]})
    consumer.batches.append({TP0: [Record(4)]})
    first, second = await fetch(receiver, 2)  # offsets 2 and 3 wait unread
    await receiver.ack([second, first])
    assert consumer.commits == [{TP0: 2}]  # not past the queued ones
    third, fourth = await fetch(receiver, 2)
    await receiver.ack([fourth])
    assert consumer.commits == [{TP0: 2}]  # offset 2 is out and unfinished
    await receiver.ack([third])
    assert consumer.commits[-1] == {TP0: 4}  # everything read is finished
    (fifth,) = await fetch(receiver)
    await receiver.ack([fifth])
    assert consumer.commits[-1] == {TP0: 5}


async def test_records_read_again_after_a_seek_are_skipped() -> None:
    receiver, consumer, _ = await make()
    consumer.batches.append({TP0: [Record(3), Record(4)]})
    consumer.batches.append({TP0: [Record(3), Record(4), Record(5)], TP1: [Record(0)]})
    consumer.batches.append({TP0: [Record(4)]})
    first = await fetch(receiver)
    again = await fetch(receiver)
    assert [m.broker_id for m in [*first, *again]] == ["0@3", "0@4", "0@5", "1@0"]
    assert await fetch(receiver) == []  # all of it known: nothing queued
    await receiver.ack([*first, *again])
    assert consumer.commits[-1] == {TP0: 6, TP1: 1}


async def test_a_copy_due_later_in_the_queue_waits_and_holds_the_commit_point() -> None:
    receiver, consumer, _ = await make()
    due = str(int(time.time() * 1000) + 200).encode()
    consumer.batches.append({TP0: [Record(0), Record(1, headers=((HEADER_NOT_BEFORE, due),))]})
    consumer.batches[0][TP0].append(Record(2))
    first, third = await fetch(receiver)  # offset 1 waits in the heap
    await receiver.ack([first, third])
    assert consumer.commits == [{TP0: 1}]
    (second,) = await receiver.fetch(10, 1.0)
    assert second.broker_id == "0@1"
    await receiver.ack([second])
    assert consumer.commits[-1] == {TP0: 3}


async def test_a_partition_dropped_forgets_its_queued_records() -> None:
    receiver, consumer, _ = await make()
    consumer.batches.append({TP0: [Record(0), Record(1)], TP1: [Record(5), Record(6)]})
    (held,) = await fetch(receiver, 1)  # TP0's offset 1 and all of TP1 wait unread
    await receiver.ack([held])
    await receiver.on_partitions_revoked({TP1})
    assert consumer.commits == [{TP0: 1}]  # TP1 stays at 5: the next owner reads from there
    assert [run.partition.tp for run in receiver._ready] == [TP0]
    assert [m.broker_id for m in await fetch(receiver)] == ["0@1"]
    assert not receiver._ready


async def test_a_partition_being_revoked_hands_out_nothing_more() -> None:
    receiver, consumer, backend = await make(lease=5.0)
    consumer.batches.append({TP0: [Record(0), Record(1), Record(2)], TP1: [Record(7)]})
    (held,) = await fetch(receiver, 1)  # offsets 1 and 2 and TP1's 7 stay queued
    revoke = asyncio.ensure_future(receiver.on_partitions_revoked({TP0}))
    await asyncio.sleep(0)  # the revoke now waits for the held delivery
    during = await fetch(receiver)
    assert [m.broker_id for m in during] == ["1@7"]  # TP0's queue is left to the next owner
    await receiver.ack([held, *during])
    await revoke
    assert backend.copies == []
    assert consumer.commits[-1][TP0] == 1  # the next owner reads offsets 1 and 2


async def test_nack_writes_a_copy_with_the_next_attempt_and_its_time() -> None:
    receiver, consumer, backend = await make()
    consumer.batches.append(
        {TP0: [Record(0, headers=(("abe-id", b"m-1"), (HEADER_ATTEMPT, b"2"), ("t", b"x")))]}
    )
    (message,) = await fetch(receiver)
    assert message.attempt == 2
    assert dict(message.headers) == {"abe-id": "m-1", "abe-published-at": "1764300000000", "t": "x"}
    before = time.time() * 1000
    await receiver.nack(message, 1.5)
    ((key, body, headers, _),) = backend.copies
    assert (key, body, headers["abe-id"], headers[HEADER_ATTEMPT]) == (
        "orders",
        b'{"n": 1}',
        "m-1",
        "3",
    )
    assert int(headers[HEADER_NOT_BEFORE]) >= before + 1500 - 1
    await receiver.nack(message, 0)  # already handed on: no second copy
    assert len(backend.copies) == 1


async def test_a_copy_read_early_waits_without_blocking_others() -> None:
    receiver, consumer, _ = await make()
    due = str(int(time.time() * 1000) + 300).encode()
    consumer.batches.append(
        {TP0: [Record(0, headers=((HEADER_NOT_BEFORE, due), (HEADER_ATTEMPT, b"2")))]}
    )
    consumer.batches.append({TP1: [Record(0)]})
    (other,) = await fetch(receiver)  # the early copy waits; the other partition flows
    assert other.broker_id == "1@0"
    started = time.monotonic()
    got: list[IncomingMessage] = []
    while not got:
        got = list(await receiver.fetch(10, 1.0))
    assert time.monotonic() - started < 1.0
    assert (got[0].broker_id, got[0].attempt) == ("0@0", 2)


async def test_an_expired_lease_is_redelivered_away_from_this_member() -> None:
    receiver, consumer, backend = await make(lease=0.05)
    consumer.assigned = {TP0}
    consumer.batches.append({TP0: [Record(0)]})
    (message,) = await fetch(receiver)
    await asyncio.sleep(0.1)
    receiver._last_active = time.monotonic()  # still reading: this is a lease, not a stall
    await receiver._expire()
    ((_, _, headers, avoid),) = backend.copies
    assert (headers[HEADER_ATTEMPT], avoid) == ("2", frozenset({0}))
    assert consumer.commits[-1] == {TP0: 1}
    await receiver.ack([message])  # the late ack of the original changes nothing
    assert len(backend.copies) == 1


async def test_close_hands_on_what_is_held_and_commits() -> None:
    receiver, consumer, backend = await make()
    consumer.batches.append({TP0: [Record(0), Record(1)]})
    first, _second = await fetch(receiver)
    await receiver.ack([first])
    await receiver.close()
    assert [headers[HEADER_ATTEMPT] for _, _, headers, _ in backend.copies] == ["2"]
    assert consumer.commits[-1] == {TP0: 2}
    await receiver.close()


async def test_abes_usual_record_reads_its_headers_when_asked() -> None:
    receiver, consumer, backend = await make()
    usual = Record(3, headers=(("abe-id", b"m-1"),), timestamp=1_764_300_000_123)
    consumer.batches.append({TP0: [usual, Record(4, headers=(("abe-id", b"caf\xe9"),))]})
    message, odd = await fetch(receiver)
    assert (message.body, message.attempt, message.broker_id) == (b'{"n": 1}', 1, "0@3")
    assert dict(message.headers) == {"abe-id": "m-1", "abe-published-at": "1764300000123"}
    assert odd.headers["abe-id"] == "caf\ufffd"
    await receiver.nack(message, 0)
    ((_, _, headers, _),) = backend.copies
    assert (headers["abe-id"], headers[HEADER_ATTEMPT]) == ("m-1", "2")


async def test_a_new_record_gets_its_id_and_time_from_its_position_and_timestamp() -> None:
    receiver, consumer, _ = await make()
    consumer.batches.append({TP0: [Record(7, timestamp=1_764_300_000_123)]})
    [message] = await fetch(receiver)
    assert message.headers["abe-id"] == "orders:0:7"
    assert message.headers["abe-published-at"] == "1764300000123"


async def test_a_foreign_records_headers_are_read_whatever_their_bytes() -> None:
    receiver, consumer, _ = await make()
    odd = (("latin", b"caf\xe9"), ("none", None), ("empty", b""))
    consumer.batches.append({TP0: [Record(0, headers=odd), Record(1, headers=None)]})  # type: ignore[arg-type]
    first, second = await fetch(receiver)
    assert {n: first.headers[n] for n in ("latin", "none", "empty")} == {
        "latin": "caf\ufffd",
        "none": "",
        "empty": "",
    }
    assert second.headers["abe-id"] == "orders:0:1"
    await receiver.close()


async def test_acks_settle_at_once_and_one_commit_covers_the_interval() -> None:
    settings = KafkaSettings(session_timeout=1.0, commit_interval=0.05)
    receiver = KafkaReceiver(FakeClient(settings), "group", ("orders",))  # type: ignore[arg-type]
    assert receiver.ack_linger == 0.0  # core hands acks over at once: it holds no acked message
    consumer = receiver._consumer = FakeConsumer()
    await receiver.on_partitions_assigned({TP0, TP1})
    consumer.batches.append({TP0: [Record(0), Record(1), Record(2)]})
    first, second, third = await fetch(receiver)
    await receiver.ack([first])
    await receiver.ack([second])
    assert consumer.commits == []  # settled; the commit waits for the interval
    assert receiver._partitions[TP0].commit_point() == 2
    saving = receiver._saving
    assert saving is not None
    await saving
    assert consumer.commits == [{TP0: 2}]  # one commit for both acks
    await receiver.ack([third])
    await receiver.close()  # closing commits at once, without waiting for the interval
    assert consumer.commits == [{TP0: 2}, {TP0: 3}]


async def test_close_commits_what_acks_could_not() -> None:
    receiver, consumer, _ = await make()
    consumer.batches.append({TP0: [Record(0), Record(1)]})
    first, second = await fetch(receiver)
    consumer.refuse_commits = True
    await receiver.ack([first, second])
    assert consumer.commits == []
    consumer.refuse_commits = False
    await receiver.close()
    assert consumer.commits[-1] == {TP0: 2}


async def test_a_member_with_lag_that_receives_nothing_says_which_setting_to_raise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver, consumer, _ = await make()
    receiver._starved_after = 0.1
    consumer.ends, consumer.positions = {TP0: 10_000, TP1: 5}, {TP0: 343, TP1: 5}
    reading = asyncio.ensure_future(receiver.fetch(10, 0.6))  # the broker answers empty
    await asyncio.sleep(0.2)
    with caplog.at_level(logging.WARNING, logger="abe.kafka"):
        await receiver._check_starving()
        await receiver._check_starving()  # said once per quiet spell
    assert await reading == []
    (record,) = caplog.records
    assert "1 partition(s) with 9657 message(s) waiting" in record.getMessage()
    assert "ABE_KAFKA_FETCH_MAX_WAIT (now 0.5s)" in record.getMessage()


async def test_no_warning_without_lag_or_while_nobody_reads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver, consumer, _ = await make()
    receiver._starved_after = 0.1
    consumer.ends, consumer.positions = {TP0: 7}, {TP0: 7}
    await asyncio.sleep(0.2)
    with caplog.at_level(logging.WARNING, logger="abe.kafka"):
        await receiver._check_starving()  # no fetch is running: the application is busy
        consumer.ends[TP0] = 9
        await receiver._check_starving()
        reading = asyncio.ensure_future(receiver.fetch(10, 0.3))
        await asyncio.sleep(0.05)
        consumer.ends[TP0] = 7
        await receiver._check_starving()  # reading, but nothing waits
        await reading
    assert caplog.records == []
