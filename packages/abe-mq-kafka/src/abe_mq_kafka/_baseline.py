"""The three `abe bench` workloads written with aiokafka directly, to measure what abe costs.

Same broker, same producer and consumer settings as the backend (acks, idempotence,
batch size, fetch sizes, session timeout) and topics created the same way, so the
ratio shows abe's own work: validation, ids and headers, settlement and commits.

    publish       `send_and_wait()` per message
    publish_many  `send()` for a batch of payloads (held until sent, as abe's caller holds
                  them), then the batch's futures gathered; like abe, each batch goes to
                  one partition, the key's next (sticky partitioning, spread evenly)
    end_to_end    a consumer doing `getmany()` + `commit()` per batch while one
                  publisher sends with `send_and_wait()`
    drain_ack_each  the backlog sent first (as publish_many), then one consumer of the
                  group on every key: `getmany()` and an awaited
                  `commit({tp: offset + 1})` after each record
    drain_batched   the same with one `commit()` per `getmany()`
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import aiokafka  # type: ignore[import-untyped]
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
)
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]

from abe.benchmarking import (
    Arrivals,
    DrainClock,
    Measurement,
    Progress,
    Workload,
    bench_payload,
)
from abe.provider import bounded
from abe_mq_kafka._settings import KafkaSettings

__all__ = ["RawKafkaBaseline"]

_ENCODER = json.JSONEncoder(separators=(",", ":"))


class RawKafkaBaseline:
    """`RawBaseline` for Kafka: aiokafka producer and consumer, no abe in between."""

    def __init__(self, settings: KafkaSettings) -> None:
        self._settings = settings
        self._producer: Any = None
        self._turns: dict[str, int] = {}

    @property
    def name(self) -> str:
        return f"aiokafka {aiokafka.__version__}"

    async def _ready(self, topic: str) -> Any:
        """The producer started and `topic` created, before any clock starts (as abe's warm-up)."""
        admin = AIOKafkaAdminClient(**self._settings.connection_options())
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(topic, self._settings.partitions, self._settings.replication_factor)]
            )
        finally:
            await admin.close()
        if self._producer is None:
            producer = AIOKafkaProducer(**self._settings.producer_options())
            await producer.start()
            self._producer = producer
        return self._producer

    async def publish(self, workload: Workload, progress: Progress) -> Measurement:
        producer = await self._ready(workload.key)
        clock = time.perf_counter
        latencies: list[float] = []
        started = clock()
        for seq in range(workload.messages):
            value = _ENCODER.encode(bench_payload(seq, workload.payload_bytes)).encode()
            before = clock()
            await producer.send_and_wait(workload.key, value)
            latencies.append(clock() - before)
            progress(seq + 1)
        return Measurement.from_latencies(workload.messages, clock() - started, latencies)

    async def publish_many(self, workload: Workload, progress: Progress) -> Measurement:
        producer = await self._ready(workload.key)
        clock = time.perf_counter
        latencies: list[float] = []
        started = clock()
        for first in range(0, workload.messages, workload.batch_size):
            last = min(first + workload.batch_size, workload.messages)
            # the batch's payloads exist until it is sent, as they do for abe's caller (with large
            # payloads, freeing each one at once spares the allocator work abe cannot skip)
            batch = [bench_payload(seq, workload.payload_bytes) for seq in range(first, last)]
            values = [_ENCODER.encode(payload).encode() for payload in batch]
            before = clock()
            partition = self._next_partition(
                workload.key, await producer.partitions_for(workload.key)
            )
            futures = [
                await producer.send(workload.key, value, partition=partition) for value in values
            ]
            await asyncio.gather(*futures)
            del values, futures  # freed when sent, as abe frees its bodies on return
            latencies.append(clock() - before)
            progress(last)
        return Measurement.from_latencies(workload.messages, clock() - started, latencies)

    async def end_to_end(self, workload: Workload, progress: Progress) -> Measurement:
        producer = await self._ready(workload.key)
        consumer = AIOKafkaConsumer(
            workload.key, group_id=workload.group, **self._settings.consumer_options()
        )
        await consumer.start()  # joined (partitions assigned) before the clock starts
        arrivals = Arrivals(workload, progress)

        async def receive() -> None:
            while not arrivals.complete:
                batches = await consumer.getmany(
                    timeout_ms=1000, max_records=self._settings.prefetch
                )
                for records in batches.values():
                    for record in records:
                        arrivals.record(json.loads(record.value))
                if batches:
                    await consumer.commit()

        async def send() -> None:
            for seq in range(workload.messages):
                value = _ENCODER.encode(bench_payload(seq, workload.payload_bytes)).encode()
                await producer.send_and_wait(workload.key, value)
                await asyncio.sleep(0)

        try:
            return await arrivals.measure(send, receive)
        finally:
            await consumer.stop()

    async def drain_ack_each(self, workload: Workload, progress: Progress) -> Measurement:
        """The backlog read with `getmany()`, an awaited commit after each record."""
        return await self._drain(workload, progress, commit_each=True)

    async def drain_batched(self, workload: Workload, progress: Progress) -> Measurement:
        """The backlog read with `getmany()`, one commit per batch."""
        return await self._drain(workload, progress, commit_each=False)

    async def _drain(
        self, workload: Workload, progress: Progress, *, commit_each: bool
    ) -> Measurement:
        for key in workload.all_keys:
            producer = await self._ready(key)
        for key, payloads in workload.backlog():  # sent before the clock starts
            partition = self._next_partition(key, await producer.partitions_for(key))
            futures = [
                await producer.send(key, _ENCODER.encode(payload).encode(), partition=partition)
                for payload in payloads
            ]
            await asyncio.gather(*futures)
        consumer = AIOKafkaConsumer(
            *workload.all_keys, group_id=workload.group, **self._settings.consumer_options()
        )
        await consumer.start()
        clock = DrainClock(workload, progress)
        try:
            while not clock.complete:
                # all that aiokafka holds, as abe takes it (see KafkaReceiver.fetch: taken a
                # prefetch at a time, a drain meets the broker's fetch wait now and then)
                batches = await consumer.getmany(timeout_ms=1000)
                for tp, records in batches.items():
                    for record in records:
                        clock.record(json.loads(record.value))
                        if commit_each:
                            await consumer.commit({tp: record.offset + 1})
                if batches and not commit_each:
                    await consumer.commit()
        finally:
            await consumer.stop()
        return clock.measurement()

    def _next_partition(self, key: str, partitions: set[int]) -> int:
        """Like abe: each batch of a key to the next partition, from a random one at first."""
        turn = self._turns[key] = self._turns.get(key, random.randrange(1 << 16)) + 1
        return sorted(partitions)[turn % len(partitions)]

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await bounded(producer.stop(), 10)
